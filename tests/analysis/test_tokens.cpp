// Which tokens are kept, and stability across logs, on hand-made logs with known answers: the text repeats
// a 6-token cycle [word, "42", ",", "\n", "▁word", "7"] after BOS; head 0 keeps only digits, head 1 only
// punctuation and newlines, head 2 everything at even positions, head 3 nothing. A second log differs in
// head 3 only. Spearman's rho is checked against values worked out by hand.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>

#include "analysis/report.h"
#include "analysis/stats.h"
#include "core/gatelog/writer.h"
#include "tests/test_util.h"

namespace spkv::analysis {
namespace {

constexpr int64_t L = 1, Hkv = 4, W = 3;
const std::vector<std::string> kCycle{"word", "42", ",", "\n", "\xe2\x96\x81word", "7"};

bool keeps(int64_t head, int64_t t, bool second_log) {
  const std::string& s = kCycle[(t - 1) % 6];
  if (t == 0) return head != 3 || second_log;  // BOS: kept by heads 0-2 (and head 3 in the second log)
  if (head == 0) return s == "42" || s == "7";
  if (head == 1) return s == "," || s == "\n";
  if (head == 2) return t % 2 == 0;
  return second_log && s == "word";
}

std::string write_log(const test::TempDir& tmp, const std::string& name, bool second_log, int64_t T) {
  GateLogHeader h;
  h.n_layers = L, h.n_kv_heads = Hkv, h.window = W, h.tau = 0.5, h.gating_mode = "hard", h.checkpoint_sha256 = "x";
  h.model_config_json = "{\"num_hidden_layers\": " + std::to_string(L) + ", \"num_key_value_heads\": " + std::to_string(Hkv) + "}";
  GateLogWriter w(tmp / name, h, false, 0);
  LoggedDocument doc;
  doc.id = name;
  doc.kept.assign(Hkv, 0), doc.eligible.assign(Hkv, T - W);
  int64_t stored = 0;
  for (int64_t t = 0; t < T; ++t) {
    doc.tokens.push_back(t == 0 ? 1 : int32_t(10 + (t - 1) % 6));
    doc.text.push_back(t == 0 ? "" : kCycle[(t - 1) % 6]);
    doc.nll.push_back(t == 0 ? std::nanf("") : 2.0f);
    for (int64_t hk = 0; hk < Hkv; ++hk) {
      const bool k = keeps(hk, t, second_log);
      doc.z.push_back(k), doc.u.push_back(k ? 0x3b33 : 0x2e66);
      if (k && t < T - W) ++doc.kept[hk];
    }
    if (t >= W)
      for (int64_t hk = 0; hk < Hkv; ++hk) stored += keeps(hk, t - W, second_log);
    doc.cache_entries.push_back(int32_t(std::min(t + 1, W) * Hkv + stored));
  }
  w.add(std::move(doc));
  w.close();
  test::expect_valid_log(tmp / name);
  return tmp / name;
}

TEST(TokenRetention, ClassesPositionsAndStringsFollowTheKnownGates) {
  EXPECT_EQ(token_class("", 0), TokenClass::first);
  EXPECT_EQ(token_class("\xe2\x96\x81" "12", 5), TokenClass::digits);
  EXPECT_EQ(token_class(" .\"", 5), TokenClass::punctuation);
  EXPECT_EQ(token_class(".\n", 5), TokenClass::newline);
  EXPECT_EQ(token_class("a1", 5), TokenClass::other);
  EXPECT_EQ(token_class("\xe2\x96\x81", 5), TokenClass::other);  // a bare word start is no punctuation

  test::TempDir tmp;
  const int64_t T = 1 + 6 * 40 + W;  // eligible: BOS and 40 whole cycles
  const Report r = analyze_logs({write_log(tmp, "a.h5", false, T)});
  const TokenRetention& t = r.retention;
  auto cls = [&](TokenClass c, int64_t hk) { return double(t.class_kept[int(c)][hk]) / double(t.class_eligible[int(c)][hk]); };
  EXPECT_EQ(t.class_eligible[int(TokenClass::first)][0], 1);
  EXPECT_EQ(t.class_eligible[int(TokenClass::digits)][0], 80);  // "42" and "7"
  EXPECT_EQ(t.class_eligible[int(TokenClass::punctuation)][0], 40);
  EXPECT_EQ(t.class_eligible[int(TokenClass::newline)][0], 40);
  EXPECT_EQ(t.class_eligible[int(TokenClass::other)][0], 80);  // "word" and "▁word"
  EXPECT_DOUBLE_EQ(cls(TokenClass::digits, 0), 1.0);
  EXPECT_DOUBLE_EQ(cls(TokenClass::other, 0), 0.0);
  EXPECT_DOUBLE_EQ(cls(TokenClass::punctuation, 1), 1.0);
  EXPECT_DOUBLE_EQ(cls(TokenClass::newline, 1), 1.0);
  EXPECT_DOUBLE_EQ(cls(TokenClass::digits, 1), 0.0);
  EXPECT_DOUBLE_EQ(cls(TokenClass::first, 3), 0.0);
  // Head 2 keeps even positions: "42", "\n" and "7" sit at t = 2, 4, 6 (mod 6, all even), the others at odd t.
  EXPECT_EQ(t.class_kept[int(TokenClass::digits)][2], 80);
  EXPECT_EQ(t.class_kept[int(TokenClass::newline)][2], 40);
  EXPECT_EQ(t.class_kept[int(TokenClass::punctuation)][2], 0);
  // Positions: bins [0,1), [1,2), [2,4), ..., [128,256); 241 eligible positions 0..240.
  ASSERT_EQ(t.position_edges.size(), 10u);
  EXPECT_EQ(t.position_edges[8], 128);
  EXPECT_EQ(t.position_eligible[8][2], 240 - 128 + 1);
  EXPECT_EQ(t.position_kept[8][2], (240 - 128) / 2 + 1);  // even positions of 128..240
  EXPECT_EQ(t.position_kept[1][2], 0);                    // position 1 is odd
  // Strings: head 0 keeps "42" and "7" always and the rest never; head 1 keeps "," and "\n".
  ASSERT_GE(t.most_kept[0].size(), 2u);
  EXPECT_EQ(t.most_kept[0][0].text, "42");  // rate 1, seen 40 times; ties by count, then text
  EXPECT_EQ(t.most_kept[0][1].text, "7");
  EXPECT_DOUBLE_EQ(t.most_kept[0][1].rate(), 1.0);
  EXPECT_DOUBLE_EQ(t.least_kept[1][0].rate(), 0.0);
  for (const auto& s : t.most_kept[0]) EXPECT_GE(s.eligible, 20) << "strings seen fewer than 20 times are left out";
  // Pooled over heads, digits are kept by heads 0 and 2: 2 of 4.
  const auto j = nlohmann::json::parse(report_json(r));
  EXPECT_EQ(j["retention"]["classes"][int(TokenClass::digits)]["eligible"], 80 * Hkv);
  EXPECT_DOUBLE_EQ(j["retention"]["classes"][int(TokenClass::digits)]["retention"].get<double>(), (80.0 + 80.0) / (80 * Hkv));
  EXPECT_NE(report_markdown(r).find("| digits | 320 | 0.500 |"), std::string::npos) << report_markdown(r);
}

TEST(Stability, PerHeadDifferencesAndRankCorrelationBetweenLogs) {
  // Spearman by hand: ranks of x = (1, 2, 3, 4); y = (10, 30, 20, 40) has ranks (1, 3, 2, 4): rho = 1 - 6*2/(4*15) = 0.8.
  EXPECT_NEAR(spearman({1, 2, 3, 4}, {10, 30, 20, 40}), 0.8, 1e-12);
  EXPECT_NEAR(spearman({1, 2, 3, 4}, {4, 3, 2, 1}), -1.0, 1e-12);
  // Ties share the average rank: y = (1, 1, 2) -> ranks (1.5, 1.5, 3) against (1, 2, 3): rho = 1.5 / sqrt(2 * 1.5).
  EXPECT_NEAR(spearman({1, 2, 3}, {1, 1, 2}), 1.5 / std::sqrt(3.0), 1e-12);
  EXPECT_NEAR(spearman({1, std::nan(""), 3, 4}, {2, 9, 1, 5}), 0.5, 1e-12);  // the NaN pair is left out
  EXPECT_TRUE(std::isnan(spearman({1, 1}, {1, 2})));

  test::TempDir tmp;
  const int64_t T = 1 + 6 * 40 + W;
  const Report r = analyze_logs({write_log(tmp, "a.h5", false, T), write_log(tmp, "b.h5", true, T)});
  ASSERT_EQ(r.stability.size(), 1u);
  const Stability& st = r.stability[0];
  // Head 3 keeps BOS and "word" (40) in the second log only: 41 of 241 eligible keys; the rest agree.
  EXPECT_NEAR(st.diff[3], 41.0 / 241.0, 1e-12);
  EXPECT_DOUBLE_EQ(st.diff[0], 0.0);
  EXPECT_NEAR(st.max_abs_diff, 41.0 / 241.0, 1e-12);
  EXPECT_NEAR(st.mean_abs_diff, 41.0 / 241.0 / 4, 1e-12);
  EXPECT_NEAR(st.spearman, spearman(r.log_density[0], r.log_density[1]), 1e-15);
  EXPECT_NE(report_markdown(r).find("Spearman"), std::string::npos);
}

}  // namespace
}  // namespace spkv::analysis
