// The params struct shared by the CPU and CUDA gated-attention kernels: raw pointers, sizes and strides
// (in elements), FlashInfer-style. Kernels trust their inputs; adapters validate. No LibTorch here.
#pragma once
#include <cstdint>

namespace spkv::kernels {

enum class Status { ok = 0, invalid_argument, unsupported, device_error };
const char* to_string(Status s);

// y[b, h, t, :] = softmax_s(q[b,h,t,:] . k[b,hk,s,:] * scale + bias(b,hk,t,s)) @ v[b,hk,s,:],
// hk = h / (H / Hkv). Key s is visible to query t iff k_pos[s] <= q_pos[t] and either
// q_pos[t] - k_pos[s] < window (window <= 0: no window, every causal key is "local")
// or keep[b, hk, s] != 0 (keep == nullptr: nothing outside the window is kept).
// A query that sees no key gets y = 0.
struct GatedAttentionParams {
  const float* q = nullptr;   // (B, H, T, D)
  const float* k = nullptr;   // (B, Hkv, S, D)
  const float* v = nullptr;   // (B, Hkv, S, D)
  const uint8_t* keep = nullptr;  // (B, Hkv, S) or nullptr
  const int64_t* q_pos = nullptr;  // (T)
  const int64_t* k_pos = nullptr;  // (S)
  float* y = nullptr;         // (B, H, T, D)
  int64_t B = 0, H = 0, Hkv = 0, T = 0, S = 0, D = 0;
  int64_t window = 0;
  float scale = 0.0f;         // usually 1 / sqrt(D)
  // Strides in elements: batch, head, token. The last dim (D) is contiguous.
  int64_t q_sb = 0, q_sh = 0, q_st = 0;
  int64_t k_sb = 0, k_sh = 0, k_st = 0;
  int64_t v_sb = 0, v_sh = 0, v_st = 0;
  int64_t y_sb = 0, y_sh = 0, y_st = 0;
  int64_t keep_sb = 0, keep_sh = 0;
};

// The pointers every kernel needs are set and the head counts divide (H a multiple of Hkv, D > 0). Kernels
// answer Status::invalid_argument otherwise; adapters check shapes and devices first.
bool valid(const GatedAttentionParams& p);

// Fills the strides of p for contiguous (B, H|Hkv, T|S, D) tensors and a contiguous keep mask.
void set_contiguous_strides(GatedAttentionParams& p);

}  // namespace spkv::kernels
