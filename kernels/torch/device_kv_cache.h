// The device KV cache: SP-KV's compacted per-head cache in GPU memory, filled and read by the CUDA kernels
// (append, gather, split decode) and by the gated-attention op for prefill. The engine (core/infer/engine.h)
// uses it on a CUDA device. Built only with a CUDA LibTorch (SPKV_TORCH_CUDA; docs/gpu.md).
#pragma once
#include <torch/torch.h>

#include <vector>

#include "kernels/append_params.h"

namespace spkv::cuda_ops {

// The compacted per-head SP-KV cache in GPU memory, in the layout of kernels/append_params.h, for B sequences
// fed in lockstep: per (layer, sequence, KV head) a ring of the last W tokens and a store of the tokens that
// left it with their gate open, in pages from one pool that grows by doubling. keep_all: every token is kept
// (the dense baseline). Same results as SpkvKvCache + the CPU kernels (core/infer/kv_cache.h). rows: the
// dtype the cache stores its K/V rows in, float32 or bfloat16; with bfloat16 the kernels compute on bf16
// q, k and v (float32 arithmetic) and the cache takes half the bytes.
class DeviceKvCache {
 public:
  DeviceKvCache(int64_t n_seq, int64_t n_layers, int64_t n_kv_heads, int64_t head_dim, int64_t window,
                int64_t page_size, int64_t max_len, bool keep_all, torch::Device device,
                torch::ScalarType rows = torch::kFloat32);
  // Makes room for T more tokens in every layer. Call before each step. It reads the pool counter (a sync)
  // only when its bound on the pages in use could pass the pool, about log(length) times a sequence.
  void reserve(int64_t T);
  // The next T tokens of layer il: q (B, H, T, D), k, v (B, Hkv, T, D) float32, keep (B, T, Hkv) bool or uint8.
  // T > 1 (prefill): attends over the cache and the chunk, then appends the chunk. T = 1 (decode): appends,
  // then attends over the cache. -> y (B, H, T, D)
  torch::Tensor attend(int64_t il, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& keep);
  void clear();                                  // forgets every sequence
  int64_t length(int64_t il) const { return pos_[il]; }  // tokens appended to layer il
  std::vector<int64_t> entries() const;          // (L * B * Hkv) K/V rows held per head: ring + store (a sync)
  int64_t bytes_used() const;                    // the rings plus the pages handed out (a sync)
  int64_t bytes_reserved() const;                // the rings plus the whole pool

 private:
  template <class Row>
  kernels::AppendParamsT<Row> layer_params(int64_t il) const;  // layer il's memory; no new rows yet
  template <class Row>
  // k, v (B, Hkv, T, D) and keep (B, T, Hkv) uint8, contiguous: one append kernel for the T tokens.
  void append(int64_t il, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& keep);
  template <class Row>  // attend with q, k, v already in the rows' dtype and keep as uint8
  torch::Tensor attend_rows(int64_t il, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& keep_u8);
  void grow(int64_t pages);

  int64_t B_, L_, Hkv_, D_, W_, P_, max_pages_;
  bool keep_all_;
  torch::Device dev_;
  torch::ScalarType rows_;           // of ring_k_, ring_v_, k_pool_, v_pool_
  torch::Tensor ring_k_, ring_v_;    // (L, B, Hkv, W, D) rows_
  torch::Tensor ring_pos_;           // (L, B, W) int64
  torch::Tensor ring_keep_;          // (L, B, Hkv, W) uint8
  torch::Tensor ring_len_;           // (L, B) int32
  torch::Tensor seen_;               // (L, B) int64
  torch::Tensor page_table_;         // (L, B * Hkv, max_pages) int32
  torch::Tensor store_len_;          // (L, B * Hkv) int32
  torch::Tensor indptr_;             // (B * Hkv + 1) int32: i * max_pages
  torch::Tensor k_pool_, v_pool_;    // (n_pages, P, D) rows_
  torch::Tensor page_k_, page_v_;    // (n_pages) int64: device address of each page's rows
  torch::Tensor free_pages_;         // (n_pages) int32: 0, 1, ... (pages are handed out in order)
  torch::Tensor counters_;           // (2) int32: the next free page, overflow
  torch::Tensor workspace_;          // decode partials, float32
  std::vector<int64_t> pos_;         // (L) tokens appended per layer
  int64_t pages_read_ = 0;           // pages in use at the last read of counters_
  int64_t tokens_since_read_ = 0;    // tokens reserved since then
};

}  // namespace spkv::cuda_ops
