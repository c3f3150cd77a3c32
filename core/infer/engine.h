// The inference engine: runs a Llama-family model over token streams through a KV cache, chunked prefill
// then one-token decode, with SP-KV gate decisions turned into cache evictions. generate(), scoring and
// `spkv run` go through it. It borrows the model, runs the model's own layers with itself as their
// attention backend (model.h), and owns the cache (kv_cache.h); the attention math is in kernels/cpu. Not the
// training path: the trainer uses the model's masked backend.
#pragma once
#include <memory>
#include <optional>
#include <vector>

#include "core/infer/kv_cache.h"
#include "core/model/model.h"

namespace spkv {
namespace cuda_ops {
class DeviceKvCache;  // kernels/torch/device_kv_cache.h
}

// An eviction baseline instead of the gates (cache_policy.h): every head attends over what a budgeted policy
// leaves, with the last `window` keys always kept (0: the model's SP-KV window).
struct BaselineOptions {
  PolicySpec policy;
  CacheBudget budget;
  int64_t window = 0;
};

struct EngineOptions {
  int64_t n_seq = 1;       // B: sequences fed in lockstep
  int64_t chunk = 128;     // prefill chunk length (tokens per attention call)
  int64_t page_size = 16;  // tokens per cache page
  // Full attention through DenseKvCache even for an SP-KV model. The gates still run, so their scores and
  // decisions (what they would decide) are reported.
  bool dense = false;
  // A hybrid local-global layout imposed on the heads instead of the gates (model.h). The cache is the SP-KV
  // ring + store with these fixed decisions; a model's gates, if any, still run and are reported.
  HeadLayout layout;
  // One-token steps on the CPU go through the fused decode step (kernels/cpu/decode_step.h) instead of the
  // model's LibTorch layers: the same math without operator dispatch or allocation. false: the layers (the
  // baseline that `spkv bench decode` and the tests compare it with). Ignored unless the model is float32.
  bool fused_decode = true;
  // A budgeted eviction baseline (CPU only). Tokens then go one at a time (chunk 1), so that every query
  // attends over exactly what the policy holds after its token, and the attention-scored policies see each
  // query's weights. A model's gates, if any, still run and are reported.
  std::optional<BaselineOptions> baseline;
  // On a CUDA device: the cache holds K/V rows in bf16 (half the bytes; attention computes on bf16 q, k, v in
  // float32 arithmetic). An error on the CPU.
  bool kv_bf16 = false;
};

// The result of feeding T new tokens to every sequence.
struct EngineStep {
  torch::Tensor logits;   // (B, T, V) float32
  torch::Tensor utility;  // (B, T, L, Hkv) float32 gate scores u; undefined for a model without SP-KV
  torch::Tensor keep;     // (B, T, L, Hkv) bool decisions: u >= tau, or a position < keep_first
};

// Gate semantics: a token's gate decision is final when it is computed; the cache keeps it after it leaves
// the window iff the decision is "keep". The model's gate mode selects the cache: dense -> DenseKvCache,
// any other mode -> SpkvKvCache with hard decisions at model->gates.tau (soft scores cannot be compacted).
// Results equal the masked full-sequence forward in hard mode (tested to 1e-4).
//
// Device: the model's. On the CPU, the cache is a KvCache and the kernels the CPU ones; on a CUDA device
// (a build with a CUDA LibTorch, docs/gpu.md), a cuda_ops::DeviceKvCache with the CUDA kernels. Results
// come back on the CPU either way.
class Engine : private AttentionBackend {
 public:
  explicit Engine(LlamaForCausalLM model, const EngineOptions& o = {});
  ~Engine();
  // Feeds tokens (B, T) int64 at the next T positions of every sequence; T > o.chunk is split into chunks.
  // Throws InputError past the model's context.
  EngineStep forward(const torch::Tensor& tokens);
  void clear();  // forgets every sequence
  int64_t position() const { return pos_; }  // tokens fed to each sequence so far
  bool gated() const { return gated_; }       // decisions evict (SpkvKvCache) rather than being only logged
  const KvCache& cache() const;  // the CPU cache (throws on a CUDA device)
  BudgetedKvCache* baseline_cache() { return baseline_; }  // the baseline's cache, or null
  int64_t cache_entries() const;   // K/V rows held, summed over every (sequence, layer, KV head)
  int64_t cache_bytes() const;     // K/V bytes allocated (CPU) or handed out (CUDA)
  LlamaForCausalLM& model() { return model_; }

 private:
  EngineStep forward_chunk(const torch::Tensor& tokens);  // (B, T)
  // One token per sequence through the fused CPU decode step. tokens: (B, 1) int64 on the CPU.
  EngineStep decode_fused(const torch::Tensor& tokens);
  // The model's attention step (AttentionBackend): the gates' decisions (u >= tau, or a position <
  // keep_first), or the layout's, then attend_cached.
  torch::Tensor attend(int64_t il, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& u) override;
  // q: (B, H, T, D), k/v: (B, Hkv, T, D) for positions pos_ .. pos_ + T - 1, keep: (B, T, Hkv) uint8.
  // Attends over the cache plus these tokens, then appends them. -> (B, H, T, D)
  torch::Tensor attend_cached(int64_t il, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& keep);
  // The decode kernel over layer il of the CPU cache (p.q, p.y, p.H, p.scale set); a baseline that scores by
  // attention is handed the weights.
  void decode_attention(int64_t il, kernels::DecodeParams& p);

  LlamaForCausalLM model_;
  EngineOptions opt_;
  bool gated_ = false;
  int64_t pos_ = 0;
  torch::Device device_;
  std::unique_ptr<KvCache> cache_;                   // on the CPU
  BudgetedKvCache* baseline_ = nullptr;              // cache_, when it is a baseline's
  std::vector<float> weights_;                       // (B, H, stride) the baseline's attention weights
  std::unique_ptr<cuda_ops::DeviceKvCache> dcache_;  // on a CUDA device
  torch::Tensor layout_;  // (L, Hkv) bool, undefined without a layout
  // The chunk being fed: its positions (T), and each layer's gate scores and decisions (B, T, Hkv).
  torch::Tensor positions_;
  std::vector<torch::Tensor> us_, keeps_;
  // The model's weights as raw pointers and the step's buffers; null when the fused path does not apply.
  struct FusedDecode;
  std::unique_ptr<FusedDecode> fused_;
};

// Teacher-forced NLL of one document streamed through the engine (cleared first, B = 1): nll (T - 1) in
// nats, each token predicted from the pruned cache, plus every token's gate scores and decisions.
// The document must fit the model's context. Under the oracle baseline the document goes through twice:
// first under a budget that never binds, recording the attention, then under the budget.
struct ScoredDocument {
  std::vector<double> nll;      // (T - 1)
  std::vector<int32_t> argmax;  // (T - 1) the most likely next token at each position
  torch::Tensor utility;        // (T, L, Hkv) float32, undefined without SP-KV
  torch::Tensor keep;           // (T, L, Hkv) bool
  int64_t baseline_held = -1;   // a baseline's rows held after each token, summed over tokens and heads
};
ScoredDocument score_document(Engine& engine, const std::vector<int32_t>& tokens);

}  // namespace spkv
