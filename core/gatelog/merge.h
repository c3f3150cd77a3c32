// Merging the shard logs of one sharded `spkv run` (docs/distributed.md) into one gate log that presents
// the whole corpus in the original document order, as a run in one process would have written it. A
// physical copy through the gate-log writer, not HDF5 virtual datasets: the result is one self-contained
// file that every reader opens unchanged, with the corpus summaries recomputed over all documents, and no
// source file that can go missing later (docs/distributed.md says why). Torch-free. Not the sharding
// (tools/run.cpp) and not the reading of one log (reader.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace spkv {

struct MergeSummary {
  int64_t shards = 0, documents = 0, tokens = 0;
};

// Checks that `shards` are the complete shard logs of one run, then writes `out` (atomically: OUT.partial,
// then renamed; a stale OUT.partial of an interrupted merge is replaced). One run: the same model checksum,
// model config, tokenizer, inputs, split policy, settings (gating, tap, tau, window, keep_first, context,
// chunk, attention statistics) and shard count; each shard index once; document ranges that tile
// [0, corpus_documents) with nothing missing and nothing twice. Throws FileError naming the shard and the
// field, or the missing shard. `out` must not exist.
MergeSummary merge_gate_logs(const std::vector<std::string>& shards, const std::string& out);

}  // namespace spkv
