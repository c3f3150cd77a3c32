// A Llama-family decoder (Llama 1/2/3, Qwen2, Mistral, llama2.c) as LibTorch modules. Parameter names are
// Hugging Face's, so named_parameters() is the checkpoint's table of contents. One file per architecture
// family; the KV cache and SP-KV gating are not here: Attention::attend is the seam where they plug in.
#pragma once
#include <torch/torch.h>

#include "core/checkpoint.h"
#include "core/config.h"

namespace spkv {

// RoPE tables for one config: cos/sin (T_max, D/2), float32, computed in float64.
struct RotaryEmbedding {
  explicit RotaryEmbedding(const ModelConfig& c);
  // x: (B, n, T, D), positions: (T) int64 -> rotated x, same shape.
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
  // x: the normalized attention input (B, T, C); positions: (T); bias: (T, T) from causal_bias -> (B, T, C)
  torch::Tensor forward(const torch::Tensor& x, const RotaryEmbedding& rope, const torch::Tensor& positions,
                        const torch::Tensor& bias);
  // The seam. q: (B, H, T, D), k/v: (B, Hkv, S, D), bias: (T, S) -> (B, H, T, D). One softmax over the
  // keys that bias leaves visible; each KV head serves G = H / Hkv query heads.
  torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& bias) const;

  int64_t n_heads, n_kv_heads, head_dim;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
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
  torch::Tensor forward(const torch::Tensor& x, const RotaryEmbedding& rope, const torch::Tensor& positions,
                        const torch::Tensor& bias);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

struct LlamaModelImpl : torch::nn::Module {  // HF "model.": embeddings, layers, final norm
  explicit LlamaModelImpl(const ModelConfig& c);
  // The attention bias is built here once per call and shared by every layer.
  torch::Tensor forward(const torch::Tensor& tokens, const RotaryEmbedding& rope, const torch::Tensor& positions);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers;
  RMSNorm norm{nullptr};
  int64_t sliding_window;
};
TORCH_MODULE(LlamaModel);

struct LlamaForCausalLMImpl : torch::nn::Module {
  explicit LlamaForCausalLMImpl(const ModelConfig& c);
  // tokens: (B, T) int64 at positions 0..T-1 -> logits (B, T, V)
  torch::Tensor forward(const torch::Tensor& tokens);
  // Copies a checkpoint's tensors into the parameters (zero-copy for mapped float32). Throws
  // CheckpointError for a missing, unexpected or wrongly shaped tensor, naming the file and the config.
  void load(const Checkpoint& ck);
  std::map<std::string, torch::Tensor> named_tensors();  // for save_hf_checkpoint
  int64_t parameter_count();

  ModelConfig config;
  RotaryEmbedding rope;
  LlamaModel model{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tied to model.embed_tokens
};
TORCH_MODULE(LlamaForCausalLM);

// load_checkpoint + construct + load, ready for inference (eval mode, no grad needed).
LlamaForCausalLM load_model(const std::string& path);

}  // namespace spkv
