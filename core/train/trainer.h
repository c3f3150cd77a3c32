// Training and adaptation of (SP-KV) Llama models: the recipe, batch sources, the AdamW loop with the
// soft -> annealed-hard gate schedule, checkpoints with exact resume, validation and the JSONL log.
// Not a general-purpose trainer: one model, one device per process, next-token loss only.
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/model/model.h"
#include "core/train/token_file.h"

namespace spkv {
namespace dist {
class Group;
}

// One micro-batch. Inputs are tokens[:, :-1], targets tokens[:, 1:].
struct Batch {
  torch::Tensor tokens;     // (B, T + 1) int64
  torch::Tensor segments;   // (B, T + 1) int64 document index, non-decreasing; undefined = one document
  torch::Tensor loss_mask;  // (B, T) bool, which targets count; undefined = every target within a document
  torch::Tensor text;       // (B, T + 1) bool, tokens of plain-text documents (those in which every target
                            // counts); undefined when the file has no loss mask to tell them from task documents
  torch::Tensor answers;    // (B, T) bool, the targets the file's loss mask counts when data.loss "all" counts every
                            // target (the gate target's queries); undefined otherwise
};

// Where batches come from. Batches are pure functions of (step, micro), so a resumed run sees the data an
// uninterrupted one would.
struct BatchSource {
  virtual ~BatchSource() = default;
  virtual Batch train_batch(int64_t step, int64_t micro) = 0;
  virtual std::vector<Batch> val_batches() = 0;
  virtual int64_t vocab_size() const = 0;  // the largest token id + 1 the data may hold
  // whether training batches carry `text`, telling plain-text documents from task documents
  virtual bool has_document_kinds() const { return false; }
};

// Random windows of seq_len + 1 tokens from a token file; documents are packed and never see each other.
// A window starts at a uniformly drawn token; with `align_short_documents`, a start that falls in a
// document of at most seq_len + 1 tokens moves to that document's first token, so short documents (task
// documents whose answers need facts from their beginning) are always trained whole, while long ones are
// still cut anywhere. Validation: the first n_val non-overlapping windows of the validation file, aligned
// the same way (a window that would start inside a short document starts at the next document instead).
// With `count_all_targets`, every target counts even when the files have a loss mask; the mask then only tells
// plain-text documents from task documents (`text`).
class TokenFileSource : public BatchSource {
 public:
  TokenFileSource(const std::string& train, const std::string& val, int64_t seq_len, int64_t batch_size,
                  int64_t n_val_batches, uint64_t seed, bool align_short_documents = false,
                  bool count_all_targets = false);
  Batch train_batch(int64_t step, int64_t micro) override;
  std::vector<Batch> val_batches() override;
  int64_t vocab_size() const override { return std::max(train_.vocab_size(), val_.vocab_size()); }
  bool has_document_kinds() const override { return !train_plain_.empty(); }

 private:
  Batch window_batch(const TokenFile& f, const std::vector<uint8_t>& plain, const std::vector<int64_t>& starts) const;
  TokenFile train_, val_;
  std::vector<uint8_t> train_plain_, val_plain_;  // per document: every target counts (files with a loss mask)
  int64_t seq_len_, batch_size_, n_val_;
  uint64_t seed_;
  bool align_, count_all_;
};

struct Recipe {
  std::string path;       // the recipe file; relative paths in it are resolved against its folder
  nlohmann::json source;  // the recipe as read, copied into the output for provenance
  uint64_t seed = 0;
  std::string init;       // checkpoint to adapt; "" = train from scratch with `model`
  ModelConfig model;      // the architecture (from `model`, or the init checkpoint's), spkv included
  std::string tokenizer;  // copied next to every checkpoint; "" = none
  // data
  std::string train_data, val_data;
  int64_t seq_len = 256, batch_size = 16;
  std::string windows = "random";  // "random" | "documents": see TokenFileSource's align_short_documents
  std::string loss = "mask";  // "mask": the targets the files' loss mask counts | "all": every target (the mask
                              // then only tells document kinds, for local_on_text / local_on_tasks)
  // optimizer (AdamW); the predictor is its own parameter group
  double lr = 1e-3, min_lr_ratio = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  double predictor_lr_mult = 5.0, predictor_weight_decay = 0.1, grad_clip = 1.0;
  // optim.train: "all" (every parameter) or "predictors" (the utility predictors alone, the model frozen: the
  // gates calibrated on a trained model, whose matched control is then the model's own; needs schedule.gating
  // "soft" or "ste", since nothing would train in soft_then_hard's hard phase).
  bool train_predictors_only = false;
  // The method's density knob: loss += -density_lambda * mean(u over out-of-window keys) while the predictor
  // trains. 0 (the method's default) adds nothing; > 0 keeps more keys, < 0 fewer. One value for every head,
  // one per layer, or one per (layer, KV head), row-major (loss += -mean over heads of lambda * mean(u of the
  // head)).
  std::vector<double> density_lambda{0.0};
  // optim.gate_target {"weight", "threshold", "text_threshold", "keys", "heads", "into"}: not the method, an
  // objective that sees which keys a retrieval reads. While the predictor trains, loss += weight * the mean
  // over heads of the binary cross-entropy between each head's gate score u and 1[a counted query, seeing the
  // key from outside the window, gives it an attention probability >= threshold without the gates], over the
  // keys that a counted query sees from outside the window (GateTargetAttention): those of task documents
  // ("keys": "tasks") or of every document ("all"; "text_threshold", default "threshold", is then the
  // threshold of plain-text keys); in every head or only the listed "heads"; its gradient reaches the whole
  // model ("into": "model") or only the predictors ("predictor": u recomputed from their detached input).
  // Needs a training file with a loss mask, so that the counted queries of a task document are its answers.
  // weight 0 = off.
  double gate_target_weight = 0.0, gate_target_threshold = 0.1, gate_target_text_threshold = 0.0;  // 0: threshold
  bool gate_target_text = false;            // "keys": "all"
  bool gate_target_predictor_only = false;  // "into": "predictor"
  std::vector<uint8_t> gate_target_heads;   // "heads": [[layer, kv_head], ...], the only heads it trains; empty = all
  // data.local_on_text: [[layer, kv_head], ...], heads whose gates are shut (u = 0, ShutGates) on the keys of
  // plain-text documents in training batches, so plain text learns to do without their far keys while task
  // documents train their gates; data.local_on_tasks: the converse, heads shut on the keys of task documents
  // (every document that is not plain text), so retrieval cannot spread to them. Both need a training file
  // with a loss mask (`spkv tokenize --loss answers`). Validation and inference keep every gate. In a model
  // without SP-KV (dense pretraining with the same split) those heads see only the keys within
  // data.local_window of the query on those documents. (L * Hkv) flags, 1 = shut; empty = none.
  std::vector<uint8_t> local_on_text, local_on_tasks;
  int64_t local_window = 0;  // data.local_window: a model without SP-KV only
  int64_t grad_accum = 1;
  // schedule: warmup, cosine decay; with gating soft_then_hard the predictor is frozen and the gates annealed
  // to hard from hard_at of the decay on, over anneal_steps
  int64_t steps = 1000, warmup = 50, anneal_steps = 500;
  double hard_at = 0.75;
  std::string gating = "soft_then_hard";  // soft_then_hard | soft | ste
  // reporting
  int64_t eval_every = 100, eval_batches = 8, checkpoint_every = 0;  // checkpoint_every 0 = at every eval
  std::string eval_tasks;  // a task file (.jsonl) scored at every evaluation (the caller's eval_hook); "" = none
  int64_t eval_tasks_docs = 100;  // its first this many documents

  int64_t switch_step() const;  // first step of the hard phase (steps when there is none)
  // The gate settings and whether the predictor is frozen at a step (0-based).
  GateSettings gates_at(int64_t step, bool* predictor_frozen) const;
  double lr_at(int64_t step) const;  // the base LR (the predictor group gets predictor_lr_mult times it)
};

// Reads and validates a recipe. Throws ConfigError naming the file and the field.
Recipe load_recipe(const std::string& path);
Recipe parse_recipe(const nlohmann::json& j, const std::string& path);

struct TrainOptions {
  std::string out_dir;
  bool resume = false;                 // continue from the latest checkpoint in out_dir
  std::string device = "cpu";          // "cpu" | "cuda" | "cuda:N"
  int64_t stop_after = 0;              // > 0: stop (with a checkpoint) after this step, as if interrupted
  const std::atomic<bool>* stop = nullptr;  // set by a signal handler: checkpoint and return
  bool progress = true;
  // Called at each evaluation with the model in eval mode; its JSON object is merged into the log record.
  std::function<nlohmann::json(LlamaForCausalLM&)> eval_hook;
  // Data parallel over a process group (docs/distributed.md): each rank takes an equal slice of every batch,
  // gradients are summed over the ranks before clipping and the step, and rank 0 alone writes. Same result
  // as one process with the same recipe, to float rounding (not with ste gating, whose draws are per rank).
  dist::Group* group = nullptr;
};

struct TrainResult {
  int64_t step = 0;  // steps done
  bool interrupted = false;
  std::string model_dir;  // the final model (empty when interrupted)
  nlohmann::json last_eval;
};

// Writes out_dir/train_log.jsonl, out_dir/checkpoints/step-NNNNNNN/ (the last two kept) and, at the end,
// out_dir/model/ (a Hugging Face-style directory with the tokenizer). Throws spkv errors.
TrainResult train(const Recipe& r, BatchSource& data, const TrainOptions& o);

// Builds the model a recipe describes: the init checkpoint with fresh, fully open predictors, or a new
// model with GPT-2-style initialization seeded by the recipe.
LlamaForCausalLM build_model(const Recipe& r);

// Mean NLL and gate counts (hard gates at tau) over batches, in eval mode. counts: (L, Hkv, 2) or undefined.
struct EvalResult {
  double nll = 0;
  int64_t tokens = 0;
  torch::Tensor counts;
  nlohmann::json to_json() const;  // val_nll, density, density_per_layer, density_per_head
};
EvalResult evaluate(LlamaForCausalLM& m, const std::vector<Batch>& batches, const torch::Device& device);

// Counts (L, Hkv, 2) [kept, total] -> {name: pooled rate, name_per_layer: [L], name_per_head: [L][Hkv]}.
// Empty for undefined counts.
nlohmann::json rate_json(const torch::Tensor& counts, const std::string& name);
// Gate counts (L, Hkv, 2) [kept, evictable] -> density, density_per_layer, density_per_head, evictable_keys.
nlohmann::json density_json(const torch::Tensor& counts);

}  // namespace spkv
