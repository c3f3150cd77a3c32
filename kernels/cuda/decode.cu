// Decode attention and the fused cache append on the GPU (decode.h).
//
// decode_split_kernel: block (split, i = b * Hkv + hk), 4 warps. The block's tokens are those j of head i's
// list (ring slots 0 .. ring_len - 1, then the store in order) with j in [split * C, split * C + C) + k * splits * C.
// A warp takes a tile of KT consecutive tokens at a time and issues the loads of all their keys and values
// before it uses any, so that enough bytes are in flight to keep the memory busy (decode is bound by reading
// the cache). Lane l holds, for e < E, the VEC elements VEC * (l + 32 e) + x of a row: VEC = 4 reads 16 bytes
// (float32) or 8 (bf16) at once when D is a multiple of 4; VEC = 1 is the general case. The G query heads of
// the KV head share each key and value read. The tile's KT * G partial dot products are summed over the warp
// by one reduce-scatter, after which each lane owns one score: one exponential per lane, and the weights
// reach every lane by broadcast for the value sum. Each warp keeps an online softmax (max, sum,
// accumulator) per query head, updated once per tile; the warps merge through shared memory and the block
// writes one partial per query head. decode_combine_kernel merges the splits. Only what the cache holds is
// read. The kernel is compiled for VEC, E and G (G rounded up to 1, 2, 4 or 8; the heads past H / Hkv are
// computed and dropped).
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/append_chunk.h"
#include "kernels/bf16.h"
#include "kernels/cuda/decode.h"
#include "kernels/cuda/rounded.cuh"

namespace spkv::kernels::cuda {
namespace {

constexpr int kWarps = 4;
// Measured on an H200 (docs/gpu.md): 4 blocks per SM (at most 128 registers) and tiles of 8 tokens read 93% of
// the copy bandwidth at 32k; 1 to 3 blocks, 5 or 6, tiles of 4, or loading one tile ahead all read less.
constexpr int kMinBlocks = 4;
static_assert(kDecodeMaxGroup == 8 && kDecodeMaxDim == 256, "decode.h limits are what decode() compiles: G <= 8, D <= 32 * 4 * 2");

// VEC elements of a row as float32: one 16-byte (float32) or 8-byte (bf16) load when VEC = 4.
template <int VEC>
__device__ inline void load_vec(const float* r, float (&out)[VEC]) {
  if constexpr (VEC == 4) {
    const float4 v = *reinterpret_cast<const float4*>(r);
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  } else {
    for (int x = 0; x < VEC; ++x) out[x] = r[x];
  }
}
template <int VEC>
__device__ inline void load_vec(const bf16* r, float (&out)[VEC]) {
  if constexpr (VEC == 4) {
    const uint2 u = *reinterpret_cast<const uint2*>(r);  // little-endian: element 0 is the low half of u.x
    out[0] = __uint_as_float(u.x << 16), out[1] = __uint_as_float(u.x & 0xffff0000u);
    out[2] = __uint_as_float(u.y << 16), out[3] = __uint_as_float(u.y & 0xffff0000u);
  } else {
    for (int x = 0; x < VEC; ++x) out[x] = to_float(r[x]);
  }
}

// Sums each of N partial values over the warp by recursive halving (N - 1 shuffles instead of 5 N): at each
// offset O a lane keeps the half of its values that its bit O selects and adds its partner's copy of that
// half. Afterwards lane l holds, in v[0], the total of value l >> (5 - log2 N).
template <int N, int O>
__device__ __forceinline__ void reduce_scatter(float* v, int lane) {
  if constexpr (O > 0) {
    if constexpr (N > 1) {
      const bool upper = lane & O;
      for (int k = 0; k < N / 2; ++k) {
        const float send = upper ? v[k] : v[k + N / 2], keep = upper ? v[k + N / 2] : v[k];
        v[k] = keep + __shfl_xor_sync(0xffffffffu, send, O);
      }
      reduce_scatter<N / 2, O / 2>(v, lane);
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], O);
      reduce_scatter<1, O / 2>(v, lane);
    }
  }
}

__host__ __device__ constexpr int ilog2(int x) { return x <= 1 ? 0 : 1 + ilog2(x / 2); }

template <class Row, int VEC, int E, int G>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks) decode_split_kernel(DecodeParamsT<Row> p, float* part_m, float* part_l,
                                                                   float* part_acc) {
  // A tile of KT tokens gives N = KT * G scores (token t, head g at index t * G + g). After the reduction lane
  // l owns score index l >> SH: its head is (l >> SH) % G and its token (l >> SH) / G, so lanes that differ
  // only in bits SH + log2 G .. 4 hold the same head's scores for different tokens.
  constexpr int KT = (E == 1 ? 8 : 4) < 32 / G ? (E == 1 ? 8 : 4) : 32 / G, N = KT * G;
  constexpr int SH = 5 - ilog2(N), TOKEN_BIT = 1 << (SH + ilog2(G));
  static_assert((G & (G - 1)) == 0 && N <= 32, "G: 1, 2, 4 or 8");
  const CacheViewT<Row>& c = p.cache;
  const int64_t split = blockIdx.x, splits = gridDim.x, i = blockIdx.y;
  const int64_t Hkv = c.Hkv, D = c.D, n_heads = p.H / Hkv, b = i / Hkv, hk = i % Hkv;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, my_t = (lane >> SH) / G;
  const int64_t ring_n = c.W > 0 ? c.ring_len[b] : 0, n = ring_n + c.store_len[i];
  const int32_t* pages = c.store_pages + c.store_indptr[i];
  const int32_t P = int32_t(c.page_size);
  const Row *ring_k = c.ring_k + i * c.W * D, *ring_v = c.ring_v + i * c.W * D;

  // Lanes past D read the row's last elements (their query elements are 0 and their sums are never written),
  // so no load needs a guard.
  int64_t d_load[E];
  float q[G][E][VEC], acc[G][E][VEC], m[G];
  for (int e = 0; e < E; ++e) d_load[e] = min(int64_t(VEC * (lane + 32 * e)), D - VEC);
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    for (int e = 0; e < E; ++e) {
      const int64_t d = VEC * (lane + 32 * e);
      if (g < n_heads && d < D) load_vec(p.q + (b * p.H + hk * n_heads + g) * D + d, q[g][e]);
      else for (int x = 0; x < VEC; ++x) q[g][e][x] = 0.f;
      for (int x = 0; x < VEC; ++x) acc[g][e][x] = 0.f;
    }
  }
  float m_own = -INFINITY, l_own = 0.f;  // the running max and sum of this lane's head, over its tokens
  for (int64_t base = split * kDecodeChunk; base < n; base += splits * kDecodeChunk) {
    const int64_t end = min(n, base + kDecodeChunk);
    for (int64_t j0 = base + warp * KT; j0 < end; j0 += kWarps * KT) {
      // The rows of tokens j0 .. j0 + KT - 1: ring slots, then store rows page by page. A token past the end
      // reads token j0's row again and gets no weight.
      const Row *kr[KT], *vr[KT];
      int32_t s = int32_t(max(int64_t(0), j0 - ring_n)), page_i = s / P, off = s % P;
      const Row *pk = nullptr, *pv = nullptr;
      for (int t = 0; t < KT; ++t) {
        const int64_t j = j0 + t;
        if (j >= end) {
          kr[t] = kr[0], vr[t] = vr[0];
        } else if (j < ring_n) {
          kr[t] = ring_k + j * D, vr[t] = ring_v + j * D;
        } else {
          if (!pk) {
            const int32_t page = pages[page_i];
            pk = c.page_k[page], pv = c.page_v[page];
          }
          kr[t] = pk + int64_t(off) * D, vr[t] = pv + int64_t(off) * D;
          if (++off == P) off = 0, ++page_i, pk = pv = nullptr;
        }
      }
      float kv[KT][E][VEC], vv[KT][E][VEC];
      for (int t = 0; t < KT; ++t)
        for (int e = 0; e < E; ++e) load_vec(kr[t] + d_load[e], kv[t][e]), load_vec(vr[t] + d_load[e], vv[t][e]);
      float dot[N];
      for (int t = 0; t < KT; ++t)
        for (int g = 0; g < G; ++g) {
          float sum = 0.f;
          for (int e = 0; e < E; ++e)
            for (int x = 0; x < VEC; ++x) sum += q[g][e][x] * kv[t][e][x];
          dot[t * G + g] = sum;
        }
      reduce_scatter<N, 16>(dot, lane);
      const float score = j0 + my_t < end ? dot[0] * p.scale : -INFINITY;
      float m_tile = score;
      for (int o = 16; o >= TOKEN_BIT; o /= 2) m_tile = fmaxf(m_tile, __shfl_xor_sync(0xffffffffu, m_tile, o));
      const float m_new = fmaxf(m_own, m_tile);  // finite: token j0 is always there
      const float w = __expf(score - m_new);
      l_own = (m_own == -INFINITY ? 0.f : l_own * __expf(m_own - m_new)) + w;
      m_own = m_new;
      for (int g = 0; g < G; ++g) {  // every lane rescales every head's accumulator
        const float m_g = __shfl_sync(0xffffffffu, m_new, g << SH);
        const float corr = m[g] == -INFINITY ? 0.f : __expf(m[g] - m_g);
        m[g] = m_g;
        for (int e = 0; e < E; ++e)
          for (int x = 0; x < VEC; ++x) acc[g][e][x] *= corr;
      }
      for (int t = 0; t < KT; ++t)
        for (int g = 0; g < G; ++g) {
          const float w_tg = __shfl_sync(0xffffffffu, w, (t * G + g) << SH);
          for (int e = 0; e < E; ++e)
            for (int x = 0; x < VEC; ++x) acc[g][e][x] += w_tg * vv[t][e][x];
        }
    }
  }
  float l[G];
  for (int o = 16; o >= TOKEN_BIT; o /= 2) l_own += __shfl_xor_sync(0xffffffffu, l_own, o);
  for (int g = 0; g < G; ++g) l[g] = __shfl_sync(0xffffffffu, l_own, g << SH);
  // Merge the warps: each writes its state; then thread t combines (g, d) pairs.
  constexpr int kRow = 32 * E * VEC;
  __shared__ float sm_m[kWarps][G], sm_l[kWarps][G];
  __shared__ float sm_acc[kWarps][G][kRow];
  for (int g = 0; g < G; ++g) {
    if (lane == 0) sm_m[warp][g] = m[g], sm_l[warp][g] = l[g];
    for (int e = 0; e < E; ++e)
      for (int x = 0; x < VEC; ++x) sm_acc[warp][g][VEC * (lane + 32 * e) + x] = acc[g][e][x];
  }
  __syncthreads();
  const int64_t rows = c.n_seq * p.H;
  for (int64_t t = threadIdx.x; t < n_heads * D; t += blockDim.x) {
    const int64_t g = t / D, d = t % D;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w][g]);
    float L = 0.f, A = 0.f;
    if (M != -INFINITY)
      for (int w = 0; w < kWarps; ++w) {
        if (sm_m[w][g] == -INFINITY) continue;
        const float f = __expf(sm_m[w][g] - M);
        L += sm_l[w][g] * f, A += sm_acc[w][g][d] * f;
      }
    const int64_t r = split * rows + b * p.H + hk * n_heads + g;
    if (d == 0) part_m[r] = M, part_l[r] = L;
    part_acc[r * D + d] = A;
  }
}

// Block per query row (b, h): y = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M); 0 when nothing was seen.
template <class Row>
__global__ void decode_combine_kernel(DecodeParamsT<Row> p, int64_t splits, const float* part_m, const float* part_l,
                                      const float* part_acc) {
  const int64_t r = blockIdx.x, rows = p.cache.n_seq * p.H, D = p.cache.D;
  float M = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) M = fmaxf(M, part_m[s * rows + r]);
  float L = 0.f;
  if (M != -INFINITY)
    for (int64_t s = 0; s < splits; ++s)
      if (part_m[s * rows + r] != -INFINITY) L += part_l[s * rows + r] * __expf(part_m[s * rows + r] - M);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float A = 0.f;
    if (M != -INFINITY)
      for (int64_t s = 0; s < splits; ++s)
        if (part_m[s * rows + r] != -INFINITY) A += part_acc[(s * rows + r) * D + d] * __expf(part_m[s * rows + r] - M);
    store(p.y + r * D + d, L > 0.f ? A / L : 0.f);
  }
}

// Block per head i = b * Hkv + hk: the batched walk of append_chunk.h, thread 0 planning each batch and
// every thread copying. Every block reads seen[b] before append_advance_kernel (next on the stream) moves it.
template <class Row>
__global__ void append_head_kernel(AppendParamsT<Row> p) {
  __shared__ int64_t at[kAppendBatch];
  append_head(p, blockIdx.x, at, threadIdx.x, blockDim.x);
}

template <class Row>
__global__ void append_advance_kernel(AppendParamsT<Row> p) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b < p.n_seq) append_advance(p, b);
}

// Block (i = b * Hkv + hk, row group); warp per row j of [0, n_store + W), lanes over D.
template <class Row>
__global__ void __launch_bounds__(kWarps * 32) gather_kernel(GatherParamsT<Row> g) {
  const CacheViewT<Row>& c = g.cache;
  const int64_t i = blockIdx.x, b = i / c.Hkv, D = c.D, lane = threadIdx.x % 32;
  const int64_t j = int64_t(blockIdx.y) * kWarps + threadIdx.x / 32;
  if (j >= g.n_store + c.W) return;
  const Row *kr = nullptr, *vr = nullptr;
  uint8_t keep = 0;
  if (j < c.store_len[i]) {
    const int32_t page = c.store_pages[c.store_indptr[i] + j / c.page_size];
    kr = c.page_k[page] + (j % c.page_size) * D, vr = c.page_v[page] + (j % c.page_size) * D, keep = 1;
  } else if (j >= g.n_store && j - g.n_store < c.ring_len[b]) {
    const int64_t off = (i * c.W + j - g.n_store) * D;
    kr = c.ring_k + off, vr = c.ring_v + off, keep = c.ring_keep[i * c.W + j - g.n_store];
  }
  if (lane == 0) g.keep[i * g.S + j] = keep;
  if (!kr) return;
  for (int64_t d = lane; d < D; d += 32) g.k[(i * g.S + j) * D + d] = kr[d], g.v[(i * g.S + j) * D + d] = vr[d];
}

template <class Row>
Status gather(const GatherParamsT<Row>& g, cudaStream_t stream) {
  const CacheViewT<Row>& c = g.cache;
  if (!g.k || !g.v || !g.keep || c.W < 1 || !c.ring_len || !c.store_len || g.n_store < 0 || g.S < g.n_store + c.W)
    return Status::invalid_argument;
  const int64_t rows = (g.n_store + c.W + kWarps - 1) / kWarps;
  if (c.n_seq * c.Hkv == 0 || rows == 0) return Status::ok;
  if (c.n_seq * c.Hkv > 2147483647 || rows > 65535) return Status::unsupported;
  gather_kernel<<<dim3(unsigned(c.n_seq * c.Hkv), unsigned(rows)), kWarps * 32, 0, stream>>>(g);
  return cudaGetLastError() == cudaSuccess ? Status::ok : Status::device_error;
}

template <class Row>
Status decode(const DecodeParamsT<Row>& p, int64_t splits, float* workspace, int64_t workspace_floats, cudaStream_t stream) {
  const CacheViewT<Row>& c = p.cache;
  if (!valid(p) || splits < 1 || !workspace || workspace_floats < decode_workspace_floats(c.n_seq, p.H, c.D, splits))
    return Status::invalid_argument;
  if (p.H / c.Hkv > kDecodeMaxGroup || c.D > kDecodeMaxDim || splits > 65535 || c.n_seq * c.Hkv > 65535 ||
      p.weights)  // the attention weights are a CPU feature (the budgeted policies' cache is on the CPU)
    return Status::unsupported;
  if (c.n_seq == 0) return Status::ok;
  const int64_t rows = c.n_seq * p.H;
  float *part_m = workspace, *part_l = workspace + splits * rows, *part_acc = workspace + 2 * splits * rows;
  const dim3 grid(unsigned(splits), unsigned(c.n_seq * c.Hkv));
  // 4-element loads need rows aligned to 4 elements: D a multiple of 4 and aligned bases (the page pointers
  // are the caller's: CacheView says so).
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % (4 * sizeof(Row)) == 0; };
  const bool vec4 = c.D % 4 == 0 && aligned(p.q) && (c.W <= 0 || (aligned(c.ring_k) && aligned(c.ring_v)));
  const int64_t G = p.H / c.Hkv;
  auto launch = [&](auto vec, auto e) {
    with_rounded(G, [&](auto g) {
      decode_split_kernel<Row, decltype(vec)::value, decltype(e)::value, decltype(g)::value>
          <<<grid, kWarps * 32, 0, stream>>>(p, part_m, part_l, part_acc);
    });
  };
  using I1 = std::integral_constant<int, 1>;
  using I2 = std::integral_constant<int, 2>;
  using I4 = std::integral_constant<int, 4>;
  using I8 = std::integral_constant<int, 8>;
  if (vec4 && c.D <= 128) launch(I4{}, I1{});
  else if (vec4) launch(I4{}, I2{});
  else launch(I1{}, I8{});
  decode_combine_kernel<<<unsigned(rows), 128, 0, stream>>>(p, splits, part_m, part_l, part_acc);
  return cudaGetLastError() == cudaSuccess ? Status::ok : Status::device_error;
}

template <class Row>
Status append(const AppendParamsT<Row>& p, cudaStream_t stream) {
  if (!valid(p)) return Status::invalid_argument;
  if (p.n_seq == 0) return Status::ok;
  if (p.n_seq * p.Hkv > 2147483647) return Status::unsupported;
  append_head_kernel<<<unsigned(p.n_seq * p.Hkv), 128, 0, stream>>>(p);
  append_advance_kernel<<<unsigned((p.n_seq + 127) / 128), 128, 0, stream>>>(p);
  return cudaGetLastError() == cudaSuccess ? Status::ok : Status::device_error;
}

}  // namespace

Status cache_gather(const GatherParams& g, cudaStream_t stream) { return gather(g, stream); }
Status cache_gather(const GatherParamsT<bf16>& g, cudaStream_t stream) { return gather(g, stream); }
Status decode_attention(const DecodeParams& p, int64_t splits, float* workspace, int64_t workspace_floats, cudaStream_t stream) {
  return decode(p, splits, workspace, workspace_floats, stream);
}
Status decode_attention(const DecodeParamsT<bf16>& p, int64_t splits, float* workspace, int64_t workspace_floats,
                        cudaStream_t stream) {
  return decode(p, splits, workspace, workspace_floats, stream);
}
Status cache_append(const AppendParams& p, cudaStream_t stream) { return append(p, stream); }
Status cache_append(const AppendParamsT<bf16>& p, cudaStream_t stream) { return append(p, stream); }

int64_t decode_splits(int64_t max_tokens, int64_t max_splits) {
  const int64_t s = (max_tokens + kDecodeChunk - 1) / kDecodeChunk;
  return s < 1 ? 1 : (s > max_splits ? max_splits : s);
}

int64_t decode_workspace_floats(int64_t n_seq, int64_t H, int64_t D, int64_t splits) {
  return splits * n_seq * H * (2 + D);
}

}  // namespace spkv::kernels::cuda
