// vec.h's vector loops against float64 recomputations at odd sizes (tails after the 16-lane and 4-row
// blocks), with row strides wider than the rows; and the polynomial exponential against std::exp in double
// over its whole range, including the arguments it maps to 0.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/vec.h"

namespace spkv::kernels::cpu {
namespace {

std::vector<float> randn(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

TEST(Vec, MatvecRowsMatchesDoubleAtOddSizesWithStrideAndBias) {
  std::mt19937 rng(3);
  for (auto [rows, n] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {7, 15}, {9, 33}, {13, 100}, {64, 128}}) {
    const int64_t ld = n + 5;
    auto W = randn(rows * ld, rng), x = randn(n, rng), bias = randn(rows, rng);
    std::vector<float> y(rows + 2, std::numeric_limits<float>::quiet_NaN());
    matvec_rows(W.data(), ld, x.data(), bias.data(), 1, rows, n, y.data());  // rows [1, rows)
    EXPECT_TRUE(std::isnan(y[0])) << "row 0 is outside [r0, r1)";
    for (int64_t r = 1; r < rows; ++r) {
      double ref = bias[r];
      for (int64_t i = 0; i < n; ++i) ref += double(W[r * ld + i]) * x[i];
      EXPECT_NEAR(y[r], ref, 1e-5 * (1 + std::abs(ref))) << rows << "x" << n << " row " << r;
    }
  }
}

TEST(Vec, ScoresBlockIsQTimesTransposedKeys) {
  std::mt19937 rng(4);
  for (int64_t nq : {1, 3, 4, 6, 9})
    for (int64_t D : {1, 17, 32}) {
      const int64_t ldq = D + 3;
      auto Q = randn(nq * ldq, rng), Kt = randn(D * kKeys, rng);
      std::vector<float> S(nq * kKeys);
      scores_block(Q.data(), ldq, nq, Kt.data(), D, S.data());
      for (int64_t t = 0; t < nq; ++t)
        for (int64_t j = 0; j < kKeys; ++j) {
          double ref = 0;
          for (int64_t d = 0; d < D; ++d) ref += double(Q[t * ldq + d]) * Kt[d * kKeys + j];
          ASSERT_NEAR(S[t * kKeys + j], ref, 1e-5 * (1 + std::abs(ref))) << nq << " " << D << " " << t << " " << j;
        }
    }
}

TEST(Vec, ExpShiftedIsAccurateAndMapsTheFarTailAndMinusInfinityToZero) {
  std::vector<float> s;
  for (double x = -86.9; x <= 0; x += 0.0137) s.push_back(float(x));  // 6,343 points: both vector body and tail
  s.push_back(-std::numeric_limits<float>::infinity());
  s.push_back(-200.f);
  const std::vector<float> in = s;
  const float shift = 0.75f;
  const float total = exp_shifted(s.data(), int64_t(s.size()), -shift);  // exp(x + 0.75)
  double sum = 0, worst = 0;
  for (size_t i = 0; i + 2 < in.size(); ++i) {
    const double ref = std::exp(double(in[i]) + shift);
    worst = std::max(worst, std::abs(s[i] - ref) / ref);
    sum += ref;
  }
  EXPECT_LT(worst, 4e-7);
  EXPECT_EQ(s[s.size() - 2], 0.f);
  EXPECT_EQ(s.back(), 0.f);
  EXPECT_NEAR(total, sum, 1e-5 * sum);
}

TEST(Vec, AccumulateRowsAddsTheWeightedRows) {
  std::mt19937 rng(5);
  for (auto [rows, D] : std::vector<std::pair<int64_t, int64_t>>{{1, 3}, {5, 24}, {11, 33}}) {
    const int64_t ld = D + 2;
    auto w = randn(rows, rng), V = randn(rows * ld, rng), acc = randn(D, rng);
    auto got = acc;
    accumulate_rows(w.data(), V.data(), ld, rows, D, got.data());
    for (int64_t d = 0; d < D; ++d) {
      double ref = acc[d];
      for (int64_t r = 0; r < rows; ++r) ref += double(w[r]) * V[r * ld + d];
      EXPECT_NEAR(got[d], ref, 1e-5 * (1 + std::abs(ref)));
    }
  }
}

}  // namespace
}  // namespace spkv::kernels::cpu
