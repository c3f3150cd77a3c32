#include "gui/app/MainWindow.h"

#include <QApplication>
#include <QCheckBox>
#include <QComboBox>
#include <QDateTime>
#include <QDir>
#include <QDragEnterEvent>
#include <QFileDialog>
#include <QFileInfo>
#include <QFormLayout>
#include <QHeaderView>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QLabel>
#include <QLineEdit>
#include <QMenuBar>
#include <QMessageBox>
#include <QMimeData>
#include <QProgressBar>
#include <QPushButton>
#include <QSaveFile>
#include <QScrollArea>
#include <QSettings>
#include <QSlider>
#include <QSortFilterProxyModel>
#include <QSpinBox>
#include <QSplitter>
#include <QStatusBar>
#include <QTableView>
#include <QTableWidget>
#include <QTabWidget>
#include <QTimer>
#include <QToolButton>
#include <QVBoxLayout>
#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "gui/models/ColorMap.h"
#include "gui/widgets/HeatmapView.h"
#include "gui/widgets/PlotView.h"
#include "gui/widgets/TokenView.h"

namespace spkv::gui {
namespace {
constexpr int kMaxRecent = 8;
const char* kPlotNames[3] = {"cache_entries", "compression", "density_histogram"};

struct DocBundle {
  std::shared_ptr<const Document> doc;
  std::shared_ptr<const Lod> lod;
  std::vector<int64_t> kept;    // (LH) kept eligible keys
  std::vector<double> entries;  // (T) cache rows after each token
};

DocBundle documentViews(std::shared_ptr<const Document> doc, const KeptRule& r, Cancel& cancel) {
  DocBundle b;
  b.lod = std::make_shared<Lod>(buildLod(*doc, r, cancel));
  b.kept = doc->keptEligible(r), b.entries = doc->entriesByPosition(r), b.doc = std::move(doc);
  return b;
}

QString mib(double bytes) {
  const double m = bytes / (1024.0 * 1024.0);
  return m >= 10240 ? QString::number(m / 1024.0, 'f', 1) + " GiB" : QString::number(m, 'f', 1) + " MiB";
}

void writeAtomic(const QString& path, const std::string& text) {
  QSaveFile f(path);
  if (!f.open(QIODevice::WriteOnly) || f.write(text.data(), qint64(text.size())) != qint64(text.size()) || !f.commit())
    throw FileError(path.toStdString(), "cannot write: " + f.errorString().toStdString());
}

}  // namespace

MainWindow::MainWindow(QWidget* parent) : QMainWindow(parent) {
  setWindowTitle("spkv-studio");
  setAcceptDrops(true);
  buildUi();
  buildMenus();
  connect(&m_jobs, &JobRunner::failed, this, [this](const QString& name, const QString& msg) { showError(name + ": " + msg); });
}

MainWindow::~MainWindow() { m_jobs.cancelAll(); }

// --- building the window ----------------------------------------------------------------------------
void MainWindow::buildUi() {
  m_heatmap = new HeatmapView(&m_density);
  m_tokens = new TokenView;
  for (auto& p : m_plots) {
    p = new PlotView;
    connect(p, &PlotView::exportFailed, this, &MainWindow::showError);
  }

  // Side tabs: the run, the documents, the layout designer.
  m_side = new QTabWidget;
  m_provenance = new QLabel("No log open.");
  m_provenance->setWordWrap(true), m_provenance->setTextInteractionFlags(Qt::TextSelectableByMouse);
  m_provenance->setAlignment(Qt::AlignTop | Qt::AlignLeft);
  auto* scroll = new QScrollArea;
  scroll->setWidget(m_provenance), scroll->setWidgetResizable(true);
  m_side->addTab(scroll, "Run");

  auto* proxy = new QSortFilterProxyModel(this);
  proxy->setSourceModel(&m_documents), proxy->setSortRole(Qt::UserRole);
  m_docTable = new QTableView;
  m_docTable->setModel(proxy), m_docTable->setSortingEnabled(true);
  m_docTable->horizontalHeader()->setSortIndicator(-1, Qt::AscendingOrder);  // the log's order until a header is clicked
  proxy->sort(-1);
  m_docTable->setSelectionBehavior(QAbstractItemView::SelectRows), m_docTable->setSelectionMode(QAbstractItemView::SingleSelection);
  m_docTable->setTextElideMode(Qt::ElideLeft), m_docTable->setWordWrap(false);  // ids are paths: keep their ends
  m_docTable->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
  m_docTable->horizontalHeader()->setSectionResizeMode(DocumentModel::Id, QHeaderView::Stretch);
  m_docTable->verticalHeader()->hide();
  connect(m_docTable->selectionModel(), &QItemSelectionModel::currentRowChanged, this,
          [this, proxy](const QModelIndex& cur) { if (cur.isValid()) selectDocument(proxy->mapToSource(cur).row()); });
  m_side->addTab(m_docTable, "Documents");

  auto* designer = new QWidget;
  auto* form = new QFormLayout(designer);
  m_budget = new QSpinBox;
  m_budgetText = new QLineEdit;
  m_budgetText->setPlaceholderText("or: 25%, 0.3, kv:0.35, density (Enter)");
  m_referenceBox = new QComboBox;
  m_editHeads = new QCheckBox("click heads on the heatmap to toggle them");
  m_layoutReadout = new QLabel;
  m_layoutReadout->setWordWrap(true);
  auto* export_button = new QPushButton("Export layout…");
  m_evals = new QTableWidget(0, 6);
  m_evals->setHorizontalHeaderLabels({"file", "layout", "global", "KV ratio", "ΔNLL vs full", "ΔNLL vs SP-KV"});
  m_evals->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
  m_evals->verticalHeader()->hide(), m_evals->setEditTriggers(QAbstractItemView::NoEditTriggers);
  form->addRow("global heads", m_budget);
  form->addRow("budget", m_budgetText);
  form->addRow("compare with", m_referenceBox);
  form->addRow(m_editHeads);
  form->addRow(m_layoutReadout);
  form->addRow(export_button);
  form->addRow(new QLabel("Evaluations next to the log (spkv layout eval --json):"));
  form->addRow(m_evals);
  m_side->addTab(designer, "Layout");

  // The heatmap with its controls.
  auto* heat_panel = new QWidget;
  auto* hv = new QVBoxLayout(heat_panel);
  auto* row1 = new QHBoxLayout;
  m_colormap = new QComboBox;
  m_colormap->addItems(ColorMap::names());
  m_scope = new QComboBox;
  m_scope->addItems({"corpus", "selected document"});
  row1->addWidget(new QLabel("colour map")), row1->addWidget(m_colormap);
  row1->addWidget(new QLabel("aggregate")), row1->addWidget(m_scope), row1->addStretch();
  auto* row2 = new QHBoxLayout;
  m_tauSlider = new QSlider(Qt::Horizontal);
  m_tauSlider->setRange(0, 1000), m_tauSlider->setEnabled(false);
  m_tauSlider->setToolTip("Re-threshold the logged u: z = u ≥ tau (enabled once the u histograms are read)");
  m_tauLogged = new QCheckBox("logged decisions");
  m_tauLogged->setChecked(true);
  m_readout = new QLabel;
  m_readout->setTextInteractionFlags(Qt::TextSelectableByMouse);
  row2->addWidget(new QLabel("tau")), row2->addWidget(m_tauSlider, 1), row2->addWidget(m_tauLogged);
  hv->addLayout(row1), hv->addLayout(row2), hv->addWidget(m_readout), hv->addWidget(m_heatmap, 1);

  auto* top = new QSplitter(Qt::Horizontal);
  top->addWidget(m_side), top->addWidget(heat_panel);
  top->setStretchFactor(0, 2), top->setStretchFactor(1, 3);

  // Bottom tabs: tokens, plots.
  m_bottom = new QTabWidget;
  auto* token_tab = new QWidget;
  auto* tv = new QVBoxLayout(token_tab);
  auto* trow = new QHBoxLayout;
  m_rows = new QComboBox;
  m_rows->addItems({"a strip per head", "a strip per layer"});
  m_search = new QLineEdit;
  m_search->setPlaceholderText("find text (Enter)");
  auto* prev = new QToolButton, *next = new QToolButton;
  prev->setText("◀"), next->setText("▶");
  m_searchLabel = new QLabel;
  trow->addWidget(m_rows), trow->addWidget(m_search, 1), trow->addWidget(prev), trow->addWidget(next), trow->addWidget(m_searchLabel);
  trow->addWidget(new QLabel("wheel/±: zoom · drag/←→: pan · Home: whole document · click: token detail"));
  auto* tsplit = new QSplitter(Qt::Horizontal);
  auto* detail_panel = new QWidget;
  auto* dv = new QVBoxLayout(detail_panel);
  m_tokenLabel = new QLabel("Click a token.");
  m_tokenLabel->setWordWrap(true);
  m_detailTable = new QTableView;
  m_detailTable->setModel(&m_detail);
  m_detailTable->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
  dv->addWidget(m_tokenLabel), dv->addWidget(m_detailTable, 1);
  tsplit->addWidget(m_tokens), tsplit->addWidget(detail_panel);
  detail_panel->setMinimumWidth(300);
  tsplit->setStretchFactor(0, 3), tsplit->setStretchFactor(1, 1);
  tv->addLayout(trow), tv->addWidget(tsplit, 1);
  m_bottom->addTab(token_tab, "Tokens");
  auto* plot_tab = new QWidget;
  auto* pv = new QHBoxLayout(plot_tab);
  for (auto* p : m_plots) pv->addWidget(p);
  m_bottom->addTab(plot_tab, "Plots");

  auto* split = new QSplitter(Qt::Vertical);
  split->addWidget(top), split->addWidget(m_bottom);
  split->setStretchFactor(0, 1), split->setStretchFactor(1, 1);
  setCentralWidget(split);

  m_jobLabel = new QLabel, m_progress = new QProgressBar;
  m_progress->setRange(0, 1000), m_progress->setMaximumWidth(200);
  auto* cancel = new QToolButton;
  cancel->setText("cancel");
  statusBar()->addPermanentWidget(m_jobLabel), statusBar()->addPermanentWidget(m_progress), statusBar()->addPermanentWidget(cancel);
  m_progress->hide(), m_jobLabel->hide(), cancel->hide();
  connect(cancel, &QToolButton::clicked, &m_jobs, &JobRunner::cancelAll);
  connect(&m_jobs, &JobRunner::progress, this, [this](const QString& name, double f) {
    m_jobLabel->setText(name + "…");
    m_progress->setValue(int(std::lround(1000 * f)));
  });
  connect(&m_jobs, &JobRunner::busyChanged, this, [this, cancel](bool busy) {
    m_progress->setVisible(busy), cancel->setVisible(busy);
    m_jobLabel->setVisible(busy);
    if (busy) m_progress->setValue(0), m_jobLabel->setText("working…");
  });

  m_tauTimer = new QTimer(this);
  m_tauTimer->setSingleShot(true), m_tauTimer->setInterval(150);
  connect(m_tauTimer, &QTimer::timeout, this, &MainWindow::applyTau);

  connect(m_heatmap, &HeatmapView::headClicked, this, &MainWindow::selectHead);
  connect(m_heatmap, &HeatmapView::headToggled, this, &MainWindow::toggleHead);
  connect(m_colormap, &QComboBox::currentTextChanged, m_heatmap, &HeatmapView::setColorMap);
  connect(m_scope, &QComboBox::currentIndexChanged, this, [this](int i) { setScope(i == 1); });
  connect(m_tauSlider, &QSlider::valueChanged, this, [this](int v) {
    m_tau = v / 1000.0;
    m_tauLogged->blockSignals(true), m_tauLogged->setChecked(false), m_tauLogged->blockSignals(false);
    refreshHeatmap();  // the corpus heatmap and readouts follow at once (u histograms)
    m_tauTimer->start();  // documents, pyramid and plots once the slider settles
  });
  connect(m_tauLogged, &QCheckBox::toggled, this, [this](bool on) { setTau(on ? std::nullopt : std::optional<double>(m_tauSlider->value() / 1000.0)); });
  connect(m_budget, &QSpinBox::valueChanged, this, &MainWindow::setBudget);
  connect(m_budgetText, &QLineEdit::returnPressed, this, [this] {
    try {
      if (m_stats) m_budget->setValue(int(analysis::budget_heads(analysis::parse_budget(m_budgetText->text().toStdString()), report())));
    } catch (const std::exception& e) {
      showError(e.what());
    }
  });
  connect(m_referenceBox, &QComboBox::currentTextChanged, this, [this](const QString& s) { setReference(s == "none" ? QString() : s); });
  connect(m_editHeads, &QCheckBox::toggled, m_heatmap, &HeatmapView::setEditMode);
  connect(export_button, &QPushButton::clicked, this, [this] { exportInteractively("Export the layout into", &MainWindow::exportLayout); });
  connect(m_evals, &QTableWidget::cellClicked, this, [this](int row, int) {
    const QString name = m_evals->item(row, 1)->data(Qt::UserRole).toString();
    if (!name.isEmpty()) m_referenceBox->setCurrentText(name);
  });
  connect(m_rows, &QComboBox::currentIndexChanged, this, [this](int i) {
    if (m_corpus) m_tokens->setRows(m_corpus->info.n_layers, m_corpus->info.n_kv_heads, i == 1);
  });
  connect(m_search, &QLineEdit::returnPressed, this, [this] { search(m_search->text()); });
  connect(prev, &QToolButton::clicked, this, [this] { searchStep(-1); });
  connect(next, &QToolButton::clicked, this, [this] { searchStep(1); });
  connect(m_tokens, &TokenView::tokenClicked, this, [this](int64_t t) {
    if (!m_doc || !m_corpus) return;
    m_detail.setToken(m_doc.get(), t, m_corpus->info.n_layers, m_corpus->info.n_kv_heads, rule());
    int kept = 0;
    for (int64_t i = 0; i < m_doc->LH; ++i) kept += m_doc->kept(t, i, rule());
    const std::string& s = m_doc->text[size_t(t)];
    m_tokenLabel->setText(QStringLiteral("token %1 of document %2: “%3”\nkept by %4 of %5 heads%6").arg(t).arg(m_doc->index)
                              .arg(QString::fromUtf8(s.data(), int(s.size())).toHtmlEscaped()).arg(kept).arg(m_doc->LH)
                              .arg(m_doc->eligible(t) ? "" : " (not eligible: always in the window or pinned)"));
  });
}

void MainWindow::buildMenus() {
  auto* file = menuBar()->addMenu("&File");
  file->addAction("&Open…", QKeySequence::Open, this, [this] {
    const QString path = QFileDialog::getOpenFileName(this, "Open gate log", {}, "HDF5 gate logs (*.h5);;All files (*)");
    if (!path.isEmpty()) openLog(path);
  });
  m_recentMenu = file->addMenu("Open &recent");
  rebuildRecentMenu();
  file->addAction("Export &layout…", this, [this] { exportInteractively("Export the layout into", &MainWindow::exportLayout); });
  file->addAction("Export &plots (PNG + SVG)…", this, [this] { exportInteractively("Export the plots into", &MainWindow::exportPlots); });
  file->addSeparator();
  file->addAction("&Quit", QKeySequence::Quit, qApp, &QApplication::quit);
}

void MainWindow::exportInteractively(const QString& title, void (MainWindow::*write)(const QString&)) {
  const QString dir = QFileDialog::getExistingDirectory(this, title);
  if (dir.isEmpty()) return;
  try {
    (this->*write)(dir);
  } catch (const std::exception& e) {
    showError(e.what());
  }
}

// --- files ------------------------------------------------------------------------------------------
void MainWindow::openLog(const QString& path) {
  struct Opened {
    std::shared_ptr<Corpus> corpus;
    std::shared_ptr<const CorpusStats> stats;
  };
  const std::string p = path.toStdString();
  m_jobs.start<Opened>(
      "open", [p](Cancel&, const Progress&) {
        auto c = std::make_shared<Corpus>(openCorpus(p));
        return Opened{c, std::make_shared<const CorpusStats>(corpusStats(*c, c->kept))};
      },
      [this, path](Opened& o) {
        onCorpus(o.corpus, o.stats);
        addRecent(path);
        emit logOpened(path);
      });
}

void MainWindow::showError(const QString& message) {
  m_lastError = message;
  statusBar()->showMessage(message, 15000);
  auto* box = new QMessageBox(QMessageBox::Warning, "spkv-studio", message, QMessageBox::Ok, this);
  box->setAttribute(Qt::WA_DeleteOnClose);
  box->open();
  emit errorShown(message);
}

void MainWindow::addRecent(const QString& path) {
  QSettings s;
  QStringList list = s.value("recentFiles").toStringList();
  list.removeAll(QFileInfo(path).absoluteFilePath());
  list.prepend(QFileInfo(path).absoluteFilePath());
  s.setValue("recentFiles", list.mid(0, kMaxRecent));
  rebuildRecentMenu();
}

void MainWindow::rebuildRecentMenu() {
  m_recentMenu->clear();
  const QStringList list = QSettings().value("recentFiles").toStringList();
  for (const QString& p : list) m_recentMenu->addAction(p, this, [this, p] { openLog(p); });
  m_recentMenu->setEnabled(!list.isEmpty());
}

void MainWindow::dragEnterEvent(QDragEnterEvent* e) {
  if (e->mimeData()->hasUrls() && e->mimeData()->urls().first().isLocalFile()) e->acceptProposedAction();
}

void MainWindow::dropEvent(QDropEvent* e) { openLog(e->mimeData()->urls().first().toLocalFile()); }

void MainWindow::onCorpus(std::shared_ptr<Corpus> c, std::shared_ptr<const CorpusStats> stats) {
  m_jobs.cancelAll();  // the previous log's jobs (a log that fails to open leaves them running)
  m_corpus = c, m_doc.reset(), m_tau.reset(), m_hits.clear(), m_hit = -1, m_reference.clear();
  m_stats = std::move(stats);
  const auto& in = c->info;
  setWindowTitle("spkv-studio — " + QFileInfo(QString::fromStdString(in.path)).fileName());
  QString inputs = QString::fromStdString(in.inputs);
  const auto list = QJsonDocument::fromJson(inputs.toUtf8());
  if (list.isArray()) {
    QStringList items;
    for (const auto& v : list.array()) items << v.toString();
    inputs = items.join("<br>");
  }
  auto row = [](const QString& k, const QString& v) { return "<tr><td><b>" + k + "</b></td><td>" + v + "</td></tr>"; };
  auto str = [](const std::string& s) { return QString::fromStdString(s).toHtmlEscaped(); };
  m_provenance->setText(
      "<table cellspacing=4>" + row("file", str(in.path)) + row("schema", QString::number(in.schema_version) + (in.complete ? "" : " (incomplete run)")) +
      row("created", str(in.created)) + row("model", str(in.model_path)) + row("checkpoint", str(in.checkpoint_sha256.substr(0, 16)) + "…") +
      row("spkv commit", str(in.git_commit)) + row("tokenizer", str(in.tokenizer)) + row("gating", str(in.gating_mode)) +
      row("tau", QString::number(in.tau)) + row("window W", QString::number(in.window)) + row("keep_first", QString::number(in.keep_first)) +
      row("shape", QStringLiteral("%1 layers × %2 KV heads, head dim %3").arg(in.n_layers).arg(in.n_kv_heads).arg(c->head_dim)) +
      row("documents", QString::number(in.n_documents)) + row("tokens", QString::number(in.n_tokens)) +
      row("corpus", inputs) + row("splitting", str(in.split_policy)) + "</table>");
  m_tauSlider->blockSignals(true), m_tauLogged->blockSignals(true);
  m_tauSlider->setValue(int(std::lround(in.tau * 1000))), m_tauLogged->setChecked(true);
  m_tauSlider->setEnabled(false), m_tauLogged->setEnabled(false);
  m_tauSlider->blockSignals(false), m_tauLogged->blockSignals(false);
  m_tokens->setDocument(nullptr, nullptr);
  m_tokens->setRows(in.n_layers, in.n_kv_heads, m_rows->currentIndex() == 1);
  m_detail.setToken(nullptr, -1, 0, 0, {});
  m_documents.setCorpus(c.get(), m_stats.get());
  m_budget->blockSignals(true);
  m_budget->setRange(1, int(c->LH()));  // derive_layouts needs 1 .. L * Hkv global heads
  int density_heads = 1;                 // a log without eligible keys (e.g. no document yet) has no density budget
  try {
    density_heads = std::max(1, int(analysis::budget_heads(analysis::parse_budget("density"), report())));
  } catch (const ConfigError&) {
  }
  m_budget->setValue(density_heads);
  m_budget->blockSignals(false);
  readEvaluations();
  refreshLayouts();
  refreshHeatmap();
  selectHead(std::min<int>(m_selLayer, int(in.n_layers) - 1), std::min<int>(m_selHead, int(in.n_kv_heads) - 1));
  if (c->D() > 0) selectDocument(0);
  m_jobs.start<std::vector<uint32_t>>(
      "u histograms", [c](Cancel& k, const Progress& p) { return scanHistograms(*c, k, p); },
      [this, c](std::vector<uint32_t>& h) {
        if (c != m_corpus) return;
        c->hist = std::move(h);
        m_tauSlider->setEnabled(true), m_tauLogged->setEnabled(true);
      });
}

void MainWindow::readEvaluations() {
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

// --- selection --------------------------------------------------------------------------------------
KeptRule MainWindow::rule() const {
  KeptRule r;
  r.logged = !m_tau.has_value(), r.code = m_tau ? tauCode(*m_tau) : 0, r.keep_first = m_corpus ? m_corpus->info.keep_first : 0;
  return r;
}

void MainWindow::selectHead(int layer, int head) {
  if (!m_corpus || layer < 0 || head < 0 || layer >= m_corpus->info.n_layers || head >= m_corpus->info.n_kv_heads) return;
  m_selLayer = layer, m_selHead = head;
  m_heatmap->setSelected(layer, head);
  m_tokens->setSelectedHead(layer, head);
  m_documents.setHead(layer, head);
  statusBar()->showMessage(QStringLiteral("layer %1, KV head %2: density %3").arg(layer).arg(head).arg(formatNumber(m_density.density(layer, head), 4)));
  refreshCorpusPlots();
}

void MainWindow::selectDocument(int d) {
  if (!m_corpus || d < 0 || d >= m_corpus->D()) return;
  const auto c = m_corpus;
  const KeptRule r = rule();
  m_jobs.cancel("pyramid");
  m_jobs.start<DocBundle>(
      "document", [c, d, r](Cancel& k, const Progress& p) {
        return documentViews(std::make_shared<const Document>(loadDocument(*c, d, k, p)), r, k);
      },
      [this, d](DocBundle& b) {
        m_doc = b.doc, m_docKept = b.kept, m_docEntries = std::move(b.entries), m_hits.clear(), m_hit = -1;
        m_searchLabel->clear();
        m_tokens->setDocument(b.doc, b.lod);
        m_detail.setToken(nullptr, -1, 0, 0, {});
        refreshDocumentPlots();
        if (m_scope->currentIndex() == 1) refreshHeatmap();
        // Keep the table's selection in step when the document was chosen from code.
        auto* proxy = static_cast<QSortFilterProxyModel*>(m_docTable->model());
        const QModelIndex i = proxy->mapFromSource(m_documents.index(d, 0));
        if (m_docTable->currentIndex().row() != i.row()) {
          m_docTable->selectionModel()->blockSignals(true);
          m_docTable->setCurrentIndex(i);
          m_docTable->selectionModel()->blockSignals(false);
        }
        emit documentShown(d);
      });
}

void MainWindow::setScope(bool document) {
  m_scope->blockSignals(true), m_scope->setCurrentIndex(document ? 1 : 0), m_scope->blockSignals(false);
  refreshHeatmap();
}

void MainWindow::setTau(std::optional<double> tau) {
  m_tau = tau;
  m_tauSlider->blockSignals(true), m_tauLogged->blockSignals(true);
  if (tau) m_tauSlider->setValue(int(std::lround(*tau * 1000)));
  m_tauLogged->setChecked(!tau);
  m_tauSlider->blockSignals(false), m_tauLogged->blockSignals(false);
  refreshHeatmap();
  applyTau();
}

void MainWindow::applyTau() {
  if (!m_corpus) return;
  const KeptRule r = rule();
  if (m_doc) {
    const auto doc = m_doc;
    m_jobs.start<DocBundle>(
        "pyramid", [doc, r](Cancel& k, const Progress&) { return documentViews(doc, r, k); },
        [this](DocBundle& b) {
          if (b.doc != m_doc) return;
          m_docKept = b.kept, m_docEntries = std::move(b.entries);
          m_tokens->setLod(b.lod);
          refreshDocumentPlots();
          if (m_scope->currentIndex() == 1) refreshHeatmap();
        });
  }
  const auto c = m_corpus;
  m_jobs.start<std::shared_ptr<const CorpusStats>>(
      "documents at tau", [c, r](Cancel& k, const Progress& p) {
        return std::make_shared<const CorpusStats>(corpusStats(*c, r.logged ? c->kept : keptPerDocument(*c, r.code, k, p)));
      },
      [this, c](std::shared_ptr<const CorpusStats>& s) {
        if (c == m_corpus) onStats(s);
      });
}

void MainWindow::onStats(std::shared_ptr<const CorpusStats> stats) {
  m_stats = std::move(stats);
  m_documents.setCorpus(m_corpus.get(), m_stats.get());
  refreshCorpusPlots();
  refreshLayouts();
  refreshHeatmap();
}

std::vector<int64_t> MainWindow::corpusKept() const {
  // At a counterfactual tau the u histograms answer at once, while the slider moves; without them (a tau
  // set programmatically before they are read), the per-document counts the tau job returns.
  const KeptRule r = rule();
  if (r.logged) return m_corpus->keptTotal(r);
  return m_corpus->hist.empty() ? m_stats->keptTotal : m_corpus->keptTotal(r);
}

void MainWindow::refreshHeatmap() {
  if (!m_corpus) return;
  const int64_t L = m_corpus->info.n_layers, H = m_corpus->info.n_kv_heads, LH = L * H;
  if (m_scope->currentIndex() == 1 && m_doc) {
    std::vector<int64_t> elig(m_corpus->eligible.begin() + m_doc->index * LH, m_corpus->eligible.begin() + (m_doc->index + 1) * LH);
    m_density.setCounts(L, H, m_docKept, elig, {}, {}, "document " + QString::fromStdString(m_doc->id));
  } else {
    m_density.setCounts(L, H, corpusKept(), m_corpus->eligible_total, m_stats->lo, m_stats->hi,
                       QStringLiteral("corpus, %1 documents").arg(m_corpus->D()));
  }
  m_readout->setText(densityReadout());
}

QString MainWindow::densityReadout() const {
  if (!m_corpus) return {};
  // The counts the heatmap shows, and the entries every head holds whatever the gates say.
  const auto [k, e] = m_density.totals();
  const double kept = double(k), elig = double(e);
  const int64_t LH = m_corpus->LH();
  const bool doc = m_scope->currentIndex() == 1 && m_doc;
  const double dense = doc ? double(m_doc->T * LH) : m_corpus->denseEntries();
  const double entries = kept + (doc ? analysis::spkv_entries(m_doc->T, m_corpus->info.window, m_corpus->info.keep_first, LH, 0)
                                     : m_corpus->fixed_entries);
  QString s = QStringLiteral("tau %1 (%2) · density %3 · KV entries %4 of %5 (%6×)")
                  .arg(m_tau ? *m_tau : m_corpus->info.tau, 0, 'f', 3).arg(m_tau ? "counterfactual" : "logged")
                  .arg(formatNumber(elig > 0 ? kept / elig : NAN, 4)).arg(qlonglong(entries)).arg(qlonglong(dense)).arg(formatNumber(entries / dense, 3));
  if (m_corpus->head_dim > 0)
    s += QStringLiteral(" · KV %1 of %2 in 16-bit").arg(mib(entries * m_corpus->kvBytesPerEntry()), mib(dense * m_corpus->kvBytesPerEntry()));
  return s;
}

void MainWindow::refreshDocumentPlots() {
  if (!m_doc || !m_corpus) return;
  Plot p;
  p.title = QStringLiteral("KV cache entries against position, document %1 (%2)").arg(m_doc->index).arg(QString::fromStdString(m_doc->id));
  p.xLabel = "position (tokens)", p.yLabel = "K/V rows over all layers and heads";
  Series dense{Series::Kind::Line, "dense", QColor(150, 150, 150), {}, {}};
  Series spkv{Series::Kind::Line, m_tau ? QStringLiteral("SP-KV at tau %1").arg(*m_tau, 0, 'f', 3) : "SP-KV (logged)",
              QColor(30, 110, 200), {}, {}};
  const int64_t step = std::max<int64_t>(1, m_doc->T / 2000);
  for (int64_t t = 0; t < m_doc->T; t += step) {
    dense.x.push_back(double(t)), dense.y.push_back(double((t + 1) * m_doc->LH));
    spkv.x.push_back(double(t)), spkv.y.push_back(m_docEntries[size_t(t)]);
  }
  p.series = {dense, spkv};
  m_plots[0]->setPlot(p);
}

void MainWindow::refreshCorpusPlots() {
  if (!m_corpus) return;
  Plot comp;
  comp.title = "Compression against document length";
  comp.xLabel = "document length (tokens)", comp.yLabel = "dense / SP-KV KV entries";
  Series pts{Series::Kind::Points, "documents", QColor(30, 110, 200), {}, {}};
  for (int d = 0; d < m_documents.rowCount(); ++d) pts.x.push_back(double(m_corpus->tokens(d))), pts.y.push_back(m_documents.compression(d));
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
  const int64_t H = m_corpus->info.n_kv_heads, LH = m_corpus->LH();
  hist.title = QStringLiteral("Per-document density, layer %1").arg(m_selLayer);
  hist.xLabel = "density (kept / eligible)", hist.yLabel = "documents";
  constexpr int kBins = 20;
  Series bars{Series::Kind::Bars, QStringLiteral("layer %1, %2 documents").arg(m_selLayer).arg(m_corpus->D()), QColor(80, 160, 90), {}, {}, 1.0 / kBins};
  std::vector<double> counts(kBins, 0);
  for (int64_t d = 0; d < m_corpus->D(); ++d) {
    int64_t k = 0, e = 0;
    for (int64_t h = 0; h < H; ++h) k += m_stats->kept[size_t(d * LH + m_selLayer * H + h)], e += m_corpus->eligible[size_t(d * LH + m_selLayer * H + h)];
    if (e > 0) counts[size_t(std::min<int64_t>(kBins - 1, int64_t(kBins * double(k) / double(e))))] += 1;
  }
  for (int b = 0; b < kBins; ++b) bars.x.push_back(double(b) / kBins), bars.y.push_back(counts[size_t(b)]);
  hist.series = {bars};
  m_plots[2]->setPlot(hist);
}

// --- layout designer --------------------------------------------------------------------------------
void MainWindow::setBudget(int heads) {
  m_budget->blockSignals(true), m_budget->setValue(heads), m_budget->blockSignals(false);
  refreshLayouts();
}

void MainWindow::refreshLayouts() {
  if (!m_corpus) return;
  m_derived = analysis::derive_layouts(report(), m_budget->value());
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

void MainWindow::toggleHead(int layer, int head) {
  if (!m_corpus || m_designed.global.empty()) return;
  auto& g = m_designed.global[size_t(layer * m_corpus->info.n_kv_heads + head)];
  g = !g;
  m_designed.name = "custom";
  m_designed.method = "hand-edited in spkv-studio, starting from the guided layout";
  m_budget->blockSignals(true), m_budget->setValue(int(m_designed.n_global())), m_budget->blockSignals(false);
  refreshLayoutView();
}

void MainWindow::setReference(const QString& name) {
  m_reference.clear();
  for (const auto* list : {&m_derived, &m_evaluated})
    for (const auto& l : *list)
      if (QString::fromStdString(l.name) == name) m_reference = l.global;
  if (m_referenceBox->currentText() != (name.isEmpty() ? "none" : name)) {
    m_referenceBox->blockSignals(true), m_referenceBox->setCurrentText(name.isEmpty() ? "none" : name), m_referenceBox->blockSignals(false);
  }
  refreshLayoutView();
}

void MainWindow::refreshLayoutView() {
  m_designed.coverage = analysis::layout_coverage(m_designed.global, report());
  m_designed.kv_ratio = analysis::layout_kv_ratio(m_designed.global, report());
  m_density.setGlobal(m_designed.global);
  m_density.setReference(m_reference);
  m_layoutReadout->setText(layoutReadout());
}

QString MainWindow::layoutReadout() const {
  if (!m_corpus) return {};
  auto line = [&](const QString& name, const std::vector<uint8_t>& g) {
    const double kv = analysis::layout_kv_ratio(g, report());
    int64_t n = 0;
    for (auto x : g) n += x;
    QString s = QStringLiteral("%1: %2 of %3 heads global · coverage %4 · KV %5× of full")
                    .arg(name).arg(n).arg(g.size()).arg(formatNumber(analysis::layout_coverage(g, report()), 3)).arg(formatNumber(kv, 3));
    if (m_corpus->head_dim > 0) s += " (" + mib(kv * m_corpus->denseEntries() * m_corpus->kvBytesPerEntry()) + ")";
    return s;
  };
  QString s = line(QString::fromStdString(m_designed.name), m_designed.global);
  if (!m_reference.empty()) s += "\n" + line(m_referenceBox->currentText() + " (dots)", m_reference);
  s += QStringLiteral("\ndynamic SP-KV: KV %1× of full").arg(formatNumber(analysis::spkv_kv_ratio(report()), 3));
  return s;
}

void MainWindow::exportLayout(const QString& dir) {
  if (!m_corpus) throw InputError("export layout: no log is open");
  if (!QDir().mkpath(dir)) throw FileError(dir.toStdString(), "cannot create the folder");
  analysis::Layout l = m_designed;
  l.window = m_corpus->info.window, l.tau = m_tau ? *m_tau : m_corpus->info.tau, l.logs = {m_corpus->info.path};
  l.model_path = report().model_path, l.checkpoint_sha256 = report().checkpoint_sha256, l.model_type = report().model_type;
  l.created = QDateTime::currentDateTimeUtc().toString(Qt::ISODate).toStdString(), l.tool = "spkv-studio";
  std::vector<std::string> warnings;
  const std::string hf = analysis::hf_config_fragment(l, l.model_type, warnings);
  const QDir d(dir);
  writeAtomic(d.filePath("layout.json"), analysis::layout_json(l));
  writeAtomic(d.filePath("hf_config_fragment.json"), hf);
  writeAtomic(d.filePath("full_attention_heads.tsv"), analysis::duo_attention_tsv(l));
  QString msg = QStringLiteral("wrote layout.json, hf_config_fragment.json, full_attention_heads.tsv to %1").arg(dir);
  for (const auto& w : warnings) msg += "; warning: " + QString::fromStdString(w);
  statusBar()->showMessage(msg, 15000);
}

void MainWindow::exportPlots(const QString& dir) {
  if (!QDir().mkpath(dir)) throw FileError(dir.toStdString(), "cannot create the folder");
  for (int i = 0; i < 3; ++i)
    for (const char* ext : {".png", ".svg"}) m_plots[i]->exportTo(QDir(dir).filePath(QString(kPlotNames[i]) + ext));
  statusBar()->showMessage("wrote the plots to " + dir, 10000);
}

bool MainWindow::showTab(const QString& name) {
  for (QTabWidget* tabs : {m_side, m_bottom})
    for (int i = 0; i < tabs->count(); ++i)
      if (tabs->tabText(i).compare(name, Qt::CaseInsensitive) == 0) {
        tabs->setCurrentIndex(i);
        return true;
      }
  return false;
}

// --- search -----------------------------------------------------------------------------------------
void MainWindow::search(const QString& query) {
  if (!m_doc) return;
  m_search->setText(query);
  m_hits = findTokens(*m_doc, query.toStdString());
  m_hit = -1;
  if (m_hits.empty()) {
    m_searchLabel->setText("no match");
    return;
  }
  searchStep(1);
}

void MainWindow::searchStep(int step) {
  if (m_hits.empty()) return;
  const int n = int(m_hits.size());
  m_hit = m_hit < 0 ? 0 : ((m_hit + step) % n + n) % n;
  const int64_t t = m_hits[size_t(m_hit)];
  m_tokens->setHighlight(t);
  emit m_tokens->tokenClicked(t);
  m_searchLabel->setText(QStringLiteral("%1 of %2").arg(m_hit + 1).arg(n));
}

int64_t MainWindow::searchHit() const { return m_hit >= 0 ? m_hits[size_t(m_hit)] : -1; }

}  // namespace spkv::gui
