// The CUDA gated-attention reference against the CPU reference on random data at odd sizes, with a
// poisoned output buffer. Skips cleanly without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/attention_ref.h"
#include "kernels/cuda/attention_ref.h"

namespace spkv::kernels {
namespace {

template <class T>
T* to_device(const std::vector<T>& h) {
  T* d = nullptr;
  cudaMalloc(&d, h.size() * sizeof(T));
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

TEST(AttentionRef_CUDA, MatchesCpuReference) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t B = 2, H = 6, Hkv = 3, T = 97, S = 97, D = 24, W = 16;
  std::mt19937 rng(9);
  std::normal_distribution<float> n;
  std::vector<float> q(B * H * T * D), k(B * Hkv * S * D), v(B * Hkv * S * D), y(B * H * T * D, NAN);
  for (auto* a : {&q, &k, &v})
    for (auto& x : *a) x = n(rng);
  std::vector<uint8_t> keep(B * Hkv * S);
  for (auto& x : keep) x = rng() % 4 == 0;
  std::vector<int64_t> pos(T);
  for (int64_t t = 0; t < T; ++t) pos[t] = t;
  GatedAttentionParams p;
  p.B = B, p.H = H, p.Hkv = Hkv, p.T = T, p.S = S, p.D = D, p.window = W, p.scale = 1.0f / std::sqrt(float(D));
  set_contiguous_strides(p);
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.keep = keep.data(), p.q_pos = pos.data(), p.k_pos = pos.data();
  p.y = y.data();
  ASSERT_EQ(cpu::gated_attention_ref(p), Status::ok);
  GatedAttentionParams g = p;
  g.q = to_device(q), g.k = to_device(k), g.v = to_device(v), g.keep = to_device(keep);
  g.q_pos = g.k_pos = to_device(pos);
  std::vector<float> poison(y.size(), NAN), got(y.size());
  float* dy = to_device(poison);
  g.y = dy;
  ASSERT_EQ(cuda::gated_attention_ref(g, nullptr), Status::ok);
  cudaMemcpy(got.data(), dy, got.size() * sizeof(float), cudaMemcpyDeviceToHost);
  double err = 0;
  for (size_t i = 0; i < got.size(); ++i) err = std::max(err, double(std::abs(got[i] - y[i])));
  EXPECT_LT(err, 1e-4);  // NaN (an unwritten element) fails this comparison too
  for (const void* ptr : {(const void*)g.q, (const void*)g.k, (const void*)g.v, (const void*)g.keep,
                          (const void*)g.q_pos, (const void*)dy})
    cudaFree(const_cast<void*>(ptr));
}

}  // namespace
}  // namespace spkv::kernels
