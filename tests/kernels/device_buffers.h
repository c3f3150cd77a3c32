// Device copies of host vectors for the *_CUDA tests, freed with the holder; float32 <-> bf16 rows; and the
// largest difference between a result and its reference, NaN when an element was not written (outputs are
// poisoned with NaN).
#pragma once
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/bf16.h"

namespace spkv::kernels::test {

// Rows of type Row (float or bf16) from float32 values, and back.
template <class Row>
std::vector<Row> as_rows(const std::vector<float>& x) {
  std::vector<Row> out;
  for (float f : x) {
    if constexpr (std::is_same_v<Row, float>) out.push_back(f);
    else out.push_back(to_bf16(f));
  }
  return out;
}
template <class Row>
std::vector<float> as_floats(const std::vector<Row>& x) {
  std::vector<float> out;
  for (const Row& r : x) out.push_back(to_float(r));
  return out;
}
// Rounds values to what Row can hold, so that a float32 reference sees exactly the kernel's inputs.
template <class Row>
void round_to(std::vector<float>& x) {
  if constexpr (!std::is_same_v<Row, float>)
    for (float& f : x) f = to_float(to_bf16(f));
}

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
