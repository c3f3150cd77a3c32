// Gated prefill attention on the GPU with key-block skipping, and its backward for training: the contract of
// cpu::gated_attention_ref and gated_attention_backward_ref (causal + window + hard or soft gates, packed
// documents), float32 or bf16 rows. A warp owns one query position of one KV head and its G query heads, so each visible
// key is read once for the group; keys go in blocks of 32, and a block none of whose keys the query sees
// (future, other document, or far with every gate closed) is skipped without reading its keys. Not yet tiled
// for tensor cores (docs/gpu.md).
#pragma once
#include <cuda_runtime.h>

#include "kernels/attention_params.h"

namespace spkv::kernels::cuda {

// All pointers in p are device pointers. Unsupported: H / Hkv > 8 or D > 256.
Status gated_attention(const GatedAttentionParams& p, cudaStream_t stream);
Status gated_attention(const GatedAttentionParamsT<bf16>& p, cudaStream_t stream);

// The forward on tensor cores (prefill_tc.cu): bf16 rows and D of 32, 64 or 128 only (else
// Status::unsupported), the contract of gated_attention, with the probabilities rounded to bf16 for the
// P V product. Written without a GPU and not yet run on one: the adapter does not call it yet.
Status gated_attention_tc(const GatedAttentionParamsT<bf16>& p, cudaStream_t stream);

// The backward, from the forward's y and lse (both required) and dy; g.delta is a (B, H, T) workspace.
// Writes every element of dq, dk, dv (and d_far_bias when set).
Status gated_attention_backward(const GatedAttentionGradParams& g, cudaStream_t stream);
Status gated_attention_backward(const GatedAttentionGradParamsT<bf16>& g, cudaStream_t stream);

}  // namespace spkv::kernels::cuda
