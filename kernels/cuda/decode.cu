// Decode attention and the fused cache append on the GPU (decode.h).
//
// decode_split_kernel: block (split, i = b * Hkv + hk), 4 warps. The block's tokens are those j of head i's
// list (ring slots 0 .. ring_len - 1, then the store in order) with j in [split * C, split * C + C) + k * splits * C.
// A warp takes one token at a time: its lanes hold D / 32 elements of the key, the value and the G query rows,
// so the key and value are read once for the whole GQA group. Each warp keeps an online softmax (max, sum,
// accumulator) per query head; the warps merge through shared memory and the block writes one partial per
// query head. decode_combine_kernel merges the splits. Only what the cache holds is read.
#include <cmath>

#include "kernels/cuda/decode.h"
#include "kernels/cuda/warp_softmax.cuh"

namespace spkv::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxG = kWarpMaxG, kMaxDL = kWarpMaxDL;
static_assert(kMaxG == kDecodeMaxGroup && 32 * kMaxDL == kDecodeMaxDim, "decode.h limits follow warp_softmax.cuh");

// Where token j of head i lives: a ring slot, then the pages of the store.
template <class Row>
__device__ inline int64_t row_offset(const CacheViewT<Row>& c, int64_t b, int64_t i, int64_t j, int64_t ring_n, bool& in_ring,
                                     int32_t& page) {
  if (j < ring_n) {
    in_ring = true;
    return (i * c.W + j) * c.D;
  }
  in_ring = false;
  const int64_t s = j - ring_n;
  page = c.store_pages[c.store_indptr[i] + s / c.page_size];
  return (s % c.page_size) * c.D;
}

template <class Row>
__global__ void __launch_bounds__(kWarps * 32) decode_split_kernel(DecodeParamsT<Row> p, float* part_m, float* part_l,
                                                                   float* part_acc) {
  const CacheViewT<Row>& c = p.cache;
  const int64_t split = blockIdx.x, splits = gridDim.x, i = blockIdx.y;
  const int64_t Hkv = c.Hkv, D = c.D, G = p.H / Hkv, b = i / Hkv, hk = i % Hkv;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t ring_n = c.W > 0 ? c.ring_len[b] : 0, n = ring_n + c.store_len[i];

  WarpSoftmax sm;
  sm.reset([&](int64_t g) { return p.q + (b * p.H + hk * G + g) * D; }, G, D, lane);
  for (int64_t base = split * kDecodeChunk; base < n; base += splits * kDecodeChunk) {
    const int64_t end = min(n, base + kDecodeChunk);
    for (int64_t j = base + warp; j < end; j += kWarps) {
      bool in_ring;
      int32_t page = 0;
      const int64_t off = row_offset(c, b, i, j, ring_n, in_ring, page);
      sm.add(in_ring ? c.ring_k + off : c.page_k[page] + off, in_ring ? c.ring_v + off : c.page_v[page] + off, G, D,
             p.scale, 0.f, lane);
    }
  }
  // Merge the warps: each writes its state; then thread t combines (g, d) pairs.
  __shared__ float sm_m[kWarps][kMaxG], sm_l[kWarps][kMaxG];
  __shared__ float sm_acc[kWarps][kMaxG][kDecodeMaxDim];
  for (int g = 0; g < kMaxG; ++g) {  // static bounds keep the state in registers
    if (g >= G) break;
    if (lane == 0) sm_m[warp][g] = sm.m[g], sm_l[warp][g] = sm.l[g];
    for (int e = 0; e < kMaxDL; ++e)
      if (lane + 32 * e < D) sm_acc[warp][g][lane + 32 * e] = sm.acc[g][e];
  }
  __syncthreads();
  const int64_t rows = c.n_seq * p.H;
  for (int64_t t = threadIdx.x; t < G * D; t += blockDim.x) {
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
    const int64_t r = split * rows + b * p.H + hk * G + g;
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

// Block per head i = b * Hkv + hk: the evicted ring row onto the store (thread 0 allocates), then the new row
// into the ring. Every block reads seen[b] before append_advance_kernel (next on the stream) moves it.
template <class Row>
__global__ void append_head_kernel(AppendParamsT<Row> p) {
  const int64_t i = blockIdx.x, b = i / p.Hkv, D = p.D, W = p.W, P = p.page_size;
  const int64_t pos = p.seen[b], slot = pos % W, row = i * W + slot;
  __shared__ int64_t at;  // pool offset of the store row, or -1
  if (threadIdx.x == 0) {
    at = -1;
    if (pos >= W && p.ring_keep[row]) {
      const int32_t len = p.store_len[i];
      bool ok = true;
      if (len % P == 0) {
        ok = len / P < p.max_pages;
        const int32_t next = ok ? atomicAdd(p.free_next, 1) : 0;
        ok = ok && next < p.n_free;
        if (ok) p.page_table[i * p.max_pages + len / P] = p.free_pages[next];
      }
      if (ok) {
        at = (int64_t(p.page_table[i * p.max_pages + len / P]) * P + len % P) * D;
        p.store_len[i] = len + 1;
      } else {
        *p.overflow = 1;
      }
    }
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    if (at >= 0) p.k_pool[at + d] = p.ring_k[row * D + d], p.v_pool[at + d] = p.ring_v[row * D + d];
  }
  __syncthreads();  // the old row is copied before it is overwritten
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    p.ring_k[row * D + d] = p.k_new[i * D + d], p.ring_v[row * D + d] = p.v_new[i * D + d];
  if (threadIdx.x == 0) p.ring_keep[row] = p.keep_new[i] ? 1 : 0;
}

template <class Row>
__global__ void append_advance_kernel(AppendParamsT<Row> p) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.n_seq) return;
  const int64_t pos = p.seen[b];
  p.ring_pos[b * p.W + pos % p.W] = pos;
  p.ring_len[b] = int32_t(min(pos + 1, p.W));
  p.seen[b] = pos + 1;
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
  decode_split_kernel<<<dim3(unsigned(splits), unsigned(c.n_seq * c.Hkv)), kWarps * 32, 0, stream>>>(p, part_m, part_l, part_acc);
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
