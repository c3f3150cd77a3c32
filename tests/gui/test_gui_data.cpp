// spkv-studio's data layer without a window: float16 thresholds against every code, the coordinate
// mapping, the level-of-detail pyramid against brute-force means, search, and the corpus / document
// numbers against counts from the known log's rules and against the analysis reader's float u.
#include <gtest/gtest.h>

#include <cmath>

#include "core/gatelog/reader.h"
#include "gui/models/GateData.h"
#include "gui/models/Plot.h"
#include "gui/models/Strips.h"
#include "gui/models/TokenAxis.h"
#include "tests/gui/gate_log_fixture.h"
#include "tests/test_util.h"

namespace spkv::gui {
namespace {
using test::KnownLog;
Progress none = [](double) {};

TEST(GateData, TauCodeThresholdsLikeTheFloatComparisonForEveryCode) {
  for (double tau : {0.0, 1e-7, 0.05, 0.1, 0.3333, 0.5, 0.71, 0.999, 1.0, 1.5}) {
    const uint16_t c = tauCode(tau);
    for (int h = 0; h <= kHalfOne; ++h)
      ASSERT_EQ(h >= c, double(halfToFloat(uint16_t(h))) >= tau) << "tau " << tau << " code " << h;
  }
  EXPECT_EQ(halfToFloat(0x3C00), 1.0f);
  EXPECT_EQ(halfToFloat(0x3800), 0.5f);
  EXPECT_EQ(halfToFloat(0x0001), std::ldexp(1.0f, -24));  // the smallest subnormal
}

TEST(TokenAxis, MapsZoomsAboutTheAnchorAndClamps) {
  TokenAxis a;
  a.reset(100000, 1000);
  EXPECT_DOUBLE_EQ(a.tokensPerPixel(), 100);
  EXPECT_EQ(a.visible(), std::make_pair(int64_t(0), int64_t(100000)));
  EXPECT_EQ(a.tokenIndexAt(250.5), 25050);
  const double anchor = a.tokenAt(300);
  a.zoom(8, 300);  // the token under the mouse stays under it
  EXPECT_NEAR(a.tokenAt(300), anchor, 1e-9);
  EXPECT_DOUBLE_EQ(a.tokensPerPixel(), 12.5);
  EXPECT_NEAR(a.xOf(a.tokenAt(123.25)), 123.25, 1e-9);
  a.pan(-1e9);  // past the end: the last token ends at the right edge
  EXPECT_NEAR(a.tokenAt(1000), 100000, 1e-6);
  a.pan(1e9);
  EXPECT_DOUBLE_EQ(a.first(), 0);
  a.zoom(1e9, 0);  // at most kMaxPixelsPerToken
  EXPECT_DOUBLE_EQ(a.tokensPerPixel(), 1 / TokenAxis::kMaxPixelsPerToken);
  a.zoom(1e-9, 0);  // at least the whole document
  EXPECT_DOUBLE_EQ(a.tokensPerPixel(), 100);
  a.centerOn(50000);
  EXPECT_EQ(a.tokenIndexAt(1500), -1);  // right of the document's end is no token
  a.reset(10, 1000);                      // a short document: 64 px per token at most
  EXPECT_DOUBLE_EQ(a.tokensPerPixel(), 1 / 64.0);
  EXPECT_EQ(a.tokenIndexAt(700), -1);
  EXPECT_EQ(a.tokenIndexAt(639), 9);
}

TEST(Plot, NiceTicks) {
  auto expect = [](const std::vector<double>& got, const std::vector<double>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-9 * std::max(1.0, want[i]));
  };
  expect(niceTicks(0, 1, 5), {0, 0.2, 0.4, 0.6, 0.8, 1.0});
  expect(niceTicks(3, 97, 5), {20, 40, 60, 80});
  expect(niceTicks(0, 120000, 6), {0, 20000, 40000, 60000, 80000, 100000, 120000});
}

class KnownLogData : public ::testing::Test {
 protected:
  test::TempDir tmp;
  std::string path = test::write_known_log(tmp / "known.h5");
};

TEST_F(KnownLogData, CorpusCountsHistogramsAndCounterfactualTauMatchTheRules) {
  Cancel cancel{false};
  Corpus c = openCorpus(path);
  ASSERT_EQ(c.D(), 3);
  EXPECT_EQ(c.head_dim, 16);  // dim 64 / 4 heads
  c.hist = scanHistograms(c, cancel, none);
  const auto elig = c.eligible_total;
  // Every head of every document ends holding its W window tokens and the keep_first token.
  EXPECT_EQ(c.fixed_entries, double(KnownLog::LH * 3 * (KnownLog::W + KnownLog::keep_first)));
  const auto logged = c.keptTotal(KeptRule{});
  KeptRule at71{false, tauCode(0.71), KnownLog::keep_first};
  const auto cf = c.keptTotal(at71);
  auto keep71 = [](int64_t t, int64_t i) { return t % 12 < i && t % 12 >= 6; };
  for (int64_t i = 0; i < KnownLog::LH; ++i) {
    EXPECT_NEAR(double(logged[i]) / double(elig[i]), KnownLog::density(i), 1e-12) << i;
    EXPECT_NEAR(double(cf[i]) / double(elig[i]), KnownLog::density(i, keep71), 1e-12) << i;
  }
  // The per-document rescan agrees with the histograms, and at tau 0.5 with the logged counts.
  const auto per_doc = keptPerDocument(c, at71.code, cancel, none);
  for (int64_t i = 0; i < KnownLog::LH; ++i) {
    int64_t s = 0;
    for (int64_t d = 0; d < c.D(); ++d) s += per_doc[size_t(d * KnownLog::LH + i)];
    EXPECT_EQ(s, cf[i]);
  }
  EXPECT_EQ(keptPerDocument(c, tauCode(0.5), cancel, none), c.kept);
  // Histograms count exactly the eligible u values the reader returns as floats.
  GateLogReader r(path);
  const auto u = r.u(0, r.info().n_tokens);
  const double exact = test::from_half(test::to_half(KnownLog::u(18, 7)));  // a tau equal to logged u values
  for (double tau : {0.2, 0.35, 0.62, 0.8, exact}) {
    std::vector<int64_t> want(KnownLog::LH, 0);
    for (int64_t d = 0; d < c.D(); ++d)
      for (int64_t t = 0; t < c.tokens(d); ++t)
        if (KnownLog::eligible(t, c.tokens(d)))
          for (int64_t i = 0; i < KnownLog::LH; ++i) want[i] += u[size_t((c.offsets[d] + t) * KnownLog::LH + i)] >= tau;
    EXPECT_EQ(c.keptTotal(KeptRule{false, tauCode(tau), 1}), want) << tau;
  }
  cancel = true;
  EXPECT_THROW(scanHistograms(c, cancel, none), Cancelled);
}

TEST_F(KnownLogData, DocumentRowsEntriesAndSearch) {
  Cancel cancel{false};
  const Corpus c = openCorpus(path);
  const Document doc = loadDocument(c, 2, cancel, none);
  ASSERT_EQ(doc.T, 200);
  EXPECT_EQ(doc.id, "known#2");
  for (int64_t t : {0, 5, 17, 199})
    for (int64_t i = 0; i < KnownLog::LH; ++i) {
      EXPECT_EQ(doc.kept(t, i, KeptRule{}), KnownLog::kept_logged(t, i));
      EXPECT_EQ(halfToFloat(doc.u[size_t(t * KnownLog::LH + i)]), test::from_half(test::to_half(KnownLog::u(t, i))));
    }
  const KeptRule at_u{false, tauCode(test::from_half(test::to_half(KnownLog::u(18, 7)))), 1};  // u >= tau keeps equality
  EXPECT_TRUE(doc.kept(18, 7, at_u));
  EXPECT_FALSE(doc.kept(17, 7, at_u));
  // Cache rows after each token, recomputed from the decisions, equal what the run logged.
  const auto entries = doc.entriesByPosition(KeptRule{});
  for (int64_t t = 0; t < doc.T; ++t) ASSERT_EQ(entries[size_t(t)], double(doc.cache_entries[size_t(t)])) << t;
  EXPECT_EQ(doc.keptEligible(KeptRule{}), std::vector<int64_t>(c.kept.begin() + 2 * 12, c.kept.begin() + 3 * 12));
  // "cat sat" starts in token 2 (" cat") of every 4-token cycle; ".\nthe" spans two tokens.
  const auto hits = findTokens(doc, "cat sat");
  ASSERT_EQ(hits.size(), 50u);
  EXPECT_EQ(hits[0], 2);
  EXPECT_EQ(hits[1], 6);
  EXPECT_EQ(findTokens(doc, ".\nthe").front(), 4);
  EXPECT_TRUE(findTokens(doc, "dog").empty());
}

TEST_F(KnownLogData, LevelOfDetailMeansEqualBruteForceOnBlockBoundaries) {
  Cancel cancel{false};
  const Corpus c = openCorpus(path);
  const Document doc = loadDocument(c, 2, cancel, none);
  const KeptRule rule{false, tauCode(0.71), 1};
  const Lod lod = buildLod(doc, rule, cancel);
  ASSERT_EQ(lod.levels.front().block, 4);
  EXPECT_EQ(lod.levels.back().n, 1);
  auto brute = [&](int64_t t0, int64_t t1, int64_t i, double& u, double& k) {
    u = k = 0;
    for (int64_t t = t0; t < t1; ++t) u += halfToFloat(doc.u[size_t(t * doc.LH + i)]), k += doc.kept(t, i, rule);
    u /= double(t1 - t0), k /= double(t1 - t0);
  };
  for (auto [t0, t1] : {std::pair<int64_t, int64_t>{0, 3}, {5, 7}, {0, 8}, {16, 48}, {64, 192}, {0, 200}, {128, 200}})
    for (int64_t i : {0, 5, 11}) {
      double u, k, bu, bk;
      lodCell(doc, lod, t0, t1, i, u, k);
      brute(t0, t1, i, bu, bk);
      EXPECT_NEAR(u, bu, 0.5 / 255 + 1e-9) << t0 << ".." << t1 << " head " << i;  // 8-bit levels
      EXPECT_NEAR(k, bk, 0.5 / 255 + 1e-9) << t0 << ".." << t1 << " head " << i;
    }
  // Rendering: each pixel column of a zoomed-in view shows its token's colour; kept and dropped differ.
  TokenAxis axis;
  axis.reset(doc.T, 400);
  axis.zoom(axis.tokensPerPixel() * 10, 0);  // 10 px per token
  const StripRows rows = stripRows(KnownLog::L, KnownLog::H, false);
  const QImage img = renderStrips(doc, lod, axis, rows, 400);
  for (int64_t t : {6, 7, 13, 30})
    for (int64_t i : {3, 7, 11}) {
      const QRgb want = stripColor(halfToFloat(doc.u[size_t(t * doc.LH + i)]), doc.kept(t, i, rule));
      EXPECT_EQ(img.pixel(int(axis.xOf(t + 0.5)), int(i)), want) << t << " " << i;
    }
  // A strip per layer shows its heads' mean u and kept fraction.
  const QImage layers = renderStrips(doc, lod, axis, stripRows(KnownLog::L, KnownLog::H, true), 400);
  ASSERT_EQ(layers.height(), 3);
  for (int64_t t : {7, 30})
    for (int l = 0; l < 3; ++l) {
      double u = 0, k = 0;
      for (int64_t h = 0; h < 4; ++h) u += halfToFloat(doc.u[size_t(t * doc.LH + l * 4 + h)]) / 4, k += doc.kept(t, l * 4 + h, rule) / 4.0;
      const QRgb got = layers.pixel(int(axis.xOf(t + 0.5)), l), want = stripColor(u, k);
      EXPECT_NEAR(qRed(got), qRed(want), 1);  // the mean is summed in another order
      EXPECT_NEAR(qBlue(got), qBlue(want), 1);
    }
  EXPECT_GT(qBlue(stripColor(0.7, 1)), qRed(stripColor(0.7, 1)));
  EXPECT_GT(qRed(stripColor(0.7, 0)), qBlue(stripColor(0.7, 0)));
}

TEST(GateData, NotAGateLogNamesTheFile) {
  test::TempDir tmp;
  test::write_file(tmp / "x.h5", "not hdf5 at all");
  try {
    openCorpus(tmp / "x.h5");
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(tmp / "x.h5"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("not an HDF5 file"), std::string::npos);
  }
}

}  // namespace
}  // namespace spkv::gui

namespace spkv::gui {
namespace {
// The house rule that keeps Qt's `slots` macro and torch apart: no torch, ATen or c10 include in gui/.
TEST(GuiSources, IncludeNoTorch) {
  namespace fs = std::filesystem;
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(fs::path(SPKV_SOURCE_DIR) / "gui")) {
    if (!e.is_regular_file()) continue;
    ++files;
    const std::string text = test::read_file(e.path().string());
    for (const char* bad : {"<torch/", "<ATen/", "<c10/", "\"torch/"}) EXPECT_EQ(text.find(bad), std::string::npos) << e.path() << " includes " << bad;
  }
  EXPECT_GT(files, 20);
}
}  // namespace
}  // namespace spkv::gui
