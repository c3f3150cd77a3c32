// Shared by the fuzz targets: the input as a file (every parser under test reads files), and the rule that
// a target may reject an input only with spkv's typed exceptions. Anything else escaping (std::exception
// from a library, a crash, a sanitizer report, a hang) is a finding.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/base/errors.h"
#include "core/model/config.h"

namespace spkv::fuzz {

// A folder of this process under /dev/shm (or TMPDIR), made once and removed at exit.
inline const std::string& scratch() {
  struct Dir {
    std::string path;
    Dir() {
      const char* base = std::filesystem::exists("/dev/shm") ? "/dev/shm" : (std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp");
      path = std::string(base) + "/spkv-fuzz-" + std::to_string(getpid());
      std::filesystem::create_directories(path);
    }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Dir dir;
  return dir.path;
}

// Writes the input to scratch()/name and returns the path.
inline std::string as_file(const uint8_t* data, size_t size, const std::string& name) {
  const std::string path = scratch() + "/" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data), std::streamsize(size));
  return path;
}

// Text with spaces, digits, a tab, a newline and multi-byte UTF-8 for the tokenizers.
inline const char* const kSampleText = "Hello w\xc3\xb6rld,  the 12 cats\n\tend \xe7\xb5\x82";

// The config of a tiny model (2 layers, dim 16, vocabulary 40, tied embeddings: the seed checkpoint's), as
// dir/config.json.
inline ModelConfig tiny_config() {
  ModelConfig c;
  c.dim = 16, c.hidden_dim = 24, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 4;
  c.vocab_size = 40, c.max_seq_len = 32, c.tied_embeddings = true;
  return c;
}
inline void write_tiny_config(const std::string& dir) {
  if (!std::filesystem::exists(dir + "/config.json")) std::ofstream(dir + "/config.json") << tiny_config().to_hf_json();
}

// Runs f; spkv::Error is the expected way to refuse an input.
template <class F>
int expect_clean(F&& f) {
  try {
    f();
  } catch (const spkv::Error& e) {
    if (std::getenv("SPKV_FUZZ_VERBOSE")) std::fprintf(stderr, "rejected: %s\n", e.what());
  }
  return 0;
}

}  // namespace spkv::fuzz
