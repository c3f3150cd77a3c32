#include "kernels/cpu/attention_ref.h"

#include <cmath>
#include <limits>
#include <vector>

namespace spkv::kernels {

const char* to_string(Status s) {
  switch (s) {
    case Status::ok: return "ok";
    case Status::invalid_argument: return "invalid argument";
    case Status::unsupported: return "unsupported";
    case Status::device_error: return "device error";
  }
  return "?";
}

bool valid(const GatedAttentionParams& p) {
  return p.q && p.k && p.v && p.y && p.q_pos && p.k_pos && p.Hkv > 0 && p.H % p.Hkv == 0 && p.D > 0;
}

bool valid(const DecodeParams& p) {
  const CacheView& c = p.cache;
  return p.q && p.y && c.Hkv > 0 && p.H % c.Hkv == 0 && c.D > 0 && (c.W <= 0 || (c.ring_len && c.ring_k && c.ring_v)) &&
         c.store_indptr && c.store_len;
}

void set_contiguous_strides(GatedAttentionParams& p) {
  p.q_st = p.D, p.q_sh = p.T * p.D, p.q_sb = p.H * p.T * p.D;
  p.y_st = p.q_st, p.y_sh = p.q_sh, p.y_sb = p.q_sb;
  p.k_st = p.D, p.k_sh = p.S * p.D, p.k_sb = p.Hkv * p.S * p.D;
  p.v_st = p.k_st, p.v_sh = p.k_sh, p.v_sb = p.k_sb;
  p.keep_sh = p.S, p.keep_sb = p.Hkv * p.S;
}

namespace cpu {

Status gated_attention_ref(const GatedAttentionParams& p) {
  if (!valid(p)) return Status::invalid_argument;
  const int64_t G = p.H / p.Hkv;
  std::vector<double> score(p.S), acc(p.D);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.H; ++h) {
      const int64_t hk = h / G;
      for (int64_t t = 0; t < p.T; ++t) {
        const float* q = p.q + b * p.q_sb + h * p.q_sh + t * p.q_st;
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t s = 0; s < p.S; ++s) {
          const int64_t d = p.q_pos[t] - p.k_pos[s];
          const bool local = p.window <= 0 || d < p.window;
          const bool kept = p.keep && p.keep[b * p.keep_sb + hk * p.keep_sh + s];
          if (d < 0 || !(local || kept)) {
            score[s] = -std::numeric_limits<double>::infinity();
            continue;
          }
          const float* k = p.k + b * p.k_sb + hk * p.k_sh + s * p.k_st;
          double dot = 0;
          for (int64_t i = 0; i < p.D; ++i) dot += double(q[i]) * double(k[i]);
          score[s] = dot * p.scale;
          mx = std::max(mx, score[s]);
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        double den = 0;
        if (mx > -std::numeric_limits<double>::infinity())
          for (int64_t s = 0; s < p.S; ++s) {
            if (score[s] == -std::numeric_limits<double>::infinity()) continue;
            const double w = std::exp(score[s] - mx);
            den += w;
            const float* v = p.v + b * p.v_sb + hk * p.v_sh + s * p.v_st;
            for (int64_t i = 0; i < p.D; ++i) acc[i] += w * double(v[i]);
          }
        float* y = p.y + b * p.y_sb + h * p.y_sh + t * p.y_st;
        for (int64_t i = 0; i < p.D; ++i) y[i] = den > 0 ? float(acc[i] / den) : 0.0f;
      }
    }
  return Status::ok;
}

Status decode_attention_ref(const DecodeParams& p) {
  const CacheView& c = p.cache;
  if (!valid(p)) return Status::invalid_argument;
  const int64_t G = p.H / c.Hkv, D = c.D;
  for (int64_t b = 0; b < c.n_seq; ++b)
    for (int64_t h = 0; h < p.H; ++h) {
      const int64_t hk = h / G, i = b * c.Hkv + hk;
      // The visible keys of (b, hk): the valid ring slots, then the store in order.
      std::vector<const float*> keys, values;
      for (int64_t slot = 0; c.W > 0 && slot < c.ring_len[b]; ++slot) {
        const int64_t off = ((b * c.Hkv + hk) * c.W + slot) * D;
        keys.push_back(c.ring_k + off), values.push_back(c.ring_v + off);
      }
      for (int64_t j = 0; j < c.store_len[i]; ++j) {
        const int32_t page = c.store_pages[c.store_indptr[i] + j / c.page_size];
        const int64_t row = (j % c.page_size) * D;
        keys.push_back(c.page_k[page] + row), values.push_back(c.page_v[page] + row);
      }
      const float* q = p.q + (b * p.H + h) * D;
      std::vector<double> score(keys.size()), acc(D, 0.0);
      double mx = -std::numeric_limits<double>::infinity(), den = 0;
      for (size_t s = 0; s < keys.size(); ++s) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += double(q[d]) * double(keys[s][d]);
        score[s] = dot * p.scale;
        mx = std::max(mx, score[s]);
      }
      for (size_t s = 0; s < keys.size(); ++s) {
        const double w = std::exp(score[s] - mx);
        den += w;
        for (int64_t d = 0; d < D; ++d) acc[d] += w * double(values[s][d]);
      }
      float* y = p.y + (b * p.H + h) * D;
      for (int64_t d = 0; d < D; ++d) y[d] = den > 0 ? float(acc[d] / den) : 0.0f;
    }
  return Status::ok;
}

}  // namespace cpu
}  // namespace spkv::kernels
