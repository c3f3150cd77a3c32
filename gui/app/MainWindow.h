// spkv-studio's main window: opens a gate log (argument, dialog, recent files, drag-and-drop), shows the
// run's provenance, the layer x head heatmap, the documents, the token view with search and per-token
// detail, the plots (PlotsTab.h), the counterfactual tau slider and the layout designer (LayoutDesigner.h).
// All reading and aggregation run as JobRunner jobs; this class only wires results into models and views.
// No torch.
#pragma once
#include <QMainWindow>
#include <memory>
#include <optional>

#include "analysis/layout.h"
#include "analysis/report.h"
#include "gui/models/ItemModels.h"
#include "gui/models/Jobs.h"

class QCheckBox;
class QComboBox;
class QLabel;
class QLineEdit;
class QProgressBar;
class QSlider;
class QTableView;
class QTabWidget;

namespace spkv::gui {

class HeatmapView;
class LayoutDesigner;
class PlotView;
class PlotsTab;
class TokenView;

class MainWindow : public QMainWindow {
  Q_OBJECT
 public:
  explicit MainWindow(QWidget* parent = nullptr);
  ~MainWindow() override;

  void openLog(const QString& path);
  void selectHead(int layer, int head);
  void selectDocument(int d);
  void setTau(std::optional<double> tau);  // nullopt: the logged decisions
  void setBudget(int heads);
  void toggleHead(int layer, int head);
  void setReference(const QString& name);   // a derived or evaluated layout's name; "" for none
  void setScope(bool document);             // heatmap: the selected document instead of the corpus
  void search(const QString& query);        // jumps to the first occurrence; next() / previous() step
  void searchStep(int step);
  void exportLayout(const QString& dir);    // layout.json, hf_config_fragment.json, full_attention_heads.tsv
  void exportPlots(const QString& dir);     // every plot as PNG and SVG
  bool showTab(const QString& name);        // a side or bottom tab by its title (Run, Documents, Layout, Tokens, Plots)

  // For tests and benchmarks: state and parts.
  JobRunner& jobs() { return m_jobs; }
  const Corpus* corpus() const { return m_corpus.get(); }
  const Document* document() const { return m_doc.get(); }
  const analysis::Layout& designed() const;
  HeatmapView* heatmap() const { return m_heatmap; }
  TokenView* tokenView() const { return m_tokens; }
  DensityModel* densityModel() { return &m_density; }
  DocumentModel* documentModel() { return &m_documents; }
  TokenDetailModel* tokenDetail() { return &m_detail; }
  QString densityReadout() const;
  QString layoutReadout() const;
  QString lastError() const { return m_lastError; }
  PlotView* plot(int i) const;  // 0 cache entries, 1 compression, 2 density histogram
  int64_t searchHit() const;

 signals:
  void logOpened(const QString& path);
  void documentShown(int d);
  void errorShown(const QString& message);

 protected:
  void dragEnterEvent(QDragEnterEvent* e) override;
  void dropEvent(QDropEvent* e) override;

 private:
  void buildUi();
  void buildMenus();
  void showError(const QString& message);
  void exportInteractively(const QString& title, void (MainWindow::*write)(const QString&));  // asks for a folder
  void addRecent(const QString& path);
  void rebuildRecentMenu();
  void onCorpus(std::shared_ptr<Corpus> c, std::shared_ptr<const CorpusStats> stats);
  void onStats(std::shared_ptr<const CorpusStats> stats);  // new counts: document list, plots, layouts, heatmap
  const analysis::Report& report() const { return m_stats->report; }
  void applyTau();           // after the slider settles
  void refreshHeatmap();
  void refreshDocumentPlots();
  void refreshCorpusPlots();
  KeptRule rule() const;
  std::vector<int64_t> corpusKept() const;  // (LH) corpus totals under rule()

  JobRunner m_jobs;
  std::shared_ptr<Corpus> m_corpus;
  std::shared_ptr<const Document> m_doc;
  std::vector<int64_t> m_docKept;             // (LH) the document's kept eligible keys under rule()
  std::vector<double> m_docEntries;           // (T) its cache rows after each token under rule()
  std::shared_ptr<const CorpusStats> m_stats;  // the corpus under rule() (the logged one until a tau job returns)
  std::optional<double> m_tau;                 // counterfactual tau, or the logged decisions
  int m_selLayer = 0, m_selHead = 0;
  std::vector<int64_t> m_hits;
  int m_hit = -1;
  QString m_lastError;

  DensityModel m_density;
  DocumentModel m_documents;
  TokenDetailModel m_detail;
  HeatmapView* m_heatmap = nullptr;
  TokenView* m_tokens = nullptr;
  PlotsTab* m_plotsTab = nullptr;
  LayoutDesigner* m_designer = nullptr;
  QLabel *m_provenance = nullptr, *m_readout = nullptr, *m_tokenLabel = nullptr,
         *m_jobLabel = nullptr, *m_searchLabel = nullptr;
  QComboBox *m_colormap = nullptr, *m_scope = nullptr, *m_rows = nullptr;
  QSlider* m_tauSlider = nullptr;
  QCheckBox* m_tauLogged = nullptr;
  QLineEdit* m_search = nullptr;
  QTableView *m_docTable = nullptr, *m_detailTable = nullptr;
  QTabWidget *m_side = nullptr, *m_bottom = nullptr;
  QProgressBar* m_progress = nullptr;
  QMenu* m_recentMenu = nullptr;
  QTimer* m_tauTimer = nullptr;
};

}  // namespace spkv::gui
