// The gated prefill's forward on tensor cores (gated_attention_tc, prefill.h): bf16 rows, D of 32, 64 or
// 128, a FlashAttention-2-style tiled kernel on WMMA (sm_80 and later). Written on a machine without a GPU
// (2026-12-04) and not yet run there: the adapter keeps calling the warp kernel (prefill.cu) until the GPU
// tests pass and spkv-prefill-bench shows this one faster.
//
// A block of 4 warps takes 64 rows of one (b, hk). Row r is query t = R / G of query head g = R % G, with
// R = 64 blockIdx.x + r, so the G query heads of a KV head share each key tile. Key tiles of 64:
//   - a tile that no row can see is skipped without reading its keys. The test is a superset on positions
//     and gates: every key after the block's last query, before its documents, or far from all its queries
//     with the gate closed;
//   - S = Q K^T, each warp its 16 rows: bf16 WMMA 16x16x16 with float32 accumulators, into shared memory;
//   - two lanes per row apply key_bias.cuh's rule (scale, bias, -inf) and update the row's running max and
//     sum (online softmax). They write P rounded to bf16, and the sum adds the rounded values, so y is the
//     weighted mean with the weights the product used;
//   - O (float32, in shared memory) is rescaled by the running max's correction, then O += P V on WMMA. The
//     accumulators go through shared memory, so nothing depends on the fragments' element layout.
// At the end y = O / l and lse = m + log l per row (y = 0 and lse = -inf for a row that saw no key).
#include <cuda_bf16.h>
#include <mma.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/key_bias.cuh"
#include "kernels/cuda/prefill.h"

namespace spkv::kernels::cuda {
namespace {

namespace wmma = nvcuda::wmma;
constexpr int kRows = 64, kKeys = 64, kThreads = 128;  // 4 warps of 16 rows; key tiles of 64

// Shared memory for head dim D: Q, K, V and P in bf16; S and O in float32; per row m, l, the correction and t.
constexpr size_t smem_bytes(int D) {
  return size_t(kRows * D + 2 * kKeys * D + kRows * kKeys) * 2 + size_t(kRows * kKeys + kRows * D) * 4 +
         size_t(kRows) * (3 * 4 + 8);
}

// Whether key s can be visible to some query whose position is in [q_lo, q_hi] and whose documents start at
// kb_min or later: a superset of key_bias's rule, for skipping key tiles.
__device__ inline bool maybe_visible(const GatedAttentionParamsT<bf16>& p, int64_t b, int64_t hk, int64_t s, int64_t q_lo,
                                     int64_t q_hi, int64_t kb_min) {
  const int64_t kp = p.k_pos[s];
  if (kp > q_hi || s < kb_min) return false;
  if (p.window <= 0 || q_lo - kp < p.window) return true;  // local to some query
  if (p.far_bias) return p.far_bias[b * p.bias_sb + hk * p.bias_sh + s] != -INFINITY;
  return p.keep && p.keep[b * p.keep_sb + hk * p.keep_sh + s];
}

template <int D>
__global__ void __launch_bounds__(kThreads) tc_kernel(GatedAttentionParamsT<bf16> p) {
  extern __shared__ __align__(128) unsigned char smem[];
  auto* Qs = reinterpret_cast<__nv_bfloat16*>(smem);  // (kRows, D)
  __nv_bfloat16* Ks = Qs + kRows * D;                  // (kKeys, D)
  __nv_bfloat16* Vs = Ks + kKeys * D;                  // (kKeys, D)
  __nv_bfloat16* Ps = Vs + kKeys * D;                  // (kRows, kKeys)
  auto* Ss = reinterpret_cast<float*>(Ps + kRows * kKeys);  // (kRows, kKeys)
  float* Os = Ss + kRows * kKeys;                      // (kRows, D)
  float *row_m = Os + kRows * D, *row_l = row_m + kRows, *row_corr = row_l + kRows;  // (kRows) each
  auto* row_t = reinterpret_cast<int64_t*>(row_corr + kRows);                         // (kRows) query, -1 past the end
  __shared__ int64_t q_lo, q_hi, kb_min;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t G = p.H / p.Hkv, n_rows = p.T * G, r0 = int64_t(blockIdx.x) * kRows;
  const int64_t b = blockIdx.y / p.Hkv, hk = blockIdx.y % p.Hkv;
  const auto* q = reinterpret_cast<const uint16_t*>(p.q);  // bf16 bits
  const auto* k = reinterpret_cast<const uint16_t*>(p.k);
  const auto* v = reinterpret_cast<const uint16_t*>(p.v);

  if (tid < kRows) {
    const int64_t R = r0 + tid;
    row_t[tid] = R < n_rows ? R / G : -1;
    row_m[tid] = -INFINITY, row_l[tid] = 0.f;
  }
  if (tid == 0) {
    int64_t lo = INT64_MAX, hi = INT64_MIN, kb = INT64_MAX;
    const int64_t last = (r0 + kRows < n_rows ? r0 + kRows : n_rows) - 1;
    for (int64_t t = r0 / G; t <= last / G; ++t) {
      lo = min(lo, p.q_pos[t]), hi = max(hi, p.q_pos[t]);
      kb = min(kb, p.k_begin ? p.k_begin[b * p.T + t] : int64_t(0));
    }
    q_lo = lo, q_hi = hi, kb_min = kb;
  }
  for (int i = tid; i < kRows * D; i += kThreads) {
    const int64_t R = r0 + i / D;
    const uint16_t bits = R < n_rows ? q[b * p.q_sb + (hk * G + R % G) * p.q_sh + (R / G) * p.q_st + i % D] : 0;
    Qs[i] = __ushort_as_bfloat16(bits);
    Os[i] = 0.f;
  }
  __syncthreads();

  for (int64_t s0 = 0; s0 < p.S; s0 += kKeys) {
    const bool seen = tid < kKeys && s0 + tid < p.S && maybe_visible(p, b, hk, s0 + tid, q_lo, q_hi, kb_min);
    if (!__syncthreads_or(seen)) continue;
    for (int i = tid; i < kKeys * D; i += kThreads) {
      const int64_t s = s0 + i / D, at = b * p.k_sb + hk * p.k_sh + s * p.k_st + i % D;
      const int64_t at_v = b * p.v_sb + hk * p.v_sh + s * p.v_st + i % D;
      Ks[i] = __ushort_as_bfloat16(s < p.S ? k[at] : 0);
      Vs[i] = __ushort_as_bfloat16(s < p.S ? v[at_v] : 0);
    }
    __syncthreads();

    {  // S = Q K^T for this warp's 16 rows
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> kt;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
      for (int n = 0; n < kKeys / 16; ++n) {
        wmma::fill_fragment(c, 0.f);
        for (int kk = 0; kk < D / 16; ++kk) {
          wmma::load_matrix_sync(a, Qs + warp * 16 * D + kk * 16, D);
          wmma::load_matrix_sync(kt, Ks + n * 16 * D + kk * 16, D);  // K^T: column j is key n * 16 + j
          wmma::mma_sync(c, a, kt, c);
        }
        wmma::store_matrix_sync(Ss + warp * 16 * kKeys + n * 16, c, kKeys, wmma::mem_row_major);
      }
    }
    __syncwarp();

    {  // online softmax: lanes 2i and 2i + 1 share row warp * 16 + i, half of the tile's keys each
      const int r = warp * 16 + lane / 2, c0 = (lane % 2) * (kKeys / 2);
      const int64_t t = row_t[r];
      float* srow = Ss + r * kKeys;
      float mx = -INFINITY;
      for (int c = c0; c < c0 + kKeys / 2; ++c) {
        const int64_t s = s0 + c;
        const float bias = t < 0 || s >= p.S ? -INFINITY : key_bias(p, b, hk, t, s);
        srow[c] = bias == -INFINITY ? -INFINITY : srow[c] * p.scale + bias;
        mx = fmaxf(mx, srow[c]);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float m_old = row_m[r], m_new = fmaxf(m_old, mx);
      const float corr = m_new == -INFINITY ? 1.f : __expf(m_old - m_new);  // 0 when m_old is -inf
      float sum = 0.f;
      for (int c = c0; c < c0 + kKeys / 2; ++c) {
        const __nv_bfloat16 e = __float2bfloat16_rn(srow[c] == -INFINITY ? 0.f : __expf(srow[c] - m_new));
        Ps[r * kKeys + c] = e;
        sum += __bfloat162float(e);
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      __syncwarp();  // both lanes read row_m before it changes
      if (lane % 2 == 0) row_m[r] = m_new, row_l[r] = row_l[r] * corr + sum, row_corr[r] = corr;
    }
    __syncwarp();

    for (int i = lane; i < 16 * D; i += 32) Os[(warp * 16 + i / D) * D + i % D] *= row_corr[warp * 16 + i / D];
    __syncwarp();
    {  // O += P V for this warp's 16 rows
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> vt;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
      for (int n = 0; n < D / 16; ++n) {
        float* o = Os + warp * 16 * D + n * 16;
        wmma::load_matrix_sync(c, o, D, wmma::mem_row_major);
        for (int kk = 0; kk < kKeys / 16; ++kk) {
          wmma::load_matrix_sync(a, Ps + warp * 16 * kKeys + kk * 16, kKeys);
          wmma::load_matrix_sync(vt, Vs + kk * 16 * D + n * 16, D);
          wmma::mma_sync(c, a, vt, c);
        }
        wmma::store_matrix_sync(o, c, D, wmma::mem_row_major);
      }
    }
    __syncthreads();  // every warp is done with K and V before the next tile
  }

  for (int i = tid; i < kRows * D; i += kThreads) {
    const int64_t r = i / D, R = r0 + r;
    if (R >= n_rows) continue;
    const float l = row_l[r];
    store(p.y + b * p.y_sb + (hk * G + R % G) * p.y_sh + (R / G) * p.y_st + i % D, l > 0.f ? Os[i] / l : 0.f);
  }
  if (p.lse && tid < kRows && r0 + tid < n_rows) {
    const int64_t R = r0 + tid;
    p.lse[(b * p.H + hk * G + R % G) * p.T + R / G] = row_l[tid] > 0.f ? row_m[tid] + logf(row_l[tid]) : -INFINITY;
  }
}

template <int D>
Status launch(const GatedAttentionParamsT<bf16>& p, unsigned tiles, cudaStream_t stream) {
  constexpr size_t bytes = smem_bytes(D);
  if (cudaFuncSetAttribute(tc_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)) != cudaSuccess)
    return Status::device_error;
  tc_kernel<D><<<dim3(tiles, unsigned(p.B * p.Hkv)), kThreads, bytes, stream>>>(p);
  return cudaGetLastError() == cudaSuccess ? Status::ok : Status::device_error;
}

}  // namespace

Status gated_attention_tc(const GatedAttentionParamsT<bf16>& p, cudaStream_t stream) {
  if (!valid(p)) return Status::invalid_argument;
  if (p.D != 32 && p.D != 64 && p.D != 128) return Status::unsupported;
  if (p.B * p.Hkv * p.T == 0) return Status::ok;
  const int64_t tiles = (p.T * (p.H / p.Hkv) + kRows - 1) / kRows;
  if (p.B * p.Hkv > 65535 || tiles > 2147483647) return Status::unsupported;
  return p.D == 32 ? launch<32>(p, unsigned(tiles), stream)
                   : p.D == 64 ? launch<64>(p, unsigned(tiles), stream) : launch<128>(p, unsigned(tiles), stream);
}

}  // namespace spkv::kernels::cuda
