// The recording attention backend and the per-document statistics of `spkv run --attention-stats`.
#include "core/model/attention_stats.h"

#include <algorithm>

#include "core/base/errors.h"

namespace spkv {

RecordingAttention::RecordingAttention(const ModelConfig& c, const AttentionMask& mask, const GateSettings& gates,
                                       int64_t tail, int64_t window)
    : MaskedAttention(c, mask, gates, /*training=*/false), tail_(tail), window_(window) {}

torch::Tensor RecordingAttention::attend(int64_t il, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                         const torch::Tensor& u) {
  auto p = attention_probs(q, k, bias(il, u, q.scalar_type()));  // (B, Hkv, G, T, S)
  const int64_t T = p.size(3), S = p.size(4), tail = std::min(tail_, T);
  received.push_back(p.sum(3).mean(2).transpose(1, 2).detach());                                  // (B, S, Hkv)
  received_tail.push_back(p.narrow(3, T - tail, tail).sum(3).mean(2).transpose(1, 2).detach());   // (B, S, Hkv)
  auto ts = torch::arange(T, p.options().dtype(torch::kInt64)).unsqueeze(1) + (S - T);            // query positions
  auto far = (ts - torch::arange(S, ts.options()).unsqueeze(0)) >= window_;                       // (T, S)
  received_far.push_back((p * far).sum(3).mean(2).transpose(1, 2).detach());                     // (B, S, Hkv)
  return apply_probs(p, v);
}

GateTargetAttention::GateTargetAttention(const ModelConfig& c, const AttentionMask& mask, const GateSettings& gates,
                                         const ShutGates& shut, const torch::Tensor& counted)
    : MaskedAttention(c, mask, gates, /*training=*/true, {}, shut) {
  if (!mask.far.defined()) throw ConfigError("gate target: the model has no SP-KV window");
  counted_far_ = mask.far & counted.view({counted.size(0), 1, 1, counted.size(1), 1});  // (B, 1, 1, T, S)
  read_by = counted_far_.any(3).view({counted.size(0), -1});                             // (B, S)
}

torch::Tensor GateTargetAttention::attend(int64_t il, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                          const torch::Tensor& u) {
  {
    torch::NoGradGuard ng;
    auto p0 = attention_probs(q, k, mask_.bias.to(q.scalar_type()));                   // (B, Hkv, G, T, S) no gates
    auto best = p0.masked_fill_(~counted_far_, 0.0).amax(at::IntArrayRef{2, 3});       // (B, Hkv, S), in place
    read_far.push_back(best.transpose(1, 2).to(torch::kFloat32).contiguous());        // (B, S, Hkv)
  }
  return MaskedAttention::attend(il, q, k, v, u);
}

std::vector<torch::Tensor> attention_stats(LlamaForCausalLM& model, const std::vector<int32_t>& tokens, int64_t tail,
                                           int64_t window) {
  torch::NoGradGuard no_grad;
  const auto device = model->parameters().front().device();
  auto ids = torch::tensor(std::vector<int64_t>(tokens.begin(), tokens.end())).unsqueeze(0).to(device);  // (1, T)
  const auto mask = make_attention_mask(model->config, ids.size(1), {}, device);
  GateSettings dense = model->gates;
  dense.mode = GateMode::dense;
  RecordingAttention rec(model->config, mask, dense, tail, window);
  model->forward_with(ids, mask.positions, rec);
  std::vector<torch::Tensor> out;
  for (auto* per_layer : {&rec.received, &rec.received_tail, &rec.received_far}) {
    std::vector<torch::Tensor> rows;
    for (auto& t : *per_layer) rows.push_back(t[0]);                                   // (T, Hkv)
    out.push_back(torch::stack(rows, 1).to(torch::kCPU, torch::kFloat32).contiguous());  // (T, L, Hkv)
  }
  return out;
}

}  // namespace spkv
