// The gated-attention autograd op: gated attention of LibTorch CUDA tensors through kernels/cuda, with the
// CUDA backward. It checks device, dtype, layout and shapes, with messages that name the tensor, and runs on
// the current CUDA stream. The masked attention backend (core/model/model.h) calls it for CUDA tensors. Built
// only with a CUDA LibTorch (SPKV_TORCH_CUDA; docs/gpu.md). Not the KV cache (device_kv_cache.h).
#pragma once
#include <torch/torch.h>

namespace spkv::cuda_ops {

// What positions, gates and documents add to causal attention; the rule is kernels/attention_params.h's.
struct Gates {
  torch::Tensor q_pos, k_pos;  // (T), (S) int64
  int64_t window = 0;          // <= 0: every causal key is local
  torch::Tensor keep;          // (B, Hkv, S) bool or uint8: hard gates; or undefined
  torch::Tensor far_bias;      // (B, Hkv, S) float32: soft gates, e.g. log(u + 1e-8), differentiable; or undefined
  torch::Tensor k_begin;       // (B, T) int64: each query's first visible key (packed documents); or undefined
};

// y (B, H, T, D) = gated attention of q (B, H, T, D) over k, v (B, Hkv, S, D): float32 or bfloat16 tensors
// (all three the same) on one CUDA device whose last dimension is contiguous. Differentiable in q, k, v and far_bias (the CUDA backward).
// Throws std::invalid_argument naming the tensor, std::runtime_error when a kernel fails (kernels/ include
// nothing from core/).
torch::Tensor gated_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const Gates& g);

}  // namespace spkv::cuda_ops
