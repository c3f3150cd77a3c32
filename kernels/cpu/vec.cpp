// The multi-versioned vector loops (vec.h).
#include "kernels/cpu/vec.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>

#define SPKV_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

namespace spkv::kernels::cpu {
namespace {
// Sixteen floats as one value (GCC vector extensions): 1 AVX-512, 2 AVX2 or 4 SSE registers, per clone.
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));  // the same, at any float address
typedef int32_t i16 __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

// Inlined into each clone, so that each is compiled for that clone's instructions.
#define SPKV_INLINE inline __attribute__((always_inline))
SPKV_INLINE v16 load(const float* p) { return *reinterpret_cast<const v16u*>(p); }
SPKV_INLINE void store(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }

// The sum of the sixteen lanes as a tree.
SPKV_INLINE float hsum(v16 v) {
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15);
  v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  return v[0] + v[1];
}

// exp(x) lane by lane for x in [-87, 88]. Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, e^r by a degree-6
// polynomial, times 2^n through the exponent bits.
template <class V, class I>
SPKV_INLINE V exp_poly(V x) {
  const V n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest (1.5 * 2^23)
  const V r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  if constexpr (std::is_same_v<V, float>) {
    const int32_t bits = (int32_t(n) + 127) << 23;
    float two_n;
    std::memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
  } else {
    return p * (V)((__builtin_convertvector(n, I) + 127) << 23);  // a vector cast reinterprets the bits
  }
}
// One row of softmax_values_block: its new running max m, its weights exp(s - m) in place (kKeys of them),
// their sum added to l; returns the factor that rescales what the row held before (1 when m did not move).
SPKV_INLINE float row_weights(float* sr, float& m, float& l) {
  constexpr float lo = -87.f;
  const v16 a = load(sr), b = load(sr + kLanes);
  const v16 mx = a > b ? a : b;
  float bmax = mx[0];
  for (int64_t j = 1; j < kLanes; ++j) bmax = bmax > mx[j] ? bmax : mx[j];
  const float new_m = m > bmax ? m : bmax;
  if (new_m == -std::numeric_limits<float>::infinity()) {  // nothing visible to this row yet
    store(sr, v16{}), store(sr + kLanes, v16{});
    return 1.f;
  }
  float rescale = 1.f;
  if (new_m > m && l > 0) rescale = exp_poly<float, int32_t>(std::max(m - new_m, lo)), l *= rescale;
  m = new_m;
  const v16 xa = a - new_m, xb = b - new_m;
  const v16 ea = xa < lo ? v16{} : exp_poly<v16, i16>(xa < lo ? lo : xa);
  const v16 eb = xb < lo ? v16{} : exp_poly<v16, i16>(xb < lo ? lo : xb);
  store(sr, ea), store(sr + kLanes, eb);
  l += hsum(ea + eb);
  return rescale;
}
}  // namespace

namespace {
SPKV_INLINE void matvec_rows_inl(const float* W, int64_t ld, const float* x, const float* bias, int64_t r0, int64_t r1,
                                 int64_t n, float* y) {
  const int64_t n16 = n - n % kLanes;
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {  // four rows share each load of x
    const float *w0 = W + r * ld, *w1 = w0 + ld, *w2 = w1 + ld, *w3 = w2 + ld;
    v16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t i = 0; i < n16; i += kLanes) {
      const v16 xv = load(x + i);
      a0 += load(w0 + i) * xv, a1 += load(w1 + i) * xv, a2 += load(w2 + i) * xv, a3 += load(w3 + i) * xv;
    }
    float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
    for (int64_t i = n16; i < n; ++i) s0 += w0[i] * x[i], s1 += w1[i] * x[i], s2 += w2[i] * x[i], s3 += w3[i] * x[i];
    y[r] = s0, y[r + 1] = s1, y[r + 2] = s2, y[r + 3] = s3;
  }
  for (; r < r1; ++r) {
    const float* w0 = W + r * ld;
    v16 a0 = {};
    for (int64_t i = 0; i < n16; i += kLanes) a0 += load(w0 + i) * load(x + i);
    float s0 = hsum(a0);
    for (int64_t i = n16; i < n; ++i) s0 += w0[i] * x[i];
    y[r] = s0;
  }
  if (bias)
    for (r = r0; r < r1; ++r) y[r] += bias[r];
}

SPKV_INLINE float exp_shifted_inl(float* s, int64_t n, float shift) {
  constexpr float lo = -87.f;
  const int64_t n16 = n - n % kLanes;
  v16 sum = {};
  for (int64_t i = 0; i < n16; i += kLanes) {
    const v16 x = load(s + i) - shift;  // -inf stays -inf, and maps to 0
    const v16 e = x < lo ? v16{} : exp_poly<v16, i16>(x < lo ? lo : x);
    store(s + i, e);
    sum += e;
  }
  float total = hsum(sum);
  for (int64_t i = n16; i < n; ++i) {
    const float x = s[i] - shift;
    s[i] = x < lo ? 0.f : exp_poly<float, int32_t>(x);
    total += s[i];
  }
  return total;
}

SPKV_INLINE void accumulate_rows_inl(const float* w, const float* V, int64_t ld, int64_t rows, int64_t D, float* acc) {
  const int64_t D16 = D - D % kLanes;
  for (int64_t d = 0; d < D16; d += kLanes) {  // sixteen columns at a time, held in a register over the rows
    v16 a = load(acc + d);
    for (int64_t r = 0; r < rows; ++r) a += w[r] * load(V + r * ld + d);
    store(acc + d, a);
  }
  for (int64_t d = D16; d < D; ++d)
    for (int64_t r = 0; r < rows; ++r) acc[d] += w[r] * V[r * ld + d];
}

}  // namespace

SPKV_MULTIVERSION
void matvec_rows(const float* W, int64_t ld, const float* x, const float* bias, int64_t r0, int64_t r1, int64_t n,
                 float* y) {
  matvec_rows_inl(W, ld, x, bias, r0, r1, n, y);
}

SPKV_MULTIVERSION
float exp_shifted(float* s, int64_t n, float shift) { return exp_shifted_inl(s, n, shift); }

SPKV_MULTIVERSION
void accumulate_rows(const float* w, const float* V, int64_t ld, int64_t rows, int64_t D, float* acc) {
  accumulate_rows_inl(w, V, ld, rows, D, acc);
}

SPKV_MULTIVERSION
void attend_rows(const float* q, int64_t G, const float* K, const float* V, int64_t rows, int64_t D, float scale, float* m,
                 float* l, float* acc, float* s) {
  for (int64_t g = 0; g < G; ++g) {
    matvec_rows_inl(K, D, q + g * D, nullptr, 0, rows, D, s);
    float bmax = -std::numeric_limits<float>::infinity();
    for (int64_t r = 0; r < rows; ++r) bmax = std::max(bmax, s[r] *= scale);
    const float new_m = std::max(m[g], bmax);
    float* a = acc + g * D;
    if (new_m > m[g] && l[g] > 0) {
      const float rescale = exp_poly<float, int32_t>(std::max(m[g] - new_m, -87.f));
      for (int64_t d = 0; d < D; ++d) a[d] *= rescale;
      l[g] *= rescale;
    }
    l[g] += exp_shifted_inl(s, rows, new_m);
    accumulate_rows_inl(s, V, D, rows, D, a);
    m[g] = new_m;
  }
}

SPKV_MULTIVERSION
void scores_block(const float* Q, int64_t ldq, int64_t nq, const float* Kt, int64_t D, float* S) {
  static_assert(kKeys == 2 * kLanes, "a block of keys is two vectors");
  int64_t t = 0;
  for (; t + 4 <= nq; t += 4) {  // four queries share each load of a key row
    const float *q0 = Q + t * ldq, *q1 = q0 + ldq, *q2 = q1 + ldq, *q3 = q2 + ldq;
    v16 s0a = {}, s0b = {}, s1a = {}, s1b = {}, s2a = {}, s2b = {}, s3a = {}, s3b = {};
    for (int64_t d = 0; d < D; ++d) {
      const v16 ka = load(Kt + d * kKeys), kb = load(Kt + d * kKeys + kLanes);
      s0a += q0[d] * ka, s0b += q0[d] * kb, s1a += q1[d] * ka, s1b += q1[d] * kb;
      s2a += q2[d] * ka, s2b += q2[d] * kb, s3a += q3[d] * ka, s3b += q3[d] * kb;
    }
    float* out = S + t * kKeys;
    store(out, s0a), store(out + kLanes, s0b), store(out + kKeys, s1a), store(out + kKeys + kLanes, s1b);
    store(out + 2 * kKeys, s2a), store(out + 2 * kKeys + kLanes, s2b);
    store(out + 3 * kKeys, s3a), store(out + 3 * kKeys + kLanes, s3b);
  }
  for (; t < nq; ++t) {
    const float* q0 = Q + t * ldq;
    v16 sa = {}, sb = {};
    for (int64_t d = 0; d < D; ++d) sa += q0[d] * load(Kt + d * kKeys), sb += q0[d] * load(Kt + d * kKeys + kLanes);
    store(S + t * kKeys, sa), store(S + t * kKeys + kLanes, sb);
  }
}

SPKV_MULTIVERSION
void softmax_values_block(float* S, int64_t nr, int64_t ns, const float* V, int64_t ld, int64_t D, float* m, float* l,
                          float* acc) {
  auto weights = [&](int64_t r) __attribute__((always_inline)) { return row_weights(S + r * kKeys, m[r], l[r]); };
  const int64_t D16 = D - D % kLanes;
  int64_t r = 0;
  for (; r + 4 <= nr; r += 4) {  // four rows per load of a value row
    const float f0 = weights(r), f1 = weights(r + 1), f2 = weights(r + 2), f3 = weights(r + 3);
    const float *p0 = S + r * kKeys, *p1 = p0 + kKeys, *p2 = p1 + kKeys, *p3 = p2 + kKeys;
    float *c0 = acc + r * D, *c1 = c0 + D, *c2 = c1 + D, *c3 = c2 + D;
    for (int64_t d = 0; d < D16; d += kLanes) {
      v16 a0 = load(c0 + d) * f0, a1 = load(c1 + d) * f1, a2 = load(c2 + d) * f2, a3 = load(c3 + d) * f3;
      for (int64_t s = 0; s < ns; ++s) {
        const v16 v = load(V + s * ld + d);
        a0 += p0[s] * v, a1 += p1[s] * v, a2 += p2[s] * v, a3 += p3[s] * v;
      }
      store(c0 + d, a0), store(c1 + d, a1), store(c2 + d, a2), store(c3 + d, a3);
    }
    for (int64_t d = D16; d < D; ++d) {
      float a0 = c0[d] * f0, a1 = c1[d] * f1, a2 = c2[d] * f2, a3 = c3[d] * f3;
      for (int64_t s = 0; s < ns; ++s) {
        const float v = V[s * ld + d];
        a0 += p0[s] * v, a1 += p1[s] * v, a2 += p2[s] * v, a3 += p3[s] * v;
      }
      c0[d] = a0, c1[d] = a1, c2[d] = a2, c3[d] = a3;
    }
  }
  for (; r < nr; ++r) {
    const float f = weights(r);
    const float* pr = S + r * kKeys;
    float* c = acc + r * D;
    for (int64_t d = 0; d < D16; d += kLanes) {
      v16 a = load(c + d) * f;
      for (int64_t s = 0; s < ns; ++s) a += pr[s] * load(V + s * ld + d);
      store(c + d, a);
    }
    for (int64_t d = D16; d < D; ++d) {
      float a = c[d] * f;
      for (int64_t s = 0; s < ns; ++s) a += pr[s] * V[s * ld + d];
      c[d] = a;
    }
  }
}

}  // namespace spkv::kernels::cpu
