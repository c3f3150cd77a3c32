// `spkv layout derive | eval | export`. Derivation and the formats are analysis/layout.cpp; evaluation
// streams each held-out piece through core/infer/engine.h once per variant (the layout imposed on the cache).
#include "tools/layout.h"

#include <fmt/core.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>

#include "analysis/layout.h"
#include "analysis/report.h"
#include "analysis/stats.h"
#include "core/base/errors.h"
#include "core/base/json_text.h"
#include "core/base/progress.h"
#include "core/base/threads.h"
#include "core/dist/process_group.h"
#include "core/infer/engine.h"
#include "core/model/model.h"
#include "core/model/safetensors.h"
#include "core/text/documents.h"
#include "core/text/tokenizer.h"
#include "tools/build_info.h"
#include "tools/cli.h"
#include "tools/run.h"

namespace spkv {
namespace fs = std::filesystem;
using analysis::Layout;


void cmd_layout_derive(const LayoutDeriveOptions& o) {
  const auto r = analysis::analyze_logs(o.logs);
  const auto budget = analysis::parse_budget(o.budget);
  const int64_t g = analysis::budget_heads(budget, r);
  auto layouts = analysis::derive_layouts(r, g, o.random);
  fs::create_directories(o.out_dir);
  fmt::print("{} log(s), {} documents, {} tokens; {} layers x {} KV heads, W {}; SP-KV density {:.3f}, KV ratio {:.3f}\n",
             r.logs.size(), r.documents, r.tokens, r.n_layers, r.n_kv_heads, r.window, r.overall.mean,
             analysis::spkv_kv_ratio(r));
  fmt::print("budget '{}': {} global heads of {}\n\n", o.budget, g, r.n_layers * r.n_kv_heads);
  fmt::print("{:<15} {:>7} {:>9} {:>9}  {}\n", "layout", "global", "coverage", "KV ratio", "how");
  for (auto& l : layouts) {
    l.created = now_iso8601(), l.tool = o.tool;
    fmt::print("{:<15} {:>7} {:>9.3f} {:>9.3f}  {}\n", l.name, l.n_global(), l.coverage, l.kv_ratio, l.method);
    write_file_atomic((fs::path(o.out_dir) / (l.name + ".json")).string(), analysis::layout_json(l));
  }
  fmt::print("\nper-layer projection: coverage {:.3f} with {} global heads against the guided {:.3f} with {} (lost {:.3f})\n",
             layouts[1].coverage, layouts[1].n_global(), layouts[0].coverage, layouts[0].n_global(),
             layouts[0].coverage - layouts[1].coverage);
  fmt::print("wrote {} layouts to {}/\n", layouts.size(), o.out_dir);
}

namespace {
struct Variant {
  std::string name;
  const Layout* layout = nullptr;  // null: full attention (dense) or dynamic SP-KV
  bool dense = false;
  std::vector<double> doc_sum, doc_n;  // per piece: summed NLL, scored tokens
  double entries = 0;                  // K/V rows held at the end of each piece, summed over pieces
  double pooled_nll() const {
    return std::accumulate(doc_sum.begin(), doc_sum.end(), 0.0) / std::accumulate(doc_n.begin(), doc_n.end(), 0.0);
  }
};

nlohmann::json finite_or_null(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); }
}  // namespace

void cmd_layout_eval(const LayoutEvalOptions& o, dist::Group* group) {
  auto model = load_model(o.model);
  const ModelConfig& c = model->config;
  auto tok = load_tokenizer(o.tokenizer.empty() ? default_tokenizer_path(o.model) : o.tokenizer);
  std::vector<Layout> layouts;
  for (const auto& path : o.layouts) {
    layouts.push_back(analysis::read_layout(path));
    const Layout& l = layouts.back();
    if (l.n_layers != c.n_layers || l.n_kv_heads != c.n_kv_heads)
      throw FileError(path, fmt::format("the layout is {} layers x {} KV heads but the model {} has {} x {}", l.n_layers,
                                        l.n_kv_heads, o.model, c.n_layers, c.n_kv_heads));
    if (l.name.empty()) layouts.back().name = fs::path(path).stem().string();
  }
  auto docs = read_all_documents(o.inputs, o.separator);
  if (o.skip_docs >= int64_t(docs.size()))
    throw InputError(fmt::format("layout eval: --skip-docs {} leaves none of the {} documents", o.skip_docs, docs.size()));
  docs.erase(docs.begin(), docs.begin() + o.skip_docs);
  if (o.max_docs > 0 && int64_t(docs.size()) > o.max_docs) docs.resize(size_t(o.max_docs));
  std::vector<TokenPiece> pieces;
  int64_t n_tokens = 0;
  for (auto& d : docs)
    for (auto& p : split_to_context(d.id, encode_showing_progress(*tok, d.text, true, false), c.max_seq_len))
      n_tokens += int64_t(p.tokens.size()), pieces.push_back(std::move(p));

  std::vector<Variant> variants;
  variants.push_back({"full attention", nullptr, true});
  if (c.spkv.enabled) variants.push_back({fmt::format("SP-KV (tau {})", model->gates.tau), nullptr, false});
  for (const auto& l : layouts) variants.push_back({l.name, &l, false});
  // A launch's ranks score contiguous, token-balanced shares of the pieces; rank 0 gathers every piece's
  // numbers in piece order and reports what one process reports.
  std::vector<int64_t> piece_tokens;
  for (const auto& p : pieces) piece_tokens.push_back(int64_t(p.tokens.size()));
  const int64_t rank = group ? group->rank() : 0;
  const auto bounds = balanced_ranges(piece_tokens, group ? group->size() : 1);
  const size_t first = bounds[size_t(rank)], end = bounds[size_t(rank) + 1];
  int64_t my_tokens = 0;
  for (size_t i = first; i < end; ++i) my_tokens += piece_tokens[i];
  Progress bar(group ? fmt::format("layout eval {}/{}", rank, group->size()) : "layout eval", my_tokens * int64_t(variants.size()), "tok");
  for (auto& v : variants) {
    EngineOptions eo;
    eo.chunk = o.chunk, eo.dense = v.dense;
    if (v.layout) eo.layout = {v.layout->global, v.layout->window};
    Engine engine(model, eo);
    std::vector<double> scored;  // per piece: summed NLL, scored tokens, K/V rows held at its end
    for (size_t i = first; i < end; ++i) {
      threads::rebalance();
      const ScoredDocument s = score_document(engine, pieces[i].tokens);
      double sum = 0;
      for (double x : s.nll) sum += x;
      scored.insert(scored.end(), {sum, double(s.nll.size()), double(engine.cache_entries())});
      bar.add(int64_t(pieces[i].tokens.size()), v.name);
    }
    if (group) scored = group->all_gather_concat(scored);
    for (size_t i = 0; i + 2 < scored.size(); i += 3)
      v.doc_sum.push_back(scored[i]), v.doc_n.push_back(scored[i + 1]), v.entries += scored[i + 2];
  }
  bar.finish();
  if (group && rank != 0) return;  // rank 0 reports

  // Paired comparisons against full attention: per-piece mean NLL differences, weighted by scored tokens.
  const Variant& full = variants[0];
  const double full_nll = full.pooled_nll();
  const double row_bytes = 2.0 * double(c.head_dim) * sizeof(float);  // one K and one V row
  nlohmann::json rows = nlohmann::json::array();
  std::string md = fmt::format("| layout | global heads | coverage | KV ratio | NLL | ΔNLL vs full | 95% CI of Δ | ΔNLL vs SP-KV |\n"
                               "|---|---|---|---|---|---|---|---|\n");
  std::string inputs;
  for (const auto& i : o.inputs) inputs += (inputs.empty() ? "" : ", ") + i;
  fmt::print("{} pieces, {} tokens of {}\n{:<18} {:>6} {:>8} {:>8} {:>8} {:>9} {:>19} {:>9}\n", pieces.size(), n_tokens,
             inputs, "layout", "global", "coverage", "KV ratio", "NLL", "vs full", "95% CI", "vs SP-KV");
  const double spkv_nll = c.spkv.enabled ? variants[1].pooled_nll() : std::nan("");
  for (const auto& v : variants) {
    std::vector<double> diffs, mean_nll;
    for (size_t i = 0; i < pieces.size(); ++i) {
      mean_nll.push_back(v.doc_sum[i] / v.doc_n[i]);
      diffs.push_back((v.doc_sum[i] - full.doc_sum[i]) / v.doc_n[i]);
    }
    const auto nll = analysis::summarize(mean_nll, v.doc_n);
    const auto delta = analysis::summarize(diffs, v.doc_n);
    const double pct = 100 * delta.mean / full_nll, lo = 100 * delta.ci_low / full_nll, hi = 100 * delta.ci_high / full_nll;
    const double vs_spkv = 100 * (nll.mean / spkv_nll - 1), kv = v.entries / full.entries;
    const double coverage = v.layout ? v.layout->coverage : (v.dense || !c.spkv.enabled ? std::nan("") : 1.0);
    const int64_t n_global = v.layout ? v.layout->n_global() : -1;
    auto opt = [](double x, const char* f) { return std::isfinite(x) ? fmt::format(fmt::runtime(f), x) : std::string("–"); };
    fmt::print("{:<18} {:>6} {:>8} {:>8.3f} {:>8.4f} {:>8.2f}% {:>19} {:>9}\n", v.name,
               n_global >= 0 ? std::to_string(n_global) : "–", opt(coverage, "{:.3f}"), kv, nll.mean, pct,
               fmt::format("[{:+.2f}%, {:+.2f}%]", lo, hi), opt(vs_spkv, "{:+.2f}%"));
    md += fmt::format("| {} | {} | {} | {:.3f} | {:.4f} | {:+.2f}% | [{:+.2f}%, {:+.2f}%] | {} |\n", v.name,
                      n_global >= 0 ? std::to_string(n_global) : "–", opt(coverage, "{:.3f}"), kv, nll.mean, pct, lo, hi,
                      opt(vs_spkv, "{:+.2f}%"));
    rows.push_back({{"name", v.name}, {"layout", v.layout ? nlohmann::json(v.layout->global) : nlohmann::json(nullptr)},
                    {"global_heads", n_global >= 0 ? nlohmann::json(n_global) : nlohmann::json(nullptr)},
                    {"coverage", finite_or_null(coverage)},
                    {"nll", nll.mean}, {"nll_ci95", {nll.ci_low, nll.ci_high}},
                    {"delta_nll_vs_full", delta.mean}, {"delta_nll_vs_full_ci95", {delta.ci_low, delta.ci_high}},
                    {"delta_pct_vs_full", pct},
                    {"delta_pct_vs_spkv", finite_or_null(vs_spkv)},
                    {"kv_entries", v.entries}, {"kv_bytes", v.entries * row_bytes}, {"kv_ratio", kv}});
  }
  fmt::print("KV ratio: K/V rows held at the end of each piece against full attention; Δ: paired over pieces\n");
  if (!o.json.empty())
    write_file_atomic(o.json, json_text(nlohmann::json{{"model", o.model}, {"inputs", o.inputs}, {"pieces", pieces.size()},
                                             {"tokens", n_tokens}, {"layouts", o.layouts}, {"rows", rows}}));
  if (!o.markdown.empty()) write_file_atomic(o.markdown, md);
}

void cmd_layout_export(const LayoutExportOptions& o) {
  const Layout l = analysis::read_layout(o.layout);
  const std::string model_type = o.model_type.empty() ? l.model_type : o.model_type;
  std::vector<std::string> warnings;
  const std::string hf = analysis::hf_config_fragment(l, model_type, warnings);
  fs::create_directories(o.out_dir);
  const fs::path out(o.out_dir);
  write_file_atomic((out / "layout.json").string(), analysis::layout_json(l));
  write_file_atomic((out / "hf_config_fragment.json").string(), hf);
  write_file_atomic((out / "full_attention_heads.tsv").string(), analysis::duo_attention_tsv(l));
  for (const auto& w : warnings) std::fprintf(stderr, "spkv: warning: %s\n", w.c_str());
  fmt::print("{}: {} of {} heads global, window {}; wrote {}/layout.json, hf_config_fragment.json ({}), "
             "full_attention_heads.tsv\n", l.name, l.n_global(), l.n_layers * l.n_kv_heads, l.window, o.out_dir,
             model_type.empty() ? "model_type unknown" : model_type);
}

void cli::add_layout_commands(CLI::App& app, cli::Commands& out) {
  auto ldo = cli::options<LayoutDeriveOptions>();
  auto leo = cli::options<LayoutEvalOptions>();
  auto lxo = cli::options<LayoutExportOptions>();
  auto* lay = add_command(app, "layout");
  lay->require_subcommand(1);
  auto* lder = lay->add_subcommand("derive", "rank heads by SP-KV density; the guided layout and reference layouts at a budget");
  ldo->tool = std::string("spkv ") + cli::spkv_version() + " (" + cli::spkv_git_commit() + ")";
  lder->add_option("logs", ldo->logs, "gate logs (.h5) of one model and settings; several are merged")->required();
  lder->add_option("--budget,-b", ldo->budget, "global heads: N heads, a fraction 0.F or F%, kv:R (KV-byte ratio), or density");
  lder->add_option("--out,-o", ldo->out_dir, "folder for the layouts (one NAME.json each)")->required();
  lder->add_option("--random", ldo->random, "random-head reference layouts (seeds 1..N)")->check(CLI::NonNegativeNumber);
  auto* leval = lay->add_subcommand("eval", "NLL and KV bytes of layouts against full attention and dynamic SP-KV");
  leval->add_option("--model,-m", leo->model, "model (Hugging Face-style directory or .bin)")->required();
  leval->add_option("--tokenizer,-t", leo->tokenizer, "tokenizer file (default: found beside the model)");
  leval->add_option("layouts", leo->layouts, "layout files (spkv layout derive)")->required();
  leval->add_option("--corpus", leo->inputs, "held-out text files, folders or JSONL")->required();
  leval->add_option("--separator", leo->separator, "document separator inside .txt files");
  leval->add_option("--skip-docs", leo->skip_docs, "skip the first N documents (e.g. those the layouts were derived from)")
      ->check(CLI::NonNegativeNumber);
  leval->add_option("--max-docs", leo->max_docs, "at most this many documents (0 = all)");
  leval->add_option("--chunk", leo->chunk, "prefill chunk length")->check(CLI::PositiveNumber);
  leval->add_option("--json", leo->json, "also write the results here");
  leval->add_option("--markdown", leo->markdown, "also write the table here");
  auto launch = std::make_shared<dist::LaunchFlags>();
  auto timeout = std::make_shared<double>(300);
  add_launch_flags(leval, *launch, *timeout);
  auto* lexp = lay->add_subcommand("export", "a layout as our JSON, a Hugging Face config fragment and a DuoAttention/kvpress TSV");
  lexp->add_option("layout", lxo->layout, "layout file (spkv layout derive)")->required();
  lexp->add_option("--out,-o", lxo->out_dir, "output folder")->required();
  lexp->add_option("--model-type", lxo->model_type, "target Hugging Face model_type (default: the layout's model)");
  out.push_back({lder, [ldo] { return cmd_layout_derive(*ldo), true; }});
  out.push_back({leval, [leo, launch, timeout] {
                   const auto group = join_launch(*launch, *timeout);
                   return cmd_layout_eval(*leo, group.get()), true;
                 }});
  out.push_back({lexp, [lxo] { return cmd_layout_export(*lxo), true; }});
}

}  // namespace spkv
