// Fuzz target: the gate-log reader's checks (core/gatelog/reader.cpp) on mutated logs: open, read every
// token-axis dataset of every document, build the full analysis report, and validate it (spkv check).
#include "analysis/check_log.h"
#include "analysis/report.h"
#include "core/gatelog/reader.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = spkv::fuzz::as_file(data, size, "log.h5");
  spkv::fuzz::expect_clean([&] {
    spkv::GateLogReader r(path);
    const auto& off = r.token_offsets();
    for (size_t d = 0; d + 1 < off.size(); ++d) {
      r.u(off[d], off[d + 1]), r.z(off[d], off[d + 1]), r.token_ids(off[d], off[d + 1]);
      r.nll(off[d], off[d + 1]), r.cache_entries(off[d], off[d + 1]), r.token_text(off[d], off[d + 1]);
    }
  });
  spkv::fuzz::expect_clean([&] { spkv::analysis::check_gate_log(path); });
  return spkv::fuzz::expect_clean([&] { spkv::analysis::analyze_logs({path}); });
}
