#include <cmath>

#include "kernels/cuda/attention_ref.h"

namespace spkv::kernels::cuda {
namespace {

constexpr int kThreads = 128;

// The scaled score of key s for query row q, or -INFINITY when the key is not visible (causal, window, gate).
__device__ float visible_score(const GatedAttentionParams& p, const float* q, int64_t b, int64_t hk, int64_t t,
                               int64_t s) {
  const int64_t d = p.q_pos[t] - p.k_pos[s];
  const bool kept = p.keep && p.keep[b * p.keep_sb + hk * p.keep_sh + s];
  if (d < 0 || !(p.window <= 0 || d < p.window || kept)) return -INFINITY;
  const float* k = p.k + b * p.k_sb + hk * p.k_sh + s * p.k_st;
  float dot = 0.f;
  for (int64_t i = 0; i < p.D; ++i) dot += q[i] * k[i];
  return dot * p.scale;
}

// Block (t, h, b); threads stride over key positions, then reduce. Float accumulation.
__global__ void gated_attention_ref_kernel(GatedAttentionParams p) {
  const int64_t t = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t hk = h / (p.H / p.Hkv);
  const float* q = p.q + b * p.q_sb + h * p.q_sh + t * p.q_st;
  __shared__ float red[kThreads];
  // Pass 1: the maximum visible score.
  float mx = -INFINITY;
  for (int64_t s = threadIdx.x; s < p.S; s += blockDim.x) mx = fmaxf(mx, visible_score(p, q, b, hk, t, s));
  red[threadIdx.x] = mx;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + w]);
    __syncthreads();
  }
  mx = red[0];
  __syncthreads();
  // Pass 2: each thread owns output dims i = threadIdx.x, threadIdx.x + blockDim.x, ...
  float* y = p.y + b * p.y_sb + h * p.y_sh + t * p.y_st;
  for (int64_t i = threadIdx.x; i < p.D; i += blockDim.x) {
    float num = 0.f, den = 0.f;
    if (mx > -INFINITY)
      for (int64_t s = 0; s < p.S; ++s) {
        const float sc = visible_score(p, q, b, hk, t, s);
        if (sc == -INFINITY) continue;
        const float w = __expf(sc - mx);
        den += w;
        num += w * p.v[b * p.v_sb + hk * p.v_sh + s * p.v_st + i];
      }
    y[i] = den > 0.f ? num / den : 0.f;
  }
}

}  // namespace

Status gated_attention_ref(const GatedAttentionParams& p, cudaStream_t stream) {
  if (!valid(p)) return Status::invalid_argument;
  if (!hard_only(p)) return Status::unsupported;
  if (p.T == 0 || p.B == 0 || p.H == 0) return Status::ok;
  if (p.T > 2147483647 || p.H > 65535 || p.B > 65535) return Status::unsupported;
  dim3 grid(unsigned(p.T), unsigned(p.H), unsigned(p.B));
  gated_attention_ref_kernel<<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError() == cudaSuccess ? Status::ok : Status::device_error;
}

int device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

}  // namespace spkv::kernels::cuda
