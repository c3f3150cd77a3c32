#include "kernels/cpu/cache_append_ref.h"

#include <algorithm>

namespace spkv::kernels {

bool valid(const AppendParams& p) {
  return p.n_seq >= 0 && p.Hkv > 0 && p.D > 0 && p.W > 0 && p.page_size > 0 && p.k_new && p.v_new && p.keep_new &&
         p.ring_k && p.ring_v && p.ring_pos && p.ring_keep && p.ring_len && p.seen && p.k_pool && p.v_pool &&
         p.page_table && p.store_len && p.free_pages && p.free_next && p.overflow;
}

CacheView append_view(const AppendParams& a, const float* const* page_ptr_k, const float* const* page_ptr_v,
                      const int32_t* indptr) {
  CacheView v;
  v.n_seq = a.n_seq, v.Hkv = a.Hkv, v.D = a.D, v.W = a.W, v.page_size = a.page_size;
  v.ring_k = a.ring_k, v.ring_v = a.ring_v, v.ring_pos = a.ring_pos, v.ring_keep = a.ring_keep, v.ring_len = a.ring_len;
  v.page_k = page_ptr_k, v.page_v = page_ptr_v;
  v.store_indptr = indptr, v.store_pages = a.page_table, v.store_len = a.store_len;
  return v;
}

namespace cpu {

Status cache_append_ref(const AppendParams& p) {
  if (!valid(p)) return Status::invalid_argument;
  const int64_t D = p.D, W = p.W, P = p.page_size;
  for (int64_t b = 0; b < p.n_seq; ++b) {
    const int64_t pos = p.seen[b], slot = pos % W;
    for (int64_t hk = 0; hk < p.Hkv; ++hk) {
      const int64_t i = b * p.Hkv + hk, row = i * W + slot;
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
      std::copy_n(p.k_new + i * D, D, p.ring_k + row * D);
      std::copy_n(p.v_new + i * D, D, p.ring_v + row * D);
      p.ring_keep[row] = p.keep_new[i] ? 1 : 0;
    }
    p.ring_pos[b * W + slot] = pos;
    p.ring_len[b] = int32_t(std::min(pos + 1, W));
    p.seen[b] = pos + 1;
  }
  return Status::ok;
}

}  // namespace cpu
}  // namespace spkv::kernels
