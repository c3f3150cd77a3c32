// A small 2-D plot description and its painter: lines, points and bars with axes, ticks and a legend,
// drawn with any QPainter, so the same code paints the widget and writes PNG and SVG files.
#pragma once
#include <QColor>
#include <QRectF>
#include <QSize>
#include <QString>
#include <vector>

class QPainter;

namespace spkv::gui {

struct Series {
  enum class Kind { Line, Points, Bars } kind = Kind::Line;
  QString name;
  QColor color;
  std::vector<double> x, y;  // (n) for bars, x holds the left edges and width the bar width
  double width = 1;
};

struct Plot {
  QString title, xLabel, yLabel;
  std::vector<Series> series;
  bool yFromZero = true;
};

// Nice tick positions (1, 2, 5 x 10^k) covering [lo, hi], about `target` of them.
std::vector<double> niceTicks(double lo, double hi, int target = 6);
void paintPlot(QPainter& p, const QRectF& area, const Plot& plot);
// Write the plot to a file (atomically: a temporary file renamed into place). Throws spkv::FileError.
void savePng(const Plot& plot, const QString& path, QSize size = {900, 560});
void saveSvg(const Plot& plot, const QString& path, QSize size = {900, 560});

}  // namespace spkv::gui
