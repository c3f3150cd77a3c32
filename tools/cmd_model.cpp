// `spkv generate | eval | convert`: text from a model, its NLL, and its conversion to a Hugging Face-style
// directory. (`spkv info` is in info.cpp.)
#include <fmt/core.h>
#include <torch/torch.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "analysis/layout.h"
#include "analysis/stats.h"
#include "core/base/json_text.h"
#include "core/base/progress.h"
#include "core/base/threads.h"
#include "core/infer/generate.h"
#include "core/model/checkpoint.h"
#include "core/model/safetensors.h"
#include "core/text/documents.h"
#include "core/train/trainer.h"
#include "tools/cli.h"
#include "tools/compare.h"

namespace spkv::cli {
namespace {

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

void cmd_generate(const ModelArgs& a, const std::string& prompt, int64_t max_new, const SamplerOptions& so, bool timing) {
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
  int64_t n = 0;
  std::chrono::steady_clock::time_point first;  // timed from the first token on, as llama2.c's run.c does
  generate(model, ids, max_new, so, [&](int32_t id) {
    const std::string piece = tok->token_bytes(prev, id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    prev = id;
    if (n++ == 0) first = std::chrono::steady_clock::now();
  });
  if (isatty(fileno(stdout))) std::fputc('\n', stderr);
  if (timing && n > 1) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - first).count();
    fmt::print(stderr, "generated {} tokens; after the first: {:.1f} tok/s ({:.4f} ms a token, {} threads)\n", n,
               double(n - 1) / s, 1e3 * s / double(n - 1), threads::current());
  }
}


// Sharded over a launch (group): each rank scores a token-balanced, contiguous share of the documents; rank 0
// gathers every document's NLL sum and count in document order and reports what one process reports.
void cmd_eval(const ModelArgs& a, const std::string& input, const std::string& separator, int64_t max_docs,
              const EvalOverrides& ov, const std::string& json_out, dist::Group* group) {
  if (ov.compare_instead(a, input, separator, max_docs, json_out, group)) return;
  auto model = load_model(a.model);
  ov.apply(model, a.model);
  auto tok = a.load_tokenizer_for(model->config);
  auto docs = read_documents(input, separator);
  if (max_docs > 0 && int64_t(docs.size()) > max_docs) docs.resize(max_docs);
  std::vector<std::vector<int32_t>> ids;
  std::vector<int64_t> doc_len;
  for (auto& d : docs) {
    ids.push_back(encode_showing_progress(*tok, d.text, /*bos=*/true, /*eos=*/false));
    doc_len.push_back(int64_t(ids.back().size()) - 1);
  }
  const int64_t ranks = group ? group->size() : 1, rank = group ? group->rank() : 0;
  const auto bounds = balanced_ranges(doc_len, ranks);
  const size_t first = bounds[size_t(rank)], end = bounds[size_t(rank) + 1];
  int64_t total = 0;
  for (size_t i = first; i < end; ++i) total += doc_len[i];
  std::vector<double> scored;  // per document of this rank: NLL sum, tokens scored
  Progress bar(group ? fmt::format("eval {}/{}", rank, ranks) : "eval", total, "tok");
  torch::Tensor counts;  // (L, Hkv, 2) with SP-KV
  double running = 0, running_n = 0;
  for (size_t i = first; i < end; ++i) {
    threads::rebalance();
    auto nll = token_nll(model, ids[i], &counts);
    double s = 0;
    for (double x : nll) s += x;
    scored.push_back(s), scored.push_back(double(nll.size()));
    running += s, running_n += double(nll.size());
    bar.add(int64_t(nll.size()), fmt::format("nll {:.4f}", running / std::max(1.0, running_n)));
  }
  bar.finish();
  if (group) {
    scored = group->all_gather_concat(scored);
    if (counts.defined()) {
      std::vector<int64_t> c(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel());
      group->allreduce_sum(c);
      counts = torch::tensor(c).reshape(counts.sizes());
    }
    if (rank != 0) return;  // rank 0 reports
  }
  std::vector<double> doc_mean, doc_tokens;
  double sum = 0;
  int64_t n = 0;
  for (size_t i = 0; i + 1 < scored.size(); i += 2) {  // in document order, as one process adds them
    if (scored[i + 1] == 0) continue;
    sum += scored[i], n += int64_t(scored[i + 1]);
    doc_mean.push_back(scored[i] / scored[i + 1]);
    doc_tokens.push_back(scored[i + 1]);
  }
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
    if (!ov.layout.empty()) j["layout"] = ov.layout;
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

}  // namespace

void EvalOverrides::add(CLI::App* app) {
  app->add_option("--tau", tau, "SP-KV threshold to evaluate at (default: the model's)");
  auto* w = app->add_option("--window", window, "attend only to the last N keys (local-only ablation)")->check(CLI::PositiveNumber);
  auto* l = app->add_option("--layout", layout, "impose a hybrid layout (spkv layout derive) instead of the gates: its local heads see only its window")
      ->excludes(w);
  auto* p = app->add_option("--policy", policy, "an eviction baseline instead of the gates, against full attention and "
                                                "SP-KV: spkv compare with this one policy (h2o, tova, snapkv, ...)")
                ->excludes(w)->excludes(l);
  app->add_option("--budget", budget, "the baseline's KV budget: matched (the model's own SP-KV run), matched-uniform, slots:N, density:RHO")
      ->needs(p);
}

bool EvalOverrides::compare_instead(const ModelArgs& a, const std::string& input, const std::string& separator,
                                    int64_t max_docs, const std::string& json, dist::Group* group) const {
  if (policy.empty()) return false;
  if (group) throw ConfigError("--policy runs in one process (spkv compare); launch it without --world-size");
  CompareOptions o;
  o.model = a.model, o.tokenizer = a.tokenizer, o.tau = tau, o.policies = {policy}, o.budgets = {budget};
  o.input = input, o.separator = separator, o.max_docs = max_docs, o.json = json;
  cmd_compare(o);
  return true;
}

void EvalOverrides::apply(LlamaForCausalLM& model, const std::string& path) const {
  if (tau > 0) {
    if (!model->config.spkv.enabled) throw ConfigError(path + ": --tau given, but the model has no spkv block");
    if (tau >= 1) throw ConfigError("--tau must be in (0, 1)");
    model->gates.tau = tau;
  }
  if (window > 0) model->config.sliding_window = window;
  if (!layout.empty()) {
    const analysis::Layout l = analysis::read_layout(layout);
    const ModelConfig& c = model->config;
    if (l.n_layers != c.n_layers || l.n_kv_heads != c.n_kv_heads)
      throw ConfigError(fmt::format("{}: the layout is for {} layers x {} KV heads, but {} has {} x {}", layout, l.n_layers,
                                    l.n_kv_heads, path, c.n_layers, c.n_kv_heads));
    model->layout = {l.global, l.window};
    check_layout(c, model->layout, layout);
  }
}

void add_model_commands(CLI::App& app, Commands& out) {
  struct Gen {
    ModelArgs ma;
    std::string prompt, samples_out;
    int64_t max_new = 256, samples = 0;
    SamplerOptions so;
    bool timing = false;
  };
  auto g = options<Gen>();
  auto* gen = add_command(app, "generate");
  g->ma.add(gen);
  gen->add_option("--prompt,-p", g->prompt, "prompt text (with --samples: default empty, BOS alone)");
  gen->add_option("--max-new-tokens,-n", g->max_new, "tokens to generate")->check(CLI::NonNegativeNumber);
  gen->add_option("--temperature", g->so.temperature, "0 = greedy")->check(CLI::Range(0.0, 100.0));
  gen->add_option("--top-p", g->so.top_p, "nucleus sampling mass")->check(CLI::Range(0.0, 1.0));
  gen->add_option("--seed", g->so.seed, "sampling seed");
  gen->add_option("--samples", g->samples, "write this many samples to --out instead of printing one (temperature default 1)")
      ->check(CLI::PositiveNumber);
  gen->add_option("--out,-o", g->samples_out, "corpus file for --samples (documents separated by <|endoftext|>)");
  gen->add_flag("--timing", g->timing, "print tokens/s after the first token on stderr");
  out.push_back({gen, [g, gen] {
                   if (g->samples > 0) {
                     if (g->samples_out.empty()) throw ConfigError("generate --samples needs --out FILE");
                     if (!gen->count("--temperature")) g->so.temperature = 1.0f;
                     cmd_sample_corpus(g->ma, g->prompt, g->max_new, g->so, g->samples, g->samples_out);
                   } else {
                     if (!gen->count("--prompt")) throw ConfigError("generate needs --prompt (or --samples N --out FILE)");
                     cmd_generate(g->ma, g->prompt, g->max_new, g->so, g->timing);
                   }
                   return true;
                 }});

  struct Eval {
    ModelArgs ma;
    std::string input, separator = "<|endoftext|>", json;
    int64_t max_docs = 0;
    EvalOverrides ov;
    dist::LaunchFlags launch;
    double dist_timeout = 300;
  };
  auto e = options<Eval>();
  auto* ev = add_command(app, "eval");
  e->ma.add(ev);
  ev->add_option("input", e->input, "text file, or folder of .txt files (recursive)")->required();
  ev->add_option("--separator", e->separator, "document separator inside files (\"\" = one document per file)");
  ev->add_option("--max-docs", e->max_docs, "score at most this many documents (0 = all)");
  e->ov.add(ev);
  ev->add_option("--json", e->json, "also write the results here");
  add_launch_flags(ev, e->launch, e->dist_timeout);
  out.push_back({ev, [e] {
                   const auto group = join_launch(e->launch, e->dist_timeout);
                   return cmd_eval(e->ma, e->input, e->separator, e->max_docs, e->ov, e->json, group.get()), true;
                 }});

  struct Convert {
    ModelArgs ma;
    std::string out;
  };
  auto c = options<Convert>();
  auto* conv = add_command(app, "convert");
  c->ma.add(conv);
  conv->add_option("--out,-o", c->out, "output directory")->required();
  out.push_back({conv, [c] { return cmd_convert(c->ma, c->out), true; }});
}

}  // namespace spkv::cli
