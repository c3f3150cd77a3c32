// Gated prefill attention (prefill.h) and its backward.
// Forward: warp per (b, hk, t), online softmax per query head in registers, key blocks of 32 chosen by a
// warp vote on visibility. Backward (FlashAttention-2 style, recomputing the probabilities from lse): delta =
// rowsum(dy * y) and dq (warp per query row, over its visible keys), then dk, dv, d_far_bias (warp per key
// row, over the queries that see it). The kernels are compiled for D / 32 (and the forward for the group
// size), each rounded up to 1, 2, 4 or 8, so a lane holds only the registers its shape needs. Every output
// element has one owner: no atomics, deterministic.
#include <cmath>

#include "kernels/cuda/key_bias.cuh"
#include "kernels/cuda/prefill.h"
#include "kernels/cuda/rounded.cuh"
#include "kernels/cuda/warp_softmax.cuh"

namespace spkv::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr unsigned kAll = 0xffffffffu;

// Lane l's share of a row: elements l, l + 32, ..., l + 32 (DL - 1) (zero past D), in float32.
template <int DL, class Row>
__device__ inline void load_row(float (&r)[DL], const Row* row, int64_t D, int lane) {
  for (int e = 0; e < DL; ++e) r[e] = lane + 32 * e < D ? to_float(row[lane + 32 * e]) : 0.f;
}
template <int DL, class Row>
__device__ inline void store_row(Row* row, const float (&r)[DL], float scale, int64_t D, int lane) {
  for (int e = 0; e < DL; ++e)
    if (lane + 32 * e < D) store(row + lane + 32 * e, r[e] * scale);
}
template <int DL>
__device__ inline float warp_dot(const float (&a)[DL], const float (&b)[DL]) {
  float s = 0.f;
  for (int e = 0; e < DL; ++e) s += a[e] * b[e];
  return warp_sum(s);
}

// visit(i, bias) for every i < n in order whose bias_of(i) is not -inf, 32 at a time: a warp vote on the
// biases (positions and gates only) skips a block of 32 with nothing visible. Every lane of the warp calls it.
template <class BiasOf, class Visit>
__device__ inline void for_each_visible(int64_t n, int lane, BiasOf bias_of, Visit visit) {
  for (int64_t i0 = 0; i0 < n; i0 += 32) {
    const float bias = i0 + lane < n ? bias_of(i0 + lane) : -INFINITY;
    unsigned mask = __ballot_sync(kAll, bias != -INFINITY);
    while (mask) {
      const int j = __ffs(mask) - 1;
      mask &= mask - 1;
      visit(i0 + j, __shfl_sync(kAll, bias, j));
    }
  }
}

// Compiled for GM >= G query heads and DL >= D / 32 (warp_softmax.cuh).
template <class Row, int GM, int DL>
__global__ void __launch_bounds__(kWarps * 32) gated_attention_kernel(GatedAttentionParamsT<Row> p) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;  // (b, hk, t)
  if (row >= p.B * p.Hkv * p.T) return;  // whole warps leave together
  const int64_t t = row % p.T, hk = (row / p.T) % p.Hkv, b = row / (p.T * p.Hkv), G = p.H / p.Hkv, D = p.D;
  WarpSoftmax<GM, DL> sm;
  sm.reset([&](int64_t g) { return p.q + b * p.q_sb + (hk * G + g) * p.q_sh + t * p.q_st; }, G, D, lane);
  for_each_visible(p.S, lane, [&](int64_t s) { return key_bias(p, b, hk, t, s); }, [&](int64_t s, float bias) {
    sm.add(p.k + b * p.k_sb + hk * p.k_sh + s * p.k_st, p.v + b * p.v_sb + hk * p.v_sh + s * p.v_st, G, D, p.scale, bias, lane);
  });
  for (int g = 0; g < GM; ++g) {  // static bounds keep the state in registers
    if (g >= G) break;
    Row* y = p.y + b * p.y_sb + (hk * G + g) * p.y_sh + t * p.y_st;
    for (int e = 0; e < DL; ++e) {
      const int64_t d = lane + 32 * e;
      if (d < D) store(y + d, sm.l[g] > 0.f ? sm.acc[g][e] / sm.l[g] : 0.f);
    }
    if (p.lse && lane == 0) p.lse[(b * p.H + hk * G + g) * p.T + t] = sm.l[g] > 0.f ? sm.m[g] + logf(sm.l[g]) : -INFINITY;
  }
}

// delta[b, h, t] = dy . y (written for dkv_kernel) and dq[b, h, t] = scale sum_s dS[s] k[s], with
// dS[s] = P[s] (dy . v[s] - delta) and P[s] = exp(score - lse); warp per query row.
template <class Row, int DL>
__global__ void __launch_bounds__(kWarps * 32) dq_kernel(GatedAttentionGradParamsT<Row> g) {
  const GatedAttentionParamsT<Row>& p = g.fwd;
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;  // (b, h, t)
  if (row >= p.B * p.H * p.T) return;
  const int64_t t = row % p.T, h = (row / p.T) % p.H, b = row / (p.T * p.H), hk = h / (p.H / p.Hkv), D = p.D;
  float q[DL], dy[DL], dq[DL] = {}, kr[DL], vr[DL];
  const int64_t y_off = b * p.y_sb + h * p.y_sh + t * p.y_st;
  load_row(dy, g.dy + y_off, D, lane);
  load_row(q, p.y + y_off, D, lane);  // y, for delta; q is loaded next
  const float lse = p.lse[row], delta = warp_dot(dy, q);
  if (lane == 0) g.delta[row] = delta;
  load_row(q, p.q + b * p.q_sb + h * p.q_sh + t * p.q_st, D, lane);
  for_each_visible(p.S, lane, [&](int64_t s) { return key_bias(p, b, hk, t, s); }, [&](int64_t s, float bias) {
    load_row(kr, p.k + b * p.k_sb + hk * p.k_sh + s * p.k_st, D, lane);
    load_row(vr, p.v + b * p.v_sb + hk * p.v_sh + s * p.v_st, D, lane);
    const float pr = __expf(warp_dot(q, kr) * p.scale + bias - lse);
    const float ds = pr * (warp_dot(dy, vr) - delta);
    for (int e = 0; e < DL; ++e) dq[e] += ds * kr[e];
  });
  store_row(g.dq + b * p.q_sb + h * p.q_sh + t * p.q_st, dq, p.scale, D, lane);
}

// dk[s] = scale sum dS q, dv[s] = sum P dy, d_far_bias[s] = sum dS over far queries, the sums over the
// queries t that see key s and the G query heads of its KV head; warp per key row (b, hk, s).
template <class Row, int DL>
__global__ void __launch_bounds__(kWarps * 32) dkv_kernel(GatedAttentionGradParamsT<Row> g) {
  const GatedAttentionParamsT<Row>& p = g.fwd;
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;  // (b, hk, s)
  if (row >= p.B * p.Hkv * p.S) return;
  const int64_t s = row % p.S, hk = (row / p.S) % p.Hkv, b = row / (p.S * p.Hkv), G = p.H / p.Hkv, D = p.D;
  float kr[DL], vr[DL], dk[DL] = {}, dv[DL] = {}, q[DL], dy[DL];
  float dbias = 0.f;
  load_row(kr, p.k + b * p.k_sb + hk * p.k_sh + s * p.k_st, D, lane);
  load_row(vr, p.v + b * p.v_sb + hk * p.v_sh + s * p.v_st, D, lane);
  for_each_visible(p.T, lane, [&](int64_t t) { return key_bias(p, b, hk, t, s); }, [&](int64_t t, float bias) {
    const bool far = is_far(p, t, s);
    for (int64_t h = hk * G; h < hk * G + G; ++h) {
      const int64_t qrow = (b * p.H + h) * p.T + t;
      load_row(q, p.q + b * p.q_sb + h * p.q_sh + t * p.q_st, D, lane);
      load_row(dy, g.dy + b * p.y_sb + h * p.y_sh + t * p.y_st, D, lane);
      const float pr = __expf(warp_dot(q, kr) * p.scale + bias - p.lse[qrow]);
      const float ds = pr * (warp_dot(dy, vr) - g.delta[qrow]);
      for (int e = 0; e < DL; ++e) dk[e] += ds * q[e], dv[e] += pr * dy[e];
      if (far) dbias += ds;
    }
  });
  store_row(g.dk + b * p.k_sb + hk * p.k_sh + s * p.k_st, dk, p.scale, D, lane);
  store_row(g.dv + b * p.v_sb + hk * p.v_sh + s * p.v_st, dv, 1.f, D, lane);
  if (g.d_far_bias && lane == 0) g.d_far_bias[b * p.bias_sb + hk * p.bias_sh + s] = dbias;
}

// Blocks of kWarps warps for `rows` warp rows, or 0 when the grid would be too large.
unsigned blocks_for(int64_t rows) {
  const int64_t n = (rows + kWarps - 1) / kWarps;
  return n > 2147483647 ? 0u : unsigned(n);
}

template <class Row>
bool supported(const GatedAttentionParamsT<Row>& p) {
  return p.H / p.Hkv <= kWarpMaxG && p.D <= 32 * kWarpMaxDL;
}

template <class Row>
Status forward(const GatedAttentionParamsT<Row>& p, cudaStream_t stream) {
  if (!valid(p)) return Status::invalid_argument;
  if (!supported(p)) return Status::unsupported;
  const int64_t rows = p.B * p.Hkv * p.T;
  if (rows == 0) return Status::ok;
  const unsigned blocks = blocks_for(rows);
  if (blocks == 0) return Status::unsupported;
  with_rounded(p.H / p.Hkv, [&](auto gm) {
    with_rounded((p.D + 31) / 32, [&](auto dl) {
      gated_attention_kernel<Row, decltype(gm)::value, decltype(dl)::value><<<blocks, kWarps * 32, 0, stream>>>(p);
    });
  });
  return cudaGetLastError() == cudaSuccess ? Status::ok : Status::device_error;
}

template <class Row>
Status backward(const GatedAttentionGradParamsT<Row>& g, cudaStream_t stream) {
  const GatedAttentionParamsT<Row>& p = g.fwd;
  if (!valid(g) || !p.lse || !g.delta) return Status::invalid_argument;
  if (!supported(p)) return Status::unsupported;
  const unsigned q_blocks = blocks_for(p.B * p.H * p.T), k_blocks = blocks_for(p.B * p.Hkv * p.S);
  if ((q_blocks == 0 && p.B * p.H * p.T > 0) || (k_blocks == 0 && p.B * p.Hkv * p.S > 0)) return Status::unsupported;
  with_rounded((p.D + 31) / 32, [&](auto dl) {
    constexpr int DL = decltype(dl)::value;
    if (q_blocks > 0) dq_kernel<Row, DL><<<q_blocks, kWarps * 32, 0, stream>>>(g);
    if (k_blocks > 0) dkv_kernel<Row, DL><<<k_blocks, kWarps * 32, 0, stream>>>(g);
  });
  return cudaGetLastError() == cudaSuccess ? Status::ok : Status::device_error;
}

}  // namespace

Status gated_attention(const GatedAttentionParams& p, cudaStream_t stream) { return forward(p, stream); }
Status gated_attention(const GatedAttentionParamsT<bf16>& p, cudaStream_t stream) { return forward(p, stream); }
Status gated_attention_backward(const GatedAttentionGradParams& g, cudaStream_t stream) { return backward(g, stream); }
Status gated_attention_backward(const GatedAttentionGradParamsT<bf16>& g, cudaStream_t stream) { return backward(g, stream); }

}  // namespace spkv::kernels::cuda
