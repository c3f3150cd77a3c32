// spkv-studio's main window: opens a gate log (argument, dialog, recent files, drag-and-drop), shows the
// run's provenance, the layer x head heatmap, the documents, the token view with search and per-token
// detail, the plots, the counterfactual tau slider and the layout designer. All reading and aggregation run
// as JobRunner jobs; this class only wires results into models and views. No torch.
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
class QSpinBox;
class QTableView;
class QTableWidget;
class QTabWidget;

namespace spkv::gui {

class HeatmapView;
class PlotView;
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
  JobRunner& jobs() { return jobs_; }
  const Corpus* corpus() const { return corpus_.get(); }
  const Document* document() const { return doc_.get(); }
  const analysis::Layout& designed() const { return designed_; }
  HeatmapView* heatmap() const { return heatmap_; }
  TokenView* tokenView() const { return tokens_; }
  DensityModel* densityModel() { return &density_; }
  DocumentModel* documentModel() { return &documents_; }
  TokenDetailModel* tokenDetail() { return &detail_; }
  QString densityReadout() const;
  QString layoutReadout() const;
  QString lastError() const { return last_error_; }
  PlotView* plot(int i) const { return plots_[i]; }  // 0 cache entries, 1 compression, 2 density histogram
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
  const analysis::Report& report() const { return stats_->report; }
  void readEvaluations();
  void applyTau();           // after the slider settles
  void refreshHeatmap();
  void refreshDocumentPlots();
  void refreshCorpusPlots();
  void refreshLayouts();     // derive at the budget from the current counts
  void refreshLayoutView();  // designed + reference onto the heatmap, readouts
  KeptRule rule() const;
  std::vector<int64_t> corpusKept() const;  // (LH) corpus totals under rule()

  JobRunner jobs_;
  std::shared_ptr<Corpus> corpus_;
  std::shared_ptr<const Document> doc_;
  std::vector<int64_t> doc_kept_;             // (LH) the document's kept eligible keys under rule()
  std::vector<double> doc_entries_;           // (T) its cache rows after each token under rule()
  std::shared_ptr<const CorpusStats> stats_;  // the corpus under rule() (the logged one until a tau job returns)
  std::optional<double> tau_;                 // counterfactual tau, or the logged decisions
  std::vector<analysis::Layout> derived_, evaluated_;
  analysis::Layout designed_;
  std::vector<uint8_t> reference_;
  int sel_layer_ = 0, sel_head_ = 0;
  std::vector<int64_t> hits_;
  int hit_ = -1;
  QString last_error_;

  DensityModel density_;
  DocumentModel documents_;
  TokenDetailModel detail_;
  HeatmapView* heatmap_ = nullptr;
  TokenView* tokens_ = nullptr;
  PlotView* plots_[3] = {};
  QLabel *provenance_ = nullptr, *readout_ = nullptr, *layout_readout_ = nullptr, *token_label_ = nullptr,
         *job_label_ = nullptr, *search_label_ = nullptr;
  QComboBox *colormap_ = nullptr, *scope_ = nullptr, *rows_ = nullptr, *reference_box_ = nullptr;
  QSlider* tau_slider_ = nullptr;
  QCheckBox *tau_logged_ = nullptr, *edit_heads_ = nullptr;
  QSpinBox* budget_ = nullptr;
  QLineEdit *budget_text_ = nullptr, *search_ = nullptr;
  QTableView *doc_table_ = nullptr, *detail_table_ = nullptr;
  QTableWidget* evals_ = nullptr;
  QTabWidget *side_ = nullptr, *bottom_ = nullptr;
  QProgressBar* progress_ = nullptr;
  QMenu* recent_menu_ = nullptr;
  QTimer* tau_timer_ = nullptr;
};

}  // namespace spkv::gui
