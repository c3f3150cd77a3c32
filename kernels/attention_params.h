// The params struct shared by the CPU and CUDA gated-attention kernels: raw pointers, sizes and strides
// (in elements), FlashInfer-style. Kernels trust their inputs; adapters validate. No LibTorch here.
#pragma once
#include <cstdint>

namespace spkv::kernels {

enum class Status { ok = 0, invalid_argument, unsupported, device_error };
const char* to_string(Status s);

// y[b, h, t, :] = softmax_s(q[b,h,t,:] . k[b,hk,s,:] * scale + bias(b,hk,t,s)) @ v[b,hk,s,:],
// hk = h / (H / Hkv). Key s is visible to query t iff k_pos[s] <= q_pos[t], s >= k_begin[b, t] (when
// k_begin is set), and either
//  - it is local: q_pos[t] - k_pos[s] < window (window <= 0: no window, every causal key is local), bias 0;
//  - or it is far and its gate lets it through:
//    hard gates (far_bias == nullptr): keep[b, hk, s] != 0 (keep == nullptr: nothing far is kept), bias 0;
//    soft gates (far_bias set, keep == nullptr): bias = far_bias[b, hk, s], visible unless it is -inf.
// A query that sees no key gets y = 0 (and lse = -inf).
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
  // Soft gates, for training: the additive bias of far keys, e.g. log(u + 1e-8) (B, Hkv, S), or nullptr.
  const float* far_bias = nullptr;
  int64_t bias_sb = 0, bias_sh = 0;
  // Packed documents: the first key index each query may see (B, T) contiguous, or nullptr (key 0).
  const int64_t* k_begin = nullptr;
  // Optional output: log sum_s exp(score) of each query (B, H, T) contiguous, -inf when it sees no key. The
  // GPU backward reads it.
  float* lse = nullptr;
};

// The backward of gated attention: from dy, the gradients of q, k, v and far_bias. The forward's params
// are `fwd`, with y and lse as the forward wrote them. Gradients use the strides of the tensor they belong to.
struct GatedAttentionGradParams {
  GatedAttentionParams fwd;
  const float* dy = nullptr;          // (B, H, T, D), y's strides
  float* dq = nullptr;                // (B, H, T, D), q's strides
  float* dk = nullptr;                // (B, Hkv, S, D), k's strides
  float* dv = nullptr;                // (B, Hkv, S, D), v's strides
  float* d_far_bias = nullptr;        // (B, Hkv, S), far_bias's strides; nullptr: not wanted
  float* delta = nullptr;             // (B, H, T) workspace of the GPU backward: sum_d dy * y
};

// The pointers every kernel needs are set, the head counts divide (H a multiple of Hkv, D > 0) and at most
// one of keep and far_bias is set. Kernels answer Status::invalid_argument otherwise; adapters check shapes
// and devices first.
bool valid(const GatedAttentionParams& p);
// ... and dy, dq, dk, dv are set; d_far_bias only with far_bias.
bool valid(const GatedAttentionGradParams& p);
// Whether p uses only what every kernel supports (no far_bias, k_begin or lse): the fast CPU path and the
// CUDA reference answer Status::unsupported otherwise.
bool hard_only(const GatedAttentionParams& p);

// Fills the strides of p for contiguous (B, H|Hkv, T|S, D) tensors and a contiguous keep mask and far_bias.
void set_contiguous_strides(GatedAttentionParams& p);

}  // namespace spkv::kernels
