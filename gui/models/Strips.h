// The token view's picture: one strip per (layer, head) or per layer (its heads averaged), one pixel column
// per screen pixel, each cell coloured by the kept fraction (hue: blue kept, orange dropped) and mean u
// (brightness). Only the visible range is rendered, from the level-of-detail pyramid.
#pragma once
#include <QImage>
#include <QString>
#include <vector>

#include "gui/models/GateData.h"
#include "gui/models/TokenAxis.h"

namespace spkv::gui {

struct StripRows {
  std::vector<std::vector<int64_t>> heads;  // (rows) head indices (layer * Hkv + head) averaged into the row
  std::vector<QString> labels;              // (rows) stable names: "L2.H1" or "L2"
};
StripRows stripRows(int64_t layers, int64_t heads, bool per_layer);

QRgb stripColor(double u, double kept);  // u, kept fraction in [0, 1]
// (rows.size() x width_px) image; pixel x covers tokens [axis.tokenAt(x), axis.tokenAt(x + 1)).
QImage renderStrips(const Document& doc, const Lod& lod, const TokenAxis& axis, const StripRows& rows, int width_px);

}  // namespace spkv::gui
