// The layer x KV-head density heatmap: cells coloured by a ColorMap over [0, 1], a colour bar, tooltips with
// exact values, the selected head outlined, the designed layout's global heads marked "G" and an overlaid
// reference layout's global heads marked with a dot. Clicking selects a head (or toggles it, in edit mode).
#pragma once
#include <QWidget>

#include "gui/models/ColorMap.h"
#include "gui/models/ItemModels.h"

namespace spkv::gui {

class HeatmapView : public QWidget {
  Q_OBJECT
 public:
  explicit HeatmapView(DensityModel* model, QWidget* parent = nullptr);
  void setColorMap(const QString& name);
  void setSelected(int layer, int head);
  void setEditMode(bool on) { m_edit = on; }
  QRect cellRect(int layer, int head) const;  // widget coordinates
  QRect colorBarRect() const;
  const ColorMap& colorMap() const { return m_map; }
  QSize sizeHint() const override { return {420, 360}; }

 signals:
  void headClicked(int layer, int head);
  void headToggled(int layer, int head);  // edit mode

 protected:
  void paintEvent(QPaintEvent*) override;
  void mousePressEvent(QMouseEvent* e) override;
  bool event(QEvent* e) override;  // tooltips

 private:
  QRect gridRect() const;
  bool cellAt(QPoint p, int& layer, int& head) const;
  DensityModel* m_model;
  ColorMap m_map;
  int m_selLayer = -1, m_selHead = -1;
  bool m_edit = false;
};

}  // namespace spkv::gui
