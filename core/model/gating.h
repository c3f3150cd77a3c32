// SP-KV gating: the utility predictor, the per-call attention mask (causal, per document, sliding window,
// SP-KV window) and the gate bias each mode adds to out-of-window keys. The attention itself is in model.cpp;
// the compacted KV cache that turns closed gates into saved memory is not here.
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

// u = sigmoid(fc2(silu(fc1(h)))), or sigmoid(fc1(h)) for the 1-layer variant. One score per KV head.
// Parameters: `utility.fc1.{weight,bias}` (C -> hidden or Hkv) and `utility.fc2.{weight,bias}` (hidden -> Hkv).
struct UtilityPredictorImpl : torch::nn::Module {
  UtilityPredictorImpl(int64_t dim, int64_t n_kv_heads, const SpkvConfig& s);
  torch::Tensor forward(const torch::Tensor& h);  // (B, T, C) -> u (B, T, Hkv) in (0, 1)
  // Re-initializes: default Linear init, output weights scaled by 0.1, output bias = s.init_bias.
  void reset(const SpkvConfig& s);
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};  // fc2 is null in the 1-layer variant
};
TORCH_MODULE(UtilityPredictor);

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
