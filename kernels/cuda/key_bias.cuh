// The visibility rule of attention_params.h on the device, shared by the prefill kernels (the warp kernels of
// prefill.cu and the tensor-core forward of prefill_tc.cu): a key's score bias for one query, and whether a
// key is far from it.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/attention_params.h"

namespace spkv::kernels::cuda {

// The score bias of key s for query t of (b, hk): 0 (local, or kept by a hard gate), far_bias (soft gates),
// or -inf when the query does not see the key.
template <class Row>
__device__ inline float key_bias(const GatedAttentionParamsT<Row>& p, int64_t b, int64_t hk, int64_t t, int64_t s) {
  const int64_t dist = p.q_pos[t] - p.k_pos[s];
  if (dist < 0 || (p.k_begin && s < p.k_begin[b * p.T + t])) return -INFINITY;
  if (p.window <= 0 || dist < p.window) return 0.f;
  if (p.far_bias) return p.far_bias[b * p.bias_sb + hk * p.bias_sh + s];
  return p.keep && p.keep[b * p.keep_sb + hk * p.keep_sh + s] ? 0.f : -INFINITY;
}

template <class Row>
__device__ inline bool is_far(const GatedAttentionParamsT<Row>& p, int64_t t, int64_t s) {
  return p.window > 0 && p.q_pos[t] - p.k_pos[s] >= p.window;
}

}  // namespace spkv::kernels::cuda
