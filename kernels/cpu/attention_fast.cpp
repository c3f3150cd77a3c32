// Fast CPU attention: block-sparse gated prefill and decode over the compacted cache. Online softmax in
// float32; the loops over D are contiguous so that the compiler vectorizes them.
#include "kernels/cpu/attention_fast.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace spkv::kernels::cpu {
namespace {
constexpr int64_t kTile = 32;   // queries per tile
constexpr int64_t kBlock = 32;  // keys per block
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Below this much work (multiply-adds) a decode call runs on the calling thread (decode_step.cpp says why).
constexpr int64_t kParallelWork = int64_t(1) << 20;

inline float dot(const float* a, const float* b, int64_t D) {
  float s = 0.f;
  for (int64_t d = 0; d < D; ++d) s += a[d] * b[d];
  return s;
}

// Per (b, hk, key block): the block's position range and whether any gate in it is open.
struct BlockPlan {
  int64_t n_blocks = 0, n_tiles = 0;
  std::vector<int64_t> kmin, kmax;  // (n_blocks)
  std::vector<int64_t> qmin, qmax;  // (n_tiles)
  std::vector<uint8_t> any_keep;    // (B, Hkv, n_blocks)

  explicit BlockPlan(const GatedAttentionParams& p) {
    n_blocks = (p.S + kBlock - 1) / kBlock, n_tiles = (p.T + kTile - 1) / kTile;
    auto range = [](const int64_t* pos, int64_t begin, int64_t end, int64_t& lo, int64_t& hi) {
      lo = *std::min_element(pos + begin, pos + end), hi = *std::max_element(pos + begin, pos + end);
    };
    kmin.resize(n_blocks), kmax.resize(n_blocks), qmin.resize(n_tiles), qmax.resize(n_tiles);
    for (int64_t j = 0; j < n_blocks; ++j) range(p.k_pos, j * kBlock, std::min(p.S, (j + 1) * kBlock), kmin[j], kmax[j]);
    for (int64_t i = 0; i < n_tiles; ++i) range(p.q_pos, i * kTile, std::min(p.T, (i + 1) * kTile), qmin[i], qmax[i]);
    any_keep.assign(p.B * p.Hkv * n_blocks, 0);
    if (!p.keep) return;
    for (int64_t b = 0; b < p.B; ++b)
      for (int64_t hk = 0; hk < p.Hkv; ++hk)
        for (int64_t s = 0; s < p.S; ++s)
          if (p.keep[b * p.keep_sb + hk * p.keep_sh + s]) any_keep[(b * p.Hkv + hk) * n_blocks + s / kBlock] = 1;
  }
  // Can any key of block j be visible to any query of tile i?
  bool read(const GatedAttentionParams& p, int64_t b, int64_t hk, int64_t i, int64_t j) const {
    if (kmin[j] > qmax[i]) return false;  // entirely in the future
    const bool some_local = p.window <= 0 || qmin[i] - kmax[j] < p.window;
    return some_local || any_keep[(b * p.Hkv + hk) * n_blocks + j];
  }
};
}  // namespace

BlockCount gated_attention_blocks(const GatedAttentionParams& p) {
  BlockCount c;
  if (!valid(p) || p.T == 0 || p.S == 0) return c;
  const BlockPlan plan(p);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t hk = 0; hk < p.Hkv; ++hk)
      for (int64_t i = 0; i < plan.n_tiles; ++i)
        for (int64_t j = 0; j < plan.n_blocks; ++j) c.read += plan.read(p, b, hk, i, j), ++c.total;
  return c;
}

Status gated_attention(const GatedAttentionParams& p) {
  if (!valid(p)) return Status::invalid_argument;
  if (!hard_only(p)) return Status::unsupported;
  if (p.T == 0) return Status::ok;
  const int64_t G = p.H / p.Hkv, D = p.D;
  if (p.S == 0) {
    for (int64_t b = 0; b < p.B; ++b)
      for (int64_t h = 0; h < p.H; ++h)
        for (int64_t t = 0; t < p.T; ++t) std::fill_n(p.y + b * p.y_sb + h * p.y_sh + t * p.y_st, D, 0.f);
    return Status::ok;
  }
  const BlockPlan plan(p);
  const int64_t n_tasks = p.B * p.Hkv * plan.n_tiles;
#pragma omp parallel
  {
    // Online-softmax state of the tile's G x kTile rows: running max, running sum, accumulator (D).
    std::vector<float> m(G * kTile), l(G * kTile), acc(G * kTile * D), sc(kBlock);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < n_tasks; ++task) {
      const int64_t i = task % plan.n_tiles, bh = task / plan.n_tiles, b = bh / p.Hkv, hk = bh % p.Hkv;
      const int64_t t0 = i * kTile, nt = std::min(kTile, p.T - t0);
      std::fill(m.begin(), m.end(), kNegInf), std::fill(l.begin(), l.end(), 0.f), std::fill(acc.begin(), acc.end(), 0.f);
      const uint8_t* keep = p.keep ? p.keep + b * p.keep_sb + hk * p.keep_sh : nullptr;
      for (int64_t j = 0; j < plan.n_blocks; ++j) {
        if (!plan.read(p, b, hk, i, j)) continue;
        const int64_t s0 = j * kBlock, ns = std::min(kBlock, p.S - s0);
        for (int64_t g = 0; g < G; ++g)
          for (int64_t t = 0; t < nt; ++t) {
            const int64_t qt = t0 + t, row = g * kTile + t;
            const float* q = p.q + b * p.q_sb + (hk * G + g) * p.q_sh + qt * p.q_st;
            float bmax = kNegInf;
            for (int64_t s = 0; s < ns; ++s) {
              const int64_t ks = s0 + s, d = p.q_pos[qt] - p.k_pos[ks];
              const bool visible = d >= 0 && (p.window <= 0 || d < p.window || (keep && keep[ks]));
              sc[s] = visible ? dot(q, p.k + b * p.k_sb + hk * p.k_sh + ks * p.k_st, D) * p.scale : kNegInf;
              bmax = std::max(bmax, sc[s]);
            }
            if (bmax == kNegInf) continue;
            const float new_m = std::max(m[row], bmax), rescale = std::exp(m[row] - new_m);
            float* a = acc.data() + row * D;
            for (int64_t d = 0; d < D; ++d) a[d] *= rescale;
            l[row] *= rescale;
            for (int64_t s = 0; s < ns; ++s) {
              if (sc[s] == kNegInf) continue;
              const float w = std::exp(sc[s] - new_m);
              l[row] += w;
              const float* v = p.v + b * p.v_sb + hk * p.v_sh + (s0 + s) * p.v_st;
              for (int64_t d = 0; d < D; ++d) a[d] += w * v[d];
            }
            m[row] = new_m;
          }
      }
      for (int64_t g = 0; g < G; ++g)
        for (int64_t t = 0; t < nt; ++t) {
          const int64_t row = g * kTile + t;
          float* y = p.y + b * p.y_sb + (hk * G + g) * p.y_sh + (t0 + t) * p.y_st;
          const float inv = l[row] > 0 ? 1.f / l[row] : 0.f;
          for (int64_t d = 0; d < D; ++d) y[d] = acc[row * D + d] * inv;
        }
    }
  }
  return Status::ok;
}

Status decode_attention(const DecodeParams& p) {
  const CacheView& c = p.cache;
  if (!valid(p)) return Status::invalid_argument;
  const int64_t G = p.H / c.Hkv, D = c.D, n = c.n_seq * c.Hkv;
  int64_t keys = 0;  // summed over the heads: the work is about 4 G D flops a key
  for (int64_t i = 0; i < n; ++i) keys += (c.W > 0 ? c.ring_len[i / c.Hkv] : 0) + c.store_len[i];
#pragma omp parallel if (keys * G * D >= kParallelWork)
  {
    // Per thread, kept between calls: a decode step allocates nothing.
    static thread_local std::vector<float> score, acc, den;
    acc.resize(G * D), den.resize(G);
#pragma omp for schedule(dynamic)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = i / c.Hkv, ring = c.W > 0 ? c.ring_len[b] : 0, n_keys = ring + c.store_len[i];
      const float* q = p.q + i * G * D;  // the G query heads of KV head hk are contiguous: h = hk * G + g
      float* y = p.y + i * G * D;
      score.resize(G * n_keys);
      // Visit the keys segment by segment: the ring rows, then each store page (the last one partly filled).
      auto for_each_segment = [&](auto&& fn) {
        if (ring > 0) fn(c.ring_k + i * c.W * D, c.ring_v + i * c.W * D, ring, int64_t(0));
        for (int64_t j = 0, done = 0; done < c.store_len[i]; ++j) {
          const int32_t page = c.store_pages[c.store_indptr[i] + j];
          const int64_t rows = std::min<int64_t>(c.page_size, c.store_len[i] - done);
          fn(c.page_k[page], c.page_v[page], rows, ring + done);
          done += rows;
        }
      };
      for_each_segment([&](const float* k, const float*, int64_t rows, int64_t off) {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t g = 0; g < G; ++g) score[g * n_keys + off + r] = dot(q + g * D, k + r * D, D) * p.scale;
      });
      std::fill(den.begin(), den.end(), 0.f);
      for (int64_t g = 0; g < G; ++g) {
        float* sg = score.data() + g * n_keys;
        const float mx = n_keys ? *std::max_element(sg, sg + n_keys) : 0.f;
        for (int64_t s = 0; s < n_keys; ++s) den[g] += (sg[s] = std::exp(sg[s] - mx));
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for_each_segment([&](const float*, const float* v, int64_t rows, int64_t off) {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t g = 0; g < G; ++g) {
            const float w = score[g * n_keys + off + r];
            float* a = acc.data() + g * D;
            for (int64_t d = 0; d < D; ++d) a[d] += w * v[r * D + d];
          }
      });
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d) y[g * D + d] = den[g] > 0 ? acc[g * D + d] / den[g] : 0.f;
    }
  }
  return Status::ok;
}

}  // namespace spkv::kernels::cpu
