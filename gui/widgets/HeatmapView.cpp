#include "gui/widgets/HeatmapView.h"

#include <QHelpEvent>
#include <QMouseEvent>
#include <QPainter>
#include <QToolTip>
#include <cmath>

namespace spkv::gui {
namespace {
constexpr int kLeft = 64, kTop = 22, kBar = 18, kBarGap = 14, kBarLabels = 40;
}

HeatmapView::HeatmapView(DensityModel* model, QWidget* parent)
    : QWidget(parent), m_model(model), m_map(ColorMap::byName("viridis")) {
  setMouseTracking(true);
  setMinimumSize(240, 160);
  auto repaint = [this] { update(); };
  connect(m_model, &QAbstractItemModel::dataChanged, this, repaint);
  connect(m_model, &QAbstractItemModel::modelReset, this, repaint);
}

void HeatmapView::setColorMap(const QString& name) {
  m_map = ColorMap::byName(name);
  update();
}

void HeatmapView::setSelected(int layer, int head) {
  m_selLayer = layer, m_selHead = head;
  update();
}

QRect HeatmapView::gridRect() const {
  return QRect(kLeft, kTop, std::max(1, width() - kLeft - kBarGap - kBar - kBarLabels), std::max(1, height() - kTop - 8));
}

QRect HeatmapView::cellRect(int layer, int head) const {
  const QRect g = gridRect();
  const int L = m_model->rowCount(), H = m_model->columnCount();
  if (L == 0 || H == 0) return {};
  const int x0 = g.left() + head * g.width() / H, x1 = g.left() + (head + 1) * g.width() / H;
  const int y0 = g.top() + layer * g.height() / L, y1 = g.top() + (layer + 1) * g.height() / L;
  return QRect(QPoint(x0, y0), QPoint(x1 - 1, y1 - 1));
}

QRect HeatmapView::colorBarRect() const {
  const QRect g = gridRect();
  return QRect(g.right() + kBarGap, g.top(), kBar, g.height());
}

bool HeatmapView::cellAt(QPoint p, int& layer, int& head) const {
  const QRect g = gridRect();
  const int L = m_model->rowCount(), H = m_model->columnCount();
  if (!g.contains(p) || L == 0 || H == 0) return false;
  layer = (p.y() - g.top()) * L / g.height(), head = (p.x() - g.left()) * H / g.width();
  return layer >= 0 && layer < L && head >= 0 && head < H;
}

void HeatmapView::paintEvent(QPaintEvent*) {
  QPainter p(this);
  p.fillRect(rect(), palette().window());
  const int L = m_model->rowCount(), H = m_model->columnCount();
  if (L == 0 || H == 0) {
    p.drawText(rect(), Qt::AlignCenter, "Open a gate log (File > Open, or drop a .h5 file here)");
    return;
  }
  const QFontMetrics fm(font());
  for (int l = 0; l < L; ++l)
    for (int h = 0; h < H; ++h) {
      const QRect c = cellRect(l, h);
      const QModelIndex i = m_model->index(l, h);
      const double d = i.data(DensityRole).toDouble();
      const QColor col = QColor::fromRgb(m_map.at(d));
      p.fillRect(c, col);
      const QColor ink = col.lightnessF() > 0.55 ? Qt::black : Qt::white;
      if (i.data(GlobalRole).toBool()) {
        p.setPen(QPen(ink, 2));
        p.drawRect(c.adjusted(2, 2, -2, -2));
        if (c.height() > fm.height() + 4) p.drawText(c.adjusted(5, 3, 0, 0), Qt::AlignLeft | Qt::AlignTop, "G");
      }
      if (i.data(ReferenceRole).toBool()) {
        p.setPen(QPen(ink, 1.5));
        p.setBrush(col.lightnessF() > 0.55 ? QColor(0, 0, 0) : QColor(255, 255, 255));
        const int r = std::max(2, std::min(c.width(), c.height()) / 14);
        p.drawEllipse(QPoint(c.right() - r - 3, c.bottom() - r - 3), r, r);
        p.setBrush(Qt::NoBrush);
      }
      if (c.width() > fm.horizontalAdvance("0.000") + 6 && c.height() > 2 * fm.height()) {
        p.setPen(ink);
        p.drawText(c, Qt::AlignCenter, i.data(Qt::DisplayRole).toString());
      }
    }
  if (m_selLayer >= 0 && m_selLayer < L && m_selHead >= 0 && m_selHead < H) {
    p.setPen(QPen(QColor(230, 30, 30), 3));
    p.setBrush(Qt::NoBrush);
    p.drawRect(cellRect(m_selLayer, m_selHead).adjusted(1, 1, -1, -1));
  }
  // Axis labels: every layer when they fit, else every k-th.
  p.setPen(palette().windowText().color());
  const int lstep = std::max(1, (fm.height() * L) / std::max(1, gridRect().height()) + 1);
  for (int l = 0; l < L; l += lstep) {
    const QRect c = cellRect(l, 0);
    p.drawText(QRect(0, c.top(), kLeft - 6, c.height()), Qt::AlignRight | Qt::AlignVCenter, QStringLiteral("layer %1").arg(l));
  }
  const int hstep = std::max(1, (fm.horizontalAdvance("h00") * H) / std::max(1, gridRect().width()) + 1);
  for (int h = 0; h < H; h += hstep) {
    const QRect c = cellRect(0, h);
    p.drawText(QRect(c.left(), 0, c.width(), kTop - 4), Qt::AlignCenter, H <= 16 ? QStringLiteral("head %1").arg(h) : QString::number(h));
  }
  // Colour bar, 1 at the top.
  const QRect bar = colorBarRect();
  for (int y = bar.top(); y <= bar.bottom(); ++y) {
    p.setPen(QColor::fromRgb(m_map.at(1.0 - double(y - bar.top()) / std::max(1, bar.height() - 1))));
    p.drawLine(bar.left(), y, bar.right(), y);
  }
  p.setPen(palette().windowText().color());
  p.drawRect(bar.adjusted(0, 0, -1, -1));
  for (double t : {0.0, 0.5, 1.0}) {
    const int y = bar.top() + int(std::lround((1 - t) * (bar.height() - 1)));
    p.drawText(QRect(bar.right() + 3, y - fm.height() / 2, kBarLabels, fm.height()), Qt::AlignLeft | Qt::AlignVCenter, QString::number(t, 'f', 1));
  }
}

void HeatmapView::mousePressEvent(QMouseEvent* e) {
  int l, h;
  if (!cellAt(e->position().toPoint(), l, h)) return;
  if (m_edit) emit headToggled(l, h);
  else emit headClicked(l, h);
}

bool HeatmapView::event(QEvent* e) {
  if (e->type() == QEvent::ToolTip) {
    auto* he = static_cast<QHelpEvent*>(e);
    int l, h;
    if (cellAt(he->pos(), l, h)) QToolTip::showText(he->globalPos(), m_model->index(l, h).data(Qt::ToolTipRole).toString(), this);
    else QToolTip::hideText();
    return true;
  }
  return QWidget::event(e);
}

}  // namespace spkv::gui
