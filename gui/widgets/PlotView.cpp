#include "gui/widgets/PlotView.h"

#include <QContextMenuEvent>
#include <QFileDialog>
#include <QFileInfo>
#include <QMenu>
#include <QPainter>

#include "core/errors.h"

namespace spkv::gui {

PlotView::PlotView(QWidget* parent) : QWidget(parent) { setMinimumSize(300, 200); }

void PlotView::setPlot(Plot plot) {
  plot_ = std::move(plot);
  update();
}

void PlotView::exportTo(const QString& path) const {
  const QString suffix = QFileInfo(path).suffix().toLower();
  if (suffix == "png") save_png(plot_, path);
  else if (suffix == "svg") save_svg(plot_, path);
  else throw FileError(path.toStdString(), "unknown plot format '" + suffix.toStdString() + "' (expected .png or .svg)");
}

void PlotView::paintEvent(QPaintEvent*) {
  QPainter p(this);
  paint_plot(p, rect(), plot_);
}

void PlotView::contextMenuEvent(QContextMenuEvent* e) {
  QMenu menu(this);
  auto save = [this](const char* filter) {
    const QString path = QFileDialog::getSaveFileName(this, "Export plot", plot_.title + "." + QString(filter).left(3), filter);
    if (path.isEmpty()) return;
    try {
      exportTo(path);
    } catch (const std::exception& ex) {
      emit exportFailed(QString::fromStdString(ex.what()));
    }
  };
  menu.addAction("Export as PNG…", [=] { save("png (*.png)"); });
  menu.addAction("Export as SVG…", [=] { save("svg (*.svg)"); });
  menu.exec(e->globalPos());
}

}  // namespace spkv::gui
