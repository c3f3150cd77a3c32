// Budgeted cache policies: the eviction baselines SP-KV is compared with at a matched KV budget (issue 21).
// A budget says how many K/V rows a head may hold after each token; a policy says which out-of-window row
// goes when a head is over it. Policies are written as a score per stored row, lowest evicted first (ties:
// the earliest position), so that one cache (BudgetedKvCache, kv_cache.h) serves them all. The score of a
// KV head's row sums the attention weights of the query heads of its group (GQA).
//   streaming   StreamingLLM: `sinks` first positions, then the most recent (score: position, sinks last)
//   knorm       evict the key with the largest L2 norm (score: -|k|)
//   random      a uniform draw per (layer, head, position) from `seed` (score: the draw)
//   h2o         H2O: the attention the key has received from every query since it was written
//   tova        TOVA: the attention from the latest query
//   snapkv      SnapKV, online: the attention from the last `observe` queries (a sliding observation
//               window instead of the prompt's last queries; no pooling over neighbouring positions)
//   oracle      the attention the key will receive from this and every later query under full attention
//               (FutureAttention: a first pass over the same document)
// Online order, each token t: t enters the ring (and the token at t - W the store), each head over its
// budget evicts by the scores as they stand (the attention of queries up to t - 1; the oracle: queries t
// and later), then query t attends over what is left, and its weights update the scores. So the query at t
// sees exactly the budget's rows, as an SP-KV query sees exactly its head's entries.
// Torch-free. Not the cache's storage (kv_cache.h) nor the engine.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace spkv {

enum class PolicyKind { streaming, knorm, random, h2o, tova, snapkv, oracle };
const char* to_string(PolicyKind k);

struct PolicySpec {
  PolicyKind kind = PolicyKind::streaming;
  int64_t sinks = 4;     // streaming: positions < sinks are evicted last
  uint64_t seed = 0;     // random
  int64_t observe = 32;  // snapkv: the queries whose attention counts
  // Scored by the attention of the queries the cache has seen (h2o, tova, snapkv).
  bool attention_scored() const { return kind == PolicyKind::h2o || kind == PolicyKind::tova || kind == PolicyKind::snapkv; }
  // streaming, knorm, random: the row's score when it enters the store (leaves the window).
  double entry_score(int64_t il, int64_t hk, int64_t pos, const float* k, int64_t D) const;
  std::string name() const;  // as parse_policy reads it
};
// "streaming[:SINKS]", "knorm", "random[:SEED]", "h2o", "tova", "snapkv[:OBSERVE]", "oracle". Throws
// ConfigError naming the text.
PolicySpec parse_policy(const std::string& text);

// What the oracle knows: from a full-attention pass over the document, the attention each key receives from
// each query, summed over the query heads of its KV head, kept as sums over the queries from t on.
struct FutureAttention {
  int64_t T = 0, L = 0, Hkv = 0;
  std::vector<float> from;  // (L, Hkv, T keys, T + 1): from[il, hk, s, t] = sum over queries t' >= t of a(t', s)
  FutureAttention(int64_t T, int64_t L, int64_t Hkv);  // zeros; throws ConfigError past 2 GiB
  float& at(int64_t il, int64_t hk, int64_t s, int64_t t) { return from[size_t(((il * Hkv + hk) * T + s) * (T + 1) + t)]; }
  float at(int64_t il, int64_t hk, int64_t s, int64_t t) const {
    return from[size_t(((il * Hkv + hk) * T + s) * (T + 1) + t)];
  }
  void accumulate();  // per-query weights (in from[.., t]) -> sums over t' >= t
};

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
// "slots:N", "density:RHO" (0 <= RHO <= 1). "matched" budgets come from an SP-KV run (matched_budget).
// Throws ConfigError.
CacheBudget parse_budget(const std::string& text);

// The matched budget of an SP-KV run: after token n, head (il, hk) held its window's min(n, W) rows and the
// tokens with an open gate that have left the window. keep: (T, L, Hkv) the run's decisions as the engine
// reports them (nonzero = open; keep_first's pins are open).
CacheBudget matched_budget(const uint8_t* keep, int64_t T, int64_t L, int64_t Hkv, int64_t W, bool uniform);

}  // namespace spkv
