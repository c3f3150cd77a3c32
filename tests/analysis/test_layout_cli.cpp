// `spkv layout derive | export | eval` end to end on the bundled default model: the guided layout is the
// top heads of a density recount from the log itself; the exported files read back to the same layout and
// evaluate to the same NLL; an all-global layout scores like full attention and an all-local one like
// `spkv eval --window W` (the masked forward, an independent path); dynamic SP-KV like `spkv eval`; the
// guided layout like `spkv eval --layout` (the masked forward with the layout imposed).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <numeric>

#include "analysis/layout.h"
#include "core/gatelog/reader.h"
#include "core/text/documents.h"
#include "tests/test_util.h"

namespace spkv::analysis {
namespace {

const std::string kModel = std::string(SPKV_SOURCE_DIR) + "/data/models/spkv-default";
constexpr int64_t L = 4, Hkv = 4, W = 64;

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(test::read_file(path)); }

std::string hand_layout(int flag) {
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t il = 0; il < L; ++il) rows.push_back(std::vector<int>(Hkv, flag));
  return nlohmann::json{{"format", "spkv-layout"}, {"version", 1}, {"n_layers", L}, {"n_kv_heads", Hkv},
                        {"window", W}, {"global", rows}}.dump();
}

TEST(LayoutCli, DeriveExportReimportAndEvaluateOnTheDefaultModel) {
  test::TempDir tmp;
  // Four held-out documents cut to fit the context, so that every path scores the same whole documents.
  std::string corpus;
  auto docs = read_documents(kModel + "/heldout/text/devil.txt", "<|endoftext|>");
  for (size_t d = 0; d < 4; ++d) corpus += docs[d].text.substr(0, 1000) + "\n<|endoftext|>\n";
  test::write_file(tmp / "corpus.txt", corpus);
  const std::string flags = " --separator '<|endoftext|>' ";
  auto ok = [](const test::RunResult& r) { return r.exit_code == 0 ? ::testing::AssertionSuccess()
                                                                   : ::testing::AssertionFailure() << r.err; };
  ASSERT_TRUE(ok(test::run_spkv("run -m " + kModel + " --out " + tmp / "log.h5 " + tmp / "corpus.txt" + flags)));
  test::expect_valid_log(tmp / "log.h5");
  ASSERT_TRUE(ok(test::run_spkv("layout derive " + tmp / "log.h5 --budget 4 --out " + tmp / "layouts")));

  // The guided layout: the 4 heads with the highest kept / eligible, recounted from the log's summaries.
  GateLogReader log(tmp / "log.h5");
  std::vector<double> density(L * Hkv);
  for (int64_t i = 0; i < L * Hkv; ++i) {
    int64_t k = 0, e = 0;
    for (int64_t d = 0; d < log.info().n_documents; ++d) k += log.kept()[d * L * Hkv + i], e += log.eligible()[d * L * Hkv + i];
    density[i] = double(k) / double(e);
  }
  std::vector<int64_t> order(L * Hkv);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return density[a] > density[b]; });
  ASSERT_GT(density[order[3]], density[order[4]]) << "a tie at the budget's edge would make the answer ambiguous";
  const Layout guided = read_layout(tmp / "layouts/guided.json");
  for (int64_t k = 0; k < L * Hkv; ++k) EXPECT_EQ(guided.global[order[k]], k < 4 ? 1 : 0) << "rank " << k;
  EXPECT_EQ(guided.checkpoint_sha256.size(), 64u);

  // Export, and read every format back.
  const auto exp = test::run_spkv("layout export " + tmp / "layouts/guided.json --out " + tmp / "exp");
  ASSERT_TRUE(ok(exp));
  EXPECT_NE(exp.err.find("'llama' is not known to read layer_types"), std::string::npos) << exp.err;
  EXPECT_EQ(read_layout(tmp / "exp/layout.json").global, guided.global);
  int64_t nl = 0, nh = 0;
  EXPECT_EQ(read_duo_attention_tsv(tmp / "exp/full_attention_heads.tsv", nl, nh), guided.global);
  EXPECT_EQ(read_hf_layer_types(tmp / "exp/hf_config_fragment.json").size(), size_t(L));

  // Evaluate: full, SP-KV, guided, guided re-imported, all global, all local.
  test::write_file(tmp / "global.json", hand_layout(1));
  test::write_file(tmp / "local.json", hand_layout(0));
  ASSERT_TRUE(ok(test::run_spkv("layout eval -m " + kModel + " --corpus " + tmp / "corpus.txt" + flags + tmp / "layouts/guided.json " +
                                tmp / "exp/layout.json " + tmp / "global.json " + tmp / "local.json --json " + tmp / "eval.json")));
  const auto rows = read_json(tmp / "eval.json")["rows"];
  ASSERT_EQ(rows.size(), 6u);
  auto nll = [&](int i) { return rows[i]["nll"].get<double>(); };
  EXPECT_EQ(rows[2]["name"], "guided");
  EXPECT_EQ(nll(2), nll(3));  // re-imported: the same layout, the same numbers
  EXPECT_EQ(rows[2]["kv_ratio"], rows[3]["kv_ratio"]);
  EXPECT_NEAR(nll(4), nll(0), 1e-6 * nll(0));
  EXPECT_DOUBLE_EQ(rows[4]["kv_ratio"].get<double>(), 1.0);
  EXPECT_GT(nll(5), nll(0) * 1.001) << "the local window must cost something, or the comparison means nothing";
  // KV ratios from the document lengths: a global head holds T entries, a local head min(T, W).
  double all = 0, local = 0;
  for (int64_t d = 0; d < log.info().n_documents; ++d) {
    const double T = double(log.token_offsets()[d + 1] - log.token_offsets()[d]);
    all += T, local += std::min(T, double(W));
  }
  EXPECT_NEAR(rows[5]["kv_ratio"].get<double>(), local / all, 1e-12);
  EXPECT_NEAR(rows[2]["kv_ratio"].get<double>(), (4 * all + 12 * local) / (16 * all), 1e-12);
  // Independent paths: the masked full-sequence forward of `spkv eval`, with the window alone and with gates.
  ASSERT_TRUE(ok(test::run_spkv("eval -m " + kModel + " " + tmp / "corpus.txt" + flags + "--window 64 --json " + tmp / "w.json")));
  ASSERT_TRUE(ok(test::run_spkv("eval -m " + kModel + " " + tmp / "corpus.txt" + flags + "--json " + tmp / "g.json")));
  EXPECT_NEAR(nll(5), read_json(tmp / "w.json")["nll"].get<double>(), 1e-5);
  EXPECT_NEAR(nll(1), read_json(tmp / "g.json")["nll"].get<double>(), 1e-5);
  // ... and with the guided layout imposed on it (`spkv eval --layout`), against the engine's cache above.
  ASSERT_TRUE(ok(test::run_spkv("eval -m " + kModel + " " + tmp / "corpus.txt" + flags + "--layout " + tmp / "layouts/guided.json --json " +
                                tmp / "l.json")));
  EXPECT_NEAR(nll(2), read_json(tmp / "l.json")["nll"].get<double>(), 1e-5);
  EXPECT_GT(std::abs(nll(2) - nll(1)), 1e-4) << "the guided layout must differ from the gates, or the comparison means nothing";

  // Bad inputs: a layout of another shape, a budget above the head count.
  test::write_file(tmp / "small.json", R"({"format": "spkv-layout", "version": 1, "n_layers": 3, "n_kv_heads": 4,
    "window": 8, "global": [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]})");
  auto bad = test::run_spkv("layout eval -m " + kModel + " --corpus " + tmp / "corpus.txt " + tmp / "small.json");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("small.json: the layout is 3 layers x 4 KV heads"), std::string::npos) << bad.err;
  bad = test::run_spkv("tasks eval -m " + kModel + " " + kModel + "/heldout/tasks.jsonl --max-docs 2 --layout " + tmp / "small.json");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("small.json: the layout is for 3 layers x 4 KV heads"), std::string::npos) << bad.err;
  bad = test::run_spkv("layout derive " + tmp / "log.h5 --budget 17 --out " + tmp / "x");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("has 16"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace spkv::analysis
