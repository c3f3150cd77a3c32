// An independent float64 forward pass of the Llama family, with explicit loops for RoPE and attention,
// and SP-KV hard gating written as "attend only to the window and the kept keys". Shared by the model and
// gating tests; it reads the model's weights by their Hugging Face names and nothing else.
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "core/model/model.h"

namespace spkv::test {

// RoPE inverse frequencies from HF's published definitions (default, linear, llama3).
inline std::vector<double> ref_inv_freq(const ModelConfig& c) {
  std::vector<double> f(c.head_dim / 2);
  for (size_t i = 0; i < f.size(); ++i) {
    double x = std::pow(c.rope_theta, -2.0 * double(i) / double(c.head_dim));
    const auto& s = c.rope_scaling;
    if (s.type == "linear") x /= s.factor;
    if (s.type == "llama3") {
      const double wl = 2 * M_PI / x, lo = s.original_max_position_embeddings / s.low_freq_factor,
                   hi = s.original_max_position_embeddings / s.high_freq_factor;
      if (wl > lo) x = x / s.factor;
      else if (wl >= hi) {
        const double sm = (s.original_max_position_embeddings / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        x = (1 - sm) * x / s.factor + sm * x;
      }
    }
    f[i] = x;
  }
  return f;
}

// Rotates one head vector (D) at position p, pairing dims as the config says.
inline void ref_rope(double* v, int64_t D, int64_t p, const std::vector<double>& inv, RopeStyle style) {
  for (int64_t i = 0; i < D / 2; ++i) {
    const int64_t a = style == RopeStyle::interleaved ? 2 * i : i, b = style == RopeStyle::interleaved ? 2 * i + 1 : i + D / 2;
    const double c = std::cos(p * inv[i]), s = std::sin(p * inv[i]), x = v[a], y = v[b];
    v[a] = x * c - y * s;
    v[b] = x * s + y * c;
  }
}

// Full forward in float64: logits (T, V) for one sequence. With SP-KV in the config, attention runs over
// only the keys in the window or with u >= tau (or at positions < keep_first); u is recomputed here from
// the predictor weights, and its values are appended to `utility` (L x T x Hkv, layer-major) when given.
// `received` (when given) gets, per layer, key and KV head (L x T x Hkv), the attention mass the key
// received, averaged over the KV head's query heads: from every query, and in `received_tail` from the
// last `tail` queries, and in `received_far` from the queries t >= s + far_window. `read_far` (when given)
// gets, per layer, key and KV head, the largest probability any of the KV head's query heads gives the key
// from a query t with counted[t] that sees it from outside the SP-KV window (t - s >= W, s >= keep_first).
inline torch::Tensor ref_forward(LlamaForCausalLM& m, const std::vector<int64_t>& toks,
                                 std::vector<double>* utility = nullptr, std::vector<double>* received = nullptr,
                                 int64_t tail = 0, std::vector<double>* received_tail = nullptr,
                                 int64_t far_window = 0, std::vector<double>* received_far = nullptr,
                                 const std::vector<uint8_t>* counted = nullptr, std::vector<double>* read_far = nullptr) {
  const ModelConfig& c = m->config;
  auto W = [&](const std::string& n) { return m->named_tensors().at(n).to(torch::kFloat64); };
  auto lin = [&](const torch::Tensor& x, const std::string& n, bool bias) {
    auto y = torch::matmul(x, W(n + ".weight").t());
    return bias ? y + W(n + ".bias") : y;
  };
  auto rms = [&](const torch::Tensor& x, const std::string& n) {
    return x / torch::sqrt(x.pow(2).mean(-1, true) + c.norm_eps) * W(n + ".weight");
  };
  const int64_t T = int64_t(toks.size()), D = c.head_dim, H = c.n_heads, Hkv = c.n_kv_heads;
  const auto inv = ref_inv_freq(c);
  auto x = W("model.embed_tokens.weight").index_select(0, torch::tensor(toks));  // (T, C)
  for (int64_t il = 0; il < c.n_layers; ++il) {
    const std::string p = "model.layers." + std::to_string(il) + ".";
    auto h = rms(x, p + "input_layernorm");
    auto q = lin(h, p + "self_attn.q_proj", c.attention_bias).contiguous();  // (T, H*D)
    auto k = lin(h, p + "self_attn.k_proj", c.attention_bias).contiguous();  // (T, Hkv*D)
    auto v = lin(h, p + "self_attn.v_proj", c.attention_bias).contiguous();
    const auto& sp = c.spkv;
    torch::Tensor u;  // (T, Hkv)
    if (sp.enabled) {
      auto a = lin(sp.tap == "residual" ? x : h, p + "self_attn.utility.fc1", true);
      if (sp.predictor_layers == 2) a = lin(a / (1 + torch::exp(-a)), p + "self_attn.utility.fc2", true);
      u = 1 / (1 + torch::exp(-a));
      if (utility) utility->insert(utility->end(), u.data_ptr<double>(), u.data_ptr<double>() + u.numel());
    }
    auto visible = [&](int64_t t, int64_t s, int64_t kh) {
      if (s > t || (c.sliding_window > 0 && t - s >= c.sliding_window)) return false;
      if (!sp.enabled || t - s < sp.window || s < sp.keep_first) return true;
      return u[s][kh].item<double>() >= sp.tau;
    };
    double* qd = q.data_ptr<double>();
    double* kd = k.data_ptr<double>();
    const double* vd = v.data_ptr<double>();
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t hh = 0; hh < H; ++hh) ref_rope(qd + t * H * D + hh * D, D, t, inv, c.rope_style);
      for (int64_t hh = 0; hh < Hkv; ++hh) ref_rope(kd + t * Hkv * D + hh * D, D, t, inv, c.rope_style);
    }
    auto y = torch::zeros({T, H * D}, torch::kFloat64);
    double* yd = y.data_ptr<double>();
    std::vector<double> recv(T * Hkv, 0.0), recv_tail(T * Hkv, 0.0), recv_far(T * Hkv, 0.0);  // (T, Hkv) for this layer
    std::vector<double> read(T * Hkv, 0.0);
    for (int64_t hh = 0; hh < H; ++hh) {
      const int64_t kh = hh / (H / Hkv);
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> w(T, 0.0);
        double mx = -1e300, den = 0;
        for (int64_t s = 0; s <= t; ++s) {
          if (!visible(t, s, kh)) continue;
          double dot = 0;
          for (int64_t i = 0; i < D; ++i) dot += qd[t * H * D + hh * D + i] * kd[s * Hkv * D + kh * D + i];
          w[s] = dot / std::sqrt(double(D));
          mx = std::max(mx, w[s]);
        }
        for (int64_t s = 0; s <= t; ++s) {
          if (!visible(t, s, kh)) { w[s] = 0; continue; }
          w[s] = std::exp(w[s] - mx);
          den += w[s];
        }
        for (int64_t s = 0; s <= t; ++s) {
          for (int64_t i = 0; i < D; ++i) yd[t * H * D + hh * D + i] += w[s] / den * vd[s * Hkv * D + kh * D + i];
          recv[s * Hkv + kh] += w[s] / den / double(H / Hkv);
          if (t >= T - tail) recv_tail[s * Hkv + kh] += w[s] / den / double(H / Hkv);
          if (t - s >= far_window) recv_far[s * Hkv + kh] += w[s] / den / double(H / Hkv);
          if (counted && (*counted)[t] && t - s >= sp.window && s >= sp.keep_first)
            read[s * Hkv + kh] = std::max(read[s * Hkv + kh], w[s] / den);
        }
      }
    }
    if (received) received->insert(received->end(), recv.begin(), recv.end());
    if (received_tail) received_tail->insert(received_tail->end(), recv_tail.begin(), recv_tail.end());
    if (received_far) received_far->insert(received_far->end(), recv_far.begin(), recv_far.end());
    if (read_far) read_far->insert(read_far->end(), read.begin(), read.end());
    x = x + lin(y, p + "self_attn.o_proj", false);
    auto g = rms(x, p + "post_attention_layernorm");
    auto gate = lin(g, p + "mlp.gate_proj", false);
    x = x + lin(gate / (1 + torch::exp(-gate)) * lin(g, p + "mlp.up_proj", false), p + "mlp.down_proj", false);
  }
  x = rms(x, "model.norm");
  return torch::matmul(x, (c.tied_embeddings ? W("model.embed_tokens.weight") : W("lm_head.weight")).t());
}

}  // namespace spkv::test
