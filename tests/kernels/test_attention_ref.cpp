// The CPU gated-attention reference against closed-form answers: visibility rules (causal, window,
// gate), the GQA head mapping, and the empty-row convention.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/attention_ref.h"

namespace spkv::kernels {
namespace {

struct Case {
  std::vector<float> q, k, v, y;
  std::vector<uint8_t> keep;
  std::vector<int64_t> qp, kp;
  GatedAttentionParams p;
  Case(int64_t H, int64_t Hkv, int64_t T, int64_t S, int64_t D) {
    p.B = 1, p.H = H, p.Hkv = Hkv, p.T = T, p.S = S, p.D = D, p.scale = 1.0f;
    q.resize(H * T * D), k.resize(Hkv * S * D), v.resize(Hkv * S * D), y.assign(H * T * D, -999.f);
    keep.assign(Hkv * S, 0);
    for (int64_t s = 0; s < S; ++s) kp.push_back(s);
    for (int64_t t = 0; t < T; ++t) qp.push_back(S - T + t);
  }
  Status run(int64_t window, bool use_keep) {
    p.q = q.data(), p.k = k.data(), p.v = v.data(), p.y = y.data(), p.q_pos = qp.data(), p.k_pos = kp.data();
    p.keep = use_keep ? keep.data() : nullptr;
    p.window = window;
    set_contiguous_strides(p);
    return cpu::gated_attention_ref(p);
  }
};

TEST(AttentionRef, WindowAndGateDecideVisibility) {
  // One query at position 3 over keys 0..3, D = 1, q = 1: scores = k. v = key index * 10.
  Case c(1, 1, 1, 4, 1);
  c.q = {1.f};
  c.k = {0.5f, -1.f, 2.f, 0.25f};
  c.v = {0.f, 10.f, 20.f, 30.f};
  auto softmax_avg = [&](std::vector<int> vis) {
    double num = 0, den = 0;
    for (int s : vis) num += std::exp(c.k[s]) * c.v[s], den += std::exp(c.k[s]);
    return num / den;
  };
  ASSERT_EQ(c.run(0, false), Status::ok);  // no window: all causal keys
  EXPECT_NEAR(c.y[0], softmax_avg({0, 1, 2, 3}), 1e-5);
  ASSERT_EQ(c.run(2, false), Status::ok);  // window 2: keys 2, 3
  EXPECT_NEAR(c.y[0], softmax_avg({2, 3}), 1e-5);
  c.keep = {1, 0, 0, 0};  // gate keeps key 0 (outside the window); key 2 is local anyway
  ASSERT_EQ(c.run(2, true), Status::ok);
  EXPECT_NEAR(c.y[0], softmax_avg({0, 2, 3}), 1e-5);
}

TEST(AttentionRef, GroupedQueryHeadsShareTheirKvHead) {
  // H = 4, Hkv = 2: heads 0,1 read KV head 0 (v = 1), heads 2,3 read KV head 1 (v = 7).
  Case c(4, 2, 1, 2, 1);
  c.q = {1, 2, 3, 4};
  c.k = {0.3f, -0.2f, 0.1f, 0.9f};
  c.v = {1, 1, 7, 7};
  ASSERT_EQ(c.run(0, false), Status::ok);
  EXPECT_NEAR(c.y[0], 1.f, 1e-6);
  EXPECT_NEAR(c.y[1], 1.f, 1e-6);
  EXPECT_NEAR(c.y[2], 7.f, 1e-6);
  EXPECT_NEAR(c.y[3], 7.f, 1e-6);
}

TEST(AttentionRef, QueryThatSeesNoKeyGetsZeroAndBadArgsAreRejected) {
  Case c(1, 1, 1, 3, 2);
  c.q = {1, 1};
  c.k = {1, 2, 3, 4, 5, 6};
  c.v = {1, 2, 3, 4, 5, 6};
  c.qp = {-1};  // before every key
  ASSERT_EQ(c.run(0, false), Status::ok);
  EXPECT_EQ(c.y[0], 0.f);
  EXPECT_EQ(c.y[1], 0.f);
  c.p.Hkv = 0;
  c.p.q = nullptr;
  EXPECT_EQ(cpu::gated_attention_ref(c.p), Status::invalid_argument);
}

}  // namespace
}  // namespace spkv::kernels
