// spkv-studio's Plots tab: KV cache entries against position for the open document, compression against
// document length with its fit, and the per-document density histogram of the selected layer; each exports
// as PNG and SVG. It draws what the main window hands it; reading and counting happen in jobs elsewhere.
#pragma once
#include <QWidget>
#include <optional>
#include <vector>

#include "gui/models/GateData.h"

namespace spkv::gui {

class DocumentModel;
class PlotView;

class PlotsTab : public QWidget {
  Q_OBJECT
 public:
  explicit PlotsTab(QWidget* parent = nullptr);
  // entries: (T) the document's cache rows after each token; tau: counterfactual, or nullopt for the logged one.
  void showDocument(const Document& doc, const std::vector<double>& entries, std::optional<double> tau);
  // Compression of every document of `docs`, and the density histogram of `layer` under `stats`.
  void showCorpus(const Corpus& c, const CorpusStats& stats, const DocumentModel& docs, int layer);
  void exportTo(const QString& dir);  // every plot as NAME.png and NAME.svg; throws FileError
  PlotView* plot(int i) const { return m_plots[i]; }  // 0 cache entries, 1 compression, 2 density histogram

 signals:
  void failed(const QString& message);

 private:
  PlotView* m_plots[3] = {};
};

}  // namespace spkv::gui
