// Perceptual colour maps (viridis, magma, gray) sampled by value in [0, 1], for the density heatmaps and
// token strips of spkv-studio. Widget-free, so it is tested without a window.
#pragma once
#include <QColor>
#include <QString>
#include <QStringList>
#include <array>
#include <vector>

class ColorMap {
public:
    static QStringList names();
    static ColorMap byName(const QString& name);  // unknown names fall back to viridis

    // t is clamped to [0, 1]; NaN maps to the "no data" colour (mid gray).
    QRgb at(double t) const;
    const QString& name() const { return m_name; }

private:
    ColorMap(QString name, std::vector<std::array<double, 3>> anchors);
    QString m_name;
    std::vector<std::array<double, 3>> m_anchors;  // evenly spaced RGB anchors in [0, 1]
};
