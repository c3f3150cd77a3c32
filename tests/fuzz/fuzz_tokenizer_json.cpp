// Fuzz target: a Hugging Face tokenizer.json (byte-level BPE; core/text/hf_tokenizer.cpp), then an encode and
// decode of a fixed text with whatever loaded.
#include "core/text/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = spkv::fuzz::as_file(data, size, "tokenizer.json");
  return spkv::fuzz::expect_clean([&] {
    auto tok = spkv::load_hf_tokenizer(path);
    tok->decode(tok->encode(spkv::fuzz::kSampleText, true, true));
  });
}
