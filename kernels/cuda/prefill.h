// Gated prefill attention on the GPU with key-block skipping: the contract of cpu::gated_attention_ref
// (causal + window + gate), float32. A warp owns one query position of one KV head and its G query heads,
// so each visible key is read once for the group; keys go in blocks of 32, and a block none of whose keys
// the query sees (future, or outside the window with every gate closed) is skipped without reading its
// keys. Not yet tiled for tensor cores, nor the soft mode and its backward (docs/gpu.md).
#pragma once
#include <cuda_runtime.h>

#include "kernels/attention_params.h"

namespace spkv::kernels::cuda {

// All pointers in p are device pointers. Unsupported: H / Hkv > 8 or D > 256.
Status gated_attention(const GatedAttentionParams& p, cudaStream_t stream);

}  // namespace spkv::kernels::cuda
