// What the subcommand groups of the `spkv` command line share: the model flags, the evaluation-time
// overrides, a registered subcommand, the stop signals, and one registration function per group (each in
// its own file). Not the commands' work, which the libraries do; main() is in spkv.cpp.
#pragma once
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/base/errors.h"
#include "core/model/model.h"
#include "core/text/tokenizer.h"

namespace spkv::cli {

struct ModelArgs {
  std::string model, tokenizer;
  void add(CLI::App* app) {
    app->add_option("--model,-m", model, "llama2.c .bin file or Hugging Face model directory")->required();
    app->add_option("--tokenizer,-t", tokenizer, "tokenizer file (default: found beside the model)");
  }
  std::unique_ptr<Tokenizer> load_tokenizer_for(const ModelConfig& c) const {
    auto tok = load_tokenizer(tokenizer.empty() ? default_tokenizer_path(model) : tokenizer);
    if (tok->vocab_size() > c.vocab_size)
      throw TokenizerError(tok->path, fmt::format("has {} tokens but the model's vocab_size is {}",
                                                  tok->vocab_size(), c.vocab_size));
    return tok;
  }
};

// Evaluation-time changes to a loaded model: the SP-KV threshold, a sliding window that hides every key
// beyond it (the local-only ablation of any model), or a hybrid layout imposed instead of the gates (the
// ablation of chosen heads). Defined in cmd_model.cpp.
struct EvalOverrides {
  double tau = 0;      // 0 = the model's
  int64_t window = 0;  // 0 = the model's attention
  std::string layout;  // a layout file (spkv layout derive, docs/layouts.md); "" = none
  void add(CLI::App* app);
  void apply(LlamaForCausalLM& model, const std::string& path) const;
};

// A subcommand and what runs it once the arguments are parsed. run returns false when a stop signal ended
// the work early (the exit code then says which signal).
struct Command {
  CLI::App* app;
  std::function<bool()> run;
};
using Commands = std::vector<Command>;
// Options that outlive the parse: bound to CLI11 by reference and read by the command's run.
template <class T>
std::shared_ptr<T> options() { return std::make_shared<T>(); }

// Ctrl-C (SIGINT) and a batch scheduler's SIGTERM ask run and train to stop after the current document or
// step, leaving what resumes; a second signal stops at once. A command stopped so exits 128 + the signal.
extern std::atomic<bool> g_stop;
extern std::atomic<int> g_signal;
void catch_stop_signals();

void add_model_commands(CLI::App& app, Commands& out);   // info, generate, eval, convert (cmd_model.cpp)
void add_data_commands(CLI::App& app, Commands& out);    // tokenize, train-tokenizer, tasks (cmd_data.cpp)
void add_train_commands(CLI::App& app, Commands& out);   // train, toy (cmd_train.cpp)
void add_log_commands(CLI::App& app, Commands& out);     // run, analyze, check (cmd_logs.cpp)
void add_layout_commands(CLI::App& app, Commands& out);  // layout derive | eval | export (layout.cpp)
void add_bench_commands(CLI::App& app, Commands& out);   // bench decode | run | kernels | threads (bench*.cpp)
void add_dist_commands(CLI::App& app, Commands& out);    // dist check (cmd_dist.cpp)

}  // namespace spkv::cli
