// What a checkpoint holds, read without LibTorch: its config, and every tensor's name, dtype, shape and
// bytes in the memory-mapped files, checked against the shapes the config implies. checkpoint.h turns an
// index into float32 tensors; `spkv info` needs no more than the index (so it starts without LibTorch).
// Not the conversion of dtypes, not the model.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/model/config.h"
#include "core/model/safetensors.h"

namespace spkv {

// One tensor as a file stores it: a view of mapped bytes, and the mapping that keeps them alive.
struct StoredTensor {
  TensorView view;  // view.dtype is F32, F16, BF16 or F64 (checked)
  std::shared_ptr<MappedFile> mapping;
  std::string file;
};

struct CheckpointIndex {
  ModelConfig config;
  std::map<std::string, StoredTensor> tensors;  // Hugging Face names
  std::string path;                             // what the user named
  std::string config_file;                      // config.json, or the llama2.c .bin for its header
  std::string format;                           // "llama2c" | "hf"
  int64_t parameter_count() const;              // of the model the config describes
};

// `path` is a llama2.c .bin file, a Hugging Face directory (config.json + model.safetensors or a sharded
// model.safetensors.index.json), or a single .safetensors file with config.json beside it. Every tensor is
// checked against the config's shapes (check_shapes; init_missing_predictor as there). Throws
// CheckpointError / ConfigError naming the file and the problem.
CheckpointIndex index_checkpoint(const std::string& path, bool init_missing_predictor = true);

// Every parameter of the model a config describes, in the model's order: Hugging Face name and shape,
// computed without allocating.
std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes(const ModelConfig& c);

// A checkpoint's tensors as the check sees them: name -> (shape, the file it came from).
using TensorShapes = std::map<std::string, std::pair<std::vector<int64_t>, std::string>>;

// Checks tensors against parameter_shapes(c): a missing, unexpected or wrongly shaped tensor throws
// CheckpointError naming its file and the config fields that imply the shape. path and config_file name the
// checkpoint in messages. init_missing_predictor: a checkpoint without utility predictors (a dense model
// being adapted) passes.
void check_shapes(const TensorShapes& tensors, const ModelConfig& c, const std::string& path,
                  const std::string& config_file, bool init_missing_predictor);

}  // namespace spkv
