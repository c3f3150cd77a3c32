// `spkv bench threads`: every inference path of the engine at one thread, at every core, and under the
// automatic thread policy (core/base/threads.h), on a quiet machine and beside a one-core busy loop that the
// benchmark starts and stops itself. Each speed is a ratio against one thread on the quiet machine, measured
// in the same invocation, configurations interleaved, the median of --reps. Not a unit test: docs/results.md
// states the targets (beside the busy loop every path at >= 0.8x its one-thread speed; quiet, more threads
// never slower than one).
#include <fmt/core.h>
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (fmt 11, which PyTorch's LibTorch bundles, has it only here)
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <map>
#include <thread>

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/base/errors.h"
#include "core/base/json_text.h"
#include "core/base/threads.h"
#include "core/infer/engine.h"
#include "core/infer/generate.h"
#include "core/model/safetensors.h"
#include "core/text/documents.h"
#include "core/text/tokenizer.h"
#include "tools/bench.h"

namespace spkv {
namespace {
using clock_type = std::chrono::steady_clock;

// A child process that spins on one core until stopped (or until this process dies).
class BusyLoop {
 public:
  BusyLoop() {
    pid_ = fork();
    if (pid_ < 0) throw Error("bench threads: fork failed");
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      for (volatile uint64_t i = 0;; i = i + 1) {
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // running, and seen by the run queue
  }
  ~BusyLoop() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  BusyLoop(const BusyLoop&) = delete;
  BusyLoop& operator=(const BusyLoop&) = delete;

 private:
  pid_t pid_ = -1;
};

struct Config {
  std::string name;
  int threads;  // 0: automatic
  bool busy;
};
}  // namespace

void cmd_bench_threads(const BenchOptions& o, int reps) {
  auto model = load_model(o.model);
  auto tok = load_tokenizer(o.tokenizer.empty() ? default_tokenizer_path(o.model) : o.tokenizer);
  const ModelConfig& c = model->config;
  int64_t max_ctx = 0;
  for (int64_t T : o.contexts) max_ctx = std::max(max_ctx, T);
  const int64_t max_steps = std::max<int64_t>(o.steps, 2048);  // decode runs until kMinSeconds
  if (max_ctx + max_steps > c.max_seq_len) {  // RoPE has no position table: only the config limits the context
    model->config.max_seq_len = max_ctx + max_steps;
    model->rope = RotaryEmbedding(model->config);
  }
  // Prompts: the corpus's documents, concatenated; documents for the run path, cut to the context.
  std::vector<int32_t> stream;
  std::vector<std::vector<int32_t>> pieces;
  for (auto& d : read_all_documents(o.inputs, "<|endoftext|>")) {
    auto ids = tok->encode(d.text, true, false);
    if (int64_t(pieces.size()) < o.max_docs && ids.size() >= 2)
      pieces.emplace_back(ids.begin(), ids.begin() + std::min<int64_t>(int64_t(ids.size()), c.max_seq_len));
    stream.insert(stream.end(), ids.begin(), ids.end());
    if (int64_t(stream.size()) >= max_ctx && int64_t(pieces.size()) >= o.max_docs) break;
  }
  if (stream.empty()) throw InputError("bench threads: the corpus has no tokens");
  while (int64_t(stream.size()) < max_ctx) stream.insert(stream.end(), stream.begin(), stream.end());

  // One pass over every path: tokens/s by path name. Prefill and decode repeat until they have run for
  // kMinSeconds, so that short ones are not lost in the noise.
  constexpr double kMinSeconds = 0.3;
  auto pass = [&] {
    std::map<std::string, double> tps;
    EngineOptions eo;
    eo.chunk = o.chunk;
    for (int64_t T : o.contexts) {
      auto ids = torch::tensor(std::vector<int64_t>(stream.begin(), stream.begin() + T)).unsqueeze(0);
      std::unique_ptr<Engine> e;
      int64_t next = 0, n = 0;
      auto t0 = clock_type::now();
      do {
        e = std::make_unique<Engine>(model, eo);
        next = e->forward(ids).logits[0][-1].argmax().item<int64_t>();
        n += T;
      } while (seconds_since(t0) < kMinSeconds);
      tps[fmt::format("prefill {}", T)] = n / seconds_since(t0);
      t0 = clock_type::now();
      n = 0;
      while (n < o.steps || (seconds_since(t0) < kMinSeconds && n < max_steps)) {
        next = e->forward(torch::full({1, 1}, next, torch::kInt64)).logits[0][-1].argmax().item<int64_t>();
        ++n;
      }
      tps[fmt::format("decode {}", T)] = n / seconds_since(t0);
    }
    Engine e(model, eo);
    int64_t n = 0;
    auto t0 = clock_type::now();
    for (auto& p : pieces) n += int64_t(score_document(e, p).nll.size()) + 1;
    tps["run"] = n / seconds_since(t0);
    t0 = clock_type::now();
    n = 0;
    do {
      std::vector<int32_t> text{int32_t(c.bos_id)};
      generate(model, text, 256, SamplerOptions{}, [](int32_t) {});
      n += int64_t(text.size()) - 1;
    } while (seconds_since(t0) < kMinSeconds);
    tps["generate"] = double(n) / seconds_since(t0);
    return tps;
  };

  const int cores = threads::usable_cores();
  const std::vector<Config> configs{{"1 quiet", 1, false},           {fmt::format("{} quiet", cores), cores, false},
                                    {"auto quiet", 0, false},        {"1 busy", 1, true},
                                    {fmt::format("{} busy", cores), cores, true}, {"auto busy", 0, true}};
  auto apply = [](int n) { at::set_num_threads(n); };
  std::map<std::string, std::map<std::string, std::vector<double>>> runs;  // config -> path -> tok/s per rep
  std::map<std::string, std::vector<int>> chosen;                         // config -> threads used per rep
  for (int rep = 0; rep < reps; ++rep)
    for (const Config& cf : configs) {
      std::unique_ptr<BusyLoop> busy;
      if (cf.busy) busy = std::make_unique<BusyLoop>();
      chosen[cf.name].push_back(threads::configure(cf.threads, apply));
      {  // warm up untimed: a new thread count starts new OpenMP threads, whose buffers then grow once
        Engine e(model, EngineOptions{});
        e.forward(torch::tensor(std::vector<int64_t>(stream.begin(), stream.begin() + std::min<int64_t>(256, max_ctx))).unsqueeze(0));
        for (int i = 0; i < 4; ++i) e.forward(torch::full({1, 1}, int64_t(stream[0]), torch::kInt64));
      }
      for (auto& [path, v] : pass()) runs[cf.name][path].push_back(v);
      fmt::print(stderr, "bench threads: rep {} / {}: {} done ({} threads)\n", rep + 1, reps, cf.name, chosen[cf.name].back());
    }
  threads::configure(0, apply);
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  };
  fmt::print("{} cores; median of {} interleaved runs; tokens/s at one thread on a quiet machine, then each "
             "configuration's speed as a ratio of it\n", cores, reps);
  fmt::print("{:<14} {:>10}", "path", "1 quiet");
  for (size_t i = 1; i < configs.size(); ++i) fmt::print(" {:>11}", configs[i].name);
  fmt::print("\n");
  nlohmann::json rows = nlohmann::json::array();
  for (auto& [path, base_runs] : runs["1 quiet"]) {
    const double base = median(base_runs);
    fmt::print("{:<14} {:>10.1f}", path, base);
    nlohmann::json row{{"path", path}, {"tok_s", {{"1 quiet", base}}}, {"ratio", nlohmann::json::object()}};
    for (size_t i = 1; i < configs.size(); ++i) {
      const double v = median(runs[configs[i].name][path]);
      fmt::print(" {:>10.2f}x", v / base);
      row["tok_s"][configs[i].name] = v, row["ratio"][configs[i].name] = v / base;
    }
    fmt::print("\n");
    rows.push_back(row);
  }
  fmt::print("threads chosen by the automatic policy: quiet {}, beside the busy loop {}\n",
             fmt::join(chosen["auto quiet"], ","), fmt::join(chosen["auto busy"], ","));
  if (!o.json.empty())
    write_file_atomic(o.json, json_text(nlohmann::json{{"bench", "threads"}, {"model", o.model}, {"cores", cores}, {"reps", reps},
                                                       {"auto_quiet", chosen["auto quiet"]}, {"auto_busy", chosen["auto busy"]},
                                                       {"rows", rows}}));
}

}  // namespace spkv
