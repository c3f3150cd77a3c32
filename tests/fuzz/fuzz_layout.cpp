// Fuzz target: the layout files `spkv layout` reads: its own layout JSON, a Hugging Face config's
// layer_types, and DuoAttention's TSV of head patterns (analysis/layout.cpp). The same bytes go to all three.
#include "analysis/layout.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = spkv::fuzz::as_file(data, size, "layout");
  spkv::fuzz::expect_clean([&] { spkv::analysis::read_layout(path); });
  spkv::fuzz::expect_clean([&] { spkv::analysis::read_hf_layer_types(path); });
  return spkv::fuzz::expect_clean([&] {
    int64_t layers = 0, heads = 0;
    spkv::analysis::read_duo_attention_tsv(path, layers, heads);
  });
}
