// The CPU reference of gated attention: readable loops, float64 accumulation. It is the specification
// that every fast path (torch, vectorized CPU, CUDA) is tested against. Not fast, by design.
#pragma once
#include "kernels/attention_params.h"
#include "kernels/decode_params.h"

namespace spkv::kernels::cpu {

Status gated_attention_ref(const GatedAttentionParams& p);
// Its backward (attention_params.h), recomputing the probabilities in float64 (fwd.y and lse are not read).
Status gated_attention_backward_ref(const GatedAttentionGradParams& g);

// Decode attention over a compacted cache (decode_params.h): every ring and store token, in float64.
Status decode_attention_ref(const DecodeParams& p);

}  // namespace spkv::kernels::cpu
