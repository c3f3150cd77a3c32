// Attention statistics (`spkv run --dense --attention-stats`): the attention mass each key received under
// full attention, from a masked-attention backend that keeps the probabilities it computes; and the same for
// training's gate target (optim.gate_target, docs/training.md). Not the analysis of these statistics
// (analysis/offline_baselines.h), nor a CUDA path (the kernels return no probabilities).
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

// The training backend (the masked one, gates and shut heads included) that also keeps, per layer, the
// largest attention probability each key receives, without the gates' bias, from a counted query that
// sees it from outside the SP-KV window (t - s >= W, not kept by keep_first), over the G query heads of its
// KV head: the keys a later answer reads. counted: (B, T) bool, the queries whose next token is a counted
// target (the batch's loss mask). Gradients flow as in MaskedAttention; the statistics are detached.
class GateTargetAttention : public MaskedAttention {
 public:
  GateTargetAttention(const ModelConfig& c, const AttentionMask& mask, const GateSettings& gates, const ShutGates& shut,
                      const torch::Tensor& counted);
  torch::Tensor attend(int64_t il, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& u) override;
  std::vector<torch::Tensor> read_far;  // per layer (B, S, Hkv) float32 in [0, 1]
  torch::Tensor read_by;                // (B, S) bool: keys that some counted query sees from outside the window

 private:
  torch::Tensor counted_far_;  // (B, 1, 1, T, S) bool
};

// One document under full attention (the model's gates set to dense): the three statistics above as
// (T, L, Hkv) float32 CPU tensors [received, received_tail, received_far]. tokens: T ids.
std::vector<torch::Tensor> attention_stats(LlamaForCausalLM& model, const std::vector<int32_t>& tokens, int64_t tail,
                                           int64_t window);

}  // namespace spkv
