// SP-KV gating: the per-call attention mask (causal, per document, sliding window, SP-KV window) and the gate
// bias each mode adds to out-of-window keys. The utility predictor that scores the keys is predictor.h; the
// attention itself is in model.cpp; the compacted KV cache that turns closed gates into saved memory is not here.
#pragma once
#include <torch/torch.h>

#include "core/model/config.h"

namespace spkv {

// Runtime gate settings; a loaded model starts from its config's spkv.mode and tau. The trainer moves
// them through the soft -> annealed phases; `spkv eval --tau` changes tau without retraining.
struct GateSettings {
  GateMode mode = GateMode::hard;
  double tau = 0.5;
  double anneal = 0.0;  // a in [0, 1], annealed mode only
};

// Built once per forward call and shared by every layer. S = T (no cache here).
struct AttentionMask {
  torch::Tensor positions;  // (B|1, T) int64: RoPE positions, restarting at 0 at each document start
  torch::Tensor bias;       // (B|1, 1, 1, T, S) float: 0 where visible (causal, same document, sliding window)
  torch::Tensor far;        // (B|1, 1, 1, T, S) bool: visible but t - s >= W and not kept by keep_first;
                            //   undefined for a model without SP-KV
  torch::Tensor evictable;  // (B|1, S) bool: keys some query sees outside the window (density denominator)
  // The same mask in the terms of the CUDA kernels (kernels/attention_params.h), which take no (T, S) tensor:
  torch::Tensor index;      // (T) int64: 0 .. T-1, the kernels' query and key positions
  torch::Tensor k_begin;    // (B, T) int64: the first key of each query's document; undefined without segments
  torch::Tensor first;      // (B|1, S) bool: keys at document positions < keep_first (no gate bias); or undefined
};

// segments: (B, T) int64 document index per token, non-decreasing along T, or undefined (one document per
// row). Tokens never attend across documents.
AttentionMask make_attention_mask(const ModelConfig& c, int64_t T, const torch::Tensor& segments,
                                  const torch::Device& device);

// The additive bias on out-of-window keys for one layer. u: (B, S, Hkv) -> (B, Hkv, 1, 1, S).
// `training` selects Bernoulli sampling in ste mode. Not called in dense mode.
torch::Tensor gate_bias(const torch::Tensor& u, const GateSettings& g, bool training);

// Hard decisions z = u >= tau counted over evictable keys. u: (B, S, Hkv) -> (Hkv, 2) int64 [kept, total].
torch::Tensor count_kept(const torch::Tensor& u, const torch::Tensor& evictable, double tau);

}  // namespace spkv
