// The token view: for one document, a strip per (layer, head) or per layer, kept vs dropped with u as
// intensity, drawn for the visible range only from the level-of-detail pyramid. Wheel or +/- zooms about the
// mouse, dragging or arrow keys pan; the local window of the cursor token is shaded and the keys its query did
// not see (later, evicted by a policy, or gated out) are dimmed; token text appears once zoomed in. Clicking a
// token makes it the cursor.
#pragma once
#include <QWidget>
#include <memory>

#include "gui/models/Strips.h"

namespace spkv::gui {

class TokenView : public QWidget {
  Q_OBJECT
 public:
  explicit TokenView(QWidget* parent = nullptr);
  // The document and its pyramid (shared with the window, which owns them); null clears the view.
  void setDocument(std::shared_ptr<const Document> doc, std::shared_ptr<const Lod> lod);
  void setLod(std::shared_ptr<const Lod> lod);  // a rebuilt pyramid (new tau) for the same document
  void setRows(int64_t layers, int64_t heads, bool per_layer);
  void setSelectedHead(int layer, int head);
  void setCursor(int64_t token);  // -1: none
  void setHighlight(int64_t token);  // a search match, centred
  TokenAxis& axis() { return m_axis; }
  int64_t cursor() const { return m_cursor; }
  int rowsTop() const;             // y of the first strip
  int rowHeight() const;
  int rowOf(int layer, int head) const;  // strip index showing that head
  QSize sizeHint() const override { return {900, 420}; }

 signals:
  void tokenClicked(int64_t token);
  void viewChanged();  // zoom or pan

 protected:
  void paintEvent(QPaintEvent*) override;
  void resizeEvent(QResizeEvent*) override;
  void wheelEvent(QWheelEvent* e) override;
  void mousePressEvent(QMouseEvent* e) override;
  void mouseMoveEvent(QMouseEvent* e) override;
  void mouseReleaseEvent(QMouseEvent* e) override;
  void keyPressEvent(QKeyEvent* e) override;
  bool event(QEvent* e) override;  // tooltips

 private:
  int stripsWidth() const { return std::max(1, width() - kLabels); }
  static constexpr int kLabels = 56, kRuler = 18, kText = 20;
  std::shared_ptr<const Document> m_doc;
  std::shared_ptr<const Lod> m_lod;
  StripRows m_rows;
  int64_t m_layers = 0, m_heads = 0;
  bool m_perLayer = false;
  int m_selLayer = -1, m_selHead = -1;
  int64_t m_cursor = -1, m_highlight = -1;
  TokenAxis m_axis;
  double m_dragX = 0, m_pressX = 0;
  bool m_dragging = false;
};

}  // namespace spkv::gui
