// Summary statistics with spread, for numbers measured per document (NLL, density, compression): mean,
// standard deviation and a percentile-bootstrap confidence interval of the mean. Torch-free, Qt-free.
#pragma once
#include <cstdint>
#include <vector>

namespace spkv::analysis {

struct Summary {
  int64_t n = 0;
  double mean = 0, stddev = 0;       // stddev: sample (n - 1) standard deviation; 0 when n < 2
  double ci_low = 0, ci_high = 0;    // bootstrap interval of the mean
};

// Mean of xs weighted by ws (e.g. per-document mean NLL weighted by token count), with a bootstrap
// interval that resamples whole items: the spread across documents, not across tokens.
// Equal weights when ws is empty. Deterministic for a given seed.
Summary summarize(const std::vector<double>& xs, const std::vector<double>& ws = {}, double level = 0.95,
                  int resamples = 2000, uint64_t seed = 1);

// Spearman's rank correlation of x and y (Pearson correlation of their ranks; ties get their average
// rank). Pairs where either value is NaN are left out; NaN when fewer than 2 pairs remain or a side is
// constant.
double spearman(const std::vector<double>& x, const std::vector<double>& y);

}  // namespace spkv::analysis
