// The reversal toy task: data, metrics and the full / window / SP-KV experiment.
#include "core/train/toy_reversal.h"

#include <filesystem>
#include <fstream>
#include <random>

#include "core/base/errors.h"
#include "core/model/safetensors.h"

namespace spkv {
namespace fs = std::filesystem;
using json = nlohmann::json;

Batch ReversalTask::make_batch(int64_t B, uint64_t seed) const {
  std::mt19937_64 rng(seed);
  const int64_t T1 = seq_len() + 1;
  auto tokens = torch::full({B, T1}, kPad, torch::kInt64);
  auto mask = torch::zeros({B, T1 - 1}, torch::kBool);
  auto ta = tokens.accessor<int64_t, 2>();
  auto ma = mask.accessor<bool, 2>();
  std::vector<int64_t> values(kValues);
  std::iota(values.begin(), values.end(), 0);
  for (int64_t b = 0; b < B; ++b) {
    std::shuffle(values.begin(), values.end(), rng);  // the first n_numbers: distinct numbers
    const int64_t filler = std::uniform_int_distribution<int64_t>(min_filler, max_filler)(rng);
    int64_t t = 0;
    ta[b][t++] = kBos;
    for (int64_t i = 0; i < n_numbers; ++i) ta[b][t++] = values[i];
    ta[b][t++] = kSep;
    for (int64_t i = 0; i < filler; ++i)
      ta[b][t++] = kFirstFiller + std::uniform_int_distribution<int64_t>(0, n_filler_words - 1)(rng);
    const int64_t ans = t;
    ta[b][t++] = kAns;
    for (int64_t i = n_numbers - 1; i >= 0; --i) ta[b][t++] = values[i];
    for (int64_t j = ans; j < ans + n_numbers; ++j) ma[b][j] = true;  // input j predicts token j + 1
  }
  return {tokens, {}, mask, {}};
}

Batch ReversalSource::train_batch(int64_t step, int64_t micro) {
  return task_.make_batch(batch_size_, (seed_ * 1000003 + uint64_t(step)) * 31 + uint64_t(micro));
}

std::vector<Batch> ReversalSource::val_batches() {
  std::vector<Batch> out;
  for (int64_t i = 0; i < n_val_; ++i) out.push_back(task_.make_batch(batch_size_, 0xC0FFEEull + seed_ * 977 + uint64_t(i)));
  return out;
}

json reversal_metrics(LlamaForCausalLM& m, const std::vector<Batch>& batches, const torch::Device& device,
                      int64_t n_numbers) {
  torch::NoGradGuard ng;
  const GateSettings saved = m->gates;
  if (m->config.spkv.enabled) m->gates.mode = GateMode::hard;
  const int64_t L = m->config.n_layers;
  double correct = 0, total = 0, seq_ok = 0, seqs = 0;
  auto keep_num = torch::zeros({L, m->config.n_kv_heads, 2}, torch::kInt64), keep_fill = keep_num.clone();
  for (const Batch& b : batches) {
    const int64_t T = b.tokens.size(1) - 1;
    auto inp = b.tokens.narrow(1, 0, T);
    auto pred = m(inp.to(device)).argmax(-1).to(torch::kCPU);  // (B, T)
    auto hit = (pred == b.tokens.narrow(1, 1, T)) & b.loss_mask;
    correct += hit.sum().item<double>();
    total += b.loss_mask.sum().item<double>();
    seq_ok += (hit.sum(1) == b.loss_mask.sum(1)).sum().item<double>();
    seqs += double(b.tokens.size(0));
    if (!m->config.spkv.enabled) continue;
    // Key classes: the listed numbers (positions 1..32) and filler words.
    auto pos = torch::arange(T).unsqueeze(0);
    auto ev = m->last_evictable.to(torch::kCPU);  // (B|1, T)
    auto is_num = (inp < ReversalTask::kValues) & (pos <= n_numbers) & ev;
    auto is_fill = (inp >= ReversalTask::kFirstFiller) & ev;
    keep_num += m->gate_counts(is_num);
    keep_fill += m->gate_counts(is_fill);
  }
  m->gates = saved;
  json j = {{"token_acc", correct / std::max(1.0, total)}, {"seq_acc", seq_ok / std::max(1.0, seqs)}};
  if (m->config.spkv.enabled) {
    j.update(rate_json(keep_num, "keep_numbers"));
    j.update(rate_json(keep_fill, "keep_filler"));
  }
  return j;
}

namespace {
Recipe toy_recipe(const ToyOptions& o, const std::string& variant) {
  const ReversalTask& task = o.task;
  json model = {{"model_type", "llama"},          {"hidden_size", 64},        {"intermediate_size", 176},
                {"num_hidden_layers", 2},         {"num_attention_heads", 4}, {"num_key_value_heads", 4},
                {"vocab_size", task.vocab_size()}, {"max_position_embeddings", task.seq_len() + 1},
                {"rms_norm_eps", 1e-5},           {"tie_word_embeddings", true}};
  if (variant == "window") {
    model["use_sliding_window"] = true;
    model["sliding_window"] = o.window;
  }
  const int64_t warmup = std::max<int64_t>(1, o.steps / 20);
  const int64_t hard = warmup + (o.steps - warmup) * 3 / 4;
  json j = {{"seed", o.seed},
            {"model", model},
            {"data", {{"seq_len", task.seq_len()}, {"batch_size", o.batch_size}}},
            {"optim", {{"lr", o.lr}, {"weight_decay", 0.0}, {"min_lr_ratio", 0.1}}},
            {"schedule", {{"steps", o.steps}, {"warmup", warmup}, {"anneal_steps", std::max<int64_t>(1, (o.steps - hard) / 2)}}},
            {"eval", {{"every", o.eval_every}, {"batches", 4}}}};
  if (variant == "spkv") j["spkv"] = {{"window", o.window}, {"tau", 0.5}};
  return parse_recipe(j, (fs::path(o.out_dir) / variant / "recipe.json").string());
}
}  // namespace

json run_toy_reversal(const ToyOptions& o) {
  const ReversalTask& task = o.task;
  if (task.n_numbers < 2 || task.n_numbers > ReversalTask::kValues || task.min_filler < 1 || task.max_filler < task.min_filler)
    throw ConfigError("toy reversal: need 2 <= numbers <= 100 and 1 <= min filler <= max filler");
  json results = json::object();
  for (const std::string& v : o.variants) {
    if (v != "full" && v != "window" && v != "spkv")
      throw ConfigError("toy reversal: variant '" + v + "' (expected full, window or spkv)");
    Recipe r = toy_recipe(o, v);
    ReversalSource data(task, o.batch_size, 4, o.seed);
    const auto val = data.val_batches();
    TrainOptions to;
    to.out_dir = (fs::path(o.out_dir) / v).string();
    to.device = o.device;
    to.progress = o.progress;
    json curve = json::array();
    to.eval_hook = [&](LlamaForCausalLM& m) {
      json j = reversal_metrics(m, val, parse_device(o.device), task.n_numbers);
      curve.push_back(j);
      return j;
    };
    remove_tree(to.out_dir);  // each run of the experiment starts from scratch
    if (o.progress) std::fprintf(stderr, "toy reversal: training '%s'\n", v.c_str());
    TrainResult tr = train(r, data, to);
    json steps = json::array();
    for (int64_t s = o.eval_every; s <= o.steps; s += o.eval_every) steps.push_back(s);
    if (o.steps % o.eval_every) steps.push_back(o.steps);
    results[v] = {{"final", tr.last_eval}, {"curve_steps", steps}, {"curve", curve}};
  }
  json out = {{"task", {{"numbers", task.n_numbers}, {"filler", {task.min_filler, task.max_filler}},
                        {"window", o.window}, {"steps", o.steps}, {"batch_size", o.batch_size}, {"seed", o.seed}}},
              {"variants", results}};
  fs::create_directories(o.out_dir);
  write_file_atomic((fs::path(o.out_dir) / "results.json").string(), out.dump(2) + "\n");
  return out;
}

}  // namespace spkv
