// The CPU thread policy (threads.h), from /proc on Linux.
#include "core/base/threads.h"

#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <dirent.h>
#include <fstream>
#include <string>
#include <thread>

namespace spkv::threads {
namespace {
using clock_type = std::chrono::steady_clock;

void (*g_apply)(int) = omp_set_num_threads;
int g_fixed = 0;  // > 0: --threads
int g_current = 1;
clock_type::time_point g_chosen;

// /proc/stat's procs_running: runnable tasks on the whole machine, this process's included. -1: unknown.
int procs_running() {
  std::ifstream in("/proc/stat");
  std::string key;
  long value = 0;
  while (in >> key) {
    if (key == "procs_running" && in >> value) return int(value);
    in.ignore(1 << 20, '\n');
  }
  return -1;
}

// This process's threads in state R (running or runnable), from /proc/self/task/*/stat.
int own_running() {
  int n = 0;
  if (DIR* dir = opendir("/proc/self/task")) {
    while (dirent* e = readdir(dir)) {
      if (e->d_name[0] == '.') continue;
      std::ifstream in(std::string("/proc/self/task/") + e->d_name + "/stat");
      std::string stat;
      std::getline(in, stat);
      const size_t close = stat.rfind(')');  // "pid (comm) S ...": the state follows the command name
      if (close != std::string::npos && close + 2 < stat.size() && stat[close + 2] == 'R') ++n;
    }
    closedir(dir);
  }
  return n;
}
}  // namespace

int usable_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

int busy_elsewhere() {
  int fewest = -1;
  for (int i = 0; i < 8; ++i) {
    if (i) std::this_thread::sleep_for(std::chrono::microseconds(500));
    const int all = procs_running();
    if (all < 0) return 0;
    const int others = std::max(0, all - own_running());
    fewest = fewest < 0 ? others : std::min(fewest, others);
  }
  return std::max(0, fewest);
}

int choose() { return std::max(1, usable_cores() - busy_elsewhere()); }

int configure(int fixed, void (*apply)(int)) {
  g_apply = apply ? apply : omp_set_num_threads;
  g_fixed = fixed;
  g_current = fixed > 0 ? fixed : choose();
  g_chosen = clock_type::now();
  g_apply(g_current);
  return g_current;
}

int rebalance(double interval_s) {
  if (g_fixed > 0 || std::chrono::duration<double>(clock_type::now() - g_chosen).count() < interval_s) return g_current;
  const int n = choose();
  g_chosen = clock_type::now();
  if (n != g_current) g_apply(g_current = n);
  return g_current;
}

int current() { return g_current; }

}  // namespace spkv::threads
