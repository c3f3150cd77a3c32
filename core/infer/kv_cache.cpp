// The paged store shared by both caches, the SP-KV ring with its eviction rule, and the CSR view.
#include "core/infer/kv_cache.h"

#include <algorithm>
#include <string>

#include "core/base/errors.h"

namespace spkv {

KvCache::KvCache(const KvCacheShape& s, int64_t W) : shape_(s), W_(W) {
  if (s.n_seq < 1 || s.n_layers < 1 || s.n_kv_heads < 1 || s.head_dim < 1 || s.page_size < 1 || W < 0)
    throw ConfigError("KV cache: sequences " + std::to_string(s.n_seq) + ", layers " + std::to_string(s.n_layers) +
                      ", KV heads " + std::to_string(s.n_kv_heads) + ", head dim " + std::to_string(s.head_dim) +
                      ", page size " + std::to_string(s.page_size) + ", window " + std::to_string(W) +
                      ": every size must be at least 1 (the window at least 0)");
  const int64_t LB = s.n_layers * s.n_seq, rows = LB * s.n_kv_heads * W;
  seen_.assign(LB, 0);
  stores_.resize(LB * s.n_kv_heads);
  ring_k_.assign(rows * s.head_dim, 0.f), ring_v_.assign(rows * s.head_dim, 0.f);
  ring_pos_.assign(LB * W, 0), ring_keep_.assign(rows, 0), ring_len_.assign(LB, 0);
}

int32_t KvCache::new_page() {
  if (!free_pages_.empty()) {
    const int32_t id = free_pages_.back();
    free_pages_.pop_back();
    return id;
  }
  const int64_t rows = shape_.page_size * shape_.head_dim;
  pool_.emplace_back(new float[2 * rows]);
  page_k_.push_back(pool_.back().get()), page_v_.push_back(pool_.back().get() + rows);
  return int32_t(pool_.size() - 1);
}

void KvCache::store_row(int64_t b, int64_t il, int64_t hk, const float* k, const float* v) {
  Store& st = stores_[head(b, il, hk)];
  const int64_t P = shape_.page_size, D = shape_.head_dim;
  if (st.len % P == 0) st.pages.push_back(new_page());
  const int32_t page = st.pages.back();
  const int64_t row = (st.len % P) * D;
  std::copy_n(k, D, page_k_[page] + row);
  std::copy_n(v, D, page_v_[page] + row);
  ++st.len;
}

void KvCache::store_remove(int64_t b, int64_t il, int64_t hk, int64_t i) {
  Store& st = stores_[head(b, il, hk)];
  const int64_t P = shape_.page_size, D = shape_.head_dim, last = st.len - 1;
  if (i != last) {
    const int32_t from = st.pages[size_t(last / P)], to = st.pages[size_t(i / P)];
    std::copy_n(page_k_[from] + (last % P) * D, D, page_k_[to] + (i % P) * D);
    std::copy_n(page_v_[from] + (last % P) * D, D, page_v_[to] + (i % P) * D);
  }
  if (--st.len % P == 0) free_pages_.push_back(st.pages.back()), st.pages.pop_back();
}

kernels::CacheView KvCache::view(int64_t il) {
  const int64_t B = shape_.n_seq, Hkv = shape_.n_kv_heads, D = shape_.head_dim;
  csr_indptr_.assign(1, 0), csr_pages_.clear(), csr_len_.clear();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t hk = 0; hk < Hkv; ++hk) {
      const Store& st = stores_[head(b, il, hk)];
      csr_pages_.insert(csr_pages_.end(), st.pages.begin(), st.pages.end());
      csr_indptr_.push_back(int32_t(csr_pages_.size()));
      csr_len_.push_back(st.len);
    }
  kernels::CacheView v;
  v.n_seq = B, v.Hkv = Hkv, v.D = D, v.W = W_;
  const int64_t ring_off = il * B * Hkv * W_;
  v.ring_k = ring_k_.data() + ring_off * D, v.ring_v = ring_v_.data() + ring_off * D;
  v.ring_pos = ring_pos_.data() + il * B * W_;
  v.ring_keep = ring_keep_.data() + ring_off;
  v.ring_len = ring_len_.data() + il * B;
  v.page_size = shape_.page_size;
  v.page_k = page_k_.data(), v.page_v = page_v_.data();
  v.store_indptr = csr_indptr_.data(), v.store_pages = csr_pages_.data(), v.store_len = csr_len_.data();
  return v;
}

void KvCache::clear(int64_t b) {
  for (int64_t il = 0; il < shape_.n_layers; ++il) {
    seen_[il * shape_.n_seq + b] = 0, ring_len_[il * shape_.n_seq + b] = 0;
    for (int64_t hk = 0; hk < shape_.n_kv_heads; ++hk) {
      Store& st = stores_[head(b, il, hk)];
      free_pages_.insert(free_pages_.end(), st.pages.begin(), st.pages.end());
      st = Store{};
    }
  }
}

int64_t KvCache::entries(int64_t b, int64_t il, int64_t hk) const {
  return ring_len_[il * shape_.n_seq + b] + stores_[head(b, il, hk)].len;
}

int64_t KvCache::entries() const {
  int64_t n = 0;
  for (int64_t il = 0; il < shape_.n_layers; ++il)
    for (int64_t b = 0; b < shape_.n_seq; ++b)
      for (int64_t hk = 0; hk < shape_.n_kv_heads; ++hk) n += entries(b, il, hk);
  return n;
}

int64_t KvCache::bytes_allocated() const {
  const int64_t ring = int64_t(ring_k_.size() + ring_v_.size()) * sizeof(float);
  return ring + int64_t(pool_.size()) * 2 * shape_.page_size * shape_.head_dim * int64_t(sizeof(float));
}

SpkvKvCache::SpkvKvCache(const KvCacheShape& s, int64_t window) : KvCache(s, window) {
  if (window < 1) throw ConfigError("SP-KV cache: window " + std::to_string(window) + " must be at least 1");
}

void SpkvKvCache::append(int64_t b, int64_t il, const float* k, const float* v, const uint8_t* keep) {
  const int64_t B = shape_.n_seq, Hkv = shape_.n_kv_heads, D = shape_.head_dim;
  int64_t& pos = seen_[il * B + b];
  const int64_t slot = pos % W_;
  for (int64_t hk = 0; hk < Hkv; ++hk) {
    const int64_t row = ((il * B + b) * Hkv + hk) * W_ + slot;
    // The token at pos - W leaves the ring: into the store if its gate is open, otherwise dropped.
    if (pos >= W_ && ring_keep_[row]) store_row(b, il, hk, &ring_k_[row * D], &ring_v_[row * D]);
    std::copy_n(k + hk * D, D, &ring_k_[row * D]);
    std::copy_n(v + hk * D, D, &ring_v_[row * D]);
    ring_keep_[row] = keep[hk] ? 1 : 0;
  }
  ring_pos_[(il * B + b) * W_ + slot] = pos;
  ring_len_[il * B + b] = int32_t(std::min(pos + 1, W_));
  ++pos;
}

BudgetedKvCache::BudgetedKvCache(const KvCacheShape& s, int64_t window, const CacheBudget& budget, const PolicySpec& policy)
    : KvCache(s, window), budget_(budget), policy_(policy) {
  if (window < 1) throw ConfigError("budgeted cache: window " + std::to_string(window) + " must be at least 1");
  const size_t heads = size_t(s.n_layers * s.n_seq * s.n_kv_heads);
  obs_ = policy.kind == PolicyKind::snapkv ? policy.observe : 0;
  ring_score_.assign(heads * size_t(window), 0.0), ring_hist_.assign(heads * size_t(window * obs_), 0.f);
  row_pos_.resize(heads), row_score_.resize(heads), row_hist_.resize(heads), evicted_.resize(heads);
  held_.assign(size_t(s.n_seq), 0);
}

void BudgetedKvCache::append(int64_t b, int64_t il, const float* k, const float* v, const uint8_t*) {
  const int64_t B = shape_.n_seq, Hkv = shape_.n_kv_heads, D = shape_.head_dim;
  int64_t& pos = seen_[il * B + b];
  const int64_t slot = pos % W_;
  for (int64_t hk = 0; hk < Hkv; ++hk) {
    const int64_t row = ((il * B + b) * Hkv + hk) * W_ + slot;
    float* hist = ring_hist_.data() + row * obs_;
    if (pos >= W_) {  // the token at pos - W leaves the ring, into the store, with the score it has earned
      const size_t h = head(b, il, hk);
      const float* leaving = &ring_k_[row * D];
      store_row(b, il, hk, leaving, &ring_v_[row * D]);
      row_pos_[h].push_back(pos - W_);
      row_score_[h].push_back(policy_.attention_scored() ? ring_score_[size_t(row)]
                                                         : policy_.entry_score(il, hk, pos - W_, leaving, D));
      row_hist_[h].insert(row_hist_[h].end(), hist, hist + obs_);
    }
    std::copy_n(k + hk * D, D, &ring_k_[row * D]);
    std::copy_n(v + hk * D, D, &ring_v_[row * D]);
    ring_keep_[row] = 1;
    ring_score_[size_t(row)] = 0, std::fill_n(hist, obs_, 0.f);
  }
  ring_pos_[(il * B + b) * W_ + slot] = pos;
  ring_len_[il * B + b] = int32_t(std::min(pos + 1, W_));
  ++pos;
  const int64_t t = pos - 1;  // the query that attends next
  for (int64_t hk = 0; hk < Hkv; ++hk) {  // down to the budget, lowest score first
    const size_t h = head(b, il, hk);
    auto& ps = row_pos_[h];
    auto& sc = row_score_[h];
    auto& hs = row_hist_[h];
    const int64_t limit = budget_.rows(pos, il, hk, W_);
    if (policy_.kind == PolicyKind::oracle && entries(b, il, hk) > limit) {
      if (!future_ || b != 0 || t >= future_->T || il >= future_->L || hk >= future_->Hkv)
        throw Error("budgeted cache: the oracle has no future attention for token " + std::to_string(t) + " of sequence " +
                    std::to_string(b) + " (set_future, one sequence)");
      for (size_t i = 0; i < ps.size(); ++i) sc[i] = future_->at(il, hk, ps[i], t);
    }
    while (entries(b, il, hk) > limit && !ps.empty()) {
      size_t victim = 0;
      for (size_t i = 1; i < ps.size(); ++i)
        if (sc[i] < sc[victim] || (sc[i] == sc[victim] && ps[i] < ps[victim])) victim = i;
      evicted_[h].push_back({ps[victim], t});
      store_remove(b, il, hk, int64_t(victim));
      const size_t last = ps.size() - 1;
      ps[victim] = ps[last], sc[victim] = sc[last];
      std::copy_n(hs.begin() + int64_t(last) * obs_, obs_, hs.begin() + int64_t(victim) * obs_);
      ps.pop_back(), sc.pop_back(), hs.resize(last * size_t(obs_));
    }
    held_[size_t(b)] += entries(b, il, hk);
  }
}

void BudgetedKvCache::score(double& s, float* hist, double w, int64_t t) const {
  switch (policy_.kind) {
    case PolicyKind::h2o: s += w; break;
    case PolicyKind::tova: s = w; break;
    case PolicyKind::snapkv:
      hist[t % obs_] = float(w), s = 0;
      for (int64_t i = 0; i < obs_; ++i) s += hist[i];
      break;
    default: break;
  }
}

void BudgetedKvCache::observe(int64_t il, const float* weights, int64_t stride, int64_t H) {
  const int64_t B = shape_.n_seq, Hkv = shape_.n_kv_heads, G = H / Hkv;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t t = seen_[il * B + b] - 1, ring = ring_len_[il * B + b];
    for (int64_t hk = 0; hk < Hkv; ++hk) {
      const size_t h = head(b, il, hk);
      auto weight = [&](int64_t e) {  // summed over the query heads of the group
        double w = 0;
        for (int64_t g = 0; g < G; ++g) w += weights[(b * H + hk * G + g) * stride + e];
        return w;
      };
      const int64_t store = int64_t(row_pos_[h].size());
      for (int64_t e = 0; e < ring + store; ++e) {
        const double w = weight(e);
        const bool in_ring = e < ring;
        const int64_t row = ((il * B + b) * Hkv + hk) * W_ + e, j = e - ring;
        if (in_ring) score(ring_score_[size_t(row)], ring_hist_.data() + row * obs_, w, t);
        else score(row_score_[h][size_t(j)], row_hist_[h].data() + j * obs_, w, t);
        if (recording_ && b == 0 && t < recording_->T)
          recording_->at(il, hk, in_ring ? ring_pos_[(il * B + b) * W_ + e] : row_pos_[h][size_t(j)], t) = float(w);
      }
    }
  }
}

void BudgetedKvCache::record_attention(int64_t T) {
  recording_ = std::make_shared<FutureAttention>(T, shape_.n_layers, shape_.n_kv_heads);
}

std::shared_ptr<FutureAttention> BudgetedKvCache::recorded() {
  if (!recording_) throw Error("budgeted cache: recorded() without record_attention()");
  recording_->accumulate();
  return std::move(recording_);
}

std::vector<int64_t> BudgetedKvCache::positions(int64_t b, int64_t il, int64_t hk) const {
  const int64_t B = shape_.n_seq, n = ring_len_[il * B + b];
  std::vector<int64_t> out;
  for (int64_t s = 0; s < n; ++s) out.push_back(ring_pos_[(il * B + b) * W_ + s]);
  const auto& ps = row_pos_[head(b, il, hk)];
  out.insert(out.end(), ps.begin(), ps.end());
  return out;
}

void BudgetedKvCache::clear(int64_t b) {
  KvCache::clear(b);
  for (int64_t il = 0; il < shape_.n_layers; ++il)
    for (int64_t hk = 0; hk < shape_.n_kv_heads; ++hk) {
      const size_t h = head(b, il, hk);
      row_pos_[h].clear(), row_score_[h].clear(), row_hist_[h].clear(), evicted_[h].clear();
    }
  held_[size_t(b)] = 0;
}

DenseKvCache::DenseKvCache(const KvCacheShape& s) : KvCache(s, 0) {}

void DenseKvCache::append(int64_t b, int64_t il, const float* k, const float* v, const uint8_t*) {
  for (int64_t hk = 0; hk < shape_.n_kv_heads; ++hk) store_row(b, il, hk, k + hk * shape_.head_dim, v + hk * shape_.head_dim);
  ++seen_[il * shape_.n_seq + b];
}

}  // namespace spkv
