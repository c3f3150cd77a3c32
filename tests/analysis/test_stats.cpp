// summarize(): closed-form mean and standard deviation, token weighting, and bootstrap intervals that
// cover the mean and shrink like 1/sqrt(n).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "analysis/stats.h"

namespace spkv::analysis {
namespace {

TEST(Stats, MeanAndSampleStddev) {
  auto s = summarize({1, 2, 3, 4});
  EXPECT_DOUBLE_EQ(s.mean, 2.5);
  EXPECT_NEAR(s.stddev, std::sqrt(5.0 / 3.0), 1e-12);
  EXPECT_EQ(s.n, 4);
  auto w = summarize({1, 3}, {3, 1});  // (3*1 + 1*3) / 4
  EXPECT_DOUBLE_EQ(w.mean, 1.5);
}

TEST(Stats, ConstantDataHasAZeroWidthInterval) {
  auto s = summarize({0.7, 0.7, 0.7});
  EXPECT_DOUBLE_EQ(s.ci_low, 0.7);
  EXPECT_DOUBLE_EQ(s.ci_high, 0.7);
}

TEST(Stats, BootstrapIntervalCoversAndShrinks) {
  std::mt19937 rng(3);
  std::normal_distribution<double> n(5.0, 2.0);
  auto width = [&](int count) {
    std::vector<double> xs(count);
    for (auto& x : xs) x = n(rng);
    auto s = summarize(xs);
    EXPECT_LE(s.ci_low, s.mean);
    EXPECT_GE(s.ci_high, s.mean);
    // Normal theory: 95% half-width = 1.96 * sd / sqrt(n).
    EXPECT_NEAR((s.ci_high - s.ci_low) / 2, 1.96 * s.stddev / std::sqrt(double(count)), 0.25 * s.stddev / std::sqrt(double(count)));
    return s.ci_high - s.ci_low;
  };
  const double w100 = width(100), w1600 = width(1600);
  EXPECT_NEAR(w100 / w1600, 4.0, 0.8);
}

TEST(Stats, RejectsMismatchedWeights) { EXPECT_THROW(summarize({1, 2}, {1}), std::invalid_argument); }

}  // namespace
}  // namespace spkv::analysis
