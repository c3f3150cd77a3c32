// The `spkv` command line: one binary with subcommands. This file parses arguments, calls the libraries
// and prints; it is the only place that turns exceptions into messages and exit codes.
#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <torch/torch.h>

#include <dlfcn.h>
#include <malloc.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "analysis/check_log.h"
#include "analysis/report.h"
#include "analysis/stats.h"
#include "core/checkpoint.h"
#include "core/documents.h"
#include "core/errors.h"
#include "core/generate.h"
#include "core/json_text.h"
#include "core/model.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "core/tasks.h"
#include "core/token_file.h"
#include "core/tokenizer.h"
#include "core/toy_reversal.h"
#include "core/trainer.h"
#include "tools/bench.h"
#include "tools/layout.h"
#include "tools/run.h"

namespace fs = std::filesystem;
using namespace spkv;

namespace {

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

void cmd_info(const ModelArgs& a) {
  Checkpoint ck = load_checkpoint(a.model);
  LlamaForCausalLM m(ck.config);
  m->load(ck);
  const ModelConfig& c = ck.config;
  fmt::print("model        {} ({})\n", a.model, ck.format);
  fmt::print("architecture {}\n", c.architecture);
  fmt::print("parameters   {}\n", m->parameter_count());
  fmt::print("dim {}  hidden_dim {}  layers {}  heads {}  kv_heads {}  head_dim {}\n", c.dim, c.hidden_dim,
             c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim);
  fmt::print("vocab {}  context {}  norm_eps {:g}  tied_embeddings {}  attention_bias {}\n", c.vocab_size,
             c.max_seq_len, c.norm_eps, c.tied_embeddings, c.attention_bias);
  fmt::print("rope {}  theta {:g}  scaling {} (factor {:g})  sliding_window {}\n", to_string(c.rope_style),
             c.rope_theta, c.rope_scaling.type, c.rope_scaling.factor, c.sliding_window);
  fmt::print("tokenizer    {}\n", a.load_tokenizer_for(c)->summary());
}

// `--samples N --out FILE`: N continuations of the prompt (default: BOS alone), seeds seed..seed+N-1,
// written as one corpus separated by <|endoftext|>.
void cmd_sample_corpus(const ModelArgs& a, const std::string& prompt, int64_t max_new, SamplerOptions so,
                       int64_t samples, const std::string& out) {
  auto model = load_model(a.model);
  auto tok = a.load_tokenizer_for(model->config);
  const std::vector<int32_t> start = tok->encode(prompt, /*bos=*/true, /*eos=*/false);
  std::string text;
  Progress bar("sample", samples, "doc");
  for (int64_t i = 0; i < samples; ++i) {
    std::vector<int32_t> ids = start;
    generate(model, ids, max_new, so, [](int32_t) {});
    so.seed += 1;
    text += tok->decode(ids) + "\n<|endoftext|>\n";
    bar.add(1);
  }
  bar.finish();
  write_file_atomic(out, text);
  fmt::print("wrote {} samples ({} bytes) to {}\n", samples, text.size(), out);
}

void cmd_generate(const ModelArgs& a, const std::string& prompt, int64_t max_new, const SamplerOptions& so) {
  auto model = load_model(a.model);
  auto tok = a.load_tokenizer_for(model->config);
  std::vector<int32_t> ids = tok->encode(prompt, /*bos=*/true, /*eos=*/false);
  if (int64_t(ids.size()) >= model->config.max_seq_len)
    throw InputError(fmt::format("the prompt has {} tokens, the model's context is {}", ids.size(),
                                 model->config.max_seq_len));
  std::string out = tok->decode(ids);
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
  int32_t prev = ids.back();
  generate(model, ids, max_new, so, [&](int32_t id) {
    const std::string piece = tok->token_bytes(prev, id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    prev = id;
  });
  if (isatty(fileno(stdout))) std::fputc('\n', stderr);
}

// Evaluation-time changes to a loaded model: the SP-KV threshold, and a sliding window that hides every key
// beyond it (the local-only ablation of any model).
struct EvalOverrides {
  double tau = 0;      // 0 = the model's
  int64_t window = 0;  // 0 = the model's attention
  void add(CLI::App* app) {
    app->add_option("--tau", tau, "SP-KV threshold to evaluate at (default: the model's)");
    app->add_option("--window", window, "attend only to the last N keys (local-only ablation)")->check(CLI::PositiveNumber);
  }
  void apply(LlamaForCausalLM& model, const std::string& path) const {
    if (tau > 0) {
      if (!model->config.spkv.enabled) throw ConfigError(path + ": --tau given, but the model has no spkv block");
      if (tau >= 1) throw ConfigError("--tau must be in (0, 1)");
      model->gates.tau = tau;
    }
    if (window > 0) model->config.sliding_window = window;
  }
};

void cmd_eval(const ModelArgs& a, const std::string& input, const std::string& separator, int64_t max_docs,
              const EvalOverrides& ov, const std::string& json_out) {
  auto model = load_model(a.model);
  ov.apply(model, a.model);
  auto tok = a.load_tokenizer_for(model->config);
  auto docs = read_documents(input, separator);
  if (max_docs > 0 && int64_t(docs.size()) > max_docs) docs.resize(max_docs);
  std::vector<std::vector<int32_t>> ids;
  int64_t total = 0;
  for (auto& d : docs) {
    ids.push_back(encode_showing_progress(*tok, d.text, /*bos=*/true, /*eos=*/false));
    total += int64_t(ids.back().size()) - 1;
  }
  std::vector<double> doc_mean, doc_tokens;
  double sum = 0;
  int64_t n = 0;
  Progress bar("eval", total, "tok");
  torch::Tensor counts;  // (L, Hkv, 2) with SP-KV
  for (auto& t : ids) {
    auto nll = token_nll(model, t, &counts);
    if (nll.empty()) continue;
    double s = 0;
    for (double x : nll) s += x;
    sum += s, n += int64_t(nll.size());
    doc_mean.push_back(s / double(nll.size()));
    doc_tokens.push_back(double(nll.size()));
    bar.add(int64_t(nll.size()), fmt::format("nll {:.4f}", sum / double(n)));
  }
  bar.finish();
  if (n == 0) throw InputError(input + ": no document has two or more tokens to score");
  auto s = analysis::summarize(doc_mean, doc_tokens);
  fmt::print("documents   {}\n", doc_mean.size());
  fmt::print("tokens      {} (scored; BOS first, every later token predicted once)\n", n);
  fmt::print("mean NLL    {:.6f} nats/token\n", sum / double(n));
  fmt::print("perplexity  {:.4f}\n", std::exp(sum / double(n)));
  fmt::print("per-document: mean {:.4f} (token-weighted), std {:.4f}, 95% bootstrap CI [{:.4f}, {:.4f}]\n",
             s.mean, s.stddev, s.ci_low, s.ci_high);
  const auto d = density_json(counts);  // empty without SP-KV
  if (!json_out.empty()) {
    nlohmann::json j = {{"model", a.model}, {"input", input}, {"documents", doc_mean.size()}, {"tokens", n},
                        {"nll", sum / double(n)}, {"ci", {s.ci_low, s.ci_high}},
                        {"sliding_window", model->config.sliding_window}};
    if (counts.defined()) j["gates"] = d, j["gates"]["tau"] = model->gates.tau;
    write_file_atomic(json_out, json_text(j));
  }
  if (!counts.defined()) return;
  fmt::print("SP-KV       window {}, tau {}, hard gates\n", model->config.spkv.window, model->gates.tau);
  if (d["evictable_keys"].get<int64_t>() == 0) return fmt::print("density     - (no key is outside the window)\n");
  fmt::print("density     {:.4f} (kept / evictable keys; {} evictable key-heads)\n", d["density"].get<double>(),
             d["evictable_keys"].get<int64_t>());
  for (size_t il = 0; il < d["density_per_layer"].size(); ++il) {
    fmt::print("  layer {:<3} {:.4f}  heads", il, d["density_per_layer"][il].get<double>());
    for (auto& h : d["density_per_head"][il]) fmt::print(" {:.3f}", h.get<double>());
    fmt::print("\n");
  }
}

// Writes a Hugging Face-style directory. llama2.c weights (interleaved RoPE) get HF's q/k row permutation,
// so the result is an ordinary rotate-half Llama checkpoint.
void cmd_convert(const ModelArgs& a, const std::string& out) {
  // The tokenizer is found (or its absence reported) before anything is written.
  const std::string tokenizer = a.tokenizer.empty() ? default_tokenizer_path(a.model) : a.tokenizer;
  Checkpoint ck = load_checkpoint(a.model);
  LlamaForCausalLM m(ck.config);
  m->load(ck);
  auto tensors = m->named_tensors();
  ModelConfig c = ck.config;
  if (c.rope_style == RopeStyle::interleaved) {
    for (auto& [name, t] : tensors) {
      if (name.find("q_proj.weight") != std::string::npos) t = permute_for_rotate_half(t, c.n_heads);
      if (name.find("k_proj.weight") != std::string::npos) t = permute_for_rotate_half(t, c.n_kv_heads);
    }
    c.rope_style = RopeStyle::rotate_half;
  }
  save_hf_checkpoint(out, c, tensors, {{"converted_from", a.model}});
  const std::string tok = copy_tokenizer_into(tokenizer, out);
  fmt::print("wrote {} ({} tensors, rope {}) and {}\n", out, tensors.size(), to_string(c.rope_style), tok);
}

// Tokenizes documents into out_dir/train.tok and out_dir/val.tok: the documents of val_inputs are the
// validation split, or, when there are none, every val_every-th document is held out.
void cmd_tokenize(const std::string& tokenizer, const std::vector<std::string>& inputs,
                  const std::vector<std::string>& val_inputs, const std::string& separator, const std::string& out_dir,
                  int64_t val_every) {
  auto docs = read_all_documents(inputs, separator);
  const size_t n_train_docs = docs.size();
  if (!val_inputs.empty()) {
    auto v = read_all_documents(val_inputs, separator);
    docs.insert(docs.end(), v.begin(), v.end());
  }
  auto tok = load_tokenizer(tokenizer);
  std::vector<std::vector<int32_t>> train, val;
  int64_t n_train = 0, n_val = 0;
  int64_t bytes = 0;
  for (auto& d : docs) bytes += int64_t(d.text.size());
  Progress bar("tokenize", bytes, "B");  // bytes, so that one very large document shows progress too
  for (size_t i = 0; i < docs.size(); ++i) {
    size_t shown = 0;
    const std::string doc = "doc " + std::to_string(i + 1) + "/" + std::to_string(docs.size());
    auto ids = tok->encode(docs[i].text, /*bos=*/true, /*eos=*/false,
                           [&](size_t done) { bar.add(int64_t(done - shown), doc), shown = done; });
    const bool held_out = val_inputs.empty() ? i % size_t(val_every) == size_t(val_every) - 1 : i >= n_train_docs;
    (held_out ? n_val : n_train) += int64_t(ids.size());
    (held_out ? val : train).push_back(std::move(ids));
  }
  bar.finish();
  if (val.empty()) throw InputError("tokenize: no document was held out for validation (" + std::to_string(docs.size()) +
                                    " documents, --val-every " + std::to_string(val_every) + ")");
  fs::create_directories(out_dir);
  write_token_file((fs::path(out_dir) / "train.tok").string(), train, tok->vocab_size());
  write_token_file((fs::path(out_dir) / "val.tok").string(), val, tok->vocab_size());
  fmt::print("train.tok  {} documents, {} tokens\nval.tok    {} documents, {} tokens\nvocab      {} ({})\n",
             train.size(), n_train, val.size(), n_val, tok->vocab_size(), tokenizer);
}

// SentencePiece BPE/unigram on the documents of `inputs`, one line per input line.
void cmd_train_tokenizer(const std::vector<std::string>& inputs, const std::string& separator,
                         SentencePieceTrainOptions o) {
  std::string text;
  for (auto& d : read_all_documents(inputs, separator)) text += d.text + "\n";
  const std::string tmp = o.out_model + ".input.txt";
  write_file_atomic(tmp, text);
  o.input = tmp;
  try {
    train_sentencepiece(o);
  } catch (...) {
    fs::remove(tmp);
    throw;
  }
  fs::remove(tmp);
  fmt::print("wrote {} ({} {}, trained on {} bytes)\n", o.out_model, o.model_type, o.vocab_size, text.size());
}

void cmd_tasks_generate(const std::vector<std::string>& filler_inputs, const std::string& separator,
                        const TaskGenOptions& o, const std::string& out) {
  std::vector<std::string> filler;
  for (auto& d : read_all_documents(filler_inputs, separator)) filler.push_back(d.text);
  auto docs = generate_tasks(filler, o);
  write_tasks_jsonl(out, docs);
  fmt::print("wrote {} tasks to {}\n", docs.size(), out);
}

void cmd_tasks_repeat(const std::string& tokenizer, const RepeatOptions& o, int64_t n_val, const std::string& out_dir) {
  auto tok = load_tokenizer(tokenizer);
  RepeatOptions r = o;
  if (tok->bos_id >= 0) r.bos_id = tok->bos_id;
  fs::create_directories(out_dir);
  write_token_file((fs::path(out_dir) / "train.tok").string(), repeat_documents(r, tok->vocab_size()), tok->vocab_size());
  r.n = n_val, r.seed = o.seed + 1;
  write_token_file((fs::path(out_dir) / "val.tok").string(), repeat_documents(r, tok->vocab_size()), tok->vocab_size());
  fmt::print("wrote {} + {} repeated sequences of {}..{} ids to {}/train.tok and val.tok\n", o.n, n_val, o.min_len,
             o.max_len, out_dir);
}

// Task files (.jsonl with spans) count by their kinds, text documents by their file's name.
void cmd_tasks_stats(const std::string& tokenizer, const std::vector<std::string>& inputs, const std::string& separator,
                     int64_t window, const std::string& json_out) {
  auto tok = load_tokenizer(tokenizer);
  std::vector<TaskDoc> docs;
  for (const std::string& in : inputs) {
    if (fs::path(in).extension() == ".jsonl") {
      for (auto& d : read_tasks_jsonl(in)) docs.push_back(std::move(d));
      continue;
    }
    for (auto& d : read_documents(in, separator)) {
      TaskDoc t;
      t.kind = fs::path(d.id.substr(0, d.id.rfind('#'))).stem().string();
      t.text = std::move(d.text);
      docs.push_back(std::move(t));
    }
  }
  const auto r = task_composition(*tok, docs, window);
  fmt::print("{:<14} {:>9} {:>11} {:>7} {:>7} {:>9} {:>9} {:>7}  {:>24}  {:>8}\n", "kind", "documents", "tokens", "longest", "share",
             "answers", "ans. tok", "share", "distance min/med/p90/max", "beyond W");
  auto row = [](const std::string& k, const nlohmann::json& t) {
    std::string dist = "-", beyond = "-";
    if (t.contains("distance")) {
      const auto& q = t["distance"];
      dist = fmt::format("{}/{}/{}/{}", q["min"].get<int64_t>(), q["median"].get<int64_t>(), q["p90"].get<int64_t>(),
                         q["max"].get<int64_t>());
      beyond = fmt::format("{:.3f}", double(t["beyond_window"].get<int64_t>()) / double(t["answers"].get<int64_t>()));
    }
    fmt::print("{:<14} {:>9} {:>11} {:>7} {:>7.3f} {:>9} {:>9} {:>7.3f}  {:>24}  {:>8}\n", k, t["documents"].get<int64_t>(),
               t["tokens"].get<int64_t>(), t["longest_document"].get<int64_t>(), t["token_share"].get<double>(), t["answers"].get<int64_t>(),
               t["answer_tokens"].get<int64_t>(), t["answer_token_share"].get<double>(), dist, beyond);
  };
  for (auto& [k, t] : r["kinds"].items()) row(k, t);
  row("all", r["all"]);
  fmt::print("(distance: tokens from the query that predicts an answer's first token back to its fact; W = {})\n", window);
  if (!json_out.empty()) write_file_atomic(json_out, json_text(r));
}

void print_task_results(const nlohmann::json& r) {
  fmt::print("{:<10} {:>8} {:>8} {:>10} {:>8} {:>10}\n", "kind", "answers", "tokens", "token acc", "exact", "truncated");
  auto row = [](const std::string& k, const nlohmann::json& t) {
    fmt::print("{:<10} {:>8} {:>8} {:>10.4f} {:>8.4f} {:>10}\n", k, t["answers"].get<int64_t>(), t["tokens"].get<int64_t>(),
               t["token_acc"].get<double>(), t["exact"].get<double>(), t["truncated"].get<int64_t>());
  };
  for (auto& [k, t] : r["kinds"].items()) row(k, t);
  row("all", r["all"]);
  if (!r.contains("gates")) return;
  const auto& g = r["gates"];
  if (g["evictable_keys"].get<int64_t>() == 0) return fmt::print("gates: no key is outside the window\n");
  fmt::print("gates (tau {}): density {:.4f}; keep facts {:.4f}, keep other {:.4f}\n", g["tau"].get<double>(),
             g["density"].get<double>(), g["keep_facts"].get<double>(), g["keep_other"].get<double>());
  for (size_t l = 0; l < g["keep_facts_per_layer"].size(); ++l)
    fmt::print("  layer {:<3} keep facts {:.3f}  other {:.3f}\n", l, g["keep_facts_per_layer"][l].get<double>(),
               g["keep_other_per_layer"][l].get<double>());
}

void cmd_tasks_eval(const ModelArgs& a, const std::string& tasks, int64_t max_docs, const EvalOverrides& ov,
                    const std::string& json_out) {
  auto model = load_model(a.model);
  ov.apply(model, a.model);
  auto tok = a.load_tokenizer_for(model->config);
  auto docs = read_tasks_jsonl(tasks);
  if (max_docs > 0 && int64_t(docs.size()) > max_docs) docs.resize(size_t(max_docs));
  auto r = evaluate_tasks(model, *tok, docs);
  r["model"] = a.model;
  r["tasks"] = tasks;
  print_task_results(r);
  if (!json_out.empty()) write_file_atomic(json_out, json_text(r));
}


// Ctrl-C (SIGINT) and a batch scheduler's SIGTERM ask run and train to stop after the current document or
// step, leaving what resumes; a second signal stops at once. A command stopped so exits 128 + the signal.
std::atomic<bool> g_stop{false};
std::atomic<int> g_signal{0};
void on_stop_signal(int sig) {
  g_signal = sig;
  g_stop = true;
  std::signal(sig, SIG_DFL);
}
void catch_stop_signals() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

// Returns false when interrupted before the last step.
bool cmd_train(const std::string& recipe_path, TrainOptions o) {
  Recipe r = load_recipe(recipe_path);
  if (r.train_data.empty() || r.val_data.empty())
    throw ConfigError(recipe_path + ": data.train and data.val must name token files (from `spkv tokenize`)");
  TokenFileSource data(r.train_data, r.val_data, r.seq_len, r.batch_size, r.eval_batches, r.seed, r.windows == "documents");
  o.stop = &g_stop;
  catch_stop_signals();
  std::vector<TaskDoc> tasks;
  std::unique_ptr<Tokenizer> tok;
  if (!r.eval_tasks.empty()) {  // checked before the first step, scored at every evaluation
    tasks = read_tasks_jsonl(r.eval_tasks);
    if (int64_t(tasks.size()) > r.eval_tasks_docs) tasks.resize(size_t(r.eval_tasks_docs));
    tok = load_tokenizer(r.tokenizer);
    o.eval_hook = [&](LlamaForCausalLM& m) {  // hard gates at tau, as inference and the validation NLL
      const GateSettings saved = m->gates;
      if (m->config.spkv.enabled) m->gates.mode = GateMode::hard;
      auto t = evaluate_tasks(m, *tok, tasks, /*progress=*/false);
      m->gates = saved;
      nlohmann::json out = {{"tasks", t["kinds"]}};
      out["tasks"]["all"] = t["all"];
      if (t.contains("gates")) out["tasks_gates"] = {{"keep_facts", t["gates"]["keep_facts"]}, {"keep_other", t["gates"]["keep_other"]}};
      return out;
    };
  }
  TrainResult res = train(r, data, o);
  if (res.interrupted) {
    fmt::print("stopped after step {}; checkpoint in {}/checkpoints; continue with --resume\n", res.step, o.out_dir);
    return false;
  }
  fmt::print("trained {} steps; model in {}\n", res.step, res.model_dir);
  if (res.last_eval.contains("val_nll")) fmt::print("final validation NLL {:.6f}", res.last_eval["val_nll"].get<double>());
  if (res.last_eval.contains("density")) fmt::print("  density {:.4f}", res.last_eval["density"].get<double>());
  fmt::print("\n");
  return true;
}

void cmd_toy(ToyOptions o) {
  auto res = run_toy_reversal(o);
  fmt::print("reversal toy task: {} numbers, filler {}-{}, window {}, {} steps, batch {}\n", o.task.n_numbers,
             o.task.min_filler, o.task.max_filler, o.window, o.steps, o.batch_size);
  fmt::print("{:<8} {:>10} {:>9} {:>10} {:>9} {:>13} {:>12}\n", "variant", "token acc", "seq acc", "val NLL",
             "density", "keep numbers", "keep filler");
  for (auto& [v, r] : res["variants"].items()) {
    const auto& f = r["final"];
    auto num = [&](const char* k) { return f.contains(k) ? fmt::format("{:.3f}", f[k].get<double>()) : std::string("-"); };
    fmt::print("{:<8} {:>10} {:>9} {:>10} {:>9} {:>13} {:>12}\n", v, num("token_acc"), num("seq_acc"), num("val_nll"),
               num("density"), num("keep_numbers"), num("keep_filler"));
  }
  fmt::print("accuracy on the reversed span by step:\n{:>6}", "step");
  for (auto& [v, r] : res["variants"].items()) fmt::print(" {:>8}", v);
  fmt::print("\n");
  const auto& first = res["variants"].begin().value();
  for (size_t i = 0; i < first["curve_steps"].size(); ++i) {
    fmt::print("{:>6}", first["curve_steps"][i].get<int64_t>());
    for (auto& [v, r] : res["variants"].items()) fmt::print(" {:>8.3f}", r["curve"][i]["token_acc"].get<double>());
    fmt::print("\n");
  }
  fmt::print("results: {}/results.json\n", o.out_dir);
}

// OpenBLAS's own threads fight LibTorch's intra-op threads; at this project's model sizes one BLAS thread
// is faster (docs/results.md, "CPU threads"). Looked up at run time: the BLAS may not be OpenBLAS.
void set_blas_threads(int n) {
  using Fn = void (*)(int);
  if (auto f = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(n);
}

std::string one_line(std::string s) {
  const size_t nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"spkv: Self-Pruned KV attention toolkit"};
  app.set_version_flag("--version", std::string(SPKV_VERSION) + " (" + SPKV_GIT_COMMIT + ")");
  app.require_subcommand(1);
  int threads = int(std::thread::hardware_concurrency());
  app.add_option("--threads", threads, "CPU threads for LibTorch")->check(CLI::PositiveNumber);
  int blas_threads = 1;
  app.add_option("--blas-threads", blas_threads, "OpenBLAS threads inside each matmul")->check(CLI::PositiveNumber);

  ModelArgs ma;
  auto* info = app.add_subcommand("info", "show a model's config, parameter count and tokenizer");
  ma.add(info);

  auto* gen = app.add_subcommand("generate", "continue a prompt; prints prompt + continuation on stdout");
  ma.add(gen);
  std::string prompt;
  int64_t max_new = 256;
  SamplerOptions so;
  gen->add_option("--prompt,-p", prompt, "prompt text (with --samples: default empty, BOS alone)");
  gen->add_option("--max-new-tokens,-n", max_new, "tokens to generate")->check(CLI::NonNegativeNumber);
  gen->add_option("--temperature", so.temperature, "0 = greedy")->check(CLI::Range(0.0, 100.0));
  gen->add_option("--top-p", so.top_p, "nucleus sampling mass")->check(CLI::Range(0.0, 1.0));
  gen->add_option("--seed", so.seed, "sampling seed");
  int64_t samples = 0;
  std::string samples_out;
  gen->add_option("--samples", samples, "write this many samples to --out instead of printing one (temperature default 1)")
      ->check(CLI::PositiveNumber);
  gen->add_option("--out,-o", samples_out, "corpus file for --samples (documents separated by <|endoftext|>)");

  auto* ev = app.add_subcommand("eval", "mean NLL per token and perplexity over a text file or folder");
  ma.add(ev);
  std::string input, separator = "<|endoftext|>";
  int64_t max_docs = 0;
  ev->add_option("input", input, "text file, or folder of .txt files (recursive)")->required();
  ev->add_option("--separator", separator, "document separator inside files (\"\" = one document per file)");
  ev->add_option("--max-docs", max_docs, "score at most this many documents (0 = all)");
  EvalOverrides ov;
  ov.add(ev);
  std::string ev_json;
  ev->add_option("--json", ev_json, "also write the results here");

  auto* conv = app.add_subcommand("convert", "write a model as a Hugging Face-style directory");
  ma.add(conv);
  std::string out;
  conv->add_option("--out,-o", out, "output directory")->required();

  auto* tk = app.add_subcommand("tokenize", "tokenize text into memory-mapped train.tok and val.tok files");
  std::string tk_tok, tk_out;
  std::vector<std::string> tk_inputs;
  int64_t val_every = 20;
  tk->add_option("--tokenizer,-t", tk_tok, "tokenizer file")->required();
  tk->add_option("inputs", tk_inputs, "text files or folders of .txt files")->required();
  tk->add_option("--separator", separator, "document separator inside files (\"\" = one document per file)");
  tk->add_option("--out,-o", tk_out, "output folder")->required();
  tk->add_option("--val-every", val_every, "hold out every N-th document for validation")->check(CLI::PositiveNumber);
  std::vector<std::string> tk_val;
  tk->add_option("--val", tk_val, "validation inputs (then every input document goes to train.tok)");

  auto* ttk = app.add_subcommand("train-tokenizer", "train a SentencePiece tokenizer (.model) on text or JSONL documents");
  SentencePieceTrainOptions sp;
  std::vector<std::string> ttk_inputs;
  ttk->add_option("inputs", ttk_inputs, "text files, .jsonl files or folders")->required();
  ttk->add_option("--separator", separator, "document separator inside .txt files");
  ttk->add_option("--out,-o", sp.out_model, "output file (must end in .model)")->required();
  ttk->add_option("--vocab-size", sp.vocab_size, "vocabulary size")->check(CLI::Range(8, 1 << 20));
  ttk->add_option("--model-type", sp.model_type, "bpe or unigram")->check(CLI::IsMember({"bpe", "unigram"}));

  auto* tasks = app.add_subcommand("tasks", "long-range tasks: key-value lookup, needle, reversal, copy");
  tasks->require_subcommand(1);
  auto* tgen = tasks->add_subcommand("generate", "write task documents (JSONL) with filler cut from natural text");
  TaskGenOptions tg;
  std::vector<std::string> tg_filler;
  std::string tg_out;
  tgen->add_option("--filler", tg_filler, "text files or folders to cut filler from")->required();
  tgen->add_option("--separator", separator, "document separator inside filler files");
  tgen->add_option("--out,-o", tg_out, "output .jsonl file")->required();
  tgen->add_option("-n", tg.n, "documents")->check(CLI::PositiveNumber);
  tgen->add_option("--seed", tg.seed, "generator seed");
  tgen->add_option("--kinds", tg.kinds, "kv, needle, reversal, copy, copy-shuffled (used in turn)")->delimiter(',');
  tgen->add_option("--min-chars", tg.min_chars, "shortest document in bytes");
  tgen->add_option("--max-chars", tg.max_chars, "longest document in bytes");
  tgen->add_option("--min-gap", tg.min_gap_chars, "filler bytes between the last fact and the first answer");
  tgen->add_option("--min-facts", tg.min_facts, "fewest key-value pairs in a kv document");
  tgen->add_option("--max-facts", tg.max_facts, "most key-value pairs in a kv document");
  auto* trep = tasks->add_subcommand("repeat", "induction data: token files of random id sequences, each repeated once");
  RepeatOptions trp;
  std::string trp_tok, trp_out;
  int64_t trp_val = 500;
  trep->add_option("--tokenizer,-t", trp_tok, "tokenizer file (its vocabulary size and BOS)")->required();
  trep->add_option("--out,-o", trp_out, "output folder for train.tok and val.tok")->required();
  trep->add_option("-n", trp.n, "training documents")->check(CLI::PositiveNumber);
  trep->add_option("--val", trp_val, "validation documents")->check(CLI::PositiveNumber);
  trep->add_option("--min-len", trp.min_len, "shortest sequence before its repeat");
  trep->add_option("--max-len", trp.max_len, "longest sequence before its repeat");
  trep->add_option("--first-id", trp.first_id, "smallest id drawn (skips special and byte tokens)");
  trep->add_option("--seed", trp.seed, "generator seed (validation: seed + 1)");
  auto* tstats = tasks->add_subcommand("stats", "a corpus' make-up: tokens and answer tokens per kind, fact-to-answer distances");
  std::string ts_tok, ts_json;
  std::vector<std::string> ts_inputs;
  int64_t ts_window = 64;
  tstats->add_option("--tokenizer,-t", ts_tok, "tokenizer file")->required();
  tstats->add_option("inputs", ts_inputs, "task files (.jsonl) and text files or folders (counted by file name)")->required();
  tstats->add_option("--separator", separator, "document separator inside text files");
  tstats->add_option("--window", ts_window, "local window W: answers whose fact is at least W tokens back count as beyond it")
      ->check(CLI::PositiveNumber);
  tstats->add_option("--json", ts_json, "also write the results here");
  auto* teval = tasks->add_subcommand("eval", "teacher-forced accuracy on the answers of a task file, and what the gates keep");
  ma.add(teval);
  std::string te_tasks, te_json;
  teval->add_option("tasks", te_tasks, "task file (.jsonl)")->required();
  teval->add_option("--max-docs", max_docs, "score at most this many documents (0 = all)");
  teval->add_option("--json", te_json, "also write the results here");
  ov.add(teval);

  auto* run = app.add_subcommand("run", "run an SP-KV model over a corpus through the KV cache; log every gate decision to HDF5");
  RunOptions ro;
  ro.tool_version = SPKV_VERSION, ro.git_commit = SPKV_GIT_COMMIT;
  run->add_option("--model,-m", ro.model, "SP-KV model (Hugging Face-style directory)")->required();
  run->add_option("--tokenizer,-t", ro.tokenizer, "tokenizer file (default: found beside the model)");
  run->add_option("--out,-o", ro.out, "the gate log to write (.h5)")->required();
  run->add_option("inputs", ro.inputs, "text files, folders (recursive) or JSONL files with a \"text\" and optional \"id\"")->required();
  run->add_option("--separator", ro.separator, "document separator inside .txt files (default: one document per file)");
  run->add_option("--tau", ro.tau, "gate threshold (default: the model's)");
  run->add_option("--window", ro.window, "local window W (default: the model's)")->check(CLI::PositiveNumber);
  run->add_option("--chunk", ro.chunk, "prefill chunk length")->check(CLI::PositiveNumber);
  run->add_option("--device", ro.device, "cpu, cuda or cuda:N (cuda: a build with a CUDA LibTorch, docs/gpu.md)");
  run->add_option("--max-docs", ro.max_docs, "at most this many input documents (0 = all)");
  run->add_flag("--dense", ro.dense, "full attention; log what the gates would decide");
  run->add_flag("--attention-stats", ro.attention_stats, "with --dense: log the attention mass each key received, in total and from the last queries");
  run->add_option("--last-queries", ro.last_queries, "the final queries of --attention-stats' second statistic")->check(CLI::PositiveNumber);
  run->add_flag("--resume", ro.resume, "continue the OUT.partial log of an interrupted run (same model and settings)");
  run->add_option("--flush-seconds", ro.flush_seconds, "flush the partial log at most this often (a kill loses at most this much work)")
      ->check(CLI::NonNegativeNumber);

  auto* an = app.add_subcommand("analyze", "density with spread, compression against length, and a tau sweep from gate logs");
  std::vector<std::string> an_logs;
  std::string an_json, an_md;
  an->add_option("logs", an_logs, "gate logs (.h5) of one model and settings; several are merged")->required();
  an->add_option("--out,-o", an_json, "write the report as JSON");
  an->add_option("--markdown", an_md, "write the report as Markdown");

  auto* chk = app.add_subcommand("check", "verify every invariant of gate logs (docs/hdf5-schema.md); exit 1 at the first violation");
  std::vector<std::string> chk_logs;
  chk->add_option("logs", chk_logs, "gate logs (.h5, or .h5.partial)")->required();

  auto* lay = app.add_subcommand("layout", "hybrid local-global layouts: derive from gate logs, evaluate, export");
  lay->require_subcommand(1);
  auto* lder = lay->add_subcommand("derive", "rank heads by SP-KV density; the guided layout and reference layouts at a budget");
  LayoutDeriveOptions ldo;
  ldo.tool = std::string("spkv ") + SPKV_VERSION + " (" + SPKV_GIT_COMMIT + ")";
  lder->add_option("logs", ldo.logs, "gate logs (.h5) of one model and settings; several are merged")->required();
  lder->add_option("--budget,-b", ldo.budget, "global heads: N heads, a fraction 0.F or F%, kv:R (KV-byte ratio), or density");
  lder->add_option("--out,-o", ldo.out_dir, "folder for the layouts (one NAME.json each)")->required();
  lder->add_option("--random", ldo.random, "random-head reference layouts (seeds 1..N)")->check(CLI::NonNegativeNumber);
  auto* leval = lay->add_subcommand("eval", "NLL and KV bytes of layouts against full attention and dynamic SP-KV");
  LayoutEvalOptions leo;
  leval->add_option("--model,-m", leo.model, "model (Hugging Face-style directory or .bin)")->required();
  leval->add_option("--tokenizer,-t", leo.tokenizer, "tokenizer file (default: found beside the model)");
  leval->add_option("layouts", leo.layouts, "layout files (spkv layout derive)")->required();
  leval->add_option("--corpus", leo.inputs, "held-out text files, folders or JSONL")->required();
  leval->add_option("--separator", leo.separator, "document separator inside .txt files");
  leval->add_option("--skip-docs", leo.skip_docs, "skip the first N documents (e.g. those the layouts were derived from)")
      ->check(CLI::NonNegativeNumber);
  leval->add_option("--max-docs", leo.max_docs, "at most this many documents (0 = all)");
  leval->add_option("--chunk", leo.chunk, "prefill chunk length")->check(CLI::PositiveNumber);
  leval->add_option("--json", leo.json, "also write the results here");
  leval->add_option("--markdown", leo.markdown, "also write the table here");
  auto* lexp = lay->add_subcommand("export", "a layout as our JSON, a Hugging Face config fragment and a DuoAttention/kvpress TSV");
  LayoutExportOptions lxo;
  lexp->add_option("layout", lxo.layout, "layout file (spkv layout derive)")->required();
  lexp->add_option("--out,-o", lxo.out_dir, "output folder")->required();
  lexp->add_option("--model-type", lxo.model_type, "target Hugging Face model_type (default: the layout's model)");

  auto* bench = app.add_subcommand("bench", "benchmarks: SP-KV against dense in the same process");
  bench->require_subcommand(1);
  BenchOptions bo;
  auto* bdec = bench->add_subcommand("decode", "decode tokens/s and KV bytes, dense vs SP-KV cache, by context length");
  auto* brun = bench->add_subcommand("run", "the cost of gate logging: spkv run's loop with and without the HDF5 log");
  for (auto* b : {bdec, brun}) {
    b->add_option("--model,-m", bo.model, "SP-KV model")->required();
    b->add_option("--tokenizer,-t", bo.tokenizer, "tokenizer file (default: found beside the model)");
    b->add_option("--corpus", bo.inputs, "text for prompts / documents (default: MODEL/heldout/text)");
    b->add_option("--chunk", bo.chunk, "prefill chunk length")->check(CLI::PositiveNumber);
    b->add_option("--json", bo.json, "also write the results here");
  }
  bdec->add_option("--contexts", bo.contexts, "prompt lengths")->delimiter(',');
  bdec->add_option("--steps", bo.steps, "decode steps timed after each prompt")->check(CLI::PositiveNumber);
  bdec->add_option("--device", bo.device, "cpu, cuda or cuda:N (cuda: a build with a CUDA LibTorch, docs/gpu.md)");
  brun->add_option("--max-docs", bo.max_docs, "documents of the corpus")->check(CLI::PositiveNumber);

  auto* tr = app.add_subcommand("train", "train or adapt a model from a recipe (JSON); see docs/training.md");
  std::string recipe;
  TrainOptions to;
  tr->add_option("--recipe,-r", recipe, "recipe file")->required();
  tr->add_option("--out,-o", to.out_dir, "run folder: train_log.jsonl, checkpoints/, model/")->required();
  tr->add_flag("--resume", to.resume, "continue from the latest checkpoint in --out");
  tr->add_option("--device", to.device, "cpu, cuda or cuda:N");
  tr->add_option("--stop-after", to.stop_after, "stop with a checkpoint after this step, as if interrupted");

  auto* toy = app.add_subcommand("toy", "toy tasks that separate the mechanisms");
  toy->require_subcommand(1);
  auto* rev = toy->add_subcommand("reversal", "32 numbers, >= 50 filler tokens, numbers reversed: full vs window vs SP-KV");
  ToyOptions toy_o;
  rev->add_option("--out,-o", toy_o.out_dir, "output folder (one run folder per variant, results.json)")->required();
  rev->add_option("--steps", toy_o.steps, "training steps per variant")->check(CLI::PositiveNumber);
  rev->add_option("--batch-size", toy_o.batch_size, "sequences per step")->check(CLI::PositiveNumber);
  rev->add_option("--eval-every", toy_o.eval_every, "steps between evaluations")->check(CLI::PositiveNumber);
  rev->add_option("--window", toy_o.window, "local window W (and the window-only variant's width)")->check(CLI::PositiveNumber);
  rev->add_option("--lr", toy_o.lr, "peak learning rate");
  rev->add_option("--seed", toy_o.seed, "seed for data and initialization");
  rev->add_option("--variants", toy_o.variants, "which of full, window, spkv to train")->delimiter(',');
  rev->add_option("--device", toy_o.device, "cpu, cuda or cuda:N");
  rev->add_option("--numbers", toy_o.task.n_numbers, "numbers to reverse (the paper: 32)");
  rev->add_option("--min-filler", toy_o.task.min_filler, "shortest filler span (the paper: at least 50)");
  rev->add_option("--max-filler", toy_o.task.max_filler, "longest filler span");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  bool complete = true;  // false: a stop signal ended run or train early
  try {
    at::set_num_threads(threads);
    set_blas_threads(blas_threads);
    // Keep freed tensor memory in the heap instead of returning it to the kernel on every step.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    if (*info) cmd_info(ma);
    if (*gen && samples > 0) {
      if (samples_out.empty()) throw ConfigError("generate --samples needs --out FILE");
      if (!gen->count("--temperature")) so.temperature = 1.0f;
      cmd_sample_corpus(ma, prompt, max_new, so, samples, samples_out);
    } else if (*gen) {
      if (!gen->count("--prompt")) throw ConfigError("generate needs --prompt (or --samples N --out FILE)");
      cmd_generate(ma, prompt, max_new, so);
    }
    if (*tk) cmd_tokenize(tk_tok, tk_inputs, tk_val, separator, tk_out, val_every);
    if (*ttk) cmd_train_tokenizer(ttk_inputs, separator, sp);
    if (*tgen) cmd_tasks_generate(tg_filler, separator, tg, tg_out);
    if (*trep) cmd_tasks_repeat(trp_tok, trp, trp_val, trp_out);
    if (*tstats) cmd_tasks_stats(ts_tok, ts_inputs, separator, ts_window, ts_json);
    if (*teval) cmd_tasks_eval(ma, te_tasks, max_docs, ov, te_json);
    if (*tr) complete = cmd_train(recipe, to);
    if (*rev) cmd_toy(toy_o);
    if (*ev) cmd_eval(ma, input, separator, max_docs, ov, ev_json);
    if (*conv) cmd_convert(ma, out);
    if (*an) {
      const auto r = analysis::analyze_logs(an_logs);
      const std::string md = analysis::report_markdown(r);
      std::fwrite(md.data(), 1, md.size(), stdout);
      if (!an_json.empty()) write_file_atomic(an_json, analysis::report_json(r));
      if (!an_md.empty()) write_file_atomic(an_md, md);
    }
    if (*chk)
      for (const auto& log : chk_logs) {
        const auto r = analysis::check_gate_log(log);
        fmt::print("{}: ok: {} documents, {} tokens{}\n", log, r.documents, r.tokens, r.complete ? "" : " (partial: complete = 0)");
        for (const auto& c : r.checked) fmt::print("  checked {}\n", c);
      }
    if (*lder) cmd_layout_derive(ldo);
    if (*leval) cmd_layout_eval(leo);
    if (*lexp) cmd_layout_export(lxo);
    if (*bench) {
      if (bo.inputs.empty()) bo.inputs = {bo.model + "/heldout/text"};
      if (*bdec) cmd_bench_decode(bo);
      if (*brun) cmd_bench_run(bo);
    }
    if (*run) {
      catch_stop_signals();
      complete = cmd_run(ro, g_stop);
    }
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
