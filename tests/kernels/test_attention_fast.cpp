// The fast CPU kernels against the readable references (the specification) at odd sizes, with strided
// inputs, ragged per-head caches (lengths 0 and 1, pages partly filled, pages out of order) and outputs
// poisoned with NaN, so that every element must be written. Tolerance 1e-5 (float32 vs float64).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/attention_fast.h"
#include "kernels/cpu/attention_ref.h"

namespace spkv::kernels {
namespace {
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> randn(size_t n, std::mt19937& rng, float sd = 1.f) {
  std::normal_distribution<float> d(0.f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

void expect_close(const std::vector<float>& a, const std::vector<float>& b, double tol, const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  int64_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(std::abs(a[i] - b[i]) <= tol) && bad++ < 5) ADD_FAILURE() << what << ": element " << i << ": " << a[i] << " vs " << b[i];
  EXPECT_EQ(bad, 0) << what;
}

// Gated attention with q and y laid out (B, T, H, D) (token-major, as projections produce them), keys
// (B, Hkv, S, D), random gates.
struct Prefill {
  int64_t B = 2, H = 6, Hkv = 2, T = 97, S = 131, D = 24;
  std::vector<float> q, k, v, y_ref, y_fast;
  std::vector<uint8_t> keep;
  std::vector<int64_t> qp, kp;
  GatedAttentionParams p;
  explicit Prefill(std::mt19937& rng, double keep_rate) {
    q = randn(B * T * H * D, rng), k = randn(B * Hkv * S * D, rng), v = randn(B * Hkv * S * D, rng);
    std::bernoulli_distribution open(keep_rate);
    for (int64_t i = 0; i < B * Hkv * S; ++i) keep.push_back(open(rng));
    for (int64_t s = 0; s < S; ++s) kp.push_back(s);
    for (int64_t t = 0; t < T; ++t) qp.push_back(S - T + t);
    p.B = B, p.H = H, p.Hkv = Hkv, p.T = T, p.S = S, p.D = D, p.scale = 1.f / std::sqrt(float(D));
    set_contiguous_strides(p);
    p.q_sb = T * H * D, p.q_st = H * D, p.q_sh = D;  // (B, T, H, D)
    p.y_sb = p.q_sb, p.y_st = p.q_st, p.y_sh = p.q_sh;
    p.q = q.data(), p.k = k.data(), p.v = v.data(), p.q_pos = qp.data(), p.k_pos = kp.data();
  }
  void run(int64_t window, bool gates) {
    p.window = window, p.keep = gates ? keep.data() : nullptr;
    y_ref.assign(q.size(), kNaN), y_fast.assign(q.size(), kNaN);
    p.y = y_ref.data();
    ASSERT_EQ(cpu::gated_attention_ref(p), Status::ok);
    p.y = y_fast.data();
    ASSERT_EQ(cpu::gated_attention(p), Status::ok);
  }
};

TEST(AttentionFast, GatedPrefillMatchesTheReferenceAtOddSizes) {
  std::mt19937 rng(7);
  Prefill c(rng, 0.3);
  for (int64_t window : {0, 1, 16, 37})
    for (bool gates : {false, true}) {
      c.run(window, gates);
      expect_close(c.y_fast, c.y_ref, 1e-5, "window " + std::to_string(window) + (gates ? " gated" : ""));
    }
  // The data is not degenerate: the gates change the answer.
  c.run(16, false);
  auto window_only = c.y_ref;
  c.run(16, true);
  double diff = 0;
  for (size_t i = 0; i < window_only.size(); ++i) diff = std::max(diff, double(std::abs(window_only[i] - c.y_ref[i])));
  EXPECT_GT(diff, 0.1);
}

TEST(AttentionFast, QueriesThatSeeNoKeyGetZeroAndEmptyKeysAreHandled) {
  std::mt19937 rng(3);
  Prefill c(rng, 0.0);
  for (auto& x : c.qp) x -= c.S;  // every query before every key
  c.run(8, true);
  for (float y : c.y_fast) ASSERT_EQ(y, 0.f);
  c.p.S = 0;
  std::vector<float> y(c.q.size(), kNaN);
  c.p.y = y.data();
  ASSERT_EQ(cpu::gated_attention(c.p), Status::ok);
  for (float x : y) ASSERT_EQ(x, 0.f);
}

TEST(AttentionFast, KeyBlocksOutsideTheWindowWithClosedGatesAreSkipped) {
  // One tile of 32 queries at positions 96..127 over keys 0..127 (blocks of 32), window 32: blocks 2 and 3
  // hold local keys; block 0 has one open gate; block 1 has none and is the only one skipped.
  std::mt19937 rng(5);
  Prefill c(rng, 0.0);  // its buffers are large enough for the sizes below
  GatedAttentionParams& p = c.p;
  p.B = 1, p.H = 2, p.Hkv = 1, p.T = 32, p.S = 128, p.D = 8, p.window = 32;
  set_contiguous_strides(p);
  c.kp.resize(128), c.qp.resize(32);
  std::iota(c.kp.begin(), c.kp.end(), 0), std::iota(c.qp.begin(), c.qp.end(), 96);
  c.keep.assign(128, 0);
  c.keep[5] = 1;
  c.y_ref.resize(c.q.size());
  p.keep = c.keep.data(), p.k_pos = c.kp.data(), p.q_pos = c.qp.data(), p.y = c.y_ref.data();
  cpu::BlockCount n = cpu::gated_attention_blocks(p);
  EXPECT_EQ(n.total, 4);
  EXPECT_EQ(n.read, 3);
  c.keep[40] = 1;  // an open gate in block 1: now it must be read
  EXPECT_EQ(cpu::gated_attention_blocks(p).read, 4);
}

// A hand-built ragged cache: n_seq sequences x Hkv heads, ring of W slots (ring_len per sequence), store
// pages of P tokens drawn from a shuffled pool.
struct Ragged {
  int64_t n_seq = 3, H = 6, Hkv = 2, W = 5, P = 8, D = 24;
  std::vector<float> q, ring_k, ring_v, pool, y_ref, y_fast;
  std::vector<int32_t> ring_len, indptr{0}, pages, store_len;
  std::vector<const float*> page_k, page_v;
  DecodeParams p;
  Ragged(std::mt19937& rng, std::vector<int32_t> rings, std::vector<int32_t> stores, int64_t window) : W(window) {
    ring_len = std::move(rings), store_len = std::move(stores);
    q = randn(n_seq * H * D, rng), ring_k = randn(n_seq * Hkv * W * D, rng), ring_v = randn(n_seq * Hkv * W * D, rng);
    int64_t n_pages = 0;
    for (int32_t len : store_len) n_pages += (len + P - 1) / P;
    pool = randn(n_pages * 2 * P * D, rng, 2.f);
    std::vector<int32_t> ids(n_pages);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    for (int64_t i = 0; i < n_pages; ++i) page_k.push_back(&pool[i * 2 * P * D]), page_v.push_back(&pool[(i * 2 + 1) * P * D]);
    for (int32_t len : store_len) {
      for (int32_t j = 0; j < (len + P - 1) / P; ++j) pages.push_back(ids[pages.size()]);
      indptr.push_back(int32_t(pages.size()));
    }
    CacheView& c = p.cache;
    c.n_seq = n_seq, c.Hkv = Hkv, c.D = D, c.W = W, c.page_size = P;
    c.ring_k = W ? ring_k.data() : nullptr, c.ring_v = W ? ring_v.data() : nullptr, c.ring_len = W ? ring_len.data() : nullptr;
    c.page_k = page_k.data(), c.page_v = page_v.data();
    c.store_indptr = indptr.data(), c.store_pages = pages.data(), c.store_len = store_len.data();
    p.q = q.data(), p.H = H, p.scale = 1.f / std::sqrt(float(D));
    y_ref.assign(q.size(), kNaN), y_fast.assign(q.size(), kNaN);
    p.y = y_ref.data();
    EXPECT_EQ(cpu::decode_attention_ref(p), Status::ok);
    p.y = y_fast.data();
    EXPECT_EQ(cpu::decode_attention(p), Status::ok);
  }
};

TEST(AttentionFast, DecodeOverARaggedPagedCacheMatchesTheReference) {
  std::mt19937 rng(11);
  // Store lengths per (sequence, KV head): 0, 1, a page exactly, pages partly filled, a long head.
  Ragged r(rng, {5, 1, 3}, {0, 1, 8, 17, 3, 61}, 5);
  expect_close(r.y_fast, r.y_ref, 1e-5, "SP-KV cache");
  Ragged dense(rng, {0, 0, 0}, {9, 9, 1, 1, 40, 40}, 0);  // the dense cache: no ring
  expect_close(dense.y_fast, dense.y_ref, 1e-5, "dense cache");
}

TEST(AttentionFast, DecodeWeightsAreEachEntrysShareAndRebuildTheOutput) {
  // The weights the budgeted policies read: row (b, h) = ring slots then store rows. Checked two ways that
  // do not trust the kernels' own loops: they sum to 1, and the values they weight, gathered here in that
  // order, sum (in float64) to the kernel's output. A wrong order or a missed page fails the second.
  std::mt19937 rng(17);
  Ragged r(rng, {5, 1, 3}, {0, 1, 8, 17, 3, 61}, 5);
  const int64_t stride = 70, G = r.H / r.Hkv;
  std::vector<float> w_ref(r.n_seq * r.H * stride, kNaN), w_fast = w_ref;
  r.p.weights = w_ref.data(), r.p.weights_stride = stride, r.p.y = r.y_ref.data();
  ASSERT_EQ(cpu::decode_attention_ref(r.p), Status::ok);
  r.p.weights = w_fast.data(), r.p.y = r.y_fast.data();
  ASSERT_EQ(cpu::decode_attention(r.p), Status::ok);
  for (int64_t b = 0; b < r.n_seq; ++b)
    for (int64_t h = 0; h < r.H; ++h) {
      const int64_t i = b * r.Hkv + h / G, n = r.ring_len[b] + r.store_len[i];
      std::vector<const float*> values;
      for (int64_t s = 0; s < r.ring_len[b]; ++s) values.push_back(&r.ring_v[(i * r.W + s) * r.D]);
      for (int64_t j = 0; j < r.store_len[i]; ++j) values.push_back(r.page_v[r.pages[r.indptr[i] + j / r.P]] + (j % r.P) * r.D);
      const float* wr = &w_ref[(b * r.H + h) * stride];
      const float* wf = &w_fast[(b * r.H + h) * stride];
      double sum = 0;
      std::vector<double> y(r.D, 0.0);
      for (int64_t s = 0; s < n; ++s) {
        sum += wr[s];
        EXPECT_NEAR(wf[s], wr[s], 1e-6) << "b " << b << " h " << h << " entry " << s;
        for (int64_t d = 0; d < r.D; ++d) y[d] += double(wr[s]) * values[s][d];
      }
      EXPECT_NEAR(sum, 1.0, 1e-5) << "b " << b << " h " << h;
      for (int64_t d = 0; d < r.D; ++d) EXPECT_NEAR(y[d], r.y_ref[(b * r.H + h) * r.D + d], 1e-5) << "b " << b << " h " << h;
      EXPECT_TRUE(std::isnan(wr[n]) && std::isnan(wf[n])) << "past the entries nothing is written";
    }
  r.p.weights_stride = 63;  // the long head holds 3 + 61 entries
  EXPECT_EQ(cpu::decode_attention_ref(r.p), Status::invalid_argument);
  EXPECT_EQ(cpu::decode_attention(r.p), Status::invalid_argument);
}

TEST(AttentionFast, DecodeReferenceAgreesWithGatedReferenceOnTheGatheredKeys) {
  // The two references are independent loops: gather (b, hk)'s ring and store into contiguous keys and
  // the gated reference with no window must give the decode reference's answer.
  std::mt19937 rng(13);
  Ragged r(rng, {5, 2, 4}, {3, 0, 8, 17, 1, 30}, 5);
  for (int64_t b = 0; b < r.n_seq; ++b)
    for (int64_t hk = 0; hk < r.Hkv; ++hk) {
      const int64_t i = b * r.Hkv + hk, G = r.H / r.Hkv;
      std::vector<float> K, V;
      for (int64_t s = 0; s < r.ring_len[b]; ++s) {
        const float* kr = &r.ring_k[(i * r.W + s) * r.D];
        const float* vr = &r.ring_v[(i * r.W + s) * r.D];
        K.insert(K.end(), kr, kr + r.D), V.insert(V.end(), vr, vr + r.D);
      }
      for (int64_t j = 0; j < r.store_len[i]; ++j) {
        const int32_t page = r.pages[r.indptr[i] + j / r.P];
        const float* kr = r.page_k[page] + (j % r.P) * r.D;
        const float* vr = r.page_v[page] + (j % r.P) * r.D;
        K.insert(K.end(), kr, kr + r.D), V.insert(V.end(), vr, vr + r.D);
      }
      const int64_t S = int64_t(K.size()) / r.D;
      std::vector<int64_t> kp(S, 0), qp{0};
      std::vector<float> y(G * r.D, kNaN);
      GatedAttentionParams g;
      g.B = 1, g.H = G, g.Hkv = 1, g.T = 1, g.S = S, g.D = r.D, g.scale = r.p.scale;
      set_contiguous_strides(g);
      g.q = &r.q[i * G * r.D], g.k = K.data(), g.v = V.data(), g.y = y.data(), g.q_pos = qp.data(), g.k_pos = kp.data();
      ASSERT_EQ(cpu::gated_attention_ref(g), Status::ok);
      for (int64_t x = 0; x < G * r.D; ++x) EXPECT_NEAR(y[x], r.y_ref[i * G * r.D + x], 1e-6) << "b " << b << " hk " << hk;
    }
}

}  // namespace
}  // namespace spkv::kernels
