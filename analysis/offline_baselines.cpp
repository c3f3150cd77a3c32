// Matched-budget policies per (document, head) and the u histograms behind the calibration.
#include "analysis/offline_baselines.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

namespace spkv::analysis {

const char* const kPolicies[kNumPolicies] = {"spkv", "oracle", "h2o", "snapkv", "streaming", "random"};

AttentionCounter::AttentionCounter(int64_t heads, int64_t sinks, uint64_t seed)
    : seed_(seed), pos_hist_(heads, std::vector<int64_t>(kScoreBins, 0)), neg_hist_(heads, std::vector<int64_t>(kScoreBins, 0)) {
  r_.heads = heads, r_.sinks = sinks;
  r_.kept_mass.assign(kNumPolicies, std::vector<double>(heads, 0.0));
  r_.total_mass.assign(heads, 0.0), r_.kept_keys.assign(heads, 0), r_.eligible_keys.assign(heads, 0);
  for (int b = 0; b < 10; ++b) r_.reliability.push_back({0.1 * b, 0.1 * (b + 1)});
}

void AttentionCounter::add(int64_t doc, int64_t first, int64_t n, const std::vector<float>& u, const std::vector<uint8_t>& z,
                           const std::vector<float>& received, const std::vector<float>& received_last,
                           const std::vector<float>& received_far) {
  const int64_t H = r_.heads;
  std::vector<int64_t> idx(n);
  for (int64_t h = 0; h < H; ++h) {
    auto at = [&](const std::vector<float>& v, int64_t i) { return double(v[i * H + h]); };
    int64_t k = 0;
    double total = 0;
    for (int64_t i = 0; i < n; ++i) k += z[i * H + h] != 0, total += at(received_far, i);
    r_.total_mass[h] += total, r_.kept_keys[h] += k, r_.eligible_keys[h] += n;
    // The k keys with the highest score (ties: the earlier key), and the far mass on them.
    auto top = [&](const std::vector<float>& score) {
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t a, int64_t b) {
        return at(score, a) != at(score, b) ? at(score, a) > at(score, b) : a < b;
      });
      return std::vector<int64_t>(idx.begin(), idx.begin() + k);
    };
    auto mass = [&](const std::vector<int64_t>& kept) {
      double m = 0;
      for (int64_t i : kept) m += at(received_far, i);
      return m;
    };
    std::vector<int64_t> spkv, streaming, random(n);
    for (int64_t i = 0; i < n; ++i)
      if (z[i * H + h]) spkv.push_back(i);
    for (int64_t i = 0; i < n && int64_t(streaming.size()) < k && first + i < r_.sinks; ++i) streaming.push_back(i);
    for (int64_t i = n - 1; int64_t(streaming.size()) < k && i >= 0 && first + i >= r_.sinks; --i) streaming.push_back(i);
    std::iota(random.begin(), random.end(), 0);
    std::mt19937_64 rng{seed_ * 1000003u + uint64_t(doc) * 7919u + uint64_t(h)};
    for (int64_t i = 0; i < k; ++i) std::swap(random[i], random[i + int64_t(rng() % uint64_t(n - i))]);
    random.resize(k);
    const std::vector<int64_t> oracle = top(received_far);
    const std::vector<std::vector<int64_t>> kept = {spkv, oracle, top(received), top(received_last), streaming, random};
    for (int p = 0; p < kNumPolicies; ++p) r_.kept_mass[p][h] += mass(kept[p]);
    // Calibration: u of the keys the oracle keeps (useful) against the rest.
    std::vector<uint8_t> useful(n, 0);
    for (int64_t i : oracle) useful[i] = 1;
    for (int64_t i = 0; i < n; ++i) {
      const double x = at(u, i);
      const int b = std::clamp(int(x * kScoreBins), 0, kScoreBins - 1);
      (useful[i] ? pos_hist_ : neg_hist_)[h][b]++;
      auto& bin = r_.reliability[std::clamp(int(x * 10), 0, 9)];
      ++bin.keys, bin.useful += useful[i], bin.sum_u += x, bin.sum_far += at(received_far, i);
    }
  }
}

AttentionReport AttentionCounter::finish() const {
  AttentionReport r = r_;
  r.auroc.assign(r.heads, std::nan(""));
  for (int64_t h = 0; h < r.heads; ++h) {
    // Mann-Whitney from the histograms: a useful key beats the useless keys in lower bins and half-ties its own.
    double pos = 0, neg = 0, wins = 0, below = 0;
    for (int b = 0; b < kScoreBins; ++b) {
      wins += double(pos_hist_[h][b]) * (below + 0.5 * double(neg_hist_[h][b]));
      below += double(neg_hist_[h][b]), pos += double(pos_hist_[h][b]), neg += double(neg_hist_[h][b]);
    }
    if (pos > 0 && neg > 0) r.auroc[h] = wins / (pos * neg);
  }
  return r;
}

}  // namespace spkv::analysis
