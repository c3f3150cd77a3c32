// The layout designer (LayoutDesigner.h): its controls, the derivation at a budget, the evaluations next to
// the log, and the export.
#include "gui/app/LayoutDesigner.h"

#include <QCheckBox>
#include <QComboBox>
#include <QDateTime>
#include <QDir>
#include <QFileInfo>
#include <QFormLayout>
#include <QHeaderView>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QLabel>
#include <QLineEdit>
#include <QPushButton>
#include <QSaveFile>
#include <QSpinBox>
#include <QTableWidget>
#include <algorithm>
#include <cmath>

#include "core/base/errors.h"
#include "gui/models/ItemModels.h"

namespace spkv::gui {
namespace {
void writeAtomic(const QString& path, const std::string& text) {
  QSaveFile f(path);
  if (!f.open(QIODevice::WriteOnly) || f.write(text.data(), qint64(text.size())) != qint64(text.size()) || !f.commit())
    throw FileError(path.toStdString(), "cannot write: " + f.errorString().toStdString());
}
}  // namespace

LayoutDesigner::LayoutDesigner(DensityModel& density, QWidget* parent) : QWidget(parent), m_density(density) {
  auto* form = new QFormLayout(this);
  m_budget = new QSpinBox;
  m_budgetText = new QLineEdit;
  m_budgetText->setPlaceholderText("or: 25%, 0.3, kv:0.35, density (Enter)");
  m_referenceBox = new QComboBox;
  m_editHeads = new QCheckBox("click heads on the heatmap to toggle them");
  m_readout = new QLabel;
  m_readout->setWordWrap(true);
  auto* export_button = new QPushButton("Export layout…");
  m_evals = new QTableWidget(0, 6);
  m_evals->setHorizontalHeaderLabels({"file", "layout", "global", "KV ratio", "ΔNLL vs full", "ΔNLL vs SP-KV"});
  m_evals->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
  m_evals->verticalHeader()->hide(), m_evals->setEditTriggers(QAbstractItemView::NoEditTriggers);
  form->addRow("global heads", m_budget);
  form->addRow("budget", m_budgetText);
  form->addRow("compare with", m_referenceBox);
  form->addRow(m_editHeads);
  form->addRow(m_readout);
  form->addRow(export_button);
  form->addRow(new QLabel("Evaluations next to the log (spkv layout eval --json):"));
  form->addRow(m_evals);

  connect(m_budget, &QSpinBox::valueChanged, this, &LayoutDesigner::setBudget);
  connect(m_budgetText, &QLineEdit::returnPressed, this, [this] {
    try {
      if (m_report) m_budget->setValue(int(analysis::budget_heads(analysis::parse_budget(m_budgetText->text().toStdString()), *m_report)));
    } catch (const std::exception& e) {
      emit failed(e.what());
    }
  });
  connect(m_referenceBox, &QComboBox::currentTextChanged, this, [this](const QString& s) { setReference(s == "none" ? QString() : s); });
  connect(m_editHeads, &QCheckBox::toggled, this, &LayoutDesigner::editModeChanged);
  connect(export_button, &QPushButton::clicked, this, &LayoutDesigner::exportRequested);
  connect(m_evals, &QTableWidget::cellClicked, this, [this](int row, int) {
    const QString name = m_evals->item(row, 1)->data(Qt::UserRole).toString();
    if (!name.isEmpty()) m_referenceBox->setCurrentText(name);
  });
}

void LayoutDesigner::setCorpus(const Corpus* c, const analysis::Report* report) {
  m_corpus = c, m_report = report, m_reference.clear();
  m_budget->blockSignals(true);
  m_budget->setRange(1, int(c->LH()));  // derive_layouts needs 1 .. L * Hkv global heads
  int density_heads = 1;                 // a log without eligible keys (e.g. no document yet) has no density budget
  try {
    density_heads = std::max(1, int(analysis::budget_heads(analysis::parse_budget("density"), *report)));
  } catch (const ConfigError&) {
  }
  m_budget->setValue(density_heads);
  m_budget->blockSignals(false);
  readEvaluations();
  refreshLayouts();
}

void LayoutDesigner::setReport(const analysis::Report* report) {
  m_report = report;
  refreshLayouts();
}

void LayoutDesigner::readEvaluations() {
  m_evaluated.clear();
  m_evals->setRowCount(0);
  const QFileInfo log(QString::fromStdString(m_corpus->info.path));
  const int64_t LH = m_corpus->LH();
  for (const QFileInfo& f : log.dir().entryInfoList({"*.json"}, QDir::Files, QDir::Name)) {
    QFile file(f.filePath());
    if (f.size() > (16 << 20) || !file.open(QIODevice::ReadOnly)) continue;
    const QJsonObject o = QJsonDocument::fromJson(file.readAll()).object();
    if (!o.value("rows").isArray()) continue;  // not an `spkv layout eval --json` file
    for (const auto& v : o.value("rows").toArray()) {
      const QJsonObject r = v.toObject();
      const int row = m_evals->rowCount();
      m_evals->insertRow(row);
      auto cell = [&](int col, const QString& text) { m_evals->setItem(row, col, new QTableWidgetItem(text)); };
      const QString name = r.value("name").toString();
      cell(0, f.fileName()), cell(1, name);
      cell(2, r.value("global_heads").isDouble() ? QString::number(r.value("global_heads").toInt()) : "–");
      cell(3, formatNumber(r.value("kv_ratio").toDouble(NAN), 3));
      cell(4, formatNumber(r.value("delta_pct_vs_full").toDouble(NAN), 2) + "%");
      cell(5, r.value("delta_pct_vs_spkv").isDouble() ? formatNumber(r.value("delta_pct_vs_spkv").toDouble(), 2) + "%" : "–");
      const QJsonArray flags = r.value("layout").toArray();
      if (flags.size() != LH) continue;  // full attention, SP-KV, or another model's shape
      analysis::Layout l;
      l.name = "eval: " + name.toStdString(), l.n_layers = m_corpus->info.n_layers, l.n_kv_heads = m_corpus->info.n_kv_heads;
      for (const auto& x : flags) l.global.push_back(uint8_t(x.toInt() != 0));
      m_evals->item(row, 1)->setData(Qt::UserRole, QString::fromStdString(l.name));
      m_evaluated.push_back(std::move(l));
    }
  }
  m_evals->setVisible(m_evals->rowCount() > 0);
}

void LayoutDesigner::setBudget(int heads) {
  m_budget->blockSignals(true), m_budget->setValue(heads), m_budget->blockSignals(false);
  refreshLayouts();
}

void LayoutDesigner::refreshLayouts() {
  if (!m_corpus || !m_report) return;
  m_derived = analysis::derive_layouts(*m_report, m_budget->value());
  m_designed = m_derived.front();  // guided
  const QString current = m_referenceBox->currentText();
  m_referenceBox->blockSignals(true);
  m_referenceBox->clear();
  m_referenceBox->addItem("none");
  for (size_t i = 1; i < m_derived.size(); ++i) m_referenceBox->addItem(QString::fromStdString(m_derived[i].name));
  for (const auto& l : m_evaluated) m_referenceBox->addItem(QString::fromStdString(l.name));
  const int keep = m_referenceBox->findText(current);
  m_referenceBox->setCurrentIndex(std::max(0, keep));
  m_referenceBox->blockSignals(false);
  setReference(m_referenceBox->currentText() == "none" ? QString() : m_referenceBox->currentText());
}

void LayoutDesigner::toggleHead(int layer, int head) {
  if (!m_corpus || m_designed.global.empty()) return;
  auto& g = m_designed.global[size_t(layer * m_corpus->info.n_kv_heads + head)];
  g = !g;
  m_designed.name = "custom";
  m_designed.method = "hand-edited in spkv-studio, starting from the guided layout";
  m_budget->blockSignals(true), m_budget->setValue(int(m_designed.n_global())), m_budget->blockSignals(false);
  refreshLayoutView();
}

void LayoutDesigner::setReference(const QString& name) {
  m_reference.clear();
  for (const auto* list : {&m_derived, &m_evaluated})
    for (const auto& l : *list)
      if (QString::fromStdString(l.name) == name) m_reference = l.global;
  if (m_referenceBox->currentText() != (name.isEmpty() ? "none" : name)) {
    m_referenceBox->blockSignals(true), m_referenceBox->setCurrentText(name.isEmpty() ? "none" : name), m_referenceBox->blockSignals(false);
  }
  refreshLayoutView();
}

void LayoutDesigner::refreshLayoutView() {
  if (!m_report) return;
  m_designed.coverage = analysis::layout_coverage(m_designed.global, *m_report);
  m_designed.kv_ratio = analysis::layout_kv_ratio(m_designed.global, *m_report);
  m_density.setGlobal(m_designed.global);
  m_density.setReference(m_reference);
  m_readout->setText(readout());
}

QString LayoutDesigner::readout() const {
  if (!m_corpus || !m_report) return {};
  auto line = [&](const QString& name, const std::vector<uint8_t>& g) {
    const double kv = analysis::layout_kv_ratio(g, *m_report);
    int64_t n = 0;
    for (auto x : g) n += x;
    QString s = QStringLiteral("%1: %2 of %3 heads global · coverage %4 · KV %5× of full")
                    .arg(name).arg(n).arg(g.size()).arg(formatNumber(analysis::layout_coverage(g, *m_report), 3)).arg(formatNumber(kv, 3));
    if (m_corpus->head_dim > 0) s += " (" + formatMib(kv * m_corpus->denseEntries() * m_corpus->kvBytesPerEntry()) + ")";
    return s;
  };
  QString s = line(QString::fromStdString(m_designed.name), m_designed.global);
  if (!m_reference.empty()) s += "\n" + line(m_referenceBox->currentText() + " (dots)", m_reference);
  s += QStringLiteral("\ndynamic SP-KV: KV %1× of full").arg(formatNumber(analysis::spkv_kv_ratio(*m_report), 3));
  return s;
}

QString LayoutDesigner::exportTo(const QString& dir, double tau) const {
  if (!m_corpus || !m_report) throw InputError("export layout: no log is open");
  if (!QDir().mkpath(dir)) throw FileError(dir.toStdString(), "cannot create the folder");
  analysis::Layout l = m_designed;
  l.window = m_corpus->info.window, l.tau = tau, l.logs = {m_corpus->info.path};
  l.model_path = m_report->model_path, l.checkpoint_sha256 = m_report->checkpoint_sha256, l.model_type = m_report->model_type;
  l.created = QDateTime::currentDateTimeUtc().toString(Qt::ISODate).toStdString(), l.tool = "spkv-studio";
  std::vector<std::string> warnings;
  const std::string hf = analysis::hf_config_fragment(l, l.model_type, warnings);
  const QDir d(dir);
  writeAtomic(d.filePath("layout.json"), analysis::layout_json(l));
  writeAtomic(d.filePath("hf_config_fragment.json"), hf);
  writeAtomic(d.filePath("full_attention_heads.tsv"), analysis::duo_attention_tsv(l));
  QString msg = QStringLiteral("wrote layout.json, hf_config_fragment.json, full_attention_heads.tsv to %1").arg(dir);
  for (const auto& w : warnings) msg += "; warning: " + QString::fromStdString(w);
  return msg;
}

}  // namespace spkv::gui
