// Process groups over c10d (core/dist/process_group.h): launch environments resolved as torchrun, Slurm and
// flags set them; and real `spkv dist check` processes on loopback, started together the way torchrun
// starts them: the group forms and its collectives agree; a rank killed mid-run makes the others fail
// within the timeout with an error that names it.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <map>

#include "core/base/errors.h"
#include "core/dist/process_group.h"
#include "tests/core/launch.h"
#include "tests/test_util.h"

namespace spkv {
namespace {

// Sets environment variables for one scope, and clears every launch variable first.
using Vars = std::map<std::string, std::string>;
struct Env {
  explicit Env(const Vars& vars) {
    for (const char* n : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                          "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_NODELIST"})
      unsetenv(n);
    for (auto& [k, v] : vars) setenv(k.c_str(), v.c_str(), 1), set.push_back(k);
  }
  ~Env() {
    for (auto& k : set) unsetenv(k.c_str());
  }
  std::vector<std::string> set;
};

TEST(Dist, LaunchesResolveFromFlagsTorchrunAndSlurm) {
  {
    Env e(Vars{});
    const auto l = dist::resolve_launch();
    EXPECT_EQ(l.source, "single");
    EXPECT_EQ(l.world_size, 1);
  }
  {
    Env e(Vars{{"RANK", "2"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "0"}, {"MASTER_ADDR", "10.0.0.7"}, {"MASTER_PORT", "29611"}});
    const auto l = dist::resolve_launch();
    EXPECT_EQ(l.source, "torchrun");
    EXPECT_EQ(l.rank, 2);
    EXPECT_EQ(l.world_size, 4);
    EXPECT_EQ(l.master_addr, "10.0.0.7");
    EXPECT_EQ(l.master_port, 29611);
    dist::LaunchFlags f;  // flags win over the environment
    f.rank = 1, f.world_size = 3, f.master = "host-a:1234";
    const auto lf = dist::resolve_launch(f);
    EXPECT_EQ(lf.source, "flags");
    EXPECT_EQ(lf.rank, 1);
    EXPECT_EQ(lf.master_addr, "host-a");
    EXPECT_EQ(lf.master_port, 1234);
  }
  {
    Env e(Vars{{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"}, {"SLURM_JOB_NODELIST", "gpu[017-020,031],cpu1"}});
    const auto l = dist::resolve_launch();
    EXPECT_EQ(l.source, "slurm");
    EXPECT_EQ(l.rank, 5);
    EXPECT_EQ(l.local_rank, 1);
    EXPECT_EQ(l.master_addr, "gpu017");
    EXPECT_EQ(l.master_port, 29500);
  }
  EXPECT_EQ(dist::first_slurm_host("node7,node8"), "node7");
  EXPECT_EQ(dist::first_slurm_host("a[3,5]"), "a3");
  EXPECT_EQ(dist::first_slurm_host("solo"), "solo");
  {
    Env e(Vars{{"RANK", "4"}, {"WORLD_SIZE", "4"}});
    try {
      dist::resolve_launch();
      FAIL() << "rank 4 of 4 must be rejected";
    } catch (const ConfigError& err) {
      EXPECT_NE(std::string(err.what()).find("rank 4 is outside [0, 4) (torchrun)"), std::string::npos) << err.what();
    }
  }
  {
    Env e(Vars{{"WORLD_SIZE", "2"}});
    EXPECT_THROW(dist::resolve_launch(), ConfigError);
  }
  {
    Env e(Vars{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "http"}});
    EXPECT_THROW(dist::resolve_launch(), ConfigError);
  }
}

TEST(Dist, TwoRanksFormAGroupAndTheirCollectivesAgree) {
  const auto rs = test::launch(2, "dist check --timeout 30");
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(rs[r].exit_code, 0) << "rank " << r << ": " << rs[r].err;
    EXPECT_NE(rs[r].out.find("rank " + std::to_string(r) + " of 2 (local rank " + std::to_string(r) + ", torchrun"),
              std::string::npos) << rs[r].out;
    EXPECT_NE(rs[r].out.find("agree across 2 ranks"), std::string::npos) << rs[r].out;
  }
}

TEST(Dist, AKilledRankMakesTheOthersFailWithinTheTimeoutNamingIt) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto rs = test::launch(3, "dist check --timeout 20 --hold 6", /*kill_rank=*/2, "rank 2 of 3: in the group");
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(rs[2].exit_code, 137);  // timeout passes on 128 + SIGKILL
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(rs[r].exit_code, 1) << "rank " << r << ": " << rs[r].out;
    EXPECT_NE(rs[r].err.find("rank 2 stopped"), std::string::npos) << "rank " << r << ": " << rs[r].err;
    EXPECT_EQ(rs[r].err.find('\n'), rs[r].err.size() - 1) << "one line: " << rs[r].err;
  }
  EXPECT_LT(took, 30) << "the survivors gave up well within the 20 s timeout plus the hold";
}

}  // namespace
}  // namespace spkv
