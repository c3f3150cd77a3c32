// The bundled default model (data/models/spkv-default): `spkv eval`, `spkv tasks eval` and `spkv run` on its
// held-out split reproduce the numbers its results.json and study/ report (those in docs/results.md): the NLL
// and density of SP-KV and of the matched dense control shipped beside it (stages/dense-control), a point of
// the tau curve, the long-range task accuracy of SP-KV with full and window-only attention with the gates' keep
// rates per head, and the retrieving heads' fact and filler keep rates (scripts/retrieval_heads.py).
#include <cmath>

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
// A keep rate is a count over ~10k fact or ~37k filler keys: at another thread count a gate score on the
// threshold may round to the other side, one or two decisions.
constexpr double kKeepRateTol = 3e-4;

// Every entry of two (layers, KV heads) grids of numbers agrees within abs_tol + rel_tol * |want|.
void expect_grid_near(const nlohmann::json& got, const nlohmann::json& want, double abs_tol, double rel_tol,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t l = 0; l < want.size(); ++l)
    for (size_t h = 0; h < want[l].size(); ++h) {
      const double w = want[l][h].get<double>();
      EXPECT_NEAR(got[l][h].get<double>(), w, abs_tol + rel_tol * std::abs(w)) << what << " " << l << "," << h;
    }
}

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
    if (std::string(variant) == "window") continue;
    const auto& gates = res["spkv/full"]["tasks"]["gates"];
    for (const char* rate : {"keep_facts_per_head", "keep_other_per_head"})
      expect_grid_near(got["gates"][rate], gates[rate], kKeepRateTol, 0, rate);
  }
}

TEST(DefaultModel, TauCurvePointReproducesTheReportedOne) {
  if (!std::filesystem::exists(kDir + "/study/tau.json")) GTEST_SKIP() << kDir << "/study/tau.json is absent";
  const auto curve = nlohmann::json::parse(test::read_file(kDir + "/study/tau.json"));
  for (const auto& point : curve["curve"]) {
    if (point["tau"].get<double>() != 0.7) continue;
    const auto got = run_json("eval -m " + test::quote(kDir) + " " + test::quote(kDir + "/heldout/text") + " --tau 0.7");
    EXPECT_NEAR(got["nll"].get<double>(), point["nll"].get<double>(), 1e-5 * point["nll"].get<double>());
    EXPECT_NEAR(got["gates"]["density"].get<double>(), point["density"].get<double>(), 1e-4);
    EXPECT_NEAR(curve["dense_control_nll"].get<double>(),
                nlohmann::json::parse(test::read_file(kDir + "/results.json"))["dense-control/full"]["text"]["nll"].get<double>(), 1e-12);
    return;
  }
  FAIL() << "study/tau.json has no tau 0.7";
}

// The "gates select" numbers: over the first 200 held-out task documents, which heads retrieve (far attention
// per fact key over per filler key, from a dense run with attention statistics) and how often each head's gate
// keeps fact and filler keys (from a gated run), recomputed by scripts/retrieval_heads.py from fresh logs.
TEST(DefaultModel, RetrievingHeadsKeepFactsOverFillerAsReported) {
  if (!std::filesystem::exists(kDir + "/study/retrieval.json")) GTEST_SKIP() << kDir << "/study/retrieval.json is absent";
  if (std::system("/usr/bin/python3 -c 'import h5py' 2>/dev/null") != 0) GTEST_SKIP() << "/usr/bin/python3 has no h5py";
  const auto want = nlohmann::json::parse(test::read_file(kDir + "/study/retrieval.json"));
  test::TempDir tmp;
  const std::string tasks = test::quote(kDir + "/heldout/tasks.jsonl");
  const auto run = [&](const std::string& flags, const std::string& out) {
    const auto r = test::run_spkv("run -m " + test::quote(kDir) + " --max-docs 200 " + flags + " --out " +
                                  test::quote(tmp / out) + " " + tasks);
    EXPECT_EQ(r.exit_code, 0) << r.err;
  };
  run("--dense --attention-stats", "dense.h5");
  run("", "gated.h5");
  const std::string cmd = "/usr/bin/python3 " + test::quote(std::string(SPKV_SOURCE_DIR) + "/scripts/retrieval_heads.py") +
                          " " + tasks + " " + test::quote(tmp / "dense.h5") + " " + test::quote(tmp / "gated.h5") +
                          " --json " + test::quote(tmp / "r.json") + " > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const auto got = nlohmann::json::parse(test::read_file(tmp / "r.json"));
  for (const char* pooled : {"pooled_keep_facts", "pooled_keep_filler"})
    EXPECT_NEAR(got[pooled].get<double>(), want[pooled].get<double>(), kKeepRateTol) << pooled;
  EXPECT_EQ(got["retrieving"], want["retrieving"]);
  for (const char* rate : {"keep_facts", "keep_filler"}) expect_grid_near(got[rate], want[rate], kKeepRateTol, 0, rate);
  expect_grid_near(got["retrieval_score"], want["retrieval_score"], 0, 1e-4, "retrieval_score");
}

}  // namespace
}  // namespace spkv
