// The engine (chunked prefill + decode through the compacted cache) against the masked full-sequence
// forward of model.cpp, which the gating tests check against a float64 reference: logits within 1e-4 for
// several windows, thresholds and chunk lengths on documents many windows long, decisions equal to
// u >= tau, and the cache holding exactly the window plus the kept tokens.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <numeric>
#include <set>

#include "core/base/errors.h"
#include "core/infer/engine.h"
#include "core/infer/generate.h"
#include "core/text/tokenizer.h"
#include "tests/test_util.h"

namespace spkv {
namespace {

ModelConfig tiny_config(int64_t window, double tau, int64_t keep_first = 0) {
  ModelConfig c;
  c.dim = 48, c.hidden_dim = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 12;
  c.vocab_size = 53, c.max_seq_len = 320;
  c.spkv.enabled = true, c.spkv.window = window, c.spkv.tau = tau, c.spkv.keep_first = keep_first;
  c.spkv.predictor_hidden = 12;
  return c;
}

// Large random weights so that the gates fall on both sides of tau and attention is not uniform.
LlamaForCausalLM random_model(const ModelConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  LlamaForCausalLM m(c);
  torch::NoGradGuard ng;
  for (auto& p : m->parameters()) p.normal_(0.0, 0.3);
  m->eval();
  return m;
}

EngineOptions options(int64_t n_seq, int64_t chunk, bool dense = false) {
  EngineOptions o;
  o.n_seq = n_seq, o.chunk = chunk, o.dense = dense;
  return o;
}

torch::Tensor random_tokens(int64_t T, int64_t vocab, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(vocab, {1, T}, torch::kInt64);
}

double max_rel(const torch::Tensor& a, const torch::Tensor& ref) {
  return ((a - ref).abs().max() / std::max(1.0, ref.abs().max().item<double>())).item<double>();
}

TEST(Engine, StreamedLogitsEqualTheMaskedForwardForSeveralWindowsAndThresholds) {
  const int64_t T = 300;
  for (auto [W, tau] : std::vector<std::pair<int64_t, double>>{{5, 0.5}, {16, 0.3}, {37, 0.7}}) {
    auto m = random_model(tiny_config(W, tau), 100 + W);
    const auto tokens = random_tokens(T, 53, W);
    torch::NoGradGuard ng;
    auto masked = m(tokens)[0];  // (T, V) hard gates at tau
    m->gates.mode = GateMode::dense;
    auto dense = m(tokens)[0];
    m->gates.mode = GateMode::hard;
    ASSERT_GT(max_rel(dense, masked), 1e-2) << "the gates must matter, or the test cannot fail";
    // Decisions of the masked forward: (T, L, Hkv)
    std::vector<torch::Tensor> u;
    m(tokens);
    for (auto& layer : *m->model->layers) u.push_back(layer->as<DecoderLayer>()->self_attn->last_utility[0]);
    auto keep = torch::stack(u, 1) >= tau;
    const double kept = keep.to(torch::kFloat64).mean().item<double>();
    ASSERT_GT(kept, 0.1);
    ASSERT_LT(kept, 0.9);
    for (int64_t chunk : {1, 7, 64, 300}) {
      Engine e(m, options(1, chunk));
      ASSERT_TRUE(e.gated());
      EngineStep s = e.forward(tokens);
      EXPECT_LT(max_rel(s.logits[0], masked), 1e-4) << "W " << W << " tau " << tau << " chunk " << chunk;
      EXPECT_TRUE(torch::equal(s.keep[0], keep)) << "W " << W << " chunk " << chunk;
      // The cache holds each head's window plus its kept tokens from before the window.
      for (int64_t il = 0; il < 2; ++il)
        for (int64_t hk = 0; hk < 2; ++hk)
          EXPECT_EQ(e.cache().entries(0, il, hk),
                    W + keep.narrow(0, 0, T - W).select(1, il).select(1, hk).sum().item<int64_t>());
    }
  }
}

TEST(Engine, AWindowLongerThanTheContextKeepsEveryTokenWithoutARingThatLong) {
  // A window of 2^62 once overflowed the ring's size (a segfault); it means: no token leaves the window.
  auto m = random_model(tiny_config(int64_t(1) << 62, 0.5), 5);
  const auto tokens = random_tokens(200, 53, 6);
  torch::NoGradGuard ng;
  m->gates.mode = GateMode::dense;
  auto dense = m(tokens)[0];  // (T, V)
  m->gates.mode = GateMode::hard;
  Engine e(m, options(1, 64));
  EngineStep s = e.forward(tokens);
  EXPECT_LT(max_rel(s.logits[0], dense), 1e-4);
  EXPECT_EQ(e.cache().entries(0, 1, 1), 200);
  EXPECT_LT(e.cache().bytes_allocated(), 2 * 320 * 2 * 2 * 12 * 4 * 2);  // rings of max_position_embeddings rows
}

TEST(Engine, KeepFirstPromptPrefillThenDecodeAndBatchedSequences) {
  auto m = random_model(tiny_config(8, 0.6, /*keep_first=*/3), 5);
  torch::NoGradGuard ng;
  auto a = random_tokens(150, 53, 1), b = random_tokens(150, 53, 2);
  auto ref_a = m(a)[0], ref_b = m(b)[0];
  Engine e(m, options(2, 32));
  auto both = torch::cat({a, b}, 0);  // (2, 150)
  // A 90-token prompt, then one token at a time: the generate() pattern.
  auto first = e.forward(both.narrow(1, 0, 90)).logits;
  std::vector<torch::Tensor> steps{first};
  for (int64_t t = 90; t < 150; ++t) steps.push_back(e.forward(both.narrow(1, t, 1)).logits);
  auto got = torch::cat(steps, 1);  // (2, 150, V)
  EXPECT_LT(max_rel(got[0], ref_a), 1e-4);
  EXPECT_LT(max_rel(got[1], ref_b), 1e-4);
  EXPECT_EQ(e.position(), 150);
  EXPECT_THROW(e.forward(torch::zeros({2, 171}, torch::kInt64)), InputError);  // past the context of 320
}

// A layout imposed on the cache: global heads keep every key, local heads only the window. The reference is
// the masked forward with the predictor rigged so that its hard decisions are the layout's (u = sigmoid(+-10));
// the engine then runs with the predictor rigged the other way, so only the layout can make them agree.
TEST(Engine, ImposedLayoutEqualsTheMaskedForwardWithThoseDecisions) {
  const int64_t T = 200, W = 9;
  auto m = random_model(tiny_config(W, 0.5), 21);
  const std::vector<uint8_t> layout{1, 0, 0, 1};  // (L, Hkv): (0,0) and (1,1) global
  torch::NoGradGuard ng;
  auto rig = [&](double sign) {
    for (int64_t il = 0; il < 2; ++il) {
      auto& fc2 = m->model->layers[il]->as<DecoderLayer>()->self_attn->utility->fc2;
      fc2->weight.mul_(0.01);
      for (int64_t hk = 0; hk < 2; ++hk) fc2->bias[hk] = sign * (layout[il * 2 + hk] ? 10.0 : -10.0);
    }
  };
  rig(1);
  auto tokens = random_tokens(T, 53, 4);
  auto masked = m(tokens)[0];  // (T, V)
  m->gates.mode = GateMode::dense;
  ASSERT_GT(max_rel(m(tokens)[0], masked), 1e-2) << "the layout must matter, or the test cannot fail";
  m->gates.mode = GateMode::hard;
  rig(-1);
  for (int64_t chunk : {7, 64}) {
    EngineOptions o = options(1, chunk);
    o.layout = {layout, W};
    Engine e(m, o);
    auto first = e.forward(tokens.narrow(1, 0, 150)).logits;
    std::vector<torch::Tensor> steps{first};
    for (int64_t t = 150; t < T; ++t) steps.push_back(e.forward(tokens.narrow(1, t, 1)).logits);
    EXPECT_LT(max_rel(torch::cat(steps, 1)[0], masked), 1e-4) << "chunk " << chunk;
    for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(e.cache().entries(0, i / 2, i % 2), layout[i] ? T : W) << i;
  }
  // The masked forward takes the same layout (`spkv eval --layout`), over gates that now say the opposite.
  m->layout = {layout, W};
  EXPECT_LT(max_rel(m(tokens)[0], masked), 1e-4);
  m->layout = {};
  ASSERT_GT(max_rel(m(tokens)[0], masked), 1e-2) << "the rigged gates differ from the layout";
  // A model without gates: an all-local layout is a sliding window of W.
  ModelConfig c = tiny_config(W, 0.5);
  c.spkv.enabled = false;
  auto dense = random_model(c, 22);
  EngineOptions o = options(1, 32);
  o.layout = {{0, 0, 0, 0}, W};
  auto got = Engine(dense, o).forward(tokens).logits[0];
  dense->layout = {{0, 0, 0, 0}, W};
  EXPECT_LT(max_rel(got, dense(tokens)[0]), 1e-4);
  dense->layout = {};
  dense->config.sliding_window = W;
  EXPECT_LT(max_rel(got, dense(tokens)[0]), 1e-4);
  o.layout = {{0, 1, 0}, W};
  EXPECT_THROW(Engine(dense, o), ConfigError);
}

// One-token steps run the fused decode step (kernels/cpu/decode_step.h) rather than the model's layers. The
// tests above cover the default architecture; here every variant it reads weights for, each against the
// masked forward and against the engine with the fused step off: q/k/v biases (Qwen2), tied embeddings,
// llama2.c's interleaved RoPE, the 1-layer predictor, the residual tap, GQA with G = 1 and 4, no SP-KV, and a
// sliding window.
TEST(Engine, FusedDecodeStepEqualsTheLayersForEveryArchitectureVariant) {
  const int64_t T = 140, prompt = 60;
  for (int variant = 0; variant < 7; ++variant) {
    ModelConfig c = tiny_config(11, 0.5, variant == 2 ? 2 : 0);
    if (variant == 0) c.attention_bias = true;
    if (variant == 1) c.tied_embeddings = true, c.rope_style = RopeStyle::interleaved;
    if (variant == 2) c.spkv.predictor_layers = 1, c.spkv.tap = "residual";
    if (variant == 3) c.n_heads = 8, c.n_kv_heads = 2, c.head_dim = 6;   // G = 4
    if (variant == 4) c.n_kv_heads = 4;                                  // G = 1
    if (variant == 5) c.spkv.enabled = false;
    if (variant == 6) c.spkv.enabled = false, c.sliding_window = 13;
    auto m = random_model(c, 300 + variant);
    torch::NoGradGuard ng;
    const auto tokens = torch::cat({random_tokens(T, 53, variant), random_tokens(T, 53, 50 + variant)}, 0);  // (2, T)
    const auto ref = m(tokens);  // (2, T, V)
    auto stream = [&](bool fused) {
      EngineOptions o = options(2, 32);
      o.fused_decode = fused;
      Engine e(m, o);
      std::vector<EngineStep> steps{e.forward(tokens.narrow(1, 0, prompt))};
      for (int64_t t = prompt; t < T; ++t) steps.push_back(e.forward(tokens.narrow(1, t, 1)));
      std::vector<torch::Tensor> logits, keep;
      for (auto& s : steps) logits.push_back(s.logits), keep.push_back(s.keep);
      return std::make_tuple(torch::cat(logits, 1), c.spkv.enabled ? torch::cat(keep, 1) : torch::Tensor(), e.cache_entries());
    };
    const auto [fused, fused_keep, fused_entries] = stream(true);
    const auto [layers, layers_keep, layers_entries] = stream(false);
    EXPECT_LT(max_rel(fused, ref), 1e-4) << "variant " << variant;
    EXPECT_LT(max_rel(fused, layers), 1e-4) << "variant " << variant;
    EXPECT_EQ(fused_entries, layers_entries) << "variant " << variant;
    if (c.spkv.enabled) {
      EXPECT_TRUE(torch::equal(fused_keep, layers_keep)) << "variant " << variant;
      const double kept = fused_keep.narrow(1, prompt, T - prompt).to(torch::kFloat64).mean().item<double>();
      EXPECT_GT(kept, 0.05) << "variant " << variant << ": the decode steps' gates must decide both ways";
      EXPECT_LT(kept, 0.95) << "variant " << variant;
    }
  }
}

// Eviction baselines through the engine (cache_policy.h; their eviction rules are tested against a float64
// simulation in test_kv_cache.cpp). Two exact equivalences with the masked forward, an independent path:
// under a budget that never binds every policy (the oracle with its two passes too) is full attention, and
// StreamingLLM without sinks under N slots is a sliding window of N. Fused and layer-by-layer decode agree.
// The matched schedule computed from a gated run's decisions is the entries its SP-KV cache held.
TEST(Engine, BaselinesEqualFullAttentionUnboundedAndASlidingWindowAsStreaming) {
  const int64_t T = 90;
  for (bool spkv : {true, false}) {
    ModelConfig c = tiny_config(7, 0.5);
    c.spkv.enabled = spkv;
    auto m = random_model(c, 41);
    torch::NoGradGuard ng;
    const auto tokens = random_tokens(T, 53, 8);
    std::vector<int32_t> ids(tokens.data_ptr<int64_t>(), tokens.data_ptr<int64_t>() + T);
    auto nll_of = [&](const torch::Tensor& logits) {  // (T, V) -> the mean NLL of tokens 1..T-1
      auto lp = torch::log_softmax(logits.to(torch::kFloat64), -1);
      return -lp.narrow(0, 0, T - 1).gather(1, tokens[0].narrow(0, 1, T - 1).unsqueeze(1)).mean().item<double>();
    };
    auto mean = [](const std::vector<double>& x) { return std::accumulate(x.begin(), x.end(), 0.0) / double(x.size()); };
    auto baseline = [&](const std::string& policy, const std::string& budget, bool fused) {
      EngineOptions o;
      o.baseline = BaselineOptions{parse_policy(policy), parse_budget(budget), spkv ? 0 : 5};
      o.fused_decode = fused;
      Engine e(m, o);
      return score_document(e, ids);
    };
    m->gates.mode = GateMode::dense;
    const double full = nll_of(m(tokens)[0]);
    for (const std::string policy : {"streaming:2", "knorm", "random:3", "h2o", "tova", "snapkv:5", "oracle"}) {
      const auto s = baseline(policy, "slots:" + std::to_string(T), true);
      EXPECT_NEAR(mean(s.nll), full, 1e-5) << policy << (spkv ? "" : ", no SP-KV");
      EXPECT_EQ(s.baseline_held, 2 * 2 * T * (T + 1) / 2) << policy;
    }
    m->config.sliding_window = 12;  // what StreamingLLM without sinks keeps in 12 slots
    const double window = nll_of(m(tokens)[0]);
    m->config.sliding_window = 0;
    ASSERT_GT(std::abs(window - full), 1e-3) << "the window must matter on this document";
    for (bool fused : {true, false}) {
      const auto s = baseline("streaming:0", "slots:12", fused);
      EXPECT_NEAR(mean(s.nll), window, 1e-5) << (fused ? "fused" : "layers");
      int64_t held = 0;
      for (int64_t n = 1; n <= T; ++n) held += 2 * 2 * std::min<int64_t>(n, 12);
      EXPECT_EQ(s.baseline_held, held);
    }
    if (!spkv) {
      EngineOptions o;
      o.baseline = BaselineOptions{parse_policy("h2o"), parse_budget("slots:4"), 0};
      EXPECT_THROW(Engine(m, o), ConfigError);  // no SP-KV window to keep
      continue;
    }
    m->gates.mode = GateMode::hard;
    Engine gated(m, options(1, 1));
    std::vector<int32_t> entries;  // (T, L, Hkv) what the SP-KV cache held after each token
    std::vector<torch::Tensor> keep;
    for (int64_t t = 0; t < T; ++t) {
      keep.push_back(gated.forward(tokens.narrow(1, t, 1)).keep[0]);
      for (int64_t il = 0; il < 2; ++il)
        for (int64_t hk = 0; hk < 2; ++hk) entries.push_back(int32_t(gated.cache().entries(0, il, hk)));
    }
    auto z = torch::cat(keep, 0).to(torch::kUInt8).contiguous();  // (T, L, Hkv)
    const double open = z.to(torch::kFloat64).mean().item<double>();
    ASSERT_GT(open, 0.1);
    ASSERT_LT(open, 0.9);
    EXPECT_EQ(matched_budget(z.data_ptr<uint8_t>(), T, 2, 2, 7, false).matched, entries);
  }
}

TEST(Engine, DenseOptionEqualsFullAttentionAndStillReportsDecisions) {
  auto m = random_model(tiny_config(6, 0.5), 9);
  torch::NoGradGuard ng;
  auto tokens = random_tokens(120, 53, 3);
  m->gates.mode = GateMode::dense;
  auto full = m(tokens)[0];
  m->gates.mode = GateMode::hard;
  Engine e(m, options(1, 50, /*dense=*/true));
  EXPECT_FALSE(e.gated());
  auto s = e.forward(tokens);
  EXPECT_LT(max_rel(s.logits[0], full), 1e-4);
  EXPECT_EQ(e.cache().entries(), 2 * 2 * 120);
  const double kept = s.keep.to(torch::kFloat64).mean().item<double>();
  EXPECT_GT(kept, 0.1);
  EXPECT_LT(kept, 0.9);
}

TEST(Engine, DefaultModelScoresLikeTheMaskedForward) {
  const std::string dir = std::string(SPKV_SOURCE_DIR) + "/data/models/spkv-default";
  if (!std::filesystem::exists(dir + "/model.safetensors")) GTEST_SKIP() << dir << " is absent";
  auto tok = load_tokenizer(dir + "/tokenizer.model");
  auto text = test::read_file(dir + "/heldout/text/jargon.txt").substr(0, 6000);
  auto ids = tok->encode(text, true, false);
  auto m = load_model(dir);
  ids.resize(std::min<size_t>(ids.size(), size_t(m->config.max_seq_len)));  // one whole context
  ASSERT_GE(ids.size(), 500u);
  for (auto [W, tau] : std::vector<std::pair<int64_t, double>>{{64, 0.5}, {16, 0.3}}) {
    m->config.spkv.window = W, m->gates.tau = tau;
    const auto ref = token_nll(m, ids);
    Engine e(m, options(1, 128));
    const auto got = score_document(e, ids);
    ASSERT_EQ(got.nll.size(), ref.size());
    double worst = 0, sum_ref = 0, sum_got = 0;
    for (size_t i = 0; i < ref.size(); ++i)
      worst = std::max(worst, std::abs(got.nll[i] - ref[i])), sum_ref += ref[i], sum_got += got.nll[i];
    EXPECT_LT(worst, 1e-4) << "W " << W << " tau " << tau;
    EXPECT_NEAR(sum_got / ref.size(), sum_ref / ref.size(), 1e-6 * sum_ref / ref.size());
    EXPECT_LT(e.cache().entries(), int64_t(3 * 4 * 4 * ids.size() / 4))
        << "the default model's gates close: the cache is well below dense (4 layers x 4 heads x T)";
  }
}

TEST(Engine, BenchDecodeReportsKvBytesThatFollowTheDensity) {
  const std::string dir = std::string(SPKV_SOURCE_DIR) + "/data/models/spkv-default";
  if (!std::filesystem::exists(dir + "/model.safetensors")) GTEST_SKIP() << dir << " is absent";
  test::TempDir tmp;
  auto r = test::run_spkv("bench decode -m " + test::quote(dir) + " --contexts 700,1300 --steps 3 --json " + (tmp / "b.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(test::read_file(tmp / "b.json"));
  ASSERT_EQ(j["rows"].size(), 2u);
  for (auto& row : j["rows"]) {
    // Memory is not timing: the SP-KV cache must hold the window plus the kept tokens, nothing more.
    EXPECT_LT(std::abs(row["kv_ratio_error"].get<double>()), 0.05) << row.dump();
    EXPECT_GT(row["density"].get<double>(), 0.1);
    EXPECT_LT(row["kv_ratio"].get<double>(), 0.7);
    EXPECT_EQ(row["dense"]["entries"], 4 * 4 * (row["context"].get<int64_t>() + 3));
  }
}

TEST(Engine, BenchKernelsReadsTheBytesOfTheCachesItBuilds) {
  test::TempDir tmp;
  auto r = test::run_spkv("--threads 1 bench kernels --contexts 300,700 --layers 2 --heads 4 --kv-heads 2 --head-dim 24 "
                          "--window 32 --density 0.5 --chunk 64 --json " + (tmp / "k.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(test::read_file(tmp / "k.json"));
  ASSERT_EQ(j["rows"].size(), 4u);
  EXPECT_GT(j["gemm_gflops"].get<double>(), 0);
  EXPECT_GT(j["triad_gbs"].get<double>(), 0);
  for (auto& row : j["rows"]) {
    const double T = row["context"].get<double>(), per_entry = 2 * 24 * 4, full = 2 * 2 * T * per_entry;  // 2 layers x 2 KV heads
    if (row["cache"] == "dense") {
      EXPECT_EQ(row["kv_bytes"].get<double>(), full) << row.dump();
    } else {  // the window plus about half of the rest
      const double expected = 2 * 2 * (32 + 0.5 * (T - 32)) * per_entry;
      EXPECT_NEAR(row["kv_bytes"].get<double>(), expected, 0.1 * expected) << row.dump();
    }
    EXPECT_GT(row["prefill_gflops"].get<double>(), 0);
    EXPECT_GT(row["decode_gbs"].get<double>(), 0);
  }
  r = test::run_spkv("bench kernels --heads 4 --kv-heads 3");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--kv-heads 3 must divide --heads 4"), std::string::npos) << r.err;
}

TEST(Engine, BenchThreadsTimesEveryPathAndTheAutomaticCountYieldsTheBusyCore) {
  const std::string dir = std::string(SPKV_SOURCE_DIR) + "/data/models/spkv-default";
  if (!std::filesystem::exists(dir + "/model.safetensors")) GTEST_SKIP() << dir << " is absent";
  test::TempDir tmp;
  auto r = test::run_spkv("bench threads -m " + test::quote(dir) + " --contexts 100 --steps 4 --max-docs 2 --reps 1 --json " +
                          (tmp / "t.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(test::read_file(tmp / "t.json"));
  std::set<std::string> paths;
  for (auto& row : j["rows"]) {
    paths.insert(row["path"].get<std::string>());
    EXPECT_EQ(row["ratio"].size(), 5u) << row.dump();  // every configuration but the baseline
    for (auto& [config, tps] : row["tok_s"].items()) EXPECT_GT(tps.get<double>(), 0) << config;
  }
  EXPECT_EQ(paths, (std::set<std::string>{"decode 100", "generate", "prefill 100", "run"}));
  const int cores = j["cores"].get<int>();
  ASSERT_EQ(j["auto_busy"].size(), 1u);
  EXPECT_LE(j["auto_busy"][0].get<int>(), std::max(1, cores - 1)) << "the busy loop's core is left to it";
}

TEST(Engine, DeviceFlagErrorsAreClear) {
  const std::string dir = std::string(SPKV_SOURCE_DIR) + "/data/models/spkv-default";
  if (!std::filesystem::exists(dir + "/model.safetensors")) GTEST_SKIP() << dir << " is absent";
  auto r = test::run_spkv("bench decode -m " + test::quote(dir) + " --device gpu");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--device gpu: expected cpu, cuda or cuda:N"), std::string::npos) << r.err;
  test::TempDir tmp;
  r = test::run_spkv("run -m " + test::quote(dir) + " --out " + (tmp / "y.h5") + " " + test::quote(dir + "/heldout") + " --kv-bf16");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("bf16 KV rows need the model on a CUDA device (--device cuda)"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(tmp / "y.h5.partial"));
  if (torch::cuda::is_available()) return;
  r = test::run_spkv("run -m " + test::quote(dir) + " --out " + (tmp / "x.h5") + " " + test::quote(dir + "/heldout") + " --device cuda");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--device cuda: this spkv was built with a LibTorch without CUDA"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(tmp / "x.h5.partial"));
}

// On a GPU (a build with a CUDA LibTorch): the engine with the model on CUDA (DeviceKvCache, the CUDA
// kernels) against the CPU engine, for SP-KV, dense and a layout: logits, decisions and cache entries.
TEST(Engine_CUDA, MatchesTheCpuEngine) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto tokens = random_tokens(2 * 150, 53, 4).view({2, 150});
  for (int variant = 0; variant < 3; ++variant) {
    auto cpu_model = random_model(tiny_config(9, 0.5, 2), 60);
    auto gpu_model = random_model(tiny_config(9, 0.5, 2), 60);
    gpu_model->to(torch::kCUDA);
    EngineOptions o = options(2, 23, /*dense=*/variant == 1);
    if (variant == 2) o.layout = {{1, 0, 0, 1}, 7};
    Engine cpu(cpu_model, o), gpu(gpu_model, o);
    for (auto [t0, T] : std::vector<std::pair<int64_t, int64_t>>{{0, 61}, {61, 1}, {62, 30}, {92, 1}, {93, 1}, {94, 56}}) {
      auto part = tokens.narrow(1, t0, T);
      EngineStep a = cpu.forward(part), b = gpu.forward(part);
      ASSERT_TRUE(b.logits.device().is_cpu());
      EXPECT_LT(max_rel(b.logits, a.logits), 1e-4) << "variant " << variant << " tokens " << t0 << " + " << T;
      EXPECT_TRUE(torch::equal(a.keep, b.keep)) << "variant " << variant << " tokens " << t0 << " + " << T;
      EXPECT_EQ(cpu.cache_entries(), gpu.cache_entries()) << "variant " << variant << " tokens " << t0 << " + " << T;
    }
  }
}

// The same with the GPU cache in bf16 (compiled, not yet run on a GPU): the keys and values are rounded to
// bf16, so the logits move by about 1e-2 and a gate score near tau may flip.
TEST(Engine_CUDA, Bf16CacheStaysCloseToTheCpuEngine) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto tokens = random_tokens(2 * 150, 53, 4).view({2, 150});
  auto cpu_model = random_model(tiny_config(9, 0.5, 2), 60);
  auto gpu_model = random_model(tiny_config(9, 0.5, 2), 60);
  gpu_model->to(torch::kCUDA);
  EngineOptions o = options(2, 23), og = o;
  og.kv_bf16 = true;
  Engine cpu(cpu_model, o), gpu(gpu_model, og);
  for (auto [t0, T] : std::vector<std::pair<int64_t, int64_t>>{{0, 61}, {61, 1}, {62, 30}, {92, 1}, {93, 1}, {94, 56}}) {
    auto part = tokens.narrow(1, t0, T);
    EngineStep a = cpu.forward(part), b = gpu.forward(part);
    EXPECT_LT(max_rel(b.logits, a.logits), 5e-2) << "tokens " << t0 << " + " << T;
    EXPECT_GT(a.keep.eq(b.keep).to(torch::kFloat64).mean().item<double>(), 0.98) << "tokens " << t0 << " + " << T;
  }
}

}  // namespace
}  // namespace spkv
