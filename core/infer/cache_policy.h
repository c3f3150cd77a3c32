// Budgeted cache policies: the eviction baselines SP-KV is compared with at a matched KV budget (issue 21).
// A budget says how many K/V rows a head may hold after each token; a policy says which out-of-window row
// goes when a head is over it. Policies are written as a score per stored row, lowest evicted first (ties:
// the earliest position), so that one cache (BudgetedKvCache, kv_cache.h) serves them all:
//   streaming   StreamingLLM: `sinks` first positions, then the most recent (score: position, sinks last)
//   knorm       evict the key with the largest L2 norm (score: -|k|)
//   random      a uniform draw per (layer, head, position) from `seed` (score: the draw)
// The attention-based policies (H2O, TOVA, SnapKV, the oracle) need the attention weights of each query and
// are not here yet. Torch-free. Not the cache's storage (kv_cache.h) nor the engine.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace spkv {

enum class PolicyKind { streaming, knorm, random };
const char* to_string(PolicyKind k);

struct PolicySpec {
  PolicyKind kind = PolicyKind::streaming;
  int64_t sinks = 4;   // streaming: positions < sinks are evicted last
  uint64_t seed = 0;   // random
  // The row's score when it enters the store (leaves the window): lower is evicted first.
  double entry_score(int64_t il, int64_t hk, int64_t pos, const float* k, int64_t D) const;
};
// "streaming", "streaming:SINKS", "knorm", "random", "random:SEED". Throws ConfigError naming the text.
PolicySpec parse_policy(const std::string& text);

// How many K/V rows head (il, hk) may hold once n tokens have been appended. The window's rows are always
// kept: a budget below min(n, W) is raised to it.
struct CacheBudget {
  enum class Kind { slots, density, matched };
  Kind kind = Kind::slots;
  int64_t slots = 0;    // slots: at most this many rows per head
  double density = 0;   // density rho: W + floor(rho * (n - W)) rows once n > W
  // matched: the rows each head of an SP-KV run held after each token, (T, L, Hkv); n <= T
  std::vector<int32_t> matched;
  int64_t n_layers = 0, n_kv_heads = 0;
  bool uniform = false;  // matched: every head gets an equal share of the run's total (the remainder to the first heads)
  int64_t rows(int64_t n, int64_t il, int64_t hk, int64_t W) const;
};
// "slots:N", "density:RHO" (0 <= RHO <= 1). "matched" budgets come from a gate log. Throws ConfigError.
CacheBudget parse_budget(const std::string& text);

}  // namespace spkv
