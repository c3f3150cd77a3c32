// ModelConfig: the architecture hyper-parameters of a Llama-family decoder, and the parsers that fill it
// from a Hugging Face config.json or a llama2.c header. Torch-free. Not the SP-KV settings (a later
// `spkv` block) and not the weights.
#pragma once
#include <cstdint>
#include <string>

namespace spkv {

// How RoPE pairs the dimensions of a head: llama2.c rotates (2i, 2i+1); Hugging Face rotates (i, i+D/2).
enum class RopeStyle { interleaved, rotate_half };
const char* to_string(RopeStyle s);

struct RopeScaling {
  std::string type = "none";  // "none" | "linear" | "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;    // llama3 only
  double high_freq_factor = 4.0;   // llama3 only
  int64_t original_max_position_embeddings = 8192;  // llama3 only
};

struct ModelConfig {
  std::string architecture = "LlamaForCausalLM";  // LlamaForCausalLM | Qwen2ForCausalLM | MistralForCausalLM
  int64_t dim = 0;          // C
  int64_t hidden_dim = 0;   // F
  int64_t n_layers = 0;     // L
  int64_t n_heads = 0;      // H
  int64_t n_kv_heads = 0;   // Hkv
  int64_t head_dim = 0;     // D
  int64_t vocab_size = 0;   // V
  int64_t max_seq_len = 0;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeStyle rope_style = RopeStyle::rotate_half;
  RopeScaling rope_scaling;
  bool tied_embeddings = false;
  bool attention_bias = false;   // q/k/v projections have biases (Qwen2)
  int64_t sliding_window = 0;    // 0 = none (Mistral may set one)
  int64_t bos_id = 1, eos_id = 2;

  // Throws ConfigError naming `where` and the field if the numbers are inconsistent.
  void validate(const std::string& where) const;
  // A config.json in Hugging Face form (plus `rope_style` when not rotate_half).
  std::string to_hf_json() const;
};

// Parses Hugging Face config.json text. `file` names the source in error messages.
ModelConfig parse_hf_config(const std::string& json_text, const std::string& file);
ModelConfig load_hf_config(const std::string& path);

}  // namespace spkv
