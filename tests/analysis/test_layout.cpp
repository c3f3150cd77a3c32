// Layout derivation and export on a hand-made log whose answer is known: of 3 layers x 4 KV heads, exactly
// heads (0,1) and (2,3) keep every eligible key, head (1,2) keeps every third, the rest keep nothing.
// Coverage and KV ratios are recounted here from the known counts; the formats are read back.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>
#include <set>

#include "analysis/layout.h"
#include "core/base/errors.h"
#include "core/gatelog/writer.h"
#include "tests/test_util.h"

namespace spkv::analysis {
namespace {

constexpr int64_t L = 3, Hkv = 4, LH = L * Hkv, W = 8;
const std::vector<int64_t> kLengths{30, 50, 100};

bool keeps(int64_t head, int64_t t) { return head == 1 || head == 11 || (head == 6 && t % 3 == 0); }

std::string write_log(const test::TempDir& tmp) {
  GateLogHeader h;
  h.n_layers = L, h.n_kv_heads = Hkv, h.window = W, h.tau = 0.5, h.gating_mode = "hard", h.checkpoint_sha256 = "abc";
  h.model_path = "models/m", h.model_config_json = R"({"model_type": "qwen2", "num_hidden_layers": 3})";
  const std::string path = tmp / "log.h5";
  GateLogWriter w(path, h, false, 0);
  for (size_t d = 0; d < kLengths.size(); ++d) {
    const int64_t T = kLengths[d];
    LoggedDocument doc;
    doc.id = "doc" + std::to_string(d);
    doc.kept.assign(LH, 0), doc.eligible.assign(LH, T - W);
    int64_t stored = 0;
    for (int64_t t = 0; t < T; ++t) {
      doc.tokens.push_back(int32_t(5 + t % 11)), doc.text.push_back(t ? "x" : ""), doc.nll.push_back(t ? 1.5f : std::nanf(""));
      for (int64_t i = 0; i < LH; ++i) {
        doc.z.push_back(keeps(i, t)), doc.u.push_back(keeps(i, t) ? 0x3b33 : 0x2e66);  // 0.9 / 0.1 in float16
        if (keeps(i, t) && t < T - W) ++doc.kept[i];
      }
      if (t >= W)
        for (int64_t i = 0; i < LH; ++i) stored += keeps(i, t - W);
      doc.cache_entries.push_back(int32_t(std::min(t + 1, W) * LH + stored));
    }
    w.add(std::move(doc));
  }
  w.close();
  test::expect_valid_log(path);
  return path;
}

// Known counts: E eligible keys per head in all; head 6 keeps those at positions divisible by 3.
struct Known {
  double E = 0, third = 0, tokens = 0, local = 0;
  Known() {
    for (int64_t T : kLengths) {
      E += double(T - W), tokens += double(T), local += double(std::min(T, W));
      for (int64_t t = 0; t < T - W; ++t) third += t % 3 == 0;
    }
  }
  double all_kept() const { return 2 * E + third; }
  double kv(int64_t g) const { return (g * tokens + (LH - g) * local) / (LH * tokens); }
};

const Layout& by_name(const std::vector<Layout>& ls, const std::string& name) {
  for (const auto& l : ls)
    if (l.name == name) return l;
  throw std::runtime_error("no layout " + name);
}

std::vector<uint8_t> heads(std::initializer_list<int> on) {
  std::vector<uint8_t> g(LH, 0);
  for (int i : on) g[i] = 1;
  return g;
}

TEST(Layout, GuidedLayoutTakesTheDensestHeadsWithRecountedCoverageAndKvRatio) {
  test::TempDir tmp;
  const Report r = analyze_logs({write_log(tmp)});
  const Known k;
  EXPECT_EQ(r.model_type, "qwen2");
  auto ls = derive_layouts(r, 2, 4);
  const Layout& g2 = by_name(ls, "guided");
  EXPECT_EQ(g2.global, heads({1, 11}));
  EXPECT_NEAR(g2.coverage, 2 * k.E / k.all_kept(), 1e-12);
  EXPECT_NEAR(g2.kv_ratio, k.kv(2), 1e-12);
  EXPECT_EQ(g2.checkpoint_sha256, "abc");
  EXPECT_EQ(by_name(derive_layouts(r, 3), "guided").global, heads({1, 6, 11}));
  EXPECT_NEAR(by_name(derive_layouts(r, 3), "guided").coverage, 1.0, 1e-12);
  // Per-layer projection at 2 heads = 1 layer (at least one): layers 0 and 2 tie at E kept keys; the
  // lower index wins. The coverage lost is the rest of the kept keys.
  const Layout& byl = by_name(ls, "guided-layers");
  EXPECT_EQ(byl.global, heads({0, 1, 2, 3}));
  EXPECT_NEAR(byl.coverage, k.E / k.all_kept(), 1e-12);
  EXPECT_NEAR(byl.kv_ratio, k.kv(4), 1e-12);
  // 1 global layer of 3: 2:1 interleaving at offsets 0 and 2.
  EXPECT_EQ(by_name(ls, "interleaved-0").global, heads({0, 1, 2, 3}));
  EXPECT_EQ(by_name(ls, "interleaved-2").global, heads({8, 9, 10, 11}));
  EXPECT_NEAR(by_name(ls, "interleaved-2").coverage, k.E / k.all_kept(), 1e-12);
  // Random layouts: g heads each, coverage recounted from their own heads, and the seeds differ.
  std::set<std::vector<uint8_t>> distinct;
  for (int s = 1; s <= 4; ++s) {
    const Layout& rl = by_name(ls, "random-" + std::to_string(s));
    EXPECT_EQ(rl.n_global(), 2);
    const double cov = (rl.global[1] * k.E + rl.global[11] * k.E + rl.global[6] * k.third) / k.all_kept();
    EXPECT_NEAR(rl.coverage, cov, 1e-12);
    distinct.insert(rl.global);
  }
  EXPECT_EQ(distinct.size(), 4u);
  // Dynamic SP-KV: every head's window plus the kept keys.
  EXPECT_NEAR(spkv_kv_ratio(r), (LH * k.local + k.all_kept()) / (LH * k.tokens), 1e-12);
}

// Random layouts are distinct draws while head sets remain: on 5 layers x 4 heads, seeds 1 and 2 shuffle to
// the same 3 heads (7, 10, 17); random-2 must differ. With only C(4, 3) = 4 sets, six seeds still finish.
TEST(Layout, RandomLayoutsAreDistinctWhileHeadSetsRemain) {
  Report r;
  r.n_layers = 5, r.n_kv_heads = 4, r.window = 4;
  r.kept.assign(20, 3), r.eligible.assign(20, 10);
  r.compression.push_back({"d", 20, 1.0});
  std::set<std::vector<uint8_t>> distinct;
  for (const Layout& l : derive_layouts(r, 3, 3))
    if (l.name.rfind("random-", 0) == 0) distinct.insert(l.global);
  EXPECT_EQ(distinct.size(), 3u);
  r.n_layers = 1, r.kept.assign(4, 3), r.eligible.assign(4, 10);
  distinct.clear();
  int n = 0;
  for (const Layout& l : derive_layouts(r, 3, 6))
    if (l.name.rfind("random-", 0) == 0) distinct.insert(l.global), ++n;
  EXPECT_EQ(n, 6);
  EXPECT_EQ(distinct.size(), 4u);
}

TEST(Layout, FourLayersInterleaveThreeToOneAtOffsetsZeroAndThree) {
  Report r;  // the paper's reference layouts need only the shape and counts
  r.n_layers = 4, r.n_kv_heads = 2, r.window = 4;
  r.kept = {0, 1, 2, 3, 4, 5, 6, 7}, r.eligible.assign(8, 10);
  r.compression.push_back({"d", 20, 1.0});
  const auto ls = derive_layouts(r, 2, 0);
  EXPECT_EQ(by_name(ls, "interleaved-0").global, (std::vector<uint8_t>{1, 1, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(by_name(ls, "interleaved-3").global, (std::vector<uint8_t>{0, 0, 0, 0, 0, 0, 1, 1}));
  EXPECT_EQ(by_name(ls, "guided").global, (std::vector<uint8_t>{0, 0, 0, 0, 0, 0, 1, 1}));
  EXPECT_NEAR(by_name(ls, "interleaved-0").coverage, 1.0 / 28.0, 1e-12);
  EXPECT_EQ(ls.size(), 4u);  // guided, guided-layers, two interleavings, no random
  // A budget of 3 of 4 layers still interleaves (1:1 at offsets 0 and 1) instead of making every layer global.
  const auto wide = derive_layouts(r, 6, 0);
  EXPECT_EQ(by_name(wide, "interleaved-0").global, (std::vector<uint8_t>{1, 1, 0, 0, 1, 1, 0, 0}));
  EXPECT_EQ(by_name(wide, "interleaved-1").global, (std::vector<uint8_t>{0, 0, 1, 1, 0, 0, 1, 1}));
}

TEST(Layout, BudgetsInEveryFormAndBadOnesAreRefused) {
  test::TempDir tmp;
  const Report r = analyze_logs({write_log(tmp)});
  const Known k;
  EXPECT_EQ(budget_heads(parse_budget("5"), r), 5);
  EXPECT_EQ(budget_heads(parse_budget("25%"), r), 3);
  EXPECT_EQ(budget_heads(parse_budget("0.5"), r), 6);
  EXPECT_EQ(budget_heads(parse_budget("density"), r), std::llround(k.all_kept() / (LH * k.E) * LH));
  auto kv = [](double x) {
    std::ostringstream s;
    s << "kv:" << std::setprecision(17) << x;
    return s.str();
  };
  EXPECT_EQ(budget_heads(parse_budget(kv(k.kv(5) + 1e-9)), r), 5);
  EXPECT_EQ(budget_heads(parse_budget(kv(k.kv(5) - 1e-6)), r), 4);
  for (const char* bad : {"-1", "abc", "1.5", "150%", "kv:2", "kv:", "3x"})
    EXPECT_THROW(parse_budget(bad), ConfigError) << bad;
  try {
    budget_heads(parse_budget("13"), r);
    FAIL() << "13 of 12 heads was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("has 12"), std::string::npos) << e.what();
  }
  EXPECT_THROW(budget_heads(parse_budget("kv:0.01"), r), ConfigError);  // below the all-local floor
  EXPECT_THROW(derive_layouts(r, 0), ConfigError);
}

TEST(Layout, ExportsReadBackToTheSameLayout) {
  test::TempDir tmp;
  const Report r = analyze_logs({write_log(tmp)});
  for (const auto& l : derive_layouts(r, 3)) {
    test::write_file(tmp / "l.json", layout_json(l));
    const Layout back = read_layout(tmp / "l.json");
    EXPECT_EQ(back.global, l.global) << l.name;
    EXPECT_EQ(back.window, W);
    EXPECT_DOUBLE_EQ(back.coverage, l.coverage);
    EXPECT_EQ(back.logs, l.logs);
    test::write_file(tmp / "l.tsv", duo_attention_tsv(l));
    int64_t nl = 0, nh = 0;
    EXPECT_EQ(read_duo_attention_tsv(tmp / "l.tsv", nl, nh), l.global) << l.name;
    EXPECT_EQ(nl, L);
    EXPECT_EQ(nh, Hkv);
    for (const char* type : {"qwen2", "gemma3", "llama"}) {
      std::vector<std::string> warn;
      test::write_file(tmp / "hf.json", hf_config_fragment(l, type, warn));
      const auto j = nlohmann::json::parse(test::read_file(tmp / "hf.json"));
      ASSERT_EQ(j["layer_types"].size(), size_t(L)) << l.name;
      EXPECT_EQ(j["num_hidden_layers"], L);
      EXPECT_EQ(j["sliding_window"], W);
      EXPECT_EQ(read_hf_layer_types(tmp / "hf.json"), layer_flags(l));
      EXPECT_EQ(l.layer_uniform(), std::none_of(warn.begin(), warn.end(), [](auto& w) { return w.find("per head") != std::string::npos; }));
      if (std::string(type) == "llama") EXPECT_NE(warn.back().find("not known to read layer_types"), std::string::npos);
      if (std::string(type) == "qwen2") EXPECT_EQ(j["use_sliding_window"], true);
      if (std::string(type) == "gemma3" && j.contains("sliding_window_pattern")) {  // must agree with the list
        const int n = j["sliding_window_pattern"];
        for (int64_t il = 0; il < L; ++il) EXPECT_EQ(j["layer_types"][il] == "full_attention", (il + 1) % n == 0);
      }
    }
  }
  // Per-layer projection: a layer is global when at least half its heads are.
  Layout mixed;
  mixed.n_layers = L, mixed.n_kv_heads = Hkv, mixed.window = W, mixed.global = heads({0, 1, 4, 8, 9, 10});
  EXPECT_EQ(layer_flags(mixed), (std::vector<uint8_t>{1, 0, 1}));
  std::vector<std::string> warn;
  const auto q = nlohmann::json::parse(hf_config_fragment(mixed, "qwen2", warn));
  EXPECT_EQ(q["max_window_layers"], 1);  // only layer 0 leads; layer 2 is full again, which it cannot say
  EXPECT_EQ(warn.size(), 2u);
}

TEST(Layout, MalformedFilesNameTheFieldAndTheFile) {
  test::TempDir tmp;
  auto error_of = [&](const std::string& text) {
    test::write_file(tmp / "bad.json", text);
    try {
      read_layout(tmp / "bad.json");
    } catch (const FileError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  const std::string ok = R"({"format": "spkv-layout", "version": 1, "n_layers": 2, "n_kv_heads": 2, "window": 4, )";
  EXPECT_NE(error_of(ok + R"("global": [[1, 0]]})").find("'global' must be 2 rows"), std::string::npos);
  EXPECT_NE(error_of(ok + R"("global": [[1, 0], [2, 0]]})").find("'global'[1] holds 2"), std::string::npos);
  EXPECT_NE(error_of(ok + R"("global": [[1, 0], [1]]})").find("'global'[1] must hold 2"), std::string::npos);
  EXPECT_NE(error_of(R"({"format": "other"})").find("not an spkv layout"), std::string::npos);
  EXPECT_NE(error_of("{").find("bad.json: not JSON"), std::string::npos);
  EXPECT_EQ(error_of(ok + R"("global": [[1, 0], [0, 1]]})"), "accepted");
  test::write_file(tmp / "bad.tsv", "1\t0\n1\n");
  int64_t nl, nh;
  EXPECT_THROW(read_duo_attention_tsv(tmp / "bad.tsv", nl, nh), FileError);
  test::write_file(tmp / "bad.tsv", "1\t0\n1\t7\n");
  EXPECT_THROW(read_duo_attention_tsv(tmp / "bad.tsv", nl, nh), FileError);
}

}  // namespace
}  // namespace spkv::analysis
