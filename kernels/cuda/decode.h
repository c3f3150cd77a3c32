// The CUDA decode path over a compacted per-head cache: decode attention split over the tokens of each
// (sequence, KV head) with a combine step (flash-decoding), reading only what the cache holds (ring plus
// kept tokens), and the fused cache append of a decode step or a prefill chunk. float32 or bf16 rows; all
// pointers are device pointers (CacheView's page pointer tables included). Framework-free; statuses, never exits.
// The CPU references (kernels/cpu/attention_ref.h, cache_append_ref.h) are the specification.
#pragma once
#include <cuda_runtime.h>

#include "kernels/append_params.h"
#include "kernels/decode_params.h"

namespace spkv::kernels::cuda {

constexpr int64_t kDecodeChunk = 128;  // tokens per split block and pass
constexpr int64_t kDecodeMaxGroup = 8;   // query heads per KV head (H / Hkv)
constexpr int64_t kDecodeMaxDim = 256;   // head dim D

// Splits for contexts of up to max_tokens per (sequence, KV head): one block per kDecodeChunk tokens,
// capped at max_splits. Any count is correct (blocks stride over the tokens); this one fills the device.
int64_t decode_splits(int64_t max_tokens, int64_t max_splits = 64);
// Floats of workspace decode_attention needs: partial max, sum and (D) accumulator per split and query head.
int64_t decode_workspace_floats(int64_t n_seq, int64_t H, int64_t D, int64_t splits);

// Same contract as cpu::decode_attention_ref. Unsupported: H / Hkv > kDecodeMaxGroup or D > kDecodeMaxDim.
Status decode_attention(const DecodeParams& p, int64_t splits, float* workspace, int64_t workspace_floats,
                        cudaStream_t stream);
Status decode_attention(const DecodeParamsT<bf16>& p, int64_t splits, float* workspace, int64_t workspace_floats,
                        cudaStream_t stream);

// Dense rows of what the cache holds, for a gated prefill over the cache (the chunk's own rows go after
// them): for each (b, hk), rows [0, store_len) are the store (keep 1), rows up to n_store padding (keep 0,
// K/V not written), rows n_store + slot the W ring slots (keep = ring_keep; a slot past ring_len keeps 0).
template <class Row>
struct GatherParamsT {
  CacheViewT<Row> cache;
  int64_t n_store = 0;    // at least every head's store_len
  int64_t S = 0;          // rows per head in k, v and keep (>= n_store + W)
  Row* k = nullptr;       // (n_seq, Hkv, S, D)
  Row* v = nullptr;       // (n_seq, Hkv, S, D)
  uint8_t* keep = nullptr;// (n_seq, Hkv, S)
};
using GatherParams = GatherParamsT<float>;
Status cache_gather(const GatherParams& g, cudaStream_t stream);
Status cache_gather(const GatherParamsT<bf16>& g, cudaStream_t stream);

// Same contract as cpu::cache_append_ref (the page ids a head gets may differ: the free list is handed out
// by an atomic counter in whatever order the heads get there).
Status cache_append(const AppendParams& p, cudaStream_t stream);
Status cache_append(const AppendParamsT<bf16>& p, cudaStream_t stream);

}  // namespace spkv::kernels::cuda
