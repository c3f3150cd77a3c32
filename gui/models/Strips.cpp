#include "gui/models/Strips.h"

#include <algorithm>
#include <cmath>

namespace spkv::gui {

StripRows stripRows(int64_t layers, int64_t heads, bool per_layer) {
  StripRows r;
  for (int64_t l = 0; l < layers; ++l) {
    if (per_layer) {
      r.heads.emplace_back();
      for (int64_t h = 0; h < heads; ++h) r.heads.back().push_back(l * heads + h);
      r.labels.push_back(QStringLiteral("L%1").arg(l));
      continue;
    }
    for (int64_t h = 0; h < heads; ++h) r.heads.push_back({l * heads + h}), r.labels.push_back(QStringLiteral("L%1.H%2").arg(l).arg(h));
  }
  return r;
}

QRgb stripColor(double u, double kept) {
  u = std::clamp(u, 0.0, 1.0), kept = std::clamp(kept, 0.0, 1.0);
  auto mix = [](double a, double b, double t) { return a + (b - a) * t; };
  const double kr = mix(25, 70, u), kg = mix(45, 170, u), kb = mix(95, 255, u);   // kept: blue
  const double dr = mix(80, 255, u), dg = mix(40, 150, u), db = mix(20, 60, u);   // dropped: orange
  return qRgb(int(std::lround(mix(dr, kr, kept))), int(std::lround(mix(dg, kg, kept))), int(std::lround(mix(db, kb, kept))));
}

QImage renderStrips(const Document& doc, const Lod& lod, const TokenAxis& axis, const StripRows& rows, int width_px) {
  QImage img(std::max(1, width_px), std::max<int>(1, int(rows.heads.size())), QImage::Format_RGB32);
  img.fill(QColor(40, 40, 40));
  for (int x = 0; x < width_px; ++x) {
    const double a = axis.tokenAt(x), b = axis.tokenAt(x + 1);
    int64_t t0 = int64_t(std::floor(a)), t1 = std::max(t0 + 1, int64_t(std::floor(b)));
    if (t0 >= doc.T || t1 <= 0) continue;
    for (size_t r = 0; r < rows.heads.size(); ++r) {
      double u = 0, k = 0;
      for (int64_t i : rows.heads[r]) {
        double ui, ki;
        lodCell(doc, lod, t0, t1, i, ui, ki);
        u += ui, k += ki;
      }
      const double n = double(rows.heads[r].size());
      reinterpret_cast<QRgb*>(img.scanLine(int(r)))[x] = stripColor(u / n, k / n);
    }
  }
  return img;
}

}  // namespace spkv::gui
