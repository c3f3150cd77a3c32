// `spkv bench decode` (decode speed and KV memory, dense vs SP-KV, by context), `spkv bench run` (the
// cost of gate logging in `spkv run`), `spkv bench kernels` (bench_kernels.cpp) and `spkv bench threads`
// (bench_threads.cpp). Declared here so that spkv.cpp only parses flags.
#pragma once
#include <chrono>
#include <string>
#include <vector>

namespace spkv {

// Wall-clock seconds since t0 (steady clock): every benchmark's timer.
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct BenchOptions {
  std::string model, tokenizer, json;
  std::vector<std::string> inputs;                 // corpus: prompts for decode, documents for run
  std::vector<int64_t> contexts{1024, 4096, 16384};  // decode: prompt lengths
  int64_t steps = 64;                              // decode: tokens decoded (timed) after each prompt
  int64_t chunk = 256;                             // prefill chunk
  int64_t max_docs = 40;                           // run: documents
  std::string device = "cpu";                      // decode: cpu, cuda or cuda:N
  bool kv_bf16 = false;                            // decode, with cuda: the KV cache in bf16
};

// `spkv bench kernels`: the CPU attention kernels on random data against the GEMM ceiling and a triad.
struct BenchKernelOptions {
  std::vector<int64_t> contexts{1024, 4096, 16384};
  int64_t heads = 4, kv_heads = 4, head_dim = 32, window = 64;  // the default model's attention
  int64_t chunk = 128;                                           // prefill chunk (the engine's default)
  int64_t layers = 4;                                            // decode: caches read per step
  double density = 0.25;                                         // SP-KV: far keys kept
  std::string json;
};

void cmd_bench_decode(const BenchOptions& o);
// `spkv bench threads` (bench_threads.cpp): every engine path at 1 thread, all cores and the automatic
// policy, quiet and beside a one-core busy loop; median of `reps` interleaved runs.
void cmd_bench_threads(const BenchOptions& o, int reps);
void cmd_bench_kernels(const BenchKernelOptions& o);
void cmd_bench_run(const BenchOptions& o);

}  // namespace spkv
