// The view of one layer of a compacted per-head KV cache, and the params of decode attention over it:
// raw pointers, sizes and CSR offsets, FlashInfer-style. The cache (core/infer/kv_cache.h) fills the view; the
// kernels only read it. No LibTorch here.
#pragma once
#include <cstdint>

#include "kernels/attention_params.h"

namespace spkv::kernels {

// One layer of the cache for n_seq sequences. Every (sequence b, KV head hk) has two parts:
//  - the ring: the last W tokens of the sequence (slots [0, ring_len[b]) are valid; a token at position p
//    sits in slot p % W). Every KV head of a sequence has the same ring positions; W = 0: no ring (dense).
//  - the long-term store: the tokens that left the ring with their gate open, in pages of page_size tokens,
//    CSR over i = b * Hkv + hk: pages store_pages[store_indptr[i] .. store_indptr[i + 1]) hold
//    store_len[i] tokens in order (the last page may be partly filled).
// Rows are float32, or bf16 on the GPU (Row).
template <class Row>
struct CacheViewT {
  int64_t n_seq = 0, Hkv = 0, D = 0;
  int64_t W = 0;
  const Row* ring_k = nullptr;       // (n_seq, Hkv, W, D)
  const Row* ring_v = nullptr;       // (n_seq, Hkv, W, D)
  const int64_t* ring_pos = nullptr; // (n_seq, W) position of the token in each slot
  const uint8_t* ring_keep = nullptr;// (n_seq, Hkv, W) gate decision of the token in each slot
  const int32_t* ring_len = nullptr; // (n_seq)
  int64_t page_size = 0;
  // The CUDA decode reads 4 elements at once when D is a multiple of 4: then every page's rows must be
  // aligned to 4 elements (as pages cut from one allocation are).
  const Row* const* page_k = nullptr;    // page id -> K rows (page_size, D)
  const Row* const* page_v = nullptr;    // page id -> V rows (page_size, D)
  const int32_t* store_indptr = nullptr; // (n_seq * Hkv + 1)
  const int32_t* store_pages = nullptr;  // (store_indptr[n_seq * Hkv]) page ids
  const int32_t* store_len = nullptr;    // (n_seq * Hkv) tokens in the store
};

// One new query token per sequence, already appended to the cache:
// y[b, h] = softmax over (ring ∪ store of (b, hk)) of q[b, h] . k * scale, @ v, with hk = h / (H / Hkv).
// Every ring token is within the window of the newest token; every store token was kept by its gate.
template <class Row>
struct DecodeParamsT {
  const Row* q = nullptr;  // (n_seq, H, D)
  Row* y = nullptr;        // (n_seq, H, D)
  int64_t H = 0;
  float scale = 0.0f;
  CacheViewT<Row> cache;
  // Optional (the CPU kernels; the budgeted eviction policies read it): the attention weights, (n_seq, H,
  // weights_stride). Row (b, h) holds the ring slots [0, ring_len[b]) then the store rows [0, store_len[i])
  // of its KV head, in order; the entries past them are not written. A head with more entries than the
  // stride is Status::invalid_argument.
  float* weights = nullptr;
  int64_t weights_stride = 0;
};

using CacheView = CacheViewT<float>;
using DecodeParams = DecodeParamsT<float>;

// The cache view and the query rows are set up consistently (pointers present, H a multiple of Hkv).
template <class Row>
bool valid(const DecodeParamsT<Row>& p) {
  const CacheViewT<Row>& c = p.cache;
  return p.q && p.y && c.Hkv > 0 && p.H % c.Hkv == 0 && c.D > 0 && (c.W <= 0 || (c.ring_len && c.ring_k && c.ring_v)) &&
         c.store_indptr && c.store_len && (!p.weights || p.weights_stride > 0);
}

// The entries of head i = b * Hkv + hk: its ring slots and store rows (the length of its weights row).
template <class Row>
int64_t head_entries(const CacheViewT<Row>& c, int64_t i) {
  return (c.W > 0 ? c.ring_len[i / c.Hkv] : 0) + c.store_len[i];
}

// Every head's entries fit the weights' stride (or no weights are asked for).
template <class Row>
bool weights_fit(const DecodeParamsT<Row>& p) {
  for (int64_t i = 0; p.weights && i < p.cache.n_seq * p.cache.Hkv; ++i)
    if (head_entries(p.cache, i) > p.weights_stride) return false;
  return true;
}

}  // namespace spkv::kernels
