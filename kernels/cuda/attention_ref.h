// CUDA version of the gated-attention reference: one thread block per (b, h, t) query, online softmax.
// A correctness baseline on the GPU, not the fast decode/prefill kernels. Framework-free; returns a status.
#pragma once
#include <cuda_runtime.h>

#include "kernels/attention_params.h"

namespace spkv::kernels::cuda {

// All pointers in p are device pointers. Hard gates only (hard_only(p)), else Status::unsupported.
Status gated_attention_ref(const GatedAttentionParams& p, cudaStream_t stream);

// Number of CUDA devices usable now (0 when there is no driver or device).
int device_count();

}  // namespace spkv::kernels::cuda
