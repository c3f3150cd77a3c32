// `spkv bench kernels`: the CPU attention kernels against the machine's own limits, measured in the same
// invocation: prefill attention in GFLOP/s against LibTorch's float32 GEMM, and decode attention over the
// real KV caches in GB/s against a STREAM triad. Random data at the default model's head shape (or the
// given one); the SP-KV rows keep far keys at the given density. No thresholds here: docs/results.md
// states the targets.
#include <fmt/core.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <random>

#include "core/base/json_text.h"
#include "core/infer/kv_cache.h"
#include "core/model/safetensors.h"
#include "kernels/cpu/attention_fast.h"
#include "tools/bench.h"

namespace spkv {
namespace {
using clock_type = std::chrono::steady_clock;

// The best of `reps` timings of fn, in seconds (the machine's noise only ever adds time).
template <class Fn>
double best_of(int reps, Fn&& fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = clock_type::now();
    fn();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

std::vector<float> randn(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// GFLOP/s of a float32 (n x n) @ (n x n) product through LibTorch (OpenBLAS): the GEMM ceiling.
double gemm_gflops(int64_t n) {
  torch::manual_seed(0);
  auto a = torch::randn({n, n}), b = torch::randn({n, n});
  torch::mm(a, b);  // warm up
  const double s = best_of(5, [&] { torch::mm(a, b); });
  return 2.0 * n * n * n / s / 1e9;
}

// STREAM triad a = b + 3 c over arrays of n floats: GB/s counting 3 n floats moved.
double triad_gbs(int64_t n) {
  std::vector<float> a(n, 0.f), b(n, 1.f), c(n, 2.f);
  const double s = best_of(5, [&] {
    float* __restrict pa = a.data();
    const float *__restrict pb = b.data(), *__restrict pc = c.data();
    for (int64_t i = 0; i < n; ++i) pa[i] = pb[i] + 3.f * pc[i];
  });
  return 3.0 * n * sizeof(float) / s / 1e9 + 0 * a[n / 2];
}
}  // namespace

void cmd_bench_kernels(const BenchKernelOptions& o) {
  const int64_t H = o.heads, Hkv = o.kv_heads, D = o.head_dim, W = o.window;
  std::mt19937 rng(1);
  const double ceiling = gemm_gflops(1024), triad = triad_gbs(int64_t(32) << 20);  // 3 x 128 MB, far beyond the last-level cache
  fmt::print("threads {}; GEMM ceiling (1024^3, LibTorch) {:.1f} GFLOP/s; triad {:.1f} GB/s\n", at::get_num_threads(),
             ceiling, triad);
  fmt::print("heads {} / {} KV, head size {}, window {}, SP-KV density {}; prefill in chunks of {}; decode over {} layers\n", H, Hkv,
             D, W, o.density, o.chunk, o.layers);
  fmt::print("{:>7} {:>6} | {:>11} {:>9} {:>8} | {:>10} {:>9} {:>9} {:>8}\n", "context", "cache", "prefill ms", "GFLOP/s",
             "of GEMM", "decode us", "KV MB", "GB/s", "of triad");
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t T : o.contexts) {
    auto q = randn(H * T * D, rng), k = randn(Hkv * T * D, rng), v = randn(Hkv * T * D, rng);
    std::vector<uint8_t> keep(Hkv * T);
    std::bernoulli_distribution open(o.density);
    for (auto& z : keep) z = open(rng);
    std::vector<int64_t> pos(T);
    for (int64_t t = 0; t < T; ++t) pos[t] = t;
    for (bool gated : {false, true}) {
      // Prefill as the engine runs it: chunks of o.chunk queries, each over the keys before it and its own.
      // SP-KV: [the kept keys older than the window (the store, compacted) | the window (the ring) | the
      // chunk], with the gates' decisions on the last two; dense: every key so far.
      std::vector<float> y(H * o.chunk * D), K, V;
      std::vector<uint8_t> z;
      std::vector<int64_t> k_pos, q_pos;
      double pairs = 0;  // visible (query, key) pairs, summed over the KV heads
      double prefill_s = 0;
      for (int64_t c0 = 0; c0 < T; c0 += o.chunk) {
        const int64_t n = std::min(o.chunk, T - c0);
        std::vector<int64_t> idx;  // the key positions of this chunk's call, in order
        for (int64_t s = 0; s < c0 + n; ++s)
          if (!gated || s >= c0 - W) idx.push_back(s);
        // Per KV head the store differs; the kernel takes one key list, so the store part is padded to the
        // longest head with invisible keys, as the engine does.
        int64_t n_store = 0;
        std::vector<std::vector<int64_t>> store(Hkv);
        for (int64_t hk = 0; hk < Hkv && gated; ++hk) {
          for (int64_t s = 0; s < c0 - W; ++s)
            if (keep[hk * T + s]) store[hk].push_back(s);
          n_store = std::max<int64_t>(n_store, int64_t(store[hk].size()));
        }
        const int64_t S = n_store + int64_t(idx.size());
        K.assign(Hkv * S * D, 0.f), V.assign(Hkv * S * D, 0.f), z.assign(Hkv * S, 0), k_pos.assign(S, -(int64_t(1) << 40));
        for (int64_t j = 0; j < int64_t(idx.size()); ++j) k_pos[n_store + j] = idx[j];
        for (int64_t hk = 0; hk < Hkv; ++hk) {
          auto put = [&](int64_t slot, int64_t s, uint8_t kept) {
            std::copy_n(&k[(hk * T + s) * D], D, &K[(hk * S + slot) * D]), std::copy_n(&v[(hk * T + s) * D], D, &V[(hk * S + slot) * D]);
            z[hk * S + slot] = kept;
          };
          for (int64_t j = 0; j < int64_t(store[hk].size()); ++j) put(j, store[hk][j], 1);
          for (int64_t j = 0; j < int64_t(idx.size()); ++j) put(n_store + j, idx[j], keep[hk * T + idx[j]]);
          for (int64_t t = c0; t < c0 + n; ++t) {
            if (!gated) { pairs += double(t + 1); continue; }
            pairs += double(store[hk].size()) + double(std::min<int64_t>(t + 1, W));
            for (int64_t s = std::max<int64_t>(0, c0 - W); s <= t - W; ++s) pairs += keep[hk * T + s];
          }
        }
        q_pos.resize(n);
        for (int64_t t = 0; t < n; ++t) q_pos[t] = c0 + t;
        kernels::GatedAttentionParams p;
        p.q = q.data() + c0 * D, p.k = K.data(), p.v = V.data(), p.y = y.data(), p.q_pos = q_pos.data(), p.k_pos = k_pos.data();
        p.B = 1, p.H = H, p.Hkv = Hkv, p.T = n, p.S = S, p.D = D, p.scale = float(1.0 / std::sqrt(double(D)));
        p.window = gated ? W : 0, p.keep = gated ? z.data() : nullptr;
        kernels::set_contiguous_strides(p);
        p.q_sh = T * D;  // q: (H, T, D), this chunk's rows
        prefill_s += best_of(T > 8192 ? 1 : 3, [&] { kernels::cpu::gated_attention(p); });
      }
      const double flops = 4.0 * D * pairs * double(H / Hkv);
      // Decode: one query per head over the real caches of the context, one per layer, so that a step reads
      // o.layers times the bytes of one layer, as a model's decode step does (the default model's 16k
      // context: 67 MB dense, beyond the last-level cache).
      KvCacheShape shape{1, 1, Hkv, D, 16};
      std::vector<std::unique_ptr<KvCache>> caches;
      std::vector<float> kr(Hkv * D), vr(Hkv * D);
      std::vector<uint8_t> zr(Hkv);
      for (int64_t il = 0; il < o.layers; ++il) {
        caches.push_back(gated ? std::unique_ptr<KvCache>(std::make_unique<SpkvKvCache>(shape, W)) : std::make_unique<DenseKvCache>(shape));
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t hk = 0; hk < Hkv; ++hk) {
            std::copy_n(&k[(hk * T + t) * D], D, &kr[hk * D]), std::copy_n(&v[(hk * T + t) * D], D, &vr[hk * D]);
            zr[hk] = keep[hk * T + t];
          }
          caches.back()->append(0, 0, kr.data(), vr.data(), zr.data());
        }
      }
      const auto qd = randn(H * D, rng);
      std::vector<float> yd(H * D);
      std::vector<kernels::DecodeParams> dps(o.layers);
      double bytes = 0;
      for (int64_t il = 0; il < o.layers; ++il) {
        auto& dp = dps[il];
        dp.q = qd.data(), dp.y = yd.data(), dp.H = H, dp.scale = float(1.0 / std::sqrt(double(D))), dp.cache = caches[il]->view(0);
        bytes += double(caches[il]->entries()) * 2 * D * sizeof(float);
      }
      const int reps = std::max<int>(5, int(2e9 / bytes));
      const double decode_s = best_of(3, [&] {
        for (int r = 0; r < reps; ++r)
          for (auto& dp : dps) kernels::cpu::decode_attention(dp);
      }) / reps;
      const double gflops = flops / prefill_s / 1e9, gbs = bytes / decode_s / 1e9;
      fmt::print("{:>7} {:>6} | {:>11.2f} {:>9.1f} {:>7.0f}% | {:>10.1f} {:>9.2f} {:>9.1f} {:>7.0f}%\n", T,
                 gated ? "SP-KV" : "dense", prefill_s * 1e3, gflops, 100 * gflops / ceiling, decode_s * 1e6, bytes / 1e6,
                 gbs, 100 * gbs / triad);
      rows.push_back({{"context", T}, {"cache", gated ? "spkv" : "dense"}, {"prefill_s", prefill_s}, {"prefill_gflops", gflops},
                      {"prefill_of_gemm", gflops / ceiling}, {"decode_s", decode_s}, {"kv_bytes", bytes},
                      {"decode_gbs", gbs}, {"decode_of_triad", gbs / triad}});
    }
  }
  if (!o.json.empty())
    write_file_atomic(o.json, json_text(nlohmann::json{{"bench", "kernels"}, {"threads", at::get_num_threads()},
                                                       {"gemm_gflops", ceiling}, {"triad_gbs", triad}, {"heads", H},
                                                       {"kv_heads", Hkv}, {"head_dim", D}, {"window", W},
                                                       {"density", o.density}, {"chunk", o.chunk}, {"layers", o.layers}, {"rows", rows}}));
}

}  // namespace spkv
