// `spkv bench decode` and `spkv bench run`: speed and memory of the engine, each SP-KV number reported as a
// ratio against its dense baseline measured in the same process. Not a unit test: no thresholds here;
// docs/results.md states the targets and whether they were met.
#include "tools/bench.h"

#include <fmt/core.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <unistd.h>

#include "core/base/errors.h"
#include "core/base/json_text.h"
#include "core/model/checkpoint.h"
#include "core/model/safetensors.h"
#include "tools/cli.h"
#include "tools/run.h"

namespace spkv {
namespace {
using clock_type = std::chrono::steady_clock;

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

nlohmann::json machine() {
  return {{"cpu", cpu_model()}, {"cores", std::thread::hardware_concurrency()}, {"threads", at::get_num_threads()}};
}

// The corpus's documents encoded with BOS and concatenated, repeated until there are n tokens.
std::vector<int32_t> corpus_tokens(const std::vector<std::string>& inputs, const Tokenizer& tok, int64_t n) {
  std::vector<int32_t> all;
  for (auto& d : read_all_documents(inputs, "<|endoftext|>")) {
    auto ids = tok.encode(d.text, /*bos=*/all.empty(), /*eos=*/false);
    all.insert(all.end(), ids.begin(), ids.end());
    if (int64_t(all.size()) >= n) break;
  }
  if (all.empty()) throw InputError("bench: the corpus has no tokens");
  std::vector<int32_t> out;
  while (int64_t(out.size()) < n) out.insert(out.end(), all.begin(), all.begin() + std::min<int64_t>(n - int64_t(out.size()), int64_t(all.size())));
  return out;
}

struct DecodeResult {
  double prefill_s = 0, decode_s = 0, density = 0;
  int64_t bytes = 0, entries = 0;
};

// Prefills `prompt`, then decodes `steps` greedy tokens one at a time, timing prefill and decode apart.
DecodeResult run_decode(LlamaForCausalLM& model, const std::vector<int32_t>& prompt, int64_t steps, bool dense,
                        int64_t chunk, bool fused = true, bool kv_bf16 = false) {
  EngineOptions eo;
  eo.dense = dense, eo.chunk = chunk, eo.fused_decode = fused, eo.kv_bf16 = kv_bf16;
  Engine engine(model, eo);
  DecodeResult r;
  auto t0 = clock_type::now();
  auto ids = torch::tensor(std::vector<int64_t>(prompt.begin(), prompt.end())).unsqueeze(0);  // (1, T)
  EngineStep s = engine.forward(ids);
  r.prefill_s = seconds_since(t0);
  // Density of the prompt's eligible keys (what the gates decided, whether or not they evicted).
  const ModelConfig& c = model->config;
  const int64_t T = int64_t(prompt.size()), W = c.spkv.window;
  if (T > W) r.density = s.keep[0].narrow(0, 0, T - W).to(torch::kFloat64).mean().item<double>();
  int64_t next = s.logits[0][-1].argmax().item<int64_t>();
  t0 = clock_type::now();
  for (int64_t i = 0; i < steps; ++i)
    next = engine.forward(torch::full({1, 1}, next, torch::kInt64)).logits[0][-1].argmax().item<int64_t>();
  r.decode_s = seconds_since(t0);
  r.bytes = engine.cache_bytes(), r.entries = engine.cache_entries();
  return r;
}

}  // namespace

void cmd_bench_decode(const BenchOptions& o) {
  Checkpoint ck = load_checkpoint(o.model);
  int64_t max_ctx = 0;
  for (int64_t T : o.contexts) max_ctx = std::max(max_ctx, T);
  if (!ck.config.spkv.enabled) throw ConfigError(o.model + ": bench decode compares SP-KV with dense; the model has no spkv block");
  ck.config.max_seq_len = std::max(ck.config.max_seq_len, max_ctx + o.steps + 1);  // RoPE tables for the longest run
  LlamaForCausalLM model(ck.config);
  model->load(ck);
  model->eval();
  model->to(parse_device(o.device));
  auto tok = load_tokenizer(o.tokenizer.empty() ? default_tokenizer_path(o.model) : o.tokenizer);
  const auto tokens = corpus_tokens(o.inputs, *tok, max_ctx);
  const ModelConfig& c = model->config;
  nlohmann::json rows = nlohmann::json::array();
  fmt::print("{:>7} {:>12} {:>12} {:>8} {:>12} {:>12} {:>8} {:>8} {:>10} {:>13}\n", "context", "dense tok/s", "SP-KV tok/s",
             "speedup", "dense KV MB", "SP-KV KV MB", "ratio", "density", "predicted", "layers tok/s");
  for (int64_t T : o.contexts) {
    const std::vector<int32_t> prompt(tokens.begin(), tokens.begin() + T);
    const DecodeResult d = run_decode(model, prompt, o.steps, /*dense=*/true, o.chunk, /*fused=*/true, o.kv_bf16);
    const DecodeResult s = run_decode(model, prompt, o.steps, /*dense=*/false, o.chunk, /*fused=*/true, o.kv_bf16);
    // The same SP-KV decode through the model's LibTorch layers instead of the fused step (the baseline of
    // kernels/cpu/decode_step.h), on the CPU only.
    const bool cpu = parse_device(o.device).is_cpu();
    const double layers_tps = cpu ? o.steps / run_decode(model, prompt, o.steps, false, o.chunk, /*fused=*/false).decode_s : 0;
    const double len = double(T + o.steps), W = double(c.spkv.window);
    const double predicted = (W + s.density * (len - W)) / len, ratio = double(s.bytes) / double(d.bytes);
    const double dense_tps = o.steps / d.decode_s, spkv_tps = o.steps / s.decode_s;
    fmt::print("{:>7} {:>12.1f} {:>12.1f} {:>7.2f}x {:>12.2f} {:>12.2f} {:>8.3f} {:>8.3f} {:>10.3f} {:>13.1f}\n", T, dense_tps,
               spkv_tps, spkv_tps / dense_tps, d.bytes / 1e6, s.bytes / 1e6, ratio, s.density, predicted, layers_tps);
    rows.push_back({{"context", T}, {"steps", o.steps},
                    {"dense", {{"decode_tok_s", dense_tps}, {"prefill_s", d.prefill_s}, {"kv_bytes", d.bytes}, {"entries", d.entries}}},
                    {"spkv", {{"decode_tok_s", spkv_tps}, {"prefill_s", s.prefill_s}, {"kv_bytes", s.bytes}, {"entries", s.entries}}},
                    {"speedup", spkv_tps / dense_tps}, {"kv_ratio", ratio}, {"density", s.density},
                    {"kv_ratio_predicted", predicted}, {"kv_ratio_error", ratio / predicted - 1},
                    {"spkv_layers_decode_tok_s", layers_tps}});
  }
  fmt::print("KV MB: bytes the caches allocated (rings + pages); predicted ratio: (W + density (T - W)) / T; layers: SP-KV "
             "decode through the model's LibTorch layers instead of the fused step\n");
  if (!o.json.empty())
    write_file_atomic(o.json, json_text(nlohmann::json{{"bench", "decode"}, {"model", o.model}, {"window", c.spkv.window},
                                             {"tau", model->gates.tau}, {"machine", machine()}, {"device", o.device}, {"kv_bf16", o.kv_bf16}, {"rows", rows}}));
}

void cmd_bench_run(const BenchOptions& o) {
  auto model = load_model(o.model);
  if (!model->config.spkv.enabled) throw ConfigError(o.model + ": the model has no spkv block");
  auto tok = load_tokenizer(o.tokenizer.empty() ? default_tokenizer_path(o.model) : o.tokenizer);
  std::vector<TokenPiece> pieces;
  int64_t n_tokens = 0;
  auto docs = read_all_documents(o.inputs, "<|endoftext|>");
  if (o.max_docs > 0 && int64_t(docs.size()) > o.max_docs) docs.resize(size_t(o.max_docs));
  for (auto& d : docs)
    for (auto& p : split_to_context(d.id, tok->encode(d.text, true, false), model->config.max_seq_len))
      n_tokens += int64_t(p.tokens.size()), pieces.push_back(std::move(p));
  EngineOptions eo;
  eo.chunk = o.chunk;
  Engine engine(model, eo);
  const std::string log_path = (std::filesystem::temp_directory_path() / ("spkv-bench-" + std::to_string(getpid()) + ".h5")).string();
  // One pass: score every piece; with logging, also build its record and hand it to the writer thread.
  auto pass = [&](bool logging) {
    std::error_code ec;
    std::filesystem::remove(log_path, ec);
    GateLogHeader h;
    h.n_layers = model->config.n_layers, h.n_kv_heads = model->config.n_kv_heads, h.gating_mode = "hard";
    h.window = model->config.spkv.window, h.tau = model->gates.tau;
    std::unique_ptr<GateLogWriter> log;
    const auto t0 = clock_type::now();
    if (logging) log = std::make_unique<GateLogWriter>(log_path, h, false);
    for (auto& p : pieces) {
      ScoredDocument s = score_document(engine, p.tokens);
      if (logging) log->add(log_record(p, s, *tok, model->config, engine.gated()));
    }
    if (logging) log->close();
    const double sec = seconds_since(t0);
    std::filesystem::remove(log_path, ec);
    return sec;
  };
  // Alternate the two, three times each, and keep each one's best.
  double plain = 1e30, logged = 1e30;
  for (int rep = 0; rep < 3; ++rep) plain = std::min(plain, pass(false)), logged = std::min(logged, pass(true));
  fmt::print("{} pieces, {} tokens: without logging {:.2f} s ({:.0f} tok/s), with logging {:.2f} s ({:.0f} tok/s): "
             "logging costs {:+.1f}%\n", pieces.size(), n_tokens, plain, n_tokens / plain, logged, n_tokens / logged,
             100 * (logged / plain - 1));
  if (!o.json.empty())
    write_file_atomic(o.json, json_text(nlohmann::json{{"bench", "run"}, {"model", o.model}, {"pieces", pieces.size()}, {"tokens", n_tokens},
                                             {"plain_s", plain}, {"logged_s", logged}, {"overhead", logged / plain - 1},
                                             {"machine", machine()}}));
}

void cli::add_bench_commands(CLI::App& app, cli::Commands& out) {
  auto bo = cli::options<BenchOptions>();
  auto* bench = add_command(app, "bench");
  bench->require_subcommand(1);
  auto* bdec = bench->add_subcommand("decode", "decode tokens/s and KV bytes, dense vs SP-KV cache, by context length");
  auto* brun = bench->add_subcommand("run", "the cost of gate logging: spkv run's loop with and without the HDF5 log");
  auto* bthr = bench->add_subcommand("threads", "every engine path at 1 thread, all cores and the automatic policy, quiet "
                                                "and beside a busy loop");
  auto reps = std::make_shared<int>(3);
  for (auto* b : {bdec, brun, bthr}) {
    b->add_option("--model,-m", bo->model, "SP-KV model")->required();
    b->add_option("--tokenizer,-t", bo->tokenizer, "tokenizer file (default: found beside the model)");
    b->add_option("--corpus", bo->inputs, "text for prompts / documents (default: MODEL/heldout/text)");
    b->add_option("--chunk", bo->chunk, "prefill chunk length")->check(CLI::PositiveNumber);
    b->add_option("--json", bo->json, "also write the results here");
  }
  bdec->add_option("--contexts", bo->contexts, "prompt lengths")->delimiter(',');
  bdec->add_option("--steps", bo->steps, "decode steps timed after each prompt")->check(CLI::PositiveNumber);
  bdec->add_option("--device", bo->device, "cpu, cuda or cuda:N (cuda: a build with a CUDA LibTorch, docs/gpu.md)");
  bdec->add_flag("--kv-bf16", bo->kv_bf16, "with --device cuda: keep the KV cache in bf16 (half the bytes)");
  brun->add_option("--max-docs", bo->max_docs, "documents of the corpus")->check(CLI::PositiveNumber);
  bthr->add_option("--contexts", bo->contexts, "prompt lengths for prefill and decode")->delimiter(',');
  bthr->add_option("--steps", bo->steps, "decode steps timed after each prompt")->check(CLI::PositiveNumber);
  bthr->add_option("--max-docs", bo->max_docs, "documents scored by the run path")->check(CLI::PositiveNumber);
  bthr->add_option("--reps", *reps, "interleaved runs of every configuration (the median is reported)")->check(CLI::PositiveNumber);

  auto ko = cli::options<BenchKernelOptions>();
  auto* bker = bench->add_subcommand("kernels", "CPU attention kernels: prefill GFLOP/s against GEMM, decode GB/s against a triad");
  bker->add_option("--contexts", ko->contexts, "context lengths")->delimiter(',');
  bker->add_option("--heads", ko->heads, "query heads")->check(CLI::PositiveNumber);
  bker->add_option("--kv-heads", ko->kv_heads, "KV heads (divides --heads)")->check(CLI::PositiveNumber);
  bker->add_option("--head-dim", ko->head_dim, "head size")->check(CLI::PositiveNumber);
  bker->add_option("--window", ko->window, "SP-KV window W")->check(CLI::PositiveNumber);
  bker->add_option("--chunk", ko->chunk, "prefill chunk length")->check(CLI::PositiveNumber);
  bker->add_option("--layers", ko->layers, "decode: one cache per layer, all read each step")->check(CLI::PositiveNumber);
  bker->add_option("--density", ko->density, "SP-KV: share of far keys kept")->check(CLI::Range(0.0, 1.0));
  bker->add_option("--json", ko->json, "also write the results here");
  out.push_back({bker, [ko] {
                   if (ko->heads % ko->kv_heads != 0)
                     throw ConfigError("bench kernels: --kv-heads " + std::to_string(ko->kv_heads) + " must divide --heads " +
                                       std::to_string(ko->heads));
                   return cmd_bench_kernels(*ko), true;
                 }});

  auto defaults = [bo] {
    if (bo->inputs.empty()) bo->inputs = {bo->model + "/heldout/text"};
  };
  out.push_back({bdec, [bo, defaults] { return defaults(), cmd_bench_decode(*bo), true; }});
  out.push_back({brun, [bo, defaults] { return defaults(), cmd_bench_run(*bo), true; }});
  out.push_back({bthr, [bo, defaults, reps] { return defaults(), cmd_bench_threads(*bo, *reps), true; }});
}

}  // namespace spkv
