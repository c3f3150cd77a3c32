// `spkv info`: a model's config, parameter count and tokenizer, from the checkpoint's index (no LibTorch,
// so the command starts at once; tools/spkv.cpp).
#include <fmt/core.h>

#include "core/model/checkpoint_index.h"
#include "tools/cli_base.h"

namespace spkv::cli {

namespace {

void cmd_info(const ModelArgs& a) {
  // As loading the model would: a config with an spkv block needs the predictor's weights.
  const CheckpointIndex ck = index_checkpoint(a.model, /*init_missing_predictor=*/false);
  const ModelConfig& c = ck.config;
  fmt::print("model        {} ({})\n", a.model, ck.format);
  fmt::print("architecture {}\n", c.architecture);
  fmt::print("parameters   {}\n", ck.parameter_count());
  fmt::print("dim {}  hidden_dim {}  layers {}  heads {}  kv_heads {}  head_dim {}\n", c.dim, c.hidden_dim,
             c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim);
  fmt::print("vocab {}  context {}  norm_eps {:g}  tied_embeddings {}  attention_bias {}\n", c.vocab_size,
             c.max_seq_len, c.norm_eps, c.tied_embeddings, c.attention_bias);
  fmt::print("rope {}  theta {:g}  scaling {} (factor {:g})  sliding_window {}\n", to_string(c.rope_style),
             c.rope_theta, c.rope_scaling.type, c.rope_scaling.factor, c.sliding_window);
  fmt::print("tokenizer    {}\n", a.load_tokenizer_for(c)->summary());
}

}  // namespace

void add_info_command(CLI::App& app, Commands& out) {
  auto ma = options<ModelArgs>();
  auto* info = add_command(app, "info");
  ma->add(info);
  out.push_back({info, [ma] { return cmd_info(*ma), true; }});
}

}  // namespace spkv::cli
