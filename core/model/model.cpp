// The Llama-family forward pass: RMSNorm, RoPE (both pairings, llama3/linear scaling), GQA attention,
// SwiGLU, tied or untied classifier, optional q/k/v biases.
#include "core/model/model.h"

#include <cmath>
#include <sstream>

#include "core/base/errors.h"
#ifdef SPKV_TORCH_CUDA
#include "kernels/torch/gated_attention_op.h"
#endif

namespace spkv {
namespace F = torch::nn::functional;

namespace {
// Inverse frequencies (D/2) in float64, with Llama-3 / linear scaling applied.
std::vector<double> inv_frequencies(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<double> inv(half);
  const auto& s = c.rope_scaling;
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(c.rope_theta, 2.0 * i / c.head_dim);
    if (s.type == "linear") {
      f /= s.factor;
    } else if (s.type == "llama3") {
      const double old = static_cast<double>(s.original_max_position_embeddings);
      const double low_wavelen = old / s.low_freq_factor, high_wavelen = old / s.high_freq_factor;
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen > low_wavelen) {
        f /= s.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = (1.0 - smooth) * f / s.factor + smooth * f;
      }
    }
    inv[i] = f;
  }
  return inv;
}

std::string shape_str(torch::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  return o.str() + "]";
}
}  // namespace

RotaryEmbedding::RotaryEmbedding(const ModelConfig& c) : style(c.rope_style) {
  auto inv = torch::tensor(inv_frequencies(c), torch::kFloat64);                // (D/2)
  auto pos = torch::arange(c.max_seq_len, torch::kFloat64);                      // (T_max)
  auto angles = torch::outer(pos, inv);                                          // (T_max, D/2)
  cos = angles.cos().to(torch::kFloat32);
  sin = angles.sin().to(torch::kFloat32);
}

torch::Tensor RotaryEmbedding::apply(const torch::Tensor& x, const torch::Tensor& positions) const {
  if (positions.numel() > 0 && positions.max().item<int64_t>() >= cos.size(0))
    throw InputError("position " + std::to_string(positions.max().item<int64_t>()) +
                     " is past the model's context (max_position_embeddings = " + std::to_string(cos.size(0)) + ")");
  auto c = cos.index_select(0, positions.flatten()).to(x.dtype());  // (T, D/2) or (B*T, D/2)
  auto s = sin.index_select(0, positions.flatten()).to(x.dtype());
  if (positions.dim() == 2) {  // per-row positions: (B|1, 1, T, D/2), broadcast over heads
    c = c.view({positions.size(0), 1, positions.size(1), -1});
    s = s.view({positions.size(0), 1, positions.size(1), -1});
  }
  const int64_t D = x.size(-1);
  if (style == RopeStyle::interleaved) {
    auto xp = x.unflatten(-1, {D / 2, 2});  // (B, n, T, D/2, 2)
    auto a = xp.select(-1, 0), b = xp.select(-1, 1);
    return torch::stack({a * c - b * s, a * s + b * c}, -1).flatten(-2);
  }
  auto a = x.narrow(-1, 0, D / 2), b = x.narrow(-1, D / 2, D / 2);  // (B, n, T, D/2)
  return torch::cat({a * c - b * s, a * s + b * c}, -1);
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * weight;
}

torch::Tensor causal_bias(const torch::Tensor& q_pos, const torch::Tensor& k_pos, int64_t window) {
  auto d = q_pos.unsqueeze(1) - k_pos.unsqueeze(0);  // (T, S): t - s
  auto visible = d >= 0;
  if (window > 0) visible = visible & (d < window);
  return torch::zeros(visible.sizes(), torch::kFloat32)
      .masked_fill(visible.logical_not(), -std::numeric_limits<float>::infinity());
}

torch::Tensor attention_probs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& bias) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), Hkv = k.size(1), S = k.size(2);
  auto qg = q.reshape({B, Hkv, H / Hkv * T, D});                                        // (B, Hkv, G*T, D)
  auto scores = torch::matmul(qg, k.transpose(-2, -1)) / std::sqrt(double(D));        // (B, Hkv, G*T, S)
  return torch::softmax(scores.view({B, Hkv, H / Hkv, T, S}) + bias, -1);              // (B, Hkv, G, T, S)
}

torch::Tensor apply_probs(const torch::Tensor& p, const torch::Tensor& v) {
  const int64_t B = p.size(0), Hkv = p.size(1), G = p.size(2), T = p.size(3), S = p.size(4), D = v.size(3);
  return torch::matmul(p.view({B, Hkv, G * T, S}), v).view({B, Hkv * G, T, D});  // (B, H, T, D)
}

void check_layout(const ModelConfig& c, const HeadLayout& l, const std::string& where) {
  if (int64_t(l.global.size()) != c.n_layers * c.n_kv_heads)
    throw ConfigError(where + ": the layout has " + std::to_string(l.global.size()) + " head flags but the model has " +
                      std::to_string(c.n_layers) + " layers x " + std::to_string(c.n_kv_heads) + " KV heads");
  if (l.window < 1) throw ConfigError(where + ": a layout needs a window of at least 1, got " + std::to_string(l.window));
  if (c.sliding_window > 0) throw ConfigError(where + ": a layout cannot be imposed on a model with a sliding_window");
}

MaskedAttention::MaskedAttention(const ModelConfig& c, const AttentionMask& mask, const GateSettings& gates,
                                 bool training, const HeadLayout& layout, const ShutGates& shut)
    : mask_(mask),
      gates_(gates),
      training_(training),
      shut_(shut),
      spkv_window_(c.spkv.enabled ? c.spkv.window : 0),
      sliding_window_(c.sliding_window) {
  const auto& idx = mask.index;  // (T)
  auto beyond = [&](int64_t window) { return (idx.unsqueeze(1) - idx.unsqueeze(0)) >= window; };  // (T, S)
  if (!layout.empty()) {
    check_layout(c, layout, "masked attention");
    layout_ = torch::tensor(std::vector<int64_t>(layout.global.begin(), layout.global.end()), idx.options())
                  .view({c.n_layers, c.n_kv_heads}) != 0;
    beyond_ = beyond(layout.window);
  } else if (shut_.defined() && !c.spkv.enabled) {
    beyond_ = beyond(shut_.window);
  }
}

torch::Tensor MaskedAttention::shut_off(int64_t il) const {
  const auto keys = shut_.keys.unsqueeze(2);  // (B, S, 1)
  torch::Tensor off;                          // (B, S, Hkv)
  if (shut_.heads.defined()) off = keys & shut_.heads[il].view({1, 1, -1});
  if (shut_.other_heads.defined()) {
    const auto other = ~keys & shut_.other_heads[il].view({1, 1, -1});
    off = off.defined() ? off | other : other;
  }
  return off;
}

torch::Tensor MaskedAttention::bias(int64_t il, const torch::Tensor& u, c10::ScalarType dtype) const {
  auto bias = mask_.bias.to(dtype);  // (B|1, 1, 1, T, S)
  const float inf = std::numeric_limits<float>::infinity();
  if (layout_.defined())  // fixed decisions: a local head sees only its window
    return bias.masked_fill(~layout_[il].view({1, -1, 1, 1, 1}) & beyond_, -inf);  // (B|1, Hkv, 1, T, S)
  if (beyond_.defined()) {  // no SP-KV: the shut keys are masked beyond the window
    const auto off = shut_off(il).transpose(1, 2).unsqueeze(2).unsqueeze(2);  // (B, Hkv, 1, 1, S)
    return bias.masked_fill(off & beyond_, -inf);                           // (B, Hkv, 1, T, S)
  }
  if (u.defined() && gates_.mode != GateMode::dense) {
    const auto us = shut_.defined() ? u.masked_fill(shut_off(il), 0.0) : u;  // (B, S, Hkv)
    bias = torch::where(mask_.far, gate_bias(us, gates_, training_), bias);  // (B, Hkv, 1, T, S)
  }
  return bias;
}

torch::Tensor MaskedAttention::attend(int64_t il, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                      const torch::Tensor& u) {
#ifdef SPKV_TORCH_CUDA
  // The CUDA kernels take the window and the far keys' bias instead of a (T, S) mask: every case but an SP-KV
  // model that also has a sliding window.
  const bool gated = u.defined() && gates_.mode != GateMode::dense;
  if (q.is_cuda() && !layout_.defined() && !shut_.defined() && !(gated && sliding_window_ > 0)) {
    const int64_t B = q.size(0), T = q.size(2), Hkv = k.size(1);
    cuda_ops::Gates g;
    g.q_pos = g.k_pos = mask_.index, g.k_begin = mask_.k_begin, g.window = sliding_window_;
    if (gated) {
      auto fb = gate_bias(u, gates_, training_).view({B, Hkv, T});  // (B, Hkv, S)
      if (mask_.first.defined()) fb = torch::where(mask_.first.unsqueeze(1), torch::zeros_like(fb), fb);
      g.far_bias = fb, g.window = spkv_window_;
    }
    return cuda_ops::gated_attention(q, k, v, g);
  }
#endif
  return apply_probs(attention_probs(q, k, bias(il, u, q.scalar_type())), v);
}

AttentionImpl::AttentionImpl(const ModelConfig& c)
    : n_heads(c.n_heads), n_kv_heads(c.n_kv_heads), head_dim(c.head_dim), tap_residual(c.spkv.tap == "residual") {
  auto lin = [&](int64_t in, int64_t out, bool bias) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
  };
  q_proj = register_module("q_proj", lin(c.dim, c.n_heads * c.head_dim, c.attention_bias));
  k_proj = register_module("k_proj", lin(c.dim, c.n_kv_heads * c.head_dim, c.attention_bias));
  v_proj = register_module("v_proj", lin(c.dim, c.n_kv_heads * c.head_dim, c.attention_bias));
  o_proj = register_module("o_proj", lin(c.n_heads * c.head_dim, c.dim, false));
  if (c.spkv.enabled) utility = register_module("utility", UtilityPredictor(c.dim, c.n_kv_heads, c.spkv));
}

torch::Tensor AttentionImpl::forward(int64_t il, const torch::Tensor& x, const torch::Tensor& residual,
                                     const RotaryEmbedding& rope, const torch::Tensor& positions,
                                     AttentionBackend& backend) {
  const int64_t B = x.size(0), T = x.size(1);
  auto q = rope.apply(q_proj(x).view({B, T, n_heads, head_dim}).transpose(1, 2), positions);     // (B, H, T, D)
  auto k = rope.apply(k_proj(x).view({B, T, n_kv_heads, head_dim}).transpose(1, 2), positions);  // (B, Hkv, T, D)
  auto v = v_proj(x).view({B, T, n_kv_heads, head_dim}).transpose(1, 2);                         // (B, Hkv, T, D)
  const auto& tap = tap_residual ? residual : x;                                                 // (B, T, C)
  last_utility = utility ? utility(tap) : torch::Tensor();                                       // (B, T, Hkv)
  // Kept while gradients are on (autograd holds it then anyway), not while scoring.
  last_tap = utility && torch::GradMode::is_enabled() ? tap : torch::Tensor();
  auto y = backend.attend(il, q, k, v, last_utility);                                            // (B, H, T, D)
  return o_proj(y.transpose(1, 2).reshape({B, T, n_heads * head_dim}));
}

MLPImpl::MLPImpl(const ModelConfig& c) {
  auto lin = [](int64_t in, int64_t out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); };
  gate_proj = register_module("gate_proj", lin(c.dim, c.hidden_dim));
  up_proj = register_module("up_proj", lin(c.dim, c.hidden_dim));
  down_proj = register_module("down_proj", lin(c.hidden_dim, c.dim));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) { return down_proj(F::silu(gate_proj(x)) * up_proj(x)); }

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c) {
  self_attn = register_module("self_attn", Attention(c));
  mlp = register_module("mlp", MLP(c));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.dim, c.norm_eps));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.dim, c.norm_eps));
}

torch::Tensor DecoderLayerImpl::forward(int64_t il, const torch::Tensor& x, const RotaryEmbedding& rope,
                                        const torch::Tensor& positions, AttentionBackend& backend) {
  auto h = x + self_attn->forward(il, input_layernorm(x), x, rope, positions, backend);  // (B, T, C)
  return h + mlp(post_attention_layernorm(h));
}

LlamaModelImpl::LlamaModelImpl(const ModelConfig& c) {
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.dim));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t il = 0; il < c.n_layers; ++il) layers->push_back(DecoderLayer(c));
  norm = register_module("norm", RMSNorm(c.dim, c.norm_eps));
}

torch::Tensor LlamaModelImpl::forward(const torch::Tensor& tokens, const RotaryEmbedding& rope,
                                      const torch::Tensor& positions, AttentionBackend& backend) {
  auto x = embed_tokens(tokens);  // (B, T, C)
  for (size_t il = 0; il < layers->size(); ++il)
    x = layers[il]->as<DecoderLayer>()->forward(int64_t(il), x, rope, positions, backend);
  return norm(x);
}

LlamaForCausalLMImpl::LlamaForCausalLMImpl(const ModelConfig& c) : config(c), rope(c) {
  c.validate("model config");
  gates.mode = c.spkv.enabled ? c.spkv.mode : GateMode::dense;
  gates.tau = c.spkv.tau;
  model = register_module("model", LlamaModel(c));
  if (!c.tied_embeddings)
    lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(c.dim, c.vocab_size).bias(false)));
}

torch::Tensor LlamaForCausalLMImpl::forward(const torch::Tensor& tokens, const torch::Tensor& segments,
                                            const ShutGates& shut) {
  if (tokens.dim() != 2) throw InputError("tokens must be (B, T), got " + shape_str(tokens.sizes()));
  if (segments.defined() && segments.sizes() != tokens.sizes())
    throw InputError("segments must have the shape of tokens " + shape_str(tokens.sizes()) + ", got " +
                     shape_str(segments.sizes()));
  auto mask = make_attention_mask(config, tokens.size(1), segments, tokens.device());
  last_evictable = mask.evictable;
  if (shut.defined()) {
    if (shut.keys.sizes() != tokens.sizes())
      throw InputError("shut gates: keys must be (B, T) " + shape_str(tokens.sizes()) + ", got " +
                       shape_str(shut.keys.sizes()));
    for (const auto& h : {shut.heads, shut.other_heads})
      if (h.defined() && (h.dim() != 2 || h.size(0) != config.n_layers || h.size(1) != config.n_kv_heads))
        throw InputError("shut gates: heads must be (L, Hkv) [" + std::to_string(config.n_layers) + ", " +
                         std::to_string(config.n_kv_heads) + "], got " + shape_str(h.sizes()));
    if (!config.spkv.enabled && shut.window < 1)
      throw InputError("shut gates: a model without SP-KV needs a window of at least 1, got " +
                       std::to_string(shut.window));
  }
  MaskedAttention backend(config, mask, gates, is_training(), layout, shut);
  return forward_with(tokens, mask.positions, backend);
}

torch::Tensor LlamaForCausalLMImpl::forward_with(const torch::Tensor& tokens, const torch::Tensor& positions,
                                                 AttentionBackend& backend) {
  if (rope.cos.device() != tokens.device()) {  // the RoPE tables are not module buffers: they follow the tokens
    rope.cos = rope.cos.to(tokens.device());
    rope.sin = rope.sin.to(tokens.device());
  }
  auto h = model->forward(tokens, rope, positions, backend);                        // (B, T, C)
  return lm_head ? lm_head(h) : torch::matmul(h, model->embed_tokens->weight.t());  // (B, T, V)
}

void LlamaForCausalLMImpl::load(const Checkpoint& ck, bool init_missing_predictor) {
  check_tensors(ck, config, init_missing_predictor);
  torch::NoGradGuard no_grad;
  for (auto& item : named_parameters(/*recurse=*/true)) {
    auto it = ck.tensors.find(item.key());
    if (it != ck.tensors.end()) item.value().set_data(it->second);  // absent: a new predictor (checked above)
  }
}

std::map<std::string, torch::Tensor> LlamaForCausalLMImpl::named_tensors() {
  std::map<std::string, torch::Tensor> out;
  for (auto& item : named_parameters(true)) out[item.key()] = item.value();
  return out;
}

torch::Tensor LlamaForCausalLMImpl::gate_counts(const torch::Tensor& keys) const {
  if (!config.spkv.enabled || !last_evictable.defined()) return {};
  const auto counted = keys.defined() ? keys.to(last_evictable.device()) : last_evictable;
  std::vector<torch::Tensor> per_layer;
  for (auto& layer : *model->layers)
    per_layer.push_back(count_kept(layer->as<DecoderLayer>()->self_attn->last_utility, counted, gates.tau));
  return torch::stack(per_layer);  // (L, Hkv, 2)
}

std::vector<torch::Tensor> LlamaForCausalLMImpl::predictor_parameters() {
  std::vector<torch::Tensor> out;
  for (auto& item : named_parameters(true))
    if (item.key().find(".utility.") != std::string::npos) out.push_back(item.value());
  return out;
}

int64_t LlamaForCausalLMImpl::parameter_count() {
  int64_t n = 0;
  for (auto& p : parameters()) n += p.numel();
  return n;
}

torch::Device parse_device(const std::string& name) {
  const bool cuda = name == "cuda" || (name.rfind("cuda:", 0) == 0 && name.size() > 5 &&
                                       name.find_first_not_of("0123456789", 5) == std::string::npos);
  if (name != "cpu" && !cuda) throw ConfigError("--device " + name + ": expected cpu, cuda or cuda:N");
  if (cuda && !torch::cuda::is_available())
    throw ConfigError("--device " + name + ": this spkv was built with a LibTorch without CUDA, or no GPU is visible");
  const torch::Device d(name);
  if (cuda && d.has_index() && d.index() >= int64_t(torch::cuda::device_count()))
    throw ConfigError("--device " + name + ": this machine has " + std::to_string(torch::cuda::device_count()) + " GPUs");
  return d;
}

LlamaForCausalLM load_model(const std::string& path) {
  Checkpoint ck = load_checkpoint(path);
  LlamaForCausalLM m(ck.config);
  m->load(ck);
  m->eval();
  return m;
}

}  // namespace spkv
