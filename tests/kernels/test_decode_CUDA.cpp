// The CUDA decode path against the CPU references, on random data at odd sizes: decode attention over ragged
// per-head caches (store lengths 0, 1, a full page, partial pages, several splits; a sequence with nothing
// cached), with poisoned outputs and several split counts; and the fused append over many steps and over
// prefill chunks, compared row by row. float32 and bf16 rows: for bf16 the reference gets the bf16 values.
// Skips cleanly without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/attention_ref.h"
#include "kernels/cpu/cache_append_ref.h"
#include "kernels/cuda/attention_ref.h"
#include "kernels/cuda/decode.h"
#include "tests/kernels/append_cache.h"
#include "tests/kernels/device_buffers.h"

namespace spkv::kernels {
namespace {

using test::Device;

// A host cache in the append layout filled by the CPU reference, so the ring and store are realistic. Head
// i (mod 5) keeps: nothing; only token 0 (a store of one row, a partly filled page); everything; every 3rd
// token; every 50th.
template <class Row>
test::AppendCache filled_cache(int64_t B, int64_t Hkv, int64_t D, int64_t W, int64_t P, int64_t steps, std::mt19937& rng) {
  const int64_t pages = (steps + P - 1) / P + 1;
  test::AppendCache c(B, Hkv, D, W, P, pages, B * Hkv * pages);
  std::normal_distribution<float> n;
  auto keeps = [](int64_t i, int64_t t) {
    switch (i % 5) {
      case 0: return false;
      case 1: return t == 0;
      case 2: return true;
      case 3: return t % 3 == 0;
      default: return t % 50 == 0;
    }
  };
  for (int64_t t = 0; t < steps; ++t) {
    std::vector<float> k(B * Hkv * D), v(B * Hkv * D);
    for (auto& x : k) x = n(rng);
    for (auto& x : v) x = n(rng);
    test::round_to<Row>(k), test::round_to<Row>(v);
    std::vector<uint8_t> keep(B * Hkv);
    for (int64_t i = 0; i < B * Hkv; ++i) keep[i] = keeps(i, t);
    EXPECT_EQ(cpu::cache_append_ref(c.params(k.data(), v.data(), keep.data())), Status::ok);
  }
  return c;
}

// Tolerance relative to the largest output: float32 arithmetic, then (bf16) one rounding of the output.
// D = 72 takes the kernel's 4-element loads, D = 30 its one-element path.
template <class Row>
void decode_matches(double tol, int64_t D) {
  std::mt19937 rng(3);
  std::normal_distribution<float> n;
  const int64_t B = 2, Hkv = 5, G = 3, H = Hkv * G, W = 16, P = 7, steps = 700;
  test::AppendCache c = filled_cache<Row>(B, Hkv, D, W, P, steps, rng);
  ASSERT_EQ(c.store_len[0], 0);
  ASSERT_EQ(c.store_len[1], 1);
  ASSERT_EQ(c.store_len[2], steps - W);
  std::vector<float> q(B * H * D), want(B * H * D, NAN);
  for (auto& x : q) x = n(rng);
  test::round_to<Row>(q);
  DecodeParams p;
  p.q = q.data(), p.y = want.data(), p.H = H, p.scale = 1.0f / std::sqrt(float(D)), p.cache = c.view();
  ASSERT_EQ(cpu::decode_attention_ref(p), Status::ok);

  Device dev;
  auto rows = [&](const std::vector<float>& x) { return dev.copy(test::as_rows<Row>(x)); };
  DecodeParamsT<Row> g;
  g.H = H, g.scale = p.scale;
  CacheViewT<Row>& v = g.cache;
  v.n_seq = B, v.Hkv = Hkv, v.D = D, v.W = W, v.page_size = P;
  v.ring_k = rows(c.ring_k), v.ring_v = rows(c.ring_v), v.ring_pos = dev.copy(c.ring_pos);
  v.ring_keep = dev.copy(c.ring_keep), v.ring_len = dev.copy(c.ring_len);
  const Row* kpool = rows(c.k_pool);
  const Row* vpool = rows(c.v_pool);
  std::vector<const Row*> pk, pv;
  for (int64_t page = 0; page < c.n_pages; ++page) pk.push_back(kpool + page * P * D), pv.push_back(vpool + page * P * D);
  v.page_k = dev.copy(pk), v.page_v = dev.copy(pv);
  v.store_indptr = dev.copy(c.indptr), v.store_pages = dev.copy(c.page_table), v.store_len = dev.copy(c.store_len);
  g.q = rows(q);
  int64_t most = 0;
  for (int64_t i = 0; i < B * Hkv; ++i) most = std::max<int64_t>(most, W + c.store_len[i]);
  for (int64_t splits : {int64_t(1), int64_t(2), cuda::decode_splits(most), int64_t(9)}) {
    const int64_t ws = cuda::decode_workspace_floats(B, H, D, splits);
    float* work = dev.copy(std::vector<float>(size_t(ws), NAN));
    Row* y = rows(std::vector<float>(want.size(), NAN));  // poisoned: every element must be written
    g.y = y;
    ASSERT_EQ(cuda::decode_attention(g, splits, work, ws, nullptr), Status::ok);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_LT(test::max_rel_error(test::as_floats(dev.back(y, want.size())), want), tol) << splits << " splits, D " << D;  // NaN fails too
  }
  // An empty cache (no ring, no store) gives zeros.
  std::vector<int32_t> zeros_len(B, 0), zeros_store(B * Hkv, 0);
  g.cache.ring_len = dev.copy(zeros_len), g.cache.store_len = dev.copy(zeros_store);
  float* work = dev.copy(std::vector<float>(size_t(cuda::decode_workspace_floats(B, H, D, 2)), NAN));
  Row* y = rows(std::vector<float>(want.size(), NAN));
  g.y = y;
  ASSERT_EQ(cuda::decode_attention(g, 2, work, cuda::decode_workspace_floats(B, H, D, 2), nullptr), Status::ok);
  for (float x : test::as_floats(dev.back(y, want.size()))) ASSERT_EQ(x, 0.0f);
  EXPECT_EQ(cuda::decode_attention(g, 2, work, 10, nullptr), Status::invalid_argument);  // workspace too small
}

TEST(DecodeAttention_CUDA, MatchesCpuReferenceOnRaggedCaches) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  decode_matches<float>(2e-5, 72);
  decode_matches<float>(2e-5, 30);
}

TEST(DecodeAttention_CUDA, Bf16MatchesCpuReferenceOnRaggedCaches) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  decode_matches<bf16>(1e-2, 72);
  decode_matches<bf16>(1e-2, 30);
}

// Appends chunks of random rows and gates (T tokens each: 1 is a decode step) to a CPU and a GPU copy (rows
// of type Row) of the same cache; gpu_cache gets the GPU's state back as float32. fixed_keep: (B * Hkv) gates
// every token gets instead.
template <class Row>
void append_both(test::AppendCache& cpu_cache, test::AppendCache& gpu_cache, const std::vector<int64_t>& chunks,
                 const std::vector<uint8_t>* fixed_keep, std::mt19937& rng) {
  std::normal_distribution<float> n;
  Device dev;
  const int64_t B = cpu_cache.B, Hkv = cpu_cache.Hkv, D = cpu_cache.D;
  auto to_dev = [&](const std::vector<float>& x) { return dev.copy(test::as_rows<Row>(x)); };
  auto back = [&](const Row* d, const std::vector<float>& like) { return test::as_floats(dev.back(d, like.size())); };
  const AppendParams f = gpu_cache.params(nullptr, nullptr, nullptr);
  AppendParamsT<Row> g;
  g.n_seq = f.n_seq, g.Hkv = f.Hkv, g.D = f.D, g.W = f.W, g.page_size = f.page_size, g.max_pages = f.max_pages, g.n_free = f.n_free;
  g.ring_k = to_dev(gpu_cache.ring_k), g.ring_v = to_dev(gpu_cache.ring_v), g.ring_pos = dev.copy(gpu_cache.ring_pos);
  g.ring_keep = dev.copy(gpu_cache.ring_keep), g.ring_len = dev.copy(gpu_cache.ring_len), g.seen = dev.copy(gpu_cache.seen);
  g.k_pool = to_dev(gpu_cache.k_pool), g.v_pool = to_dev(gpu_cache.v_pool), g.page_table = dev.copy(gpu_cache.page_table);
  g.store_len = dev.copy(gpu_cache.store_len), g.free_pages = dev.copy(gpu_cache.free_pages);
  g.free_next = dev.copy(gpu_cache.free_next), g.overflow = dev.copy(gpu_cache.overflow);
  for (int64_t T : chunks) {
    std::vector<float> k(B * Hkv * T * D), v(B * Hkv * T * D);
    for (auto& x : k) x = n(rng);
    for (auto& x : v) x = n(rng);
    test::round_to<Row>(k), test::round_to<Row>(v);
    std::vector<uint8_t> keep(B * T * Hkv);  // (B, T, Hkv)
    for (int64_t j = 0; j < int64_t(keep.size()); ++j)
      keep[j] = fixed_keep ? (*fixed_keep)[(j / (T * Hkv)) * Hkv + j % Hkv] : rng() % 2;
    ASSERT_EQ(cpu::cache_append_ref(cpu_cache.params(k.data(), v.data(), keep.data(), T)), Status::ok);
    g.T = T, g.k_new = to_dev(k), g.v_new = to_dev(v), g.keep_new = dev.copy(keep);
    ASSERT_EQ(cuda::cache_append(g, nullptr), Status::ok);
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  gpu_cache.ring_k = back(g.ring_k, gpu_cache.ring_k), gpu_cache.ring_v = back(g.ring_v, gpu_cache.ring_v);
  gpu_cache.k_pool = back(g.k_pool, gpu_cache.k_pool), gpu_cache.v_pool = back(g.v_pool, gpu_cache.v_pool);
  gpu_cache.ring_pos = dev.back(g.ring_pos, gpu_cache.ring_pos.size());
  gpu_cache.ring_keep = dev.back(g.ring_keep, gpu_cache.ring_keep.size());
  gpu_cache.ring_len = dev.back(g.ring_len, gpu_cache.ring_len.size());
  gpu_cache.seen = dev.back(g.seen, gpu_cache.seen.size());
  gpu_cache.store_len = dev.back(g.store_len, gpu_cache.store_len.size());
  gpu_cache.page_table = dev.back(g.page_table, gpu_cache.page_table.size());
  gpu_cache.free_next = dev.back(g.free_next, 1), gpu_cache.overflow = dev.back(g.overflow, 1);
}

// Copies are exact in both row types: the reference got the bf16 values. Decode steps, then prefill chunks
// shorter and longer than the window and than the kernel's batch of 128 tokens.
template <class Row>
void append_matches(const std::vector<int64_t>& chunks) {
  std::mt19937 rng(4);
  const int64_t B = 3, Hkv = 4, D = 40, W = 9, P = 5;
  int64_t total = 0;
  for (int64_t T : chunks) total += T;
  const int64_t pages = (total + P - 1) / P + 1;
  test::AppendCache cpu_cache(B, Hkv, D, W, P, pages, B * Hkv * pages), gpu_cache = cpu_cache;
  append_both<Row>(cpu_cache, gpu_cache, chunks, nullptr, rng);
  EXPECT_EQ(test::difference(gpu_cache, cpu_cache), "");
  EXPECT_EQ(gpu_cache.overflow[0], 0);
}

const std::vector<int64_t> kSteps(83, 1), kChunks{3, 1, 9, 20, 1, 300, 2, 130, 7};

TEST(CacheAppend_CUDA, MatchesCpuReferenceRowByRow) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  append_matches<float>(kSteps);
}

TEST(CacheAppend_CUDA, Bf16MatchesCpuReferenceRowByRow) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  append_matches<bf16>(kSteps);
}

TEST(CacheAppend_CUDA, ChunksMatchCpuReference) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  append_matches<float>(kChunks);
  append_matches<bf16>(kChunks);
}

TEST(CacheAppend_CUDA, AFullPageTableRaisesOverflowLikeTheReference) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(6);
  const std::vector<uint8_t> keep{1, 0};  // head 0 keeps everything and outgrows its two pages
  for (const auto& chunks : {std::vector<int64_t>(20, 1), std::vector<int64_t>{20}}) {
    test::AppendCache cpu_cache(1, 2, 8, 4, 3, /*max_pages=*/2, /*n_pages=*/8), gpu_cache = cpu_cache;
    append_both<float>(cpu_cache, gpu_cache, chunks, &keep, rng);
    EXPECT_EQ(cpu_cache.overflow[0], 1);
    EXPECT_EQ(test::difference(gpu_cache, cpu_cache), "");
  }
}

}  // namespace
}  // namespace spkv::kernels
