// The params of the fused cache append: T new tokens of one layer for every sequence (T = 1: a decode step;
// T > 1: a prefill chunk), in order. Each token's K/V rows go into its head's ring slot, and the token they
// replace (position p - W) moves to that head's store if its gate was open. The store is a device-friendly
// paged layout: a fixed page table per (sequence, KV head) (headroom) and a shared free list handed out by an
// atomic counter, so allocation is O(1). The same memory
// read as a CacheView (decode_params.h) is what decode attention reads. Raw pointers; no LibTorch.
#pragma once
#include <cstdint>

#include "kernels/decode_params.h"

namespace spkv::kernels {

template <class Row>  // float, or bf16 on the GPU
struct AppendParamsT {
  int64_t n_seq = 0, Hkv = 0, D = 0, W = 0, page_size = 0;
  int64_t T = 1;                      // new tokens per sequence, at positions seen[b], ..., seen[b] + T - 1
  const Row* k_new = nullptr;         // (n_seq, Hkv, T, D)
  const Row* v_new = nullptr;         // (n_seq, Hkv, T, D)
  const uint8_t* keep_new = nullptr;  // (n_seq, T, Hkv) gate decisions of the new tokens
  // The ring, updated in place (same layout as CacheView).
  Row* ring_k = nullptr;              // (n_seq, Hkv, W, D)
  Row* ring_v = nullptr;              // (n_seq, Hkv, W, D)
  int64_t* ring_pos = nullptr;        // (n_seq, W)
  uint8_t* ring_keep = nullptr;       // (n_seq, Hkv, W)
  int32_t* ring_len = nullptr;        // (n_seq)
  int64_t* seen = nullptr;            // (n_seq) tokens appended so far; advanced by T
  // The store: page p holds K rows k_pool[p * page_size * D ...] and V rows likewise.
  Row* k_pool = nullptr;              // (n_pages, page_size, D)
  Row* v_pool = nullptr;              // (n_pages, page_size, D)
  int32_t* page_table = nullptr;      // (n_seq * Hkv, max_pages) page ids of each head, in order
  int32_t* store_len = nullptr;       // (n_seq * Hkv) tokens in each head's store
  int64_t max_pages = 0;              // page-table capacity per head
  const int32_t* free_pages = nullptr;// (n_free) pages to hand out, in order
  int32_t* free_next = nullptr;       // (1) the next free_pages index (an atomic counter on the GPU)
  int64_t n_free = 0;
  int32_t* overflow = nullptr;        // (1) set to 1 when a head's table or the free list ran out (row dropped)
};

using AppendParams = AppendParamsT<float>;

// Every pointer is set and every size is positive (W >= 1: the fused append is the SP-KV cache's).
template <class Row>
bool valid(const AppendParamsT<Row>& p) {
  return p.n_seq >= 0 && p.Hkv > 0 && p.D > 0 && p.W > 0 && p.page_size > 0 && p.T > 0 && p.k_new && p.v_new &&
         p.keep_new && p.ring_k && p.ring_v && p.ring_pos && p.ring_keep && p.ring_len && p.seen && p.k_pool && p.v_pool &&
         p.page_table && p.store_len && p.free_pages && p.free_next && p.overflow;
}

// The CacheView of the memory an AppendParams updates. page_ptr_k / page_ptr_v: (n_pages) pointers to each
// page's K / V rows (k_pool + p * page_size * D), built once for the pool; indptr: (n_seq * Hkv + 1) with
// indptr[i] = i * max_pages. All in the same address space as the pool (host or device).
template <class Row>
CacheViewT<Row> append_view(const AppendParamsT<Row>& a, const Row* const* page_ptr_k, const Row* const* page_ptr_v,
                            const int32_t* indptr) {
  CacheViewT<Row> v;
  v.n_seq = a.n_seq, v.Hkv = a.Hkv, v.D = a.D, v.W = a.W, v.page_size = a.page_size;
  v.ring_k = a.ring_k, v.ring_v = a.ring_v, v.ring_pos = a.ring_pos, v.ring_keep = a.ring_keep, v.ring_len = a.ring_len;
  v.page_k = page_ptr_k, v.page_v = page_ptr_v;
  v.store_indptr = indptr, v.store_pages = a.page_table, v.store_len = a.store_len;
  return v;
}

}  // namespace spkv::kernels
