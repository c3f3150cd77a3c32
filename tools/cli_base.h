// What the two binaries of the command line share, torch-free: the top-level commands and their one-line
// descriptions, the global flags, the model flags, and `spkv info`. `spkv` (spkv.cpp) answers --help,
// --version and info itself and hands every other command to `spkv-torch` (spkv_torch.cpp), which links
// LibTorch; both build their top level from this file, so their help is the same text.
#pragma once
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/base/errors.h"
#include "core/model/config.h"
#include "core/text/tokenizer.h"
#include "tools/build_info.h"

namespace spkv::cli {

// The top-level commands, in the order --help lists them.
struct CommandName {
  const char* name;
  const char* description;
};
inline constexpr CommandName kCommands[] = {
    {"info", "show a model's config, parameter count and tokenizer"},
    {"generate", "continue a prompt; prints prompt + continuation on stdout"},
    {"eval", "mean NLL per token and perplexity over a text file or folder"},
    {"convert", "write a model as a Hugging Face-style directory"},
    {"train", "train or adapt a model from a recipe (JSON); see docs/training.md"},
    {"toy", "toy tasks that separate the mechanisms"},
    {"tokenize", "tokenize text into memory-mapped train.tok and val.tok files"},
    {"train-tokenizer", "train a SentencePiece tokenizer (.model) on text or JSONL documents"},
    {"tasks", "long-range tasks: key-value lookup, needle, reversal, copy"},
    {"run", "run an SP-KV model over a corpus through the KV cache; log every gate decision to HDF5"},
    {"merge", "merge the shard logs of a sharded spkv run into one gate log, in document order"},
    {"analyze", "density with spread, compression against length, and a tau sweep from gate logs"},
    {"check", "verify every invariant of gate logs (docs/hdf5-schema.md); exit 1 at the first violation"},
    {"layout", "hybrid local-global layouts: derive from gate logs, evaluate, export"},
    {"compare", "eviction baselines (H2O, TOVA, SnapKV, StreamingLLM, ...) against SP-KV and full attention at a matched KV budget"},
    {"bench", "benchmarks: SP-KV against dense in the same process"},
    {"dist", "distributed runs over torch.distributed (c10d): launch checks"},
};

// The subcommand `name` of kCommands, with its description.
inline CLI::App* add_command(CLI::App& app, const std::string& name) {
  for (const CommandName& c : kCommands)
    if (name == c.name) return app.add_subcommand(c.name, c.description);
  throw std::logic_error("spkv: command '" + name + "' is missing from kCommands (tools/cli_base.h)");
}

// The global flags, read by spkv-torch's main().
struct GlobalOptions {
  int threads = 0;  // automatic (core/base/threads.h)
  int blas_threads = 1;
};

// The top level of either binary: title, --version, the global flags; its commands are added after.
inline void setup_top_level(CLI::App& app, GlobalOptions& g) {
  app.description("spkv: Self-Pruned KV attention toolkit");
  app.set_version_flag("--version", std::string(spkv_version()) + " (" + spkv_git_commit() + ")");
  app.require_subcommand(1);
  app.add_option("--threads", g.threads,
                 "CPU threads (default: automatic, the cores that other processes leave free, re-chosen as that changes)")
      ->check(CLI::PositiveNumber);
  app.add_option("--blas-threads", g.blas_threads, "OpenBLAS threads inside each matmul")->check(CLI::PositiveNumber);
}

// The global flags that take a value (spkv.cpp skips them to find the command).
inline constexpr const char* kValueFlags[] = {"--threads", "--blas-threads"};

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

void add_info_command(CLI::App& app, Commands& out);  // info (info.cpp)

}  // namespace spkv::cli
