// The reduced reversal toy task, end to end through `spkv toy reversal` (about a minute on 2 cores):
// full attention and SP-KV learn it, a window alone cannot, and the gates keep the numbers, not the filler.
// The reduced task reverses 8 numbers over 16-24 filler tokens with a window of 8; the full-size run
// (32 numbers, >= 50 filler, W = 32) is in docs/results.md.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/train/toy_reversal.h"
#include "tests/test_util.h"

namespace spkv {
namespace {
using json = nlohmann::json;

TEST(ToyReversal, GeneratedSequencesFollowTheTask) {
  ReversalTask task;
  Batch b = task.make_batch(5, 42);
  ASSERT_EQ(b.tokens.size(1), task.seq_len() + 1);
  for (int64_t r = 0; r < 5; ++r) {
    auto t = b.tokens[r];
    EXPECT_EQ(t[0].item<int64_t>(), ReversalTask::kBos);
    EXPECT_EQ(t[33].item<int64_t>(), ReversalTask::kSep);
    int64_t ans = 34;
    while (t[ans].item<int64_t>() != ReversalTask::kAns) {
      EXPECT_GE(t[ans].item<int64_t>(), ReversalTask::kFirstFiller);
      ++ans;
    }
    EXPECT_GE(ans - 34, 50);  // at least 50 filler tokens
    std::set<int64_t> distinct;
    for (int64_t i = 0; i < 32; ++i) {
      EXPECT_EQ(t[ans + 1 + i].item<int64_t>(), t[32 - i].item<int64_t>());  // reversed
      distinct.insert(t[1 + i].item<int64_t>());
    }
    EXPECT_EQ(distinct.size(), 32u);
    EXPECT_EQ(b.loss_mask[r].sum().item<int64_t>(), 32);  // loss only where the next token is an answer
    EXPECT_TRUE(b.loss_mask[r][ans].item<bool>());
    EXPECT_FALSE(b.loss_mask[r][ans - 1].item<bool>());
  }
}

TEST(ToyReversal, SpkvLearnsWhatTheWindowCannotAndKeepsTheNumbers) {
  test::TempDir dir;
  auto r = test::run_spkv("toy reversal --out " + test::quote(dir / "toy") +
                          " --steps 800 --eval-every 200 --numbers 8 --min-filler 16 --max-filler 24 --window 8");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json res = json::parse(test::read_file(dir / "toy/results.json"))["variants"];
  const double full = res["full"]["final"]["token_acc"], window = res["window"]["final"]["token_acc"],
               sp = res["spkv"]["final"]["token_acc"];
  const double keep_num = res["spkv"]["final"]["keep_numbers"], keep_fill = res["spkv"]["final"]["keep_filler"];
  EXPECT_GT(full, 0.9);
  EXPECT_LT(window, 0.2);  // chance is 1/100; the window cannot see the numbers
  EXPECT_GT(sp, window + 0.4);
  EXPECT_GT(keep_num, 0.6);
  EXPECT_GT(keep_num, 2 * keep_fill);
  EXPECT_NE(r.out.find("keep numbers"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace spkv
