// spkv-studio entry point. The window today: a colour-map preview and File > Open; gate-log views
// (heatmap, token strips, plots, layout designer) come with the log format. No torch anywhere in gui/.
#include <QApplication>
#include <QComboBox>
#include <QFileDialog>
#include <QLabel>
#include <QMainWindow>
#include <QMenuBar>
#include <QPainter>
#include <QStatusBar>
#include <QVBoxLayout>

#include "gui/models/ColorMap.h"

namespace {
class ColorBar : public QWidget {
public:
    explicit ColorBar(QWidget* parent = nullptr) : QWidget(parent), m_map(ColorMap::byName("viridis"))
    {
        setMinimumHeight(32);
    }
    void setMap(const QString& name)
    {
        m_map = ColorMap::byName(name);
        update();
    }

protected:
    void paintEvent(QPaintEvent*) override
    {
        QPainter p(this);
        for (int x = 0; x < width(); ++x) {
            p.setPen(QColor(m_map.at(double(x) / std::max(1, width() - 1))));
            p.drawLine(x, 0, x, height());
        }
    }

private:
    ColorMap m_map;
};
}  // namespace

int main(int argc, char** argv)
{
    QApplication app(argc, argv);
    QApplication::setApplicationName("spkv-studio");
    QMainWindow win;
    auto* central = new QWidget;
    auto* layout = new QVBoxLayout(central);
    auto* maps = new QComboBox;
    maps->addItems(ColorMap::names());
    auto* bar = new ColorBar;
    QObject::connect(maps, &QComboBox::currentTextChanged, bar, &ColorBar::setMap);
    layout->addWidget(new QLabel("Density colour map (0 = all dropped, 1 = all kept)"));
    layout->addWidget(maps);
    layout->addWidget(bar);
    layout->addStretch();
    win.setCentralWidget(central);
    auto* file = win.menuBar()->addMenu("&File");
    file->addAction("&Open...", [&] {
        const QString path = QFileDialog::getOpenFileName(&win, "Open gate log", {}, "HDF5 gate logs (*.h5)");
        if (!path.isEmpty()) win.statusBar()->showMessage(path + ": gate-log views are not available in this build");
    });
    file->addAction("&Quit", &app, &QApplication::quit);
    win.resize(640, 240);
    win.show();
    return app.exec();
}
