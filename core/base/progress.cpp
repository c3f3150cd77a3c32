#include "core/base/progress.h"

#include <unistd.h>

#include <cstdio>

namespace spkv {
using clock_ = std::chrono::steady_clock;

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), tty_(isatty(STDERR_FILENO)) {
  start_ = last_draw_ = clock_::now();
}

Progress::~Progress() { finish(); }

void Progress::add(int64_t n, const std::string& extra) {
  done_ += n;
  if (!extra.empty()) extra_ = extra;
  const auto now = clock_::now();
  if (now - last_draw_ > (tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(5000))) {
    last_draw_ = now;
    draw(false);
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

static std::string hms(double s) {
  char b[32];
  const long t = long(s + 0.5);
  std::snprintf(b, sizeof b, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  return b;
}

void Progress::draw(bool final) {
  const double el = std::chrono::duration<double>(clock_::now() - start_).count();
  const double rate = el > 0 ? done_ / el : 0;
  char line[512];
  if (total_ > 0) {
    const double f = std::min(1.0, double(done_) / total_);
    char bar[31];
    const int fill = int(f * 30);
    for (int i = 0; i < 30; ++i) bar[i] = i < fill ? '#' : '.';
    bar[30] = 0;
    const double eta = rate > 0 ? (total_ - done_) / rate : 0;
    std::snprintf(line, sizeof line, "%s [%s] %3.0f%% %lld/%lld %s  %.1f %s/s  elapsed %s  eta %s  %s",
                  label_.c_str(), bar, 100 * f, (long long)done_, (long long)total_, unit_.c_str(), rate,
                  unit_.c_str(), hms(el).c_str(), hms(eta).c_str(), extra_.c_str());
  } else {
    std::snprintf(line, sizeof line, "%s %lld %s  %.1f %s/s  elapsed %s  %s", label_.c_str(), (long long)done_,
                  unit_.c_str(), rate, unit_.c_str(), hms(el).c_str(), extra_.c_str());
  }
  if (tty_) std::fprintf(stderr, "\r\033[K%s%s", line, final ? "\n" : "");
  else std::fprintf(stderr, "%s\n", line);
  std::fflush(stderr);
}

}  // namespace spkv
