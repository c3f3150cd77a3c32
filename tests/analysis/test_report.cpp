// The gate-log reader and the analysis report on hand-made logs whose answers are known: heads (0,1) and
// (1,0) keep everything, (0,0) nothing, (1,1) only in the first document; u is 0.9 where kept and 0.1
// elsewhere, so the tau sweep has known steps; compression and its fit are recomputed here in float64.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>

#include "analysis/report.h"
#include "core/base/errors.h"
#include "core/gatelog/reader.h"
#include "core/gatelog/writer.h"
#include "tests/test_util.h"

namespace spkv::analysis {
namespace {

constexpr int64_t L = 2, Hkv = 2, W = 4;

uint16_t f16(float x) {  // 0.1 and 0.9 in IEEE half precision
  return x == 0.9f ? 0x3b33 : 0x2e66;
}

// Writes a log of documents with the given lengths; head (1,1) keeps in the first document only.
void write_log(const std::string& path, const std::vector<int64_t>& lengths, const std::string& prefix) {
  GateLogHeader h;
  h.n_layers = L, h.n_kv_heads = Hkv, h.window = W, h.tau = 0.5, h.gating_mode = "hard", h.checkpoint_sha256 = "x";
  h.model_config_json = "{\"num_hidden_layers\": " + std::to_string(L) + ", \"num_key_value_heads\": " + std::to_string(Hkv) + "}";
  GateLogWriter w(path, h, false, 0);
  for (size_t d = 0; d < lengths.size(); ++d) {
    const int64_t T = lengths[d];
    LoggedDocument doc;
    doc.id = prefix + std::to_string(d) + (d == 1 ? "\xc3\xa9" : "");
    doc.kept.assign(L * Hkv, 0), doc.eligible.assign(L * Hkv, std::max<int64_t>(0, T - W));
    int64_t stored = 0;
    for (int64_t t = 0; t < T; ++t) {
      doc.tokens.push_back(int32_t(3 + t % 7));
      doc.text.push_back(t == 0 ? "" : t == 3 ? "\xc3\xa9\xe2\x80\x94" : std::string(1, char('a' + t % 26)));  // "é—": bytes above 127
      doc.nll.push_back(t == 0 ? std::nanf("") : 1.0f + 0.01f * float(t));
      for (int64_t i = 0; i < L * Hkv; ++i) {
        const bool keep = i == 1 || i == 2 || (i == 3 && d == 0);
        doc.z.push_back(keep), doc.u.push_back(f16(keep ? 0.9f : 0.1f));
        if (keep && t < T - W) ++doc.kept[i];
      }
      if (t >= W) stored += 2 + (d == 0);
      doc.cache_entries.push_back(int32_t(std::min(t + 1, W) * L * Hkv + stored));
    }
    w.add(std::move(doc));
  }
  w.close();
  test::expect_valid_log(path);
}

TEST(Report, KnownHeadsGiveKnownDensitiesCompressionAndTauSweep) {
  test::TempDir tmp;
  const std::vector<int64_t> lengths{10, 20, 40, 77};
  write_log(tmp / "a.h5", lengths, "doc");
  GateLogReader log(tmp / "a.h5");
  EXPECT_EQ(log.info().n_documents, 4);
  EXPECT_EQ(log.info().n_tokens, 147);
  EXPECT_TRUE(log.info().complete);
  EXPECT_EQ(log.document_ids()[2], "doc2");
  EXPECT_EQ(log.document_ids()[1], "doc1\xc3\xa9");
  EXPECT_EQ(log.token_text(10, 14), (std::vector<std::string>{"", "b", "c", "\xc3\xa9\xe2\x80\x94"}));  // 10: a BOS
  EXPECT_FLOAT_EQ(log.u(0, 1)[1], 0.89990234f);  // float16 0.9
  EXPECT_EQ(log.z(0, 1), (std::vector<uint8_t>{0, 1, 1, 1}));

  const Report r = analyze_logs({tmp / "a.h5"});
  ASSERT_EQ(r.per_head.size(), 4u);
  EXPECT_DOUBLE_EQ(r.per_head[0].mean, 0.0);
  EXPECT_DOUBLE_EQ(r.per_head[1].mean, 1.0);
  EXPECT_DOUBLE_EQ(r.per_head[2].mean, 1.0);
  EXPECT_DOUBLE_EQ(r.per_head[1].stddev, 0.0);
  // Head (1,1) keeps the 6 eligible keys of document 0 only: 6 / (6 + 16 + 36 + 73).
  EXPECT_NEAR(r.per_head[3].mean, 6.0 / 131.0, 1e-12);
  EXPECT_GT(r.per_head[3].stddev, 0.4);
  EXPECT_NEAR(r.per_layer[0].mean, 0.5, 1e-12);
  EXPECT_NEAR(r.per_layer[1].mean, (131.0 + 6.0) / 262.0, 1e-12);
  EXPECT_NEAR(r.overall.mean, (131.0 * 2 + 6.0) / (131.0 * 4), 1e-12);
  // Compression = 4T / (4 min(T, W) + kept), recomputed here.
  std::vector<double> xs, ys;
  for (size_t d = 0; d < lengths.size(); ++d) {
    const double T = double(lengths[d]), kept = (T - W) * (d == 0 ? 3 : 2);
    xs.push_back(T), ys.push_back(4 * T / (4 * W + kept));
    EXPECT_NEAR(r.compression[d].compression, ys.back(), 1e-12) << d;
  }
  double mx = 0, my = 0;
  for (size_t i = 0; i < xs.size(); ++i) mx += xs[i] / 4, my += ys[i] / 4;
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < xs.size(); ++i)
    sxy += (xs[i] - mx) * (ys[i] - my), sxx += (xs[i] - mx) * (xs[i] - mx), syy += (ys[i] - my) * (ys[i] - my);
  EXPECT_NEAR(r.compression_fit.slope, sxy / sxx, 1e-12);
  EXPECT_NEAR(r.compression_fit.intercept, my - sxy / sxx * mx, 1e-12);
  EXPECT_NEAR(r.compression_fit.r2, sxy * sxy / (sxx * syy), 1e-12);
  // Tau sweep: below 0.1 every eligible key passes, between 0.1 and 0.9 the kept ones, above 0.9 none.
  const Report s = analyze_logs({tmp / "a.h5"}, {0.05, 0.5, 0.95});
  EXPECT_DOUBLE_EQ(s.tau_overall[0], 1.0);
  EXPECT_NEAR(s.tau_overall[1], r.overall.mean, 1e-12);
  EXPECT_DOUBLE_EQ(s.tau_overall[2], 0.0);
  EXPECT_DOUBLE_EQ(s.tau_density[1][0], 0.0);
  EXPECT_DOUBLE_EQ(s.tau_density[1][2], 1.0);
  // The report as JSON carries the same numbers.
  const auto j = nlohmann::json::parse(report_json(r));
  EXPECT_DOUBLE_EQ(j["density"]["per_head"][0][1]["density"].get<double>(), 1.0);
  EXPECT_EQ(j["compression"]["per_document"].size(), 4u);
  EXPECT_NE(report_markdown(r).find("| 0 | 0.500"), std::string::npos) << report_markdown(r);
}

TEST(Report, LogsMergeAndForeignFilesAreRefused) {
  test::TempDir tmp;
  write_log(tmp / "a.h5", {10, 20}, "a");
  write_log(tmp / "b.h5", {40}, "b");
  const Report r = analyze_logs({tmp / "a.h5", tmp / "b.h5"});
  EXPECT_EQ(r.documents, 3);
  EXPECT_EQ(r.tokens, 70);
  EXPECT_EQ(r.eligible[0], 6 + 16 + 36);
  EXPECT_EQ(r.compression[2].id, "b0");
  test::write_file(tmp / "text.h5", "not hdf5");
  try {
    GateLogReader bad(tmp / "text.h5");
    FAIL() << "a text file was accepted";
  } catch (const FileError& e) {
    EXPECT_NE(std::string(e.what()).find("not an HDF5 file"), std::string::npos) << e.what();
  }
  EXPECT_THROW(analyze_logs({}), InputError);
}

}  // namespace
}  // namespace spkv::analysis
