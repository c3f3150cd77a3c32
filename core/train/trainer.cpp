// The training loop, its recipe, the token-file batch source, evaluation and checkpoints.
#include "core/train/trainer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <type_traits>

#include "core/base/errors.h"
#include "core/base/json_field.h"
#include "core/base/progress.h"
#include "core/base/threads.h"
#include "core/dist/process_group.h"
#include "core/model/attention_stats.h"
#include "core/model/checkpoint.h"
#include "core/model/safetensors.h"
#include "core/text/tokenizer.h"

namespace spkv {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

uint64_t mix(uint64_t a, uint64_t b) {  // splitmix64 of a pair: independent streams per (seed, step, micro)
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void check_keys(const json& j, const std::set<std::string>& known, const std::string& where) {
  if (!j.is_object()) throw ConfigError(where + " must be a JSON object");
  for (auto& [k, v] : j.items())
    if (!known.count(k)) throw ConfigError(where + ": unknown field '" + k + "'");
}

// [[layer, kv_head], ...] -> (L * Hkv) flags, 1 = listed. Throws ConfigError naming `where`.`field`.
std::vector<uint8_t> head_flags(const json& v, const char* field, const ModelConfig& c, const std::string& where) {
  std::vector<uint8_t> flags(size_t(c.n_layers * c.n_kv_heads), 0);
  for (const auto& lh : json_field<std::vector<std::vector<int64_t>>>(v, field, where)) {
    if (lh.size() != 2 || lh[0] < 0 || lh[0] >= c.n_layers || lh[1] < 0 || lh[1] >= c.n_kv_heads)
      throw ConfigError(where + "." + field + ": expected [layer, kv_head] pairs with layer in [0, " +
                        std::to_string(c.n_layers) + ") and kv_head in [0, " + std::to_string(c.n_kv_heads) + ")");
    flags[size_t(lh[0] * c.n_kv_heads + lh[1])] = 1;
  }
  return flags;
}

template <class T>
void read(const json& j, const char* key, T& out, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return;
  out = json_field<T>(j[key], key, where);
}

std::string resolve(const std::string& base_dir, const std::string& p) {
  if (p.empty() || fs::path(p).is_absolute()) return p;
  return (fs::path(base_dir) / p).lexically_normal().string();
}

std::string step_dir_name(int64_t step) {
  char b[32];
  std::snprintf(b, sizeof b, "step-%07lld", (long long)step);
  return b;
}

std::vector<fs::path> checkpoints_in(const fs::path& dir) {
  std::vector<fs::path> out;
  if (!fs::is_directory(dir)) return out;
  for (auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step-", 0) == 0 && n.find(".tmp") == std::string::npos) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Writes a Hugging Face directory (inference config: hard gates) at `dir` through a temporary sibling.
void write_model_dir(const fs::path& dir, LlamaForCausalLM& m, const Recipe& r,
                     const std::function<void(const fs::path&)>& extra = {}) {
  const fs::path tmp = dir.string() + ".tmp";
  remove_tree(tmp.string());
  fs::create_directories(tmp);
  std::map<std::string, torch::Tensor> tensors;
  for (auto& [name, t] : m->named_tensors()) tensors[name] = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  ModelConfig c = m->config;
  c.spkv.mode = GateMode::hard;
  save_hf_checkpoint(tmp.string(), c, tensors, {{"recipe", r.path}});
  if (!r.tokenizer.empty()) copy_tokenizer_into(r.tokenizer, tmp.string());
  if (extra) extra(tmp);
  remove_tree(dir.string());
  fs::rename(tmp, dir);
}

// The fields (dotted paths) where two recipes differ: values compared as JSON, objects field by field.
void changed_fields(const json& a, const json& b, const std::string& at, std::vector<std::string>& out) {
  if (a.is_object() && b.is_object()) {
    std::set<std::string> keys;
    for (auto& [k, v] : a.items()) keys.insert(k);
    for (auto& [k, v] : b.items()) keys.insert(k);
    for (auto& k : keys)
      changed_fields(a.contains(k) ? a[k] : json(), b.contains(k) ? b[k] : json(), at.empty() ? k : at + "." + k, out);
  } else if (a != b) {
    out.push_back(at);
  }
}

}  // namespace

// --- data ----------------------------------------------------------------------------------------------

TokenFileSource::TokenFileSource(const std::string& train, const std::string& val, int64_t seq_len,
                                 int64_t batch_size, int64_t n_val_batches, uint64_t seed, bool align_short_documents,
                                 bool count_all_targets)
    : train_(train), val_(val), seq_len_(seq_len), batch_size_(batch_size), n_val_(n_val_batches), seed_(seed),
      align_(align_short_documents), count_all_(count_all_targets) {
  for (const TokenFile* f : {&train_, &val_})
    if (f->n_tokens() < seq_len + 1)
      throw InputError(f->path() + ": " + std::to_string(f->n_tokens()) + " tokens, fewer than one window of seq_len + 1 = " +
                       std::to_string(seq_len + 1));
  for (auto [f, plain] : {std::pair{&train_, &train_plain_}, std::pair{&val_, &val_plain_}}) {
    if (!f->has_loss_mask()) continue;
    plain->assign(size_t(f->n_docs()), 1);
    for (int64_t d = 0; d < f->n_docs(); ++d)  // a document's first token is no target
      for (int64_t i = f->doc_begin(d) + 1; i < f->doc_begin(d + 1) && (*plain)[size_t(d)]; ++i)
        (*plain)[size_t(d)] = f->counts(i);
  }
}

Batch TokenFileSource::window_batch(const TokenFile& f, const std::vector<uint8_t>& plain,
                                    const std::vector<int64_t>& starts) const {
  const int64_t B = int64_t(starts.size()), T1 = seq_len_ + 1;
  auto tokens = torch::empty({B, T1}, torch::kInt64), segments = torch::empty({B, T1}, torch::kInt64);
  auto text = torch::zeros({plain.empty() ? 0 : B, T1}, torch::kBool);
  auto ta = tokens.accessor<int64_t, 2>(), sa = segments.accessor<int64_t, 2>();
  auto xa = text.accessor<bool, 2>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t d = f.doc_of(starts[b]), seg = 0;
    for (int64_t t = 0; t < T1; ++t) {
      const int64_t i = starts[b] + t;
      if (t > 0 && d + 1 < f.n_docs() && i >= f.doc_begin(d + 1)) ++d, ++seg;
      ta[b][t] = f.token(i);
      sa[b][t] = seg;
      if (!plain.empty()) xa[b][t] = plain[size_t(d)] != 0;
    }
  }
  if (!f.has_loss_mask()) return {tokens, segments, {}, {}};
  auto mask = torch::empty({B, T1 - 1}, torch::kBool);  // (B, T) whether target t (token t + 1) counts
  auto ma = mask.accessor<bool, 2>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T1; ++t) ma[b][t] = f.counts(starts[b] + t + 1);
  if (count_all_) return {tokens, segments, {}, text, mask};
  return {tokens, segments, mask, text};
}

Batch TokenFileSource::train_batch(int64_t step, int64_t micro) {
  std::mt19937_64 rng(mix(mix(seed_, uint64_t(step)), uint64_t(micro)));
  std::uniform_int_distribution<int64_t> pick(0, train_.n_tokens() - (seq_len_ + 1));
  std::vector<int64_t> starts(batch_size_);
  for (auto& s : starts) {
    s = pick(rng);
    if (!align_) continue;
    const int64_t d = train_.doc_of(s);
    if (train_.doc_begin(d + 1) - train_.doc_begin(d) <= seq_len_ + 1) s = train_.doc_begin(d);
  }
  return window_batch(train_, train_plain_, starts);
}

std::vector<Batch> TokenFileSource::val_batches() {
  // Consecutive windows from the file's start; aligned, a window never starts inside a short document (it
  // moves on to the next document's first token), as in training.
  const int64_t T1 = seq_len_ + 1;
  std::vector<int64_t> starts;
  for (int64_t s = 0; int64_t(starts.size()) < n_val_ * batch_size_ && s + T1 <= val_.n_tokens(); s += T1) {
    const int64_t d = val_.doc_of(s);
    if (align_ && s != val_.doc_begin(d) && val_.doc_begin(d + 1) - val_.doc_begin(d) <= T1) s = val_.doc_begin(d + 1);
    if (s + T1 <= val_.n_tokens()) starts.push_back(s);
  }
  std::vector<Batch> out;
  for (size_t w = 0; w < starts.size(); w += size_t(batch_size_))
    out.push_back(window_batch(val_, val_plain_, {starts.begin() + w, starts.begin() + std::min(starts.size(), w + size_t(batch_size_))}));
  return out;
}

// --- recipe --------------------------------------------------------------------------------------------

Recipe parse_recipe(const json& j, const std::string& path) {
  check_keys(j, {"seed", "init", "model", "spkv", "tokenizer", "data", "optim", "schedule", "eval"}, path);
  Recipe r;
  r.path = path;
  r.source = j;
  const std::string base = fs::path(path).parent_path().string();
  read(j, "seed", r.seed, path);
  read(j, "init", r.init, path);
  read(j, "tokenizer", r.tokenizer, path);
  r.init = resolve(base, r.init);
  r.tokenizer = resolve(base, r.tokenizer);
  if (!r.init.empty() && j.contains("model"))
    throw ConfigError(path + ": give either 'init' (adapt a checkpoint) or 'model' (train from scratch), not both");
  if (!r.init.empty()) {
    r.model = load_checkpoint(r.init).config;
    if (r.tokenizer.empty()) {  // the one beside the checkpoint, if it has one: only eval.tasks needs it
      try {
        r.tokenizer = default_tokenizer_path(r.init);
      } catch (const TokenizerError&) {
      }
    }
  } else if (j.contains("model")) {
    r.model = parse_hf_config(j["model"].dump(), path + ": model");
  } else {
    throw ConfigError(path + ": missing field 'init' or 'model'");
  }
  // The spkv block goes through the config parser, so recipe and config.json validate the same way.
  json mj = json::parse(r.model.to_hf_json());
  mj.erase("spkv");
  if (j.contains("spkv") && !j["spkv"].is_null()) mj["spkv"] = j["spkv"];
  r.model = parse_hf_config(mj.dump(), path);

  if (!j.contains("data")) throw ConfigError(path + ": missing field 'data'");
  const json& d = j["data"];
  check_keys(d, {"train", "val", "seq_len", "batch_size", "windows", "loss", "local_on_text", "local_on_tasks",
                 "local_window"}, path + ": data");
  read(d, "train", r.train_data, path + ": data");
  read(d, "val", r.val_data, path + ": data");
  read(d, "seq_len", r.seq_len, path + ": data");
  read(d, "batch_size", r.batch_size, path + ": data");
  read(d, "windows", r.windows, path + ": data");
  if (r.windows != "random" && r.windows != "documents")
    throw ConfigError(path + ": data.windows must be \"random\" or \"documents\", got \"" + r.windows + "\"");
  read(d, "loss", r.loss, path + ": data");
  if (r.loss != "mask" && r.loss != "all")
    throw ConfigError(path + ": data.loss must be \"mask\" or \"all\", got \"" + r.loss + "\"");
  for (auto [field, flags] : {std::pair{"local_on_text", &r.local_on_text}, std::pair{"local_on_tasks", &r.local_on_tasks}})
    if (d.contains(field) && !d[field].is_null()) *flags = head_flags(d[field], field, r.model, path + ": data");
  const bool local = !r.local_on_text.empty() || !r.local_on_tasks.empty();
  if (d.contains("local_window") && !d["local_window"].is_null()) {
    read(d, "local_window", r.local_window, path + ": data");
    if (r.model.spkv.enabled || !local || r.local_window < 1)
      throw ConfigError(path + ": data.local_window: expected a window >= 1, for a model without SP-KV whose heads "
                        "are made local by data.local_on_text or data.local_on_tasks (SP-KV uses spkv.window)");
  } else if (local && !r.model.spkv.enabled) {
    throw ConfigError(path + ": data.local_window: a model without SP-KV needs the window of the heads that "
                      "data.local_on_text or data.local_on_tasks makes local");
  }
  r.train_data = resolve(base, r.train_data);
  r.val_data = resolve(base, r.val_data);
  if (j.contains("optim")) {
    const json& o = j["optim"];
    const std::string w = path + ": optim";
    check_keys(o, {"lr", "min_lr_ratio", "beta1", "beta2", "eps", "weight_decay", "predictor_lr_mult",
                   "predictor_weight_decay", "grad_clip", "grad_accum", "density_lambda", "gate_target", "train"}, w);
    read(o, "lr", r.lr, w), read(o, "min_lr_ratio", r.min_lr_ratio, w), read(o, "beta1", r.beta1, w);
    read(o, "beta2", r.beta2, w), read(o, "eps", r.eps, w), read(o, "weight_decay", r.weight_decay, w);
    read(o, "predictor_lr_mult", r.predictor_lr_mult, w);
    read(o, "predictor_weight_decay", r.predictor_weight_decay, w);
    read(o, "grad_clip", r.grad_clip, w), read(o, "grad_accum", r.grad_accum, w);
    std::string train = "all";
    read(o, "train", train, w);
    if (train != "all" && train != "predictors")
      throw ConfigError(w + ".train must be \"all\" or \"predictors\", got \"" + train + "\"");
    r.train_predictors_only = train == "predictors";
    if (o.contains("density_lambda") && !o["density_lambda"].is_null()) {
      const json& v = o["density_lambda"];  // a number, one per layer, or one list per layer of one per KV head
      if (v.is_array() && !v.empty() && v[0].is_array()) {
        r.density_lambda.clear();
        for (const auto& layer : json_field<std::vector<std::vector<double>>>(v, "density_lambda", w)) {
          if (layer.size() != size_t(r.model.n_kv_heads))
            throw ConfigError(w + ": density_lambda: each layer's list needs one number per KV head (" +
                              std::to_string(r.model.n_kv_heads) + "), got " + std::to_string(layer.size()));
          r.density_lambda.insert(r.density_lambda.end(), layer.begin(), layer.end());
        }
      } else {
        r.density_lambda = v.is_array() ? json_field<std::vector<double>>(v, "density_lambda", w)
                                        : std::vector<double>{json_field<double>(v, "density_lambda", w)};
      }
    }
    if (o.contains("gate_target") && !o["gate_target"].is_null()) {
      const json& g = o["gate_target"];
      check_keys(g, {"weight", "threshold", "text_threshold", "keys", "heads", "into"}, w + ".gate_target");
      read(g, "weight", r.gate_target_weight, w + ".gate_target");
      read(g, "threshold", r.gate_target_threshold, w + ".gate_target");
      read(g, "text_threshold", r.gate_target_text_threshold, w + ".gate_target");
      if (g.contains("text_threshold") && !g["text_threshold"].is_null() &&
          !(r.gate_target_text_threshold > 0 && r.gate_target_text_threshold <= 1))
        throw ConfigError(w + ".gate_target.text_threshold must be in (0, 1]");
      std::string keys = "tasks";
      read(g, "keys", keys, w + ".gate_target");
      if (keys != "tasks" && keys != "all")
        throw ConfigError(w + ".gate_target.keys must be \"tasks\" or \"all\", got \"" + keys + "\"");
      r.gate_target_text = keys == "all";
      std::string into = "model";
      read(g, "into", into, w + ".gate_target");
      if (into != "model" && into != "predictor")
        throw ConfigError(w + ".gate_target.into must be \"model\" or \"predictor\", got \"" + into + "\"");
      r.gate_target_predictor_only = into == "predictor";
      if (g.contains("heads") && !g["heads"].is_null())
        r.gate_target_heads = head_flags(g["heads"], "heads", r.model, w + ".gate_target");
    }
  }
  if (j.contains("schedule")) {
    const json& s = j["schedule"];
    const std::string w = path + ": schedule";
    check_keys(s, {"steps", "warmup", "gating", "hard_at", "anneal_steps"}, w);
    read(s, "steps", r.steps, w), read(s, "warmup", r.warmup, w), read(s, "gating", r.gating, w);
    read(s, "hard_at", r.hard_at, w), read(s, "anneal_steps", r.anneal_steps, w);
  }
  if (j.contains("eval")) {
    const json& e = j["eval"];
    const std::string w = path + ": eval";
    check_keys(e, {"every", "batches", "checkpoint_every", "tasks", "tasks_docs"}, w);
    read(e, "every", r.eval_every, w), read(e, "batches", r.eval_batches, w);
    read(e, "checkpoint_every", r.checkpoint_every, w);
    read(e, "tasks", r.eval_tasks, w), read(e, "tasks_docs", r.eval_tasks_docs, w);
    r.eval_tasks = resolve(base, r.eval_tasks);
  }
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) throw ConfigError(path + ": " + what);
  };
  need(r.seq_len >= 2 && r.seq_len <= r.model.max_seq_len,
       "data.seq_len must be in [2, max_position_embeddings = " + std::to_string(r.model.max_seq_len) + "], got " +
           std::to_string(r.seq_len));
  need(r.batch_size >= 1, "data.batch_size must be >= 1");
  need(r.lr > 0, "optim.lr must be > 0");
  need(r.min_lr_ratio >= 0 && r.min_lr_ratio <= 1, "optim.min_lr_ratio must be in [0, 1]");
  need(r.predictor_lr_mult >= 0, "optim.predictor_lr_mult must be >= 0");
  need(r.grad_accum >= 1, "optim.grad_accum must be >= 1");
  need(r.density_lambda.size() == 1 || r.density_lambda.size() == size_t(r.model.n_layers) ||
           r.density_lambda.size() == size_t(r.model.n_layers * r.model.n_kv_heads),
       "optim.density_lambda must be a number, one number per layer (" + std::to_string(r.model.n_layers) +
           ") or one list of " + std::to_string(r.model.n_kv_heads) + " per layer, got " + std::to_string(r.density_lambda.size()));
  for (double l : r.density_lambda) need(std::isfinite(l), "optim.density_lambda must be finite");
  need(std::isfinite(r.gate_target_weight) && r.gate_target_weight >= 0, "optim.gate_target.weight must be >= 0");
  need(r.gate_target_threshold > 0 && r.gate_target_threshold <= 1, "optim.gate_target.threshold must be in (0, 1]");
  need(r.gate_target_text_threshold == 0 || r.gate_target_text,
       "optim.gate_target.text_threshold needs \"keys\": \"all\" (plain-text keys are not targeted otherwise)");
  need(r.gate_target_weight == 0 || r.model.spkv.enabled, "optim.gate_target needs an SP-KV model (a 'spkv' block)");
  need(r.gate_target_weight == 0 || (r.local_on_text.empty() && r.local_on_tasks.empty()),
       "optim.gate_target cannot be combined with data.local_on_text or data.local_on_tasks");
  need(!r.train_predictors_only || r.model.spkv.enabled, "optim.train \"predictors\" needs an SP-KV model (a 'spkv' block)");
  need(!r.train_predictors_only || r.gating != "soft_then_hard",
       "optim.train \"predictors\" needs schedule.gating \"soft\" or \"ste\" (in soft_then_hard's hard phase the "
       "predictors are frozen too, and nothing would train)");
  need(r.steps >= 1, "schedule.steps must be >= 1");
  need(r.warmup >= 0 && r.warmup < r.steps, "schedule.warmup must be in [0, steps)");
  need(r.gating == "soft_then_hard" || r.gating == "soft" || r.gating == "ste",
       "schedule.gating '" + r.gating + "' (expected soft_then_hard, soft or ste)");
  need(r.hard_at >= 0 && r.hard_at <= 1, "schedule.hard_at must be in [0, 1]");
  need(r.anneal_steps >= 1, "schedule.anneal_steps must be >= 1");
  need(r.eval_every >= 1 && r.eval_batches >= 1, "eval.every and eval.batches must be >= 1");
  need(r.eval_tasks.empty() || !r.tokenizer.empty(), "eval.tasks needs a tokenizer (field 'tokenizer')");
  need(r.eval_tasks_docs >= 1, "eval.tasks_docs must be >= 1");
  return r;
}

Recipe load_recipe(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open recipe");
  std::stringstream ss;
  ss << in.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::exception& e) {
    throw ConfigError(path + ": invalid JSON: " + e.what());
  }
  return parse_recipe(j, path);
}

int64_t Recipe::switch_step() const {
  if (gating != "soft_then_hard" || !model.spkv.enabled) return steps;
  return warmup + int64_t(std::llround(hard_at * double(steps - warmup)));
}

GateSettings Recipe::gates_at(int64_t step, bool* predictor_frozen) const {
  GateSettings g;
  g.tau = model.spkv.tau;
  *predictor_frozen = false;
  if (!model.spkv.enabled) {
    g.mode = GateMode::dense;
  } else if (gating == "ste") {
    g.mode = GateMode::ste;
  } else if (step < switch_step()) {
    g.mode = GateMode::soft;
  } else {
    g.mode = GateMode::annealed;
    g.anneal = std::min(1.0, double(step - switch_step() + 1) / double(anneal_steps));
    *predictor_frozen = true;
  }
  return g;
}

double Recipe::lr_at(int64_t step) const {
  if (step < warmup) return lr * double(step + 1) / double(warmup);
  const double p = double(step - warmup) / double(std::max<int64_t>(1, steps - warmup));
  return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + std::cos(M_PI * p)));
}

// --- model and evaluation --------------------------------------------------------------------------

LlamaForCausalLM build_model(const Recipe& r) {
  torch::manual_seed(r.seed);  // also for adaptation: the new predictors are drawn from it
  LlamaForCausalLM m(r.model);
  torch::NoGradGuard ng;
  if (!r.init.empty()) {
    m->load(load_checkpoint(r.init), /*init_missing_predictor=*/true);
    for (auto& p : m->parameters()) p.set_data(p.data().clone());  // own memory, not the file mapping
    return m;
  }
  const double resid = 0.02 / std::sqrt(2.0 * double(r.model.n_layers));
  for (auto& item : m->named_parameters()) {
    const std::string& n = item.key();
    auto& p = item.value();
    if (n.find(".utility.") != std::string::npos) continue;
    if (n.find("norm.weight") != std::string::npos) p.fill_(1.0);
    else if (p.dim() == 1) p.zero_();
    else p.normal_(0.0, n.find("o_proj") != std::string::npos || n.find("down_proj") != std::string::npos ? resid : 0.02);
  }
  for (auto& layer : *m->model->layers) {
    auto& attn = layer->as<DecoderLayer>()->self_attn;
    if (attn->utility) attn->utility->reset(r.model.spkv);
  }
  return m;
}

namespace {
// Targets that count: the batch's loss mask, minus the first token of each packed document.
torch::Tensor target_mask(const Batch& b, int64_t T) {
  auto m = torch::ones({b.tokens.size(0), T}, torch::kBool);
  if (b.segments.defined()) m = b.segments.narrow(1, 1, T) == b.segments.narrow(1, 0, T);
  if (b.loss_mask.defined()) m = m & b.loss_mask;
  return m;
}

struct BatchLoss {
  torch::Tensor nll_sum;      // () summed NLL of the counted targets, with autograd
  torch::Tensor count;        // () number of counted targets
  torch::Tensor gate_target;  // () the gate target's cross-entropy (Recipe::gate_target_weight), or undefined
};

// The gate target of a step (Recipe::gate_target_*): off while threshold is 0.
struct GateTarget {
  double threshold = 0;
  double text_threshold = 0;    // of plain-text keys (Recipe's 0 resolved to threshold)
  bool text = false;            // plain-text keys too
  bool predictor_only = false;  // the term's gradient reaches only the predictors
  torch::Tensor heads;          // (L, Hkv) bool: the heads it trains; undefined = every head
};

// The gate target's term of one forward call through `g`: per head, the mean binary cross-entropy between u
// and 1[read_far >= threshold (t.text_threshold on plain-text keys)] over the keys that a counted far
// query sees, of task documents only (not `text`) unless t.text; then the mean over t.heads. text: (B, T)
// bool. t.predictor_only: u is recomputed from the predictor's detached input, so the term trains the
// predictors and leaves the rest of the model to the next-token loss.
torch::Tensor gate_target_term(LlamaForCausalLM& m, const GateTargetAttention& g, const torch::Tensor& text,
                               const GateTarget& t) {
  const auto keys = (t.text ? g.read_by : g.read_by & ~text).unsqueeze(-1);  // (B, S, 1)
  const auto threshold = torch::where(text, t.text_threshold, t.threshold).unsqueeze(-1);  // (B, S, 1)
  std::vector<torch::Tensor> per_layer;
  for (size_t il = 0; il < m->model->layers->size(); ++il) {
    auto& attn = m->model->layers[il]->as<DecoderLayer>()->self_attn;
    const auto u = t.predictor_only ? attn->utility(attn->last_tap.detach()) : attn->last_utility;  // (B, S, Hkv)
    const auto y = (g.read_far[il] >= threshold).to(u.scalar_type());                           // (B, S, Hkv)
    const auto bce = torch::nn::functional::binary_cross_entropy(
        u, y, torch::nn::functional::BinaryCrossEntropyFuncOptions().reduction(torch::kNone));  // (B, S, Hkv)
    const auto w = keys.expand_as(bce).to(u.scalar_type());
    per_layer.push_back((bce * w).sum(at::IntArrayRef{0, 1}) / w.sum(at::IntArrayRef{0, 1}).clamp_min(1));  // (Hkv)
  }
  const auto per_head = torch::stack(per_layer);  // (L, Hkv)
  return t.heads.defined() ? per_head.masked_select(t.heads.to(per_head.device())).mean() : per_head.mean();
}

// The next-token loss of one batch; the forward pass's gate counts are added to `counts`.
// shut: the heads whose gates are shut on the batch's plain-text keys (Recipe::local_on_text) and on its other
// keys (local_on_tasks), each (L, Hkv) bool or undefined; its keys are taken from the batch.
// target.threshold > 0: also the gate target's term, through GateTargetAttention (the batch has `text`).
BatchLoss batch_loss(LlamaForCausalLM& m, const Batch& b, const torch::Device& device, torch::Tensor& counts,
                     ShutGates shut = {}, const GateTarget& target = {}) {
  const int64_t T = b.tokens.size(1) - 1;
  if (shut.has_heads()) shut.keys = b.text.narrow(1, 0, T).to(device);
  const auto tokens = b.tokens.narrow(1, 0, T).to(device);
  const auto segments = b.segments.defined() ? b.segments.narrow(1, 0, T).to(device) : torch::Tensor();
  auto mask = target_mask(b, T).to(device);  // (B, T)
  torch::Tensor logits, term;                // (B, T, V); the gate target's term
  if (target.threshold > 0) {
    const auto am = make_attention_mask(m->config, T, segments, device);
    m->last_evictable = am.evictable;
    // Its queries: the answers (the file's mask) also when the loss counts every target.
    GateTargetAttention g(m->config, am, m->gates, shut, b.answers.defined() ? mask & b.answers.to(device) : mask);
    logits = m->forward_with(tokens, am.positions, g);
    term = gate_target_term(m, g, b.text.narrow(1, 0, T).to(device), target);
  } else {
    logits = m(tokens, segments, shut);
  }
  auto nll = torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}), b.tokens.narrow(1, 1, T).reshape(-1).to(device),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));  // (B*T)
  mask = mask.reshape(-1);
  auto c = m->gate_counts();
  if (c.defined()) counts = counts.defined() ? counts + c : c;
  return {(nll * mask).sum(), mask.sum(), term};
}

// The density knob's term, -mean over layers l of (lambda_l * mean u over layer l's out-of-window keys),
// from the last forward call (with the autograd graph), in two parts: per layer the sum of u over those keys
// and their number. A data-parallel step adds up the numbers of every rank before it divides (density_term).
struct DensityParts {
  torch::Tensor sums;    // (L, Hkv) with the graph
  torch::Tensor counts;  // (L, Hkv)
};
DensityParts density_parts(LlamaForCausalLM& m) {
  std::vector<torch::Tensor> u;
  for (auto& layer : *m->model->layers) u.push_back(layer->as<DecoderLayer>()->self_attn->last_utility);  // (B, T, Hkv)
  const auto all = torch::stack(u);                                                                   // (L, B, T, Hkv)
  const auto ev = m->last_evictable.unsqueeze(-1).expand_as(all).to(all.scalar_type());               // (L, B, T, Hkv)
  return {(all * ev).sum({1, 2}), ev.sum({1, 2})};
}
// counts: the keys of the whole batch, every rank's (L, Hkv). -mean over heads of lambda * mean(u): one lambda
// for every head gives -lambda * mean(u), every head having as many out-of-window keys; one per layer
// applies to each head of the layer.
torch::Tensor density_term(const DensityParts& d, const torch::Tensor& counts, const std::vector<double>& lambda) {
  const auto per_head = d.sums / counts.clamp_min(1);  // (L, Hkv)
  auto lam = torch::tensor(lambda, per_head.options());
  if (lam.numel() == per_head.size(0)) lam = lam.view({-1, 1});  // one per layer
  return -(lam.view({lam.numel() == 1 ? 1 : per_head.size(0), -1}).expand_as(per_head) * per_head).mean();
}

// Rows [begin, begin + n) of a batch: a rank's slice of the global batch.
Batch rows_of(const Batch& b, int64_t begin, int64_t n) {
  Batch out;
  out.tokens = b.tokens.narrow(0, begin, n);
  if (b.segments.defined()) out.segments = b.segments.narrow(0, begin, n);
  if (b.loss_mask.defined()) out.loss_mask = b.loss_mask.narrow(0, begin, n);
  if (b.text.defined()) out.text = b.text.narrow(0, begin, n);
  if (b.answers.defined()) out.answers = b.answers.narrow(0, begin, n);
  return out;
}

// Sums every gradient over the ranks, in buckets of at most 2^22 floats (16 MB): one collective per bucket.
// Every rank runs the same graph, so every rank has the same gradients defined, in the same order.
void allreduce_gradients(const std::vector<torch::Tensor>& params, dist::Group& g) {
  constexpr int64_t kBucket = int64_t(1) << 22;
  std::vector<torch::Tensor> grads;
  for (auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  for (size_t i = 0; i < grads.size();) {
    size_t j = i;
    int64_t n = 0;
    std::vector<torch::Tensor> parts;
    while (j < grads.size() && (j == i || n + grads[j].numel() <= kBucket)) n += grads[j].numel(), parts.push_back(grads[j++].reshape(-1));
    auto flat = torch::cat(parts).to(torch::kCPU).contiguous();  // (n,) the collectives run on CPU buffers (Gloo)
    g.allreduce_sum(flat.data_ptr<float>(), n);
    int64_t at = 0;
    for (size_t k = i; k < j; at += grads[k].numel(), ++k) grads[k].copy_(flat.narrow(0, at, grads[k].numel()).view_as(grads[k]).to(grads[k].device()));
    i = j;
  }
}
}  // namespace

EvalResult evaluate(LlamaForCausalLM& m, const std::vector<Batch>& batches, const torch::Device& device) {
  torch::NoGradGuard ng;
  const bool was_training = m->is_training();
  const GateSettings saved = m->gates;
  m->eval();
  if (m->config.spkv.enabled) m->gates.mode = GateMode::hard;
  EvalResult r;
  double sum = 0;
  for (const Batch& b : batches) {
    BatchLoss l = batch_loss(m, b, device, r.counts);
    sum += l.nll_sum.item<double>();
    r.tokens += l.count.item<int64_t>();
  }
  r.nll = r.tokens ? sum / double(r.tokens) : 0;
  m->gates = saved;
  m->train(was_training);
  return r;
}

json rate_json(const torch::Tensor& counts, const std::string& name) {
  json j;
  if (!counts.defined()) return j;
  auto ratio = [](const torch::Tensor& c) {  // (..., 2) -> (...) kept / total
    return (c.select(-1, 0).to(torch::kFloat64) / c.select(-1, 1).to(torch::kFloat64).clamp_min(1));
  };
  j[name] = ratio(counts.sum(at::IntArrayRef{0, 1})).item<double>();
  auto per_layer = ratio(counts.sum(1));
  j[name + "_per_layer"] = std::vector<double>(per_layer.data_ptr<double>(), per_layer.data_ptr<double>() + per_layer.numel());
  auto per_head = ratio(counts).contiguous();
  std::vector<std::vector<double>> rows;
  for (int64_t il = 0; il < per_head.size(0); ++il)
    rows.emplace_back(per_head[il].data_ptr<double>(), per_head[il].data_ptr<double>() + per_head.size(1));
  j[name + "_per_head"] = rows;
  return j;
}

json density_json(const torch::Tensor& counts) {
  json j = rate_json(counts, "density");
  if (counts.defined()) j["evictable_keys"] = counts.select(-1, 1).sum().item<int64_t>();
  return j;
}

json EvalResult::to_json() const {
  json j = density_json(counts);
  j["val_nll"] = nll;
  j["val_tokens"] = tokens;
  return j;
}

// --- the loop ------------------------------------------------------------------------------------------

TrainResult train(const Recipe& r, BatchSource& data, const TrainOptions& o) {
  const torch::Device device = parse_device(o.device);
  if (data.vocab_size() > r.model.vocab_size)
    throw ConfigError(r.path + ": the data has token ids up to " + std::to_string(data.vocab_size() - 1) +
                      " but the model's vocab_size is " + std::to_string(r.model.vocab_size));
  // Data parallel (o.group): rank r takes rows [r B/N, (r + 1) B/N) of every micro-batch; rank 0 alone
  // writes the log, checkpoints and the model.
  const int64_t N = o.group ? o.group->size() : 1, rank = o.group ? o.group->rank() : 0;
  const bool lead = rank == 0;
  if (r.batch_size % N != 0)
    throw ConfigError(r.path + ": data.batch_size " + std::to_string(r.batch_size) + " does not divide among " +
                      std::to_string(N) + " ranks (each takes an equal share of every batch)");
  const fs::path out(o.out_dir), ckdir = out / "checkpoints", log_path = out / "train_log.jsonl";
  fs::create_directories(out);

  LlamaForCausalLM m = build_model(r);
  int64_t start = 0, tokens_seen = 0;
  std::vector<std::string> kept_log;
  fs::path resume_from;
  std::vector<std::string> recipe_changes;  // fields of recipe.json that a resume changed
  // A folder whose first checkpoint was never completed (a failed write, a kill while writing) cannot be
  // continued; it starts over, with or without --resume. Half-written checkpoint folders go.
  const auto cks = checkpoints_in(ckdir);
  if (fs::exists(ckdir))
    for (auto& e : fs::directory_iterator(ckdir))
      if (e.path().filename().string().find(".tmp") != std::string::npos) remove_tree(e.path().string());
  if (cks.empty() && (o.resume || fs::exists(log_path))) {
    std::fprintf(stderr, "%s: no complete checkpoint; starting over from step 0\n", ckdir.string().c_str());
  } else if (o.resume) {
    resume_from = cks.back();
    m->load(load_checkpoint(resume_from.string()));
    torch::NoGradGuard ng;
    for (auto& p : m->parameters()) p.set_data(p.data().clone());
    const fs::path state = resume_from / "trainer_state.json";
    try {
      std::ifstream sf(state);
      json st = json::parse(sf);
      start = st.at("step").get<int64_t>();
      tokens_seen = st.at("tokens").get<int64_t>();
    } catch (const json::exception& e) {
      throw InputError(state.string() + ": expected {\"step\": N, \"tokens\": N}: " + e.what());
    }
    std::ifstream lf(log_path);
    int64_t line_no = 0;
    for (std::string line; std::getline(lf, line);) {  // keep the log up to the checkpoint
      ++line_no;
      try {
        if (!line.empty() && json::parse(line).value("step", int64_t(0)) <= start) kept_log.push_back(line);
      } catch (const json::exception&) {  // a line torn by a kill: dropped, the run repeats its steps
        std::fprintf(stderr, "%s: line %lld is not JSON; dropped\n", log_path.string().c_str(), (long long)line_no);
      }
    }
    // A run continued under another recipe (by design, e.g. a split from step N on) says so, and its log keeps
    // the recipe it ran under until then: recipe.json holds only the latest.
    std::ifstream rf(out / "recipe.json");
    const json before = json::parse(rf, nullptr, /*allow_exceptions=*/false);
    if (!before.is_discarded()) changed_fields(before, r.source, "", recipe_changes);
    if (!recipe_changes.empty()) {
      std::string fields;
      for (auto& f : recipe_changes) fields += (fields.empty() ? "" : ", ") + f;
      if (lead)
        std::fprintf(stderr, "%s: resumed at step %lld under a recipe that differs from the run's in %s; the log records it\n",
                     out.string().c_str(), (long long)start, fields.c_str());
      kept_log.push_back(json({{"type", "recipe_change"}, {"step", start}, {"fields", recipe_changes}, {"before", before}}).dump());
    }
  } else if (!cks.empty()) {
    throw InputError(out.string() + ": already holds a training run (train_log.jsonl and checkpoints); pass --resume "
                     "to continue it, or choose another --out");
  }
  m->to(device);
  if (N > 1) {  // every rank starts from rank 0's weights
    torch::NoGradGuard ng;
    for (auto& p : m->parameters()) {
      auto cpu = p.detach().to(torch::kCPU).contiguous();
      o.group->broadcast(cpu.data_ptr<float>(), cpu.numel());
      p.copy_(cpu);
    }
  }
  if (lead) write_file_atomic((out / "recipe.json").string(), r.source.dump(2) + "\n");

  // Parameter groups: matrices (decayed), vectors (norm weights, biases: not decayed), predictor. With
  // optim.train "predictors" the first two are frozen: no gradient, so AdamW neither moves nor decays them.
  std::vector<torch::Tensor> decay, no_decay, predictor = m->predictor_parameters();
  for (auto& item : m->named_parameters())
    if (item.key().find(".utility.") == std::string::npos) {
      if (r.train_predictors_only) item.value().requires_grad_(false);
      (item.value().dim() >= 2 ? decay : no_decay).push_back(item.value());
    }
  auto group = [&](std::vector<torch::Tensor> ps, double wd) {
    return torch::optim::OptimizerParamGroup(
        ps, std::make_unique<torch::optim::AdamWOptions>(
                torch::optim::AdamWOptions(r.lr).betas({r.beta1, r.beta2}).eps(r.eps).weight_decay(wd)));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups{group(decay, r.weight_decay), group(no_decay, 0.0)};
  if (!predictor.empty()) groups.push_back(group(predictor, r.predictor_weight_decay));
  torch::optim::AdamW opt(groups, torch::optim::AdamWOptions(r.lr));
  if (!resume_from.empty()) torch::load(opt, (resume_from / "optimizer.pt").string(), device);

  if (lead) {  // the log, truncated to the checkpoint on resume
    std::string kept;
    for (auto& l : kept_log) kept += l + "\n";
    write_file_atomic(log_path.string(), kept);
  }
  std::ofstream log;
  if (lead) log.open(log_path, std::ios::app);
  auto emit = [&](const json& j) {
    if (lead) log << j.dump() << "\n" << std::flush;
  };

  auto save_checkpoint = [&](int64_t step) {
    if (!lead) return;
    write_model_dir(ckdir / step_dir_name(step), m, r, [&](const fs::path& dir) {
      std::ostringstream state;  // serialized in memory: torch's file writer aborts when a write fails
      torch::save(opt, state);
      write_file_atomic((dir / "optimizer.pt").string(), state.str());
      json st = {{"step", step}, {"tokens", tokens_seen}, {"seed", r.seed},
                 {"rng", "per-step: torch::manual_seed(mix(seed, step)); data: mt19937_64(mix(mix(seed, step), micro))"}};
      write_file_atomic((dir / "trainer_state.json").string(), st.dump(2) + "\n");
    });
    auto cks = checkpoints_in(ckdir);
    for (size_t i = 0; i + 2 < cks.size(); ++i) remove_tree(cks[i].string());
  };

  const std::vector<Batch> val = data.val_batches();
  const int64_t ckpt_every = r.checkpoint_every > 0 ? r.checkpoint_every : r.eval_every;
  std::unique_ptr<Progress> bar;
  if (o.progress && lead) bar = std::make_unique<Progress>("train", r.steps - start, "step");
  TrainResult res;
  const auto t0 = std::chrono::steady_clock::now();
  int64_t tokens_at_start = tokens_seen;
  ShutGates shut;  // heads from local_on_text and local_on_tasks; keys from each batch
  shut.window = r.local_window;
  for (auto [flags, heads] : {std::pair{&r.local_on_text, &shut.heads}, std::pair{&r.local_on_tasks, &shut.other_heads}})
    if (!flags->empty())
      *heads = torch::tensor(std::vector<int64_t>(flags->begin(), flags->end()))
                   .view({r.model.n_layers, r.model.n_kv_heads}).to(device) != 0;
  if (shut.has_heads() && !data.has_document_kinds())
    throw ConfigError(r.path + ": data." + (shut.heads.defined() ? "local_on_text" : "local_on_tasks") +
                      " needs a training file with a loss mask, to tell plain-text documents from task documents "
                      "(spkv tokenize --loss answers): " + r.train_data + " has none");
  if (r.gate_target_weight > 0 && !data.has_document_kinds())
    throw ConfigError(r.path + ": optim.gate_target needs a training file with a loss mask, so that a task "
                      "document's counted queries are its answers (spkv tokenize --loss answers): " + r.train_data +
                      " has none");
  GateTarget target{r.gate_target_threshold,
                    r.gate_target_text_threshold > 0 ? r.gate_target_text_threshold : r.gate_target_threshold,
                    r.gate_target_text, r.gate_target_predictor_only};
  if (!r.gate_target_heads.empty())
    target.heads = torch::tensor(std::vector<int64_t>(r.gate_target_heads.begin(), r.gate_target_heads.end()))
                       .view({r.model.n_layers, r.model.n_kv_heads}) != 0;
  const bool knob = std::any_of(r.density_lambda.begin(), r.density_lambda.end(), [](double l) { return l != 0; });
  for (int64_t step = start; step < r.steps; ++step) {
    threads::rebalance();
    bool frozen = false;
    m->gates = r.gates_at(step, &frozen);
    for (auto& p : predictor) p.requires_grad_(!frozen);
    const double lr = r.lr_at(step);
    for (size_t g = 0; g < opt.param_groups().size(); ++g)
      static_cast<torch::optim::AdamWOptions&>(opt.param_groups()[g].options()).lr(g == 2 ? lr * r.predictor_lr_mult : lr);
    torch::manual_seed(mix(r.seed, uint64_t(step)));  // ste sampling
    m->train();
    for (auto& p : m->parameters()) p.mutable_grad() = torch::Tensor();

    double loss_sum = 0, target_sum = 0;  // target_sum: the gate target's term (this rank's), while it is on
    bool targeted = false;
    torch::Tensor counts;
    for (int64_t micro = 0; micro < r.grad_accum; ++micro) {
      const Batch full = data.train_batch(step, micro);
      const Batch b = N > 1 ? rows_of(full, rank * (r.batch_size / N), r.batch_size / N) : full;
      const bool gates_train = !frozen && m->config.spkv.enabled && m->gates.mode != GateMode::dense;
      const bool with_target = r.gate_target_weight > 0 && gates_train;
      BatchLoss l = batch_loss(m, b, device, counts, shut, with_target ? target : GateTarget{});
      const bool with_knob = knob && gates_train;
      DensityParts d;
      if (with_knob) d = density_parts(m);
      // The divisors are the whole micro-batch's: this rank's targets and keys, plus every other rank's.
      torch::Tensor count = l.count, keys = d.counts;
      if (N > 1) {
        std::vector<double> v{l.count.item<double>()};
        if (with_knob)
          for (int64_t i = 0; i < d.counts.numel(); ++i) v.push_back(d.counts.flatten()[i].item<double>());
        o.group->allreduce_sum(v);
        count = torch::tensor(int64_t(v[0]), l.count.options());
        if (with_knob) keys = torch::tensor(std::vector<double>(v.begin() + 1, v.end())).to(d.counts.dtype()).view_as(d.counts);
      }
      auto loss = l.nll_sum / count.clamp_min(1);
      auto objective = with_knob ? loss + density_term(d, keys, r.density_lambda) : loss;  // summed over the ranks: the whole batch's
      if (with_target) {  // each rank's mean over its keys; the ranks' mean once the gradients are summed
        objective = objective + r.gate_target_weight / double(N) * l.gate_target;
        target_sum += l.gate_target.item<double>() / double(r.grad_accum), targeted = true;
      }
      (objective / double(r.grad_accum)).backward();
      loss_sum += loss.item<double>() / double(r.grad_accum);
      tokens_seen += full.tokens.numel() - full.tokens.size(0);
    }
    if (N > 1) allreduce_gradients(m->parameters(), *o.group);
    double grad_norm = 0;
    if (r.grad_clip > 0) {
      std::vector<torch::Tensor> with_grad;
      for (auto& p : m->parameters())
        if (p.grad().defined()) with_grad.push_back(p);
      grad_norm = torch::nn::utils::clip_grad_norm_(with_grad, r.grad_clip);
    }
    opt.step();
    bool stop = (o.stop && o.stop->load()) || (o.stop_after > 0 && step + 1 >= o.stop_after);
    if (N > 1) {  // the step's loss and gate counts over every rank, and a stop asked of any rank
      std::vector<double> v{loss_sum, stop ? 1.0 : 0.0};
      const auto c = counts.defined() ? counts.to(torch::kCPU).to(torch::kFloat64).contiguous() : torch::Tensor();
      if (c.defined()) v.insert(v.end(), c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
      o.group->allreduce_sum(v);
      loss_sum = v[0], stop = v[1] > 0;
      if (c.defined()) counts = torch::tensor(std::vector<double>(v.begin() + 2, v.end())).to(counts.dtype()).reshape(counts.sizes());
    }

    const int64_t done = step + 1;
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    json rec = {{"type", "step"},  {"step", done},          {"loss", loss_sum}, {"lr", lr},
                {"grad_norm", grad_norm}, {"mode", to_string(m->gates.mode)}, {"anneal", m->gates.anneal},
                {"tokens", tokens_seen}, {"tok_per_s", el > 0 ? double(tokens_seen - tokens_at_start) / el : 0.0}};
    if (counts.defined()) rec["density"] = density_json(counts)["density"];
    if (targeted) rec["gate_target"] = target_sum;
    emit(rec);
    if (bar) {
      char extra[160];
      std::snprintf(extra, sizeof extra, "loss %.4f%s  %s  %.0f tok/s", loss_sum,
                    counts.defined() ? (" density " + std::to_string(rec["density"].get<double>()).substr(0, 5)).c_str() : "",
                    to_string(m->gates.mode), rec["tok_per_s"].get<double>());
      bar->add(1, extra);
    }
    if (lead && (done % r.eval_every == 0 || done == r.steps)) {  // the other ranks wait in the next step
      EvalResult ev = evaluate(m, val, device);
      json e = ev.to_json();
      e["type"] = "eval";
      e["step"] = done;
      if (o.eval_hook) {
        m->eval();
        e.update(o.eval_hook(m));
        m->train();
      }
      emit(e);
      res.last_eval = e;
    }
    if (done % ckpt_every == 0 || stop || done == r.steps) save_checkpoint(done);
    res.step = done;
    if (stop && done < r.steps) {
      if (bar) bar->finish();
      res.interrupted = true;
      return res;
    }
  }
  if (bar) bar->finish();
  res.model_dir = (out / "model").string();
  if (lead) write_model_dir(out / "model", m, r);
  if (N > 1) o.group->barrier();  // the model is written before any rank reports it
  return res;
}

}  // namespace spkv
