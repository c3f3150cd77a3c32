// The fused CPU decode step: one new token of one sequence through a Llama-family decoder layer, over raw
// float32 weight pointers and caller-owned buffers: no allocation, no LibTorch, no operator dispatch. The
// engine's CPU decode (one token per sequence) runs it layer by layer:
//   decode_qkv      RMSNorm, the q/k/v projections (+ biases), RoPE, the SP-KV utility predictor;
//   (the engine)    the keep decision, the cache append, decode_attention (attention_fast.h);
//   decode_out      the output projection, the residual, RMSNorm, the SwiGLU MLP, the residual;
//   decode_logits   the final RMSNorm and the classifier.
// The specification is the model's LibTorch forward (core/model/model.cpp); tests compare the engine with
// and without this path. Not prefill (T > 1 tokens go through the model's layers and gated_attention).
// Matrices are row-major (out, in), as Hugging Face stores them. The hot loops are compiled for AVX-512,
// AVX2+FMA and the x86-64 baseline and picked at run time (function multi-versioning).
#pragma once
#include <cstdint>

namespace spkv::kernels::cpu {

struct DecodeDims {
  int64_t C = 0, F = 0;                 // model width, MLP width
  int64_t H = 0, Hkv = 0, D = 0;        // query heads, KV heads, head size
  int64_t P = 0;                        // utility predictor: hidden width (0: the 1-layer variant)
  float eps = 1e-5f;                    // RMSNorm
  bool interleaved_rope = false;        // llama2.c pairs (2i, 2i+1); Hugging Face (i, i + D/2)
  bool tap_residual = false;            // the predictor reads the layer input instead of its norm
};

struct DecodeLayerWeights {
  const float* attn_norm = nullptr;             // (C)
  const float *wq = nullptr, *wk = nullptr, *wv = nullptr;  // (H*D, C), (Hkv*D, C), (Hkv*D, C)
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr;  // (H*D), (Hkv*D), (Hkv*D); null: no bias
  const float* wo = nullptr;                    // (C, H*D)
  const float* mlp_norm = nullptr;              // (C)
  const float *w_gate = nullptr, *w_up = nullptr;  // (F, C)
  const float* w_down = nullptr;                // (C, F)
  // Utility predictor, null without SP-KV: u = sigmoid(fc2(silu(fc1(h)))), or sigmoid(fc1(h)) when P = 0.
  const float *u_w1 = nullptr, *u_b1 = nullptr;  // (P, C), (P); or (Hkv, C), (Hkv)
  const float *u_w2 = nullptr, *u_b2 = nullptr;  // (Hkv, P), (Hkv)
};

// Buffers of one token, sized by the dims; contents are overwritten.
struct DecodeBuffers {
  float* xn = nullptr;   // (C) normalized residual
  float* q = nullptr;    // (H*D)
  float* k = nullptr;    // (Hkv*D)
  float* v = nullptr;    // (Hkv*D)
  float* u = nullptr;    // (Hkv) gate scores; written only with a predictor
  float* y = nullptr;    // (H*D) attention output (decode_attention writes it)
  float* h1 = nullptr;   // (max(F, P, C))
  float* h2 = nullptr;   // (F)
};

// x (C): the token's residual stream. cos, sin (D/2): the RoPE row of its position.
void decode_qkv(const DecodeDims& d, const DecodeLayerWeights& w, const float* x, const float* cos, const float* sin,
                const DecodeBuffers& b);
// Adds the attention (from b.y) and the MLP to x (C), in place.
void decode_out(const DecodeDims& d, const DecodeLayerWeights& w, float* x, const DecodeBuffers& b);
// logits (V) = lm_head (V, C) @ RMSNorm(x; norm). x is left unchanged.
void decode_logits(const DecodeDims& d, const float* norm, const float* lm_head, int64_t V, const float* x,
                   const DecodeBuffers& b, float* logits);

// y (rows) = W (rows, n) @ x (n) (+ bias when not null). Parallel over rows (OpenMP) only when the product
// is large enough to pay for the threads' start-up (docs/design.md, "Threads").
void matvec(const float* W, const float* x, const float* bias, int64_t rows, int64_t n, float* y);

}  // namespace spkv::kernels::cpu
