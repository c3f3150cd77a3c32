// Device copies of host vectors for the *_CUDA tests, freed with the holder; and the largest difference
// between a result and its reference, NaN when an element was not written (outputs are poisoned with NaN).
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace spkv::kernels::test {

struct Device {
  std::vector<void*> owned;
  Device() = default;
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  ~Device() {
    for (void* p : owned) cudaFree(p);
  }
  template <class T>
  T* copy(const std::vector<T>& h) {
    T* d = nullptr;
    EXPECT_EQ(cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(T)), cudaSuccess);
    if (!h.empty()) cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
    owned.push_back(d);
    return d;
  }
  template <class T>
  std::vector<T> back(const T* d, size_t n) {
    std::vector<T> h(n);
    cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
};

// max |got - want| relative to max |want| (absolute when want is all zero); NaN if any got is NaN where
// want is not.
inline double max_rel_error(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::abs(double(got[i]) - double(want[i]));
    if (std::isnan(e)) return NAN;
    err = std::max(err, e), scale = std::max(scale, std::abs(double(want[i])));
  }
  return scale > 0 ? err / scale : err;
}

}  // namespace spkv::kernels::test
