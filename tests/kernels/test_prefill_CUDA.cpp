// The CUDA gated prefill and its backward against the CPU reference on random data at odd sizes (G = 3,
// D = 72, and a shape for each compiled variant): a chunk of queries after cached keys, queries and outputs
// in (B, T, H, D) order (strided); hard gates with a key block whose gates are all closed (the skipped
// path), no window, no gates, queries that see no key; soft gates (far_bias, a block of -inf) and packed
// documents (k_begin), forward with lse and backward; float32 and bf16 rows (the reference gets the bf16
// values, so only the output rounding differs); the tensor-core forward on bf16 rows. Outputs are poisoned
// with NaN, so every element must be written. Skips cleanly without a device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <type_traits>
#include <random>
#include <utility>
#include <vector>

#include "kernels/cpu/attention_ref.h"
#include "kernels/cuda/attention_ref.h"
#include "kernels/cuda/prefill.h"
#include "tests/kernels/device_buffers.h"

namespace spkv::kernels {
namespace {

enum class Gates { none, hard, soft };

struct Case {
  int64_t window = 16;
  Gates gates = Gates::hard;
  int64_t first_key_pos = 0;  // 1000: every key in the future
  bool documents = false;     // row 1 packs documents starting at keys 100 and 120
  int64_t G = 3, D = 72;      // query heads per KV head, head dim
  bool tensor_cores = false;  // the forward by gated_attention_tc (bf16 rows only)
};

struct Errors {
  double y = 0, lse = 0, dq = 0, dk = 0, dv = 0, dbias = 0;
};

// Runs the forward (and with `backward` the backward) on the GPU with Row rows and on the CPU reference.
template <class Row>
Errors run(const Case& c, bool backward, std::mt19937& rng) {
  const int64_t B = 2, Hkv = 2, H = Hkv * c.G, T = 45, S = 45 + 83, D = c.D;
  std::normal_distribution<float> n;
  std::uniform_real_distribution<float> unif(0.f, 1.f);
  std::vector<float> q(B * T * H * D), k(B * Hkv * S * D), v(B * Hkv * S * D), dy(B * T * H * D);
  for (auto* a : {&q, &k, &v, &dy}) {
    for (auto& x : *a) x = n(rng);
    test::round_to<Row>(*a);
  }
  std::vector<uint8_t> keep(B * Hkv * S);
  std::vector<float> bias(B * Hkv * S);
  for (int64_t i = 0; i < int64_t(keep.size()); ++i) {
    const bool closed_block = (i % S) / 32 == 1;
    keep[i] = !closed_block && rng() % 5 == 0;
    bias[i] = closed_block ? -INFINITY : std::log(unif(rng) + 1e-8f);
  }
  std::vector<int64_t> qpos(T), kpos(S), k_begin(B * T, 0);
  for (int64_t s = 0; s < S; ++s) kpos[s] = c.first_key_pos + s;
  for (int64_t t = 0; t < T; ++t) qpos[t] = S - T + t;  // the chunk after 83 cached tokens
  for (int64_t t = 0; c.documents && t < T; ++t) k_begin[T + t] = qpos[t] >= 120 ? 120 : qpos[t] >= 100 ? 100 : 0;

  GatedAttentionGradParams want;
  GatedAttentionParams& p = want.fwd;
  p.B = B, p.H = H, p.Hkv = Hkv, p.T = T, p.S = S, p.D = D, p.window = c.window, p.scale = 1.0f / std::sqrt(float(D));
  set_contiguous_strides(p);
  p.q_st = H * D, p.q_sh = D, p.q_sb = T * H * D;  // (B, T, H, D)
  p.y_st = p.q_st, p.y_sh = p.q_sh, p.y_sb = p.q_sb;
  std::vector<float> y(q.size(), NAN), lse(B * H * T, NAN), dq(q.size(), NAN), dk(k.size(), NAN), dv(v.size(), NAN),
      dbias(bias.size(), NAN);
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.q_pos = qpos.data(), p.k_pos = kpos.data(), p.y = y.data();
  p.keep = c.gates == Gates::hard ? keep.data() : nullptr;
  p.far_bias = c.gates == Gates::soft ? bias.data() : nullptr;
  p.k_begin = c.documents ? k_begin.data() : nullptr;
  p.lse = lse.data();
  want.dy = dy.data(), want.dq = dq.data(), want.dk = dk.data(), want.dv = dv.data();
  want.d_far_bias = p.far_bias ? dbias.data() : nullptr;
  EXPECT_EQ(cpu::gated_attention_ref(p), Status::ok);
  if (backward) EXPECT_EQ(cpu::gated_attention_backward_ref(want), Status::ok);

  test::Device dev;
  auto poisoned = [&](const std::vector<float>& like) { return dev.copy(std::vector<float>(like.size(), NAN)); };
  auto rows = [&](const std::vector<float>& x) { return dev.copy(test::as_rows<Row>(x)); };
  auto poisoned_rows = [&](const std::vector<float>& like) { return rows(std::vector<float>(like.size(), NAN)); };
  GatedAttentionGradParamsT<Row> got;
  GatedAttentionParamsT<Row>& g = got.fwd;
  g.B = B, g.H = H, g.Hkv = Hkv, g.T = T, g.S = S, g.D = D, g.window = c.window, g.scale = p.scale;
  set_contiguous_strides(g);
  g.q_st = p.q_st, g.q_sh = p.q_sh, g.q_sb = p.q_sb, g.y_st = p.y_st, g.y_sh = p.y_sh, g.y_sb = p.y_sb;
  g.q = rows(q), g.k = rows(k), g.v = rows(v), g.q_pos = dev.copy(qpos), g.k_pos = dev.copy(kpos);
  g.keep = p.keep ? dev.copy(keep) : nullptr;
  g.far_bias = p.far_bias ? dev.copy(bias) : nullptr;
  g.k_begin = p.k_begin ? dev.copy(k_begin) : nullptr;
  g.y = poisoned_rows(y), g.lse = poisoned(lse);
  got.dy = rows(dy), got.dq = poisoned_rows(dq), got.dk = poisoned_rows(dk), got.dv = poisoned_rows(dv), got.delta = poisoned(lse);
  got.d_far_bias = p.far_bias ? poisoned(dbias) : nullptr;
  if constexpr (std::is_same_v<Row, bf16>)
    EXPECT_EQ(c.tensor_cores ? cuda::gated_attention_tc(g, nullptr) : cuda::gated_attention(g, nullptr), Status::ok);
  else
    EXPECT_EQ(cuda::gated_attention(g, nullptr), Status::ok);
  if (backward) EXPECT_EQ(cuda::gated_attention_backward(got, nullptr), Status::ok);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);

  Errors e;
  auto back = [&](const Row* d, size_t n) { return test::as_floats(dev.back(d, n)); };
  e.y = test::max_rel_error(back(g.y, y.size()), y);
  // lse is -inf where a query sees nothing: equal there, relative elsewhere.
  const auto lse_got = dev.back(g.lse, lse.size());
  for (size_t i = 0; i < lse.size(); ++i)
    e.lse = std::max(e.lse, std::isinf(lse[i]) ? (lse_got[i] == lse[i] ? 0.0 : NAN) : std::abs(lse_got[i] - lse[i]) / (1 + std::abs(lse[i])));
  if (!backward) return e;
  e.dq = test::max_rel_error(back(got.dq, dq.size()), dq);
  e.dk = test::max_rel_error(back(got.dk, dk.size()), dk);
  e.dv = test::max_rel_error(back(got.dv, dv.size()), dv);
  if (p.far_bias) e.dbias = test::max_rel_error(dev.back(got.d_far_bias, dbias.size()), dbias);
  return e;
}

// Tolerances, relative to the largest element: float32 arithmetic, then (bf16) one rounding of the output.
template <class Row>
constexpr double kForwardTol = std::is_same_v<Row, float> ? 2e-5 : 1e-2;
template <class Row>
constexpr double kBackwardTol = std::is_same_v<Row, float> ? 1e-4 : 2e-2;

template <class Row>
void forward_matches() {
  std::mt19937 rng(11);
  for (const Case& c : {Case{16, Gates::hard},            // window + gates, a closed block skipped
                        Case{0, Gates::none},             // no window: plain causal
                        Case{16, Gates::none},            // window only (sliding window)
                        Case{16, Gates::soft},            // soft gates, a block of -inf biases skipped
                        Case{16, Gates::soft, 0, true},   // ... with packed documents
                        Case{16, Gates::hard, 0, true}}) {
    const Errors e = run<Row>(c, false, rng);
    EXPECT_LT(e.y, kForwardTol<Row>) << "window " << c.window << " gates " << int(c.gates) << " documents " << c.documents;
    EXPECT_LT(e.lse, 2e-5) << "window " << c.window << " gates " << int(c.gates) << " documents " << c.documents;
  }
  const Errors future = run<Row>(Case{16, Gates::hard, 1000}, false, rng);  // every key in the future: y = 0, lse = -inf
  EXPECT_EQ(future.y, 0.0);
  EXPECT_EQ(future.lse, 0.0);
}

template <class Row>
void backward_matches() {
  std::mt19937 rng(12);
  for (const Case& c : {Case{16, Gates::soft, 0, true}, Case{16, Gates::soft}, Case{16, Gates::hard}, Case{0, Gates::none},
                        Case{16, Gates::hard, 1000}}) {
    const Errors e = run<Row>(c, true, rng);
    const auto what = ::testing::Message() << "window " << c.window << " gates " << int(c.gates) << " documents "
                                           << c.documents << " first key " << c.first_key_pos;
    for (double x : {e.y, e.dq, e.dk, e.dv, e.dbias}) EXPECT_LT(x, kBackwardTol<Row>) << what;
  }
}

// The kernels are compiled per rounded group size and D / 32 (1, 2, 4, 8 each): every one of those, with
// shapes that round up and shapes that fit exactly, forward and backward.
template <class Row>
void every_shape_matches() {
  std::mt19937 rng(13);
  for (auto [G, D] : {std::pair<int64_t, int64_t>{1, 32}, {2, 8}, {2, 40}, {3, 72}, {4, 128}, {5, 136}, {8, 256}}) {
    const Errors e = run<Row>(Case{16, Gates::hard, 0, false, G, D}, true, rng);
    for (double x : {e.y, e.dq, e.dk, e.dv}) EXPECT_LT(x, kBackwardTol<Row>) << "G " << G << " D " << D;
    EXPECT_LT(e.lse, 2e-5) << "G " << G << " D " << D;
  }
}

TEST(GatedPrefill_CUDA, EveryCompiledShapeMatchesCpuReference) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  every_shape_matches<float>();
  every_shape_matches<bf16>();
}

// The tensor-core forward (bf16 rows): every forward case at G 3 (a tile's rows mix query heads) and D 64,
// then G 1, 2 and 4 at the other compiled D. It rounds the probabilities to bf16 for the P V product, so y is
// held to 2e-2 and lse to 5e-3; keys all in the future still give y = 0 and lse = -inf exactly.
TEST(GatedPrefill_CUDA, TensorCoreForwardMatchesCpuReference) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(14);
  for (Case c : {Case{16, Gates::hard, 0, false, 3, 64}, Case{0, Gates::none, 0, false, 3, 64},
                 Case{16, Gates::none, 0, false, 3, 64}, Case{16, Gates::soft, 0, false, 3, 64},
                 Case{16, Gates::soft, 0, true, 3, 64}, Case{16, Gates::hard, 0, true, 3, 64},
                 Case{16, Gates::hard, 0, false, 1, 32}, Case{0, Gates::none, 0, false, 2, 128},
                 Case{16, Gates::soft, 0, true, 4, 128}}) {
    c.tensor_cores = true;
    const Errors e = run<bf16>(c, false, rng);
    const auto what = ::testing::Message() << "window " << c.window << " gates " << int(c.gates) << " documents "
                                           << c.documents << " G " << c.G << " D " << c.D;
    EXPECT_LT(e.y, 2e-2) << what;
    EXPECT_LT(e.lse, 5e-3) << what;
  }
  const Errors future = run<bf16>(Case{16, Gates::hard, 1000, false, 3, 64, true}, false, rng);
  EXPECT_EQ(future.y, 0.0);
  EXPECT_EQ(future.lse, 0.0);
  GatedAttentionParamsT<bf16> odd;  // D 72 is not a tensor-core shape: refused before any pointer is read
  odd.q = odd.k = odd.v = reinterpret_cast<const bf16*>(&odd), odd.y = reinterpret_cast<bf16*>(&odd);
  odd.q_pos = odd.k_pos = &odd.B, odd.B = odd.T = odd.S = 1, odd.H = odd.Hkv = 1, odd.D = 72;
  EXPECT_EQ(cuda::gated_attention_tc(odd, nullptr), Status::unsupported);
}

TEST(GatedPrefill_CUDA, MatchesCpuReference) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  forward_matches<float>();
}

TEST(GatedPrefill_CUDA, Bf16MatchesCpuReference) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  forward_matches<bf16>();
}

TEST(GatedPrefill_CUDA, BackwardMatchesCpuReference) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  backward_matches<float>();
}

TEST(GatedPrefill_CUDA, Bf16BackwardMatchesCpuReference) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  backward_matches<bf16>();
}

}  // namespace
}  // namespace spkv::kernels
