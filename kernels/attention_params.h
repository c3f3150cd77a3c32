// The params struct shared by the CPU and CUDA gated-attention kernels: raw pointers, sizes and strides
// (in elements), FlashInfer-style. Kernels trust their inputs; adapters validate. No LibTorch here.
// Rows (q, k, v, y and their gradients) are float32, or bf16 on the GPU (the T of the *T structs); gate
// biases, lse and every accumulation stay float32.
#pragma once
#include <cstdint>

#include "kernels/bf16.h"

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
template <class Row>
struct GatedAttentionParamsT {
  const Row* q = nullptr;     // (B, H, T, D)
  const Row* k = nullptr;     // (B, Hkv, S, D)
  const Row* v = nullptr;     // (B, Hkv, S, D)
  const uint8_t* keep = nullptr;  // (B, Hkv, S) or nullptr
  const int64_t* q_pos = nullptr;  // (T)
  const int64_t* k_pos = nullptr;  // (S)
  Row* y = nullptr;           // (B, H, T, D)
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
template <class Row>
struct GatedAttentionGradParamsT {
  GatedAttentionParamsT<Row> fwd;
  const Row* dy = nullptr;            // (B, H, T, D), y's strides
  Row* dq = nullptr;                  // (B, H, T, D), q's strides
  Row* dk = nullptr;                  // (B, Hkv, S, D), k's strides
  Row* dv = nullptr;                  // (B, Hkv, S, D), v's strides
  float* d_far_bias = nullptr;        // (B, Hkv, S), far_bias's strides; nullptr: not wanted
  float* delta = nullptr;             // (B, H, T) workspace of the GPU backward: sum_d dy * y
};

using GatedAttentionParams = GatedAttentionParamsT<float>;
using GatedAttentionGradParams = GatedAttentionGradParamsT<float>;

// The pointers every kernel needs are set, the head counts divide (H a multiple of Hkv, D > 0) and at most
// one of keep and far_bias is set. Kernels answer Status::invalid_argument otherwise; adapters check shapes
// and devices first.
template <class Row>
bool valid(const GatedAttentionParamsT<Row>& p) {
  return p.q && p.k && p.v && p.y && p.q_pos && p.k_pos && p.Hkv > 0 && p.H % p.Hkv == 0 && p.D > 0 &&
         !(p.keep && p.far_bias);
}
// ... and dy, dq, dk, dv are set; d_far_bias only with far_bias.
template <class Row>
bool valid(const GatedAttentionGradParamsT<Row>& g) {
  return valid(g.fwd) && g.dy && g.dq && g.dk && g.dv && (g.fwd.far_bias || !g.d_far_bias);
}
// Whether p uses only what every kernel supports (no far_bias, k_begin or lse): the fast CPU path and the
// CUDA reference answer Status::unsupported otherwise.
template <class Row>
bool hard_only(const GatedAttentionParamsT<Row>& p) {
  return !p.far_bias && !p.k_begin && !p.lse;
}

// Fills the strides of p for contiguous (B, H|Hkv, T|S, D) tensors and a contiguous keep mask and far_bias.
template <class Row>
void set_contiguous_strides(GatedAttentionParamsT<Row>& p) {
  p.q_st = p.D, p.q_sh = p.T * p.D, p.q_sb = p.H * p.T * p.D;
  p.y_st = p.q_st, p.y_sh = p.q_sh, p.y_sb = p.q_sb;
  p.k_st = p.D, p.k_sh = p.S * p.D, p.k_sb = p.Hkv * p.S * p.D;
  p.v_st = p.k_st, p.v_sh = p.k_sh, p.v_sb = p.k_sb;
  p.keep_sh = p.S, p.keep_sb = p.Hkv * p.S;
  p.bias_sh = p.keep_sh, p.bias_sb = p.keep_sb;
}

}  // namespace spkv::kernels
