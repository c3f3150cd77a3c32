// Fuzz target: a model.safetensors file (header, offsets, dtypes) loaded as a checkpoint beside a fixed,
// valid config.json, so the shape checks against the config run too (core/model/safetensors.cpp, checkpoint.cpp).
#include "core/model/checkpoint.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = spkv::fuzz::scratch() + "/st";
  std::filesystem::create_directories(dir);
  spkv::fuzz::write_tiny_config(dir);
  spkv::fuzz::as_file(data, size, "st/model.safetensors");
  return spkv::fuzz::expect_clean([&] { spkv::load_checkpoint(dir); });
}
