// Fuzz target: Hugging Face config.json (core/model/config.cpp).
#include "core/model/config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return spkv::fuzz::expect_clean([&] { spkv::parse_hf_config(std::string(reinterpret_cast<const char*>(data), size), "config.json"); });
}
