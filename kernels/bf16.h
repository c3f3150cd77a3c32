// bfloat16 rows for the GPU kernels: storage only (the upper half of a float32, as LibTorch's at::BFloat16),
// converted on load and rounded to nearest even on store; the arithmetic is float32. Host and device.
#pragma once
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define SPKV_HOST_DEVICE __host__ __device__
#else
#define SPKV_HOST_DEVICE
#endif

namespace spkv::kernels {

struct bf16 {
  uint16_t bits;
};

SPKV_HOST_DEVICE inline float to_float(float x) { return x; }
SPKV_HOST_DEVICE inline float to_float(bf16 x) {
  const uint32_t u = uint32_t(x.bits) << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

SPKV_HOST_DEVICE inline bf16 to_bf16(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40u)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

SPKV_HOST_DEVICE inline void store(float* p, float x) { *p = x; }
SPKV_HOST_DEVICE inline void store(bf16* p, float x) { *p = to_bf16(x); }

}  // namespace spkv::kernels
