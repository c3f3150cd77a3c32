// The model against an independent float64 recomputation (explicit loops for RoPE and attention) over
// architecture variants, attend() against the kernel reference, and config parsing for Llama 3, Qwen2
// and Mistral configs.
#include <gtest/gtest.h>

#include <cmath>

#include "core/base/errors.h"
#include "core/model/model.h"
#include "kernels/cpu/attention_ref.h"
#include "tests/core/reference_model.h"
#include "tests/test_util.h"

namespace spkv {
namespace {
using torch::indexing::Slice;
using test::ref_forward;

ModelConfig variant(int which) {
  ModelConfig c;
  c.dim = 24, c.hidden_dim = 40, c.n_layers = 2, c.n_heads = 6, c.n_kv_heads = 3, c.head_dim = 4;
  c.vocab_size = 37, c.max_seq_len = 64;
  if (which == 0) {  // llama2.c-like
    c.rope_style = RopeStyle::interleaved, c.tied_embeddings = true, c.n_kv_heads = 6;
  } else if (which == 1) {  // Llama 3 / Qwen2-like: GQA, biases, untied, llama3 scaling
    // D = 8, theta 1e4: wavelengths 6.3, 63, 628, 6283 against the band [64/4, 64/1]: pair 0 keeps its
    // frequency, pair 1 is smoothed, pairs 2 and 3 are divided by 8.
    c.head_dim = 8, c.n_heads = 4, c.n_kv_heads = 2, c.attention_bias = true;
    c.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 64};
  } else {  // Mistral-like sliding window, linear scaling
    c.sliding_window = 5, c.rope_scaling.type = "linear", c.rope_scaling.factor = 2.0;
  }
  return c;
}

TEST(Model, MatchesFloat64ReferenceAcrossArchitectureVariants) {
  for (int which = 0; which < 3; ++which) {
    torch::manual_seed(100 + which);
    LlamaForCausalLM m(variant(which));
    {
      torch::NoGradGuard ng;
      for (auto& p : m->parameters()) p.normal_(0.0, 0.3);  // larger than default init: RoPE and masks matter
    }
    std::vector<int64_t> toks;
    for (int t = 0; t < 23; ++t) toks.push_back((t * 7 + 3) % 37);
    torch::NoGradGuard ng;
    auto got = m(torch::tensor(toks).unsqueeze(0))[0].to(torch::kFloat64);  // (T, V)
    auto want = ref_forward(m, toks);
    EXPECT_LT((got - want).abs().max().item<double>(), 1e-4) << "variant " << which;
    EXPECT_GT(want.std().item<double>(), 0.1) << "variant " << which;
  }
}

TEST(Model, Llama3ScalingChangesTheLongWavelengthsOnly) {
  ModelConfig c = variant(1), plain = c;
  plain.rope_scaling = {};
  RotaryEmbedding a(c), b(plain);
  EXPECT_NEAR(a.cos[10][0].item<double>(), b.cos[10][0].item<double>(), 1e-6);  // pair 0 unchanged
  const double f1 = 0.1, smooth = (64 / (2 * M_PI / f1) - 1.0) / (4.0 - 1.0);  // pair 1: smoothed
  EXPECT_NEAR(a.sin[30][1].item<double>(), std::sin(30 * ((1 - smooth) * f1 / 8 + smooth * f1)), 1e-6);
  EXPECT_NEAR(a.sin[30][3].item<double>(), std::sin(30 * 0.001 / 8), 1e-6);  // pair 3: divided by 8
  EXPECT_GT(std::abs(a.sin[30][3].item<double>() - b.sin[30][3].item<double>()), 1e-3);
}

TEST(Model, AttendMatchesKernelReferenceAtOddSizes) {
  const int64_t B = 2, H = 6, Hkv = 3, T = 13, D = 24, W = 4;
  torch::manual_seed(3);
  auto q = torch::randn({B, H, T, D}), k = torch::randn({B, Hkv, T, D}), v = torch::randn({B, Hkv, T, D});
  auto pos = torch::arange(T, torch::kInt64);
  auto y = apply_probs(attention_probs(q, k, causal_bias(pos, pos, W)), v);  // (B, H, T, D)
  auto want = torch::empty_like(y);
  kernels::GatedAttentionParams p;
  p.q = q.data_ptr<float>(), p.k = k.data_ptr<float>(), p.v = v.data_ptr<float>(), p.y = want.data_ptr<float>();
  p.q_pos = p.k_pos = pos.data_ptr<int64_t>();
  p.B = B, p.H = H, p.Hkv = Hkv, p.T = T, p.S = T, p.D = D, p.window = W, p.scale = float(1 / std::sqrt(double(D)));
  kernels::set_contiguous_strides(p);
  ASSERT_EQ(kernels::cpu::gated_attention_ref(p), kernels::Status::ok);
  EXPECT_LT((y - want).abs().max().item<double>(), 1e-5);
  // Dropping the window changes the answer: the comparison sees the mask.
  auto dense = apply_probs(attention_probs(q, k, causal_bias(pos, pos, 0)), v);
  EXPECT_GT((dense - want).abs().max().item<double>(), 1e-2);
}

TEST(Config, ParsesLlama3Qwen2AndMistralConfigs) {
  auto l3 = parse_hf_config(R"({"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":4096,
    "intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,
    "vocab_size":128256,"max_position_embeddings":131072,"rms_norm_eps":1e-5,"rope_theta":500000.0,
    "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
    "original_max_position_embeddings":8192,"rope_type":"llama3"},"tie_word_embeddings":false,
    "bos_token_id":128000,"eos_token_id":[128001,128008,128009]})", "l3.json");
  EXPECT_EQ(l3.head_dim, 128);
  EXPECT_EQ(l3.rope_scaling.type, "llama3");
  EXPECT_EQ(l3.rope_scaling.factor, 8.0);
  EXPECT_EQ(l3.eos_id, 128001);
  EXPECT_EQ(l3.rope_style, RopeStyle::rotate_half);
  auto qw = parse_hf_config(R"({"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":896,
    "intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,
    "vocab_size":151936,"max_position_embeddings":32768,"rope_theta":1000000.0,"tie_word_embeddings":true,
    "use_sliding_window":false,"sliding_window":32768,"rms_norm_eps":1e-6})", "qwen.json");
  EXPECT_TRUE(qw.attention_bias);
  EXPECT_TRUE(qw.tied_embeddings);
  EXPECT_EQ(qw.sliding_window, 0);
  EXPECT_EQ(qw.head_dim, 64);
  auto mi = parse_hf_config(R"({"architectures":["MistralForCausalLM"],"model_type":"mistral","hidden_size":4096,
    "intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,
    "vocab_size":32000,"max_position_embeddings":32768,"sliding_window":4096})", "mistral.json");
  EXPECT_EQ(mi.sliding_window, 4096);
  EXPECT_FALSE(mi.attention_bias);
  // Round trip through to_hf_json.
  auto again = parse_hf_config(l3.to_hf_json(), "again.json");
  EXPECT_EQ(again.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(again.n_kv_heads, 8);
}

TEST(Config, BadFieldsNameTheFileAndField) {
  auto msg = [](const std::string& j) {
    try {
      parse_hf_config(j, "cfg.json");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg(R"({"hidden_size":"big"})").find("cfg.json: field 'hidden_size' has the wrong type"), std::string::npos);
  EXPECT_NE(msg(R"({"hidden_size":64})").find("missing field 'intermediate_size'"), std::string::npos);
  EXPECT_NE(msg(R"({"model_type":"gpt2"})").find("model_type 'gpt2'"), std::string::npos);
  EXPECT_NE(msg(R"({"hidden_size":64,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":8,
    "num_key_value_heads":3,"vocab_size":4})").find("num_key_value_heads (3) must divide"), std::string::npos);
}

}  // namespace
}  // namespace spkv
