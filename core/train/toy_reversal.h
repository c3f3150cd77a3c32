// The reversal toy task of the SP-KV paper's appendix G: 32 distinct two-digit numbers, a filler span of
// at least 50 tokens, then the numbers reversed. A sliding window of 32 cannot see the numbers from the
// answer; SP-KV can, if its gates keep the numbers. Generation, the batch source, the metrics and the
// three-variant experiment behind `spkv toy reversal`. Not a general task library.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/train/trainer.h"

namespace spkv {

// Vocabulary: 0..99 the numbers "00".."99", then BOS, SEP (list ends), ANS (answer starts), PAD, and
// n_filler_words filler words.
struct ReversalTask {
  static constexpr int64_t kValues = 100, kBos = 100, kSep = 101, kAns = 102, kPad = 103, kFirstFiller = 104;
  int64_t n_numbers = 32, n_filler_words = 64, min_filler = 50, max_filler = 64;

  int64_t vocab_size() const { return kFirstFiller + n_filler_words; }
  int64_t seq_len() const { return 2 * n_numbers + max_filler + 2; }  // inputs per row (tokens - 1)
  // B rows of seq_len() + 1 tokens, padded with PAD; loss only on the reversed numbers.
  Batch make_batch(int64_t B, uint64_t seed) const;
};

class ReversalSource : public BatchSource {
 public:
  ReversalSource(ReversalTask task, int64_t batch_size, int64_t n_val_batches, uint64_t seed)
      : task_(task), batch_size_(batch_size), n_val_(n_val_batches), seed_(seed) {}
  Batch train_batch(int64_t step, int64_t micro) override;
  std::vector<Batch> val_batches() override;
  int64_t vocab_size() const override { return task_.vocab_size(); }

 private:
  ReversalTask task_;
  int64_t batch_size_, n_val_;
  uint64_t seed_;
};

// Teacher-forced accuracy on the reversed span (per token and per whole sequence) with hard gates, and the
// fraction of evictable number and filler keys the gates keep (overall and per layer).
nlohmann::json reversal_metrics(LlamaForCausalLM& m, const std::vector<Batch>& batches, const torch::Device& device,
                                int64_t n_numbers);

struct ToyOptions {
  std::string out_dir;
  ReversalTask task;
  int64_t steps = 1500, batch_size = 32, eval_every = 100, window = 32;
  uint64_t seed = 0;
  double lr = 3e-3;
  std::vector<std::string> variants = {"full", "window", "spkv"};
  std::string device = "cpu";
  bool progress = true;
};

// Trains each variant from scratch into out_dir/<variant>/ and writes out_dir/results.json (per variant:
// the final metrics and the eval curve). Returns that JSON.
nlohmann::json run_toy_reversal(const ToyOptions& o);

}  // namespace spkv
