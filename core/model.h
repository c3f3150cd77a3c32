// A Llama-family decoder (Llama 1/2/3, Qwen2, Mistral, llama2.c) as LibTorch modules. Parameter names are
// Hugging Face's, so named_parameters() is the checkpoint's table of contents. One file per architecture
// family. SP-KV gating (gating.h) enters through the attention bias; the KV cache is not here:
// Attention::attend is the seam where it plugs in.
#pragma once
#include <torch/torch.h>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/gating.h"

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

struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const ModelConfig& c);
  // x: the normalized attention input (B, T, C); residual: the layer input before its norm (B, T, C), read
  // only by a predictor tapped there -> (B, T, C). With SP-KV, out-of-window keys get gate_bias (one gate
  // per KV head), and the scores are kept in `utility`.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& residual, const RotaryEmbedding& rope,
                        const AttentionMask& mask, const GateSettings& gates);
  // The seam. q: (B, H, T, D), k/v: (B, Hkv, S, D), bias: broadcastable to (B, Hkv, G, T, S), e.g. (T, S)
  // -> (B, H, T, D). One softmax over the keys that bias leaves visible; each KV head serves G = H / Hkv
  // query heads.
  torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& bias) const;

  int64_t n_heads, n_kv_heads, head_dim;
  bool tap_residual = false;
  int64_t spkv_window = 0, sliding_window = 0;  // W of the gates; the model's sliding window (0: none)
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  UtilityPredictor utility{nullptr};  // null without SP-KV
  torch::Tensor last_utility;         // (B, T, Hkv) scores of the last forward call (with autograd graph)
  // Attention statistics (spkv run --attention-stats): when record_tail >= 0, attend() keeps the attention
  // mass each key received, averaged over the G query heads of its KV head and summed over every query
  // (received), over the last record_tail queries (received_tail), and over the queries that see the key
  // from outside a window of record_window (t - s >= record_window: received_far). All (B, S, Hkv), float32.
  int64_t record_tail = -1, record_window = 0;
  mutable torch::Tensor received, received_tail, received_far;
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
  torch::Tensor forward(const torch::Tensor& x, const RotaryEmbedding& rope, const AttentionMask& mask,
                        const GateSettings& gates);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

struct LlamaModelImpl : torch::nn::Module {  // HF "model.": embeddings, layers, final norm
  explicit LlamaModelImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& tokens, const RotaryEmbedding& rope, const AttentionMask& mask,
                        const GateSettings& gates);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers;
  RMSNorm norm{nullptr};
};
TORCH_MODULE(LlamaModel);

struct LlamaForCausalLMImpl : torch::nn::Module {
  explicit LlamaForCausalLMImpl(const ModelConfig& c);
  // tokens: (B, T) int64; segments: (B, T) int64 document index per token (packed rows; positions restart
  // and attention stops at each document start), or undefined for one document per row -> logits (B, T, V).
  // The attention mask is built here once per call and shared by every layer.
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& segments = {});
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
