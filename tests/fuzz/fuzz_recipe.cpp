// Fuzz target: a training recipe (core/train/trainer.cpp load_recipe; paths in it are not opened until training).
#include "core/train/trainer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = spkv::fuzz::as_file(data, size, "recipe.json");
  return spkv::fuzz::expect_clean([&] { spkv::load_recipe(path); });
}
