// What the CUDA benchmarks (spkv-decode-bench, spkv-prefill-bench) share: their arguments, a CUDA error check
// that exits with the call's place, an upload of a host vector, and timing with CUDA events. Benchmark
// programs only.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define CHECK_CUDA(x)                                                                  \
  do {                                                                                 \
    cudaError_t e_ = (x);                                                              \
    if (e_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

namespace spkv::bench {

struct Args {
  bool quick = false;         // --quick: fewer sizes
  bool bf16 = false;          // --bf16: bf16 rows instead of float32
  bool tensor_cores = false;  // --tensor-cores (where the program offers it): also the tensor-core kernel
};

// [--quick] [--bf16] [--tensor-cores, with offer_tensor_cores]; anything else exits 2, and a host without a
// CUDA device exits 1, naming the program.
inline Args parse_args(const char* program, int argc, char** argv, bool offer_tensor_cores = false) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) a.quick = true;
    else if (std::strcmp(argv[i], "--bf16") == 0) a.bf16 = true;
    else if (offer_tensor_cores && std::strcmp(argv[i], "--tensor-cores") == 0) a.tensor_cores = true;
    else {
      std::fprintf(stderr, "%s: unknown argument %s (expected --quick, --bf16%s)\n", program, argv[i],
                   offer_tensor_cores ? ", --tensor-cores" : "");
      std::exit(2);
    }
  }
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::fprintf(stderr, "%s: no CUDA device\n", program);
    std::exit(1);
  }
  return a;
}

template <class T>
T* upload(const std::vector<T>& h) {
  T* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(T)));
  if (!h.empty()) CHECK_CUDA(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

inline float time_ms(int iters, const std::function<void()>& f) {  // mean of iters calls, after a warm-up
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  f();
  CHECK_CUDA(cudaDeviceSynchronize());
  cudaEventRecord(a);
  for (int i = 0; i < iters; ++i) f();
  cudaEventRecord(b);
  CHECK_CUDA(cudaEventSynchronize(b));
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a), cudaEventDestroy(b);
  return ms / float(iters);
}

}  // namespace spkv::bench
