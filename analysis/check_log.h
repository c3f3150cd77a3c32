// `spkv check LOG.h5`: verifies every invariant of the gate-log schema (docs/hdf5-schema.md) from the file
// alone: shapes and CSR offsets, positions, NLL, token text (position 0 empty, each document's text valid UTF-8),
// z against u, tau and keep_first, the per-document eligible and kept counts, cache_entries, the attention
// sums, and every summary (recomputed from the decisions). Reads one document at a time. It does not
// rerun the model: whether u is what the checkpoint computes is `spkv run`'s own check and the tests'.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace spkv::analysis {

struct CheckReport {
  int64_t documents = 0, tokens = 0;
  bool complete = false;                // the `complete` attribute (0 in a partial log)
  std::vector<std::string> checked;     // the invariants checked, in words, in order
};

// Throws spkv::LogViolation ("LOG.h5: <the first violation, with its dataset and index>") or, for a file
// that is not a readable gate log, spkv::FileError.
CheckReport check_gate_log(const std::string& path);

}  // namespace spkv::analysis
