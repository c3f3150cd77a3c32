// The KV caches against the eviction rule written out by hand: after N tokens a head holds its last W
// tokens plus exactly the earlier tokens whose gate was open, in order; the dense cache holds everything;
// memory accounting counts the pages actually allocated; cleared pages are reused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "core/base/errors.h"
#include "core/gatelog/rule.h"
#include "core/infer/kv_cache.h"
#include "kernels/cpu/attention_ref.h"
#include "kernels/cpu/cache_append_ref.h"
#include "tests/kernels/append_cache.h"

namespace spkv {
namespace {

// The row written for (position, layer, KV head): k[d] = pos * 1000 + il * 100 + hk * 10 + d; v = -k.
std::vector<float> rows(int64_t pos, int64_t il, int64_t Hkv, int64_t D, float sign) {
  std::vector<float> r(Hkv * D);
  for (int64_t hk = 0; hk < Hkv; ++hk)
    for (int64_t d = 0; d < D; ++d) r[hk * D + d] = sign * float(pos * 1000 + il * 100 + hk * 10 + d);
  return r;
}

// The positions a head's store holds, read back through the view (K row element 0 encodes the position).
std::vector<int64_t> store_positions(const kernels::CacheView& v, int64_t b, int64_t hk, int64_t il) {
  std::vector<int64_t> out;
  const int64_t i = b * v.Hkv + hk;
  for (int64_t j = 0; j < v.store_len[i]; ++j) {
    const int32_t page = v.store_pages[v.store_indptr[i] + j / v.page_size];
    const float* k = v.page_k[page] + (j % v.page_size) * v.D;
    const float* val = v.page_v[page] + (j % v.page_size) * v.D;
    EXPECT_EQ(val[1], -k[1]);
    out.push_back(int64_t(k[0] - il * 100 - hk * 10) / 1000);
  }
  return out;
}

// The rule every reader counts with (core/gatelog/rule.h) against the cache that implements it: after each
// token, the entries the SP-KV cache holds equal spkv_cache_entries of the kept eligible tokens that have
// left the window, with keep_first tokens pinned (the engine keeps them whatever the gate says), for
// pieces shorter than the window, shorter than keep_first and longer than both.
TEST(KvCache, TheGateLogRuleCountsWhatTheCacheHolds) {
  const int64_t L = 2, Hkv = 3, D = 4, W = 5, LH = L * Hkv;
  std::mt19937 rng(7);
  std::bernoulli_distribution open(0.35);
  for (const int64_t keep_first : {0, 2, 9})
    for (const int64_t N : {3, 8, 31}) {
      SpkvKvCache cache({1, L, Hkv, D, 4}, W);
      std::vector<uint8_t> z(N * LH);  // (N, L, Hkv)
      for (int64_t t = 0; t < N; ++t)
        for (int64_t i = 0; i < LH; ++i) z[t * LH + i] = t < keep_first || open(rng);
      int64_t kept_left = 0;  // kept eligible tokens that have left the window, over the heads
      for (int64_t t = 0; t < N; ++t) {
        for (int64_t il = 0; il < L; ++il) {
          auto k = rows(t, il, Hkv, D, 1.f), v = rows(t, il, Hkv, D, -1.f);
          cache.append(0, il, k.data(), v.data(), &z[(t * L + il) * Hkv]);
        }
        const int64_t s = t - W;  // the token leaving the window at t
        if (s >= keep_first)
          for (int64_t i = 0; i < LH; ++i) kept_left += z[s * LH + i];
        ASSERT_EQ(cache.entries(), spkv_cache_entries(t + 1, W, keep_first, LH, kept_left))
            << "keep_first " << keep_first << ", N " << N << ", after token " << t;
      }
      // At the end, the kept eligible tokens are those of positions keep_first <= s < N - W.
      const EligibleKeys e = eligible_keys(N, W, keep_first);
      int64_t kept = 0;
      for (int64_t t = e.begin; t < e.end; ++t)
        for (int64_t i = 0; i < LH; ++i) kept += z[t * LH + i];
      EXPECT_EQ(kept, kept_left);
    }
}

TEST(KvCache, SpkvHeadsHoldTheirWindowPlusExactlyTheKeptTokens) {
  const int64_t B = 2, L = 2, Hkv = 3, D = 5, W = 4, P = 3, N = 23;
  SpkvKvCache cache({B, L, Hkv, D, P}, W);
  std::mt19937 rng(1);
  std::bernoulli_distribution open(0.4);
  std::vector<uint8_t> z(B * L * N * Hkv);  // (B, L, N, Hkv) decisions
  for (auto& x : z) x = open(rng);
  for (int64_t pos = 0; pos < N; ++pos)
    for (int64_t il = 0; il < L; ++il)
      for (int64_t b = 0; b < B; ++b) {
        auto k = rows(pos + 100 * b, il, Hkv, D, 1.f), v = rows(pos + 100 * b, il, Hkv, D, -1.f);
        cache.append(b, il, k.data(), v.data(), &z[((b * L + il) * N + pos) * Hkv]);
      }
  int64_t pages = 0;
  for (int64_t il = 0; il < L; ++il) {
    const kernels::CacheView v = cache.view(il);
    for (int64_t b = 0; b < B; ++b) {
      EXPECT_EQ(cache.length(b, il), N);
      ASSERT_EQ(v.ring_len[b], W);
      std::vector<int64_t> ring(v.ring_pos + b * W, v.ring_pos + (b + 1) * W);
      std::sort(ring.begin(), ring.end());
      EXPECT_EQ(ring, (std::vector<int64_t>{N - 4, N - 3, N - 2, N - 1}));
      for (int64_t hk = 0; hk < Hkv; ++hk) {
        std::vector<int64_t> expect;
        for (int64_t pos = 0; pos < N - W; ++pos)
          if (z[((b * L + il) * N + pos) * Hkv + hk]) expect.push_back(pos + 100 * b);
        EXPECT_EQ(store_positions(v, b, hk, il), expect) << "b " << b << " layer " << il << " head " << hk;
        EXPECT_EQ(cache.entries(b, il, hk), W + int64_t(expect.size()));
        pages += (int64_t(expect.size()) + P - 1) / P;
      }
    }
  }
  EXPECT_EQ(cache.bytes_allocated(), int64_t(sizeof(float)) * (2 * B * L * Hkv * W * D + pages * 2 * P * D));
  // Cleared pages are reused: refilling sequence 0 the same way allocates nothing new.
  const int64_t before = cache.bytes_allocated();
  cache.clear(0);
  EXPECT_EQ(cache.length(0, 1), 0);
  EXPECT_EQ(cache.entries(0, 1, 2), 0);
  for (int64_t pos = 0; pos < N; ++pos)
    for (int64_t il = 0; il < L; ++il) {
      auto k = rows(pos, il, Hkv, D, 1.f), v = rows(pos, il, Hkv, D, -1.f);
      cache.append(0, il, k.data(), v.data(), &z[(il * N + pos) * Hkv]);
    }
  EXPECT_EQ(cache.bytes_allocated(), before);
}

TEST(KvCache, DenseCacheHoldsEveryTokenAndIgnoresTheGates) {
  const int64_t Hkv = 2, D = 4, P = 16, N = 37;
  DenseKvCache cache({1, 1, Hkv, D, P});
  const std::vector<uint8_t> closed(Hkv, 0);
  for (int64_t pos = 0; pos < N; ++pos) {
    auto k = rows(pos, 0, Hkv, D, 1.f), v = rows(pos, 0, Hkv, D, -1.f);
    cache.append(0, 0, k.data(), v.data(), closed.data());
  }
  const kernels::CacheView v = cache.view(0);
  EXPECT_EQ(v.W, 0);
  std::vector<int64_t> all(N);
  for (int64_t i = 0; i < N; ++i) all[i] = i;
  for (int64_t hk = 0; hk < Hkv; ++hk) EXPECT_EQ(store_positions(v, 0, hk, 0), all);
  EXPECT_EQ(cache.entries(), Hkv * N);
  EXPECT_EQ(cache.bytes_allocated(), int64_t(sizeof(float)) * Hkv * 3 * 2 * P * D);  // 37 tokens: 3 pages a head
}

TEST(KvCache, InvalidShapesAreRejected) {
  EXPECT_THROW(SpkvKvCache({1, 2, 2, 8, 16}, 0), ConfigError);
  EXPECT_THROW(DenseKvCache({1, 0, 2, 8, 16}), ConfigError);
  EXPECT_THROW(DenseKvCache({1, 2, 2, 8, 0}), ConfigError);
}

// The fused append's CPU reference (the CUDA kernel's specification) against the cache the engine uses: the
// same rows and gates give views with the same tokens in the same order, so decode attention over either is
// bit-identical; a head whose page table or the free list runs out raises the overflow flag.
TEST(KvCache, FusedAppendReferenceKeepsWhatTheCacheKeeps) {
  const int64_t B = 3, Hkv = 2, D = 7, W = 5, P = 3, H = 4, N = 41;
  SpkvKvCache cache({B, 1, Hkv, D, P}, W);
  kernels::test::AppendCache fused(B, Hkv, D, W, P, /*max_pages=*/16, /*n_pages=*/B * Hkv * 16);
  std::mt19937 rng(5);
  std::normal_distribution<float> n;
  auto random = [&](size_t size) {
    std::vector<float> x(size);
    for (auto& e : x) e = n(rng);
    return x;
  };
  for (int64_t t = 0; t < N; ++t) {
    const auto k = random(B * Hkv * D), v = random(B * Hkv * D);
    std::vector<uint8_t> keep(B * Hkv);
    for (int64_t i = 0; i < B * Hkv; ++i) keep[i] = i == 1 || (i != 4 && rng() % 3 == 0);  // head 1 keeps all, 4 none
    for (int64_t b = 0; b < B; ++b) cache.append(b, 0, k.data() + b * Hkv * D, v.data() + b * Hkv * D, keep.data() + b * Hkv);
    ASSERT_EQ(kernels::cpu::cache_append_ref(fused.params(k.data(), v.data(), keep.data())), kernels::Status::ok);
    if (t % 10 != 3 && t != N - 1) continue;
    // Decode attention over both views: identical outputs.
    const auto q = random(B * H * D);
    std::vector<float> y1(B * H * D, NAN), y2(B * H * D, NAN);
    kernels::DecodeParams p;
    p.q = q.data(), p.H = H, p.scale = 0.4f;
    p.cache = cache.view(0), p.y = y1.data();
    ASSERT_EQ(kernels::cpu::decode_attention_ref(p), kernels::Status::ok);
    p.cache = fused.view(), p.y = y2.data();
    ASSERT_EQ(kernels::cpu::decode_attention_ref(p), kernels::Status::ok);
    EXPECT_EQ(y1, y2) << "after " << t + 1 << " tokens";
    for (int64_t b = 0; b < B; ++b)
      for (int64_t hk = 0; hk < Hkv; ++hk) EXPECT_EQ(fused.store_len[b * Hkv + hk], cache.entries(b, 0, hk) - std::min(t + 1, W));
  }
  EXPECT_EQ(fused.store_len[1], N - W);  // the head that keeps everything
  EXPECT_EQ(fused.store_len[4], 0);      // the head that keeps nothing
  EXPECT_EQ(fused.overflow[0], 0);
  // Room for two pages per head: the heads that keep more than 2 * P tokens overflow, and keep their first 2 * P.
  kernels::test::AppendCache tight(1, 2, D, W, P, /*max_pages=*/2, /*n_pages=*/8);
  for (int64_t t = 0; t < 20; ++t) {
    const auto k = random(2 * D), v = random(2 * D);
    const std::vector<uint8_t> keep{1, 0};
    ASSERT_EQ(kernels::cpu::cache_append_ref(tight.params(k.data(), v.data(), keep.data())), kernels::Status::ok);
  }
  EXPECT_EQ(tight.overflow[0], 1);
  EXPECT_EQ(tight.store_len[0], 2 * P);
  EXPECT_EQ(tight.free_next[0], 2);  // pages are taken only while the head's table has room
}

// Budgeted baselines (cache_policy.h) against a brute-force simulation written from the policies'
// definitions: after every token each head holds exactly the positions the simulation holds, as many rows as
// its budget allows (never more), the store rows the kernels see are those positions, and every eviction is
// recorded once. Keys are random (K-norm must rank them); V rows encode the position. Odd sizes; budgets:
// fixed slots (at and above the window), densities, and the entries of a real SP-KV run, per head and
// uniform.
TEST(KvCache, BudgetedPoliciesKeepWhatABruteForceSimulationKeeps) {
  const int64_t L = 2, Hkv = 3, D = 5, W = 4, LH = L * Hkv, N = 29;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::bernoulli_distribution open(0.4);
  // The keys, and the SP-KV run whose entries the matched budgets copy.
  std::vector<float> keys(N * LH * D);
  for (auto& x : keys) x = normal(rng);
  std::vector<int32_t> spkv_entries(N * LH);
  {
    SpkvKvCache spkv({1, L, Hkv, D, 3}, W);
    std::vector<uint8_t> gates(N * LH);  // (T, L, Hkv), as the engine reports them
    for (int64_t t = 0; t < N; ++t)
      for (int64_t il = 0; il < L; ++il) {
        uint8_t* z = &gates[(t * L + il) * Hkv];
        for (int64_t hk = 0; hk < Hkv; ++hk) z[hk] = open(rng);
        spkv.append(0, il, &keys[(t * L + il) * Hkv * D], rows(t, il, Hkv, D, 1.f).data(), z);
        for (int64_t hk = 0; hk < Hkv; ++hk) spkv_entries[(t * L + il) * Hkv + hk] = int32_t(spkv.entries(0, il, hk));
      }
    // The matched schedule computed from the decisions alone is the entries the SP-KV cache held.
    EXPECT_EQ(matched_budget(gates.data(), N, L, Hkv, W, false).matched, spkv_entries);
  }
  std::vector<std::pair<std::string, CacheBudget>> budgets = {
      {"slots:7", parse_budget("slots:7")}, {"slots:4", parse_budget("slots:4")},
      {"density:0.3", parse_budget("density:0.3")}, {"density:0", parse_budget("density:0")}};
  for (bool uniform : {false, true}) {
    CacheBudget m;
    m.kind = CacheBudget::Kind::matched, m.matched = spkv_entries, m.n_layers = L, m.n_kv_heads = Hkv, m.uniform = uniform;
    budgets.emplace_back(uniform ? "matched uniform" : "matched", m);
  }
  // The budget, written out: rows after n tokens, never below the window.
  auto limit = [&](const std::string& name, int64_t n, int64_t il, int64_t hk) -> int64_t {
    int64_t r = 0;
    if (name == "slots:7") r = 7;
    if (name == "slots:4") r = 4;
    if (name == "density:0.3") r = n <= W ? n : W + int64_t(0.3 * double(n - W));
    if (name == "density:0") r = std::min(n, W);
    if (name == "matched") r = spkv_entries[(n - 1) * LH + il * Hkv + hk];
    if (name == "matched uniform") {
      int64_t total = 0;
      for (int64_t i = 0; i < LH; ++i) total += spkv_entries[(n - 1) * LH + i];
      r = total / LH + (il * Hkv + hk < total % LH ? 1 : 0);
    }
    return std::max(r, std::min(n, W));
  };
  for (const std::string policy : {"streaming:2", "knorm", "random:7"})
    for (const auto& [name, budget] : budgets) {
      const PolicySpec spec = parse_policy(policy);
      BudgetedKvCache cache({1, L, Hkv, D, 3}, W, budget, spec);
      std::vector<std::vector<int64_t>> held(LH);  // the simulation: positions per head
      std::vector<int64_t> evictions(LH, 0);
      for (int64_t t = 0; t < N; ++t)
        for (int64_t il = 0; il < L; ++il) {
          cache.append(0, il, &keys[(t * L + il) * Hkv * D], rows(t, il, Hkv, D, 1.f).data(), nullptr);
          for (int64_t hk = 0; hk < Hkv; ++hk) {
            auto& h = held[il * Hkv + hk];
            h.push_back(t);
            const int64_t n = t + 1, lim = limit(name, n, il, hk);
            while (int64_t(h.size()) > lim) {  // the victim by the policy's definition, among out-of-window positions
              int64_t victim = -1;
              double worst = 0;
              for (int64_t p : h) {
                if (p > t - W) continue;
                const float* k = &keys[(p * L + il) * Hkv * D + hk * D];
                double score = 0;
                if (policy == "knorm") {
                  for (int64_t d = 0; d < D; ++d) score -= double(k[d]) * double(k[d]);  // -|k|^2: same order as -|k|
                } else if (policy == "streaming:2") {
                  score = double(p) + (p < 2 ? 1e9 : 0);
                } else {
                  score = spec.entry_score(il, hk, p, k, D);  // the draw is the policy's definition
                }
                if (victim < 0 || score < worst) victim = p, worst = score;  // ties: the earlier position (scan order)
              }
              ASSERT_GE(victim, 0);
              h.erase(std::find(h.begin(), h.end(), victim));
              ++evictions[il * Hkv + hk];
            }
            auto got = cache.positions(0, il, hk);
            std::sort(got.begin(), got.end());
            EXPECT_EQ(got, h) << policy << ", " << name << ", token " << t << ", head (" << il << ", " << hk << ")";
            EXPECT_EQ(cache.entries(0, il, hk), std::min(n, lim)) << policy << ", " << name;
            if (name == "matched") EXPECT_EQ(cache.entries(0, il, hk), spkv_entries[t * LH + il * Hkv + hk]);
            EXPECT_EQ(int64_t(cache.evictions(0, il, hk).size()), evictions[il * Hkv + hk]);
          }
        }
      // The kernels' view holds the store's positions (V rows encode them; rows() writes -V here as +V).
      for (int64_t il = 0; il < L; ++il) {
        const auto v = cache.view(il);
        for (int64_t hk = 0; hk < Hkv; ++hk) {
          std::vector<int64_t> store;
          for (int64_t j = 0; j < v.store_len[hk]; ++j) {
            const int32_t page = v.store_pages[v.store_indptr[hk] + j / v.page_size];
            store.push_back(int64_t(v.page_v[page][(j % v.page_size) * v.D] - il * 100 - hk * 10) / 1000);
          }
          auto all = cache.positions(0, il, hk);
          EXPECT_EQ(store, std::vector<int64_t>(all.begin() + std::min<int64_t>(N, W), all.end())) << policy << ", " << name;
        }
      }
    }
  EXPECT_THROW(parse_policy("h2o:x"), ConfigError);
  EXPECT_THROW(parse_policy("snapkv:0"), ConfigError);
  EXPECT_EQ(parse_policy("snapkv:9").name(), "snapkv:9");
  EXPECT_THROW(parse_budget("density:1.5"), ConfigError);
  EXPECT_THROW(parse_budget("slots:-1"), ConfigError);
}

// One decode step of a budgeted cache as the engine runs it: append token t to layer il, attend with the
// reference kernel over what is held, hand the weights to the cache. -> y (H, D)
std::vector<float> step(BudgetedKvCache& cache, int64_t il, const float* q, const float* k, const float* v, int64_t H) {
  cache.append(0, il, k, v, nullptr);
  const int64_t D = cache.shape().head_dim;
  kernels::DecodeParams p;
  std::vector<float> y(H * D), w(H * 256, -1.f);
  p.q = q, p.y = y.data(), p.H = H, p.scale = float(1.0 / std::sqrt(double(D)));
  p.cache = cache.view(il), p.weights = w.data(), p.weights_stride = 256;
  EXPECT_EQ(kernels::cpu::decode_attention_ref(p), kernels::Status::ok);
  if (cache.wants_attention()) cache.observe(il, w.data(), 256, H);
  return y;
}

// H2O by hand. One head, D = 1, W = 1, two rows (the window's and one more); every query is 1 and key s is
// ln c_s, so query t's weights are c_s over the c of what it sees. c = 1, 3, 1, 2:
//   t = 0 sees {0}: 0 earns 1.                      t = 1 sees {1, 0}: 0 earns 1/4 (1.25), 1 earns 3/4.
//   t = 2: 1 joins the store at 0.75 < 1.25 and is evicted; t = 2 sees {2, 0}: 0 earns 1/2 (1.75), 2 1/2.
//   t = 3: 2 joins at 0.5 and is evicted. H2O holds on to position 0.
// TOVA on the same keys scores by the last query alone: at t = 2 it evicts 0 (1/4 against 3/4); query 2
// gives 1 3/4 and 2 1/4, so at t = 3 it evicts 2.
TEST(KvCache, H2OAccumulatesTheAttentionWorkedOutByHand) {
  const std::vector<float> k = {0.f, std::log(3.f), 0.f, std::log(2.f)}, one = {1.f};
  for (const std::string policy : {"h2o", "tova"}) {
    BudgetedKvCache cache({1, 1, 1, 1, 2}, 1, parse_budget("slots:2"), parse_policy(policy));
    std::vector<float> y;
    for (int64_t t = 0; t < 4; ++t) y = step(cache, 0, one.data(), &k[t], &k[t], 1);
    std::vector<std::pair<int64_t, int64_t>> ev;
    for (auto e : cache.evictions(0, 0, 0)) ev.emplace_back(e.pos, e.at);
    if (policy == "h2o") {
      EXPECT_EQ(ev, (std::vector<std::pair<int64_t, int64_t>>{{1, 2}, {2, 3}}));
      EXPECT_EQ(cache.positions(0, 0, 0), (std::vector<int64_t>{3, 0}));
      // Query 3 sees {3, 0}: weights 2/3 and 1/3 on values ln 2 and 0.
      EXPECT_NEAR(y[0], 2.0 / 3.0 * std::log(2.0), 1e-6);
    } else {
      EXPECT_EQ(ev, (std::vector<std::pair<int64_t, int64_t>>{{0, 2}, {2, 3}}));
      EXPECT_EQ(cache.positions(0, 0, 0), (std::vector<int64_t>{3, 1}));
    }
  }
}

// The attention-scored policies and the oracle against a float64 simulation of their definitions: random
// queries and keys (odd sizes, grouped query heads), after every token each head holds exactly the positions
// the simulation holds and the kernel's output equals the simulation's softmax over them. The oracle runs
// its two passes through the cache; the simulation computes the future attention itself.
TEST(KvCache, AttentionScoredPoliciesKeepWhatAFloat64SimulationKeeps) {
  const int64_t L = 2, Hkv = 3, G = 2, H = Hkv * G, D = 5, W = 3, N = 31, LH = L * Hkv;
  std::mt19937 rng(23);
  std::normal_distribution<float> normal;
  std::vector<float> q(N * L * H * D), k(N * L * Hkv * D), v(N * L * Hkv * D);
  for (auto* x : {&q, &k, &v})
    for (auto& e : *x) e = 1.5f * normal(rng);
  auto Q = [&](int64_t t, int64_t il) { return &q[(t * L + il) * H * D]; };
  auto K = [&](int64_t t, int64_t il) { return &k[(t * L + il) * Hkv * D]; };
  auto V = [&](int64_t t, int64_t il) { return &v[(t * L + il) * Hkv * D]; };
  // Query t's weights over positions `held` of head (il, hk), summed over the group, in float64; and y.
  auto attend = [&](int64_t t, int64_t il, int64_t hk, const std::vector<int64_t>& held, std::vector<double>* y) {
    std::vector<double> w(held.size(), 0.0);
    for (int64_t g = 0; g < G; ++g) {
      const float* qh = Q(t, il) + (hk * G + g) * D;
      std::vector<double> s(held.size());
      double mx = -1e300, den = 0;
      for (size_t i = 0; i < held.size(); ++i) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += double(qh[d]) * K(held[i], il)[hk * D + d];
        mx = std::max(mx, s[i] = dot / std::sqrt(double(D)));
      }
      for (double& x : s) den += (x = std::exp(x - mx));
      for (size_t i = 0; i < held.size(); ++i) {
        w[i] += s[i] / den;
        if (y)
          for (int64_t d = 0; d < D; ++d) (*y)[(hk * G + g) * D + d] += s[i] / den * V(held[i], il)[hk * D + d];
      }
    }
    return w;
  };
  // The oracle's future: a(t', s) under full attention, summed from t on.
  std::vector<double> future(LH * N * (N + 1), 0.0);
  auto fut = [&](int64_t il, int64_t hk, int64_t s, int64_t t) -> double& { return future[((il * Hkv + hk) * N + s) * (N + 1) + t]; };
  for (int64_t il = 0; il < L; ++il)
    for (int64_t hk = 0; hk < Hkv; ++hk)
      for (int64_t t = 0; t < N; ++t) {
        std::vector<int64_t> all(t + 1);
        std::iota(all.begin(), all.end(), 0);
        const auto w = attend(t, il, hk, all, nullptr);
        for (int64_t s = 0; s <= t; ++s) fut(il, hk, s, t) = w[s];
      }
  for (int64_t row = 0; row < LH * N; ++row)
    for (int64_t t = N - 1; t >= 0; --t) future[row * (N + 1) + t] += future[row * (N + 1) + t + 1];

  std::bernoulli_distribution open(0.35);
  std::vector<uint8_t> gates(N * LH);
  for (auto& z : gates) z = open(rng);
  const std::vector<std::pair<std::string, CacheBudget>> budgets = {
      {"slots:6", parse_budget("slots:6")}, {"density:0.4", parse_budget("density:0.4")},
      {"matched", matched_budget(gates.data(), N, L, Hkv, W, false)},
      {"matched uniform", matched_budget(gates.data(), N, L, Hkv, W, true)}};
  for (const std::string policy : {"h2o", "tova", "snapkv:4", "oracle"})
    for (const auto& [name, budget] : budgets) {
      const PolicySpec spec = parse_policy(policy);
      BudgetedKvCache cache({1, L, Hkv, D, 2}, W, budget, spec);
      if (spec.kind == PolicyKind::oracle) {  // the first pass, full attention, recorded
        BudgetedKvCache full({1, L, Hkv, D, 2}, W, parse_budget("slots:1000"), spec);
        full.record_attention(N);
        for (int64_t t = 0; t < N; ++t)
          for (int64_t il = 0; il < L; ++il) step(full, il, Q(t, il), K(t, il), V(t, il), H);
        auto f = full.recorded();
        for (int64_t il = 0; il < L; ++il)
          for (int64_t hk = 0; hk < Hkv; ++hk)
            for (int64_t s = 0; s < N; ++s)
              for (int64_t t = 0; t <= N; ++t) ASSERT_NEAR(f->at(il, hk, s, t), fut(il, hk, s, t), 1e-5);
        cache.set_future(f);
      }
      std::vector<std::vector<int64_t>> held(LH);
      std::vector<std::map<int64_t, std::vector<double>>> seen(LH);  // position -> weight from each query
      for (int64_t t = 0; t < N; ++t)
        for (int64_t il = 0; il < L; ++il) {
          const auto y = step(cache, il, Q(t, il), K(t, il), V(t, il), H);
          std::vector<double> y_sim(H * D, 0.0);
          for (int64_t hk = 0; hk < Hkv; ++hk) {
            const int64_t i = il * Hkv + hk;
            auto& h = held[i];
            h.push_back(t);
            const int64_t lim = budget.rows(t + 1, il, hk, W);
            while (int64_t(h.size()) > lim) {
              int64_t victim = -1;
              double worst = 0;
              for (int64_t p : h) {
                if (p > t - W) continue;  // the window stays
                const auto& ws = seen[i][p];
                double sc = 0;
                if (policy == "h2o") for (double x : ws) sc += x;
                if (policy == "tova") sc = ws.back();
                if (policy == "snapkv:4") for (size_t j = ws.size() > 4 ? ws.size() - 4 : 0; j < ws.size(); ++j) sc += ws[j];
                if (policy == "oracle") sc = fut(il, hk, p, t);
                if (victim < 0 || sc < worst || (sc == worst && p < victim)) victim = p, worst = sc;
              }
              ASSERT_GE(victim, 0);
              h.erase(std::find(h.begin(), h.end(), victim));
            }
            auto got = cache.positions(0, il, hk);
            std::sort(got.begin(), got.end());
            ASSERT_EQ(got, h) << policy << ", " << name << ", token " << t << ", head (" << il << ", " << hk << ")";
            const auto w = attend(t, il, hk, h, &y_sim);
            for (size_t j = 0; j < h.size(); ++j) seen[i][h[j]].push_back(w[j]);
          }
          for (int64_t x = 0; x < H * D; ++x) ASSERT_NEAR(y[x], y_sim[x], 1e-5) << policy << ", " << name << ", token " << t;
        }
      int64_t held_sum = 0;  // the KV-ratio numerator: rows held after every append
      for (int64_t n = 1; n <= N; ++n)
        for (int64_t il = 0; il < L; ++il)
          for (int64_t hk = 0; hk < Hkv; ++hk) held_sum += std::min(n, budget.rows(n, il, hk, W));
      EXPECT_EQ(cache.held_total(0), held_sum) << policy << ", " << name;
    }
  BudgetedKvCache no_future({1, 1, 1, 1, 2}, 1, parse_budget("slots:1"), parse_policy("oracle"));
  const float x = 1.f;
  no_future.append(0, 0, &x, &x, nullptr);
  EXPECT_THROW(no_future.append(0, 0, &x, &x, nullptr), Error);
}

}  // namespace
}  // namespace spkv
