// SP-KV gating against independent references: hard mode against a float64 forward that attends only to
// the window and the kept keys; soft and annealed gradients against float64 finite differences; every mode
// against the dense model at initialization; packed documents against separate calls; config validation
// and checkpoint round trips.
#include <gtest/gtest.h>

#include "core/base/errors.h"
#include "core/model/checkpoint.h"
#include "core/model/model.h"
#include "core/model/safetensors.h"
#include "tests/core/reference_model.h"
#include "tests/test_util.h"

namespace spkv {
namespace {

ModelConfig spkv_config(int which) {
  ModelConfig c;
  c.dim = 32, c.hidden_dim = 48, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8;
  c.vocab_size = 41, c.max_seq_len = 96;
  c.spkv.enabled = true;
  c.spkv.window = 5;
  c.spkv.predictor_hidden = 8;
  if (which == 1) {  // the 1-layer predictor tapped on the residual stream, a stricter tau, keep_first
    c.spkv.predictor_layers = 1, c.spkv.tap = "residual", c.spkv.tau = 0.6, c.spkv.keep_first = 2;
    c.rope_style = RopeStyle::interleaved;
  }
  return c;
}

// Large random weights, predictor included, so that gates fall on both sides of tau.
void randomize(LlamaForCausalLM& m, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard ng;
  for (auto& p : m->parameters()) p.normal_(0.0, 0.3);
}

std::vector<int64_t> tokens(int64_t n, int64_t mul, int64_t vocab) {
  std::vector<int64_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back((i * mul + 3) % vocab);
  return t;
}

torch::Tensor logits(LlamaForCausalLM& m, const std::vector<int64_t>& toks) {
  return m(torch::tensor(toks).unsqueeze(0))[0].to(torch::kFloat64);  // (T, V)
}

double rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

TEST(Gating, HardModeEqualsAttentionOverWindowAndKeptKeysOnly) {
  for (int which = 0; which < 2; ++which) {
    const ModelConfig c = spkv_config(which);
    LlamaForCausalLM m(c);
    randomize(m, 7 + which);
    m->eval();
    torch::NoGradGuard ng;
    const int64_t T = 41, W = c.spkv.window, Hkv = c.n_kv_heads;
    const auto toks = tokens(T, 5, c.vocab_size);
    ASSERT_EQ(m->gates.mode, GateMode::hard);
    auto got = logits(m, toks);
    std::vector<double> u;  // (L, T, Hkv)
    auto want = test::ref_forward(m, toks, &u);
    EXPECT_LT((got - want).abs().max().item<double>(), 1e-4) << "variant " << which;

    // The data has open and closed gates among evictable keys, none within float error of tau, and the
    // model's own counts agree with a count over the reference scores.
    auto counts = m->gate_counts();  // (L, Hkv, 2)
    int64_t open = 0, closed = 0;
    for (int64_t il = 0; il < c.n_layers; ++il)
      for (int64_t kh = 0; kh < Hkv; ++kh) {
        int64_t kept = 0, total = 0;
        for (int64_t s = c.spkv.keep_first; s <= T - 1 - W; ++s) {
          const double us = u[(il * T + s) * Hkv + kh];
          EXPECT_GT(std::abs(us - c.spkv.tau), 1e-5);
          kept += us >= c.spkv.tau, ++total;
        }
        EXPECT_EQ(counts[il][kh][0].item<int64_t>(), kept) << "layer " << il << " head " << kh;
        EXPECT_EQ(counts[il][kh][1].item<int64_t>(), total);
        open += kept, closed += total - kept;
      }
    EXPECT_GT(open, 10) << "variant " << which;
    EXPECT_GT(closed, 10) << "variant " << which;

    // The gates matter: the dense answer is far from the gated one.
    m->gates.mode = GateMode::dense;
    EXPECT_GT((logits(m, toks) - want).abs().max().item<double>(), 1e-2);
  }
}

// Gradients of a fixed linear functional of the logits w.r.t. predictor parameters, against central
// differences in float64.
void check_predictor_gradients(GateMode mode, double anneal) {
  LlamaForCausalLM m(spkv_config(0));
  randomize(m, 11);
  m->to(torch::kFloat64);
  m->train();
  m->gates.mode = mode;
  m->gates.anneal = anneal;
  const auto toks = tokens(17, 3, 41);
  torch::manual_seed(5);
  const auto R = torch::randn({17, 41}, torch::kFloat64);
  auto loss = [&] { return (m(torch::tensor(toks).unsqueeze(0))[0] * R).sum(); };
  m->zero_grad();
  loss().backward();
  auto params = m->named_parameters();
  const std::vector<std::pair<std::string, int64_t>> probes = {
      {"model.layers.0.self_attn.utility.fc1.weight", 5},  {"model.layers.0.self_attn.utility.fc1.weight", 77},
      {"model.layers.0.self_attn.utility.fc2.weight", 3},  {"model.layers.1.self_attn.utility.fc2.bias", 1},
      {"model.layers.1.self_attn.utility.fc1.bias", 6},    {"model.layers.1.self_attn.q_proj.weight", 40}};
  torch::NoGradGuard ng;
  for (auto& [name, i] : probes) {
    auto p = params[name].view(-1);
    const double g = params[name].grad().view(-1)[i].item<double>(), eps = 1e-6, x = p[i].item<double>();
    p[i] = x + eps;
    const double up = loss().item<double>();
    p[i] = x - eps;
    const double down = loss().item<double>();
    p[i] = x;
    const double fd = (up - down) / (2 * eps);
    EXPECT_NEAR(g, fd, 1e-6 * std::max(1.0, std::abs(fd))) << to_string(mode) << " " << name << "[" << i << "]";
    EXPECT_GT(std::abs(g), 1e-5) << to_string(mode) << " " << name << "[" << i << "]: no gradient reaches it";
  }
}

TEST(Gating, SoftModeGradientsMatchFloat64FiniteDifferences) { check_predictor_gradients(GateMode::soft, 0.0); }

TEST(Gating, AnnealedModeGradientsMatchFloat64FiniteDifferences) {
  check_predictor_gradients(GateMode::annealed, 0.3);
}

TEST(Gating, EveryModeMatchesTheDenseModelAtInitialization) {
  const ModelConfig c = spkv_config(0);
  ModelConfig dc = c;
  dc.spkv = {};
  LlamaForCausalLM m(c), dense(dc);
  torch::manual_seed(3);
  {
    torch::NoGradGuard ng;
    auto dt = dense->named_tensors();
    for (auto& [name, p] : m->named_tensors()) {
      if (name.find(".utility.") != std::string::npos) continue;  // keeps its init: bias +5
      p.normal_(0.0, 0.3);
      dt.at(name).copy_(p);
    }
  }
  const auto toks = tokens(64, 7, c.vocab_size);
  torch::NoGradGuard ng;
  auto want = logits(dense, toks);
  // ste samples Bernoulli(0.993) gates while training, so it is compared in eval mode, where it is hard.
  for (GateMode mode : {GateMode::soft, GateMode::hard, GateMode::annealed, GateMode::ste}) {
    for (bool training : {false, true}) {
      if (mode == GateMode::ste && training) continue;
      m->train(training);
      m->gates.mode = mode;
      m->gates.anneal = 0.5;
      const double d = rel_diff(logits(m, toks), want);
      EXPECT_LT(d, 1e-2) << to_string(mode) << (training ? " (training)" : "");
      if (mode == GateMode::soft) EXPECT_GT(d, 1e-7) << "soft mode should see the log(0.993) bias";
    }
  }
  for (auto& layer : *m->model->layers) {  // the open start: bias +5, u within 1e-2 of sigmoid(5) = 0.9933
    auto& attn = layer->as<DecoderLayer>()->self_attn;
    EXPECT_TRUE(torch::all(attn->utility->fc2->bias == c.spkv.init_bias).item<bool>());
    EXPECT_LT((attn->last_utility - 0.9933).abs().max().item<double>(), 1e-2);
  }
}

TEST(Gating, SteSamplesHardGatesAndPassesGradientToThePredictor) {
  LlamaForCausalLM m(spkv_config(0));
  randomize(m, 13);
  // Saturated gates: Bernoulli(u) is then deterministic, and ste must equal hard gating.
  {
    torch::NoGradGuard ng;
    for (int il = 0; il < 2; ++il) {
      auto& ut = m->model->layers[il]->as<DecoderLayer>()->self_attn->utility;
      ut->fc2->weight.zero_();
      ut->fc2->bias.copy_(torch::tensor({40.0, -40.0}));  // head 0 keeps everything, head 1 nothing
    }
  }
  const auto toks = tokens(30, 4, 41);
  m->eval();
  auto hard = logits(m, toks).detach();
  m->train();
  m->gates.mode = GateMode::ste;
  auto out = m(torch::tensor(toks).unsqueeze(0))[0];
  EXPECT_LT((out.to(torch::kFloat64) - hard).abs().max().item<double>(), 1e-5);
  m->gates.mode = GateMode::dense;
  EXPECT_GT((logits(m, toks) - hard).abs().max().item<double>(), 1e-2);  // head 1's closed gates matter
  out.pow(2).sum().backward();
  auto g = m->model->layers[0]->as<DecoderLayer>()->self_attn->utility->fc2->bias.grad();
  ASSERT_TRUE(g.defined());
  EXPECT_TRUE(torch::isfinite(g).all().item<bool>());
}

TEST(Gating, PackedDocumentsMatchSeparateCalls) {
  const ModelConfig c = spkv_config(1);
  LlamaForCausalLM m(c);
  randomize(m, 17);
  m->eval();
  torch::NoGradGuard ng;
  const auto a = tokens(19, 5, 41), b = tokens(23, 9, 41);
  auto la = logits(m, a);
  auto ca = m->gate_counts();
  auto lb = logits(m, b);
  auto cb = m->gate_counts();
  std::vector<int64_t> packed = a, seg(a.size(), 0);
  packed.insert(packed.end(), b.begin(), b.end());
  seg.resize(packed.size(), 1);
  auto lp = m(torch::tensor(packed).unsqueeze(0), torch::tensor(seg).unsqueeze(0))[0].to(torch::kFloat64);
  EXPECT_LT((lp.narrow(0, 0, 19) - la).abs().max().item<double>(), 1e-5);
  EXPECT_LT((lp.narrow(0, 19, 23) - lb).abs().max().item<double>(), 1e-5);
  auto cp = m->gate_counts();
  EXPECT_TRUE(torch::equal(cp, ca + cb));
  // Evictable keys per head: positions keep_first .. n-1-W of each document.
  const int64_t W = c.spkv.window, k = c.spkv.keep_first;
  EXPECT_EQ(cp[0][0][1].item<int64_t>(), (19 - W - k) + (23 - W - k));
}

std::string spkv_error(const std::string& block) {
  try {
    parse_hf_config(R"({"hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,"num_attention_heads":4,
      "num_key_value_heads":2,"vocab_size":41,"spkv":)" + block + "}", "cfg.json");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

TEST(Gating, InvalidSettingsNameTheField) {
  EXPECT_NE(spkv_error(R"({"tau":0})").find("cfg.json: spkv.tau must be in (0, 1)"), std::string::npos);
  EXPECT_NE(spkv_error(R"({"tau":1.0})").find("spkv.tau must be in (0, 1)"), std::string::npos);
  EXPECT_NE(spkv_error(R"({"window":0})").find("spkv.window must be >= 1"), std::string::npos);
  EXPECT_NE(spkv_error(R"({"predictor_layers":3})").find("spkv.predictor_layers must be 1 or 2"), std::string::npos);
  EXPECT_NE(spkv_error(R"({"tap":"mlp"})").find("spkv.tap 'mlp'"), std::string::npos);
  EXPECT_NE(spkv_error(R"({"mode":"fuzzy"})").find("gate mode 'fuzzy'"), std::string::npos);
  EXPECT_NE(spkv_error(R"({"windw":64})").find("unknown field 'spkv.windw'"), std::string::npos);
  EXPECT_NE(spkv_error(R"({"tau":"high"})").find("field 'tau' has the wrong type"), std::string::npos);
  EXPECT_EQ(spkv_error(R"({"window":64,"tau":0.7})"), "no error");
}

TEST(Gating, CheckpointRoundTripAndContradictingPredictorShapes) {
  test::TempDir dir;
  ModelConfig c = spkv_config(0);
  c.spkv.tau = 0.55, c.spkv.keep_first = 1;
  LlamaForCausalLM m(c);
  randomize(m, 19);
  m->eval();
  save_hf_checkpoint(dir / "a", c, m->named_tensors());
  auto back = load_model(dir / "a");
  const auto& s = back->config.spkv;
  EXPECT_TRUE(s.enabled);
  EXPECT_EQ(s.window, 5);
  EXPECT_EQ(s.tau, 0.55);
  EXPECT_EQ(s.keep_first, 1);
  EXPECT_EQ(s.predictor_hidden, 8);
  const auto toks = tokens(33, 5, 41);
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(logits(back, toks), logits(m, toks)));

  auto load_error = [&](const ModelConfig& cfg) {
    write_file_atomic(dir / "a/config.json", cfg.to_hf_json());
    try {
      load_model(dir / "a");
    } catch (const CheckpointError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  ModelConfig wrong = c;
  wrong.spkv.predictor_hidden = 6;
  auto msg = load_error(wrong);
  EXPECT_NE(msg.find("utility.fc1.weight' has shape [8, 32]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("predictor_hidden 6"), std::string::npos) << msg;
  wrong = c;
  wrong.spkv.predictor_layers = 1;
  EXPECT_NE(load_error(wrong).find("utility.fc1.weight"), std::string::npos);
  wrong.spkv = {};
  EXPECT_NE(load_error(wrong).find("has no spkv block"), std::string::npos);

  // A dense checkpoint under an spkv config: an error, unless the predictor is being added (adaptation).
  auto tensors = m->named_tensors();
  for (auto it = tensors.begin(); it != tensors.end();)
    it = it->first.find(".utility.") != std::string::npos ? tensors.erase(it) : std::next(it);
  save_hf_checkpoint(dir / "dense", c, tensors);
  Checkpoint ck = load_checkpoint(dir / "dense");
  LlamaForCausalLM adapted(c);
  EXPECT_THROW(adapted->load(ck), CheckpointError);
  adapted->load(ck, /*init_missing_predictor=*/true);
  auto u = adapted->model->layers[1]->as<DecoderLayer>()->self_attn->utility(torch::randn({1, 3, c.dim}));
  EXPECT_GT(u.min().item<double>(), 0.98);  // every gate open
}

// On a GPU (a build with a CUDA LibTorch): the model's attention in the CUDA kernels against the masked
// LibTorch path on the CPU, forward and backward, for soft, annealed, hard and dense gates over packed rows.
TEST(Gating_CUDA, KernelPathMatchesTheMaskedPathForwardAndBackward) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (GateMode mode : {GateMode::soft, GateMode::annealed, GateMode::hard, GateMode::dense}) {
    const ModelConfig c = spkv_config(1);
    LlamaForCausalLM a(c), b(c);
    randomize(a, 31), randomize(b, 31);
    b->to(torch::kCUDA);
    for (auto* m : {&a, &b}) (*m)->gates.mode = mode, (*m)->gates.anneal = 0.4;
    auto toks = torch::tensor(tokens(2 * 40, 7, c.vocab_size)).view({2, 40});
    auto seg = torch::zeros({2, 40}, torch::kInt64);
    seg[1].narrow(0, 17, 23).fill_(1);  // row 1 packs two documents
    auto la = a(toks, seg), lb = b(toks.to(torch::kCUDA), seg.to(torch::kCUDA));
    EXPECT_LT(rel_diff(lb.cpu().to(torch::kFloat64), la.to(torch::kFloat64)), 1e-5) << int(mode);
    la.pow(2).mean().backward(), lb.pow(2).mean().backward();
    auto pa = a->named_parameters(), pb = b->named_parameters();
    for (const auto& item : pa) {
      const auto& ga = item.value().grad();
      if (!ga.defined()) continue;
      EXPECT_LT(rel_diff(pb[item.key()].grad().cpu().to(torch::kFloat64), ga.to(torch::kFloat64)), 1e-4) << int(mode) << " " << item.key();
    }
  }
}

}  // namespace
}  // namespace spkv
