// Colour maps against matplotlib's published endpoint colours, and monotone lightness for viridis.
#include <gtest/gtest.h>

#include <cmath>

#include "gui/models/ColorMap.h"

TEST(ColorMap, EndpointsMatchMatplotlib) {
    EXPECT_EQ(ColorMap::byName("viridis").at(0.0), qRgb(0x44, 0x01, 0x54));  // #440154
    EXPECT_EQ(ColorMap::byName("viridis").at(1.0), qRgb(0xfd, 0xe7, 0x25));  // #fde725
    EXPECT_EQ(ColorMap::byName("magma").at(0.0), qRgb(0x00, 0x00, 0x04));    // #000004
    EXPECT_EQ(ColorMap::byName("magma").at(1.0), qRgb(0xfc, 0xfd, 0xbf));    // #fcfdbf
    EXPECT_EQ(ColorMap::byName("gray").at(0.5), qRgb(128, 128, 128));
}

TEST(ColorMap, ViridisLightnessIncreasesAndInputsClamp) {
    const ColorMap m = ColorMap::byName("viridis");
    double last = -1;
    for (int i = 0; i <= 100; ++i) {
        const QColor c(m.at(i / 100.0));
        const double l = 0.2126 * c.redF() + 0.7152 * c.greenF() + 0.0722 * c.blueF();
        EXPECT_GT(l, last) << i;
        last = l;
    }
    EXPECT_EQ(m.at(-3.0), m.at(0.0));
    EXPECT_EQ(m.at(7.0), m.at(1.0));
    EXPECT_EQ(m.at(std::nan("")), qRgb(128, 128, 128));
    EXPECT_EQ(ColorMap::byName("nonsense").name(), QString("viridis"));
}
