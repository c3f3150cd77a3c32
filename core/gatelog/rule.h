// The one statement of which keys a gate decides about and how many K/V entries an SP-KV cache holds. The
// engine's cache (core/infer/kv_cache.h) implements it, `spkv run` logs by it, `spkv check` verifies logs
// against it, and the analysis, layouts and spkv-studio count with it. Header-only, no dependencies.
#pragma once
#include <algorithm>
#include <cstdint>

namespace spkv {

// Positions s of a piece of T tokens whose gate decision matters, begin <= s < end: some query of the piece
// sees the key from outside the window W (s < T - W), and keep_first does not pin it (s >= keep_first).
struct EligibleKeys {
  int64_t begin = 0, end = 0;
  int64_t count() const { return std::max<int64_t>(0, end - begin); }
};
inline EligibleKeys eligible_keys(int64_t T, int64_t window, int64_t keep_first) {
  return {std::min(T, keep_first), T - window};
}

// K/V entries that `heads` SP-KV caches hold after the first T tokens: each head's ring of the last W, the
// pinned keep_first tokens that have left it, and `kept` tokens with an open gate that have left it, summed
// over the heads. At the end of a piece, kept is the eligible keys kept.
inline int64_t spkv_cache_entries(int64_t T, int64_t window, int64_t keep_first, int64_t heads, int64_t kept) {
  return heads * std::min(T, window) + heads * std::min(keep_first, std::max<int64_t>(0, T - window)) + kept;
}

}  // namespace spkv
