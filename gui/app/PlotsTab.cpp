// The Plots tab (PlotsTab.h): builds each Plot from the counts and hands it to its PlotView.
#include "gui/app/PlotsTab.h"

#include <QDir>
#include <QHBoxLayout>
#include <algorithm>

#include "analysis/stats.h"
#include "core/base/errors.h"
#include "gui/models/ItemModels.h"
#include "gui/widgets/PlotView.h"

namespace spkv::gui {
namespace {
const char* kPlotNames[3] = {"cache_entries", "compression", "density_histogram"};
}  // namespace

PlotsTab::PlotsTab(QWidget* parent) : QWidget(parent) {
  auto* row = new QHBoxLayout(this);
  for (auto& p : m_plots) {
    p = new PlotView;
    connect(p, &PlotView::exportFailed, this, &PlotsTab::failed);
    row->addWidget(p);
  }
}

void PlotsTab::showDocument(const Document& doc, const std::vector<double>& entries, std::optional<double> tau) {
  Plot p;
  p.title = QStringLiteral("KV cache entries against position, document %1 (%2)").arg(doc.index).arg(QString::fromStdString(doc.id));
  p.xLabel = "position (tokens)", p.yLabel = "K/V rows over all layers and heads";
  Series dense{Series::Kind::Line, "dense", QColor(150, 150, 150), {}, {}};
  Series spkv{Series::Kind::Line, tau ? QStringLiteral("SP-KV at tau %1").arg(*tau, 0, 'f', 3) : "SP-KV (logged)",
              QColor(30, 110, 200), {}, {}};
  const int64_t step = std::max<int64_t>(1, doc.T / 2000);
  for (int64_t t = 0; t < doc.T; t += step) {
    dense.x.push_back(double(t)), dense.y.push_back(double((t + 1) * doc.LH));
    spkv.x.push_back(double(t)), spkv.y.push_back(entries[size_t(t)]);
  }
  p.series = {dense, spkv};
  m_plots[0]->setPlot(p);
}

void PlotsTab::showCorpus(const Corpus& c, const CorpusStats& stats, const DocumentModel& docs, int layer) {
  Plot comp;
  comp.title = "Compression against document length";
  comp.xLabel = "document length (tokens)", comp.yLabel = "dense / SP-KV KV entries";
  Series pts{Series::Kind::Points, "documents", QColor(30, 110, 200), {}, {}};
  for (int d = 0; d < docs.rowCount(); ++d) pts.x.push_back(double(c.tokens(d))), pts.y.push_back(docs.compression(d));
  const auto fit = analysis::fit_line(pts.x, pts.y);
  comp.series.push_back(pts);
  if (fit.n >= 2 && !pts.x.empty()) {
    const auto [lo, hi] = std::minmax_element(pts.x.begin(), pts.x.end());
    comp.series.push_back({Series::Kind::Line, QStringLiteral("fit: %1 + %2 per 1k tokens, R² %3").arg(fit.intercept, 0, 'f', 3)
                               .arg(1000 * fit.slope, 0, 'f', 3).arg(fit.r2, 0, 'f', 3),
                           QColor(220, 80, 30), {*lo, *hi}, {fit.intercept + fit.slope * *lo, fit.intercept + fit.slope * *hi}});
  }
  m_plots[1]->setPlot(comp);

  Plot hist;
  const int64_t H = c.info.n_kv_heads, LH = c.LH();
  hist.title = QStringLiteral("Per-document density, layer %1").arg(layer);
  hist.xLabel = "density (kept / eligible)", hist.yLabel = "documents";
  constexpr int kBins = 20;
  Series bars{Series::Kind::Bars, QStringLiteral("layer %1, %2 documents").arg(layer).arg(c.D()), QColor(80, 160, 90), {}, {}, 1.0 / kBins};
  std::vector<double> counts(kBins, 0);
  for (int64_t d = 0; d < c.D(); ++d) {
    int64_t k = 0, e = 0;
    for (int64_t h = 0; h < H; ++h) k += stats.kept[size_t(d * LH + layer * H + h)], e += c.eligible[size_t(d * LH + layer * H + h)];
    if (e > 0) counts[size_t(std::min<int64_t>(kBins - 1, int64_t(kBins * double(k) / double(e))))] += 1;
  }
  for (int b = 0; b < kBins; ++b) bars.x.push_back(double(b) / kBins), bars.y.push_back(counts[size_t(b)]);
  hist.series = {bars};
  m_plots[2]->setPlot(hist);
}

void PlotsTab::exportTo(const QString& dir) {
  if (!QDir().mkpath(dir)) throw FileError(dir.toStdString(), "cannot create the folder");
  for (int i = 0; i < 3; ++i)
    for (const char* ext : {".png", ".svg"}) m_plots[i]->exportTo(QDir(dir).filePath(QString(kPlotNames[i]) + ext));
}

}  // namespace spkv::gui
