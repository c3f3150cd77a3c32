// `spkv-torch`, the half of the command line that links LibTorch: every subcommand, registered by group
// (tools/cli.h: info.cpp, cmd_model.cpp, cmd_data.cpp, cmd_train.cpp, cmd_logs.cpp, layout.cpp, bench.cpp,
// cmd_dist.cpp). `spkv` (spkv.cpp) runs it for every command but --help, --version and info. This file holds
// main(): the global flags, the parse, and the one place that turns exceptions into messages and exit codes.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <dlfcn.h>
#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <thread>

#include "core/base/threads.h"
#include "tools/cli.h"

namespace spkv::cli {

std::atomic<bool> g_stop{false};
std::atomic<int> g_signal{0};

namespace {
void on_stop_signal(int sig) {
  g_signal = sig;
  g_stop = true;
  std::signal(sig, SIG_DFL);
}
}  // namespace

void catch_stop_signals() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

}  // namespace spkv::cli

namespace {

// OpenBLAS's own threads fight LibTorch's intra-op threads; at this project's model sizes one BLAS thread
// is faster (docs/results.md, "CPU threads"). Looked up at run time: the BLAS may not be OpenBLAS.
void set_blas_threads(int n) {
  using Fn = void (*)(int);
  if (auto f = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(n);
}

// Keep freed tensor memory in the heap instead of handing it back to the kernel after every step. glibc
// serves blocks above 32 MiB (the most M_MMAP_THRESHOLD accepts) with mmap and unmaps them on free, so each
// training step's largest tensors ((B, H, T, T) attention: 128 MiB at batch 16, T 512) came back as fresh
// pages, zeroed on first touch: page faults took a third of the time and batch 16 trained 5x slower per
// token than batch 4 (docs/results.md, "CPU performance", item 8). glibc's own environment variables win.
void keep_freed_memory() {
  if (!std::getenv("MALLOC_MMAP_MAX_")) mallopt(M_MMAP_MAX, 0);
  if (!std::getenv("MALLOC_TRIM_THRESHOLD_")) mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
}

std::string one_line(std::string s) {
  const size_t nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace spkv::cli;
  CLI::App app;
  GlobalOptions global;
  setup_top_level(app, global);
  Commands commands;
  add_info_command(app, commands);
  add_model_commands(app, commands);
  add_train_commands(app, commands);
  add_data_commands(app, commands);
  add_log_commands(app, commands);
  add_layout_commands(app, commands);
  add_compare_command(app, commands);
  add_bench_commands(app, commands);
  add_dist_commands(app, commands);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  bool complete = true;  // false: a stop signal ended run or train early
  try {
    spkv::threads::configure(global.threads, [](int n) { at::set_num_threads(n); });
    set_blas_threads(global.blas_threads);
    keep_freed_memory();
    for (const Command& c : commands)
      if (*c.app) complete = c.run() && complete;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "spkv: error: %s\n", one_line(e.what()).c_str());
    return 1;
  }
  if (!complete && g_signal != 0) {
    std::fflush(stdout);
    std::fprintf(stderr, "spkv: stopped by %s\n", g_signal == SIGTERM ? "SIGTERM" : "SIGINT");
    return 128 + g_signal;
  }
  return 0;
}
