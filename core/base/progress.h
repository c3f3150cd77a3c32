// A terminal progress bar with rate and ETA, drawn on stderr: redrawn in place on a terminal, a plain line
// every few seconds otherwise (logs, CI). Torch-free; not a logger.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace spkv {

class Progress {
 public:
  // total <= 0: unknown (no ETA). unit: what is counted ("tok", "doc").
  Progress(std::string label, int64_t total, std::string unit);
  ~Progress();
  void add(int64_t n, const std::string& extra = {});  // extra: e.g. "nll 1.23"
  void finish();

 private:
  void draw(bool final);
  std::string label_, unit_, extra_;
  int64_t total_, done_ = 0;
  bool tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace spkv
