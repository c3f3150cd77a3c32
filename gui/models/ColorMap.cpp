#include "gui/models/ColorMap.h"

#include <algorithm>
#include <cmath>

namespace {
// Anchors sampled from matplotlib's viridis and magma at t = 0, 1/8, ..., 1.
const std::vector<std::array<double, 3>> kViridis = {
    {0.267, 0.005, 0.329}, {0.283, 0.141, 0.458}, {0.254, 0.265, 0.530}, {0.207, 0.372, 0.553},
    {0.164, 0.471, 0.558}, {0.128, 0.567, 0.551}, {0.135, 0.659, 0.518}, {0.267, 0.749, 0.441},
    {0.478, 0.821, 0.318}, {0.741, 0.873, 0.150}, {0.993, 0.906, 0.144}};
const std::vector<std::array<double, 3>> kMagma = {
    {0.001, 0.000, 0.014}, {0.082, 0.060, 0.240}, {0.232, 0.059, 0.437}, {0.390, 0.100, 0.502},
    {0.550, 0.161, 0.506}, {0.716, 0.215, 0.475}, {0.868, 0.288, 0.409}, {0.967, 0.439, 0.360},
    {0.994, 0.624, 0.427}, {0.995, 0.812, 0.572}, {0.987, 0.991, 0.750}};
const std::vector<std::array<double, 3>> kGray = {{0, 0, 0}, {1, 1, 1}};
}  // namespace

ColorMap::ColorMap(QString name, std::vector<std::array<double, 3>> anchors)
    : m_name(std::move(name)), m_anchors(std::move(anchors)) {}

QStringList ColorMap::names() { return {"viridis", "magma", "gray"}; }

ColorMap ColorMap::byName(const QString& name)
{
    if (name == "magma") return ColorMap("magma", kMagma);
    if (name == "gray") return ColorMap("gray", kGray);
    return ColorMap("viridis", kViridis);
}

QRgb ColorMap::at(double t) const
{
    if (std::isnan(t)) return qRgb(128, 128, 128);
    t = std::clamp(t, 0.0, 1.0) * double(m_anchors.size() - 1);
    const size_t i = std::min(size_t(t), m_anchors.size() - 2);
    const double f = t - double(i);
    auto mix = [&](int c) { return int(std::lround(255.0 * ((1 - f) * m_anchors[i][c] + f * m_anchors[i + 1][c]))); };
    return qRgb(mix(0), mix(1), mix(2));
}
