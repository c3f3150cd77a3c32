// The fused CPU decode step (decode_step.h). Each matrix-vector product streams its weight rows once
// (vec.h's matvec_rows).
#include "kernels/cpu/decode_step.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/vec.h"

namespace spkv::kernels::cpu {
namespace {
// Below this many multiply-adds (about 40 us on one core) a product runs on the calling thread: starting
// the team costs more than it saves, and a team member that the OS has descheduled stalls it.
constexpr int64_t kParallelWork = int64_t(1) << 20;

// out = x * rsqrt(mean(x^2) + eps) * weight, as RMSNormImpl::forward.
void rmsnorm(const float* x, const float* weight, int64_t C, float eps, float* out) {
  float ss = 0.f;
  for (int64_t i = 0; i < C; ++i) ss += x[i] * x[i];
  const float r = 1.f / std::sqrt(ss / float(C) + eps);
  for (int64_t i = 0; i < C; ++i) out[i] = x[i] * r * weight[i];
}

// Rotates each of the n heads of x (n, D) in place by the position's cos/sin (D/2).
void rope(float* x, int64_t n, int64_t D, const float* cos, const float* sin, bool interleaved) {
  const int64_t half = D / 2;
  for (int64_t h = 0; h < n; ++h) {
    float* r = x + h * D;
    for (int64_t i = 0; i < half; ++i) {
      float* a = interleaved ? r + 2 * i : r + i;
      float* b = interleaved ? r + 2 * i + 1 : r + i + half;
      const float x0 = *a, x1 = *b;
      *a = x0 * cos[i] - x1 * sin[i];
      *b = x0 * sin[i] + x1 * cos[i];
    }
  }
}

inline float silu(float v) { return v / (1.f + std::exp(-v)); }
inline float sigmoid(float v) { return 1.f / (1.f + std::exp(-v)); }
}  // namespace

void matvec(const float* W, const float* x, const float* bias, int64_t rows, int64_t n, float* y) {
  if (rows * n < kParallelWork) return matvec_rows(W, n, x, bias, 0, rows, n, y);
  const int64_t blocks = (rows + 63) / 64;
#pragma omp parallel for schedule(dynamic)
  for (int64_t bl = 0; bl < blocks; ++bl) matvec_rows(W, n, x, bias, bl * 64, std::min(rows, (bl + 1) * 64), n, y);
}

void decode_qkv(const DecodeDims& d, const DecodeLayerWeights& w, const float* x, const float* cos, const float* sin,
                const DecodeBuffers& b) {
  rmsnorm(x, w.attn_norm, d.C, d.eps, b.xn);
  matvec(w.wq, b.xn, w.bq, d.H * d.D, d.C, b.q);
  matvec(w.wk, b.xn, w.bk, d.Hkv * d.D, d.C, b.k);
  matvec(w.wv, b.xn, w.bv, d.Hkv * d.D, d.C, b.v);
  rope(b.q, d.H, d.D, cos, sin, d.interleaved_rope);
  rope(b.k, d.Hkv, d.D, cos, sin, d.interleaved_rope);
  if (!w.u_w1) return;
  const float* h = d.tap_residual ? x : b.xn;
  if (d.P == 0) {
    matvec(w.u_w1, h, w.u_b1, d.Hkv, d.C, b.u);
  } else {
    matvec(w.u_w1, h, w.u_b1, d.P, d.C, b.h1);
    for (int64_t i = 0; i < d.P; ++i) b.h1[i] = silu(b.h1[i]);
    matvec(w.u_w2, b.h1, w.u_b2, d.Hkv, d.P, b.u);
  }
  for (int64_t i = 0; i < d.Hkv; ++i) b.u[i] = sigmoid(b.u[i]);
}

void decode_out(const DecodeDims& d, const DecodeLayerWeights& w, float* x, const DecodeBuffers& b) {
  matvec(w.wo, b.y, nullptr, d.C, d.H * d.D, b.h1);
  for (int64_t i = 0; i < d.C; ++i) x[i] += b.h1[i];
  rmsnorm(x, w.mlp_norm, d.C, d.eps, b.xn);
  matvec(w.w_gate, b.xn, nullptr, d.F, d.C, b.h1);
  matvec(w.w_up, b.xn, nullptr, d.F, d.C, b.h2);
  for (int64_t i = 0; i < d.F; ++i) b.h1[i] = silu(b.h1[i]) * b.h2[i];
  matvec(w.w_down, b.h1, nullptr, d.C, d.F, b.h2);
  for (int64_t i = 0; i < d.C; ++i) x[i] += b.h2[i];
}

void decode_logits(const DecodeDims& d, const float* norm, const float* lm_head, int64_t V, const float* x,
                   const DecodeBuffers& b, float* logits) {
  rmsnorm(x, norm, d.C, d.eps, b.xn);
  matvec(lm_head, b.xn, nullptr, V, d.C, logits);
}

}  // namespace spkv::kernels::cpu
