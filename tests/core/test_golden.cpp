// Exactness against the llama2.c reference program (run.c) on stories260K: prompt tokens, logits at
// every position, greedy generation through the CLI, and the same logits from a Hugging Face-layout
// checkpoint built here with HF's q/k permutation (an independent check of both RoPE pairings and of
// the safetensors reader).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/model/checkpoint.h"
#include "core/model/model.h"
#include "core/model/safetensors.h"
#include "core/text/tokenizer.h"
#include "tests/test_util.h"

namespace spkv {
namespace {
using json = nlohmann::json;

struct Golden {
  std::string dir, model, tokenizer;
  json cases;
};

Golden golden() {
  Golden g;
  const std::string s = test::shared_dir();
  g.dir = s + "/golden/stories260K";
  g.model = s + "/models/stories260K/stories260K.bin";
  g.tokenizer = s + "/models/stories260K/tok512.bin";
  g.cases = json::parse(test::read_file(g.dir + "/golden.json"))["cases"];
  return g;
}

// Golden logits of one case: (n_positions, V).
torch::Tensor golden_logits(const Golden& g, const json& c) {
  const std::string bytes = test::read_file(g.dir + "/" + c["logits_file"].get<std::string>());
  const int64_t P = c["n_positions"].get<int64_t>();
  EXPECT_EQ(bytes.size(), size_t(P) * 512 * 4);
  return torch::from_blob(const_cast<char*>(bytes.data()), {P, 512}, torch::kFloat32).clone();
}

torch::Tensor model_logits(LlamaForCausalLM& m, const json& c) {
  torch::NoGradGuard ng;
  auto toks = c["tokens"].get<std::vector<int64_t>>();
  const int64_t P = c["n_positions"].get<int64_t>();
  auto ids = torch::tensor(std::vector<int64_t>(toks.begin(), toks.begin() + P)).unsqueeze(0);  // (1, P)
  return m(ids)[0];                                                                              // (P, V)
}

TEST(Golden, PromptTokensMatchReference) {
  SPKV_REQUIRE_SHARED();
  auto g = golden();
  auto tok = load_tokenizer(g.tokenizer);
  ASSERT_GE(g.cases.size(), 2u);
  for (auto& c : g.cases) {
    auto ids = tok->encode(c["prompt"].get<std::string>(), true, false);
    auto want = c["tokens"].get<std::vector<int32_t>>();
    want.resize(c["n_prompt_tokens"].get<size_t>());
    EXPECT_EQ(ids, want) << c["prompt"];
    // The whole golden sequence decodes to the golden text.
    EXPECT_EQ(tok->decode(c["tokens"].get<std::vector<int32_t>>()), c["text"].get<std::string>());
  }
}

TEST(Golden, LogitsMatchReferenceAtEveryPosition) {
  SPKV_REQUIRE_SHARED();
  auto g = golden();
  auto m = load_model(g.model);
  for (auto& c : g.cases) {
    auto want = golden_logits(g, c), got = model_logits(m, c);
    ASSERT_EQ(got.sizes(), want.sizes());
    const double err = (got - want).abs().max().item<double>();
    EXPECT_LT(err, 1e-4) << "case '" << c["prompt"] << "'";
    // The check has teeth: the golden logits vary by far more than the tolerance.
    EXPECT_GT(want.std().item<double>(), 0.5);
  }
}

TEST(Golden, CliGenerateReproducesReferenceContinuation) {
  SPKV_REQUIRE_SHARED();
  auto g = golden();
  for (auto& c : g.cases) {
    const int64_t n_new = int64_t(c["tokens"].size()) - c["n_prompt_tokens"].get<int64_t>();
    auto r = test::run_spkv("generate --model " + test::quote(g.model) + " --tokenizer " + test::quote(g.tokenizer) +
                            " --prompt " + test::quote(c["prompt"].get<std::string>()) + " --max-new-tokens " +
                            std::to_string(n_new) + " --temperature 0");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, c["text"].get<std::string>());
  }
}

// Builds an HF directory from the llama2.c weights with HF's permutation written out as index
// arithmetic here (not the library's permute_for_rotate_half), then checks the rotate-half path.
TEST(Golden, HfLayoutWithPermutedQkGivesSameLogits) {
  SPKV_REQUIRE_SHARED();
  auto g = golden();
  Checkpoint ck = load_checkpoint(g.model);
  const ModelConfig c = ck.config;
  ASSERT_EQ(c.rope_style, RopeStyle::interleaved);
  auto permute = [](const torch::Tensor& w, int64_t n_heads) {
    const int64_t rows = w.size(0), cols = w.size(1), D = rows / n_heads;
    auto out = torch::empty_like(w);
    // HF: new row (h, j, i) [j in {0,1}, i < D/2] = old row (h, i, j), i.e. h*D + j*D/2 + i <- h*D + 2i + j.
    for (int64_t h = 0; h < n_heads; ++h)
      for (int64_t i = 0; i < D / 2; ++i)
        for (int64_t j = 0; j < 2; ++j) out[h * D + j * D / 2 + i] = w[h * D + 2 * i + j];
    EXPECT_EQ(cols, w.size(1));
    return out;
  };
  std::vector<torch::Tensor> keep;
  std::vector<TensorView> views;
  for (auto& [name, t0] : ck.tensors) {
    torch::Tensor t = t0;
    if (name.find("q_proj") != std::string::npos) t = permute(t, c.n_heads);
    if (name.find("k_proj") != std::string::npos) t = permute(t, c.n_kv_heads);
    keep.push_back(t.contiguous());
    views.push_back({name, DType::f32, keep.back().sizes().vec(), keep.back().data_ptr(),
                     size_t(keep.back().numel()) * 4});
  }
  test::TempDir dir;
  write_safetensors(dir / "model.safetensors", views);
  ModelConfig hc = c;
  hc.rope_style = RopeStyle::rotate_half;
  test::write_file(dir / "config.json", hc.to_hf_json());
  ASSERT_EQ(test::read_file(dir / "config.json").find("rope_style"), std::string::npos);  // a plain HF config

  auto m = load_model(dir.path.string());
  EXPECT_EQ(m->config.rope_style, RopeStyle::rotate_half);
  for (auto& gc : g.cases) {
    auto err = (model_logits(m, gc) - golden_logits(g, gc)).abs().max().item<double>();
    EXPECT_LT(err, 1e-4) << "case '" << gc["prompt"] << "'";
  }
  // Without the permutation, rotate-half gives different logits: the test can tell the pairings apart.
  std::vector<TensorView> plain;
  for (auto& [name, t0] : ck.tensors) plain.push_back({name, DType::f32, t0.sizes().vec(), t0.data_ptr(), size_t(t0.numel()) * 4});
  write_safetensors(dir / "model.safetensors", plain);
  auto wrong = load_model(dir.path.string());
  EXPECT_GT((model_logits(wrong, g.cases[0]) - golden_logits(g, g.cases[0])).abs().max().item<double>(), 1e-2);
}

TEST(Golden, CliConvertWritesAnHfDirectoryThatGeneratesTheSameText) {
  SPKV_REQUIRE_SHARED();
  auto g = golden();
  test::TempDir dir;
  auto r = test::run_spkv("convert --model " + test::quote(g.model) + " --out " + test::quote(dir / "hf"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto& c = g.cases[1];
  const int64_t n_new = int64_t(c["tokens"].size()) - c["n_prompt_tokens"].get<int64_t>();
  r = test::run_spkv("generate --model " + test::quote(dir / "hf") + " --prompt " +
                     test::quote(c["prompt"].get<std::string>()) + " -n " + std::to_string(n_new) + " --temperature 0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, c["text"].get<std::string>());
}

}  // namespace
}  // namespace spkv
