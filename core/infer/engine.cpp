// The engine: the model's own layers (model.cpp) with this class as their attention backend, which turns
// gate decisions into cache entries and attends with the kernels over the cache (the CPU ones here; on a
// CUDA device, cuda_ops::DeviceKvCache does the same on the GPU). Prefill
// gathers each head's cached keys (store, ring) ahead of the chunk's own keys and runs the gated kernel with
// their positions and decisions; decode runs the ragged decode kernel.
#include "core/infer/engine.h"

#include <cmath>
#include <string>

#include "core/base/errors.h"
#include "kernels/cpu/attention_fast.h"
#include "kernels/cpu/decode_step.h"
#include "kernels/torch/device_kv_cache.h"  // declarations only; defined where SPKV_TORCH_CUDA is

namespace spkv {
namespace {
// The position given to store keys in a gathered prefill: far behind every query, so a store key is
// visible iff its keep flag is set (or, in the dense cache, always).
constexpr int64_t kFar = -(int64_t(1) << 40);

void check(kernels::Status s, const char* what) {
  if (s != kernels::Status::ok) throw Error(std::string("engine: ") + what + " failed: " + kernels::to_string(s));
}
}  // namespace

// The model's float32 weights as raw pointers, gathered once (the engine borrows the model: its parameters
// must not be replaced while the engine runs), and the buffers of one step.
struct Engine::FusedDecode {
  kernels::cpu::DecodeDims dims;
  std::vector<kernels::cpu::DecodeLayerWeights> layers;  // (L)
  const float *embed = nullptr, *norm = nullptr, *lm_head = nullptr;  // (V, C), (C), (V, C)
  const float *cos = nullptr, *sin = nullptr;                          // (T_max, D/2)
  int64_t V = 0;
  std::vector<float> x, q, y;             // (B, C), (B, H*D), (B, H*D)
  std::vector<float> xn, k, v, u, h1, h2;  // one sequence at a time
  std::vector<uint8_t> keep;              // (B, Hkv) the cache's decisions of the current layer

  kernels::cpu::DecodeBuffers buffers(int64_t b) {
    const int64_t HD = dims.H * dims.D;
    return {xn.data(), q.data() + b * HD, k.data(), v.data(), u.data(), y.data() + b * HD, h1.data(), h2.data()};
  }

  // Null when a weight is not a contiguous float32 CPU tensor (the layers then run every step).
  static std::unique_ptr<FusedDecode> make(LlamaForCausalLM& m, int64_t B) {
    const ModelConfig& c = m->config;
    bool ok = true;
    auto ptr = [&](const torch::Tensor& t) -> const float* {
      if (!t.defined()) return nullptr;
      ok = ok && t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous();
      return ok ? t.data_ptr<float>() : nullptr;
    };
    auto f = std::make_unique<FusedDecode>();
    auto& d = f->dims;
    d.C = c.dim, d.F = c.hidden_dim, d.H = c.n_heads, d.Hkv = c.n_kv_heads, d.D = c.head_dim;
    d.eps = float(c.norm_eps), d.interleaved_rope = c.rope_style == RopeStyle::interleaved;
    for (auto& module : *m->model->layers) {
      auto& layer = *module->as<DecoderLayer>();
      auto& a = *layer.self_attn;
      kernels::cpu::DecodeLayerWeights w;
      w.attn_norm = ptr(layer.input_layernorm->weight), w.mlp_norm = ptr(layer.post_attention_layernorm->weight);
      w.wq = ptr(a.q_proj->weight), w.wk = ptr(a.k_proj->weight), w.wv = ptr(a.v_proj->weight), w.wo = ptr(a.o_proj->weight);
      w.bq = ptr(a.q_proj->bias), w.bk = ptr(a.k_proj->bias), w.bv = ptr(a.v_proj->bias);
      w.w_gate = ptr(layer.mlp->gate_proj->weight), w.w_up = ptr(layer.mlp->up_proj->weight);
      w.w_down = ptr(layer.mlp->down_proj->weight);
      if (a.utility) {
        w.u_w1 = ptr(a.utility->fc1->weight), w.u_b1 = ptr(a.utility->fc1->bias);
        if (a.utility->fc2) {
          w.u_w2 = ptr(a.utility->fc2->weight), w.u_b2 = ptr(a.utility->fc2->bias);
          d.P = a.utility->fc2->weight.size(1);
        }
        d.tap_residual = a.tap_residual;
      }
      f->layers.push_back(w);
    }
    f->embed = ptr(m->model->embed_tokens->weight), f->norm = ptr(m->model->norm->weight);
    f->lm_head = m->lm_head ? ptr(m->lm_head->weight) : f->embed;
    f->cos = ptr(m->rope.cos), f->sin = ptr(m->rope.sin);
    if (!ok) return nullptr;
    f->V = c.vocab_size;
    const int64_t HD = d.H * d.D;
    f->x.resize(B * d.C), f->q.resize(B * HD), f->y.resize(B * HD), f->keep.resize(B * d.Hkv);
    f->xn.resize(d.C), f->k.resize(d.Hkv * d.D), f->v.resize(d.Hkv * d.D), f->u.resize(d.Hkv);
    f->h1.resize(std::max({d.F, d.P, d.C})), f->h2.resize(std::max(d.F, d.C));
    return f;
  }
};

Engine::Engine(LlamaForCausalLM model, const EngineOptions& o)
    : model_(std::move(model)), opt_(o), device_(model_->parameters().front().device()) {
  const ModelConfig& c = model_->config;
  if (c.sliding_window > 0 && c.spkv.enabled)
    throw ConfigError("engine: an SP-KV model with a sliding_window (" + std::to_string(c.sliding_window) +
                      ") is not supported");
#ifndef SPKV_TORCH_CUDA
  if (!device_.is_cpu())
    throw ConfigError("engine: the model is on " + device_.str() +
                      ", but this build has no CUDA kernels for LibTorch (docs/gpu.md: configure with a CUDA LibTorch)");
#endif
  if (o.chunk < 1) throw ConfigError("engine: chunk " + std::to_string(o.chunk) + " must be at least 1");
  if (o.kv_bf16 && device_.is_cpu()) throw ConfigError("engine: bf16 KV rows need the model on a CUDA device (--device cuda)");
  KvCacheShape s{o.n_seq, c.n_layers, c.n_kv_heads, c.head_dim, o.page_size};
  if (!o.layout.empty()) {
    check_layout(c, o.layout, "engine");
    if (o.dense) throw ConfigError("engine: a layout and dense attention exclude each other");
  }
  if (o.baseline) {
    if (!device_.is_cpu()) throw ConfigError("engine: the eviction baselines run on the CPU, but the model is on " + device_.str());
    if (!o.layout.empty() || o.dense) throw ConfigError("engine: an eviction baseline excludes a layout and --dense");
    if (o.baseline->window <= 0 && !c.spkv.enabled)
      throw ConfigError("engine: an eviction baseline on a model without SP-KV needs its window (the keys always kept)");
    opt_.chunk = 1;
  }
  gated_ = !o.baseline && (!o.layout.empty() || (c.spkv.enabled && model_->gates.mode != GateMode::dense && !o.dense));
  // The ring's window; 0: the dense cache, which keeps every token.
  int64_t W = 0;
  if (!o.layout.empty()) {
    layout_ = torch::tensor(std::vector<int64_t>(o.layout.global.begin(), o.layout.global.end())).view({c.n_layers, c.n_kv_heads}) != 0;
    W = o.layout.window;
  } else if (gated_) {
    W = c.spkv.window;
  } else if (c.sliding_window > 0) {  // a sliding window is a ring whose tokens are all dropped (keep = 0)
    W = c.sliding_window;
  }
  // A window at least the context long keeps every token; the ring needs no more rows than positions exist.
  W = std::min(W, c.max_seq_len);
  if (o.baseline) {
    const int64_t bw = std::min(o.baseline->window > 0 ? o.baseline->window : c.spkv.window, c.max_seq_len);
    auto bc = std::make_unique<BudgetedKvCache>(s, bw, o.baseline->budget, o.baseline->policy);
    baseline_ = bc.get(), cache_ = std::move(bc);
  } else if (device_.is_cpu()) {
    cache_ = W > 0 ? std::unique_ptr<KvCache>(std::make_unique<SpkvKvCache>(s, W)) : std::make_unique<DenseKvCache>(s);
  } else {
#ifdef SPKV_TORCH_CUDA
    // The GPU cache is always ring + store; the dense one keeps every token (its ring size does not matter).
    dcache_ = std::make_unique<cuda_ops::DeviceKvCache>(o.n_seq, c.n_layers, c.n_kv_heads, c.head_dim, W > 0 ? W : o.page_size,
                                                         o.page_size, c.max_seq_len, W == 0, device_,
                                                         o.kv_bf16 ? torch::kBFloat16 : torch::kFloat32);
    model_->rope.cos = model_->rope.cos.to(device_), model_->rope.sin = model_->rope.sin.to(device_);
    if (layout_.defined()) layout_ = layout_.to(device_);
#endif
  }
  model_->eval();
  if (device_.is_cpu() && o.fused_decode) fused_ = FusedDecode::make(model_, o.n_seq);
}

Engine::~Engine() = default;

const KvCache& Engine::cache() const {
  if (!cache_) throw Error("engine: the cache is on " + device_.str() + "; use cache_entries() and cache_bytes()");
  return *cache_;
}

int64_t Engine::cache_entries() const {
  if (cache_) return cache_->entries();
  int64_t n = 0;
#ifdef SPKV_TORCH_CUDA
  for (int64_t e : dcache_->entries()) n += e;
#endif
  return n;
}

int64_t Engine::cache_bytes() const {
#ifdef SPKV_TORCH_CUDA
  if (dcache_) return dcache_->bytes_used();
#endif
  return cache_->bytes_allocated();
}

void Engine::clear() {
#ifdef SPKV_TORCH_CUDA
  if (dcache_) dcache_->clear();
#endif
  for (int64_t b = 0; cache_ && b < opt_.n_seq; ++b) cache_->clear(b);
  pos_ = 0;
}

EngineStep Engine::forward(const torch::Tensor& tokens) {
  if (tokens.dim() != 2 || tokens.size(0) != opt_.n_seq)
    throw InputError("engine: tokens must be (" + std::to_string(opt_.n_seq) + ", T), got " +
                     std::to_string(tokens.dim()) + " dims with size(0) " + std::to_string(tokens.size(0)));
  const int64_t T = tokens.size(1);
  if (pos_ + T > model_->config.max_seq_len)
    throw InputError("engine: " + std::to_string(pos_ + T) + " tokens is past the model's context (" +
                     std::to_string(model_->config.max_seq_len) + ")");
  std::vector<EngineStep> parts;
  for (int64_t t0 = 0; t0 < T; t0 += opt_.chunk)
    parts.push_back(forward_chunk(tokens.narrow(1, t0, std::min(opt_.chunk, T - t0)).to(device_, torch::kInt64)));
  if (parts.size() == 1) return parts[0];
  EngineStep out;
  std::vector<torch::Tensor> logits, utility, keep;
  for (auto& p : parts) {
    logits.push_back(p.logits);
    if (p.utility.defined()) utility.push_back(p.utility), keep.push_back(p.keep);
  }
  out.logits = torch::cat(logits, 1);
  if (!utility.empty()) out.utility = torch::cat(utility, 1), out.keep = torch::cat(keep, 1);
  return out;
}

EngineStep Engine::forward_chunk(const torch::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  const int64_t T = tokens.size(1);
  if (T == 1 && fused_) return decode_fused(tokens.contiguous());
  positions_ = torch::arange(pos_, pos_ + T, torch::TensorOptions(torch::kInt64).device(device_));  // (T)
#ifdef SPKV_TORCH_CUDA
  if (dcache_) dcache_->reserve(T);
#endif
  us_.clear(), keeps_.clear();
  EngineStep out;
  out.logits = model_->forward_with(tokens, positions_, *this).cpu();  // (B, T, V); attend() below, once per layer
  pos_ += T;
  if (!us_.empty()) out.utility = torch::stack(us_, 2).cpu(), out.keep = torch::stack(keeps_, 2).cpu();  // (B, T, L, Hkv)
  return out;
}

EngineStep Engine::decode_fused(const torch::Tensor& tokens) {
  FusedDecode& f = *fused_;
  const ModelConfig& c = model_->config;
  const int64_t B = opt_.n_seq, L = c.n_layers, Hkv = c.n_kv_heads, C = c.dim, V = f.V, half = c.head_dim / 2;
  const int64_t* tok = tokens.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    if (tok[b] < 0 || tok[b] >= V)
      throw InputError("engine: token id " + std::to_string(tok[b]) + " is outside the vocabulary (" + std::to_string(V) + ")");
    std::copy_n(f.embed + tok[b] * C, C, f.x.data() + b * C);
  }
  EngineStep out;
  out.logits = torch::empty({B, 1, V});
  // The gates' scores and decisions, reported whether or not they evict (as attend() does): (B, 1, L, Hkv).
  float* u_out = nullptr;
  bool* keep_out = nullptr;
  if (c.spkv.enabled) {
    out.utility = torch::empty({B, 1, L, Hkv}), out.keep = torch::empty({B, 1, L, Hkv}, torch::kBool);
    u_out = out.utility.data_ptr<float>(), keep_out = out.keep.data_ptr<bool>();
  }
  const float tau = float(model_->gates.tau);
  const bool first = pos_ < c.spkv.keep_first;
  const float *cos = f.cos + pos_ * half, *sin = f.sin + pos_ * half;
  kernels::DecodeParams p;
  p.q = f.q.data(), p.y = f.y.data(), p.H = c.n_heads, p.scale = float(1.0 / std::sqrt(double(c.head_dim)));
  for (int64_t il = 0; il < L; ++il) {
    for (int64_t b = 0; b < B; ++b) {
      const kernels::cpu::DecodeBuffers buf = f.buffers(b);
      kernels::cpu::decode_qkv(f.dims, f.layers[size_t(il)], f.x.data() + b * C, cos, sin, buf);
      for (int64_t hk = 0; hk < Hkv; ++hk) {
        bool gate = false;
        if (u_out) {
          gate = buf.u[hk] >= tau || first;
          u_out[(b * L + il) * Hkv + hk] = buf.u[hk], keep_out[(b * L + il) * Hkv + hk] = gate;
        }
        f.keep[b * Hkv + hk] = layout_.defined() ? opt_.layout.global[il * Hkv + hk] != 0 : gate;
      }
      cache_->append(b, il, buf.k, buf.v, f.keep.data() + b * Hkv);
    }
    decode_attention(il, p);
    for (int64_t b = 0; b < B; ++b) kernels::cpu::decode_out(f.dims, f.layers[size_t(il)], f.x.data() + b * C, f.buffers(b));
  }
  for (int64_t b = 0; b < B; ++b)
    kernels::cpu::decode_logits(f.dims, f.norm, f.lm_head, V, f.x.data() + b * C, f.buffers(b),
                                out.logits.data_ptr<float>() + b * V);
  pos_ += 1;
  return out;
}

torch::Tensor Engine::attend(int64_t il, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& u) {
  const int64_t B = q.size(0), T = q.size(2), Hkv = k.size(1);
  torch::Tensor keep;  // (B, T, Hkv)
  if (u.defined()) {
    const int64_t keep_first = model_->config.spkv.keep_first;
    keep = u >= model_->gates.tau;
    if (keep_first > 0) keep = keep | (positions_ < keep_first).view({1, T, 1});
    us_.push_back(u), keeps_.push_back(keep);
  }
  if (layout_.defined()) keep = layout_[il].view({1, 1, Hkv}).expand({B, T, Hkv});  // fixed decisions replace the gates'
  if (!keep.defined()) keep = torch::zeros({B, T, Hkv}, torch::TensorOptions(torch::kBool).device(device_));  // no gates
  return attend_cached(il, q, k, v, keep.to(torch::kUInt8));
}

torch::Tensor Engine::attend_cached(int64_t il, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                    const torch::Tensor& keep) {
#ifdef SPKV_TORCH_CUDA
  if (dcache_) return dcache_->attend(il, q, k, v, keep);
#endif
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), Hkv = k.size(1);
  auto qc = q.contiguous();
  auto y = torch::empty_like(qc);                  // (B, H, T, D)
  auto kt = k.transpose(1, 2).contiguous();        // (B, T, Hkv, D): one token's rows are contiguous
  auto vt = v.transpose(1, 2).contiguous();        // (B, T, Hkv, D)
  auto kc = keep.contiguous();                     // (B, T, Hkv)
  const float* kp = kt.data_ptr<float>();
  const float* vp = vt.data_ptr<float>();
  const uint8_t* zp = kc.data_ptr<uint8_t>();
  auto row = [&](int64_t b, int64_t t) { return (b * T + t) * Hkv; };  // (b, t, hk = 0) in (B, T, Hkv)
  const float scale = float(1.0 / std::sqrt(double(D)));
  auto append_all = [&] {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        cache_->append(b, il, kp + row(b, t) * D, vp + row(b, t) * D, zp + row(b, t));
  };
  if (T == 1) {  // decode: the token joins the cache, then attends over it
    append_all();
    kernels::DecodeParams p;
    p.q = qc.data_ptr<float>(), p.y = y.data_ptr<float>(), p.H = H, p.scale = scale;
    decode_attention(il, p);
    return y;
  }
  // Prefill: per sequence, keys = [store (padded to the longest head) | ring slots | the chunk].
  const kernels::CacheView cv = cache_->view(il);
  std::vector<int64_t> q_pos(T);
  for (int64_t t = 0; t < T; ++t) q_pos[t] = pos_ + t;
  for (int64_t b = 0; b < B; ++b) {
    int64_t n_store = 0;
    for (int64_t hk = 0; hk < Hkv; ++hk) n_store = std::max<int64_t>(n_store, cv.store_len[b * Hkv + hk]);
    const int64_t ring = cv.W > 0 ? cv.ring_len[b] : 0, S = n_store + ring + T;
    std::vector<float> K(Hkv * S * D), V(Hkv * S * D);
    std::vector<uint8_t> kept(Hkv * S, 0);  // store padding stays 0: invisible, being far and not kept
    std::vector<int64_t> k_pos(S, kFar);
    for (int64_t hk = 0; hk < Hkv; ++hk) {
      const int64_t i = b * Hkv + hk;
      float* Kh = K.data() + hk * S * D;
      float* Vh = V.data() + hk * S * D;
      for (int64_t j = 0; j < cv.store_len[i]; ++j) {
        const int32_t page = cv.store_pages[cv.store_indptr[i] + j / cv.page_size];
        const int64_t off = (j % cv.page_size) * D;
        std::copy_n(cv.page_k[page] + off, D, Kh + j * D);
        std::copy_n(cv.page_v[page] + off, D, Vh + j * D);
        kept[hk * S + j] = 1;
      }
      for (int64_t slot = 0; slot < ring; ++slot) {
        const int64_t s = n_store + slot, src = (i * cv.W + slot) * D;
        std::copy_n(cv.ring_k + src, D, Kh + s * D);
        std::copy_n(cv.ring_v + src, D, Vh + s * D);
        kept[hk * S + s] = cv.ring_keep[i * cv.W + slot];
      }
      for (int64_t t = 0; t < T; ++t) {
        const int64_t s = n_store + ring + t;
        std::copy_n(kp + (row(b, t) + hk) * D, D, Kh + s * D);
        std::copy_n(vp + (row(b, t) + hk) * D, D, Vh + s * D);
        kept[hk * S + s] = zp[row(b, t) + hk];
      }
    }
    for (int64_t slot = 0; slot < ring; ++slot) k_pos[n_store + slot] = cv.ring_pos[b * cv.W + slot];
    for (int64_t t = 0; t < T; ++t) k_pos[n_store + ring + t] = pos_ + t;
    kernels::GatedAttentionParams p;
    p.q = qc.data_ptr<float>() + b * H * T * D, p.y = y.data_ptr<float>() + b * H * T * D, p.k = K.data(), p.v = V.data();
    p.keep = kept.data(), p.q_pos = q_pos.data(), p.k_pos = k_pos.data();
    p.B = 1, p.H = H, p.Hkv = Hkv, p.T = T, p.S = S, p.D = D, p.window = cache_->window(), p.scale = scale;
    kernels::set_contiguous_strides(p);
    check(kernels::cpu::gated_attention(p), "prefill attention");
  }
  append_all();
  return y;
}

void Engine::decode_attention(int64_t il, kernels::DecodeParams& p) {
  p.cache = cache_->view(il);
  if (baseline_ && baseline_->wants_attention()) {
    int64_t stride = 1;
    for (int64_t i = 0; i < p.cache.n_seq * p.cache.Hkv; ++i) stride = std::max(stride, kernels::head_entries(p.cache, i));
    weights_.resize(size_t(p.cache.n_seq * p.H * stride));
    p.weights = weights_.data(), p.weights_stride = stride;
  }
  check(kernels::cpu::decode_attention(p), "decode attention");
  if (p.weights) baseline_->observe(il, p.weights, p.weights_stride, p.H);
}

ScoredDocument score_document(Engine& engine, const std::vector<int32_t>& tokens) {
  if (tokens.size() < 2) throw InputError("score: a document needs at least 2 tokens, got " + std::to_string(tokens.size()));
  auto ids = torch::tensor(std::vector<int64_t>(tokens.begin(), tokens.end())).unsqueeze(0);  // (1, T)
  BudgetedKvCache* bc = engine.baseline_cache();
  if (bc && bc->policy().kind == PolicyKind::oracle) {  // the first pass: full attention, recorded
    const CacheBudget budget = bc->budget();
    bc->set_budget(parse_budget("slots:" + std::to_string(tokens.size())));
    bc->record_attention(int64_t(tokens.size()));
    engine.clear();
    engine.forward(ids);
    bc->set_future(bc->recorded());
    bc->set_budget(budget);
  }
  engine.clear();
  EngineStep step = engine.forward(ids);
  const int64_t T = ids.size(1);
  auto logp = torch::log_softmax(step.logits[0].to(torch::kFloat64), -1);                                  // (T, V)
  auto nll = -logp.narrow(0, 0, T - 1).gather(1, ids[0].narrow(0, 1, T - 1).unsqueeze(1)).squeeze(1);     // (T-1)
  ScoredDocument out;
  out.nll.assign(nll.data_ptr<double>(), nll.data_ptr<double>() + T - 1);
  auto best = step.logits[0].narrow(0, 0, T - 1).argmax(-1).to(torch::kInt32).contiguous();  // (T-1)
  out.argmax.assign(best.data_ptr<int32_t>(), best.data_ptr<int32_t>() + T - 1);
  if (bc) out.baseline_held = bc->held_total(0);
  if (step.utility.defined()) out.utility = step.utility[0], out.keep = step.keep[0];
  return out;
}

}  // namespace spkv
