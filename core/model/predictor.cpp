// The utility predictor (predictor.h).
#include "core/model/predictor.h"

namespace spkv {
namespace F = torch::nn::functional;

UtilityPredictorImpl::UtilityPredictorImpl(int64_t dim, int64_t n_kv_heads, const SpkvConfig& s) {
  const int64_t out1 = s.predictor_layers == 2 ? s.hidden(dim) : n_kv_heads;
  fc1 = register_module("fc1", torch::nn::Linear(dim, out1));
  if (s.predictor_layers == 2) fc2 = register_module("fc2", torch::nn::Linear(out1, n_kv_heads));
  reset(s);
}

void UtilityPredictorImpl::reset(const SpkvConfig& s) {
  torch::NoGradGuard no_grad;
  fc1->reset_parameters();
  if (fc2) fc2->reset_parameters();
  auto& out = fc2 ? fc2 : fc1;
  out->weight.mul_(0.1);
  out->bias.fill_(s.init_bias);
}

torch::Tensor UtilityPredictorImpl::forward(const torch::Tensor& h) {
  auto z = fc1(h);
  if (fc2) z = fc2(F::silu(z));
  return torch::sigmoid(z);  // (B, T, Hkv)
}

}  // namespace spkv
