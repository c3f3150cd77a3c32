// The fast CPU paths of the attention kernels: float32, OpenMP over (sequence, KV head), and the G query
// heads of a KV head read each key once. attention_ref.h is their specification; tests compare them at odd
// sizes. The thread count is OpenMP's, which LibTorch's at::set_num_threads also sets.
#pragma once
#include "kernels/attention_params.h"
#include "kernels/decode_params.h"

namespace spkv::kernels::cpu {

// Gated (prefill) attention, same contract as gated_attention_ref for hard gates (hard_only(p); otherwise
// Status::unsupported: the soft mode is a training path, on the GPU). Queries go in tiles of 32 and keys in
// blocks of 32; a key block is skipped without reading its keys when it is entirely in the future of the
// tile, or when it is entirely outside the window of the tile and every gate in it is closed.
Status gated_attention(const GatedAttentionParams& p);

// The key blocks gated_attention reads for p, and how many (tile, block) pairs there are in all: the
// measure of what block skipping saves. Returns {blocks read, blocks total}.
struct BlockCount {
  int64_t read = 0, total = 0;
};
BlockCount gated_attention_blocks(const GatedAttentionParams& p);

// Decode attention over a compacted cache, same contract as decode_attention_ref. Reads only the ring and
// the kept tokens of each head: the work is proportional to what the cache holds.
Status decode_attention(const DecodeParams& p);

}  // namespace spkv::kernels::cpu
