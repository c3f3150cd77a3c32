// Fuzz target: a llama2.c tokenizer.bin (core/text/tokenizer.cpp), then an encode and decode of a fixed text.
#include "core/text/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = spkv::fuzz::as_file(data, size, "tokenizer.bin");
  return spkv::fuzz::expect_clean([&] {
    auto tok = spkv::load_llama2c_tokenizer(path);
    tok->decode(tok->encode(spkv::fuzz::kSampleText, true, false));
  });
}
