// The KV caches against the eviction rule written out by hand: after N tokens a head holds its last W
// tokens plus exactly the earlier tokens whose gate was open, in order; the dense cache holds everything;
// memory accounting counts the pages actually allocated; cleared pages are reused.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "core/errors.h"
#include "core/kv_cache.h"

namespace spkv {
namespace {

// The row written for (position, layer, KV head): k[d] = pos * 1000 + il * 100 + hk * 10 + d; v = -k.
std::vector<float> rows(int64_t pos, int64_t il, int64_t Hkv, int64_t D, float sign) {
  std::vector<float> r(Hkv * D);
  for (int64_t hk = 0; hk < Hkv; ++hk)
    for (int64_t d = 0; d < D; ++d) r[hk * D + d] = sign * float(pos * 1000 + il * 100 + hk * 10 + d);
  return r;
}

// The positions a head's store holds, read back through the view (K row element 0 encodes the position).
std::vector<int64_t> store_positions(const kernels::CacheView& v, int64_t b, int64_t hk, int64_t il) {
  std::vector<int64_t> out;
  const int64_t i = b * v.Hkv + hk;
  for (int64_t j = 0; j < v.store_len[i]; ++j) {
    const int32_t page = v.store_pages[v.store_indptr[i] + j / v.page_size];
    const float* k = v.page_k[page] + (j % v.page_size) * v.D;
    const float* val = v.page_v[page] + (j % v.page_size) * v.D;
    EXPECT_EQ(val[1], -k[1]);
    out.push_back(int64_t(k[0] - il * 100 - hk * 10) / 1000);
  }
  return out;
}

TEST(KvCache, SpkvHeadsHoldTheirWindowPlusExactlyTheKeptTokens) {
  const int64_t B = 2, L = 2, Hkv = 3, D = 5, W = 4, P = 3, N = 23;
  SpkvKvCache cache({B, L, Hkv, D, P}, W);
  std::mt19937 rng(1);
  std::bernoulli_distribution open(0.4);
  std::vector<uint8_t> z(B * L * N * Hkv);  // (B, L, N, Hkv) decisions
  for (auto& x : z) x = open(rng);
  for (int64_t pos = 0; pos < N; ++pos)
    for (int64_t il = 0; il < L; ++il)
      for (int64_t b = 0; b < B; ++b) {
        auto k = rows(pos + 100 * b, il, Hkv, D, 1.f), v = rows(pos + 100 * b, il, Hkv, D, -1.f);
        cache.append(b, il, k.data(), v.data(), &z[((b * L + il) * N + pos) * Hkv]);
      }
  int64_t pages = 0;
  for (int64_t il = 0; il < L; ++il) {
    const kernels::CacheView v = cache.view(il);
    for (int64_t b = 0; b < B; ++b) {
      EXPECT_EQ(cache.length(b, il), N);
      ASSERT_EQ(v.ring_len[b], W);
      std::vector<int64_t> ring(v.ring_pos + b * W, v.ring_pos + (b + 1) * W);
      std::sort(ring.begin(), ring.end());
      EXPECT_EQ(ring, (std::vector<int64_t>{N - 4, N - 3, N - 2, N - 1}));
      for (int64_t hk = 0; hk < Hkv; ++hk) {
        std::vector<int64_t> expect;
        for (int64_t pos = 0; pos < N - W; ++pos)
          if (z[((b * L + il) * N + pos) * Hkv + hk]) expect.push_back(pos + 100 * b);
        EXPECT_EQ(store_positions(v, b, hk, il), expect) << "b " << b << " layer " << il << " head " << hk;
        EXPECT_EQ(cache.entries(b, il, hk), W + int64_t(expect.size()));
        pages += (int64_t(expect.size()) + P - 1) / P;
      }
    }
  }
  EXPECT_EQ(cache.bytes_allocated(), int64_t(sizeof(float)) * (2 * B * L * Hkv * W * D + pages * 2 * P * D));
  // Cleared pages are reused: refilling sequence 0 the same way allocates nothing new.
  const int64_t before = cache.bytes_allocated();
  cache.clear(0);
  EXPECT_EQ(cache.length(0, 1), 0);
  EXPECT_EQ(cache.entries(0, 1, 2), 0);
  for (int64_t pos = 0; pos < N; ++pos)
    for (int64_t il = 0; il < L; ++il) {
      auto k = rows(pos, il, Hkv, D, 1.f), v = rows(pos, il, Hkv, D, -1.f);
      cache.append(0, il, k.data(), v.data(), &z[(il * N + pos) * Hkv]);
    }
  EXPECT_EQ(cache.bytes_allocated(), before);
}

TEST(KvCache, DenseCacheHoldsEveryTokenAndIgnoresTheGates) {
  const int64_t Hkv = 2, D = 4, P = 16, N = 37;
  DenseKvCache cache({1, 1, Hkv, D, P});
  const std::vector<uint8_t> closed(Hkv, 0);
  for (int64_t pos = 0; pos < N; ++pos) {
    auto k = rows(pos, 0, Hkv, D, 1.f), v = rows(pos, 0, Hkv, D, -1.f);
    cache.append(0, 0, k.data(), v.data(), closed.data());
  }
  const kernels::CacheView v = cache.view(0);
  EXPECT_EQ(v.W, 0);
  std::vector<int64_t> all(N);
  for (int64_t i = 0; i < N; ++i) all[i] = i;
  for (int64_t hk = 0; hk < Hkv; ++hk) EXPECT_EQ(store_positions(v, 0, hk, 0), all);
  EXPECT_EQ(cache.entries(), Hkv * N);
  EXPECT_EQ(cache.bytes_allocated(), int64_t(sizeof(float)) * Hkv * 3 * 2 * P * D);  // 37 tokens: 3 pages a head
}

TEST(KvCache, InvalidShapesAreRejected) {
  EXPECT_THROW(SpkvKvCache({1, 2, 2, 8, 16}, 0), ConfigError);
  EXPECT_THROW(DenseKvCache({1, 0, 2, 8, 16}), ConfigError);
  EXPECT_THROW(DenseKvCache({1, 2, 2, 8, 0}), ConfigError);
}

}  // namespace
}  // namespace spkv
