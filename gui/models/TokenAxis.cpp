#include "gui/models/TokenAxis.h"

#include <algorithm>
#include <cmath>

namespace spkv::gui {

void TokenAxis::reset(int64_t n_tokens, double width_px) {
  m_n = std::max<int64_t>(0, n_tokens), m_width = std::max(1.0, width_px), m_first = 0;
  m_perPx = std::max(double(m_n) / m_width, 1.0 / kMaxPixelsPerToken);
}

void TokenAxis::resize(double width_px) {
  m_width = std::max(1.0, width_px);
  clamp();
}

int64_t TokenAxis::tokenIndexAt(double x) const {
  const double t = std::floor(tokenAt(x));
  return t < 0 || t >= double(m_n) ? -1 : int64_t(t);
}

void TokenAxis::zoom(double factor, double anchor_x) {
  const double anchor = tokenAt(anchor_x);
  m_perPx /= factor;
  clamp();
  m_first = anchor - anchor_x * m_perPx;
  clamp();
}

void TokenAxis::pan(double dx_px) {
  m_first -= dx_px * m_perPx;
  clamp();
}

void TokenAxis::centerOn(double token) {
  m_first = token - 0.5 * m_width * m_perPx;
  clamp();
}

std::pair<int64_t, int64_t> TokenAxis::visible() const {
  const int64_t b = std::clamp<int64_t>(int64_t(std::floor(m_first)), 0, m_n);
  const int64_t e = std::clamp<int64_t>(int64_t(std::ceil(tokenAt(m_width))), b, m_n);
  return {b, e};
}

void TokenAxis::clamp() {
  // Between the whole document in view and kMaxPixelsPerToken; never scrolled past either end.
  m_perPx = std::clamp(m_perPx, 1.0 / kMaxPixelsPerToken, std::max(double(m_n) / m_width, 1.0 / kMaxPixelsPerToken));
  m_first = std::clamp(m_first, 0.0, std::max(0.0, double(m_n) - m_width * m_perPx));
}

}  // namespace spkv::gui
