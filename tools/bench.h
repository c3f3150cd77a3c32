// `spkv bench decode` (decode speed and KV memory, dense vs SP-KV, by context) and `spkv bench run` (the
// cost of gate logging in `spkv run`). Declared here so that spkv.cpp only parses flags.
#pragma once
#include <string>
#include <vector>

namespace spkv {

struct BenchOptions {
  std::string model, tokenizer, json;
  std::vector<std::string> inputs;                 // corpus: prompts for decode, documents for run
  std::vector<int64_t> contexts{1024, 4096, 16384};  // decode: prompt lengths
  int64_t steps = 64;                              // decode: tokens decoded (timed) after each prompt
  int64_t chunk = 256;                             // prefill chunk
  int64_t max_docs = 40;                           // run: documents
  std::string device = "cpu";                      // decode: cpu, cuda or cuda:N
};

void cmd_bench_decode(const BenchOptions& o);
void cmd_bench_run(const BenchOptions& o);

}  // namespace spkv
