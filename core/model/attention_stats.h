// Attention statistics (`spkv run --dense --attention-stats`): the attention mass each key received under
// full attention, from a masked-attention backend that keeps the probabilities it computes. Not the
// analysis of these statistics (analysis/offline_baselines.h), nor a CUDA path (the kernels return no probabilities).
#pragma once
#include <vector>

#include "core/model/model.h"

namespace spkv {

// The masked backend (model.h) that also keeps, per layer, the attention mass each key received, averaged
// over the G query heads of its KV head: from every query (received), from the last `tail` queries
// (received_tail), and from the queries that see it from outside a window W, t - s >= W (received_far).
class RecordingAttention : public MaskedAttention {
 public:
  RecordingAttention(const ModelConfig& c, const AttentionMask& mask, const GateSettings& gates, int64_t tail,
                     int64_t window);
  torch::Tensor attend(int64_t il, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& u) override;
  std::vector<torch::Tensor> received, received_tail, received_far;  // per layer (B, S, Hkv) float32

 private:
  int64_t tail_, window_;
};

// One document under full attention (the model's gates set to dense): the three statistics above as
// (T, L, Hkv) float32 CPU tensors [received, received_tail, received_far]. tokens: T ids.
std::vector<torch::Tensor> attention_stats(LlamaForCausalLM& model, const std::vector<int32_t>& tokens, int64_t tail,
                                           int64_t window);

}  // namespace spkv
