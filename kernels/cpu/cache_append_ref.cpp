#include "kernels/cpu/cache_append_ref.h"

#include <algorithm>

namespace spkv::kernels::cpu {

Status cache_append_ref(const AppendParams& p) {
  if (!valid(p)) return Status::invalid_argument;
  const int64_t D = p.D, W = p.W, P = p.page_size, T = p.T;
  for (int64_t b = 0; b < p.n_seq; ++b) {
    for (int64_t t = 0; t < T; ++t) {  // token by token: a chunk is T decode steps
      const int64_t pos = p.seen[b], slot = pos % W;
      for (int64_t hk = 0; hk < p.Hkv; ++hk) {
        const int64_t i = b * p.Hkv + hk, row = i * W + slot, src = (i * T + t) * D;
        // The token at pos - W leaves the ring: onto the store if its gate was open.
        if (pos >= W && p.ring_keep[row]) {
          int32_t& len = p.store_len[i];
          bool ok = true;
          if (len % P == 0) {  // a new page: the head's table must have room, then the free list
            ok = len / P < p.max_pages;
            const int32_t next = ok ? (*p.free_next)++ : 0;
            ok = ok && next < p.n_free;
            if (ok) p.page_table[i * p.max_pages + len / P] = p.free_pages[next];
          }
          if (ok) {
            const int64_t at = (int64_t(p.page_table[i * p.max_pages + len / P]) * P + len % P) * D;
            std::copy_n(p.ring_k + row * D, D, p.k_pool + at);
            std::copy_n(p.ring_v + row * D, D, p.v_pool + at);
            ++len;
          } else {
            *p.overflow = 1;
          }
        }
        std::copy_n(p.k_new + src, D, p.ring_k + row * D);
        std::copy_n(p.v_new + src, D, p.ring_v + row * D);
        p.ring_keep[row] = p.keep_new[(b * T + t) * p.Hkv + hk] ? 1 : 0;
      }
      p.ring_pos[b * W + slot] = pos;
      p.ring_len[b] = int32_t(std::min(pos + 1, W));
      p.seen[b] = pos + 1;
    }
  }
  return Status::ok;
}

}  // namespace spkv::kernels::cpu
