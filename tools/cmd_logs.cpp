// `spkv run | merge | analyze | check`: a model over a corpus into an HDF5 gate log (run.cpp does the work),
// the merge of a sharded run's logs, and the report and the invariant check of gate logs (analysis/).
#include <fmt/core.h>

#include <cstdio>

#include "analysis/check_log.h"
#include "analysis/report.h"
#include "core/base/json_text.h"
#include "core/gatelog/merge.h"
#include "core/model/safetensors.h"
#include "tools/build_info.h"
#include "tools/cli.h"
#include "tools/run.h"

namespace spkv::cli {

void add_log_commands(CLI::App& app, Commands& out) {
  auto ro = options<RunOptions>();
  auto* run = add_command(app, "run");
    ro->tool_version = spkv_version(), ro->git_commit = spkv_git_commit();
  run->add_option("--model,-m", ro->model, "SP-KV model (Hugging Face-style directory)");
  run->add_option("--tokenizer,-t", ro->tokenizer, "tokenizer file (default: found beside the model)");
  run->add_option("--out,-o", ro->out, "the gate log to write (.h5)")->required();
  run->add_option("inputs", ro->inputs, "text files, folders (recursive) or JSONL files with a \"text\" and optional \"id\"");
  run->add_option("--separator", ro->separator, "document separator inside .txt files (default: one document per file)");
  run->add_option("--tau", ro->tau, "gate threshold (default: the model's)");
  run->add_option("--window", ro->window, "local window W (default: the model's)")->check(CLI::PositiveNumber);
  auto* pol = run->add_option("--policy", ro->policy, "log an eviction baseline instead of the gates: streaming[:SINKS], knorm, "
                                                      "random[:SEED], h2o, tova, snapkv[:OBSERVE], oracle (a schema-2 policy log)");
  run->add_option("--budget", ro->budget, "the baseline's KV budget: matched (the model's own SP-KV run), matched-uniform, "
                                          "slots:N, density:RHO")->needs(pol);
  run->add_option("--chunk", ro->chunk, "prefill chunk length")->check(CLI::PositiveNumber);
  run->add_option("--device", ro->device, "cpu, cuda or cuda:N (cuda: a build with a CUDA LibTorch, docs/gpu.md)");
  run->add_flag("--kv-bf16", ro->kv_bf16, "with --device cuda: keep the KV cache in bf16 (half the bytes)");
  run->add_option("--max-docs", ro->max_docs, "at most this many input documents (0 = all)");
  run->add_flag("--dense", ro->dense, "full attention; log what the gates would decide");
  run->add_flag("--attention-stats", ro->attention_stats, "with --dense: log the attention mass each key received, in total and from the last queries");
  run->add_option("--last-queries", ro->last_queries, "the final queries of --attention-stats' second statistic")->check(CLI::PositiveNumber);
  run->add_flag("--resume", ro->resume, "continue the OUT.partial log of an interrupted run (same model and settings)");
  run->add_option("--flush-seconds", ro->flush_seconds, "flush the partial log at most this often (a kill loses at most this much work)")
      ->check(CLI::NonNegativeNumber);
  run->add_option("--shard", ro->shard, "run shard I of N alone, I/N (a job array); merge the shard logs with spkv merge");
  add_launch_flags(run, ro->launch, ro->dist_timeout);
  run->add_flag("--keep-shards", ro->keep_shards, "keep the shard logs of a launch after rank 0 merged them");
  run->add_flag("--status", ro->status, "print the progress of the sharded run writing --out (from its manifest), and exit");
  // --status needs only --out.
  run->callback([run] {
    if (!run->count("--status"))
      for (const char* required : {"--model", "inputs"})
        if (!run->count(required)) throw CLI::RequiredError(required);
  });
  out.push_back({run, [ro] {
                   catch_stop_signals();
                   return cmd_run(*ro, g_stop);
                 }});

  struct Merge {
    std::vector<std::string> shards;
    std::string out;
  };
  auto mo = options<Merge>();
  auto* merge = add_command(app, "merge");
  merge->add_option("shards", mo->shards, "the shard logs of one run (any order), e.g. runs/x.shard-*-of-00004.h5")->required();
  merge->add_option("--out,-o", mo->out, "the merged gate log to write (.h5)")->required();
  out.push_back({merge, [mo] {
                   const MergeSummary m = merge_gate_logs(mo->shards, mo->out);
                   fmt::print("merged {} shards into {} ({} documents, {} tokens)\n", m.shards, mo->out, m.documents, m.tokens);
                   return true;
                 }});

  struct Analyze {
    std::vector<std::string> logs;
    std::string json, md;
  };
  auto a = options<Analyze>();
  auto* an = add_command(app, "analyze");
  an->add_option("logs", a->logs, "gate logs (.h5) of one model and settings; several are merged")->required();
  an->add_option("--out,-o", a->json, "write the report as JSON");
  an->add_option("--markdown", a->md, "write the report as Markdown");
  out.push_back({an, [a] {
                   const auto r = analysis::analyze_logs(a->logs);
                   const std::string md = analysis::report_markdown(r);
                   std::fwrite(md.data(), 1, md.size(), stdout);
                   if (!a->json.empty()) write_file_atomic(a->json, analysis::report_json(r));
                   if (!a->md.empty()) write_file_atomic(a->md, md);
                   return true;
                 }});

  auto logs = options<std::vector<std::string>>();
  auto* chk = add_command(app, "check");
  chk->add_option("logs", *logs, "gate logs (.h5, or .h5.partial)")->required();
  out.push_back({chk, [logs] {
                   for (const auto& log : *logs) {
                     const auto r = analysis::check_gate_log(log);
                     fmt::print("{}: ok: {} documents, {} tokens{}\n", log, r.documents, r.tokens,
                                r.complete ? "" : " (partial: complete = 0)");
                     for (const auto& c : r.checked) fmt::print("  checked {}\n", c);
                   }
                   return true;
                 }});
}

}  // namespace spkv::cli
