// `spkv compare` (tools/compare.h): every document goes through full attention, the SP-KV model under its
// gates, then each baseline at each budget, all through core/infer/engine.h. The SP-KV pass gives the
// matched budgets of that document: each head may hold, after each token, what the SP-KV head held there.
#include "tools/compare.h"

#include <fmt/core.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>

#include "analysis/stats.h"
#include "core/base/errors.h"
#include "core/base/json_text.h"
#include "core/base/progress.h"
#include "core/base/threads.h"
#include "core/infer/engine.h"
#include "core/model/model.h"
#include "core/text/documents.h"
#include "core/text/tasks.h"
#include "core/text/tokenizer.h"
#include "tools/cli.h"

namespace spkv {
namespace {

struct Doc {
  std::vector<int32_t> ids;                  // BOS (or a later piece's context token) first, at most the context
  std::vector<std::vector<int64_t>> answers;  // task files: each answer's token indices within ids
  std::string kind;
};

struct Arm {
  std::string method, budget;  // budget: "" for full attention and SP-KV
  std::unique_ptr<Engine> engine;
  std::vector<double> sum, n;  // per document: summed NLL, scored tokens
  double held = 0;             // K/V rows held after each token, summed over tokens and heads
  std::map<std::string, std::pair<double, double>> exact;  // kind -> answers, exactly right
  double pooled() const {
    return std::accumulate(sum.begin(), sum.end(), 0.0) / std::accumulate(n.begin(), n.end(), 0.0);
  }
};

std::vector<Doc> read_inputs(const CompareOptions& o, const Tokenizer& tok, int64_t context) {
  std::vector<Doc> docs;
  const bool tasks = o.input.size() > 6 && o.input.substr(o.input.size() - 6) == ".jsonl";
  if (tasks) {
    auto all = read_tasks_jsonl(o.input);
    for (size_t i = size_t(std::min<int64_t>(o.skip_docs, int64_t(all.size()))); i < all.size(); ++i) {
      if (o.max_docs > 0 && int64_t(docs.size()) >= o.max_docs) break;
      const TaskDoc& d = all[i];
      Doc doc;
      doc.ids = tok.encode(d.text, /*bos=*/true, /*eos=*/false), doc.kind = d.kind;
      const auto answers = span_tokens(tok, doc.ids, d.text, d.answers);
      if (int64_t(doc.ids.size()) > context) doc.ids.resize(size_t(context));  // answers past it are left out
      for (const auto& a : answers)
        if (!a.empty() && a.front() >= 1 && a.back() < int64_t(doc.ids.size())) doc.answers.push_back(a);
      docs.push_back(std::move(doc));
    }
  } else {
    auto all = read_all_documents({o.input}, o.separator);
    for (size_t i = size_t(std::min<int64_t>(o.skip_docs, int64_t(all.size()))); i < all.size(); ++i) {
      if (o.max_docs > 0 && int64_t(i) - o.skip_docs >= o.max_docs) break;
      for (auto& p : split_to_context(all[i].id, encode_showing_progress(tok, all[i].text, true, false), context))
        docs.push_back({std::move(p.tokens), {}, ""});
    }
  }
  docs.erase(std::remove_if(docs.begin(), docs.end(), [](const Doc& d) { return d.ids.size() < 2; }), docs.end());
  if (docs.empty()) throw InputError(o.input + ": no document has two or more tokens to score");
  return docs;
}

}  // namespace

void cmd_compare(const CompareOptions& o) {
  if (o.policies.empty()) throw ConfigError("compare: --policies names no policy");
  auto model = load_model(o.model);
  const ModelConfig& c = model->config;
  LlamaForCausalLM gated = model;  // the SP-KV model: --spkv, else the model itself if it has gates
  const bool own_gates = o.spkv_model.empty() || o.spkv_model == o.model;
  if (!own_gates) gated = load_model(o.spkv_model);
  const std::string gated_path = own_gates ? o.model : o.spkv_model;
  const bool have_spkv = gated->config.spkv.enabled;
  if (have_spkv && (gated->config.n_layers != c.n_layers || gated->config.n_kv_heads != c.n_kv_heads))
    throw ConfigError(fmt::format("compare: the SP-KV model {} has {} layers x {} KV heads, the model {} has {} x {}",
                                  gated_path, gated->config.n_layers, gated->config.n_kv_heads, o.model, c.n_layers, c.n_kv_heads));
  if (o.tau > 0) {
    if (!have_spkv) throw ConfigError(gated_path + ": --tau given, but the model has no spkv block");
    gated->gates.tau = o.tau;
  }
  for (const auto& b : o.budgets)
    if ((b == "matched" || b == "matched-uniform") && !have_spkv)
      throw ConfigError("compare: --budget " + b + " needs an SP-KV model (--spkv MODEL, or a model with an spkv block)");
  const int64_t W = o.window > 0 ? o.window : (have_spkv ? gated->config.spkv.window : 0);
  if (W <= 0) throw ConfigError("compare: the policies' window is unknown: give --window or an SP-KV model (--spkv)");

  auto tok = load_tokenizer(o.tokenizer.empty() ? default_tokenizer_path(o.model) : o.tokenizer);
  const auto docs = read_inputs(o, *tok, std::min(c.max_seq_len, gated->config.max_seq_len));
  const bool tasks = !docs.front().kind.empty();

  std::vector<Arm> arms;
  auto add = [&](std::string method, std::string budget, EngineOptions eo, LlamaForCausalLM& m) {
    arms.push_back({std::move(method), std::move(budget), std::make_unique<Engine>(m, eo)});
  };
  EngineOptions full;
  full.dense = true;
  add("full attention", "", full, model);
  if (have_spkv) add(fmt::format("SP-KV (tau {})", gated->gates.tau), "", EngineOptions{}, gated);
  for (const auto& name : o.policies)
    for (const auto& b : o.budgets) {
      EngineOptions eo;
      const bool matched = b == "matched" || b == "matched-uniform";
      eo.baseline = BaselineOptions{parse_policy(name), matched ? parse_budget("slots:0") : parse_budget(b), W};
      add(eo.baseline->policy.name(), b, eo, model);
    }

  int64_t tokens = 0;
  double dense_rows = 0;  // what full attention holds after each token, summed over tokens and heads
  for (const auto& d : docs) {
    const double T = double(d.ids.size());
    tokens += int64_t(T), dense_rows += double(c.n_layers * c.n_kv_heads) * T * (T + 1) / 2;
  }
  Progress bar("compare", tokens * int64_t(arms.size()), "tok");
  for (const auto& d : docs) {
    threads::rebalance();
    CacheBudget per_head, uniform;  // this document's matched budgets, from the SP-KV pass
    for (auto& a : arms) {
      BudgetedKvCache* bc = a.engine->baseline_cache();
      if (bc && a.budget == "matched") bc->set_budget(per_head);
      if (bc && a.budget == "matched-uniform") bc->set_budget(uniform);
      const ScoredDocument s = score_document(*a.engine, d.ids);
      a.sum.push_back(std::accumulate(s.nll.begin(), s.nll.end(), 0.0)), a.n.push_back(double(s.nll.size()));
      const int64_t T = int64_t(d.ids.size());
      if (bc) {
        a.held += double(s.baseline_held);
      } else if (a.engine->gated()) {
        auto z = s.keep.to(torch::kUInt8).contiguous();  // (T, L, Hkv)
        per_head = matched_budget(z.data_ptr<uint8_t>(), T, c.n_layers, c.n_kv_heads, gated->config.spkv.window, false);
        uniform = per_head, uniform.uniform = true;
        for (int32_t e : per_head.matched) a.held += e;
      } else {
        a.held += double(c.n_layers * c.n_kv_heads) * double(T) * double(T + 1) / 2;
      }
      for (const auto& ans : d.answers) {
        bool ok = true;
        for (int64_t i : ans) ok = ok && s.argmax[size_t(i - 1)] == d.ids[size_t(i)];
        auto& [n, right] = a.exact[d.kind];
        n += 1, right += ok ? 1 : 0;
      }
      bar.add(T, a.method);
    }
  }
  bar.finish();

  // Paired over documents: per-document mean NLL differences, weighted by the tokens scored.
  auto paired = [&](const Arm& a, const Arm& ref) {
    std::vector<double> diffs;
    for (size_t i = 0; i < docs.size(); ++i) diffs.push_back((a.sum[i] - ref.sum[i]) / a.n[i]);
    const auto s = analysis::summarize(diffs, a.n);
    const double base = ref.pooled();
    return std::array<double, 3>{100 * s.mean / base, 100 * s.ci_low / base, 100 * s.ci_high / base};
  };
  auto exact_of = [](const Arm& a, const std::string& kind) {
    double n = 0, right = 0;
    for (const auto& [k, v] : a.exact)
      if (kind.empty() || k == kind) n += v.first, right += v.second;
    return n > 0 ? right / n : std::nan("");
  };
  const Arm& ref_full = arms[0];
  const Arm* ref_spkv = have_spkv ? &arms[1] : nullptr;
  auto pct = [](const std::array<double, 3>& x) { return fmt::format("{:+.2f}% [{:+.2f}, {:+.2f}]", x[0], x[1], x[2]); };
  fmt::print("{} {}, {} tokens; model {}{}; window {}\n", docs.size(), tasks ? "task documents" : "pieces", tokens, o.model,
             have_spkv ? ", SP-KV model " + gated_path : std::string(), W);
  fmt::print("{:<20} {:<16} {:>8} {:>8}  {:<27} {:<27}{}\n", "method", "budget", "KV ratio", "NLL", "ΔNLL vs full [95% CI]",
             have_spkv ? "ΔNLL vs SP-KV [95% CI]" : "", tasks ? " exact" : "");
  std::string md = fmt::format("| method | budget | KV ratio | NLL | ΔNLL vs full [95% CI] |{}{}\n|---|---|---|---|---|{}{}\n",
                               have_spkv ? " ΔNLL vs SP-KV [95% CI] |" : "", tasks ? " exact match |" : "",
                               have_spkv ? "---|" : "", tasks ? "---|" : "");
  nlohmann::json rows = nlohmann::json::array();
  for (const Arm& a : arms) {
    const double kv = a.held / dense_rows, nll = a.pooled(), ex = exact_of(a, "");
    const auto vs_full = paired(a, ref_full);
    const std::string vs_spkv = ref_spkv ? pct(paired(a, *ref_spkv)) : "";
    const std::string budget = a.budget.empty() ? "–" : a.budget;
    fmt::print("{:<20} {:<16} {:>8.3f} {:>8.4f}  {:<27} {:<27}{}\n", a.method, budget, kv, nll, pct(vs_full), vs_spkv,
               tasks ? fmt::format(" {:.3f}", ex) : "");
    md += fmt::format("| {} | {} | {:.3f} | {:.4f} | {} |{}{}\n", a.method, budget, kv, nll, pct(vs_full),
                      ref_spkv ? " " + vs_spkv + " |" : "", tasks ? fmt::format(" {:.3f} |", ex) : "");
    nlohmann::json row = {{"method", a.method}, {"budget", a.budget}, {"kv_ratio", kv}, {"nll", nll},
                          {"delta_pct_vs_full", vs_full[0]}, {"delta_pct_vs_full_ci95", {vs_full[1], vs_full[2]}}};
    if (ref_spkv) {
      const auto v = paired(a, *ref_spkv);
      row["delta_pct_vs_spkv"] = v[0], row["delta_pct_vs_spkv_ci95"] = {v[1], v[2]};
    }
    if (tasks) {
      row["exact"] = ex;
      for (const auto& [k, v] : a.exact) row["exact_per_kind"][k] = v.second / std::max(1.0, v.first);
    }
    rows.push_back(row);
  }
  fmt::print("KV ratio: K/V rows held after each token, summed, against full attention; Δ: paired over documents\n");
  if (!o.json.empty())
    write_file_atomic(o.json, json_text(nlohmann::json{{"model", o.model}, {"spkv_model", have_spkv ? gated_path : ""},
                                                       {"input", o.input}, {"documents", docs.size()}, {"tokens", tokens},
                                                       {"window", W}, {"rows", rows}}));
  if (!o.markdown.empty()) write_file_atomic(o.markdown, md);
}

void cli::add_compare_command(CLI::App& app, cli::Commands& out) {
  struct Flags {
    CompareOptions o;
    std::string policies, budgets = "matched";
  };
  auto f = cli::options<Flags>();
  CompareOptions* o = &f->o;
  auto* cmp = cli::add_command(app, "compare");
  cmp->add_option("--model,-m", o->model, "the model the baselines and full attention run on")->required();
  cmp->add_option("--tokenizer,-t", o->tokenizer, "tokenizer (default: the one beside the model)");
  cmp->add_option("--spkv", o->spkv_model, "the SP-KV model of the SP-KV row and the matched budget (default: the model)");
  cmp->add_option("--tau", o->tau, "the SP-KV model's threshold (default: its own)")->check(CLI::Range(0.0, 1.0));
  cmp->add_option("--policies", f->policies, "comma-separated: streaming[:SINKS], knorm, random[:SEED], h2o, tova, "
                                             "snapkv[:OBSERVE], oracle")->required();
  cmp->add_option("--budget", f->budgets, "comma-separated: matched, matched-uniform, slots:N, density:RHO (default matched)");
  cmp->add_option("--window", o->window, "recent keys every policy keeps (default: the SP-KV model's window)")
      ->check(CLI::PositiveNumber);
  cmp->add_option("input", o->input, "text file or folder, or a task file (.jsonl: exact match too)")->required();
  cmp->add_option("--separator", o->separator, "document separator inside text files");
  cmp->add_option("--skip-docs", o->skip_docs, "leave out the first N documents")->check(CLI::NonNegativeNumber);
  cmp->add_option("--max-docs", o->max_docs, "at most N documents (0 = all)")->check(CLI::NonNegativeNumber);
  cmp->add_option("--json", o->json, "also write the table here");
  cmp->add_option("--markdown", o->markdown, "also write the table as Markdown here");
  out.push_back({cmp, [f] {
                   auto split = [](const std::string& s) {
                     std::vector<std::string> parts;
                     for (size_t a = 0, b; a <= s.size(); a = b + 1)
                       if ((b = std::min(s.find(',', a), s.size())) > a) parts.push_back(s.substr(a, b - a));
                     return parts;
                   };
                   f->o.policies = split(f->policies), f->o.budgets = split(f->budgets);
                   return cmd_compare(f->o), true;
                 }});
}

}  // namespace spkv
