// A widget showing one Plot, with PNG and SVG export from its context menu (or exportTo()).
#pragma once
#include <QWidget>

#include "gui/models/Plot.h"

namespace spkv::gui {

class PlotView : public QWidget {
  Q_OBJECT
 public:
  explicit PlotView(QWidget* parent = nullptr);
  void setPlot(Plot plot);
  const Plot& plot() const { return m_plot; }
  void exportTo(const QString& path) const;  // .png or .svg by suffix; throws spkv::FileError
  QSize sizeHint() const override { return {600, 380}; }

 signals:
  void exportFailed(const QString& message);

 protected:
  void paintEvent(QPaintEvent*) override;
  void contextMenuEvent(QContextMenuEvent* e) override;

 private:
  Plot m_plot;
};

}  // namespace spkv::gui
