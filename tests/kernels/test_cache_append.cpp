// The fused cache append's chunks, on the host. The CPU reference given T tokens at once holds what T
// single-token calls hold. The CUDA kernel's batched walk (kernels/append_chunk.h: eviction of chunk tokens
// that never enter the ring, batches of kAppendBatch), run here one thread at a time, holds what the
// reference holds, overflow included. Odd sizes (W 9, P 5, D 6); chunks shorter and longer than W and than a
// batch; random rows and gates with one head that keeps everything and one that keeps nothing.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/append_chunk.h"
#include "kernels/cpu/cache_append_ref.h"
#include "tests/kernels/append_cache.h"

namespace spkv::kernels {
namespace {

struct Chunk {
  int64_t T;
  std::vector<float> k, v;     // (B, Hkv, T, D)
  std::vector<uint8_t> keep;   // (B, T, Hkv)
};

Chunk random_chunk(const test::AppendCache& c, int64_t T, std::mt19937& rng) {
  std::normal_distribution<float> n;
  Chunk x{T, std::vector<float>(c.B * c.Hkv * T * c.D), {}, std::vector<uint8_t>(c.B * T * c.Hkv)};
  x.v.resize(x.k.size());
  for (auto* rows : {&x.k, &x.v})
    for (auto& e : *rows) e = n(rng);
  for (int64_t j = 0; j < int64_t(x.keep.size()); ++j) {
    const int64_t hk = j % c.Hkv, b = j / (T * c.Hkv);
    x.keep[j] = b == 0 && hk == 0 ? 1 : b == 1 && hk == 2 ? 0 : rng() % 2;  // head 0 keeps all, head 5 none
  }
  return x;
}

// Token t of a chunk as a single-token call's rows: k, v (B, Hkv, D), keep (B, Hkv).
Chunk token(const test::AppendCache& c, const Chunk& x, int64_t t) {
  const size_t rows = size_t(c.B * c.Hkv);
  Chunk y{1, std::vector<float>(rows * c.D), std::vector<float>(rows * c.D), std::vector<uint8_t>(rows)};
  for (int64_t i = 0; i < c.B * c.Hkv; ++i) {
    for (int64_t d = 0; d < c.D; ++d) {
      y.k[i * c.D + d] = x.k[(i * x.T + t) * c.D + d];
      y.v[i * c.D + d] = x.v[(i * x.T + t) * c.D + d];
    }
    y.keep[i] = x.keep[((i / c.Hkv) * x.T + t) * c.Hkv + i % c.Hkv];
  }
  return y;
}

// What the CUDA kernels do, with one thread a block: every head's walk, then the advance.
void kernel_walk(const AppendParams& p) {
  int64_t at[kAppendBatch];
  for (int64_t i = 0; i < p.n_seq * p.Hkv; ++i) append_head(p, i, at, 0, 1);
  for (int64_t b = 0; b < p.n_seq; ++b) append_advance(p, b);
}

const std::vector<int64_t> kChunks{1, 4, 9, 13, 1, 300, 2, 140, 8, 10};

TEST(CacheAppendChunk, ReferenceChunkHoldsWhatSingleTokensHold) {
  std::mt19937 rng(21);
  test::AppendCache chunked(2, 3, 6, 9, 5, /*max_pages=*/120, /*n_pages=*/6 * 120), single = chunked;
  int64_t total = 0;
  for (int64_t T : kChunks) {
    const Chunk x = random_chunk(chunked, T, rng);
    ASSERT_EQ(cpu::cache_append_ref(chunked.params(x.k.data(), x.v.data(), x.keep.data(), T)), Status::ok);
    for (int64_t t = 0; t < T; ++t) {
      const Chunk y = token(single, x, t);
      ASSERT_EQ(cpu::cache_append_ref(single.params(y.k.data(), y.v.data(), y.keep.data())), Status::ok);
    }
    total += T;
    ASSERT_EQ(test::difference(chunked, single), "") << "after a chunk of " << T << " (" << total << " tokens)";
  }
  EXPECT_EQ(chunked.store_len[0], total - 9);  // the head that keeps everything
  EXPECT_EQ(chunked.store_len[5], 0);          // the head that keeps nothing
  EXPECT_EQ(chunked.overflow[0], 0);
}

TEST(CacheAppendChunk, KernelWalkHoldsWhatTheReferenceHolds) {
  std::mt19937 rng(22);
  test::AppendCache ref(2, 3, 6, 9, 5, /*max_pages=*/120, /*n_pages=*/6 * 120), walk = ref;
  for (int64_t T : kChunks) {
    const Chunk x = random_chunk(ref, T, rng);
    ASSERT_EQ(cpu::cache_append_ref(ref.params(x.k.data(), x.v.data(), x.keep.data(), T)), Status::ok);
    kernel_walk(walk.params(x.k.data(), x.v.data(), x.keep.data(), T));
    ASSERT_EQ(test::difference(walk, ref), "") << "after a chunk of " << T;
  }
  EXPECT_EQ(ref.store_len[0], 488 - 9);  // head 0 kept the whole 300-token chunk: three batches
}

TEST(CacheAppendChunk, AFullPageTableOverflowsInBoth) {
  std::mt19937 rng(23);
  test::AppendCache ref(2, 3, 6, 9, 5, /*max_pages=*/2, /*n_pages=*/64), walk = ref;
  const Chunk x = random_chunk(ref, 40, rng);
  ASSERT_EQ(cpu::cache_append_ref(ref.params(x.k.data(), x.v.data(), x.keep.data(), 40)), Status::ok);
  kernel_walk(walk.params(x.k.data(), x.v.data(), x.keep.data(), 40));
  EXPECT_EQ(ref.overflow[0], 1);
  EXPECT_EQ(ref.store_len[0], 2 * 5);  // the head that keeps all 31 evicted tokens keeps its first two pages
  EXPECT_EQ(test::difference(walk, ref), "");
}

TEST(CacheAppendChunk, AnEmptyChunkIsRejected) {
  test::AppendCache c(1, 1, 4, 3, 2, 4, 4);
  std::vector<float> k(4), v(4);
  std::vector<uint8_t> keep(1);
  EXPECT_EQ(cpu::cache_append_ref(c.params(k.data(), v.data(), keep.data(), 0)), Status::invalid_argument);
}

}  // namespace
}  // namespace spkv::kernels
