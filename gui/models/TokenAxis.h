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

  double x_of(double token) const { return (token - first_) / per_px_; }
  double token_at(double x) const { return first_ + x * per_px_; }
  int64_t token_index_at(double x) const;  // the token under pixel x, or -1 outside the document

  void zoom(double factor, double anchor_x);  // factor > 1 zooms in; the token under anchor_x stays put
  void pan(double dx_px);                      // content moves right by dx_px
  void center_on(double token);
  void fit() { reset(n_, width_); }

  std::pair<int64_t, int64_t> visible() const;  // tokens [begin, end) at least partly visible
  double tokens_per_pixel() const { return per_px_; }
  double first() const { return first_; }
  double width() const { return width_; }
  int64_t n_tokens() const { return n_; }

 private:
  void clamp();
  int64_t n_ = 0;
  double width_ = 1, first_ = 0, per_px_ = 1;
};

}  // namespace spkv::gui
