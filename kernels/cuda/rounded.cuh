// Calls a kernel launcher compiled for a size rounded up to 1, 2, 4 or 8: the decode and prefill kernels
// are compiled for the group size (and the prefill kernels for D / 32) in those four steps.
#pragma once
#include <cstdint>
#include <type_traits>

namespace spkv::kernels::cuda {

// f(std::integral_constant<int, R>) with R = n rounded up to 1, 2, 4 or 8; n must be in [1, 8].
template <class F>
inline void with_rounded(int64_t n, F f) {
  if (n <= 1) f(std::integral_constant<int, 1>{});
  else if (n <= 2) f(std::integral_constant<int, 2>{});
  else if (n <= 4) f(std::integral_constant<int, 4>{});
  else f(std::integral_constant<int, 8>{});
}

}  // namespace spkv::kernels::cuda
