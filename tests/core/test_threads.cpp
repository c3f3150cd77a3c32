// The automatic thread policy (core/base/threads.h) against a real busy process: a spinning child must be
// counted as busy elsewhere, and the automatic count must leave its core to it; a fixed count never moves.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <thread>

#include <omp.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/base/threads.h"

namespace spkv {
namespace {

TEST(Threads, ABusyProcessIsCountedAndItsCoreLeftToIt) {
  const int usable = threads::usable_cores();
  ASSERT_GE(usable, 1);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    for (volatile uint64_t i = 0;; i = i + 1) {
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const int busy = threads::busy_elsewhere();
  const int chosen = threads::configure(0);
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  EXPECT_GE(busy, 1) << "the spinning child is always runnable";
  EXPECT_LE(chosen, std::max(1, usable - 1));
  EXPECT_GE(chosen, 1);
  EXPECT_EQ(omp_get_max_threads(), chosen) << "the count is applied";
  EXPECT_EQ(threads::current(), chosen);
}

TEST(Threads, AFixedCountStaysFixed) {
  EXPECT_EQ(threads::configure(3), 3);
  EXPECT_EQ(omp_get_max_threads(), 3);
  EXPECT_EQ(threads::rebalance(0.0), 3);
  EXPECT_EQ(threads::current(), 3);
  threads::configure(0);
  EXPECT_GE(threads::rebalance(0.0), 1);
  EXPECT_LE(threads::current(), threads::usable_cores());
}

}  // namespace
}  // namespace spkv
