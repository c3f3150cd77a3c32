// A Llama-family decoder (Llama 1/2/3, Qwen2, Mistral, llama2.c) as LibTorch modules. Parameter names are
// Hugging Face's, so named_parameters() is the checkpoint's table of contents. One file per architecture
// family. The decoder layers are written once; their attention step takes a backend (AttentionBackend):
// the full-sequence mask here (with SP-KV's gate bias, gating.h), or the engine's KV cache, which is not here.
#pragma once
#include <torch/torch.h>

#include "core/model/checkpoint.h"
#include "core/model/config.h"
#include "core/model/gating.h"
#include "core/model/predictor.h"

namespace spkv {

// RoPE tables for one config: cos/sin (T_max, D/2), float32, computed in float64.
struct RotaryEmbedding {
  explicit RotaryEmbedding(const ModelConfig& c);
  // x: (B, n, T, D), positions: (T) or (B|1, T) int64 -> rotated x, same shape.
  torch::Tensor apply(const torch::Tensor& x, const torch::Tensor& positions) const;
  torch::Tensor cos, sin;  // (T_max, D/2)
  RopeStyle style;
};

struct RMSNormImpl : torch::nn::Module {
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // (..., C) -> (..., C)
  torch::Tensor weight;                           // (C)
  double eps;
};
TORCH_MODULE(RMSNorm);

// Additive attention bias for T queries at positions q_pos over S keys at positions k_pos:
// 0 where the key is visible (causal, and within `window` when window > 0), -inf elsewhere. (T, S)
torch::Tensor causal_bias(const torch::Tensor& q_pos, const torch::Tensor& k_pos, int64_t window = 0);

// The attention step of the one decoder-layer loop. The layers compute q, k, v and the gate scores; a
// backend decides which keys each query sees and attends over them:
//   MaskedAttention    (below) the full-sequence mask: training and masked evaluation, every gate mode;
//   RecordingAttention (attention_stats.h) the same, also keeping the attention mass each key received;
//   the engine's cache (engine.cpp) the compacted per-head CPU cache, or the GPU device cache.
struct AttentionBackend {
  virtual ~AttentionBackend() = default;
  // Layer il. q: (B, H, T, D) and k: (B, Hkv, T, D) after RoPE, v: (B, Hkv, T, D); u: (B, T, Hkv) gate
  // scores, undefined without SP-KV -> (B, H, T, D).
  virtual torch::Tensor attend(int64_t il, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& u) = 0;
};

// Attention probabilities over keys that `bias` leaves visible. q: (B, H, T, D), k: (B, Hkv, S, D), bias:
// broadcastable to (B, Hkv, G, T, S) -> p (B, Hkv, G, T, S); each KV head serves G = H / Hkv query heads.
torch::Tensor attention_probs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& bias);
// p: (B, Hkv, G, T, S), v: (B, Hkv, S, D) -> (B, H, T, D).
torch::Tensor apply_probs(const torch::Tensor& p, const torch::Tensor& v);

// A hybrid local-global layout imposed on the heads instead of the gates (`spkv eval --layout`, the engine's
// EngineOptions::layout): (L * Hkv) flags, 1 = global (sees every key), 0 = local (sees only the last
// `window` keys). Empty = none.
struct HeadLayout {
  std::vector<uint8_t> global;
  int64_t window = 0;
  bool empty() const { return global.empty(); }
};
// Throws ConfigError, naming `where`, unless the layout fits the model: L * Hkv flags, window >= 1, and no
// sliding window of the model's own.
void check_layout(const ModelConfig& c, const HeadLayout& l, const std::string& where);

// Gates shut on some keys of some heads (training's `local_on_text` and `local_on_tasks`, docs/training.md):
// `heads` score the flagged keys u = 0 and `other_heads` the keys not flagged, so those keys are dropped once
// they leave the window and pass no gradient to the predictor; every other (head, key) keeps its gate.
// A model without SP-KV has no gates: there the shut keys are masked beyond `window` (t - s >= window).
// Undefined heads or keys = none.
struct ShutGates {
  torch::Tensor heads;        // (L, Hkv) bool: shut on the flagged keys
  torch::Tensor keys;         // (B, T) bool
  torch::Tensor other_heads;  // (L, Hkv) bool: shut on the keys not flagged, or undefined
  int64_t window = 0;         // a model without SP-KV only: the shut keys' window, >= 1
  bool has_heads() const { return heads.defined() || other_heads.defined(); }
  bool defined() const { return keys.defined() && has_heads(); }
};

// The mask of one full-sequence call (built once, shared by every layer) with the gates' bias on far keys,
// or a layout's fixed decisions instead.
class MaskedAttention : public AttentionBackend {
 public:
  // training: Bernoulli sampling in ste mode. `shut` applies while the gates do, or in a model without SP-KV
  // beyond shut.window; not under a layout.
  MaskedAttention(const ModelConfig& c, const AttentionMask& mask, const GateSettings& gates, bool training,
                  const HeadLayout& layout = {}, const ShutGates& shut = {});
  torch::Tensor attend(int64_t il, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& u) override;

 protected:
  // The additive bias of layer il's keys: the mask, with the gates' bias on far keys, or -inf on the keys
  // beyond a local head's window. (B|1, Hkv|1, 1, T, S)
  torch::Tensor bias(int64_t il, const torch::Tensor& u, c10::ScalarType dtype) const;
  const AttentionMask& mask_;
  GateSettings gates_;
  bool training_;
  ShutGates shut_;
  // The layout's (L, Hkv) bool global flags; (T, S) bool, true where t - s >= the layout's window or, in a
  // model without SP-KV, the shut keys' window.
  torch::Tensor layout_, beyond_;
  torch::Tensor shut_off(int64_t il) const;  // (B, S, Hkv) bool: the (key, head) pairs shut in layer il
  int64_t spkv_window_, sliding_window_;  // W of the gates (0 without SP-KV); the model's sliding window (0: none)
};

struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const ModelConfig& c);
  // x: the normalized attention input (B, T, C); residual: the layer input before its norm (B, T, C), read
  // only by a predictor tapped there; positions: (T) or (B|1, T) -> (B, T, C). The gate scores are kept
  // in last_utility; the backend attends.
  torch::Tensor forward(int64_t il, const torch::Tensor& x, const torch::Tensor& residual, const RotaryEmbedding& rope,
                        const torch::Tensor& positions, AttentionBackend& backend);

  int64_t n_heads, n_kv_heads, head_dim;
  bool tap_residual = false;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  UtilityPredictor utility{nullptr};  // null without SP-KV
  torch::Tensor last_utility;         // (B, T, Hkv) scores of the last forward call (with autograd graph)
  torch::Tensor last_tap;             // (B, T, C) the predictor's input of the last forward call, while training
};
TORCH_MODULE(Attention);

struct MLPImpl : torch::nn::Module {  // SwiGLU: down(silu(gate(x)) * up(x))
  explicit MLPImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x);  // (B, T, C) -> (B, T, C)
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

struct DecoderLayerImpl : torch::nn::Module {
  explicit DecoderLayerImpl(const ModelConfig& c);
  // Layer il: x (B, T, C) -> (B, T, C).
  torch::Tensor forward(int64_t il, const torch::Tensor& x, const RotaryEmbedding& rope, const torch::Tensor& positions,
                        AttentionBackend& backend);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

struct LlamaModelImpl : torch::nn::Module {  // HF "model.": embeddings, layers, final norm
  explicit LlamaModelImpl(const ModelConfig& c);
  // The layer loop, the only one: tokens (B, T) at positions (T) or (B|1, T) -> hidden states (B, T, C).
  torch::Tensor forward(const torch::Tensor& tokens, const RotaryEmbedding& rope, const torch::Tensor& positions,
                        AttentionBackend& backend);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers;
  RMSNorm norm{nullptr};
};
TORCH_MODULE(LlamaModel);

struct LlamaForCausalLMImpl : torch::nn::Module {
  explicit LlamaForCausalLMImpl(const ModelConfig& c);
  // tokens: (B, T) int64; segments: (B, T) int64 document index per token (packed rows; positions restart
  // and attention stops at each document start), or undefined for one document per row; shut: gates shut on
  // some keys (its keys (B, T)) -> logits (B, T, V). The attention mask is built here once per call and
  // shared by every layer.
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& segments = {}, const ShutGates& shut = {});
  // The same layers with any attention backend (the engine's cache, attention statistics): tokens (B, T) at
  // positions (T) or (B|1, T) -> logits (B, T, V). Does not set last_evictable.
  torch::Tensor forward_with(const torch::Tensor& tokens, const torch::Tensor& positions, AttentionBackend& backend);
  // Copies a checkpoint's tensors into the parameters (zero-copy for mapped float32). Throws
  // CheckpointError for a missing, unexpected or wrongly shaped tensor, naming the file and the config.
  // init_missing_predictor: a checkpoint without utility predictors (a dense model being adapted) keeps
  // the freshly initialized, fully open predictors instead of failing.
  void load(const Checkpoint& ck, bool init_missing_predictor = false);
  // Hard-gate counts of the last forward call at gates.tau: (L, Hkv, 2) int64 [kept, counted], over `keys`
  // ((B|1, T) bool, which keys to count; default: every out-of-window key). Undefined without SP-KV.
  torch::Tensor gate_counts(const torch::Tensor& keys = {}) const;
  std::vector<torch::Tensor> predictor_parameters();  // empty without SP-KV
  std::map<std::string, torch::Tensor> named_tensors();  // for save_hf_checkpoint
  int64_t parameter_count();

  ModelConfig config;
  GateSettings gates;  // from config.spkv; the trainer and `--tau` change it at run time
  HeadLayout layout;   // imposed on the masked forward instead of the gates (`--layout`); empty = none
  RotaryEmbedding rope;
  torch::Tensor last_evictable;  // (B|1, T) bool, from the last forward call
  LlamaModel model{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tied to model.embed_tokens
};
TORCH_MODULE(LlamaForCausalLM);

// load_checkpoint + construct + load, ready for inference (eval mode, no grad needed).
LlamaForCausalLM load_model(const std::string& path);

// "cpu", "cuda" or "cuda:N" (a --device flag). Throws ConfigError for another name, or for a CUDA device that
// this build's LibTorch or this machine cannot use.
torch::Device parse_device(const std::string& name);

}  // namespace spkv
