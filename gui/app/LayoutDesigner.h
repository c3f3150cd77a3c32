// spkv-studio's layout designer (the Layout tab): a budget of global heads (a number, or a budget text such as
// 25%, kv:0.35 or density), the guided layout derived at that budget, hand edits from the heatmap, a
// reference layout to compare with (derived, or evaluated by `spkv layout eval --json` next to the log),
// the readout and the export. It paints the designed and reference layouts onto the density model. It
// derives from the report it is handed; it reads no log itself.
#pragma once
#include <QWidget>
#include <optional>
#include <vector>

#include "analysis/layout.h"
#include "analysis/report.h"
#include "gui/models/GateData.h"

class QCheckBox;
class QComboBox;
class QLabel;
class QLineEdit;
class QSpinBox;
class QTableWidget;

namespace spkv::gui {

class DensityModel;

class LayoutDesigner : public QWidget {
  Q_OBJECT
 public:
  explicit LayoutDesigner(DensityModel& density, QWidget* parent = nullptr);
  // A newly opened log: the budget starts at the SP-KV density, the evaluations next to it are read, and the
  // layouts are derived from `report` (which must outlive the next setReport or setCorpus call).
  void setCorpus(const Corpus* c, const analysis::Report* report);
  // New counts for the same log (a counterfactual tau): derives again at the current budget.
  void setReport(const analysis::Report* report);
  void setBudget(int heads);
  void toggleHead(int layer, int head);
  void setReference(const QString& name);  // a derived or evaluated layout's name; "" for none
  // layout.json, hf_config_fragment.json, full_attention_heads.tsv; tau: the decisions the layout was
  // designed on. Throws InputError or FileError; returns the status line (with warnings).
  QString exportTo(const QString& dir, double tau) const;
  const analysis::Layout& designed() const { return m_designed; }
  QString readout() const;

 signals:
  void editModeChanged(bool on);  // toggle heads by clicking the heatmap
  void exportRequested();
  void failed(const QString& message);

 private:
  void readEvaluations();
  void refreshLayouts();     // derive at the budget from the current counts
  void refreshLayoutView();  // designed + reference onto the heatmap, readouts

  DensityModel& m_density;
  const Corpus* m_corpus = nullptr;
  const analysis::Report* m_report = nullptr;
  std::vector<analysis::Layout> m_derived, m_evaluated;
  analysis::Layout m_designed;
  std::vector<uint8_t> m_reference;
  QSpinBox* m_budget = nullptr;
  QLineEdit* m_budgetText = nullptr;
  QComboBox* m_referenceBox = nullptr;
  QCheckBox* m_editHeads = nullptr;
  QLabel* m_readout = nullptr;
  QTableWidget* m_evals = nullptr;
};

}  // namespace spkv::gui
