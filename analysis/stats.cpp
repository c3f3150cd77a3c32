#include "analysis/stats.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>

namespace spkv::analysis {

Summary summarize(const std::vector<double>& xs, const std::vector<double>& ws_in, double level, int resamples,
                  uint64_t seed) {
  if (!ws_in.empty() && ws_in.size() != xs.size()) throw std::invalid_argument("summarize: xs and ws differ in size");
  if (!(level > 0 && level < 1)) throw std::invalid_argument("summarize: level must be in (0, 1)");
  Summary s;
  s.n = int64_t(xs.size());
  if (xs.empty()) return s;
  std::vector<double> ws = ws_in.empty() ? std::vector<double>(xs.size(), 1.0) : ws_in;
  auto wmean = [&](const std::vector<size_t>& idx) {
    double num = 0, den = 0;
    for (size_t i : idx) num += ws[i] * xs[i], den += ws[i];
    return den > 0 ? num / den : 0.0;
  };
  std::vector<size_t> all(xs.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  s.mean = wmean(all);
  if (xs.size() < 2) {
    s.ci_low = s.ci_high = s.mean;
    return s;
  }
  double plain_mean = 0;
  for (double x : xs) plain_mean += x;
  plain_mean /= double(xs.size());
  double ss = 0;
  for (double x : xs) ss += (x - plain_mean) * (x - plain_mean);
  s.stddev = std::sqrt(ss / double(xs.size() - 1));

  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, xs.size() - 1);
  std::vector<double> means(resamples);
  std::vector<size_t> idx(xs.size());
  for (int r = 0; r < resamples; ++r) {
    for (auto& i : idx) i = pick(rng);
    means[r] = wmean(idx);
  }
  std::sort(means.begin(), means.end());
  const double a = (1 - level) / 2;
  auto q = [&](double p) { return means[std::min(means.size() - 1, size_t(p * double(means.size() - 1) + 0.5))]; };
  s.ci_low = q(a);
  s.ci_high = q(1 - a);
  return s;
}

namespace {
std::vector<double> ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    for (size_t k = i; k <= j; ++k) r[order[k]] = 0.5 * double(i + j) + 1;  // average of ranks i+1 .. j+1
    i = j + 1;
  }
  return r;
}
}  // namespace

double spearman(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() != y.size()) throw std::invalid_argument("spearman: x and y differ in size");
  std::vector<double> a, b;
  for (size_t i = 0; i < x.size(); ++i)
    if (!std::isnan(x[i]) && !std::isnan(y[i])) a.push_back(x[i]), b.push_back(y[i]);
  if (a.size() < 2) return std::nan("");
  const auto ra = ranks(a), rb = ranks(b);
  const double m = 0.5 * double(a.size() + 1);
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) sab += (ra[i] - m) * (rb[i] - m), saa += (ra[i] - m) * (ra[i] - m), sbb += (rb[i] - m) * (rb[i] - m);
  return saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : std::nan("");
}

}  // namespace spkv::analysis
