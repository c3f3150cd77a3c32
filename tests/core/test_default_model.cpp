// The bundled default model (data/models/spkv-default): `spkv eval` and `spkv tasks eval` on its held-out
// split reproduce the numbers its results.json reports (those in docs/results.md): the NLL and density of
// SP-KV and of the matched dense control shipped beside it (stages/dense-control), and the long-range task
// accuracy of SP-KV with full and window-only attention.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/test_util.h"

namespace spkv {
namespace {

TEST(DefaultModel, HeldOutEvalReproducesTheReportedNumbers) {
  const std::string dir = std::string(SPKV_SOURCE_DIR) + "/data/models/spkv-default";
  if (!std::filesystem::exists(dir + "/results.json")) GTEST_SKIP() << dir << " is absent";
  const auto reported = nlohmann::json::parse(test::read_file(dir + "/results.json"))["spkv/full"]["text"];
  test::TempDir tmp;
  auto r = test::run_spkv("eval -m " + test::quote(dir) + " " + test::quote(dir + "/heldout/text") + " --json " +
                          test::quote(tmp / "e.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto got = nlohmann::json::parse(test::read_file(tmp / "e.json"));
  EXPECT_EQ(got["tokens"], reported["tokens"]);
  EXPECT_NEAR(got["nll"].get<double>(), reported["nll"].get<double>(), 1e-5 * reported["nll"].get<double>());
  EXPECT_NEAR(got["gates"]["density"].get<double>(), reported["gates"]["density"].get<double>(), 1e-4);
  EXPECT_LT(reported["gates"]["density"].get<double>(), 0.9) << "the gates should have learned to close";
}

const std::string kDir = std::string(SPKV_SOURCE_DIR) + "/data/models/spkv-default";

nlohmann::json run_json(const std::string& args) {
  test::TempDir tmp;
  auto r = test::run_spkv(args + " --json " + test::quote(tmp / "e.json"));
  EXPECT_EQ(r.exit_code, 0) << args << ": " << r.err;
  return r.exit_code == 0 ? nlohmann::json::parse(test::read_file(tmp / "e.json")) : nlohmann::json();
}

TEST(DefaultModel, MatchedControlReproducesTheReportedNllChange) {
  const std::string control = kDir + "/stages/dense-control";
  if (!std::filesystem::exists(control + "/model.safetensors")) GTEST_SKIP() << control << " is absent";
  const auto res = nlohmann::json::parse(test::read_file(kDir + "/results.json"));
  const auto got = run_json("eval -m " + test::quote(control) + " -t " + test::quote(kDir + "/tokenizer.model") + " " +
                            test::quote(kDir + "/heldout/text"));
  const double reported = res["dense-control/full"]["text"]["nll"].get<double>();
  EXPECT_NEAR(got["nll"].get<double>(), reported, 1e-5 * reported);
  EXPECT_NEAR(res["summary"]["nll_change"].get<double>(), res["spkv/full"]["text"]["nll"].get<double>() / reported - 1, 1e-9);
}

TEST(DefaultModel, TaskAccuracyReproducesTheReportedNumbers) {
  if (!std::filesystem::exists(kDir + "/results.json")) GTEST_SKIP() << kDir << " is absent";
  const auto res = nlohmann::json::parse(test::read_file(kDir + "/results.json"));
  for (const char* variant : {"full", "window"}) {
    const auto got = run_json("tasks eval -m " + test::quote(kDir) + " " + test::quote(kDir + "/heldout/tasks.jsonl") +
                              (std::string(variant) == "window" ? " --window 64" : ""));
    const auto& want = res[std::string("spkv/") + variant]["tasks"]["kinds"];
    for (const char* kind : {"kv", "needle", "copy", "copy-shuffled", "reversal"}) {
      EXPECT_EQ(got["kinds"][kind]["answers"], want[kind]["answers"]) << variant << " " << kind;
      EXPECT_NEAR(got["kinds"][kind]["exact"].get<double>(), want[kind]["exact"].get<double>(), 1e-9) << variant << " " << kind;
    }
  }
}

}  // namespace
}  // namespace spkv
