// ModelConfig: the architecture hyper-parameters of a Llama-family decoder, and the parsers that fill it
// from a Hugging Face config.json or a llama2.c header, plus the SP-KV settings stored under the `spkv` key
// of config.json. Torch-free. Not the weights.
#pragma once
#include <algorithm>
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

// How the utility gate acts on out-of-window keys (see docs/design.md, "SP-KV attention").
//   dense     every causal key is visible (the predictor still runs, so densities can be measured)
//   soft      bias log(u + 1e-8)
//   hard      keep if u >= tau (inference; -inf otherwise)
//   annealed  bias log(u~ + 1e-8), u~ = (1 - a) u + a 1[u >= tau], a in [0, 1] set by the trainer
//   ste       z ~ Bernoulli(u) while training (hard forward, gradient of log u backward); hard in eval
enum class GateMode { dense, soft, hard, annealed, ste };
const char* to_string(GateMode m);
GateMode parse_gate_mode(const std::string& s, const std::string& where);  // throws ConfigError

// The `spkv` block of config.json. Absent block = a plain dense model without a utility predictor.
struct SpkvConfig {
  bool enabled = false;
  int64_t window = 128;             // W: keys with 0 <= t - s < W are always visible
  double tau = 0.5;                 // hard threshold, in (0, 1)
  int64_t keep_first = 0;           // keys at document positions < keep_first are always visible (A/B tests)
  int64_t predictor_layers = 2;     // 2: Linear-SiLU-Linear; 1: a single Linear (the less selective variant)
  int64_t predictor_hidden = 0;     // hidden width of the 2-layer predictor; 0 = dim / 4
  std::string tap = "attn_norm";    // predictor input: "attn_norm" (normalized attention input) | "residual"
  double init_bias = 5.0;           // output bias at initialization: sigmoid(5) = 0.993, every gate open
  GateMode mode = GateMode::hard;   // the mode a loaded model runs in

  int64_t hidden(int64_t dim) const { return predictor_hidden > 0 ? predictor_hidden : std::max<int64_t>(1, dim / 4); }
  // Throws ConfigError naming `where` and the field.
  void validate(const std::string& where) const;
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
  SpkvConfig spkv;

  // Throws ConfigError naming `where` and the field if the numbers are inconsistent.
  void validate(const std::string& where) const;
  // A config.json in Hugging Face form (plus `rope_style` when not rotate_half).
  std::string to_hf_json() const;
};

// Parses Hugging Face config.json text. `file` names the source in error messages.
ModelConfig parse_hf_config(const std::string& json_text, const std::string& file);
ModelConfig load_hf_config(const std::string& path);

}  // namespace spkv
