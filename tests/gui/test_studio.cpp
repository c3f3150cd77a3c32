// The real spkv-studio window, offscreen: open the known log, check the heatmap's pixels against the colour
// map at the known densities, select a head, zoom the token view and check kept and dropped tokens render in
// their colours, move tau, search, click a token, design and export a layout (read back by the analysis
// library), export the plots, show evaluations found next to the log, refuse bad files with a message, and
// run the executable's --screenshot mode. Screenshots go to build/tests/screenshots (or $SPKV_SCREENSHOTS).
#include <gtest/gtest.h>

#include <QApplication>
#include <QDir>
#include <QDropEvent>
#include <QFileInfo>
#include <QMimeData>
#include <QSettings>
#include <QUrl>
#include <QFile>
#include <QImage>
#include <QTest>
#include <cmath>
#include <cstdlib>
#include <hdf5.h>

#include "analysis/layout.h"
#include "core/base/errors.h"
#include "gui/app/MainWindow.h"
#include "gui/models/Strips.h"
#include "gui/widgets/HeatmapView.h"
#include "gui/widgets/PlotView.h"
#include "gui/widgets/TokenView.h"
#include "tests/gui/gate_log_fixture.h"
#include "tests/test_util.h"

namespace spkv::gui {
namespace {
using test::KnownLog;

// Density of head i in document 0 (40 tokens) under a keep rule.
template <class Keep>
double doc0_density(int64_t i, Keep keep) {
  double k = 0, e = 0;
  for (int64_t t = 0; t < 40; ++t)
    if (KnownLog::eligible(t, 40)) e += 1, k += keep(t, i);
  return k / e;
}

void save_screenshot(QWidget* w, const QString& name) {  // into the build tree, or $SPKV_SCREENSHOTS
  const char* env = std::getenv("SPKV_SCREENSHOTS");
  const QString dir = env ? env : SPKV_SCREENSHOT_DIR;
  QDir().mkpath(dir);
  ASSERT_TRUE(w->grab().save(dir + "/" + name)) << (dir + "/" + name).toStdString();
}

class Studio : public ::testing::Test {
 protected:
  void SetUp() override {
    win.resize(1400, 900);
    win.show();
    win.openLog(QString::fromStdString(path));
    ASSERT_TRUE(win.jobs().waitIdle(60000));
    ASSERT_TRUE(win.corpus()) << win.lastError().toStdString();
    ASSERT_TRUE(win.document());
  }
  test::TempDir tmp;
  std::string path = test::write_known_log(tmp / "known.h5");
  MainWindow win;
};

TEST_F(Studio, HeatmapPixelsShowTheKnownDensities) {
  HeatmapView* hm = win.heatmap();
  const QImage img = hm->grab().toImage();
  const ColorMap& map = hm->colorMap();
  for (int l = 0; l < 3; ++l)
    for (int h = 0; h < 4; ++h) {
      const QRect c = hm->cellRect(l, h);
      ASSERT_GT(c.width(), 20);
      // A point clear of the value text (centre), the "G" mark (top left) and the reference dot (bottom right).
      const QPoint p(c.left() + 3 * c.width() / 4, c.top() + c.height() / 4);
      EXPECT_EQ(img.pixel(p), map.at(KnownLog::density(l * 4 + h))) << "layer " << l << " head " << h;
    }
  // Different densities give different colours: the check above could not pass with one colour everywhere.
  EXPECT_NE(img.pixel(hm->cellRect(0, 1).center() + QPoint(0, -hm->cellRect(0, 1).height() / 4)),
            img.pixel(hm->cellRect(2, 3).center() + QPoint(0, -hm->cellRect(2, 3).height() / 4)));
  save_screenshot(&win, "known_overview.png");
}

TEST_F(Studio, SelectAHeadZoomTheTokensAndSeeKeptAndDroppedApart) {
  win.selectDocument(2);
  ASSERT_TRUE(win.jobs().waitIdle(60000));
  ASSERT_EQ(win.document()->index, 2);
  // Clicking a heatmap cell selects the head.
  const QRect cell = win.heatmap()->cellRect(1, 3);
  QTest::mouseClick(win.heatmap(), Qt::LeftButton, {}, cell.center());
  TokenView* tv = win.tokenView();
  tv->axis().zoom(tv->axis().tokensPerPixel() * 12, 0);  // 12 px per token
  tv->repaint();
  const QImage img = tv->grab().toImage();
  save_screenshot(&win, "known_tokens.png");
  int kept_seen = 0, dropped_seen = 0;
  for (int64_t t = 12; t < 24; ++t) {
    const int x = 56 + int(tv->axis().xOf(double(t) + 0.5));  // 56: the label column
    for (int64_t i : {2, 9}) {
      const int row = tv->rowOf(int(i / 4), int(i % 4));
      const int y = tv->rowsTop() + row * tv->rowHeight() + tv->rowHeight() / 2;
      const bool kept = KnownLog::kept_logged(t, i);
      const QRgb px = img.pixel(x, y);
      EXPECT_EQ(px, stripColor(test::from_half(test::to_half(KnownLog::u(t, i))), kept)) << "token " << t << " head " << i;
      (kept ? kept_seen : dropped_seen) += 1;
      if (kept) EXPECT_GT(qBlue(px), qRed(px));
      else EXPECT_GT(qRed(px), qBlue(px));
    }
  }
  EXPECT_GT(kept_seen, 0);
  EXPECT_GT(dropped_seen, 0);
  // Clicking a token shows every head's decision for it.
  const int x = 56 + int(tv->axis().xOf(19.5));
  QTest::mouseClick(tv, Qt::LeftButton, {}, QPoint(x, tv->rowsTop() + 5));
  EXPECT_EQ(win.tokenDetail()->token(), 19);
  for (int l = 0; l < 3; ++l)
    for (int h = 0; h < 4; ++h) EXPECT_EQ(win.tokenDetail()->index(l, h).data(KeptRole).toBool(), KnownLog::kept_logged(19, l * 4 + h));
}

// A policy log: with the cursor on token 60 of document 2, a key the policy had evicted by then is dimmed and
// a key still held is drawn as it is; the ruler says how many keys the query saw (counted from the fixture's
// eviction rule, not from the view).
TEST(StudioPolicyLog, TheCursorsQuerySeesWhatThePolicyHeld) {
  test::TempDir tmp;
  const std::string path = test::write_policy_log(tmp / "policy.h5");
  MainWindow win;
  win.resize(1400, 900);
  win.show();
  win.openLog(QString::fromStdString(path));
  ASSERT_TRUE(win.jobs().waitIdle(60000));
  ASSERT_TRUE(win.corpus()) << win.lastError().toStdString();
  EXPECT_EQ(win.corpus()->info.policy, "h2o");
  win.selectDocument(2);
  ASSERT_TRUE(win.jobs().waitIdle(60000));
  TokenView* tv = win.tokenView();
  tv->axis().zoom(tv->axis().tokensPerPixel() * 12, 0);  // 12 px per token: tokens 0.. visible
  const int64_t q = 60, T = 200;
  tv->setCursor(q);
  tv->axis().centerOn(40);
  tv->repaint();
  const QImage img = tv->grab().toImage();
  save_screenshot(&win, "policy_tokens.png");
  int held = 0, evicted = 0;
  const Document& doc = *win.document();
  for (int64_t s = 20; s < 52; ++s) {  // outside the query's window, so only the policy decides
    const int x = 56 + int(tv->axis().xOf(double(s) + 0.5));
    for (int64_t i : {0, 11}) {
      const int64_t e = test::known_eviction(s, i, T);
      const bool present = e == -1 || e > q;
      EXPECT_EQ(doc.present(q, s, i, KeptRule{}), present) << "key " << s << " head " << i;
      const int y = tv->rowsTop() + tv->rowOf(int(i / 4), int(i % 4)) * tv->rowHeight() + tv->rowHeight() / 2;
      const QRgb plain = stripColor(e == -1 ? 1.0 : 0.0, e == -1);
      if (present) EXPECT_EQ(img.pixel(x, y), plain) << "key " << s << " head " << i;
      else EXPECT_LT(qGray(img.pixel(x, y)), qGray(plain)) << "key " << s << " head " << i << ": evicted, dimmed";
      (present ? held : evicted) += 1;
    }
  }
  EXPECT_GT(held, 0);
  EXPECT_GT(evicted, 0);
  int64_t saw = 0;
  for (int64_t i = 0; i < KnownLog::LH; ++i)
    for (int64_t s = 0; s <= q; ++s) saw += test::known_eviction(s, i, T) == -1 || test::known_eviction(s, i, T) > q;
  EXPECT_EQ(saw, 12 * KnownLog::W + 3 * (0 + 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + 10 + 11));  // head i: s in (q - W - 3i, q]
  for (int64_t i = 0; i < KnownLog::LH; ++i)
    for (int64_t s = 0; s <= q; ++s) saw -= doc.present(q, s, i, KeptRule{});
  EXPECT_EQ(saw, 0);
}

TEST_F(Studio, CounterfactualTauUpdatesTheHeatmapReadoutsAndDocuments) {
  const QString before = win.densityReadout();
  // KV entries at the ends of the documents: each head's window and keep_first token, plus its kept keys.
  double entries = 0, dense = 0;
  for (int64_t T : KnownLog::lengths)
    for (int64_t i = 0; i < KnownLog::LH; ++i) {
      dense += double(T), entries += double(KnownLog::W + KnownLog::keep_first);
      for (int64_t t = 0; t < T; ++t) entries += KnownLog::eligible(t, T) && KnownLog::kept_logged(t, i);
    }
  EXPECT_TRUE(before.contains(QStringLiteral("KV entries %1 of %2").arg(qlonglong(entries)).arg(qlonglong(dense)))) << before.toStdString();
  win.setTau(0.71);
  ASSERT_TRUE(win.jobs().waitIdle(60000));
  auto keep71 = [](int64_t t, int64_t i) { return t % 12 < i && t % 12 >= 6; };
  for (int l = 0; l < 3; ++l)
    for (int h = 0; h < 4; ++h)
      EXPECT_NEAR(win.densityModel()->density(l, h), KnownLog::density(l * 4 + h, keep71), 1e-12);
  EXPECT_NE(win.densityReadout(), before);
  EXPECT_TRUE(win.densityReadout().contains("counterfactual"));
  // The document list and the per-document heatmap follow.
  double sum = 0;
  for (int64_t i = 0; i < 12; ++i) sum += doc0_density(i, keep71);
  EXPECT_NEAR(win.documentModel()->density(0), sum / 12, 1e-12);  // every head has the same eligible keys
  win.setScope(true);
  EXPECT_NEAR(win.densityModel()->density(2, 3), doc0_density(11, keep71), 1e-12);
  win.setTau(std::nullopt);
  ASSERT_TRUE(win.jobs().waitIdle(60000));
  EXPECT_NEAR(win.densityModel()->density(2, 3), doc0_density(11, KnownLog::kept_logged), 1e-12);
}

TEST_F(Studio, SearchJumpsThroughOccurrences) {
  win.search("cat sat");
  EXPECT_EQ(win.searchHit(), 2);
  win.searchStep(1);
  EXPECT_EQ(win.searchHit(), 6);
  win.searchStep(-2);
  EXPECT_EQ(win.searchHit(), 38);  // wraps to the last of doc 0's 10 occurrences
  EXPECT_EQ(win.tokenDetail()->token(), 38);
  EXPECT_LT(win.tokenView()->axis().tokensPerPixel(), 1.0 / 7);  // zoomed in far enough to read
}

TEST_F(Studio, DesignedLayoutExportsTheThreeFormatsThroughTheAnalysisLibrary) {
  win.setBudget(3);  // the three densest heads: 11, 10, 9
  std::vector<uint8_t> want(12, 0);
  want[9] = want[10] = want[11] = 1;
  EXPECT_EQ(win.designed().global, want);
  EXPECT_EQ(win.densityModel()->global(), want);
  win.toggleHead(0, 0);  // by hand
  want[0] = 1;
  EXPECT_EQ(win.designed().global, want);
  win.setReference("interleaved-0");
  EXPECT_TRUE(win.layoutReadout().contains("interleaved-0"));
  save_screenshot(&win, "known_layout.png");
  const std::string out = tmp / "export";
  win.exportLayout(QString::fromStdString(out));
  const analysis::Layout back = analysis::read_layout(out + "/layout.json");
  EXPECT_EQ(back.global, want);
  EXPECT_EQ(back.window, KnownLog::W);
  EXPECT_EQ(back.name, "custom");
  int64_t L = 0, H = 0;
  EXPECT_EQ(analysis::read_duo_attention_tsv(out + "/full_attention_heads.tsv", L, H), want);
  EXPECT_EQ(analysis::read_hf_layer_types(out + "/hf_config_fragment.json"), analysis::layer_flags(back));
  // The coverage shown is the share of the kept keys in the global heads. Every head has the same eligible
  // keys, so kept keys are proportional to the known densities.
  double in = 0, all = 0;
  for (int64_t i = 0; i < 12; ++i) all += KnownLog::density(i), in += want[size_t(i)] ? KnownLog::density(i) : 0;
  EXPECT_NEAR(win.designed().coverage, in / all, 1e-12);
}

TEST_F(Studio, PlotsExportAsPngAndSvg) {
  const std::string out = tmp / "plots";
  win.exportPlots(QString::fromStdString(out));
  for (const char* name : {"cache_entries", "compression", "density_histogram"}) {
    const QImage png(QString::fromStdString(out + "/" + name + ".png"));
    ASSERT_FALSE(png.isNull()) << name;
    EXPECT_EQ(png.size(), QSize(900, 560));
    const std::string svg = test::read_file(out + "/" + name + ".svg");
    EXPECT_NE(svg.find("<svg"), std::string::npos) << name;
    EXPECT_NE(svg.find("</svg>"), std::string::npos) << name;
  }
  // The compression plot holds one point per document at the known compression.
  const Plot& p = win.plot(1)->plot();
  ASSERT_GE(p.series.size(), 1u);
  EXPECT_EQ(p.series[0].x, (std::vector<double>{40, 64, 200}));
  EXPECT_THROW(win.plot(0)->exportTo(QString::fromStdString(tmp / "plot.bmp")), FileError);
}

TEST_F(Studio, EvaluationsNextToTheLogAreShownAndOverlaid) {
  test::write_file(tmp / "eval.json", R"({"rows": [
    {"name": "full attention", "layout": null, "global_heads": null, "kv_ratio": 1.0, "delta_pct_vs_full": 0.0, "delta_pct_vs_spkv": null},
    {"name": "guided", "layout": [0,0,0,0, 0,0,0,0, 0,1,1,1], "global_heads": 3, "kv_ratio": 0.4, "delta_pct_vs_full": 0.5, "delta_pct_vs_spkv": 0.1}]})");
  win.openLog(QString::fromStdString(path));  // re-open: the evaluation is read with the log
  ASSERT_TRUE(win.jobs().waitIdle(60000));
  win.setReference("eval: guided");
  std::vector<uint8_t> want(12, 0);
  want[9] = want[10] = want[11] = 1;
  for (int i = 0; i < 12; ++i) EXPECT_EQ(win.densityModel()->index(i / 4, i % 4).data(ReferenceRole).toBool(), want[size_t(i)] != 0);
}

TEST_F(Studio, DroppedFilesOpenAndOpenedFilesAreRecent) {
  EXPECT_EQ(QSettings().value("recentFiles").toStringList().value(0), QFileInfo(QString::fromStdString(path)).absoluteFilePath());
  const std::string other = test::write_known_log(tmp / "other.h5");
  QMimeData mime;
  mime.setUrls({QUrl::fromLocalFile(QString::fromStdString(other))});
  QDragEnterEvent enter(QPoint(10, 10), Qt::CopyAction, &mime, Qt::LeftButton, Qt::NoModifier);
  QApplication::sendEvent(&win, &enter);
  EXPECT_TRUE(enter.isAccepted());
  QDropEvent drop(QPointF(10, 10), Qt::CopyAction, &mime, Qt::LeftButton, Qt::NoModifier);
  QApplication::sendEvent(&win, &drop);
  ASSERT_TRUE(win.jobs().waitIdle(60000));
  EXPECT_EQ(win.corpus()->info.path, other);
  const QStringList recent = QSettings().value("recentFiles").toStringList();
  ASSERT_GE(recent.size(), 2);
  EXPECT_EQ(recent[0], QFileInfo(QString::fromStdString(other)).absoluteFilePath());
  EXPECT_EQ(recent[1], QFileInfo(QString::fromStdString(path)).absoluteFilePath());
}

TEST_F(Studio, BadFilesGetAMessageAndTheOpenLogStays) {
  test::write_file(tmp / "notes.h5", "plain text");
  win.openLog(QString::fromStdString(tmp / "notes.h5"));
  ASSERT_TRUE(win.jobs().waitIdle(60000));
  EXPECT_TRUE(win.lastError().contains(QString::fromStdString(tmp / "notes.h5")));
  EXPECT_TRUE(win.lastError().contains("not an HDF5 file"));
  EXPECT_EQ(win.corpus()->info.path, path);  // still showing the good log

  // A gate log of a newer schema.
  const std::string newer = test::write_known_log(tmp / "newer.h5");
  hid_t f = H5Fopen(newer.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t a = H5Aopen(f, "schema_version", H5P_DEFAULT);
  const int v = 99;
  H5Awrite(a, H5T_NATIVE_INT, &v);
  H5Aclose(a), H5Fclose(f);
  win.openLog(QString::fromStdString(newer));
  ASSERT_TRUE(win.jobs().waitIdle(60000));
  EXPECT_TRUE(win.lastError().contains("schema version 99 is newer")) << win.lastError().toStdString();
}

TEST(StudioEmptyLog, ALogWithoutDocumentsOpensWithoutError) {
  test::TempDir tmp;
  GateLogHeader h;
  h.n_layers = 2, h.n_kv_heads = 2, h.window = 4, h.gating_mode = "hard", h.model_config_json = "{}";
  {
    GateLogWriter w(tmp / "empty.h5", h, false, 0);
    w.close();
  }
  MainWindow win;
  win.show();
  win.openLog(QString::fromStdString(tmp / "empty.h5"));
  ASSERT_TRUE(win.jobs().waitIdle(60000));
  ASSERT_TRUE(win.corpus()) << win.lastError().toStdString();
  EXPECT_TRUE(win.lastError().isEmpty()) << win.lastError().toStdString();
  EXPECT_EQ(win.densityModel()->rowCount(), 2);
  EXPECT_TRUE(std::isnan(win.densityModel()->density(0, 0)));
  EXPECT_FALSE(win.document());
  win.grab();  // paints without data
}

TEST(StudioExecutable, ScreenshotModeOpensTheLogAndWritesTheWindow) {
  test::TempDir tmp;
  const std::string log = test::write_known_log(tmp / "known.h5");
  const std::string png = tmp / "shot.png";
  const std::string cmd = "QT_QPA_PLATFORM=offscreen " + test::quote(SPKV_STUDIO) + " " + test::quote(log) +
                          " --document 2 --head 1,2 --zoom-token 20 --budget 3 --reference random-1 --tab Layout --size 1000x700"
                          " --screenshot " + test::quote(png) + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const QImage img(QString::fromStdString(png));
  ASSERT_FALSE(img.isNull());
  EXPECT_EQ(img.size(), QSize(1000, 700));
  // A bad file exits non-zero with the file named.
  test::write_file(tmp / "bad.h5", "x");
  const std::string bad = "QT_QPA_PLATFORM=offscreen " + test::quote(SPKV_STUDIO) + " " + test::quote(tmp / "bad.h5") +
                          " --screenshot " + test::quote(tmp / "no.png") + " > " + test::quote(tmp / "err.txt") + " 2>&1";
  EXPECT_NE(std::system(bad.c_str()), 0);
  EXPECT_NE(test::read_file(tmp / "err.txt").find("bad.h5: not an HDF5 file"), std::string::npos) << test::read_file(tmp / "err.txt");
  EXPECT_FALSE(QFile::exists(QString::fromStdString(tmp / "no.png")));
}

}  // namespace
}  // namespace spkv::gui
