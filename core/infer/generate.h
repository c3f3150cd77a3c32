// Sampling (greedy, temperature, top-p), text generation through the engine's KV cache (engine.h), and the
// masked full-sequence NLL that the engine's streamed scoring is tested against.
#pragma once
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/model/model.h"

namespace spkv {

struct SamplerOptions {
  float temperature = 0.0f;  // 0: greedy (argmax)
  float top_p = 1.0f;        // nucleus sampling when < 1
  uint64_t seed = 0;
};

// logits: (V) -> the next token id.
int64_t sample_token(const torch::Tensor& logits, const SamplerOptions& o, std::mt19937_64& rng);

// Appends up to max_new tokens to `tokens` (which must not be empty), calling on_token for each: the prompt
// is prefilled, then each token is decoded through the cache (an SP-KV model's closed gates evict). Stops
// early at EOS or BOS (llama2.c's convention) or at the model's context length.
void generate(LlamaForCausalLM& model, std::vector<int32_t>& tokens, int64_t max_new, const SamplerOptions& o,
              const std::function<void(int32_t)>& on_token);

// Teacher-forced NLL of a token sequence, in nats, one value per predicted token (tokens.size() - 1).
// Sequences longer than the context are cut into chunks of max_seq_len that overlap by one token, so
// every token after the first is predicted exactly once, with the context of its own chunk.
// With SP-KV, the hard-gate counts of every chunk (L, Hkv, 2) are added to *gate_counts when given.
std::vector<double> token_nll(LlamaForCausalLM& model, const std::vector<int32_t>& tokens,
                              torch::Tensor* gate_counts = nullptr);

}  // namespace spkv
