#include "gui/widgets/TokenView.h"

#include "gui/models/Plot.h"

#include <QHelpEvent>
#include <QKeyEvent>
#include <QMouseEvent>
#include <QPainter>
#include <QToolTip>
#include <QWheelEvent>
#include <cmath>

namespace spkv::gui {
namespace {
// A token's text for display: newlines and tabs made visible, a token of only spaces shown as dots.
QString displayText(const std::string& s) {
  QString q = QString::fromUtf8(s.data(), int(s.size()));
  q.replace('\n', QStringLiteral("⏎")).replace('\t', QStringLiteral("→"));
  if (!q.isEmpty() && q.trimmed().isEmpty()) q.replace(' ', QStringLiteral("·"));
  return q;
}
}  // namespace

TokenView::TokenView(QWidget* parent) : QWidget(parent) {
  setMouseTracking(true);
  setFocusPolicy(Qt::StrongFocus);
  setMinimumHeight(160);
}

void TokenView::setDocument(std::shared_ptr<const Document> doc, std::shared_ptr<const Lod> lod) {
  m_doc = std::move(doc), m_lod = std::move(lod), m_cursor = -1, m_highlight = -1;
  m_axis.reset(m_doc ? m_doc->T : 0, stripsWidth());
  update();
  emit viewChanged();
}

void TokenView::setLod(std::shared_ptr<const Lod> lod) {
  m_lod = std::move(lod);
  update();
}

void TokenView::setRows(int64_t layers, int64_t heads, bool per_layer) {
  m_layers = layers, m_heads = heads, m_perLayer = per_layer, m_rows = stripRows(layers, heads, per_layer);
  update();
}

void TokenView::setSelectedHead(int layer, int head) {
  m_selLayer = layer, m_selHead = head;
  update();
}

void TokenView::setCursor(int64_t token) {
  m_cursor = token;
  update();
}

void TokenView::setHighlight(int64_t token) {
  m_highlight = token, m_cursor = token;
  if (token >= 0) {
    if (m_axis.tokensPerPixel() > 1.0 / 12) m_axis.zoom(m_axis.tokensPerPixel() * 12, 0);  // close enough to read
    m_axis.centerOn(double(token) + 0.5);
  }
  update();
  emit viewChanged();
}

int TokenView::rowsTop() const { return kRuler + kText; }
int TokenView::rowHeight() const {
  const int n = std::max<int>(1, int(m_rows.heads.size()));
  return std::max(1, (height() - rowsTop() - 2) / n);
}
int TokenView::rowOf(int layer, int head) const { return m_perLayer ? layer : layer * int(m_heads) + head; }

void TokenView::paintEvent(QPaintEvent*) {
  QPainter p(this);
  p.fillRect(rect(), QColor(30, 30, 30));
  if (!m_doc || !m_lod || m_rows.heads.empty()) {
    p.setPen(Qt::lightGray);
    p.drawText(rect(), Qt::AlignCenter, m_doc ? "Building the level-of-detail images…" : "Select a document");
    return;
  }
  const int W = stripsWidth(), rh = rowHeight(), top = rowsTop();
  const QImage img = renderStrips(*m_doc, *m_lod, m_axis, m_rows, W);
  p.drawImage(QRect(kLabels, top, W, rh * int(m_rows.heads.size())), img);
  // Row labels (every k-th when rows are thin), the selected head's row outlined.
  const QFontMetrics fm(font());
  p.setPen(Qt::lightGray);
  const int step = std::max(1, fm.height() / std::max(1, rh) + 1);
  for (size_t r = 0; r < m_rows.heads.size(); r += size_t(step))
    p.drawText(QRect(0, top + int(r) * rh, kLabels - 4, std::max(rh, fm.height())), Qt::AlignRight | Qt::AlignTop, m_rows.labels[r]);
  if (m_selLayer >= 0) {
    p.setPen(QPen(QColor(255, 60, 60), 1));
    p.setBrush(Qt::NoBrush);
    p.drawRect(QRect(kLabels - 2, top + rowOf(m_selLayer, m_selHead) * rh - 1, W + 1, rh + 1));
  }
  // Ruler with token positions.
  p.setPen(Qt::lightGray);
  const auto [b, e] = m_axis.visible();
  p.save();
  p.setClipRect(QRect(kLabels, 0, W, kRuler));
  for (double t : niceTicks(m_axis.first(), m_axis.tokenAt(W), std::max(2, W / 110))) {
    if (t != std::floor(t)) continue;  // whole tokens only
    const int x = kLabels + int(std::lround(m_axis.xOf(t)));
    p.drawLine(x, kRuler - 5, x, kRuler);
    p.drawText(x + 2, kRuler - 5, QString::number(qlonglong(t)));
  }
  p.restore();
  // The keys the cursor's query saw: everything else is dimmed, by the share of the column's keys (over the
  // row's heads) that its cache did not hold (later tokens, evicted or gated-out keys).
  const double px_per_token = 1.0 / m_axis.tokensPerPixel();
  if (m_cursor >= 0) {
    int64_t held = 0;
    for (int64_t i = 0; i < m_doc->LH; ++i)
      for (int64_t s = 0; s <= m_cursor; ++s) held += m_doc->present(m_cursor, s, i, m_lod->rule);
    for (size_t r = 0; r < m_rows.heads.size(); ++r)
      for (int x = 0; x < W; ++x) {  // pixel x covers tokens [tokenAt(x), tokenAt(x + 1)), as in renderStrips
        const int64_t t0 = std::max<int64_t>(0, int64_t(std::floor(m_axis.tokenAt(x))));
        const int64_t t1 = std::min<int64_t>(m_doc->T, std::max<int64_t>(t0 + 1, int64_t(std::ceil(m_axis.tokenAt(x + 1)))));
        int64_t in = 0, all = 0;
        for (int64_t t = t0; t < t1; ++t)
          for (int64_t i : m_rows.heads[r]) in += m_doc->present(m_cursor, t, i, m_lod->rule), ++all;
        if (all > in) p.fillRect(QRect(kLabels + x, top + int(r) * rh, 1, rh), QColor(0, 0, 0, int(180 * (all - in) / all)));
      }
    const QString saw = QString("query %1 saw %2 of %3 keys").arg(m_cursor).arg(held).arg((m_cursor + 1) * m_doc->LH);
    const QRect box(kLabels + W - QFontMetrics(font()).horizontalAdvance(saw) - 8, 0, QFontMetrics(font()).horizontalAdvance(saw) + 8, kRuler);
    p.fillRect(box, QColor(30, 30, 30));  // over the ruler's numbers
    p.setPen(QColor(255, 230, 0));
    p.drawText(box, Qt::AlignCenter, saw);
  }
  // The local window of the cursor token: keys it sees whatever their gates say.
  if (m_cursor >= 0) {
    const double x0 = m_axis.xOf(double(std::max<int64_t>(0, m_cursor - m_doc->window + 1))), x1 = m_axis.xOf(double(m_cursor + 1));
    const QRectF band(kLabels + std::max(0.0, x0), kRuler, std::min(double(W), x1) - std::max(0.0, x0), height() - kRuler);
    if (band.width() > 0) {
      p.fillRect(band, QColor(255, 255, 255, 40));
      p.setPen(QPen(QColor(255, 255, 255, 160), 1, Qt::DashLine));
      p.drawRect(band);
    }
    const double xc = kLabels + m_axis.xOf(double(m_cursor));
    p.setPen(QPen(QColor(255, 230, 0), 2));
    p.drawRect(QRectF(xc, kRuler + 1, std::max(2.0, px_per_token), height() - kRuler - 2));
  }
  if (m_highlight >= 0) p.fillRect(QRectF(kLabels + m_axis.xOf(double(m_highlight)), kRuler, std::max(2.0, px_per_token), kText), QColor(255, 230, 0, 110));
  // Token text once each token is wide enough.
  if (px_per_token >= 7) {
    p.setPen(Qt::white);
    for (int64_t t = b; t < e; ++t) {
      const double x = kLabels + m_axis.xOf(double(t));
      const QRectF cell(x, kRuler, px_per_token, kText);
      p.drawText(cell, Qt::AlignCenter, fm.elidedText(displayText(m_doc->text[size_t(t)]), Qt::ElideRight, int(px_per_token)));
      if (px_per_token >= 14) {
        p.setPen(QColor(0, 0, 0, 120));
        p.drawLine(QPointF(x, top), QPointF(x, top + rh * double(m_rows.heads.size())));
        p.setPen(Qt::white);
      }
    }
  }
}

void TokenView::resizeEvent(QResizeEvent*) { m_axis.resize(stripsWidth()); }

void TokenView::wheelEvent(QWheelEvent* e) {
  const double steps = e->angleDelta().y() / 120.0;
  m_axis.zoom(std::pow(1.25, steps), e->position().x() - kLabels);
  update();
  emit viewChanged();
}

void TokenView::mousePressEvent(QMouseEvent* e) {
  if (e->button() != Qt::LeftButton) return;
  m_dragging = true, m_dragX = m_pressX = e->position().x();
}

void TokenView::mouseMoveEvent(QMouseEvent* e) {
  if (!m_dragging) return;
  m_axis.pan(e->position().x() - m_dragX);
  m_dragX = e->position().x();
  update();
  emit viewChanged();
}

void TokenView::mouseReleaseEvent(QMouseEvent* e) {
  if (!m_dragging) return;
  m_dragging = false;
  if (std::abs(e->position().x() - m_pressX) < 3 && m_doc) {  // a click, not a drag
    const int64_t t = m_axis.tokenIndexAt(e->position().x() - kLabels);
    if (t >= 0) {
      setCursor(t);
      emit tokenClicked(t);
    }
  }
}

void TokenView::keyPressEvent(QKeyEvent* e) {
  const double mid = stripsWidth() / 2.0;
  switch (e->key()) {
    case Qt::Key_Plus: case Qt::Key_Equal: m_axis.zoom(2, mid); break;
    case Qt::Key_Minus: m_axis.zoom(0.5, mid); break;
    case Qt::Key_Left: m_axis.pan(stripsWidth() / 4.0); break;
    case Qt::Key_Right: m_axis.pan(-stripsWidth() / 4.0); break;
    case Qt::Key_Home: m_axis.fit(); break;
    default: QWidget::keyPressEvent(e); return;
  }
  update();
  emit viewChanged();
}

bool TokenView::event(QEvent* e) {
  if (e->type() == QEvent::ToolTip && m_doc) {
    auto* he = static_cast<QHelpEvent*>(e);
    const int64_t t = m_axis.tokenIndexAt(he->pos().x() - kLabels);
    const int r = (he->pos().y() - rowsTop()) / std::max(1, rowHeight());
    if (t >= 0 && r >= 0 && r < int(m_rows.heads.size()) && m_lod) {
      double u, k;
      const int64_t t1 = std::max(t + 1, int64_t(std::floor(m_axis.tokenAt(he->pos().x() - kLabels + 1))));
      double su = 0, sk = 0;
      for (int64_t i : m_rows.heads[size_t(r)]) lodCell(*m_doc, *m_lod, t, t1, i, u, k), su += u, sk += k;
      const double n = double(m_rows.heads[size_t(r)].size());
      QToolTip::showText(he->globalPos(),
                         QStringLiteral("%1, tokens %2–%3: mean u %4, kept %5%\n“%6”").arg(m_rows.labels[size_t(r)]).arg(t).arg(t1 - 1)
                             .arg(su / n, 0, 'f', 3).arg(100 * sk / n, 0, 'f', 1).arg(displayText(m_doc->text[size_t(t)])), this);
    } else {
      QToolTip::hideText();
    }
    return true;
  }
  return QWidget::event(e);
}

}  // namespace spkv::gui
