// Fast CPU attention: block-sparse gated prefill and decode over the compacted cache. Online softmax in
// float32 over blocks of keys; the scores, exponentials and value sums are vec.h's vector loops.
#include "kernels/cpu/attention_fast.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/cpu/vec.h"

namespace spkv::kernels::cpu {
namespace {
constexpr int64_t kTile = 32;   // queries per tile
constexpr int64_t kBlock = kKeys;  // keys per block (vec.h's scores_block)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Below this much work (multiply-adds) a decode call runs on the calling thread (decode_step.cpp says why).
constexpr int64_t kParallelWork = int64_t(1) << 20;
constexpr int64_t kPrefetchPages = 2;  // decode: how far ahead the store pages are fetched (1-6 measured alike)

// Per (b, hk, key block): the block's position range and whether any gate in it is open.
struct BlockPlan {
  int64_t n_blocks = 0, n_tiles = 0;
  std::vector<int64_t> kmin, kmax;  // (n_blocks)
  std::vector<int64_t> qmin, qmax;  // (n_tiles)
  std::vector<uint8_t> any_keep, every_keep;  // (B, Hkv, n_blocks): some / every gate in the block open

  explicit BlockPlan(const GatedAttentionParams& p) {
    n_blocks = (p.S + kBlock - 1) / kBlock, n_tiles = (p.T + kTile - 1) / kTile;
    auto range = [](const int64_t* pos, int64_t begin, int64_t end, int64_t& lo, int64_t& hi) {
      lo = *std::min_element(pos + begin, pos + end), hi = *std::max_element(pos + begin, pos + end);
    };
    kmin.resize(n_blocks), kmax.resize(n_blocks), qmin.resize(n_tiles), qmax.resize(n_tiles);
    for (int64_t j = 0; j < n_blocks; ++j) range(p.k_pos, j * kBlock, std::min(p.S, (j + 1) * kBlock), kmin[j], kmax[j]);
    for (int64_t i = 0; i < n_tiles; ++i) range(p.q_pos, i * kTile, std::min(p.T, (i + 1) * kTile), qmin[i], qmax[i]);
    any_keep.assign(p.B * p.Hkv * n_blocks, 0), every_keep.assign(p.B * p.Hkv * n_blocks, p.keep != nullptr);
    if (!p.keep) return;
    for (int64_t b = 0; b < p.B; ++b)
      for (int64_t hk = 0; hk < p.Hkv; ++hk)
        for (int64_t s = 0; s < p.S; ++s) {
          const bool open = p.keep[b * p.keep_sb + hk * p.keep_sh + s];
          any_keep[(b * p.Hkv + hk) * n_blocks + s / kBlock] |= open;
          every_keep[(b * p.Hkv + hk) * n_blocks + s / kBlock] &= open;
        }
  }
  bool all_keep(const GatedAttentionParams& p, int64_t b, int64_t hk, int64_t j) const {
    return every_keep[(b * p.Hkv + hk) * n_blocks + j];
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
  // Every key block transposed once, for all the tiles that read it: (B, Hkv, n_blocks, D, kBlock), the
  // columns past the last key zero.
  static thread_local std::vector<float> kt_buffer;  // the calling thread's; the team reaches it through kt_all
  kt_buffer.resize(p.B * p.Hkv * plan.n_blocks * D * kBlock);
  float* const kt_all = kt_buffer.data();
#pragma omp parallel for schedule(static)
  for (int64_t bj = 0; bj < p.B * p.Hkv * plan.n_blocks; ++bj) {
    const int64_t j = bj % plan.n_blocks, bh = bj / plan.n_blocks, b = bh / p.Hkv, hk = bh % p.Hkv;
    const int64_t s0 = j * kBlock, ns = std::min(kBlock, p.S - s0);
    const float* K = p.k + b * p.k_sb + hk * p.k_sh + s0 * p.k_st;
    float* kt = kt_all + bj * D * kBlock;
    for (int64_t d = 0; d < D; ++d)
      for (int64_t s = 0; s < kBlock; ++s) kt[d * kBlock + s] = s < ns ? K[s * p.k_st + d] : 0.f;
  }
#pragma omp parallel
  {
    // Per thread, kept between calls. The tile's G x kTile query rows: online-softmax state (running max m,
    // running sum l, accumulator acc (D)) and their scores against one key block; the block's keys transposed.
    static thread_local std::vector<float> m, l, acc, sc;
    m.resize(G * kTile), l.resize(G * kTile), acc.resize(G * kTile * D), sc.resize(G * kTile * kBlock);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < n_tasks; ++task) {
      const int64_t i = task % plan.n_tiles, bh = task / plan.n_tiles, b = bh / p.Hkv, hk = bh % p.Hkv;
      const int64_t t0 = i * kTile, nt = std::min(kTile, p.T - t0);
      std::fill(m.begin(), m.end(), kNegInf), std::fill(l.begin(), l.end(), 0.f), std::fill(acc.begin(), acc.end(), 0.f);
      const uint8_t* keep = p.keep ? p.keep + b * p.keep_sb + hk * p.keep_sh : nullptr;
      for (int64_t j = 0; j < plan.n_blocks; ++j) {
        if (!plan.read(p, b, hk, i, j)) continue;
        const int64_t s0 = j * kBlock, ns = std::min(kBlock, p.S - s0);
        const float* V = p.v + b * p.v_sb + hk * p.v_sh + s0 * p.v_st;
        const float* kt = kt_all + (bh * plan.n_blocks + j) * D * kBlock;
        for (int64_t g = 0; g < G; ++g)
          scores_block(p.q + b * p.q_sb + (hk * G + g) * p.q_sh + t0 * p.q_st, p.q_st, nt, kt, D, sc.data() + g * kTile * kBlock);
        // Mask and scale. Every key of the block is visible to every query of the tile when all are past
        // and each is inside the window or kept (a store block: compacted kept keys).
        const bool all_visible =
            plan.kmax[j] <= plan.qmin[i] && (p.window <= 0 || plan.qmax[i] - plan.kmin[j] < p.window || plan.all_keep(p, b, hk, j));
        for (int64_t g = 0; g < G; ++g)
          for (int64_t t = 0; t < nt; ++t) {
            const int64_t qt = t0 + t;
            float* sr = sc.data() + (g * kTile + t) * kBlock;
            if (all_visible) {
              for (int64_t s = 0; s < kBlock; ++s) sr[s] = s < ns ? sr[s] * p.scale : kNegInf;
              continue;
            }
            for (int64_t s = 0; s < kBlock; ++s) {
              const int64_t d = s < ns ? p.q_pos[qt] - p.k_pos[s0 + s] : -1;
              const bool visible = s < ns && d >= 0 && (p.window <= 0 || d < p.window || (keep && keep[s0 + s]));
              sr[s] = visible ? sr[s] * p.scale : kNegInf;
            }
          }
        // The tile's rows: g-major with kTile rows per query head, nt of them in use.
        for (int64_t g = 0; g < G; ++g)
          softmax_values_block(sc.data() + g * kTile * kBlock, nt, ns, V, p.v_st, D, m.data() + g * kTile, l.data() + g * kTile,
                               acc.data() + g * kTile * D);
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
  if (!valid(p) || !weights_fit(p)) return Status::invalid_argument;
  const int64_t G = p.H / c.Hkv, D = c.D, n = c.n_seq * c.Hkv;
  int64_t keys = 0;  // summed over the heads: the work is about 4 G D flops a key
  for (int64_t i = 0; i < n; ++i) keys += (c.W > 0 ? c.ring_len[i / c.Hkv] : 0) + c.store_len[i];
#pragma omp parallel if (keys * G * D >= kParallelWork)
  {
    // Per thread, kept between calls: a decode step allocates nothing. Online softmax over the segments
    // (the ring, then each store page): running max m and sum l, accumulator acc (D), per query head.
    static thread_local std::vector<float> m, l, acc, sc;
    m.resize(G), l.resize(G), acc.resize(G * D), sc.resize(std::max(c.W, c.page_size));
#pragma omp for schedule(dynamic)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = i / c.Hkv, ring = c.W > 0 ? c.ring_len[b] : 0;
      const float* q = p.q + i * G * D;  // the G query heads of KV head hk are contiguous: h = hk * G + g
      std::fill(m.begin(), m.end(), kNegInf), std::fill(l.begin(), l.end(), 0.f), std::fill(acc.begin(), acc.end(), 0.f);
      auto segment = [&](const float* K, const float* V, int64_t rows) {
        attend_rows(q, G, K, V, rows, D, p.scale, m.data(), l.data(), acc.data(), sc.data());
      };
      if (ring > 0) segment(c.ring_k + i * c.W * D, c.ring_v + i * c.W * D, ring);
      const int32_t* pages = c.store_pages + c.store_indptr[i];
      for (int64_t j = 0, done = 0; done < c.store_len[i]; ++j) {
        const int64_t rows = std::min<int64_t>(c.page_size, c.store_len[i] - done);
        // Pages are scattered in memory, beyond the hardware prefetcher's reach: ask for the page
        // kPrefetchPages ahead now, so that it streams in while this one is used.
        const int64_t ahead = j + kPrefetchPages;
        if (ahead * c.page_size < c.store_len[i]) {
          const char *nk = reinterpret_cast<const char*>(c.page_k[pages[ahead]]), *nv = reinterpret_cast<const char*>(c.page_v[pages[ahead]]);
          for (int64_t off = 0; off < c.page_size * D * int64_t(sizeof(float)); off += 64)
            __builtin_prefetch(nk + off), __builtin_prefetch(nv + off);
        }
        segment(c.page_k[pages[j]], c.page_v[pages[j]], rows);
        done += rows;
      }
      float* y = p.y + i * G * D;
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d) y[g * D + d] = l[g] > 0 ? acc[g * D + d] / l[g] : 0.f;
      if (!p.weights) continue;
      // The weights: a second pass over the keys with the final max and sum (only when asked for).
      float* w0 = p.weights + i * G * p.weights_stride;  // (G, stride): rows h = hk * G + g
      auto weights = [&](const float* K, int64_t rows, int64_t at) {
        for (int64_t g = 0; g < G; ++g) {
          float* w = w0 + g * p.weights_stride + at;
          matvec_rows(K, D, q + g * D, nullptr, 0, rows, D, w);
          for (int64_t r = 0; r < rows; ++r) w[r] *= p.scale;
          exp_shifted(w, rows, m[g]);
          for (int64_t r = 0; r < rows; ++r) w[r] = l[g] > 0 ? w[r] / l[g] : 0.f;
        }
      };
      if (ring > 0) weights(c.ring_k + i * c.W * D, ring, 0);
      for (int64_t j = 0, done = 0; done < c.store_len[i]; ++j) {
        const int64_t rows = std::min<int64_t>(c.page_size, c.store_len[i] - done);
        weights(c.page_k[pages[j]], rows, ring + done);
        done += rows;
      }
    }
  }
  return Status::ok;
}

}  // namespace spkv::kernels::cpu
