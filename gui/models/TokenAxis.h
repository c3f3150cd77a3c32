// The token view's horizontal coordinate mapping: token coordinate <-> pixel, zoom about a pixel, pan,
// and the visible token range. A token t covers [t, t + 1) in token coordinates. Widget-free.
#pragma once
#include <cstdint>
#include <utility>

namespace spkv::gui {

class TokenAxis {
 public:
  static constexpr double kMaxPixelsPerToken = 64;

  // A document of n tokens shown in width pixels; resets to the whole document.
  void reset(int64_t n_tokens, double width_px);
  void resize(double width_px);  // keeps the token at the left edge and the scale, within limits

  double xOf(double token) const { return (token - m_first) / m_perPx; }
  double tokenAt(double x) const { return m_first + x * m_perPx; }
  int64_t tokenIndexAt(double x) const;  // the token under pixel x, or -1 outside the document

  void zoom(double factor, double anchor_x);  // factor > 1 zooms in; the token under anchor_x stays put
  void pan(double dx_px);                      // content moves right by dx_px
  void centerOn(double token);
  void fit() { reset(m_n, m_width); }

  std::pair<int64_t, int64_t> visible() const;  // tokens [begin, end) at least partly visible
  double tokensPerPixel() const { return m_perPx; }
  double first() const { return m_first; }
  double width() const { return m_width; }
  int64_t nTokens() const { return m_n; }

 private:
  void clamp();
  int64_t m_n = 0;
  double m_width = 1, m_first = 0, m_perPx = 1;
};

}  // namespace spkv::gui
