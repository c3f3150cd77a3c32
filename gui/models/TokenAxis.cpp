#include "gui/models/TokenAxis.h"

#include <algorithm>
#include <cmath>

namespace spkv::gui {

void TokenAxis::reset(int64_t n_tokens, double width_px) {
  n_ = std::max<int64_t>(0, n_tokens), width_ = std::max(1.0, width_px), first_ = 0;
  per_px_ = std::max(double(n_) / width_, 1.0 / kMaxPixelsPerToken);
}

void TokenAxis::resize(double width_px) {
  width_ = std::max(1.0, width_px);
  clamp();
}

int64_t TokenAxis::token_index_at(double x) const {
  const double t = std::floor(token_at(x));
  return t < 0 || t >= double(n_) ? -1 : int64_t(t);
}

void TokenAxis::zoom(double factor, double anchor_x) {
  const double anchor = token_at(anchor_x);
  per_px_ /= factor;
  clamp();
  first_ = anchor - anchor_x * per_px_;
  clamp();
}

void TokenAxis::pan(double dx_px) {
  first_ -= dx_px * per_px_;
  clamp();
}

void TokenAxis::center_on(double token) {
  first_ = token - 0.5 * width_ * per_px_;
  clamp();
}

std::pair<int64_t, int64_t> TokenAxis::visible() const {
  const int64_t b = std::clamp<int64_t>(int64_t(std::floor(first_)), 0, n_);
  const int64_t e = std::clamp<int64_t>(int64_t(std::ceil(token_at(width_))), b, n_);
  return {b, e};
}

void TokenAxis::clamp() {
  // Between the whole document in view and kMaxPixelsPerToken; never scrolled past either end.
  per_px_ = std::clamp(per_px_, 1.0 / kMaxPixelsPerToken, std::max(double(n_) / width_, 1.0 / kMaxPixelsPerToken));
  first_ = std::clamp(first_, 0.0, std::max(0.0, double(n_) - width_ * per_px_));
}

}  // namespace spkv::gui
