// The item models on the known log, each checked by QAbstractItemModelTester (Fatal) while it is filled,
// refilled and reshaped, and their values against counts from the log's rules.
#include <gtest/gtest.h>

#include <QAbstractItemModelTester>
#include <algorithm>
#include <cmath>

#include "analysis/report.h"
#include "gui/models/ItemModels.h"
#include "tests/gui/gate_log_fixture.h"
#include "tests/test_util.h"

namespace spkv::gui {
namespace {
using test::KnownLog;

TEST(ItemModels, DensityDocumentAndTokenModelsPassTheTesterAndHoldTheKnownValues) {
  test::TempDir tmp;
  const Corpus c = openCorpus(test::write_known_log(tmp / "known.h5"));
  Cancel cancel{false};

  DensityModel density;
  QAbstractItemModelTester t1(&density, QAbstractItemModelTester::FailureReportingMode::Fatal);
  density.setCounts(KnownLog::L, KnownLog::H, c.keptTotal(KeptRule{}), c.eligible_total, {}, {}, "corpus");
  ASSERT_EQ(density.rowCount(), 3);
  ASSERT_EQ(density.columnCount(), 4);
  for (int l = 0; l < 3; ++l)
    for (int h = 0; h < 4; ++h) {
      const double want = KnownLog::density(l * 4 + h);
      EXPECT_NEAR(density.index(l, h).data(DensityRole).toDouble(), want, 1e-12);
      EXPECT_EQ(density.index(l, h).data().toString(), QString::number(want, 'f', 3));
      EXPECT_TRUE(density.index(l, h).data(Qt::ToolTipRole).toString().contains(QStringLiteral("layer %1, KV head %2").arg(l).arg(h)));
    }
  std::vector<uint8_t> g(12, 0);
  g[5] = 1;
  density.setGlobal(g);
  EXPECT_TRUE(density.index(1, 1).data(GlobalRole).toBool());
  EXPECT_FALSE(density.index(1, 2).data(GlobalRole).toBool());
  density.setCounts(2, 2, {1, 2, 3, 0}, {4, 4, 4, 0});  // reshaped: flags of the old shape are dropped
  EXPECT_EQ(density.rowCount(), 2);
  EXPECT_FALSE(density.index(1, 1).data(GlobalRole).toBool());
  EXPECT_TRUE(std::isnan(density.index(1, 1).data(DensityRole).toDouble()));  // nothing eligible
  EXPECT_EQ(density.headerData(1, Qt::Vertical).toString(), "layer 1");

  DocumentModel docs;
  QAbstractItemModelTester t2(&docs, QAbstractItemModelTester::FailureReportingMode::Fatal);
  const CorpusStats stats = corpusStats(c, c.kept);
  // With 3 documents the 5th and 95th percentiles are the smallest and largest per-document density.
  for (int64_t i : {3, 10}) {
    std::vector<double> per_doc;
    for (int64_t T : KnownLog::lengths) {
      double k = 0, e = 0;
      for (int64_t t = 0; t < T; ++t)
        if (KnownLog::eligible(t, T)) e += 1, k += KnownLog::kept_logged(t, i);
      per_doc.push_back(k / e);
    }
    EXPECT_NEAR(stats.lo[size_t(i)], *std::min_element(per_doc.begin(), per_doc.end()), 1e-12);
    EXPECT_NEAR(stats.hi[size_t(i)], *std::max_element(per_doc.begin(), per_doc.end()), 1e-12);
    EXPECT_LT(stats.lo[size_t(i)], stats.hi[size_t(i)]);
  }
  docs.setCorpus(&c, &stats);
  ASSERT_EQ(docs.rowCount(), 3);
  for (int d = 0; d < 3; ++d) {
    const int64_t T = KnownLog::lengths[size_t(d)];
    double k = 0, e = 0, entries = 0;
    for (int64_t i = 0; i < 12; ++i) {
      for (int64_t t = 0; t < T; ++t) {
        if (KnownLog::eligible(t, T)) e += 1, k += KnownLog::kept_logged(t, i);
        entries += t >= T - KnownLog::W || KnownLog::kept_logged(t, i);  // in the window at the end, or kept
      }
    }
    EXPECT_EQ(docs.index(d, DocumentModel::Id).data().toString(), QStringLiteral("known#%1").arg(d));
    EXPECT_EQ(docs.index(d, DocumentModel::Tokens).data().toLongLong(), T);
    EXPECT_NEAR(docs.density(d), k / e, 1e-12);
    EXPECT_NEAR(docs.compression(d), double(T * 12) / entries, 1e-12);
  }
  docs.setHead(2, 1);  // head 9 keeps t mod 12 < 9
  EXPECT_EQ(docs.headerData(DocumentModel::HeadDensity, Qt::Horizontal).toString(), "L2.H1");
  for (int d = 0; d < 3; ++d) {
    const int64_t T = KnownLog::lengths[size_t(d)];
    double k = 0, e = 0;
    for (int64_t t = 0; t < T; ++t)
      if (KnownLog::eligible(t, T)) e += 1, k += KnownLog::kept_logged(t, 9);
    EXPECT_NEAR(docs.headDensity(d), k / e, 1e-12);
  }
  docs.setCorpus(nullptr, nullptr);
  EXPECT_EQ(docs.rowCount(), 0);

  const Document doc = loadDocument(c, 1, cancel, [](double) {});
  TokenDetailModel detail;
  QAbstractItemModelTester t3(&detail, QAbstractItemModelTester::FailureReportingMode::Fatal);
  detail.setToken(&doc, 19, 3, 4, KeptRule{});  // m = 7: heads 8..11 keep it
  for (int l = 0; l < 3; ++l)
    for (int h = 0; h < 4; ++h) {
      EXPECT_EQ(detail.index(l, h).data(KeptRole).toBool(), l * 4 + h > 7);
      EXPECT_NEAR(detail.index(l, h).data(DensityRole).toDouble(), KnownLog::u(19, l * 4 + h), 1e-3);
    }
  detail.setToken(&doc, 500, 3, 4, KeptRule{});  // outside the document: empty
  EXPECT_EQ(detail.rowCount(), 0);
}

TEST(ItemModels, SummaryReportFromCountsEqualsTheFullAnalysis) {
  test::TempDir tmp;
  const std::string path = test::write_known_log(tmp / "known.h5");
  const Corpus c = openCorpus(path);
  const analysis::Report fast = analysis::summary_report(c.info, c.offsets, c.ids, c.kept, c.eligible);
  const analysis::Report full = analysis::analyze_logs({path});
  EXPECT_EQ(fast.kept, full.kept);
  EXPECT_EQ(fast.eligible, full.eligible);
  EXPECT_DOUBLE_EQ(fast.overall.mean, full.overall.mean);
  EXPECT_EQ(fast.model_type, "llama");
  ASSERT_EQ(fast.compression.size(), full.compression.size());
  for (size_t d = 0; d < fast.compression.size(); ++d) {
    EXPECT_DOUBLE_EQ(fast.compression[d].spkv_entries, full.compression[d].spkv_entries);
    EXPECT_DOUBLE_EQ(fast.compression[d].compression, full.compression[d].compression);
  }
}

}  // namespace
}  // namespace spkv::gui
