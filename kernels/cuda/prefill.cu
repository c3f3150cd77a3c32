// Gated prefill attention (prefill.h): warp per (b, hk, t), online softmax per query head in registers,
// key blocks of 32 chosen by a warp vote on visibility.
#include <cmath>

#include "kernels/cuda/prefill.h"
#include "kernels/cuda/warp_softmax.cuh"

namespace spkv::kernels::cuda {
namespace {

constexpr int kWarps = 4;

__global__ void __launch_bounds__(kWarps * 32) gated_attention_kernel(GatedAttentionParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;  // (b, hk, t)
  if (row >= p.B * p.Hkv * p.T) return;  // whole warps leave together
  const int64_t t = row % p.T, hk = (row / p.T) % p.Hkv, b = row / (p.T * p.Hkv), G = p.H / p.Hkv, D = p.D;
  const int64_t qp = p.q_pos[t];
  WarpSoftmax sm;
  sm.reset([&](int64_t g) { return p.q + b * p.q_sb + (hk * G + g) * p.q_sh + t * p.q_st; }, G, D, lane);
  for (int64_t s0 = 0; s0 < p.S; s0 += 32) {
    // Which of the block's keys this query sees: positions and gates only, no key rows.
    const int64_t s = s0 + lane;
    bool visible = false;
    if (s < p.S) {
      const int64_t dist = qp - p.k_pos[s];
      const bool kept = p.keep && p.keep[b * p.keep_sb + hk * p.keep_sh + s];
      visible = dist >= 0 && (p.window <= 0 || dist < p.window || kept);
    }
    unsigned mask = __ballot_sync(0xffffffffu, visible);
    while (mask) {  // the visible keys, in order
      const int j = __ffs(mask) - 1;
      mask &= mask - 1;
      sm.add(p.k + b * p.k_sb + hk * p.k_sh + (s0 + j) * p.k_st, p.v + b * p.v_sb + hk * p.v_sh + (s0 + j) * p.v_st, G, D,
             p.scale, lane);
    }
  }
  for (int g = 0; g < kWarpMaxG; ++g) {  // static bounds keep the state in registers
    if (g >= G) break;
    float* y = p.y + b * p.y_sb + (hk * G + g) * p.y_sh + t * p.y_st;
    for (int e = 0; e < kWarpMaxDL; ++e) {
      const int64_t d = lane + 32 * e;
      if (d < D) y[d] = sm.l[g] > 0.f ? sm.acc[g][e] / sm.l[g] : 0.f;
    }
  }
}

}  // namespace

Status gated_attention(const GatedAttentionParams& p, cudaStream_t stream) {
  if (!valid(p)) return Status::invalid_argument;
  if (p.H / p.Hkv > kWarpMaxG || p.D > 32 * kWarpMaxDL) return Status::unsupported;
  const int64_t rows = p.B * p.Hkv * p.T;
  if (rows == 0) return Status::ok;
  if ((rows + kWarps - 1) / kWarps > 2147483647) return Status::unsupported;
  gated_attention_kernel<<<unsigned((rows + kWarps - 1) / kWarps), kWarps * 32, 0, stream>>>(p);
  return cudaGetLastError() == cudaSuccess ? Status::ok : Status::device_error;
}

}  // namespace spkv::kernels::cuda
