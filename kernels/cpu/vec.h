// The vector building blocks of the fast CPU kernels (attention_fast.cpp, decode_step.cpp): matrix-vector
// rows, blocks of scores, the exponential of shifted scores, weighted sums of value rows, and the online-
// softmax steps of prefill (a key block for a query tile) and decode (a cache segment). Each is compiled for AVX-512,
// AVX2+FMA and the x86-64 baseline and picked at run time on the machine the binary runs on (GCC function
// multi-versioning), so a portable build still uses the vector units it finds. Sums run in sixteen
// interleaved partial sums, written out so that the compiler vectorizes them without being allowed to
// reassociate anything itself (no -ffast-math): results differ from a sequential sum in the last bits only.
// Single-threaded; the callers split work across threads.
#pragma once
#include <cstdint>

namespace spkv::kernels::cpu {

// y[r] = W[r, :] . x (+ bias[r]) for rows r in [r0, r1). W: rows of n, ld apart.
void matvec_rows(const float* W, int64_t ld, const float* x, const float* bias, int64_t r0, int64_t r1, int64_t n,
                 float* y);

// S (nq, kKeys) = Q (nq, D; rows ldq apart) @ Kt (D, kKeys): the scores of a block of queries against a block
// of kKeys keys stored transposed (each key a column), four queries per pass over Kt.
constexpr int64_t kKeys = 32;
void scores_block(const float* Q, int64_t ldq, int64_t nq, const float* Kt, int64_t D, float* S);

// s[i] = exp(s[i] - shift) for i < n, in place; returns their sum. -inf entries become 0. The exponential is
// a degree-6 polynomial after range reduction (Cephes' expf): relative error below 2e-7 for arguments in
// [-87, 88]; arguments below -87 give 0.
float exp_shifted(float* s, int64_t n, float shift);

// One block of keys for nr query rows, online softmax: S (nr, kKeys) holds the rows' scaled scores, -inf
// where a key is invisible (and in the columns from ns on). Updates each row's running max m, running sum
// l and accumulator acc (nr, D) with the block's values V (ns rows, ld apart); S is overwritten.
void softmax_values_block(float* S, int64_t nr, int64_t ns, const float* V, int64_t ld, int64_t D, float* m, float* l,
                          float* acc);

// acc (D) += sum_r w[r] * V[r, :] for r < rows. V: rows of D, ld apart.
void accumulate_rows(const float* w, const float* V, int64_t ld, int64_t rows, int64_t D, float* acc);

// Decode's online softmax over one segment of a head's cache (the ring, or a store page): for each of the G
// query heads q (G, D) of a KV head, the scores against K (rows, D), then the running max m (G), sum l (G)
// and accumulator acc (G, D) updated with V (rows, D). s: scratch of at least `rows` floats.
void attend_rows(const float* q, int64_t G, const float* K, const float* V, int64_t rows, int64_t D, float scale, float* m,
                 float* l, float* acc, float* s);

}  // namespace spkv::kernels::cpu
