#include "gui/widgets/TokenView.h"

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
QString display_text(const std::string& s) {
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
  doc_ = std::move(doc), lod_ = std::move(lod), cursor_ = -1, highlight_ = -1;
  axis_.reset(doc_ ? doc_->T : 0, stripsWidth());
  update();
  emit viewChanged();
}

void TokenView::setLod(std::shared_ptr<const Lod> lod) {
  lod_ = std::move(lod);
  update();
}

void TokenView::setRows(int64_t layers, int64_t heads, bool per_layer) {
  layers_ = layers, heads_ = heads, per_layer_ = per_layer, rows_ = strip_rows(layers, heads, per_layer);
  update();
}

void TokenView::setSelectedHead(int layer, int head) {
  sel_layer_ = layer, sel_head_ = head;
  update();
}

void TokenView::setCursor(int64_t token) {
  cursor_ = token;
  update();
}

void TokenView::setHighlight(int64_t token) {
  highlight_ = token, cursor_ = token;
  if (token >= 0) {
    if (axis_.tokens_per_pixel() > 1.0 / 12) axis_.zoom(axis_.tokens_per_pixel() * 12, 0);  // close enough to read
    axis_.center_on(double(token) + 0.5);
  }
  update();
  emit viewChanged();
}

int TokenView::rowsTop() const { return kRuler + kText; }
int TokenView::rowHeight() const {
  const int n = std::max<int>(1, int(rows_.heads.size()));
  return std::max(1, (height() - rowsTop() - 2) / n);
}
int TokenView::rowOf(int layer, int head) const { return per_layer_ ? layer : layer * int(heads_) + head; }

void TokenView::paintEvent(QPaintEvent*) {
  QPainter p(this);
  p.fillRect(rect(), QColor(30, 30, 30));
  if (!doc_ || !lod_ || rows_.heads.empty()) {
    p.setPen(Qt::lightGray);
    p.drawText(rect(), Qt::AlignCenter, doc_ ? "Building the level-of-detail images…" : "Select a document");
    return;
  }
  const int W = stripsWidth(), rh = rowHeight(), top = rowsTop();
  const QImage img = render_strips(*doc_, *lod_, axis_, rows_, W);
  p.drawImage(QRect(kLabels, top, W, rh * int(rows_.heads.size())), img);
  // Row labels (every k-th when rows are thin), the selected head's row outlined.
  const QFontMetrics fm(font());
  p.setPen(Qt::lightGray);
  const int step = std::max(1, fm.height() / std::max(1, rh) + 1);
  for (size_t r = 0; r < rows_.heads.size(); r += size_t(step))
    p.drawText(QRect(0, top + int(r) * rh, kLabels - 4, std::max(rh, fm.height())), Qt::AlignRight | Qt::AlignTop, rows_.labels[r]);
  if (sel_layer_ >= 0) {
    p.setPen(QPen(QColor(255, 60, 60), 1));
    p.setBrush(Qt::NoBrush);
    p.drawRect(QRect(kLabels - 2, top + rowOf(sel_layer_, sel_head_) * rh - 1, W + 1, rh + 1));
  }
  // Ruler with token positions.
  p.setPen(Qt::lightGray);
  const auto [b, e] = axis_.visible();
  const double span = std::max(1.0, axis_.tokens_per_pixel() * 100);
  const double step_t = std::pow(10.0, std::ceil(std::log10(span)));
  for (double t = std::ceil(double(b) / step_t) * step_t; t < double(e); t += step_t) {
    const int x = kLabels + int(std::lround(axis_.x_of(t)));
    p.drawLine(x, kRuler - 5, x, kRuler);
    p.drawText(x + 2, kRuler - 5, QString::number(qlonglong(t)));
  }
  // The local window of the cursor token: keys it sees whatever their gates say.
  const double px_per_token = 1.0 / axis_.tokens_per_pixel();
  if (cursor_ >= 0) {
    const double x0 = axis_.x_of(double(std::max<int64_t>(0, cursor_ - doc_->window + 1))), x1 = axis_.x_of(double(cursor_ + 1));
    const QRectF band(kLabels + std::max(0.0, x0), kRuler, std::min(double(W), x1) - std::max(0.0, x0), height() - kRuler);
    if (band.width() > 0) {
      p.fillRect(band, QColor(255, 255, 255, 40));
      p.setPen(QPen(QColor(255, 255, 255, 160), 1, Qt::DashLine));
      p.drawRect(band);
    }
    const double xc = kLabels + axis_.x_of(double(cursor_));
    p.setPen(QPen(QColor(255, 230, 0), 2));
    p.drawRect(QRectF(xc, kRuler + 1, std::max(2.0, px_per_token), height() - kRuler - 2));
  }
  if (highlight_ >= 0) p.fillRect(QRectF(kLabels + axis_.x_of(double(highlight_)), kRuler, std::max(2.0, px_per_token), kText), QColor(255, 230, 0, 110));
  // Token text once each token is wide enough.
  if (px_per_token >= 7) {
    p.setPen(Qt::white);
    for (int64_t t = b; t < e; ++t) {
      const double x = kLabels + axis_.x_of(double(t));
      const QRectF cell(x, kRuler, px_per_token, kText);
      p.drawText(cell, Qt::AlignCenter, fm.elidedText(display_text(doc_->text[size_t(t)]), Qt::ElideRight, int(px_per_token)));
      if (px_per_token >= 14) {
        p.setPen(QColor(0, 0, 0, 120));
        p.drawLine(QPointF(x, top), QPointF(x, top + rh * double(rows_.heads.size())));
        p.setPen(Qt::white);
      }
    }
  }
}

void TokenView::resizeEvent(QResizeEvent*) { axis_.resize(stripsWidth()); }

void TokenView::wheelEvent(QWheelEvent* e) {
  const double steps = e->angleDelta().y() / 120.0;
  axis_.zoom(std::pow(1.25, steps), e->position().x() - kLabels);
  update();
  emit viewChanged();
}

void TokenView::mousePressEvent(QMouseEvent* e) {
  if (e->button() != Qt::LeftButton) return;
  dragging_ = true, drag_x_ = press_x_ = e->position().x();
}

void TokenView::mouseMoveEvent(QMouseEvent* e) {
  if (!dragging_) return;
  axis_.pan(e->position().x() - drag_x_);
  drag_x_ = e->position().x();
  update();
  emit viewChanged();
}

void TokenView::mouseReleaseEvent(QMouseEvent* e) {
  if (!dragging_) return;
  dragging_ = false;
  if (std::abs(e->position().x() - press_x_) < 3 && doc_) {  // a click, not a drag
    const int64_t t = axis_.token_index_at(e->position().x() - kLabels);
    if (t >= 0) {
      setCursor(t);
      emit tokenClicked(t);
    }
  }
}

void TokenView::keyPressEvent(QKeyEvent* e) {
  const double mid = stripsWidth() / 2.0;
  switch (e->key()) {
    case Qt::Key_Plus: case Qt::Key_Equal: axis_.zoom(2, mid); break;
    case Qt::Key_Minus: axis_.zoom(0.5, mid); break;
    case Qt::Key_Left: axis_.pan(stripsWidth() / 4.0); break;
    case Qt::Key_Right: axis_.pan(-stripsWidth() / 4.0); break;
    case Qt::Key_Home: axis_.fit(); break;
    default: QWidget::keyPressEvent(e); return;
  }
  update();
  emit viewChanged();
}

bool TokenView::event(QEvent* e) {
  if (e->type() == QEvent::ToolTip && doc_) {
    auto* he = static_cast<QHelpEvent*>(e);
    const int64_t t = axis_.token_index_at(he->pos().x() - kLabels);
    const int r = (he->pos().y() - rowsTop()) / std::max(1, rowHeight());
    if (t >= 0 && r >= 0 && r < int(rows_.heads.size()) && lod_) {
      double u, k;
      const int64_t t1 = std::max(t + 1, int64_t(std::floor(axis_.token_at(he->pos().x() - kLabels + 1))));
      double su = 0, sk = 0;
      for (int64_t i : rows_.heads[size_t(r)]) lod_cell(*doc_, *lod_, t, t1, i, u, k), su += u, sk += k;
      const double n = double(rows_.heads[size_t(r)].size());
      QToolTip::showText(he->globalPos(),
                         QStringLiteral("%1, tokens %2–%3: mean u %4, kept %5%\n“%6”").arg(rows_.labels[size_t(r)]).arg(t).arg(t1 - 1)
                             .arg(su / n, 0, 'f', 3).arg(100 * sk / n, 0, 'f', 1).arg(display_text(doc_->text[size_t(t)])), this);
    } else {
      QToolTip::hideText();
    }
    return true;
  }
  return QWidget::event(e);
}

}  // namespace spkv::gui
