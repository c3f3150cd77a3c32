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

DocBundle document_views(std::shared_ptr<const Document> doc, const KeptRule& r, Cancel& cancel) {
  DocBundle b;
  b.lod = std::make_shared<Lod>(build_lod(*doc, r, cancel));
  b.kept = doc->kept_eligible(r), b.entries = doc->entries_by_position(r), b.doc = std::move(doc);
  return b;
}

QString mib(double bytes) {
  const double m = bytes / (1024.0 * 1024.0);
  return m >= 10240 ? QString::number(m / 1024.0, 'f', 1) + " GiB" : QString::number(m, 'f', 1) + " MiB";
}
QString num(double x, int digits) { return std::isfinite(x) ? QString::number(x, 'f', digits) : QStringLiteral("–"); }

void write_atomic(const QString& path, const std::string& text) {
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
  connect(&jobs_, &JobRunner::failed, this, [this](const QString& name, const QString& msg) { showError(name + ": " + msg); });
}

MainWindow::~MainWindow() { jobs_.cancelAll(); }

// --- building the window ----------------------------------------------------------------------------
void MainWindow::buildUi() {
  heatmap_ = new HeatmapView(&density_);
  tokens_ = new TokenView;
  for (auto& p : plots_) {
    p = new PlotView;
    connect(p, &PlotView::exportFailed, this, &MainWindow::showError);
  }

  // Side tabs: the run, the documents, the layout designer.
  side_ = new QTabWidget;
  provenance_ = new QLabel("No log open.");
  provenance_->setWordWrap(true), provenance_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  provenance_->setAlignment(Qt::AlignTop | Qt::AlignLeft);
  auto* scroll = new QScrollArea;
  scroll->setWidget(provenance_), scroll->setWidgetResizable(true);
  side_->addTab(scroll, "Run");

  auto* proxy = new QSortFilterProxyModel(this);
  proxy->setSourceModel(&documents_), proxy->setSortRole(Qt::UserRole);
  doc_table_ = new QTableView;
  doc_table_->setModel(proxy), doc_table_->setSortingEnabled(true);
  doc_table_->horizontalHeader()->setSortIndicator(-1, Qt::AscendingOrder);  // the log's order until a header is clicked
  proxy->sort(-1);
  doc_table_->setSelectionBehavior(QAbstractItemView::SelectRows), doc_table_->setSelectionMode(QAbstractItemView::SingleSelection);
  doc_table_->setTextElideMode(Qt::ElideLeft), doc_table_->setWordWrap(false);  // ids are paths: keep their ends
  doc_table_->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
  doc_table_->horizontalHeader()->setSectionResizeMode(DocumentModel::Id, QHeaderView::Stretch);
  doc_table_->verticalHeader()->hide();
  connect(doc_table_->selectionModel(), &QItemSelectionModel::currentRowChanged, this,
          [this, proxy](const QModelIndex& cur) { if (cur.isValid()) selectDocument(proxy->mapToSource(cur).row()); });
  side_->addTab(doc_table_, "Documents");

  auto* designer = new QWidget;
  auto* form = new QFormLayout(designer);
  budget_ = new QSpinBox;
  budget_text_ = new QLineEdit;
  budget_text_->setPlaceholderText("or: 25%, 0.3, kv:0.35, density (Enter)");
  reference_box_ = new QComboBox;
  edit_heads_ = new QCheckBox("click heads on the heatmap to toggle them");
  layout_readout_ = new QLabel;
  layout_readout_->setWordWrap(true);
  auto* export_button = new QPushButton("Export layout…");
  evals_ = new QTableWidget(0, 6);
  evals_->setHorizontalHeaderLabels({"file", "layout", "global", "KV ratio", "ΔNLL vs full", "ΔNLL vs SP-KV"});
  evals_->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
  evals_->verticalHeader()->hide(), evals_->setEditTriggers(QAbstractItemView::NoEditTriggers);
  form->addRow("global heads", budget_);
  form->addRow("budget", budget_text_);
  form->addRow("compare with", reference_box_);
  form->addRow(edit_heads_);
  form->addRow(layout_readout_);
  form->addRow(export_button);
  form->addRow(new QLabel("Evaluations next to the log (spkv layout eval --json):"));
  form->addRow(evals_);
  side_->addTab(designer, "Layout");

  // The heatmap with its controls.
  auto* heat_panel = new QWidget;
  auto* hv = new QVBoxLayout(heat_panel);
  auto* row1 = new QHBoxLayout;
  colormap_ = new QComboBox;
  colormap_->addItems(ColorMap::names());
  scope_ = new QComboBox;
  scope_->addItems({"corpus", "selected document"});
  row1->addWidget(new QLabel("colour map")), row1->addWidget(colormap_);
  row1->addWidget(new QLabel("aggregate")), row1->addWidget(scope_), row1->addStretch();
  auto* row2 = new QHBoxLayout;
  tau_slider_ = new QSlider(Qt::Horizontal);
  tau_slider_->setRange(0, 1000), tau_slider_->setEnabled(false);
  tau_slider_->setToolTip("Re-threshold the logged u: z = u ≥ tau (enabled once the u histograms are read)");
  tau_logged_ = new QCheckBox("logged decisions");
  tau_logged_->setChecked(true);
  readout_ = new QLabel;
  readout_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  row2->addWidget(new QLabel("tau")), row2->addWidget(tau_slider_, 1), row2->addWidget(tau_logged_);
  hv->addLayout(row1), hv->addLayout(row2), hv->addWidget(readout_), hv->addWidget(heatmap_, 1);

  auto* top = new QSplitter(Qt::Horizontal);
  top->addWidget(side_), top->addWidget(heat_panel);
  top->setStretchFactor(0, 2), top->setStretchFactor(1, 3);

  // Bottom tabs: tokens, plots.
  bottom_ = new QTabWidget;
  auto* token_tab = new QWidget;
  auto* tv = new QVBoxLayout(token_tab);
  auto* trow = new QHBoxLayout;
  rows_ = new QComboBox;
  rows_->addItems({"a strip per head", "a strip per layer"});
  search_ = new QLineEdit;
  search_->setPlaceholderText("find text (Enter)");
  auto* prev = new QToolButton, *next = new QToolButton;
  prev->setText("◀"), next->setText("▶");
  search_label_ = new QLabel;
  trow->addWidget(rows_), trow->addWidget(search_, 1), trow->addWidget(prev), trow->addWidget(next), trow->addWidget(search_label_);
  trow->addWidget(new QLabel("wheel/±: zoom · drag/←→: pan · Home: whole document · click: token detail"));
  auto* tsplit = new QSplitter(Qt::Horizontal);
  auto* detail_panel = new QWidget;
  auto* dv = new QVBoxLayout(detail_panel);
  token_label_ = new QLabel("Click a token.");
  token_label_->setWordWrap(true);
  detail_table_ = new QTableView;
  detail_table_->setModel(&detail_);
  detail_table_->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
  dv->addWidget(token_label_), dv->addWidget(detail_table_, 1);
  tsplit->addWidget(tokens_), tsplit->addWidget(detail_panel);
  detail_panel->setMinimumWidth(300);
  tsplit->setStretchFactor(0, 3), tsplit->setStretchFactor(1, 1);
  tv->addLayout(trow), tv->addWidget(tsplit, 1);
  bottom_->addTab(token_tab, "Tokens");
  auto* plot_tab = new QWidget;
  auto* pv = new QHBoxLayout(plot_tab);
  for (auto* p : plots_) pv->addWidget(p);
  bottom_->addTab(plot_tab, "Plots");

  auto* split = new QSplitter(Qt::Vertical);
  split->addWidget(top), split->addWidget(bottom_);
  split->setStretchFactor(0, 1), split->setStretchFactor(1, 1);
  setCentralWidget(split);

  job_label_ = new QLabel, progress_ = new QProgressBar;
  progress_->setRange(0, 1000), progress_->setMaximumWidth(200);
  auto* cancel = new QToolButton;
  cancel->setText("cancel");
  statusBar()->addPermanentWidget(job_label_), statusBar()->addPermanentWidget(progress_), statusBar()->addPermanentWidget(cancel);
  progress_->hide(), job_label_->hide(), cancel->hide();
  connect(cancel, &QToolButton::clicked, &jobs_, &JobRunner::cancelAll);
  connect(&jobs_, &JobRunner::progress, this, [this](const QString& name, double f) {
    job_label_->setText(name + "…");
    progress_->setValue(int(std::lround(1000 * f)));
  });
  connect(&jobs_, &JobRunner::busyChanged, this, [this, cancel](bool busy) {
    progress_->setVisible(busy), cancel->setVisible(busy);
    job_label_->setVisible(busy);
    if (busy) progress_->setValue(0), job_label_->setText("working…");
  });

  tau_timer_ = new QTimer(this);
  tau_timer_->setSingleShot(true), tau_timer_->setInterval(150);
  connect(tau_timer_, &QTimer::timeout, this, &MainWindow::applyTau);

  connect(heatmap_, &HeatmapView::headClicked, this, &MainWindow::selectHead);
  connect(heatmap_, &HeatmapView::headToggled, this, &MainWindow::toggleHead);
  connect(colormap_, &QComboBox::currentTextChanged, heatmap_, &HeatmapView::setColorMap);
  connect(scope_, &QComboBox::currentIndexChanged, this, [this](int i) { setScope(i == 1); });
  connect(tau_slider_, &QSlider::valueChanged, this, [this](int v) {
    tau_ = v / 1000.0;
    tau_logged_->blockSignals(true), tau_logged_->setChecked(false), tau_logged_->blockSignals(false);
    refreshHeatmap();  // the corpus heatmap and readouts follow at once (u histograms)
    tau_timer_->start();  // documents, pyramid and plots once the slider settles
  });
  connect(tau_logged_, &QCheckBox::toggled, this, [this](bool on) { setTau(on ? std::nullopt : std::optional<double>(tau_slider_->value() / 1000.0)); });
  connect(budget_, &QSpinBox::valueChanged, this, &MainWindow::setBudget);
  connect(budget_text_, &QLineEdit::returnPressed, this, [this] {
    try {
      if (stats_) budget_->setValue(int(analysis::budget_heads(analysis::parse_budget(budget_text_->text().toStdString()), report())));
    } catch (const std::exception& e) {
      showError(e.what());
    }
  });
  connect(reference_box_, &QComboBox::currentTextChanged, this, [this](const QString& s) { setReference(s == "none" ? QString() : s); });
  connect(edit_heads_, &QCheckBox::toggled, heatmap_, &HeatmapView::setEditMode);
  connect(export_button, &QPushButton::clicked, this, [this] { exportInteractively("Export the layout into", &MainWindow::exportLayout); });
  connect(evals_, &QTableWidget::cellClicked, this, [this](int row, int) {
    const QString name = evals_->item(row, 1)->data(Qt::UserRole).toString();
    if (!name.isEmpty()) reference_box_->setCurrentText(name);
  });
  connect(rows_, &QComboBox::currentIndexChanged, this, [this](int i) {
    if (corpus_) tokens_->setRows(corpus_->info.n_layers, corpus_->info.n_kv_heads, i == 1);
  });
  connect(search_, &QLineEdit::returnPressed, this, [this] { search(search_->text()); });
  connect(prev, &QToolButton::clicked, this, [this] { searchStep(-1); });
  connect(next, &QToolButton::clicked, this, [this] { searchStep(1); });
  connect(tokens_, &TokenView::tokenClicked, this, [this](int64_t t) {
    if (!doc_ || !corpus_) return;
    detail_.setToken(doc_.get(), t, corpus_->info.n_layers, corpus_->info.n_kv_heads, rule());
    int kept = 0;
    for (int64_t i = 0; i < doc_->LH; ++i) kept += doc_->kept(t, i, rule());
    const std::string& s = doc_->text[size_t(t)];
    token_label_->setText(QStringLiteral("token %1 of document %2: “%3”\nkept by %4 of %5 heads%6").arg(t).arg(doc_->index)
                              .arg(QString::fromUtf8(s.data(), int(s.size())).toHtmlEscaped()).arg(kept).arg(doc_->LH)
                              .arg(doc_->eligible(t) ? "" : " (not eligible: always in the window or pinned)"));
  });
}

void MainWindow::buildMenus() {
  auto* file = menuBar()->addMenu("&File");
  file->addAction("&Open…", QKeySequence::Open, this, [this] {
    const QString path = QFileDialog::getOpenFileName(this, "Open gate log", {}, "HDF5 gate logs (*.h5);;All files (*)");
    if (!path.isEmpty()) openLog(path);
  });
  recent_menu_ = file->addMenu("Open &recent");
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
  jobs_.start<Opened>(
      "open", [p](Cancel&, const Progress&) {
        auto c = std::make_shared<Corpus>(open_corpus(p));
        return Opened{c, std::make_shared<const CorpusStats>(corpus_stats(*c, c->kept))};
      },
      [this, path](Opened& o) {
        onCorpus(o.corpus, o.stats);
        addRecent(path);
        emit logOpened(path);
      });
}

void MainWindow::showError(const QString& message) {
  last_error_ = message;
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
  recent_menu_->clear();
  const QStringList list = QSettings().value("recentFiles").toStringList();
  for (const QString& p : list) recent_menu_->addAction(p, this, [this, p] { openLog(p); });
  recent_menu_->setEnabled(!list.isEmpty());
}

void MainWindow::dragEnterEvent(QDragEnterEvent* e) {
  if (e->mimeData()->hasUrls() && e->mimeData()->urls().first().isLocalFile()) e->acceptProposedAction();
}

void MainWindow::dropEvent(QDropEvent* e) { openLog(e->mimeData()->urls().first().toLocalFile()); }

void MainWindow::onCorpus(std::shared_ptr<Corpus> c, std::shared_ptr<const CorpusStats> stats) {
  jobs_.cancelAll();  // the previous log's jobs (a log that fails to open leaves them running)
  corpus_ = c, doc_.reset(), tau_.reset(), hits_.clear(), hit_ = -1, reference_.clear();
  stats_ = std::move(stats);
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
  provenance_->setText(
      "<table cellspacing=4>" + row("file", str(in.path)) + row("schema", QString::number(in.schema_version) + (in.complete ? "" : " (incomplete run)")) +
      row("created", str(in.created)) + row("model", str(in.model_path)) + row("checkpoint", str(in.checkpoint_sha256.substr(0, 16)) + "…") +
      row("spkv commit", str(in.git_commit)) + row("tokenizer", str(in.tokenizer)) + row("gating", str(in.gating_mode)) +
      row("tau", QString::number(in.tau)) + row("window W", QString::number(in.window)) + row("keep_first", QString::number(in.keep_first)) +
      row("shape", QStringLiteral("%1 layers × %2 KV heads, head dim %3").arg(in.n_layers).arg(in.n_kv_heads).arg(c->head_dim)) +
      row("documents", QString::number(in.n_documents)) + row("tokens", QString::number(in.n_tokens)) +
      row("corpus", inputs) + row("splitting", str(in.split_policy)) + "</table>");
  tau_slider_->blockSignals(true), tau_logged_->blockSignals(true);
  tau_slider_->setValue(int(std::lround(in.tau * 1000))), tau_logged_->setChecked(true);
  tau_slider_->setEnabled(false), tau_logged_->setEnabled(false);
  tau_slider_->blockSignals(false), tau_logged_->blockSignals(false);
  tokens_->setDocument(nullptr, nullptr);
  tokens_->setRows(in.n_layers, in.n_kv_heads, rows_->currentIndex() == 1);
  detail_.setToken(nullptr, -1, 0, 0, {});
  documents_.setCorpus(c.get(), stats_.get());
  budget_->blockSignals(true);
  budget_->setRange(1, int(c->LH()));  // derive_layouts needs 1 .. L * Hkv global heads
  int density_heads = 1;                 // a log without eligible keys (e.g. no document yet) has no density budget
  try {
    density_heads = std::max(1, int(analysis::budget_heads(analysis::parse_budget("density"), report())));
  } catch (const ConfigError&) {
  }
  budget_->setValue(density_heads);
  budget_->blockSignals(false);
  readEvaluations();
  refreshLayouts();
  refreshHeatmap();
  selectHead(std::min<int>(sel_layer_, int(in.n_layers) - 1), std::min<int>(sel_head_, int(in.n_kv_heads) - 1));
  if (c->D() > 0) selectDocument(0);
  jobs_.start<std::vector<uint32_t>>(
      "u histograms", [c](Cancel& k, const Progress& p) { return scan_histograms(*c, k, p); },
      [this, c](std::vector<uint32_t>& h) {
        if (c != corpus_) return;
        c->hist = std::move(h);
        tau_slider_->setEnabled(true), tau_logged_->setEnabled(true);
      });
}

void MainWindow::readEvaluations() {
  evaluated_.clear();
  evals_->setRowCount(0);
  const QFileInfo log(QString::fromStdString(corpus_->info.path));
  const int64_t LH = corpus_->LH();
  for (const QFileInfo& f : log.dir().entryInfoList({"*.json"}, QDir::Files, QDir::Name)) {
    QFile file(f.filePath());
    if (f.size() > (16 << 20) || !file.open(QIODevice::ReadOnly)) continue;
    const QJsonObject o = QJsonDocument::fromJson(file.readAll()).object();
    if (!o.value("rows").isArray()) continue;  // not an `spkv layout eval --json` file
    for (const auto& v : o.value("rows").toArray()) {
      const QJsonObject r = v.toObject();
      const int row = evals_->rowCount();
      evals_->insertRow(row);
      auto cell = [&](int col, const QString& text) { evals_->setItem(row, col, new QTableWidgetItem(text)); };
      const QString name = r.value("name").toString();
      cell(0, f.fileName()), cell(1, name);
      cell(2, r.value("global_heads").isDouble() ? QString::number(r.value("global_heads").toInt()) : "–");
      cell(3, num(r.value("kv_ratio").toDouble(NAN), 3));
      cell(4, num(r.value("delta_pct_vs_full").toDouble(NAN), 2) + "%");
      cell(5, r.value("delta_pct_vs_spkv").isDouble() ? num(r.value("delta_pct_vs_spkv").toDouble(), 2) + "%" : "–");
      const QJsonArray flags = r.value("layout").toArray();
      if (flags.size() != LH) continue;  // full attention, SP-KV, or another model's shape
      analysis::Layout l;
      l.name = "eval: " + name.toStdString(), l.n_layers = corpus_->info.n_layers, l.n_kv_heads = corpus_->info.n_kv_heads;
      for (const auto& x : flags) l.global.push_back(uint8_t(x.toInt() != 0));
      evals_->item(row, 1)->setData(Qt::UserRole, QString::fromStdString(l.name));
      evaluated_.push_back(std::move(l));
    }
  }
  evals_->setVisible(evals_->rowCount() > 0);
}

// --- selection --------------------------------------------------------------------------------------
KeptRule MainWindow::rule() const {
  KeptRule r;
  r.logged = !tau_.has_value(), r.code = tau_ ? tau_code(*tau_) : 0, r.keep_first = corpus_ ? corpus_->info.keep_first : 0;
  return r;
}

void MainWindow::selectHead(int layer, int head) {
  if (!corpus_ || layer < 0 || head < 0 || layer >= corpus_->info.n_layers || head >= corpus_->info.n_kv_heads) return;
  sel_layer_ = layer, sel_head_ = head;
  heatmap_->setSelected(layer, head);
  tokens_->setSelectedHead(layer, head);
  documents_.setHead(layer, head);
  statusBar()->showMessage(QStringLiteral("layer %1, KV head %2: density %3").arg(layer).arg(head).arg(num(density_.density(layer, head), 4)));
  refreshCorpusPlots();
}

void MainWindow::selectDocument(int d) {
  if (!corpus_ || d < 0 || d >= corpus_->D()) return;
  const auto c = corpus_;
  const KeptRule r = rule();
  jobs_.cancel("pyramid");
  jobs_.start<DocBundle>(
      "document", [c, d, r](Cancel& k, const Progress& p) {
        return document_views(std::make_shared<const Document>(load_document(*c, d, k, p)), r, k);
      },
      [this, d](DocBundle& b) {
        doc_ = b.doc, doc_kept_ = b.kept, doc_entries_ = std::move(b.entries), hits_.clear(), hit_ = -1;
        search_label_->clear();
        tokens_->setDocument(b.doc, b.lod);
        detail_.setToken(nullptr, -1, 0, 0, {});
        refreshDocumentPlots();
        if (scope_->currentIndex() == 1) refreshHeatmap();
        // Keep the table's selection in step when the document was chosen from code.
        auto* proxy = static_cast<QSortFilterProxyModel*>(doc_table_->model());
        const QModelIndex i = proxy->mapFromSource(documents_.index(d, 0));
        if (doc_table_->currentIndex().row() != i.row()) {
          doc_table_->selectionModel()->blockSignals(true);
          doc_table_->setCurrentIndex(i);
          doc_table_->selectionModel()->blockSignals(false);
        }
        emit documentShown(d);
      });
}

void MainWindow::setScope(bool document) {
  scope_->blockSignals(true), scope_->setCurrentIndex(document ? 1 : 0), scope_->blockSignals(false);
  refreshHeatmap();
}

void MainWindow::setTau(std::optional<double> tau) {
  tau_ = tau;
  tau_slider_->blockSignals(true), tau_logged_->blockSignals(true);
  if (tau) tau_slider_->setValue(int(std::lround(*tau * 1000)));
  tau_logged_->setChecked(!tau);
  tau_slider_->blockSignals(false), tau_logged_->blockSignals(false);
  refreshHeatmap();
  applyTau();
}

void MainWindow::applyTau() {
  if (!corpus_) return;
  const KeptRule r = rule();
  if (doc_) {
    const auto doc = doc_;
    jobs_.start<DocBundle>(
        "pyramid", [doc, r](Cancel& k, const Progress&) { return document_views(doc, r, k); },
        [this](DocBundle& b) {
          if (b.doc != doc_) return;
          doc_kept_ = b.kept, doc_entries_ = std::move(b.entries);
          tokens_->setLod(b.lod);
          refreshDocumentPlots();
          if (scope_->currentIndex() == 1) refreshHeatmap();
        });
  }
  const auto c = corpus_;
  jobs_.start<std::shared_ptr<const CorpusStats>>(
      "documents at tau", [c, r](Cancel& k, const Progress& p) {
        return std::make_shared<const CorpusStats>(corpus_stats(*c, r.logged ? c->kept : kept_per_document(*c, r.code, k, p)));
      },
      [this, c](std::shared_ptr<const CorpusStats>& s) {
        if (c == corpus_) onStats(s);
      });
}

void MainWindow::onStats(std::shared_ptr<const CorpusStats> stats) {
  stats_ = std::move(stats);
  documents_.setCorpus(corpus_.get(), stats_.get());
  refreshCorpusPlots();
  refreshLayouts();
  refreshHeatmap();
}

std::vector<int64_t> MainWindow::corpusKept() const {
  // At a counterfactual tau the u histograms answer at once, while the slider moves; without them (a tau
  // set programmatically before they are read), the per-document counts the tau job returns.
  const KeptRule r = rule();
  if (r.logged) return corpus_->kept_total(r);
  return corpus_->hist.empty() ? stats_->kept_total : corpus_->kept_total(r);
}

void MainWindow::refreshHeatmap() {
  if (!corpus_) return;
  const int64_t L = corpus_->info.n_layers, H = corpus_->info.n_kv_heads, LH = L * H;
  if (scope_->currentIndex() == 1 && doc_) {
    std::vector<int64_t> elig(corpus_->eligible.begin() + doc_->index * LH, corpus_->eligible.begin() + (doc_->index + 1) * LH);
    density_.setCounts(L, H, doc_kept_, elig, {}, {}, "document " + QString::fromStdString(doc_->id));
  } else {
    density_.setCounts(L, H, corpusKept(), corpus_->eligible_total(), stats_->lo, stats_->hi,
                       QStringLiteral("corpus, %1 documents").arg(corpus_->D()));
  }
  readout_->setText(densityReadout());
}

QString MainWindow::densityReadout() const {
  if (!corpus_) return {};
  double kept = 0, elig = 0;
  const int64_t LH = corpus_->LH();
  double entries = 0, dense = 0;
  std::vector<int64_t> k;
  if (scope_->currentIndex() == 1 && doc_) {
    k = doc_kept_;
    for (int64_t i = 0; i < LH; ++i) elig += double(corpus_->eligible[size_t(doc_->index * LH + i)]);
    entries = analysis::spkv_entries(doc_->T, corpus_->info.window, corpus_->info.keep_first, LH, 0);
    dense = double(doc_->T * LH);
  } else {
    k = corpusKept();
    for (int64_t e : corpus_->eligible_total()) elig += double(e);
    entries = corpus_->fixed_entries(), dense = corpus_->dense_entries();
  }
  for (int64_t x : k) kept += double(x);
  entries += kept;
  QString s = QStringLiteral("tau %1 (%2) · density %3 · KV entries %4 of %5 (%6×)")
                  .arg(tau_ ? *tau_ : corpus_->info.tau, 0, 'f', 3).arg(tau_ ? "counterfactual" : "logged")
                  .arg(num(elig > 0 ? kept / elig : NAN, 4)).arg(qlonglong(entries)).arg(qlonglong(dense)).arg(num(entries / dense, 3));
  if (corpus_->head_dim > 0)
    s += QStringLiteral(" · KV %1 of %2 in 16-bit").arg(mib(entries * corpus_->kv_bytes_per_entry()), mib(dense * corpus_->kv_bytes_per_entry()));
  return s;
}

void MainWindow::refreshDocumentPlots() {
  if (!doc_ || !corpus_) return;
  Plot p;
  p.title = QStringLiteral("KV cache entries against position, document %1 (%2)").arg(doc_->index).arg(QString::fromStdString(doc_->id));
  p.x_label = "position (tokens)", p.y_label = "K/V rows over all layers and heads";
  Series dense{Series::Kind::Line, "dense", QColor(150, 150, 150), {}, {}};
  Series spkv{Series::Kind::Line, tau_ ? QStringLiteral("SP-KV at tau %1").arg(*tau_, 0, 'f', 3) : "SP-KV (logged)",
              QColor(30, 110, 200), {}, {}};
  const int64_t step = std::max<int64_t>(1, doc_->T / 2000);
  for (int64_t t = 0; t < doc_->T; t += step) {
    dense.x.push_back(double(t)), dense.y.push_back(double((t + 1) * doc_->LH));
    spkv.x.push_back(double(t)), spkv.y.push_back(doc_entries_[size_t(t)]);
  }
  p.series = {dense, spkv};
  plots_[0]->setPlot(p);
}

void MainWindow::refreshCorpusPlots() {
  if (!corpus_) return;
  Plot comp;
  comp.title = "Compression against document length";
  comp.x_label = "document length (tokens)", comp.y_label = "dense / SP-KV KV entries";
  Series pts{Series::Kind::Points, "documents", QColor(30, 110, 200), {}, {}};
  for (int d = 0; d < documents_.rowCount(); ++d) pts.x.push_back(double(corpus_->tokens(d))), pts.y.push_back(documents_.compression(d));
  const auto fit = analysis::fit_line(pts.x, pts.y);
  comp.series.push_back(pts);
  if (fit.n >= 2 && !pts.x.empty()) {
    const auto [lo, hi] = std::minmax_element(pts.x.begin(), pts.x.end());
    comp.series.push_back({Series::Kind::Line, QStringLiteral("fit: %1 + %2 per 1k tokens, R² %3").arg(fit.intercept, 0, 'f', 3)
                               .arg(1000 * fit.slope, 0, 'f', 3).arg(fit.r2, 0, 'f', 3),
                           QColor(220, 80, 30), {*lo, *hi}, {fit.intercept + fit.slope * *lo, fit.intercept + fit.slope * *hi}});
  }
  plots_[1]->setPlot(comp);

  Plot hist;
  const int64_t H = corpus_->info.n_kv_heads, LH = corpus_->LH();
  hist.title = QStringLiteral("Per-document density, layer %1").arg(sel_layer_);
  hist.x_label = "density (kept / eligible)", hist.y_label = "documents";
  constexpr int kBins = 20;
  Series bars{Series::Kind::Bars, QStringLiteral("layer %1, %2 documents").arg(sel_layer_).arg(corpus_->D()), QColor(80, 160, 90), {}, {}, 1.0 / kBins};
  std::vector<double> counts(kBins, 0);
  for (int64_t d = 0; d < corpus_->D(); ++d) {
    int64_t k = 0, e = 0;
    for (int64_t h = 0; h < H; ++h) k += stats_->kept[size_t(d * LH + sel_layer_ * H + h)], e += corpus_->eligible[size_t(d * LH + sel_layer_ * H + h)];
    if (e > 0) counts[size_t(std::min<int64_t>(kBins - 1, int64_t(kBins * double(k) / double(e))))] += 1;
  }
  for (int b = 0; b < kBins; ++b) bars.x.push_back(double(b) / kBins), bars.y.push_back(counts[size_t(b)]);
  hist.series = {bars};
  plots_[2]->setPlot(hist);
}

// --- layout designer --------------------------------------------------------------------------------
void MainWindow::setBudget(int heads) {
  budget_->blockSignals(true), budget_->setValue(heads), budget_->blockSignals(false);
  refreshLayouts();
}

void MainWindow::refreshLayouts() {
  if (!corpus_) return;
  derived_ = analysis::derive_layouts(report(), budget_->value());
  designed_ = derived_.front();  // guided
  const QString current = reference_box_->currentText();
  reference_box_->blockSignals(true);
  reference_box_->clear();
  reference_box_->addItem("none");
  for (size_t i = 1; i < derived_.size(); ++i) reference_box_->addItem(QString::fromStdString(derived_[i].name));
  for (const auto& l : evaluated_) reference_box_->addItem(QString::fromStdString(l.name));
  const int keep = reference_box_->findText(current);
  reference_box_->setCurrentIndex(std::max(0, keep));
  reference_box_->blockSignals(false);
  setReference(reference_box_->currentText() == "none" ? QString() : reference_box_->currentText());
}

void MainWindow::toggleHead(int layer, int head) {
  if (!corpus_ || designed_.global.empty()) return;
  auto& g = designed_.global[size_t(layer * corpus_->info.n_kv_heads + head)];
  g = !g;
  designed_.name = "custom";
  designed_.method = "hand-edited in spkv-studio, starting from the guided layout";
  budget_->blockSignals(true), budget_->setValue(int(designed_.n_global())), budget_->blockSignals(false);
  refreshLayoutView();
}

void MainWindow::setReference(const QString& name) {
  reference_.clear();
  for (const auto* list : {&derived_, &evaluated_})
    for (const auto& l : *list)
      if (QString::fromStdString(l.name) == name) reference_ = l.global;
  if (reference_box_->currentText() != (name.isEmpty() ? "none" : name)) {
    reference_box_->blockSignals(true), reference_box_->setCurrentText(name.isEmpty() ? "none" : name), reference_box_->blockSignals(false);
  }
  refreshLayoutView();
}

void MainWindow::refreshLayoutView() {
  designed_.coverage = analysis::layout_coverage(designed_.global, report());
  designed_.kv_ratio = analysis::layout_kv_ratio(designed_.global, report());
  density_.setGlobal(designed_.global);
  density_.setReference(reference_);
  layout_readout_->setText(layoutReadout());
}

QString MainWindow::layoutReadout() const {
  if (!corpus_) return {};
  auto line = [&](const QString& name, const std::vector<uint8_t>& g) {
    const double kv = analysis::layout_kv_ratio(g, report());
    int64_t n = 0;
    for (auto x : g) n += x;
    QString s = QStringLiteral("%1: %2 of %3 heads global · coverage %4 · KV %5× of full")
                    .arg(name).arg(n).arg(g.size()).arg(num(analysis::layout_coverage(g, report()), 3)).arg(num(kv, 3));
    if (corpus_->head_dim > 0) s += " (" + mib(kv * corpus_->dense_entries() * corpus_->kv_bytes_per_entry()) + ")";
    return s;
  };
  QString s = line(QString::fromStdString(designed_.name), designed_.global);
  if (!reference_.empty()) s += "\n" + line(reference_box_->currentText() + " (dots)", reference_);
  s += QStringLiteral("\ndynamic SP-KV: KV %1× of full").arg(num(analysis::spkv_kv_ratio(report()), 3));
  return s;
}

void MainWindow::exportLayout(const QString& dir) {
  if (!corpus_) throw InputError("export layout: no log is open");
  if (!QDir().mkpath(dir)) throw FileError(dir.toStdString(), "cannot create the folder");
  analysis::Layout l = designed_;
  l.window = corpus_->info.window, l.tau = tau_ ? *tau_ : corpus_->info.tau, l.logs = {corpus_->info.path};
  l.model_path = report().model_path, l.checkpoint_sha256 = report().checkpoint_sha256, l.model_type = report().model_type;
  l.created = QDateTime::currentDateTimeUtc().toString(Qt::ISODate).toStdString(), l.tool = "spkv-studio";
  std::vector<std::string> warnings;
  const std::string hf = analysis::hf_config_fragment(l, l.model_type, warnings);
  const QDir d(dir);
  write_atomic(d.filePath("layout.json"), analysis::layout_json(l));
  write_atomic(d.filePath("hf_config_fragment.json"), hf);
  write_atomic(d.filePath("full_attention_heads.tsv"), analysis::duo_attention_tsv(l));
  QString msg = QStringLiteral("wrote layout.json, hf_config_fragment.json, full_attention_heads.tsv to %1").arg(dir);
  for (const auto& w : warnings) msg += "; warning: " + QString::fromStdString(w);
  statusBar()->showMessage(msg, 15000);
}

void MainWindow::exportPlots(const QString& dir) {
  if (!QDir().mkpath(dir)) throw FileError(dir.toStdString(), "cannot create the folder");
  for (int i = 0; i < 3; ++i)
    for (const char* ext : {".png", ".svg"}) plots_[i]->exportTo(QDir(dir).filePath(QString(kPlotNames[i]) + ext));
  statusBar()->showMessage("wrote the plots to " + dir, 10000);
}

bool MainWindow::showTab(const QString& name) {
  for (QTabWidget* tabs : {side_, bottom_})
    for (int i = 0; i < tabs->count(); ++i)
      if (tabs->tabText(i).compare(name, Qt::CaseInsensitive) == 0) {
        tabs->setCurrentIndex(i);
        return true;
      }
  return false;
}

// --- search -----------------------------------------------------------------------------------------
void MainWindow::search(const QString& query) {
  if (!doc_) return;
  search_->setText(query);
  hits_ = find_tokens(*doc_, query.toStdString());
  hit_ = -1;
  if (hits_.empty()) {
    search_label_->setText("no match");
    return;
  }
  searchStep(1);
}

void MainWindow::searchStep(int step) {
  if (hits_.empty()) return;
  const int n = int(hits_.size());
  hit_ = hit_ < 0 ? 0 : ((hit_ + step) % n + n) % n;
  const int64_t t = hits_[size_t(hit_)];
  tokens_->setHighlight(t);
  emit tokens_->tokenClicked(t);
  search_label_->setText(QStringLiteral("%1 of %2").arg(hit_ + 1).arg(n));
}

int64_t MainWindow::searchHit() const { return hit_ >= 0 ? hits_[size_t(hit_)] : -1; }

}  // namespace spkv::gui
