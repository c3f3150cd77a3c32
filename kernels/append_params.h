// The params of the fused cache append, one decode step of one layer for every sequence: the new K/V rows
// go into each head's ring slot, and the token they replace (position p - W) moves to that head's store if
// its gate was open. The store is a device-friendly paged layout: a fixed page table per (sequence, KV head)
// (headroom) and a shared free list handed out by an atomic counter, so allocation is O(1). The same memory
// read as a CacheView (decode_params.h) is what decode attention reads. Raw pointers; no LibTorch.
#pragma once
#include <cstdint>

#include "kernels/decode_params.h"

namespace spkv::kernels {

struct AppendParams {
  int64_t n_seq = 0, Hkv = 0, D = 0, W = 0, page_size = 0;
  // The step's rows: one new token per sequence, at position seen[b].
  const float* k_new = nullptr;       // (n_seq, Hkv, D)
  const float* v_new = nullptr;       // (n_seq, Hkv, D)
  const uint8_t* keep_new = nullptr;  // (n_seq, Hkv) gate decisions of the new token
  // The ring, updated in place (same layout as CacheView).
  float* ring_k = nullptr;            // (n_seq, Hkv, W, D)
  float* ring_v = nullptr;            // (n_seq, Hkv, W, D)
  int64_t* ring_pos = nullptr;        // (n_seq, W)
  uint8_t* ring_keep = nullptr;       // (n_seq, Hkv, W)
  int32_t* ring_len = nullptr;        // (n_seq)
  int64_t* seen = nullptr;            // (n_seq) tokens appended so far; incremented
  // The store: page p holds K rows k_pool[p * page_size * D ...] and V rows likewise.
  float* k_pool = nullptr;            // (n_pages, page_size, D)
  float* v_pool = nullptr;            // (n_pages, page_size, D)
  int32_t* page_table = nullptr;      // (n_seq * Hkv, max_pages) page ids of each head, in order
  int32_t* store_len = nullptr;       // (n_seq * Hkv) tokens in each head's store
  int64_t max_pages = 0;              // page-table capacity per head
  const int32_t* free_pages = nullptr;// (n_free) pages to hand out, in order
  int32_t* free_next = nullptr;       // (1) the next free_pages index (an atomic counter on the GPU)
  int64_t n_free = 0;
  int32_t* overflow = nullptr;        // (1) set to 1 when a head's table or the free list ran out (row dropped)
};

// Every pointer is set and every size is positive (W >= 1: the fused append is the SP-KV cache's).
bool valid(const AppendParams& p);

// The CacheView of the memory an AppendParams updates. page_ptr_k / page_ptr_v: (n_pages) pointers to each
// page's K / V rows (k_pool + p * page_size * D), built once for the pool; indptr: (n_seq * Hkv + 1) with
// indptr[i] = i * max_pages. All in the same address space as the pool (host or device).
CacheView append_view(const AppendParams& a, const float* const* page_ptr_k, const float* const* page_ptr_v,
                      const int32_t* indptr);

}  // namespace spkv::kernels
