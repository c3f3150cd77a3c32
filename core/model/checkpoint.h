// Loading Llama-family checkpoints into named float32 tensors, and writing the project's own checkpoints
// as Hugging Face-style directories (config.json + model.safetensors). Names are Hugging Face's
// (`model.layers.{il}.self_attn.q_proj.weight`), whatever the source format. Every tensor is checked against
// the shapes its config implies before any model is built, so a wrong config fails without allocating.
#pragma once
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

#include "core/model/checkpoint_index.h"
#include "core/model/config.h"

namespace spkv {

struct Checkpoint {
  ModelConfig config;
  std::map<std::string, torch::Tensor> tensors;  // HF names -> float32, possibly memory-mapped (COW)
  std::map<std::string, std::string> origin;     // HF name -> file it came from (for error messages)
  std::string path;                              // what the user named
  std::string config_file;                       // config.json, or the llama2.c .bin for its header
  std::string format;                            // "llama2c" | "hf"
};

// `path` is a llama2.c .bin file, a Hugging Face directory (config.json + model.safetensors or a sharded
// model.safetensors.index.json), or a single .safetensors file with config.json beside it.
// Throws CheckpointError / ConfigError naming the file and the problem.
Checkpoint load_checkpoint(const std::string& path);

// check_shapes (checkpoint_index.h) on ck.tensors. init_missing_predictor: a checkpoint without utility
// predictors (a dense model being adapted) passes. load_checkpoint checks against
// the checkpoint's own config (a missing predictor passes); LlamaForCausalLM::load checks against the model's.
void check_tensors(const Checkpoint& ck, const ModelConfig& c, bool init_missing_predictor = false);

// Writes `dir`/config.json and `dir`/model.safetensors (float32). Each file is written atomically; the
// directory is created if needed.
void save_hf_checkpoint(const std::string& dir, const ModelConfig& config,
                        const std::map<std::string, torch::Tensor>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// Hugging Face's convert_llama_weights_to_hf permutation of q/k projection rows: it turns weights for
// interleaved-pair RoPE into weights for rotate-half RoPE. w: (n_heads * D, C).
torch::Tensor permute_for_rotate_half(const torch::Tensor& w, int64_t n_heads);

}  // namespace spkv
