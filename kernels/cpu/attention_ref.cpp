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

void set_contiguous_strides(GatedAttentionParams& p) {
  p.q_st = p.D, p.q_sh = p.T * p.D, p.q_sb = p.H * p.T * p.D;
  p.y_st = p.q_st, p.y_sh = p.q_sh, p.y_sb = p.q_sb;
  p.k_st = p.D, p.k_sh = p.S * p.D, p.k_sb = p.Hkv * p.S * p.D;
  p.v_st = p.k_st, p.v_sh = p.k_sh, p.v_sb = p.k_sb;
  p.keep_sh = p.S, p.keep_sb = p.Hkv * p.S;
}

namespace cpu {

Status gated_attention_ref(const GatedAttentionParams& p) {
  if (!p.q || !p.k || !p.v || !p.y || !p.q_pos || !p.k_pos || p.Hkv <= 0 || p.H % p.Hkv != 0 || p.D <= 0)
    return Status::invalid_argument;
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

}  // namespace cpu
}  // namespace spkv::kernels
