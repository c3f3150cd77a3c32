#include "gui/app/MainWindow.h"

#include <QApplication>
#include <QCheckBox>
#include <QComboBox>
#include <QDir>
#include <QDragEnterEvent>
#include <QFileDialog>
#include <QFileInfo>
#include <QHeaderView>
#include <QJsonArray>
#include <QJsonDocument>
#include <QLabel>
#include <QLineEdit>
#include <QMenuBar>
#include <QMessageBox>
#include <QMimeData>
#include <QProgressBar>
#include <QScrollArea>
#include <QSettings>
#include <QSlider>
#include <QSortFilterProxyModel>
#include <QSplitter>
#include <QStatusBar>
#include <QTableView>
#include <QTabWidget>
#include <QTimer>
#include <QToolButton>
#include <QVBoxLayout>
#include <algorithm>
#include <cmath>

#include "core/base/errors.h"
#include "gui/models/ColorMap.h"
#include "gui/app/LayoutDesigner.h"
#include "gui/app/PlotsTab.h"
#include "gui/widgets/HeatmapView.h"
#include "gui/widgets/PlotView.h"
#include "gui/widgets/TokenView.h"

namespace spkv::gui {
namespace {
constexpr int kMaxRecent = 8;

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
  m_plotsTab = new PlotsTab;
  connect(m_plotsTab, &PlotsTab::failed, this, &MainWindow::showError);

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

  m_designer = new LayoutDesigner(m_density);
  connect(m_designer, &LayoutDesigner::failed, this, &MainWindow::showError);
  connect(m_designer, &LayoutDesigner::exportRequested, this, [this] { exportInteractively("Export the layout into", &MainWindow::exportLayout); });
  m_side->addTab(m_designer, "Layout");

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
  m_bottom->addTab(m_plotsTab, "Plots");

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
  connect(m_designer, &LayoutDesigner::editModeChanged, m_heatmap, &HeatmapView::setEditMode);
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
  m_corpus = c, m_doc.reset(), m_tau.reset(), m_hits.clear(), m_hit = -1;
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
      row("spkv commit", str(in.git_commit)) + row("tokenizer", str(in.tokenizer)) + row("gating", str(in.gating_mode) + (in.policy.empty() ? QString() : " (" + str(in.policy) + ", budget " + str(in.budget) + ")")) +
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
  m_designer->setCorpus(c.get(), &report());
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
  m_designer->setReport(&report());
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
  const double entries = kept + (doc ? spkv_cache_entries(m_doc->T, m_corpus->info.window, m_corpus->info.keep_first, LH, 0)
                                     : m_corpus->fixed_entries);
  QString s = QStringLiteral("tau %1 (%2) · density %3 · KV entries %4 of %5 (%6×)")
                  .arg(m_tau ? *m_tau : m_corpus->info.tau, 0, 'f', 3).arg(m_tau ? "counterfactual" : "logged")
                  .arg(formatNumber(elig > 0 ? kept / elig : NAN, 4)).arg(qlonglong(entries)).arg(qlonglong(dense)).arg(formatNumber(entries / dense, 3));
  if (m_corpus->head_dim > 0)
    s += QStringLiteral(" · KV %1 of %2 in 16-bit").arg(formatMib(entries * m_corpus->kvBytesPerEntry()), formatMib(dense * m_corpus->kvBytesPerEntry()));
  return s;
}

void MainWindow::refreshDocumentPlots() {
  if (m_doc && m_corpus) m_plotsTab->showDocument(*m_doc, m_docEntries, m_tau);
}

void MainWindow::refreshCorpusPlots() {
  if (m_corpus) m_plotsTab->showCorpus(*m_corpus, *m_stats, m_documents, m_selLayer);
}

PlotView* MainWindow::plot(int i) const { return m_plotsTab->plot(i); }

void MainWindow::exportPlots(const QString& dir) {
  m_plotsTab->exportTo(dir);
  statusBar()->showMessage("wrote the plots to " + dir, 10000);
}

// --- layout designer --------------------------------------------------------------------------------
void MainWindow::setBudget(int heads) { m_designer->setBudget(heads); }
void MainWindow::toggleHead(int layer, int head) { m_designer->toggleHead(layer, head); }
void MainWindow::setReference(const QString& name) { m_designer->setReference(name); }
const analysis::Layout& MainWindow::designed() const { return m_designer->designed(); }
QString MainWindow::layoutReadout() const { return m_designer->readout(); }

void MainWindow::exportLayout(const QString& dir) {
  if (!m_corpus) throw InputError("export layout: no log is open");
  statusBar()->showMessage(m_designer->exportTo(dir, m_tau ? *m_tau : m_corpus->info.tau), 15000);
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
