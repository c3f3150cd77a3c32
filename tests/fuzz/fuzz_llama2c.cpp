// Fuzz target: a llama2.c .bin checkpoint (its 28-byte header and the sizes it implies; core/model/checkpoint.cpp).
#include "core/model/checkpoint.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = spkv::fuzz::as_file(data, size, "model.bin");
  return spkv::fuzz::expect_clean([&] { spkv::load_checkpoint(path); });
}
