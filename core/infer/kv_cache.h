// The KV cache, separate from the model. SpkvKvCache is the compacted per-head SP-KV cache: for each
// (sequence, layer, KV head) a ring of the last W tokens plus an append-only long-term store that a token
// enters, when it leaves the ring, only if its gate is open. DenseKvCache keeps every token (the
// full-attention baseline); BudgetedKvCache keeps what a budgeted eviction policy leaves (cache_policy.h). Both store K/V rows in pages from one pool and hand the kernels a
// kernels::CacheView. Torch-free: rows in as raw floats. Not the attention itself (kernels/) nor the model.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/infer/cache_policy.h"
#include "kernels/decode_params.h"

namespace spkv {

struct KvCacheShape {
  int64_t n_seq = 1, n_layers = 0, n_kv_heads = 0, head_dim = 0;  // B, L, Hkv, D
  int64_t page_size = 16;                                          // tokens per store page
};

class KvCache {
 public:
  virtual ~KvCache() = default;
  // Appends the next token of sequence b to layer il. k, v: (Hkv, D) rows; keep: (Hkv) gate decisions
  // (1 = keep the token once it leaves the window; DenseKvCache keeps everything and ignores them).
  virtual void append(int64_t b, int64_t il, const float* k, const float* v, const uint8_t* keep) = 0;
  // The kernels' view of layer il. Valid until the next append or clear.
  kernels::CacheView view(int64_t il);
  // Forgets sequence b in every layer; its pages go back to the pool (still allocated, and counted).
  virtual void clear(int64_t b);

  const KvCacheShape& shape() const { return shape_; }
  int64_t window() const { return W_; }
  int64_t length(int64_t b, int64_t il) const { return seen_[il * shape_.n_seq + b]; }  // tokens appended
  // K/V rows held for (b, il, hk): ring slots in use plus the store.
  int64_t entries(int64_t b, int64_t il, int64_t hk) const;
  int64_t entries() const;  // summed over every (b, il, hk)
  // Bytes of K/V storage allocated: the rings plus every page the pool has allocated.
  int64_t bytes_allocated() const;

 protected:
  KvCache(const KvCacheShape& s, int64_t W);
  void store_row(int64_t b, int64_t il, int64_t hk, const float* k, const float* v);  // onto the store
  // Removes row i of the store: the last row moves into its place (the kernels do not depend on the order).
  void store_remove(int64_t b, int64_t il, int64_t hk, int64_t i);
  size_t head(int64_t b, int64_t il, int64_t hk) const { return (il * shape_.n_seq + b) * shape_.n_kv_heads + hk; }

  KvCacheShape shape_;
  int64_t W_;                    // ring slots; 0 for the dense cache
  std::vector<int64_t> seen_;    // (L, B) tokens appended
  // Rings, per layer: k/v (L, B, Hkv, W, D), pos (L, B, W), keep (L, B, Hkv, W), len (L, B).
  std::vector<float> ring_k_, ring_v_;
  std::vector<int64_t> ring_pos_;
  std::vector<uint8_t> ring_keep_;
  std::vector<int32_t> ring_len_;

 private:
  int32_t new_page();
  struct Store {
    std::vector<int32_t> pages;
    int32_t len = 0;
  };
  std::vector<Store> stores_;                  // (L, B, Hkv)
  std::vector<std::unique_ptr<float[]>> pool_;  // page id -> [K (P, D) | V (P, D)]
  std::vector<float*> page_k_, page_v_;  // page id -> its K and V rows
  std::vector<int32_t> free_pages_;
  // The CSR of the last view() call: indptr (B * Hkv + 1), page ids, lengths.
  std::vector<int32_t> csr_indptr_, csr_pages_, csr_len_;
};

class SpkvKvCache : public KvCache {
 public:
  SpkvKvCache(const KvCacheShape& s, int64_t window);  // window W >= 1
  void append(int64_t b, int64_t il, const float* k, const float* v, const uint8_t* keep) override;
};

// Budgeted baselines (cache_policy.h): every token that leaves the window enters the store, and after each
// append a head over its budget evicts the store row of lowest policy score (ties: the earliest position)
// until it is not. The window is always kept. Records when each evicted position left. The attention-scored
// policies learn their scores from observe(), which the engine calls with each query's attention weights
// after it attends (one token at a time); the oracle reads a FutureAttention (one sequence).
class BudgetedKvCache : public KvCache {
 public:
  BudgetedKvCache(const KvCacheShape& s, int64_t window, const CacheBudget& budget, const PolicySpec& policy);
  void append(int64_t b, int64_t il, const float* k, const float* v, const uint8_t* keep) override;  // keep ignored
  // The attention weights of layer il's newest query of every sequence, over view(il) as it is after the
  // append: (n_seq, H, stride), ring slots then store rows per head (kernels::DecodeParams::weights).
  void observe(int64_t il, const float* weights, int64_t stride, int64_t H);
  bool wants_attention() const { return policy_.attention_scored() || recording_ != nullptr; }
  const PolicySpec& policy() const { return policy_; }
  void set_budget(const CacheBudget& budget) { budget_ = budget; }
  const CacheBudget& budget() const { return budget_; }  // e.g. the next document's matched schedule
  // The oracle's knowledge of the document now being fed (sequence 0).
  void set_future(std::shared_ptr<const FutureAttention> f) { future_ = std::move(f); }
  // Records every observed weight of sequence 0 for the next T tokens into a FutureAttention (the oracle's
  // first pass, under a budget that never binds); recorded() accumulates it and hands it over.
  void record_attention(int64_t T);
  std::shared_ptr<FutureAttention> recorded();
  // The positions head (b, il, hk) holds: the window's, then the store's (in store order).
  std::vector<int64_t> positions(int64_t b, int64_t il, int64_t hk) const;
  struct Eviction {
    int64_t pos, at;  // the position evicted, and the position whose append evicted it
  };
  const std::vector<Eviction>& evictions(int64_t b, int64_t il, int64_t hk) const { return evicted_[head(b, il, hk)]; }
  // The rows held after each append, summed over the appends and heads of sequence b: with the dense
  // cache's sum, the KV ratio.
  int64_t held_total(int64_t b) const { return held_[size_t(b)]; }
  void clear(int64_t b) override;  // also the sequence's positions, scores, evictions and totals

 private:
  void score(double& s, float* hist, double w, int64_t t) const;  // one query's weight w into a row's score

  CacheBudget budget_;
  PolicySpec policy_;
  int64_t obs_ = 0;                              // snapkv: per-row history length; 0 otherwise
  std::vector<double> ring_score_;               // (L, B, Hkv, W) the score of each ring slot's token
  std::vector<float> ring_hist_;                 // (L, B, Hkv, W, obs_)
  std::vector<std::vector<int64_t>> row_pos_;   // per head: the position of each store row
  std::vector<std::vector<double>> row_score_;  // per head: its policy score
  std::vector<std::vector<float>> row_hist_;    // per head: (rows, obs_)
  std::vector<std::vector<Eviction>> evicted_;  // per head
  std::vector<int64_t> held_;                   // (B)
  std::shared_ptr<const FutureAttention> future_;
  std::shared_ptr<FutureAttention> recording_;
};

class DenseKvCache : public KvCache {
 public:
  explicit DenseKvCache(const KvCacheShape& s);
  void append(int64_t b, int64_t il, const float* k, const float* v, const uint8_t* keep) override;
};

}  // namespace spkv
