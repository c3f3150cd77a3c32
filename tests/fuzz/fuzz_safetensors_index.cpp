// Fuzz target: model.safetensors.index.json of a sharded checkpoint whose one shard (model-1.safetensors)
// and config.json are valid (core/model/checkpoint.cpp).
#include <torch/torch.h>

#include "core/model/checkpoint.h"
#include "tests/fuzz/fuzz_util.h"

namespace {
void write_shard(const std::string& dir) {  // every tensor of the tiny config, in one shard
  std::map<std::string, torch::Tensor> t;
  float v = 0.01f;
  for (auto& [name, shape] : spkv::parameter_shapes(spkv::fuzz::tiny_config())) t[name] = torch::full(shape, v += 0.01f);
  spkv::save_hf_checkpoint(dir, spkv::fuzz::tiny_config(), t);
  std::filesystem::rename(dir + "/model.safetensors", dir + "/model-1.safetensors");
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = spkv::fuzz::scratch() + "/idx";
  if (!std::filesystem::exists(dir + "/model-1.safetensors")) write_shard(dir);
  spkv::fuzz::as_file(data, size, "idx/model.safetensors.index.json");
  return spkv::fuzz::expect_clean([&] { spkv::load_checkpoint(dir); });
}
