// What the subcommand groups of `spkv-torch` share beyond cli_base.h: the evaluation-time overrides, the
// stop signals, and one registration function per group (each in its own file). Not the commands' work,
// which the libraries do; main() is in spkv_torch.cpp.
#pragma once
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/base/errors.h"
#include "core/dist/process_group.h"
#include "core/model/model.h"
#include "core/text/tokenizer.h"
#include "tools/cli_base.h"

namespace spkv::cli {

// Evaluation-time changes to a loaded model: the SP-KV threshold, a sliding window that hides every key
// beyond it (the local-only ablation of any model), or a hybrid layout imposed instead of the gates (the
// ablation of chosen heads). Defined in cmd_model.cpp.
struct EvalOverrides {
  double tau = 0;      // 0 = the model's
  int64_t window = 0;  // 0 = the model's attention
  std::string layout;  // a layout file (spkv layout derive, docs/layouts.md); "" = none
  std::string policy, budget = "matched";  // an eviction baseline instead (spkv compare with one policy)
  void add(CLI::App* app);
  void apply(LlamaForCausalLM& model, const std::string& path) const;
  // With --policy: `spkv compare` of that policy on INPUT (text or a task file); returns false without.
  bool compare_instead(const ModelArgs& a, const std::string& input, const std::string& separator, int64_t max_docs,
                       const std::string& json, dist::Group* group) const;
};

// --rank, --world-size, --master and --dist-timeout: a launch by hand (torchrun's and Slurm's environments
// need no flags), and the process group it forms: null for one process (docs/distributed.md). cmd_dist.cpp.
void add_launch_flags(CLI::App* app, dist::LaunchFlags& flags, double& timeout_s);
std::unique_ptr<dist::Group> join_launch(const dist::LaunchFlags& flags, double timeout_s);

// Ctrl-C (SIGINT) and a batch scheduler's SIGTERM ask run and train to stop after the current document or
// step, leaving what resumes; a second signal stops at once. A command stopped so exits 128 + the signal.
extern std::atomic<bool> g_stop;
extern std::atomic<int> g_signal;
void catch_stop_signals();

void add_model_commands(CLI::App& app, Commands& out);   // generate, eval, convert (cmd_model.cpp)
void add_data_commands(CLI::App& app, Commands& out);    // tokenize, train-tokenizer, tasks (cmd_data.cpp)
void add_train_commands(CLI::App& app, Commands& out);   // train, toy (cmd_train.cpp)
void add_log_commands(CLI::App& app, Commands& out);     // run, merge, analyze, check (cmd_logs.cpp)
void add_layout_commands(CLI::App& app, Commands& out);  // layout derive | eval | export (layout.cpp)
void add_compare_command(CLI::App& app, Commands& out);  // compare (compare.cpp)
void add_bench_commands(CLI::App& app, Commands& out);   // bench decode | run | kernels | threads (bench*.cpp)
void add_dist_commands(CLI::App& app, Commands& out);    // dist check (cmd_dist.cpp)

}  // namespace spkv::cli
