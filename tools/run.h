// `spkv run`: a model over a corpus through the engine, every gate decision into an HDF5 gate log
// (core/gatelog/writer.h). Declared here so that cmd_logs.cpp only parses its flags.
#pragma once
#include <atomic>
#include <string>
#include <vector>

#include "core/dist/process_group.h"
#include "core/gatelog/writer.h"
#include "core/infer/engine.h"
#include "core/infer/kv_cache.h"
#include "core/text/documents.h"
#include "core/text/tokenizer.h"

namespace spkv {

struct RunOptions {
  std::string model, tokenizer, out;
  std::vector<std::string> inputs;
  std::string separator;  // splits .txt files into documents ("" = one document per file)
  double tau = 0;         // 0: the model's
  int64_t window = 0;     // 0: the model's
  int64_t chunk = 128;    // prefill chunk
  int64_t max_docs = 0;   // 0: all
  bool dense = false;     // full attention; the gates' decisions are only logged
  // An eviction baseline's cache instead of the gates (core/infer/cache_policy.h): a policy log (schema 2)
  // with the position at which each key left. budget: slots:N, density:RHO, matched or matched-uniform
  // (the model's own SP-KV run of each document, token by token).
  std::string policy, budget = "matched";
  bool attention_stats = false;  // with dense: log the attention mass each key received (/attention)
  int64_t last_queries = 32;     // ... in total and from this many final queries (SnapKV's window)
  bool resume = false;
  double flush_seconds = 5;  // how often the partial log is flushed (what a kill can lose)
  std::string device = "cpu";  // cpu, cuda or cuda:N (a build with a CUDA LibTorch)
  bool kv_bf16 = false;        // with cuda: the KV cache in bf16
  // Sharding (docs/distributed.md): a launch of N processes (torchrun, Slurm, or these flags) runs one shard
  // each and rank 0 merges them into `out`; --shard I/N runs shard I alone (a job array; `spkv merge` after).
  dist::LaunchFlags launch;
  std::string shard;           // "I/N"
  double dist_timeout = 300;   // seconds to form the group
  bool keep_shards = false;    // keep the shard logs after the merge
  bool status = false;         // print the progress of the sharded run writing `out`, and return
  std::string tool_version, git_commit;
};

// The log record of one scored piece. Eligible keys and cache entries follow from the decisions by the rule of
// core/gatelog/rule.h; a dense cache holds t + 1 entries per head after token t. With `baseline` (the cache a
// policy run scored the piece through): its evictions, z = u = 1 for the keys it never evicted, and
// entries from the evictions; W is then the baseline's window.
LoggedDocument log_record(const TokenPiece& p, const ScoredDocument& s, const Tokenizer& tok, const ModelConfig& c,
                          bool gated, const BudgetedKvCache* baseline = nullptr, int64_t W = 0);

// The current UTC time, ISO 8601 (the log's `created`, a layout's provenance).
std::string now_iso8601();

// Throws spkv errors for bad inputs; returns early (file left incomplete, resumable) once `stop` is set.
// Returns false when `stop` ended the run before its last document (the partial log is left to --resume).
bool cmd_run(const RunOptions& o, const std::atomic<bool>& stop);

}  // namespace spkv
