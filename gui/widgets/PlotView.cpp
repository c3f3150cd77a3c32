#include "gui/widgets/PlotView.h"

#include <QContextMenuEvent>
#include <QFileDialog>
#include <QFileInfo>
#include <QMenu>
#include <QPainter>

#include "core/base/errors.h"

namespace spkv::gui {

PlotView::PlotView(QWidget* parent) : QWidget(parent) { setMinimumSize(300, 200); }

void PlotView::setPlot(Plot plot) {
  m_plot = std::move(plot);
  update();
}

void PlotView::exportTo(const QString& path) const {
  const QString suffix = QFileInfo(path).suffix().toLower();
  if (suffix == "png") savePng(m_plot, path);
  else if (suffix == "svg") saveSvg(m_plot, path);
  else throw FileError(path.toStdString(), "unknown plot format '" + suffix.toStdString() + "' (expected .png or .svg)");
}

void PlotView::paintEvent(QPaintEvent*) {
  QPainter p(this);
  paintPlot(p, rect(), m_plot);
}

void PlotView::contextMenuEvent(QContextMenuEvent* e) {
  QMenu menu(this);
  auto save = [this](const char* filter) {
    const QString path = QFileDialog::getSaveFileName(this, "Export plot", m_plot.title + "." + QString(filter).left(3), filter);
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
