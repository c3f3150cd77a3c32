// `spkv compare`: eviction baselines against full attention and SP-KV on the same documents, at a matched KV
// budget (core/infer/cache_policy.h), in one table: NLL, ΔNLL against full attention and against SP-KV with
// paired bootstrap intervals, the KV ratio, and exact match on task files. `spkv eval --policy` and `spkv
// tasks eval --policy` are this with one policy. Not the policies themselves (cache_policy.h, kv_cache.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace spkv {

struct CompareOptions {
  std::string model, tokenizer;  // the model the baselines and full attention run on
  std::string spkv_model;        // the SP-KV model: its row, and the matched budget ("" = model, if gated)
  double tau = 0;                // the SP-KV model's threshold (0 = its own)
  std::vector<std::string> policies;  // cache_policy.h's names
  std::vector<std::string> budgets = {"matched"};  // matched, matched-uniform, slots:N, density:RHO
  int64_t window = 0;            // keys a policy always keeps (0 = the SP-KV model's window)
  std::string input;             // text (file or folder) or a task file (.jsonl)
  std::string separator = "<|endoftext|>";
  int64_t skip_docs = 0, max_docs = 0;
  std::string json, markdown;
};
void cmd_compare(const CompareOptions& o);

}  // namespace spkv
