// The CUDA gated prefill against the CPU reference on random data at odd sizes: a chunk of queries after
// cached keys, queries and outputs in (B, T, H, D) order (strided), key blocks with every gate closed (the
// skipped path), no window, no gates, and queries that see no key (y = 0). Poisoned outputs. Skips cleanly
// without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/attention_ref.h"
#include "kernels/cuda/attention_ref.h"
#include "kernels/cuda/prefill.h"

namespace spkv::kernels {
namespace {

template <class T>
T* to_device(const std::vector<T>& h) {
  T* d = nullptr;
  cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(T));
  if (!h.empty()) cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

// Runs both on one configuration; returns the largest absolute difference (NaN if an element was not written).
double max_error(int64_t window, bool gates, int64_t first_key_pos, std::mt19937& rng) {
  const int64_t B = 2, H = 6, Hkv = 2, T = 45, S = 45 + 83, D = 72;
  std::normal_distribution<float> n;
  std::vector<float> q(B * T * H * D), k(B * Hkv * S * D), v(B * Hkv * S * D), want(B * T * H * D, NAN);
  for (auto* a : {&q, &k, &v})
    for (auto& x : *a) x = n(rng);
  std::vector<uint8_t> keep(B * Hkv * S);
  for (int64_t i = 0; i < int64_t(keep.size()); ++i) keep[i] = (i % S) / 32 != 1 && rng() % 5 == 0;  // block 1 all closed
  std::vector<int64_t> qpos(T), kpos(S);
  for (int64_t s = 0; s < S; ++s) kpos[s] = first_key_pos + s;
  for (int64_t t = 0; t < T; ++t) qpos[t] = S - T + t;  // the chunk after 83 cached tokens
  GatedAttentionParams p;
  p.B = B, p.H = H, p.Hkv = Hkv, p.T = T, p.S = S, p.D = D, p.window = window, p.scale = 1.0f / std::sqrt(float(D));
  set_contiguous_strides(p);
  p.q_st = H * D, p.q_sh = D, p.q_sb = T * H * D;  // (B, T, H, D)
  p.y_st = p.q_st, p.y_sh = p.q_sh, p.y_sb = p.q_sb;
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.keep = gates ? keep.data() : nullptr;
  p.q_pos = qpos.data(), p.k_pos = kpos.data(), p.y = want.data();
  EXPECT_EQ(cpu::gated_attention_ref(p), Status::ok);
  GatedAttentionParams g = p;
  g.q = to_device(q), g.k = to_device(k), g.v = to_device(v), g.keep = gates ? to_device(keep) : nullptr;
  g.q_pos = to_device(qpos), g.k_pos = to_device(kpos);
  float* y = to_device(std::vector<float>(want.size(), NAN));
  g.y = y;
  EXPECT_EQ(cuda::gated_attention(g, nullptr), Status::ok);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> got(want.size());
  cudaMemcpy(got.data(), y, got.size() * sizeof(float), cudaMemcpyDeviceToHost);
  double err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::abs(double(got[i]) - double(want[i]));
    err = std::isnan(e) ? NAN : std::max(err, e);
    if (std::isnan(err)) break;
  }
  for (const void* ptr : {(const void*)g.q, (const void*)g.k, (const void*)g.v, (const void*)g.keep, (const void*)g.q_pos,
                          (const void*)g.k_pos, (const void*)y})
    cudaFree(const_cast<void*>(ptr));
  return err;
}

TEST(GatedPrefill_CUDA, MatchesCpuReference) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(11);
  EXPECT_LT(max_error(16, true, 0, rng), 2e-5);    // window + gates, a closed block skipped
  EXPECT_LT(max_error(0, false, 0, rng), 2e-5);    // no window: plain causal
  EXPECT_LT(max_error(16, false, 0, rng), 2e-5);   // window only (sliding window)
  EXPECT_LT(max_error(16, true, 1000, rng), 1e-12);  // every key in the future: y = 0 everywhere
}

}  // namespace
}  // namespace spkv::kernels
