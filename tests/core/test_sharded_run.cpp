// Sharded `spkv run` (docs/distributed.md): the token-balanced assignment against a brute-force search;
// three real processes launched as torchrun launches them write the log that one process writes, equal in
// every dataset (compared by h5py, not by our reader); a rank that fails stops the launch with a message
// naming it, and --resume finishes the launch; shards of a job array merge offline with `spkv merge`, which
// rejects shards that are not one whole run; `spkv eval`, `spkv tasks eval` and `spkv layout eval` over a
// launch report what one process reports.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <random>

#include "core/text/documents.h"
#include "tests/core/launch.h"
#include "tests/test_util.h"

namespace spkv {
namespace {
using json = nlohmann::json;
namespace fs = std::filesystem;

TEST(Sharding, BalancedRangesPutEachBoundaryNearestItsShareAndCoverEveryDocument) {
  std::mt19937 rng(5);
  for (size_t n : {1, 2, 7, 13, 31})
    for (int64_t parts : {1, 2, 3, 5, 8}) {
      std::vector<int64_t> tokens(n);
      for (auto& t : tokens) t = rng() % 4 == 0 ? 0 : 1 + int64_t(rng() % 600);  // empty pieces make plateaus
      const auto b = balanced_ranges(tokens, parts);
      ASSERT_EQ(b.size(), size_t(parts) + 1);
      EXPECT_EQ(b.front(), 0u);
      EXPECT_EQ(b.back(), n);
      std::vector<double> prefix{0};
      for (auto t : tokens) prefix.push_back(prefix.back() + double(t));
      for (int64_t k = 1; k < parts; ++k) {
        EXPECT_LE(b[size_t(k) - 1], b[size_t(k)]);
        // Brute force: the earliest boundary whose token count is nearest k/parts of the total.
        const double target = prefix.back() * double(k) / double(parts);
        size_t best = 0;
        for (size_t i = 1; i <= n; ++i)
          if (std::abs(prefix[i] - target) < std::abs(prefix[best] - target) - 1e-9) best = i;
        EXPECT_EQ(b[size_t(k)], std::max(best, b[size_t(k) - 1])) << "n " << n << " parts " << parts << " k " << k;
      }
    }
  EXPECT_EQ(balanced_ranges({10, 0, 10}, 2), (std::vector<size_t>{0, 1, 3}));  // the tie goes to the earlier boundary
  EXPECT_EQ(balanced_ranges({5, 5, 5, 5, 100}, 2), (std::vector<size_t>{0, 4, 5}));
}

const std::string kModel = std::string(SPKV_SOURCE_DIR) + "/data/models/spkv-default";

std::string run_args(const std::string& out, const std::string& extra = "", const std::string& model = kModel) {
  return "run -m " + test::quote(model) + " --max-docs 9 --out " + test::quote(out) + " " + extra + " " +
         test::quote(kModel + "/heldout/tasks.jsonl");
}

// Every dataset and root attribute (but `created`) of two logs, compared by h5py (compare_gate_logs.py).
void expect_same_log(const std::string& a, const std::string& b) {
  test::TempDir tmp;
  const std::string cmd = "/usr/bin/python3 " + test::quote(std::string(SPKV_SOURCE_DIR) + "/tests/core/compare_gate_logs.py") +
                          " " + test::quote(a) + " " + test::quote(b) + " > " + (tmp / "out");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const json j = json::parse(test::read_file(tmp / "out"));
  EXPECT_GE(j["datasets"].get<int>(), 19) << j.dump();
  for (const char* k : {"only_in_a", "only_in_b", "differ", "attributes_differ"})
    EXPECT_TRUE(j[k].empty()) << a << " against " << b << ": " << k << " " << j[k].dump();
}

// The log of one process, written once for the tests below.
const std::string& single_process_log() {
  static test::TempDir dir;
  static const std::string path = dir / "one.h5";
  if (!fs::exists(path)) {
    const auto r = test::run_spkv("--threads 1 " + run_args(path));
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
  return path;
}

TEST(ShardedRun, ThreeRanksWriteTheLogThatOneProcessWrites) {
  test::TempDir dir;
  const std::string out = dir / "three.h5";
  const auto rs = test::launch(3, run_args(out));
  for (int r = 0; r < 3; ++r) EXPECT_EQ(rs[r].exit_code, 0) << "rank " << r << ": " << rs[r].err;
  EXPECT_NE(rs[0].out.find("merged 3 shards into " + out + " (9 documents"), std::string::npos) << rs[0].out;
  expect_same_log(single_process_log(), out);
  test::expect_valid_log(out);
  // The manifest: contiguous ranges in document order, every document once; the shards are gone.
  const json m = json::parse(test::read_file(dir / "three.manifest.json"));
  int64_t next = 0;
  for (const json& s : m["shards"]) {
    EXPECT_EQ(s["first_document"].get<int64_t>(), next);
    next += s["documents"].get<int64_t>();
    EXPECT_FALSE(fs::exists(s["file"].get<std::string>())) << "rank 0 removes the shard logs after the merge";
  }
  EXPECT_EQ(next, 9);
  const auto st = test::run_spkv("run --status --out " + test::quote(out));
  EXPECT_EQ(st.exit_code, 0) << st.err;
  EXPECT_NE(st.out.find("9/9 (100%)"), std::string::npos) << st.out;
  EXPECT_NE(st.out.find(out + ": merged, complete"), std::string::npos) << st.out;
}

TEST(ShardedRun, AFailedRankStopsTheLaunchNamingItAndResumeFinishesIt) {
  test::TempDir dir;
  const std::string out = dir / "x.h5";
  // Rank 2 joins the group, then fails on its model; ranks 0 and 1 write their shards and wait for it.
  auto rs = test::launch({run_args(out), run_args(out), run_args(out, "", dir / "no-model")});
  EXPECT_EQ(rs[2].exit_code, 1);
  EXPECT_NE(rs[2].err.find("no-model"), std::string::npos) << rs[2].err;
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(rs[r].exit_code, 1) << "rank " << r << ": " << rs[r].out;
    EXPECT_NE(rs[r].err.find("rank 2 stopped"), std::string::npos) << "rank " << r << ": " << rs[r].err;
    const size_t e = rs[r].err.find("spkv: error: ");  // after its progress bar: one line, the last
    EXPECT_NE(e, std::string::npos) << rs[r].err;
    EXPECT_EQ(rs[r].err.find('\n', e), rs[r].err.size() - 1) << "one line: " << rs[r].err;
  }
  EXPECT_FALSE(fs::exists(out));
  auto st = test::run_spkv("run --status --out " + test::quote(out));
  EXPECT_EQ(st.exit_code, 0) << st.err;
  EXPECT_NE(st.out.find("not merged yet"), std::string::npos) << st.out;
  EXPECT_NE(st.out.find("waiting"), std::string::npos) << "shard 2 never started: " << st.out;
  // The same launch with --resume: shards 0 and 1 are done, shard 2 runs, rank 0 merges.
  rs = test::launch(3, run_args(out, "--resume"));
  for (int r = 0; r < 3; ++r) EXPECT_EQ(rs[r].exit_code, 0) << "rank " << r << ": " << rs[r].err;
  EXPECT_NE(rs[1].err.find("already complete"), std::string::npos) << rs[1].err;
  expect_same_log(single_process_log(), out);
}

TEST(ShardedRun, JobArrayShardsMergeOfflineAndMergeRejectsWhatIsNotOneWholeRun) {
  test::TempDir dir;
  const std::string out = dir / "a.h5";
  std::vector<std::string> shard;
  for (int i = 0; i < 3; ++i) {
    const auto r = test::run_spkv("--threads 1 " + run_args(out, "--shard " + std::to_string(i) + "/3"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    shard.push_back(dir / ("a.shard-0000" + std::to_string(i) + "-of-00003.h5"));
    ASSERT_TRUE(fs::exists(shard.back())) << r.out;
  }
  auto st = test::run_spkv("run --status --out " + test::quote(out));
  EXPECT_NE(st.out.find("to merge"), std::string::npos) << st.out;
  const auto other = test::run_spkv("--threads 1 " + run_args(dir / "b.h5", "--shard 1/3 --tau 0.4"));
  ASSERT_EQ(other.exit_code, 0) << other.err;
  fs::copy_file(shard[2], dir / "cut.h5");  // a shard whose run stopped early
  ASSERT_EQ(std::system(("/usr/bin/python3 -c \"import h5py, numpy; h5py.File('" + (dir / "cut.h5") +
                         "', 'r+').attrs['complete'] = numpy.int32(0)\"").c_str()), 0);
  const std::string m = dir / "m.h5";
  auto merge = [&](const std::vector<std::string>& files) {
    std::string args = "merge --out " + test::quote(m);
    for (auto& f : files) args += " " + test::quote(f);
    return test::run_spkv(args);
  };
  const std::pair<std::vector<std::string>, std::string> bad[] = {
      {{shard[0], shard[1]}, "shard 2 of 3 is missing"},
      {{shard[0], shard[1], shard[1], shard[2]}, "is shard 1 of 3, and so is"},
      {{shard[0], dir / "b.shard-00001-of-00003.h5", shard[2]}, "its tau differs"},
      {{shard[0], shard[1], dir / "cut.h5"}, "the shard is incomplete"},
      {{single_process_log()}, "not a shard log"},
  };
  for (auto& [files, message] : bad) {
    const auto r = merge(files);
    EXPECT_EQ(r.exit_code, 1) << message;
    EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_FALSE(fs::exists(m) || fs::exists(m + ".partial")) << message << ": a rejected merge writes nothing";
  }
  const auto r = merge({shard[2], shard[0], shard[1]});  // any order
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_same_log(single_process_log(), m);
  st = test::run_spkv("run --status --out " + test::quote(dir / "nothing.h5"));
  EXPECT_EQ(st.exit_code, 1);
  EXPECT_NE(st.err.find("no manifest"), std::string::npos) << st.err;
}

// `spkv eval`, `spkv tasks eval` and `spkv layout eval` over a launch: three ranks score shares of the
// documents, and rank 0
// prints and writes exactly what one process does (the NLL summed in document order, the intervals over
// every document, the tallies and gate counts summed).
TEST(ShardedEval, ThreeRanksReportWhatOneProcessReports) {
  test::TempDir dir;
  const std::string m = test::quote(kModel);
  const std::string eval = "eval -m " + m + " --max-docs 4 " + test::quote(kModel + "/heldout/text") + " --json ";
  const std::string tasks = "tasks eval -m " + m + " --max-docs 40 " + test::quote(kModel + "/heldout/tasks.jsonl") + " --json ";
  const auto derive = test::run_spkv("layout derive " + test::quote(single_process_log()) + " --budget 4 --out " + test::quote(dir / "layouts"));
  ASSERT_EQ(derive.exit_code, 0) << derive.err;
  const std::string layout = "layout eval -m " + m + " " + test::quote(dir / "layouts/guided.json") + " --max-docs 6 --corpus " +
                             test::quote(kModel + "/heldout/tasks.jsonl") + " --json ";
  for (const auto& [args, name] : {std::pair{eval, std::string("eval")}, std::pair{tasks, std::string("tasks")},
                                   std::pair{layout, std::string("layout")}}) {
    const auto one = test::run_spkv("--threads 1 " + args + test::quote(dir / (name + "-one.json")));
    ASSERT_EQ(one.exit_code, 0) << one.err;
    const auto three = test::launch(3, args + test::quote(dir / (name + "-three.json")));
    for (int r = 0; r < 3; ++r) ASSERT_EQ(three[r].exit_code, 0) << name << " rank " << r << ": " << three[r].err;
    EXPECT_EQ(three[0].out, one.out) << name;
    EXPECT_TRUE(three[1].out.empty() && three[2].out.empty()) << name << ": rank 0 reports";
    EXPECT_EQ(json::parse(test::read_file(dir / (name + "-three.json"))), json::parse(test::read_file(dir / (name + "-one.json"))))
        << name;
  }
}

}  // namespace
}  // namespace spkv
