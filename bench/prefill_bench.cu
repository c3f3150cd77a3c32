// The CUDA gated prefill's speed, forward and backward (issue 22: measured before tensor-core work).
// Usage: spkv-prefill-bench [--quick] [--bf16 [--tensor-cores]]
// For a prompt of T tokens (1k, 4k, 16k; --quick: 1k, 4k) attending to itself, it times
// cuda::gated_attention and cuda::gated_attention_backward with CUDA events: plain causal attention (the
// dense baseline), then SP-KV with a window of 128 and hard gates keeping 10/25/50% of far keys at random. It
// counts the visible (query, key) pairs on the host and reports the achieved rate, 4 D FLOPs a pair and
// query head (QK and PV), against cuBLAS GEMMs run in the same invocation: float32 without tensor cores (the
// same arithmetic as the kernel) and bf16 on tensor cores (the ceiling a tiled prefill aims at). With bf16
// rows and --tensor-cores it also times the tensor-core forward (gated_attention_tc) on the same inputs: a
// separate flag, so that a fault in that kernel cannot take the warp kernel's numbers with it.
// Llama-3-8B-like heads: batch 1, H 32, Hkv 8, D 128; float32 rows (--bf16: bf16 rows).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <type_traits>
#include <vector>

#include "bench/cuda_bench.h"
#include "kernels/cuda/prefill.h"

using namespace spkv::kernels;

namespace {
using spkv::bench::time_ms;
using spkv::bench::upload;

constexpr int64_t H = 32, Hkv = 8, D = 128, W = 128;

struct Result {
  double fwd_ms = 0, bwd_ms = 0, pairs = 0;  // pairs: visible (query, key) pairs per KV head, summed
  double tc_ms = NAN;                        // the tensor-core forward (bf16 rows)
};

// One prompt of T tokens; density < 0: plain causal (no window, no gates).
template <class Row>
Result run(int64_t T, double density, int iters, bool tensor_cores) {
  std::mt19937 rng(7);
  std::normal_distribution<float> n;
  std::bernoulli_distribution open(density > 0 ? density : 0.0);
  std::vector<Row> q(size_t(H * T * D)), kv(size_t(Hkv * T * D));
  for (Row& x : q) store(&x, n(rng));
  for (Row& x : kv) store(&x, n(rng));
  std::vector<uint8_t> keep(size_t(Hkv * T));
  for (auto& x : keep) x = open(rng);
  std::vector<int64_t> pos(static_cast<size_t>(T));
  std::iota(pos.begin(), pos.end(), int64_t(0));
  Result r;
  for (int64_t hk = 0; hk < Hkv; ++hk) {  // visible pairs: the window plus the kept far keys before it
    int64_t kept_far = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (density < 0) {
        r.pairs += double(t + 1);
        continue;
      }
      if (t >= W) kept_far += keep[size_t(hk * T + t - W)];
      r.pairs += double(std::min(t + 1, W) + kept_far);
    }
  }
  GatedAttentionGradParamsT<Row> g;
  GatedAttentionParamsT<Row>& p = g.fwd;
  p.B = 1, p.H = H, p.Hkv = Hkv, p.T = T, p.S = T, p.D = D, p.scale = 1.0f / std::sqrt(float(D));
  p.window = density < 0 ? 0 : W;
  set_contiguous_strides(p);
  p.q = upload(q), p.k = upload(kv), p.v = upload(kv), p.q_pos = upload(pos), p.k_pos = p.q_pos;
  p.keep = density < 0 ? nullptr : upload(keep);
  Row *y, *dq, *dk, *dv;
  CHECK_CUDA(cudaMalloc(&y, q.size() * sizeof(Row)));
  CHECK_CUDA(cudaMalloc(&dq, q.size() * sizeof(Row)));
  CHECK_CUDA(cudaMalloc(&dk, kv.size() * sizeof(Row)));
  CHECK_CUDA(cudaMalloc(&dv, kv.size() * sizeof(Row)));
  CHECK_CUDA(cudaMalloc(&p.lse, size_t(H * T) * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&g.delta, size_t(H * T) * sizeof(float)));
  p.y = y, g.dy = p.q, g.dq = dq, g.dk = dk, g.dv = dv;
  r.fwd_ms = time_ms(iters, [&] {
    if (cuda::gated_attention(p, nullptr) != Status::ok) std::exit(1);
  });
  r.bwd_ms = time_ms(iters, [&] {
    if (cuda::gated_attention_backward(g, nullptr) != Status::ok) std::exit(1);
  });
  if constexpr (std::is_same_v<Row, bf16>) {
    if (tensor_cores) {
      r.tc_ms = time_ms(iters, [&] {
        if (cuda::gated_attention_tc(p, nullptr) != Status::ok) std::exit(1);
      });
    }
  }
  for (const void* ptr : {(const void*)p.q, (const void*)p.k, (const void*)p.q_pos, (const void*)p.keep, (const void*)y,
                          (const void*)dq, (const void*)dk, (const void*)dv, (const void*)p.lse, (const void*)g.delta})
    cudaFree(const_cast<void*>(ptr));
  return r;
}

// FLOP/s of an n x n x n cuBLAS GEMM: float32 with tensor cores off, or bf16 inputs on tensor cores.
double gemm_rate(bool bf16_inputs) {
  const int n = 4096;
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return NAN;
  cublasSetMathMode(h, bf16_inputs ? CUBLAS_DEFAULT_MATH : CUBLAS_PEDANTIC_MATH);
  const size_t elem = bf16_inputs ? sizeof(__nv_bfloat16) : sizeof(float);
  void *a, *b;
  float* c;
  CHECK_CUDA(cudaMalloc(&a, size_t(n) * n * elem));
  CHECK_CUDA(cudaMalloc(&b, size_t(n) * n * elem));
  CHECK_CUDA(cudaMalloc(&c, size_t(n) * n * sizeof(float)));
  CHECK_CUDA(cudaMemset(a, 0x3c, size_t(n) * n * elem));  // 0.0115 in both types
  CHECK_CUDA(cudaMemset(b, 0x3c, size_t(n) * n * elem));
  const float one = 1.f, zero = 0.f;
  const cudaDataType in = bf16_inputs ? CUDA_R_16BF : CUDA_R_32F;
  const cublasComputeType_t compute = bf16_inputs ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_PEDANTIC;
  bool ok = true;
  const float ms = time_ms(10, [&] {
    ok = ok && cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, in, n, b, in, n, &zero, c, CUDA_R_32F, n,
                            compute, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
  });
  cudaFree(a), cudaFree(b), cudaFree(c), cublasDestroy(h);
  return ok ? 2.0 * double(n) * n * n / (ms / 1e3) : NAN;
}
}  // namespace

int main(int argc, char** argv) {
  const auto [quick, bf16_rows, tensor_cores] = spkv::bench::parse_args("spkv-prefill-bench", argc, argv, true);
  const auto run_rows = bf16_rows ? run<bf16> : run<float>;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const double f32 = gemm_rate(false), tc = gemm_rate(true);
  std::printf("device: %s; cuBLAS 4096^3 GEMM: float32 %.1f TFLOP/s (no tensor cores), bf16 %.1f TFLOP/s (tensor "
              "cores); %s rows; H %lld, Hkv %lld, D %lld, window %lld\n",
              prop.name, f32 / 1e12, tc / 1e12, bf16_rows ? "bf16" : "float32", (long long)H, (long long)Hkv,
              (long long)D, (long long)W);
  std::printf("| tokens | keys | visible pairs | forward ms | TFLOP/s (%% of f32 GEMM, of bf16 GEMM) | backward ms | "
              "SP-KV speedup fwd / bwd | tensor-core fwd ms (speedup) |\n|---|---|---|---|---|---|---|---|\n");
  const std::vector<int64_t> lengths = quick ? std::vector<int64_t>{1024, 4096} : std::vector<int64_t>{1024, 4096, 16384};
  for (int64_t T : lengths) {
    const int iters = T >= 16384 ? 3 : 10;
    const Result dense = run_rows(T, -1, iters, tensor_cores);
    for (double rho : {-1.0, 0.10, 0.25, 0.50}) {
      const Result r = rho < 0 ? dense : run_rows(T, rho, iters, tensor_cores);
      const double flops = 4.0 * D * double(H / Hkv) * r.pairs, rate = flops / (r.fwd_ms / 1e3);
      char keys[32];
      std::snprintf(keys, sizeof keys, rho < 0 ? "causal" : "%.0f%% far", 100 * rho);
      char tc_col[48] = "-";
      if (!std::isnan(r.tc_ms)) std::snprintf(tc_col, sizeof tc_col, "%.3f (%.1fx)", r.tc_ms, r.fwd_ms / r.tc_ms);
      std::printf("| %lld | %s | %.3g | %.3f | %.2f (%.0f%%, %.1f%%) | %.3f | %.2fx / %.2fx | %s |\n", (long long)T, keys,
                  r.pairs * double(H / Hkv), r.fwd_ms, rate / 1e12, 100 * rate / f32, 100 * rate / tc, r.bwd_ms,
                  dense.fwd_ms / r.fwd_ms, dense.bwd_ms / r.bwd_ms, tc_col);
    }
  }
  return 0;
}
