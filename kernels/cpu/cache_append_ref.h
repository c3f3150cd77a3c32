// The CPU reference of the fused cache append (append_params.h): the specification the CUDA kernel is tested
// against, and itself tested against SpkvKvCache's eviction rule. Readable loops over (sequence, token, KV
// head): a chunk of T tokens is T decode steps.
#pragma once
#include "kernels/append_params.h"

namespace spkv::kernels::cpu {

Status cache_append_ref(const AppendParams& p);

}  // namespace spkv::kernels::cpu
