#include "core/infer/generate.h"

#include "core/base/errors.h"
#include "core/infer/engine.h"

namespace spkv {

int64_t sample_token(const torch::Tensor& logits, const SamplerOptions& o, std::mt19937_64& rng) {
  if (o.temperature <= 0.0f) return logits.argmax().item<int64_t>();
  auto probs = torch::softmax(logits.to(torch::kFloat64) / o.temperature, -1);  // (V)
  auto [sorted, order] = probs.sort(/*dim=*/-1, /*descending=*/true);
  auto cum = sorted.cumsum(-1);
  // Keep the smallest prefix whose mass reaches top_p (at least one token).
  int64_t keep = o.top_p < 1.0f ? (cum < double(o.top_p)).sum().item<int64_t>() + 1 : sorted.size(0);
  keep = std::min<int64_t>(keep, sorted.size(0));
  auto p = sorted.narrow(0, 0, keep);
  const double r = std::uniform_real_distribution<double>(0.0, 1.0)(rng) * p.sum().item<double>();
  auto acc = p.cumsum(0);
  int64_t i = std::min<int64_t>((acc < r).sum().item<int64_t>(), keep - 1);
  return order[i].item<int64_t>();
}

void generate(LlamaForCausalLM& model, std::vector<int32_t>& tokens, int64_t max_new, const SamplerOptions& o,
              const std::function<void(int32_t)>& on_token) {
  if (tokens.empty()) throw InputError("generate: the prompt has no tokens");
  std::mt19937_64 rng(o.seed);
  const ModelConfig& c = model->config;
  if (int64_t(tokens.size()) >= c.max_seq_len) return;
  Engine engine(model);
  auto ids = torch::tensor(std::vector<int64_t>(tokens.begin(), tokens.end())).unsqueeze(0);  // (1, T)
  auto logits = engine.forward(ids).logits[0][-1];                                           // (V)
  for (int64_t n = 0; n < max_new; ++n) {
    const auto next = int32_t(sample_token(logits, o, rng));
    if (next == c.bos_id || next == c.eos_id) break;
    tokens.push_back(next);
    on_token(next);
    if (int64_t(tokens.size()) >= c.max_seq_len) break;
    logits = engine.forward(torch::full({1, 1}, int64_t(next), torch::kInt64)).logits[0][-1];
  }
}

std::vector<double> token_nll(LlamaForCausalLM& model, const std::vector<int32_t>& tokens, torch::Tensor* gate_counts) {
  torch::NoGradGuard no_grad;
  std::vector<double> out;
  const int64_t S = model->config.max_seq_len, n = int64_t(tokens.size());
  for (int64_t begin = 0; begin + 1 < n; begin += S - 1) {
    const int64_t len = std::min(S, n - begin);
    auto ids = torch::tensor(std::vector<int64_t>(tokens.begin() + begin, tokens.begin() + begin + len));  // (T)
    auto logp = torch::log_softmax(model(ids.unsqueeze(0))[0].to(torch::kFloat64), -1);                 // (T, V)
    auto nll = -logp.narrow(0, 0, len - 1).gather(1, ids.narrow(0, 1, len - 1).unsqueeze(1)).squeeze(1);  // (T-1)
    if (gate_counts && model->config.spkv.enabled) {
      auto c = model->gate_counts();
      *gate_counts = gate_counts->defined() ? *gate_counts + c : c;
    }
    auto acc = nll.accessor<double, 1>();
    for (int64_t i = 0; i < len - 1; ++i) out.push_back(acc[i]);
  }
  return out;
}

}  // namespace spkv
