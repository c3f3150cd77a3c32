// The token view: for one document, a strip per (layer, head) or per layer, kept vs dropped with u as
// intensity, drawn for the visible range only from the level-of-detail pyramid. Wheel or +/- zooms about the
// mouse, dragging or arrow keys pan; the local window of the cursor token is shaded; token text appears once
// zoomed in. Clicking a token makes it the cursor.
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
  TokenAxis& axis() { return axis_; }
  int64_t cursor() const { return cursor_; }
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
  std::shared_ptr<const Document> doc_;
  std::shared_ptr<const Lod> lod_;
  StripRows rows_;
  int64_t layers_ = 0, heads_ = 0;
  bool per_layer_ = false;
  int sel_layer_ = -1, sel_head_ = -1;
  int64_t cursor_ = -1, highlight_ = -1;
  TokenAxis axis_;
  double drag_x_ = 0, press_x_ = 0;
  bool dragging_ = false;
};

}  // namespace spkv::gui
