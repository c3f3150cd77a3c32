// `spkv compare`, `spkv eval --policy` and `spkv tasks eval --policy` end to end on the bundled default model
// and its matched dense control. Against independent paths: full attention and SP-KV score what `spkv eval`
// (the masked full-sequence forward) scores and answer what `spkv tasks eval` answers; StreamingLLM without
// sinks in 64 slots scores what `spkv eval --window 64` does; a budget that never binds is full attention;
// every matched budget holds exactly the SP-KV run's KV rows. The policies' own rules are tested against
// float64 simulations in tests/core/test_kv_cache.cpp.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/text/documents.h"
#include "tests/test_util.h"

namespace spkv {
namespace {

const std::string kModel = std::string(SPKV_SOURCE_DIR) + "/data/models/spkv-default";
const std::string kControl = kModel + "/stages/dense-control";
const std::string kTasks = kModel + "/heldout/tasks.jsonl";

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(test::read_file(path)); }

::testing::AssertionResult ok(const test::RunResult& r) {
  return r.exit_code == 0 ? ::testing::AssertionSuccess() : ::testing::AssertionFailure() << r.err;
}

TEST(CompareCli, BaselinesAgainstFullAttentionAndSpkvOnTheDefaultModel) {
  test::TempDir tmp;
  std::string corpus;  // four held-out documents, cut to fit the context
  auto docs = read_documents(kModel + "/heldout/text/web.txt", "<|endoftext|>");
  for (size_t d = 0; d < 4; ++d) corpus += docs[d].text.substr(0, 1200) + "\n<|endoftext|>\n";
  test::write_file(tmp / "corpus.txt", corpus);
  const std::string text = tmp / "corpus.txt --separator '<|endoftext|>' ";
  ASSERT_TRUE(ok(test::run_spkv("compare -m " + kControl + " -t " + kModel + "/tokenizer.model --spkv " + kModel +
                                " --policies streaming:0,h2o,oracle --budget matched,slots:64,slots:100000 " + text +
                                "--json " + tmp / "text.json")));
  const auto rows = read_json(tmp / "text.json")["rows"];
  ASSERT_EQ(rows.size(), 2u + 3 * 3);
  auto row = [&](const std::string& method, const std::string& budget) {
    for (const auto& r : rows)
      if (r["method"] == method && r["budget"] == budget) return r;
    ADD_FAILURE() << method << ", " << budget << " missing";
    return rows[0];
  };
  auto nll = [](const nlohmann::json& r) { return r["nll"].get<double>(); };
  const auto full = rows[0], spkv = rows[1];
  EXPECT_EQ(full["method"], "full attention");
  EXPECT_DOUBLE_EQ(full["kv_ratio"].get<double>(), 1.0);
  EXPECT_EQ(full["delta_pct_vs_full"].get<double>(), 0.0);
  EXPECT_LT(spkv["kv_ratio"].get<double>(), 0.9);
  // The independent path: the masked forward of `spkv eval`.
  ASSERT_TRUE(ok(test::run_spkv("eval -m " + kControl + " -t " + kModel + "/tokenizer.model " + text + "--json " + tmp / "f.json")));
  ASSERT_TRUE(ok(test::run_spkv("eval -m " + kModel + " " + text + "--json " + tmp / "g.json")));
  ASSERT_TRUE(ok(test::run_spkv("eval -m " + kControl + " -t " + kModel + "/tokenizer.model --window 64 " + text + "--json " + tmp / "w.json")));
  EXPECT_NEAR(nll(full), read_json(tmp / "f.json")["nll"].get<double>(), 1e-5);
  EXPECT_NEAR(nll(spkv), read_json(tmp / "g.json")["nll"].get<double>(), 1e-5);
  EXPECT_NEAR(nll(row("streaming:0", "slots:64")), read_json(tmp / "w.json")["nll"].get<double>(), 1e-5);
  EXPECT_GT(nll(row("streaming:0", "slots:64")), nll(full) * 1.001) << "the budget must cost something";
  for (const std::string p : {"streaming:0", "h2o", "oracle"}) {
    EXPECT_NEAR(nll(row(p, "slots:100000")), nll(full), 1e-6) << p;
    EXPECT_DOUBLE_EQ(row(p, "slots:100000")["kv_ratio"].get<double>(), 1.0) << p;
    EXPECT_DOUBLE_EQ(row(p, "matched")["kv_ratio"].get<double>(), spkv["kv_ratio"].get<double>()) << p;
  }
  EXPECT_LT(nll(row("oracle", "matched")), nll(row("streaming:0", "matched"))) << "the oracle knows the future";

  // Task files: exact match as `spkv tasks eval` scores it (the masked forward).
  const std::string tasks = kTasks + " --max-docs 8 ";
  ASSERT_TRUE(ok(test::run_spkv("compare -m " + kModel + " --policies h2o " + tasks + "--json " + tmp / "tasks.json")));
  ASSERT_TRUE(ok(test::run_spkv("tasks eval -m " + kModel + " --policy h2o " + tasks + "--json " + tmp / "policy.json")));
  ASSERT_TRUE(ok(test::run_spkv("tasks eval -m " + kModel + " " + tasks + "--json " + tmp / "te.json")));
  const auto t = read_json(tmp / "tasks.json")["rows"];
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(read_json(tmp / "policy.json")["rows"], t) << "tasks eval --policy is compare with that policy";
  EXPECT_NEAR(t[1]["exact"].get<double>(), read_json(tmp / "te.json")["all"]["exact"].get<double>(), 1e-12);
  EXPECT_GT(t[1]["exact"].get<double>(), 0.5) << "SP-KV answers these";

  // Bad input: one line, exit 1.
  auto bad = test::run_spkv("compare -m " + kControl + " -t " + kModel + "/tokenizer.model --policies h2o " + tasks);
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("--budget matched needs an SP-KV model"), std::string::npos) << bad.err;
  bad = test::run_spkv("compare -m " + kModel + " --policies h3o " + tasks);
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("h3o: expected streaming"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace spkv
