// Eviction baselines at matched density and calibration on a hand-made dense log with attention
// statistics whose answers are worked out by hand: one head, W = 2, documents of 12 tokens (10 eligible keys),
// the gates keep keys {2, 5, 7}, and the far mass, total mass and last-query mass single out different keys.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>

#include "analysis/report.h"
#include "core/gatelog/writer.h"
#include "tests/test_util.h"

namespace spkv::analysis {
namespace {

constexpr int64_t T = 12, W = 2;
const std::vector<float> kFar{5, 0, 1, 0, 2, 3, 0, 4, 0, 0, 0, 0};   // oracle keeps 0, 7, 5: 12 of 15
const std::vector<float> kAll{9, 8, 1, 7, 2, 1, 0, 3, 0, 0, 1, 1};   // H2O keeps 0, 1, 3: 5 of 15
const std::vector<float> kLast{0, 0, 0, 0, 5, 0, 0, 0, 6, 7, 1, 1};  // SnapKV keeps 9, 8, 4: 2 of 15
const std::vector<int> kKeep{2, 5, 7};                                // SP-KV: 1 + 3 + 4 = 8 of 15

uint16_t half(float x) {  // IEEE half of a normal positive float (truncated mantissa)
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return uint16_t((((b >> 23) & 0xff) - 127 + 15) << 10 | ((b >> 13) & 0x3ff));
}

// z is set by hand apart from u (the baselines and the calibration each need their own ranking), so this
// log breaks the schema's z = u >= tau on purpose and is the one log the tests do not `spkv check`.
std::string write_log(const test::TempDir& tmp, int docs) {
  GateLogHeader h;
  h.n_layers = 1, h.n_kv_heads = 1, h.window = W, h.tau = 0.5, h.gating_mode = "dense", h.checkpoint_sha256 = "x";
  h.last_queries = 3;
  GateLogWriter w(tmp / "dense.h5", h, false, 0);
  for (int d = 0; d < docs; ++d) {
    LoggedDocument doc;
    doc.id = "d" + std::to_string(d);
    doc.kept = {3}, doc.eligible = {T - W};
    for (int64_t t = 0; t < T; ++t) {
      const bool keep = std::find(kKeep.begin(), kKeep.end(), t) != kKeep.end();
      doc.tokens.push_back(int32_t(3 + t)), doc.text.push_back("a"), doc.nll.push_back(t ? 1.0f : std::nanf(""));
      doc.z.push_back(keep), doc.u.push_back(half(0.01f + kFar[t] / 10));  // u follows the far mass exactly
      doc.cache_entries.push_back(int32_t(t + 1));
      doc.received.push_back(kAll[t]), doc.received_last.push_back(kLast[t]), doc.received_far.push_back(kFar[t]);
    }
    w.add(std::move(doc));
  }
  w.close();
  return tmp / "dense.h5";
}

TEST(Baselines, EachPolicyKeepsTheKnownKeysAtTheGatesBudget) {
  test::TempDir tmp;
  const Report r = analyze_logs({write_log(tmp, 200)});
  ASSERT_TRUE(r.has_attention);
  const AttentionReport& a = r.attention;
  EXPECT_EQ(a.kept_keys[0], 3 * 200);
  EXPECT_EQ(a.eligible_keys[0], 10 * 200);
  auto share = [&](const char* name) {
    for (int p = 0; p < kNumPolicies; ++p)
      if (std::string(kPolicies[p]) == name) return a.kept_mass[p][0] / a.total_mass[0];
    throw std::runtime_error(name);
  };
  EXPECT_NEAR(share("spkv"), 8.0 / 15.0, 1e-12);
  EXPECT_NEAR(share("oracle"), 12.0 / 15.0, 1e-12);
  EXPECT_NEAR(share("h2o"), 5.0 / 15.0, 1e-12);
  EXPECT_NEAR(share("snapkv"), 2.0 / 15.0, 1e-12);
  EXPECT_NEAR(share("streaming"), 6.0 / 15.0, 1e-12);  // the first 4 positions are sinks; the budget of 3 takes 0, 1, 2
  EXPECT_NEAR(share("random"), 0.3, 0.03);  // 3 of 10 keys: 30% of the mass in expectation over 200 draws
  // u ranks the keys exactly as their far mass does: perfect AUROC; the oracle's keys sit in bins 3-5.
  EXPECT_DOUBLE_EQ(a.auroc[0], 1.0);
  EXPECT_EQ(a.reliability[5].useful, 200);  // u = 0.51 (position 0)
  EXPECT_EQ(a.reliability[0].keys, 5 * 200);  // the five keys without far mass, u = 0.01
  EXPECT_EQ(a.reliability[0].useful, 0);
  const auto j = nlohmann::json::parse(report_json(r));
  EXPECT_EQ(j["baselines"]["policies"][1]["policy"], "oracle");
  EXPECT_NEAR(j["baselines"]["policies"][1]["far_mass_share"].get<double>(), 0.8, 1e-12);
  EXPECT_NE(report_markdown(r).find("| oracle | 0.800 |"), std::string::npos) << report_markdown(r);
}

TEST(Baselines, StreamingFillsFromTheRecentEndBeyondTheSinks) {
  AttentionCounter c(1, /*sinks=*/1);
  // 6 eligible keys from position 0, the gates keep 3: StreamingLLM keeps the sink (0) and the last two (4, 5).
  std::vector<float> far{1, 2, 4, 8, 16, 32}, u(6, 0.5f);
  c.add(0, 0, 6, u, {1, 1, 1, 0, 0, 0}, far, far, far);
  const auto r = c.finish();
  EXPECT_DOUBLE_EQ(r.kept_mass[4][0], 1 + 16 + 32);
  EXPECT_DOUBLE_EQ(r.kept_mass[0][0], 1 + 2 + 4);
  EXPECT_TRUE(std::isnan(r.auroc[0]) || r.auroc[0] == 0.5);  // u is constant: no ranking
}

}  // namespace
}  // namespace spkv::analysis
