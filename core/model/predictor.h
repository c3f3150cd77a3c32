// The SP-KV utility predictor: the small network, one per layer, that scores each token's key and value for
// every KV head, u in (0, 1); u >= tau keeps the key once it leaves the window. Not the gate bias or the mask
// (gating.h), nor the cache that acts on the decisions (core/infer).
#pragma once
#include <torch/torch.h>

#include "core/model/config.h"

namespace spkv {

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

}  // namespace spkv
