#include "gui/models/Plot.h"

#include <QFontMetricsF>
#include <QImage>
#include <QPainter>
#include <QPainterPath>
#include <QSaveFile>
#include <QSvgGenerator>
#include <algorithm>
#include <cmath>

#include "core/base/errors.h"

namespace spkv::gui {

std::vector<double> niceTicks(double lo, double hi, int target) {
  if (!(hi > lo)) hi = lo + 1;
  const double raw = (hi - lo) / std::max(1, target), mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> out;
  for (double t = std::ceil(lo / step) * step; t <= hi + 1e-9 * step; t += step) out.push_back(std::abs(t) < 1e-12 * step ? 0 : t);
  return out;
}

namespace {
QString tickLabel(double v) {
  const double a = std::abs(v);
  if (a >= 1e6) return QString::number(v / 1e6, 'g', 4) + "M";
  if (a >= 1e4) return QString::number(v / 1e3, 'g', 4) + "k";
  return QString::number(v, 'g', 4);
}
}  // namespace

void paintPlot(QPainter& p, const QRectF& area, const Plot& plot) {
  p.save();
  p.setRenderHint(QPainter::Antialiasing);
  p.fillRect(area, Qt::white);
  const QFontMetricsF fm(p.font());
  // Data range.
  double x0 = INFINITY, x1 = -INFINITY, y0 = plot.yFromZero ? 0 : INFINITY, y1 = -INFINITY;
  for (const auto& s : plot.series)
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i] + (s.kind == Series::Kind::Bars ? s.width : 0));
      y0 = std::min(y0, s.y[i]), y1 = std::max(y1, s.y[i]);
    }
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  y1 += 0.04 * (y1 - y0);
  if (std::any_of(plot.series.begin(), plot.series.end(), [](const Series& s) { return s.kind == Series::Kind::Points; })) {
    const double pad = 0.03 * (x1 - x0);  // points at the extremes stay inside the frame
    x0 -= pad, x1 += pad;
  }
  const QRectF plotArea(QPointF(area.left() + fm.horizontalAdvance("00000.0") + fm.height() + 8, area.top() + 2 * fm.height() + 4),
                        QPointF(area.right() - 12, area.bottom() - 2.5 * fm.height() - 8));
  auto X = [&](double x) { return plotArea.left() + (x - x0) / (x1 - x0) * plotArea.width(); };
  auto Y = [&](double y) { return plotArea.bottom() - (y - y0) / (y1 - y0) * plotArea.height(); };
  // Title, grid, ticks, labels.
  p.setPen(Qt::black);
  const QFont normal = p.font();
  QFont bold = normal;
  bold.setBold(true);
  p.setFont(bold);
  p.drawText(QRectF(area.left(), area.top() + 2, area.width(), fm.height() + 2), Qt::AlignHCenter,
             QFontMetricsF(bold).elidedText(plot.title, Qt::ElideMiddle, area.width() - 8));
  p.setFont(normal);
  for (double t : niceTicks(x0, x1)) {
    p.setPen(QColor(230, 230, 230));
    p.drawLine(QPointF(X(t), plotArea.top()), QPointF(X(t), plotArea.bottom()));
    p.setPen(Qt::black);
    p.drawText(QRectF(X(t) - 40, plotArea.bottom() + 3, 80, fm.height()), Qt::AlignHCenter, tickLabel(t));
  }
  for (double t : niceTicks(y0, y1)) {
    p.setPen(QColor(230, 230, 230));
    p.drawLine(QPointF(plotArea.left(), Y(t)), QPointF(plotArea.right(), Y(t)));
    p.setPen(Qt::black);
    p.drawText(QRectF(area.left(), Y(t) - fm.height() / 2, plotArea.left() - area.left() - 4, fm.height()),
               Qt::AlignRight | Qt::AlignVCenter, tickLabel(t));
  }
  p.drawRect(plotArea);
  p.drawText(QRectF(plotArea.left(), area.bottom() - fm.height() - 4, plotArea.width(), fm.height()), Qt::AlignHCenter,
             plot.xLabel);
  p.save();
  p.translate(area.left() + 2, plotArea.center().y());
  p.rotate(-90);
  p.drawText(QRectF(-plotArea.height() / 2, 0, plotArea.height(), fm.height()), Qt::AlignHCenter, plot.yLabel);
  p.restore();
  // Data, clipped to the plot area.
  p.save();
  p.setClipRect(plotArea);
  for (const auto& s : plot.series) {
    switch (s.kind) {
      case Series::Kind::Line: {
        QPainterPath path;
        bool pen_down = false;
        for (size_t i = 0; i < s.x.size(); ++i) {
          if (!std::isfinite(s.y[i])) {
            pen_down = false;
            continue;
          }
          const QPointF q(X(s.x[i]), Y(s.y[i]));
          pen_down ? path.lineTo(q) : path.moveTo(q);
          pen_down = true;
        }
        p.setPen(QPen(s.color, 2));
        p.setBrush(Qt::NoBrush);
        p.drawPath(path);
        break;
      }
      case Series::Kind::Points:
        p.setPen(Qt::NoPen);
        p.setBrush(s.color);
        for (size_t i = 0; i < s.x.size(); ++i)
          if (std::isfinite(s.y[i])) p.drawEllipse(QPointF(X(s.x[i]), Y(s.y[i])), 3, 3);
        break;
      case Series::Kind::Bars:
        p.setPen(QPen(s.color.darker(130), 1));
        p.setBrush(s.color);
        for (size_t i = 0; i < s.x.size(); ++i)
          p.drawRect(QRectF(QPointF(X(s.x[i]), Y(s.y[i])), QPointF(X(s.x[i] + s.width), Y(y0))));
        break;
    }
  }
  p.restore();
  // Legend, top left inside the plot area.
  double ly = plotArea.top() + 6;
  for (const auto& s : plot.series) {
    if (s.name.isEmpty()) continue;
    p.fillRect(QRectF(plotArea.left() + 8, ly + fm.height() / 2 - 4, 14, 8), s.color);
    p.setPen(Qt::black);
    p.drawText(QPointF(plotArea.left() + 28, ly + fm.ascent()), s.name);
    ly += fm.height() + 2;
  }
  p.restore();
}

void savePng(const Plot& plot, const QString& path, QSize size) {
  QImage img(size, QImage::Format_ARGB32);
  img.fill(Qt::white);
  {
    QPainter p(&img);
    paintPlot(p, QRectF(QPointF(0, 0), QSizeF(size)), plot);
  }
  QSaveFile f(path);
  if (!f.open(QIODevice::WriteOnly) || !img.save(&f, "PNG") || !f.commit())
    throw FileError(path.toStdString(), "cannot write the PNG: " + f.errorString().toStdString());
}

void saveSvg(const Plot& plot, const QString& path, QSize size) {
  QSaveFile f(path);
  if (!f.open(QIODevice::WriteOnly)) throw FileError(path.toStdString(), "cannot write the SVG: " + f.errorString().toStdString());
  {
    QSvgGenerator gen;
    gen.setOutputDevice(&f);
    gen.setSize(size);
    gen.setViewBox(QRect(QPoint(0, 0), size));
    gen.setTitle(plot.title);
    gen.setDescription("spkv-studio plot");
    QPainter p(&gen);
    paintPlot(p, QRectF(QPointF(0, 0), QSizeF(size)), plot);
  }
  if (!f.commit()) throw FileError(path.toStdString(), "cannot write the SVG: " + f.errorString().toStdString());
}

}  // namespace spkv::gui
