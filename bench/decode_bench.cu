// The CUDA decode kernel's speed (issue targets: >= 70% of the device's measured copy bandwidth at 32k, and
// SP-KV >= 2x dense at batch 16, 16k, 25% density). Usage: spkv-decode-bench [--quick] [--bf16]
// For batch 1 and 16, contexts 1k..32k and densities 10/25/50%, it builds a cache on the device whose heads
// hold W ring tokens plus density * (context - W) stored tokens (dense: every token in the store, no ring),
// times cuda::decode_attention with CUDA events over many steps, and reports the latency, the bytes of K and
// V read per step, the achieved bandwidth, and the SP-KV speedup, against a device-to-device copy measured in
// the same run. Llama-3-8B-like heads: H 32, Hkv 8, D 128, W 128, page 16, float32 rows (--bf16: bf16 rows).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "bench/cuda_bench.h"
#include "kernels/cuda/decode.h"

using namespace spkv::kernels;

namespace {
using spkv::bench::time_ms;
using spkv::bench::upload;

struct Result {
  double ms = 0, bytes = 0;
};

// One decode step over a cache whose every head holds `ring` ring tokens and `stored` store tokens.
template <class Row>
Result run(int64_t B, int64_t ring, int64_t stored, int iters) {
  const int64_t H = 32, Hkv = 8, D = 128, P = 16, W = ring;
  const int64_t pages_per_head = (stored + P - 1) / P, n_pages = std::max<int64_t>(1, B * Hkv * pages_per_head);
  Row *k_pool, *v_pool, *ring_k = nullptr, *ring_v = nullptr;
  CHECK_CUDA(cudaMalloc(&k_pool, size_t(n_pages * P * D) * sizeof(Row)));
  CHECK_CUDA(cudaMalloc(&v_pool, size_t(n_pages * P * D) * sizeof(Row)));
  CHECK_CUDA(cudaMemset(k_pool, 0, size_t(n_pages * P * D) * sizeof(Row)));
  CHECK_CUDA(cudaMemset(v_pool, 0, size_t(n_pages * P * D) * sizeof(Row)));
  if (W > 0) {
    CHECK_CUDA(cudaMalloc(&ring_k, size_t(B * Hkv * W * D) * sizeof(Row)));
    CHECK_CUDA(cudaMalloc(&ring_v, size_t(B * Hkv * W * D) * sizeof(Row)));
    CHECK_CUDA(cudaMemset(ring_k, 0, size_t(B * Hkv * W * D) * sizeof(Row)));
    CHECK_CUDA(cudaMemset(ring_v, 0, size_t(B * Hkv * W * D) * sizeof(Row)));
  }
  // Pages shuffled across heads, as a long-running pool would hand them out.
  std::vector<int32_t> order(static_cast<size_t>(n_pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(1));
  std::vector<int32_t> indptr{0}, pages;
  const std::vector<int32_t> len(static_cast<size_t>(B * Hkv), int32_t(stored)), ring_len(static_cast<size_t>(B), int32_t(W));
  for (int64_t i = 0; i < B * Hkv; ++i) {
    pages.insert(pages.end(), order.begin() + i * pages_per_head, order.begin() + (i + 1) * pages_per_head);
    indptr.push_back(int32_t(pages.size()));
  }
  std::vector<const Row*> pk, pv;
  for (int64_t p = 0; p < n_pages; ++p) pk.push_back(k_pool + p * P * D), pv.push_back(v_pool + p * P * D);
  std::vector<Row> q(size_t(B * H * D));
  for (Row& x : q) store(&x, 0.01f);
  DecodeParamsT<Row> p;
  p.H = H, p.scale = 1.0f / std::sqrt(float(D));
  p.q = upload(q);
  CHECK_CUDA(cudaMalloc(&p.y, size_t(B * H * D) * sizeof(Row)));
  CacheViewT<Row>& c = p.cache;
  c.n_seq = B, c.Hkv = Hkv, c.D = D, c.W = W, c.page_size = P;
  c.ring_k = ring_k, c.ring_v = ring_v, c.ring_len = upload(ring_len);
  c.page_k = upload(pk), c.page_v = upload(pv);
  c.store_indptr = upload(indptr), c.store_pages = upload(pages), c.store_len = upload(len);
  const int64_t splits = cuda::decode_splits(ring + stored);  // as the engine's cache picks them
  const int64_t ws = cuda::decode_workspace_floats(B, H, D, splits);
  float* work;
  CHECK_CUDA(cudaMalloc(&work, size_t(ws) * sizeof(float)));
  Result r;
  r.ms = time_ms(iters, [&] {
    if (cuda::decode_attention(p, splits, work, ws, nullptr) != Status::ok) std::exit(1);
  });
  r.bytes = double(B * Hkv * (ring + stored)) * D * 2 * sizeof(Row);
  for (void* ptr : {(void*)k_pool, (void*)v_pool, (void*)ring_k, (void*)ring_v, (void*)p.q, (void*)p.y, (void*)c.ring_len,
                    (void*)c.page_k, (void*)c.page_v, (void*)c.store_indptr, (void*)c.store_pages, (void*)c.store_len, (void*)work})
    cudaFree(ptr);
  return r;
}

double copy_bandwidth() {  // bytes per second of a 1 GiB device-to-device copy (read + write counted)
  const size_t n = size_t(1) << 30;
  void *a, *b;
  CHECK_CUDA(cudaMalloc(&a, n));
  CHECK_CUDA(cudaMalloc(&b, n));
  const float ms = time_ms(20, [&] { cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice); });
  cudaFree(a), cudaFree(b);
  return 2.0 * double(n) / (ms / 1e3);
}
}  // namespace

int main(int argc, char** argv) {
  const spkv::bench::Args args = spkv::bench::parse_args("spkv-decode-bench", argc, argv);
  const bool quick = args.quick, bf16_rows = args.bf16;
  const auto run_rows = bf16_rows ? run<bf16> : run<float>;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const double copy = copy_bandwidth();
  std::printf("device: %s, %d SMs; measured device-to-device copy: %.0f GB/s (read + write); %s rows\n", prop.name,
              prop.multiProcessorCount, copy / 1e9, bf16_rows ? "bf16" : "float32");
  std::printf("| batch | context | density | dense ms | SP-KV ms | speedup | dense GB/s (%% of copy) | SP-KV GB/s (%% of copy) |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  const int64_t W = 128;
  const std::vector<int64_t> contexts = quick ? std::vector<int64_t>{4096, 32768} : std::vector<int64_t>{1024, 4096, 16384, 32768};
  for (int64_t B : {int64_t(1), int64_t(16)})
    for (int64_t T : contexts) {
      const Result dense = run_rows(B, 0, T, quick ? 20 : 100);
      for (double rho : {0.10, 0.25, 0.50}) {
        const Result sp = run_rows(B, W, int64_t(std::llround(rho * double(T - W))), quick ? 20 : 100);
        const double bw_d = dense.bytes / (dense.ms / 1e3), bw_s = sp.bytes / (sp.ms / 1e3);
        std::printf("| %lld | %lld | %.2f | %.4f | %.4f | %.2fx | %.0f (%.0f%%) | %.0f (%.0f%%) |\n", (long long)B, (long long)T, rho,
                    dense.ms, sp.ms, dense.ms / sp.ms, bw_d / 1e9, 100 * bw_d / copy, bw_s / 1e9, 100 * bw_s / copy);
      }
    }
  return 0;
}
