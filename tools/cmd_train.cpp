// `spkv train | toy reversal`: training and SP-KV adaptation from a recipe, and the toy task that separates
// the mechanisms. Both stop at a signal with a checkpoint to --resume.
#include <fmt/core.h>
#include <torch/torch.h>

#include "core/text/tasks.h"
#include "core/train/token_file.h"
#include "core/train/toy_reversal.h"
#include "core/train/trainer.h"
#include "tools/cli.h"

namespace spkv::cli {
namespace {

// Returns false when interrupted before the last step.
bool cmd_train(const std::string& recipe_path, TrainOptions o, const dist::LaunchFlags& flags, double dist_timeout) {
  const dist::Launch launch = dist::resolve_launch(flags);
  const auto group = join_launch(flags, dist_timeout);  // several processes: data parallel (docs/distributed.md)
  if (group) {
    o.group = group.get();
    if (o.device == "cuda") o.device = "cuda:" + std::to_string(launch.local_rank);  // one GPU per process
  }
  Recipe r = load_recipe(recipe_path);
  if (r.train_data.empty() || r.val_data.empty())
    throw ConfigError(recipe_path + ": data.train and data.val must name token files (from `spkv tokenize`)");
  TokenFileSource data(r.train_data, r.val_data, r.seq_len, r.batch_size, r.eval_batches, r.seed, r.windows == "documents",
                       r.loss == "all");
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
  if (launch.rank != 0) return !res.interrupted;  // rank 0 reports
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

}  // namespace

void add_train_commands(CLI::App& app, Commands& out) {
  struct Train {
    std::string recipe;
    TrainOptions to;
    dist::LaunchFlags launch;
    double dist_timeout = 300;
  };
  auto t = options<Train>();
  auto* tr = add_command(app, "train");
  tr->add_option("--recipe,-r", t->recipe, "recipe file")->required();
  tr->add_option("--out,-o", t->to.out_dir, "run folder: train_log.jsonl, checkpoints/, model/")->required();
  tr->add_flag("--resume", t->to.resume, "continue from the latest checkpoint in --out");
  tr->add_option("--device", t->to.device, "cpu, cuda or cuda:N");
  tr->add_option("--stop-after", t->to.stop_after, "stop with a checkpoint after this step, as if interrupted");
  add_launch_flags(tr, t->launch, t->dist_timeout);
  out.push_back({tr, [t] { return cmd_train(t->recipe, t->to, t->launch, t->dist_timeout); }});

  auto* toy = add_command(app, "toy");
  toy->require_subcommand(1);
  auto o = options<ToyOptions>();
  auto* rev = toy->add_subcommand("reversal", "32 numbers, >= 50 filler tokens, numbers reversed: full vs window vs SP-KV");
  rev->add_option("--out,-o", o->out_dir, "output folder (one run folder per variant, results.json)")->required();
  rev->add_option("--steps", o->steps, "training steps per variant")->check(CLI::PositiveNumber);
  rev->add_option("--batch-size", o->batch_size, "sequences per step")->check(CLI::PositiveNumber);
  rev->add_option("--eval-every", o->eval_every, "steps between evaluations")->check(CLI::PositiveNumber);
  rev->add_option("--window", o->window, "local window W (and the window-only variant's width)")->check(CLI::PositiveNumber);
  rev->add_option("--lr", o->lr, "peak learning rate");
  rev->add_option("--seed", o->seed, "seed for data and initialization");
  rev->add_option("--variants", o->variants, "which of full, window, spkv to train")->delimiter(',');
  rev->add_option("--device", o->device, "cpu, cuda or cuda:N");
  rev->add_option("--numbers", o->task.n_numbers, "numbers to reverse (the paper: 32)");
  rev->add_option("--min-filler", o->task.min_filler, "shortest filler span (the paper: at least 50)");
  rev->add_option("--max-filler", o->task.max_filler, "longest filler span");
  out.push_back({rev, [o] { return cmd_toy(*o), true; }});
}

}  // namespace spkv::cli
