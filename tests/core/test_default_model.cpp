// The bundled default model (data/models/spkv-default): `spkv eval` on its held-out split reproduces the
// NLL and density its results.json reports (the numbers in docs/results.md).
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

}  // namespace
}  // namespace spkv
