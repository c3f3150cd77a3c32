// One warp's online softmax over a stream of keys for the G query heads that share them (GQA), used by the
// prefill kernels. Lane l holds elements l, l + 32, ..., l + 32 (DL - 1) (D <= 32 DL) of the query rows, of
// the current key and value, and of the accumulators, so each key and value row is read once per group.
// Compiled for GM >= G query heads and DL (the kernels round both up to 1, 2, 4 or 8), so that the state
// is GM * (2 DL + 2) registers a lane and never spills.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/bf16.h"

namespace spkv::kernels::cuda {

constexpr int kWarpMaxG = 8, kWarpMaxDL = 8;

__device__ inline float warp_sum(float x) {
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <int GM, int DL>
struct WarpSoftmax {
  float q[GM][DL], acc[GM][DL], m[GM], l[GM];

  // q_row(g) points at query head g's row (D elements, float or bf16); G <= GM.
  template <class QueryRow>
  __device__ void reset(QueryRow q_row, int64_t G, int64_t D, int lane) {
    for (int g = 0; g < GM; ++g) {
      m[g] = -INFINITY, l[g] = 0.f;
      for (int e = 0; e < DL; ++e) {
        const int64_t d = lane + 32 * e;
        q[g][e] = g < G && d < D ? to_float(q_row(g)[d]) : 0.f;
        acc[g][e] = 0.f;
      }
    }
  }

  // One visible key (kr) and its value (vr), D elements each, with an additive score bias; every lane of
  // the warp calls it.
  template <class Row>
  __device__ void add(const Row* kr, const Row* vr, int64_t G, int64_t D, float scale, float bias, int lane) {
    float kv[DL], vv[DL];
    for (int e = 0; e < DL; ++e) {
      const int64_t d = lane + 32 * e;
      kv[e] = d < D ? to_float(kr[d]) : 0.f;
      vv[e] = d < D ? to_float(vr[d]) : 0.f;
    }
    for (int g = 0; g < GM; ++g) {
      if (g >= G) break;
      float dot = 0.f;
      for (int e = 0; e < DL; ++e) dot += q[g][e] * kv[e];
      const float s = warp_sum(dot) * scale + bias;
      const float m_new = fmaxf(m[g], s);
      const float corr = m[g] == -INFINITY ? 0.f : __expf(m[g] - m_new), w = __expf(s - m_new);
      l[g] = l[g] * corr + w;
      for (int e = 0; e < DL; ++e) acc[g][e] = acc[g][e] * corr + w * vv[e];
      m[g] = m_new;
    }
  }
};

}  // namespace spkv::kernels::cuda
