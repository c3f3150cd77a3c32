// The fused append's batched walk (append_params.h), as the CUDA kernel runs it: host and device, so the
// same code also runs on the host, where tests hold it to the token-by-token CPU reference
// (cpu/cache_append_ref.h). Not a second CPU path: the engine's CPU cache is SpkvKvCache.
//
// For head i = b * Hkv + hk, the call's T tokens go in batches of at most kAppendBatch. Token t (position
// pos0 + t, pos0 = seen[b] before the call) evicts position pos0 + t - W: an old ring row when t < W, else
// chunk token t - W, which never enters the ring (only the chunk's last W tokens do). append_plan (one
// thread) walks a batch in order, decides each eviction and takes pages, so a store stays in position order,
// and sets the ring gates. append_copy (every thread, its elements d0, d0 + step, ...) then copies the
// batch's rows in token order: an old ring row is read before the token that replaces it is written, by the
// same thread at the same element, and no two tokens t < W share a slot. append_head drives both over the
// batches for one of a block's threads (on the host: the only thread). append_advance moves the sequence's
// ring positions, length and count once every head is done.
#pragma once
#include <cstdint>

#include "kernels/append_params.h"
#include "kernels/bf16.h"

namespace spkv::kernels {

constexpr int64_t kAppendBatch = 128;

// Tokens [t0, t0 + n) of head i, n <= kAppendBatch: at[j] = the pool offset of the store row token t0 + j
// evicts, or -1 (nothing evicted, the gate was closed, or no room: overflow set).
template <class Row>
SPKV_HOST_DEVICE inline void append_plan(const AppendParamsT<Row>& p, int64_t i, int64_t pos0, int64_t t0, int64_t n,
                                         int64_t* at) {
  const int64_t b = i / p.Hkv, hk = i % p.Hkv, W = p.W, P = p.page_size, T = p.T;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t t = t0 + j, pos = pos0 + t, row = i * W + pos % W;
    at[j] = -1;
    if (pos >= W && (t < W ? p.ring_keep[row] : p.keep_new[(b * T + t - W) * p.Hkv + hk])) {
      const int32_t len = p.store_len[i];
      bool ok = true;
      if (len % P == 0) {  // a new page: the head's table must have room, then the free list
        ok = len / P < p.max_pages;
#ifdef __CUDA_ARCH__
        const int32_t next = ok ? atomicAdd(p.free_next, 1) : 0;
#else
        const int32_t next = ok ? (*p.free_next)++ : 0;
#endif
        ok = ok && next < p.n_free;
        if (ok) p.page_table[i * p.max_pages + len / P] = p.free_pages[next];
      }
      if (ok) {
        at[j] = (int64_t(p.page_table[i * p.max_pages + len / P]) * P + len % P) * p.D;
        p.store_len[i] = len + 1;
      } else {
        *p.overflow = 1;
      }
    }
    if (t >= T - W) p.ring_keep[row] = p.keep_new[(b * T + t) * p.Hkv + hk] ? 1 : 0;
  }
}

template <class Row>
SPKV_HOST_DEVICE inline void append_copy(const AppendParamsT<Row>& p, int64_t i, int64_t pos0, int64_t t0, int64_t n,
                                         const int64_t* at, int64_t d0, int64_t step) {
  const int64_t D = p.D, W = p.W, T = p.T;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t t = t0 + j, row = (i * W + (pos0 + t) % W) * D, to = at[j];
    const Row* k_out = t < W ? p.ring_k + row : p.k_new + (i * T + t - W) * D;
    const Row* v_out = t < W ? p.ring_v + row : p.v_new + (i * T + t - W) * D;
    const Row *k_in = p.k_new + (i * T + t) * D, *v_in = p.v_new + (i * T + t) * D;
    const bool to_ring = t >= T - W;
    for (int64_t d = d0; d < D; d += step) {
      if (to >= 0) p.k_pool[to + d] = k_out[d], p.v_pool[to + d] = v_out[d];
      if (to_ring) p.ring_k[row + d] = k_in[d], p.ring_v[row + d] = v_in[d];
    }
  }
}

// Head i's whole call, by thread tid of `threads` (the block's, with a barrier between the phases on the
// device); at: kAppendBatch entries they share.
template <class Row>
SPKV_HOST_DEVICE inline void append_head(const AppendParamsT<Row>& p, int64_t i, int64_t* at, int tid, int threads) {
  const int64_t pos0 = p.seen[i / p.Hkv];
  for (int64_t t0 = 0; t0 < p.T; t0 += kAppendBatch) {
    const int64_t n = p.T - t0 < kAppendBatch ? p.T - t0 : kAppendBatch;
    if (tid == 0) append_plan(p, i, pos0, t0, n, at);
#ifdef __CUDA_ARCH__
    __syncthreads();
#endif
    append_copy(p, i, pos0, t0, n, at, tid, threads);
#ifdef __CUDA_ARCH__
    __syncthreads();  // the next batch rewrites at[]
#endif
  }
}

template <class Row>
SPKV_HOST_DEVICE inline void append_advance(const AppendParamsT<Row>& p, int64_t b) {
  const int64_t pos0 = p.seen[b], T = p.T, W = p.W;
  for (int64_t t = T > W ? T - W : 0; t < T; ++t) p.ring_pos[b * W + (pos0 + t) % W] = pos0 + t;
  p.ring_len[b] = int32_t(pos0 + T < W ? pos0 + T : W);
  p.seen[b] = pos0 + T;
}

}  // namespace spkv::kernels
