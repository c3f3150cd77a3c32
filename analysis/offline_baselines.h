// Offline eviction baselines at matched density and the predictor's calibration, from dense runs with attention
// statistics (`spkv run --dense --attention-stats`, /attention in docs/hdf5-schema.md). For every document
// and (layer, KV head), each policy keeps as many eligible keys as the SP-KV gates did, and is scored by
// the share of the far attention mass (what queries outside the window paid to the eligible keys) that
// falls on the keys it kept. Counts are accumulated one document at a time. Torch-free, Qt-free.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace spkv::analysis {

// The policies, in report order:
//   spkv       the logged gate decisions z;
//   oracle     the k keys with the most far attention mass (the upper bound);
//   h2o        the k keys with the most attention received from every query (H2O's heavy hitters);
//   snapkv     the k keys with the most attention from the last queries (SnapKV's observation window);
//   streaming  StreamingLLM: the first `sinks` positions, then the most recent keys (a longer window);
//   random     k keys drawn uniformly (seeded per document, layer and head).
extern const char* const kPolicies[6];
constexpr int kNumPolicies = 6;

struct AttentionReport {
  int64_t heads = 0, sinks = 4;
  std::vector<std::vector<double>> kept_mass;  // (policies, L * Hkv) far mass on the kept keys
  std::vector<double> total_mass;              // (L * Hkv) far mass on every eligible key
  std::vector<int64_t> kept_keys, eligible_keys;  // (L * Hkv) the matched budget
  // Calibration of u against "useful" keys (those the oracle keeps at the matched budget).
  std::vector<double> auroc;  // (L * Hkv) probability that a useful key has a higher u than a useless one
  struct Bin {
    double lo = 0, hi = 0;
    int64_t keys = 0, useful = 0;
    double sum_u = 0, sum_far = 0;
  };
  std::vector<Bin> reliability;  // 10 bins of u, all heads pooled
};

class AttentionCounter {
 public:
  AttentionCounter(int64_t heads, int64_t sinks = 4, uint64_t seed = 1);
  // One document's eligible keys at positions first .. first + n - 1 (row-major (n, heads) arrays).
  void add(int64_t doc, int64_t first, int64_t n, const std::vector<float>& u, const std::vector<uint8_t>& z,
           const std::vector<float>& received, const std::vector<float>& received_last,
           const std::vector<float>& received_far);
  AttentionReport finish() const;

 private:
  static constexpr int kScoreBins = 1024;  // u histogram resolution for the AUROC
  AttentionReport r_;
  uint64_t seed_;
  std::vector<std::vector<int64_t>> pos_hist_, neg_hist_;  // (heads, kScoreBins) u of useful / useless keys
};

}  // namespace spkv::analysis
