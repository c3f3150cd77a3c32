// A host-side cache in the fused-append layout (kernels/append_params.h) for tests: owns the ring, the page
// pool, the page tables and the free list, and gives the AppendParams and CacheView over them.
#pragma once
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/append_params.h"

namespace spkv::kernels::test {

struct AppendCache {
  int64_t B, Hkv, D, W, P, max_pages, n_pages;
  std::vector<float> ring_k, ring_v, k_pool, v_pool;
  std::vector<int64_t> ring_pos, seen;
  std::vector<uint8_t> ring_keep;
  std::vector<int32_t> ring_len, page_table, store_len, free_pages, free_next{0}, overflow{0}, indptr;
  std::vector<const float*> page_ptr_k, page_ptr_v;

  AppendCache(int64_t B_, int64_t Hkv_, int64_t D_, int64_t W_, int64_t P_, int64_t max_pages_, int64_t n_pages_)
      : B(B_), Hkv(Hkv_), D(D_), W(W_), P(P_), max_pages(max_pages_), n_pages(n_pages_) {
    ring_k.assign(size_t(B * Hkv * W * D), 0.f), ring_v = ring_k;
    k_pool.assign(size_t(n_pages * P * D), 0.f), v_pool = k_pool;
    ring_pos.assign(size_t(B * W), 0), seen.assign(size_t(B), 0), ring_keep.assign(size_t(B * Hkv * W), 0);
    ring_len.assign(size_t(B), 0), page_table.assign(size_t(B * Hkv * max_pages), -1), store_len.assign(size_t(B * Hkv), 0);
    free_pages.resize(size_t(n_pages));
    for (int64_t p = 0; p < n_pages; ++p) free_pages[size_t(p)] = int32_t(n_pages - 1 - p);  // out of order on purpose
    for (int64_t i = 0; i <= B * Hkv; ++i) indptr.push_back(int32_t(i * max_pages));
    for (int64_t p = 0; p < n_pages; ++p)
      page_ptr_k.push_back(k_pool.data() + p * P * D), page_ptr_v.push_back(v_pool.data() + p * P * D);
  }
  // k, v: (B, Hkv, T, D); keep: (B, T, Hkv).
  AppendParams params(const float* k, const float* v, const uint8_t* keep, int64_t T = 1) {
    AppendParams a;
    a.n_seq = B, a.Hkv = Hkv, a.D = D, a.W = W, a.page_size = P, a.T = T, a.k_new = k, a.v_new = v, a.keep_new = keep;
    a.ring_k = ring_k.data(), a.ring_v = ring_v.data(), a.ring_pos = ring_pos.data(), a.ring_keep = ring_keep.data();
    a.ring_len = ring_len.data(), a.seen = seen.data(), a.k_pool = k_pool.data(), a.v_pool = v_pool.data();
    a.page_table = page_table.data(), a.store_len = store_len.data(), a.max_pages = max_pages;
    a.free_pages = free_pages.data(), a.free_next = free_next.data(), a.n_free = n_pages, a.overflow = overflow.data();
    return a;
  }
  CacheView view() {
    AppendParams a = params(nullptr, nullptr, nullptr);
    return append_view(a, page_ptr_k.data(), page_ptr_v.data(), indptr.data());
  }
  // The K rows of head i's store, in order (row j at page_table[i][j / P], row j % P).
  std::vector<float> store_rows(int64_t i, const std::vector<float>& pool) const {
    std::vector<float> out;
    for (int64_t j = 0; j < store_len[size_t(i)]; ++j) {
      const int64_t at = (int64_t(page_table[size_t(i * max_pages + j / P)]) * P + j % P) * D;
      out.insert(out.end(), pool.begin() + at, pool.begin() + at + D);
    }
    return out;
  }
};

// The first way a and b differ in what they hold, or "": the rings, counts and flags element for element, and
// each head's store rows in order (page ids may differ: pages go to heads in the order they ask).
inline std::string difference(const AppendCache& a, const AppendCache& b) {
  if (a.ring_k != b.ring_k) return "ring_k";
  if (a.ring_v != b.ring_v) return "ring_v";
  if (a.ring_pos != b.ring_pos) return "ring_pos";
  if (a.ring_keep != b.ring_keep) return "ring_keep";
  if (a.ring_len != b.ring_len) return "ring_len";
  if (a.seen != b.seen) return "seen";
  if (a.store_len != b.store_len) return "store_len";
  if (a.free_next != b.free_next) return "free_next";
  if (a.overflow != b.overflow) return "overflow";
  for (int64_t i = 0; i < a.B * a.Hkv; ++i) {
    if (a.store_rows(i, a.k_pool) != b.store_rows(i, b.k_pool)) return "store K rows of head " + std::to_string(i);
    if (a.store_rows(i, a.v_pool) != b.store_rows(i, b.v_pool)) return "store V rows of head " + std::to_string(i);
  }
  return "";
}

}  // namespace spkv::kernels::test
