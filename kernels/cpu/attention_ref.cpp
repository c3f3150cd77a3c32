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

namespace cpu {
namespace {
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// The scores of query (b, h, t) over every key in float64: -inf where the key is not visible. far[s] says
// whether the key's score carries the far bias (its gradient goes to d_far_bias).
void scores(const GatedAttentionParams& p, int64_t b, int64_t h, int64_t t, std::vector<double>& score,
            std::vector<uint8_t>& far) {
  const int64_t hk = h / (p.H / p.Hkv);
  const float* q = p.q + b * p.q_sb + h * p.q_sh + t * p.q_st;
  const int64_t first = p.k_begin ? p.k_begin[b * p.T + t] : 0;
  for (int64_t s = 0; s < p.S; ++s) {
    const int64_t d = p.q_pos[t] - p.k_pos[s];
    score[s] = kNegInf, far[s] = 0;
    if (d < 0 || s < first) continue;
    double bias = 0;
    if (p.window > 0 && d >= p.window) {  // far: the gate decides
      if (p.far_bias) {
        bias = p.far_bias[b * p.bias_sb + hk * p.bias_sh + s], far[s] = 1;
        if (bias == kNegInf) continue;
      } else if (!(p.keep && p.keep[b * p.keep_sb + hk * p.keep_sh + s])) {
        continue;
      }
    }
    const float* k = p.k + b * p.k_sb + hk * p.k_sh + s * p.k_st;
    double dot = 0;
    for (int64_t i = 0; i < p.D; ++i) dot += double(q[i]) * double(k[i]);
    score[s] = dot * p.scale + bias;
  }
}

// Softmax of the scores in place (all -inf: all 0). Returns log sum exp (-inf when nothing is visible).
double softmax(std::vector<double>& score) {
  double mx = kNegInf, den = 0;
  for (double x : score) mx = std::max(mx, x);
  if (mx == kNegInf) {
    std::fill(score.begin(), score.end(), 0.0);
    return kNegInf;
  }
  for (double& x : score) den += (x = std::exp(x - mx));
  for (double& x : score) x /= den;
  return mx + std::log(den);
}
}  // namespace

Status gated_attention_ref(const GatedAttentionParams& p) {
  if (!valid(p)) return Status::invalid_argument;
  std::vector<double> prob(p.S), acc(p.D);
  std::vector<uint8_t> far(p.S);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.H; ++h) {
      const int64_t hk = h / (p.H / p.Hkv);
      for (int64_t t = 0; t < p.T; ++t) {
        scores(p, b, h, t, prob, far);
        const double lse = softmax(prob);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t s = 0; s < p.S; ++s) {
          if (prob[s] == 0) continue;
          const float* v = p.v + b * p.v_sb + hk * p.v_sh + s * p.v_st;
          for (int64_t i = 0; i < p.D; ++i) acc[i] += prob[s] * double(v[i]);
        }
        float* y = p.y + b * p.y_sb + h * p.y_sh + t * p.y_st;
        for (int64_t i = 0; i < p.D; ++i) y[i] = float(acc[i]);
        if (p.lse) p.lse[(b * p.H + h) * p.T + t] = float(lse);
      }
    }
  return Status::ok;
}

// With P = softmax(S), dP[s] = dy . v[s] and dS[s] = P[s] (dP[s] - sum_s' P[s'] dP[s']):
// dq = scale sum_s dS[s] k[s], dk[s] += scale dS[s] q, dv[s] += P[s] dy, d_far_bias[s] += dS[s] (far keys).
Status gated_attention_backward_ref(const GatedAttentionGradParams& g) {
  if (!valid(g)) return Status::invalid_argument;
  const GatedAttentionParams& p = g.fwd;
  const int64_t D = p.D;
  std::vector<double> dk(p.B * p.Hkv * p.S * D, 0.0), dv(dk.size(), 0.0), db(p.B * p.Hkv * p.S, 0.0);
  std::vector<double> prob(p.S), dprob(p.S), dq(D);
  std::vector<uint8_t> far(p.S);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.H; ++h) {
      const int64_t hk = h / (p.H / p.Hkv), kv0 = (b * p.Hkv + hk) * p.S;
      for (int64_t t = 0; t < p.T; ++t) {
        scores(p, b, h, t, prob, far);
        softmax(prob);
        const float* q = p.q + b * p.q_sb + h * p.q_sh + t * p.q_st;
        const float* dy = g.dy + b * p.y_sb + h * p.y_sh + t * p.y_st;
        double delta = 0;
        for (int64_t s = 0; s < p.S; ++s) {
          dprob[s] = 0;
          if (prob[s] == 0) continue;
          const float* v = p.v + b * p.v_sb + hk * p.v_sh + s * p.v_st;
          for (int64_t i = 0; i < D; ++i) dprob[s] += double(dy[i]) * double(v[i]);
          delta += prob[s] * dprob[s];
        }
        std::fill(dq.begin(), dq.end(), 0.0);
        for (int64_t s = 0; s < p.S; ++s) {
          if (prob[s] == 0) continue;
          const double ds = prob[s] * (dprob[s] - delta);
          const float* k = p.k + b * p.k_sb + hk * p.k_sh + s * p.k_st;
          for (int64_t i = 0; i < D; ++i) {
            dq[i] += ds * p.scale * double(k[i]);
            dk[(kv0 + s) * D + i] += ds * p.scale * double(q[i]);
            dv[(kv0 + s) * D + i] += prob[s] * double(dy[i]);
          }
          if (far[s]) db[kv0 + s] += ds;
        }
        float* out = g.dq + b * p.q_sb + h * p.q_sh + t * p.q_st;
        for (int64_t i = 0; i < D; ++i) out[i] = float(dq[i]);
      }
    }
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t hk = 0; hk < p.Hkv; ++hk)
      for (int64_t s = 0; s < p.S; ++s) {
        const int64_t r = (b * p.Hkv + hk) * p.S + s;
        for (int64_t i = 0; i < D; ++i) {
          g.dk[b * p.k_sb + hk * p.k_sh + s * p.k_st + i] = float(dk[r * D + i]);
          g.dv[b * p.v_sb + hk * p.v_sh + s * p.v_st + i] = float(dv[r * D + i]);
        }
        if (g.d_far_bias) g.d_far_bias[b * p.bias_sb + hk * p.bias_sh + s] = float(db[r]);
      }
  return Status::ok;
}

Status decode_attention_ref(const DecodeParams& p) {
  const CacheView& c = p.cache;
  if (!valid(p) || !weights_fit(p)) return Status::invalid_argument;
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
      for (size_t s = 0; p.weights && s < keys.size(); ++s)
        p.weights[(b * p.H + h) * p.weights_stride + int64_t(s)] = float(std::exp(score[s] - mx) / den);
    }
  return Status::ok;
}

}  // namespace cpu
}  // namespace spkv::kernels
