// Indexing llama2.c .bin and Hugging Face safetensors checkpoints without LibTorch (checkpoint_index.h).
#include "core/model/checkpoint_index.h"

#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/base/errors.h"

namespace spkv {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string layer_name(int64_t il, const char* rest) { return "model.layers." + std::to_string(il) + "." + rest; }

CheckpointIndex index_llama2c(const std::string& path) {
  auto file = std::make_shared<MappedFile>(path);
  if (file->size() < 28) throw CheckpointError(path, "truncated file: no 28-byte llama2.c header");
  int32_t h[7];
  std::memcpy(h, file->data(), sizeof h);
  CheckpointIndex ck;
  ck.path = ck.config_file = path;
  ck.format = "llama2c";
  ModelConfig& c = ck.config;
  c.dim = h[0], c.hidden_dim = h[1], c.n_layers = h[2], c.n_heads = h[3], c.n_kv_heads = h[4];
  c.vocab_size = std::abs(int64_t(h[5])), c.max_seq_len = h[6];
  c.tied_embeddings = h[5] > 0;
  c.rope_style = RopeStyle::interleaved;
  c.norm_eps = 1e-5;
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  if (c.n_heads <= 0 || c.dim % c.n_heads != 0)
    throw CheckpointError(path, "header: dim " + std::to_string(c.dim) + " is not a multiple of n_heads " +
                                    std::to_string(c.n_heads));
  try {
    c.validate(path);
  } catch (const ConfigError& e) {
    throw CheckpointError(path, std::string("invalid llama2.c header: ") + e.what());
  }
  const int64_t C = c.dim, F = c.hidden_dim, L = c.n_layers, V = c.vocab_size, D = c.head_dim;
  const int64_t Ckv = c.n_kv_heads * D;
  // The layout of run.c's memory_map_weights, in order.
  struct Block {
    const char* name;
    std::vector<int64_t> shape;
  };
  std::vector<Block> blocks = {{"tok", {V, C}},       {"rms_att", {L, C}},  {"wq", {L, C, C}},
                               {"wk", {L, Ckv, C}},   {"wv", {L, Ckv, C}},  {"wo", {L, C, C}},
                               {"rms_ffn", {L, C}},   {"w1", {L, F, C}},    {"w2", {L, C, F}},
                               {"w3", {L, F, C}},     {"rms_final", {C}},   {"freq_real", {c.max_seq_len, D / 2}},
                               {"freq_imag", {c.max_seq_len, D / 2}}};
  if (!c.tied_embeddings) blocks.push_back({"wcls", {V, C}});
  uint64_t expected = 28;
  for (auto& b : blocks) {
    uint64_t n = 4;
    for (auto s : b.shape)
      if (__builtin_mul_overflow(n, uint64_t(s), &n)) n = UINT64_MAX;
    if (__builtin_add_overflow(expected, n, &expected)) expected = UINT64_MAX;
  }
  if (file->size() != expected)
    throw CheckpointError(path, std::string(file->size() < expected ? "truncated file" : "trailing bytes") +
                                    ": the header (dim " + std::to_string(C) + ", hidden_dim " + std::to_string(F) +
                                    ", n_layers " + std::to_string(L) + ", vocab " + std::to_string(V) +
                                    ") implies " + (expected == UINT64_MAX ? "more than 2^64" : std::to_string(expected)) +
                                    " bytes, the file has " +
                                    std::to_string(file->size()));
  // Block b's layer il (or the whole block when it has no layer axis) as a view of the mapped bytes.
  std::map<std::string, std::pair<size_t, std::vector<int64_t>>> at;  // block -> (byte offset, shape)
  size_t off = 28;
  for (auto& b : blocks) {
    size_t n = 4;
    for (auto s : b.shape) n *= size_t(s);
    at[b.name] = {off, b.shape};
    off += n;
  }
  auto add = [&](const std::string& name, const char* block, int64_t il) {
    auto [o, shape] = at.at(block);
    if (il >= 0) {
      shape.erase(shape.begin());
      size_t n = 4;
      for (auto s : shape) n *= size_t(s);
      o += size_t(il) * n;
    }
    StoredTensor& t = ck.tensors[name];
    t.view.name = name;
    t.view.dtype = DType::f32;
    t.view.shape = shape;
    t.view.data = file->data() + o;
    t.view.nbytes = 4 * size_t(t.view.numel());
    t.mapping = file;
    t.file = path;
  };
  add("model.embed_tokens.weight", "tok", -1);
  add("model.norm.weight", "rms_final", -1);
  if (!c.tied_embeddings) add("lm_head.weight", "wcls", -1);
  for (int64_t il = 0; il < L; ++il) {
    add(layer_name(il, "input_layernorm.weight"), "rms_att", il);
    add(layer_name(il, "self_attn.q_proj.weight"), "wq", il);
    add(layer_name(il, "self_attn.k_proj.weight"), "wk", il);
    add(layer_name(il, "self_attn.v_proj.weight"), "wv", il);
    add(layer_name(il, "self_attn.o_proj.weight"), "wo", il);
    add(layer_name(il, "post_attention_layernorm.weight"), "rms_ffn", il);
    add(layer_name(il, "mlp.gate_proj.weight"), "w1", il);
    add(layer_name(il, "mlp.down_proj.weight"), "w2", il);
    add(layer_name(il, "mlp.up_proj.weight"), "w3", il);
  }
  return ck;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CheckpointError(path, "cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void add_safetensors(CheckpointIndex& ck, const std::string& file) {
  SafetensorsFile st(file);
  for (auto& [name, view] : st.tensors()) {
    if (ck.tensors.count(name))
      throw CheckpointError(file, "tensor '" + name + "' also appears in " + ck.tensors[name].file);
    const DType d = view.dtype;
    if (d != DType::f32 && d != DType::f16 && d != DType::bf16 && d != DType::f64)
      throw CheckpointError(file, "tensor '" + name + "' has dtype " + to_string(d) + ", expected F32, F16 or BF16");
    ck.tensors[name] = {view, st.mapping(), file};
  }
}

CheckpointIndex index_hf(const fs::path& dir, const fs::path& single_file) {
  CheckpointIndex ck;
  ck.format = "hf";
  ck.config_file = (dir / "config.json").string();
  if (!fs::exists(ck.config_file))
    throw CheckpointError(dir.string(), "no config.json (expected a Hugging Face model directory)");
  ck.config = parse_hf_config(read_text(ck.config_file), ck.config_file);
  if (!single_file.empty()) {
    add_safetensors(ck, single_file.string());
    return ck;
  }
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(dir / "model.safetensors")) {
    add_safetensors(ck, (dir / "model.safetensors").string());
  } else if (fs::exists(index)) {
    json j;
    try {
      j = json::parse(read_text(index.string()));
    } catch (const json::exception& e) {
      throw CheckpointError(index.string(), std::string("invalid JSON: ") + e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      throw CheckpointError(index.string(), "missing object 'weight_map'");
    std::set<std::string> shards;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        throw CheckpointError(index.string(), "weight_map['" + it.key() + "'] must be a shard file name, got " + it.value().dump());
      shards.insert(it.value().get<std::string>());
    }
    for (auto& s : shards) add_safetensors(ck, (dir / s).string());
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
      if (!ck.tensors.count(it.key()))
        throw CheckpointError(index.string(), "weight_map names tensor '" + it.key() + "' but shard " +
                                                  it.value().get<std::string>() + " does not contain it");
  } else {
    throw CheckpointError(dir.string(), "no model.safetensors or model.safetensors.index.json");
  }
  return ck;
}

}  // namespace

CheckpointIndex index_checkpoint(const std::string& path, bool init_missing_predictor) {
  const fs::path p(path);
  if (!fs::exists(p)) throw CheckpointError(path, "no such file or directory");
  CheckpointIndex ck;
  if (fs::is_directory(p)) ck = index_hf(p, {});
  else if (p.extension() == ".safetensors") ck = index_hf(p.parent_path().empty() ? "." : p.parent_path(), p);
  else ck = index_llama2c(path);
  ck.path = path;
  TensorShapes shapes;
  for (const auto& [name, t] : ck.tensors) shapes[name] = {t.view.shape, t.file};
  check_shapes(shapes, ck.config, ck.path, ck.config_file, init_missing_predictor);
  return ck;
}

int64_t CheckpointIndex::parameter_count() const {
  int64_t n = 0;
  for (const auto& [name, shape] : parameter_shapes(config)) {
    int64_t k = 1;
    for (auto s : shape) k *= s;
    n += k;
  }
  return n;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes(const ModelConfig& c) {
  const int64_t C = c.dim, Dq = c.n_heads * c.head_dim, Dkv = c.n_kv_heads * c.head_dim;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out{{"model.embed_tokens.weight", {c.vocab_size, C}}};
  for (int64_t il = 0; il < c.n_layers; ++il) {
    auto add = [&](const char* rest, std::vector<int64_t> shape) { out.emplace_back(layer_name(il, rest), std::move(shape)); };
    const bool b = c.attention_bias;
    add("self_attn.q_proj.weight", {Dq, C});
    if (b) add("self_attn.q_proj.bias", {Dq});
    add("self_attn.k_proj.weight", {Dkv, C});
    if (b) add("self_attn.k_proj.bias", {Dkv});
    add("self_attn.v_proj.weight", {Dkv, C});
    if (b) add("self_attn.v_proj.bias", {Dkv});
    add("self_attn.o_proj.weight", {C, Dq});
    if (c.spkv.enabled) {
      const int64_t out1 = c.spkv.predictor_layers == 2 ? c.spkv.hidden(C) : c.n_kv_heads;
      add("self_attn.utility.fc1.weight", {out1, C}), add("self_attn.utility.fc1.bias", {out1});
      if (c.spkv.predictor_layers == 2)
        add("self_attn.utility.fc2.weight", {c.n_kv_heads, out1}), add("self_attn.utility.fc2.bias", {c.n_kv_heads});
    }
    add("mlp.gate_proj.weight", {c.hidden_dim, C}), add("mlp.up_proj.weight", {c.hidden_dim, C});
    add("mlp.down_proj.weight", {C, c.hidden_dim});
    add("input_layernorm.weight", {C}), add("post_attention_layernorm.weight", {C});
  }
  out.emplace_back("model.norm.weight", std::vector<int64_t>{C});
  if (!c.tied_embeddings) out.emplace_back("lm_head.weight", std::vector<int64_t>{c.vocab_size, C});
  return out;
}

void check_shapes(const TensorShapes& tensors, const ModelConfig& c, const std::string& path,
                  const std::string& config_file, bool init_missing_predictor) {
  auto shape_str = [](const std::vector<int64_t>& s) {
    std::string o = "[";
    for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
    return o + "]";
  };
  auto origin = [&](const std::string& name) { return tensors.at(name).second; };
  const std::string predictor_fields = "predictor_layers " + std::to_string(c.spkv.predictor_layers) + ", predictor_hidden " +
                                       std::to_string(c.spkv.hidden(c.dim)) + ", hidden_size " + std::to_string(c.dim) +
                                       ", num_key_value_heads " + std::to_string(c.n_kv_heads);
  const std::string fields = "hidden_size " + std::to_string(c.dim) + ", intermediate_size " + std::to_string(c.hidden_dim) +
                             ", heads " + std::to_string(c.n_heads) + "/" + std::to_string(c.n_kv_heads) + " kv, head_dim " +
                             std::to_string(c.head_dim) + ", vocab_size " + std::to_string(c.vocab_size);
  // The layers the weights hold, counted first: a config of millions of layers fails here, before its
  // parameters are listed.
  int64_t held = 0;
  for (const auto& [name, t] : tensors) {
    if (name.rfind("model.layers.", 0) != 0) continue;
    int64_t il = 0;
    const char* digits = name.c_str() + 13;
    if (std::from_chars(digits, name.c_str() + name.size(), il).ec == std::errc()) held = std::max(held, il + 1);
  }
  if (c.n_layers > held)
    throw CheckpointError(path, "missing tensor '" + layer_name(held, "input_layernorm.weight") + "' (the config " +
                                       config_file + " has " + std::to_string(c.n_layers) + " layers, the weights " +
                                       std::to_string(held) + ")");
  std::set<std::string> expected;
  for (const auto& [name, shape] : parameter_shapes(c)) {
    expected.insert(name);
    const bool predictor = name.find(".utility.") != std::string::npos;
    auto it = tensors.find(name);
    if (it == tensors.end() && predictor && init_missing_predictor) continue;
    if (it == tensors.end() && predictor)
      throw CheckpointError(path, "missing tensor '" + name + "': the config " + config_file +
                                         " has an spkv block (predictor_layers " + std::to_string(c.spkv.predictor_layers) +
                                         ") but the weights have no such utility predictor");
    if (it == tensors.end())
      throw CheckpointError(path, "missing tensor '" + name + "' (the config " + config_file + " has " +
                                         std::to_string(c.n_layers) + " layers" +
                                         (c.attention_bias ? ", attention_bias = true" : "") + ")");
    if (it->second.first != shape)
      throw CheckpointError(origin(name), "tensor '" + name + "' has shape " + shape_str(it->second.first) + " but the " +
                                              (predictor ? "config's spkv block (" + config_file + ": " + predictor_fields
                                                         : "config (" + config_file + ": " + fields) +
                                              ") implies " + shape_str(shape));
  }
  for (const auto& [name, t] : tensors) {
    if (expected.count(name) || name.find("rotary_emb.inv_freq") != std::string::npos ||
        (name == "lm_head.weight" && c.tied_embeddings))
      continue;
    if (name.find(".utility.") != std::string::npos)
      throw CheckpointError(origin(name), "unexpected tensor '" + name + "': the config " + config_file +
                                              (c.spkv.enabled ? " has a different utility predictor (predictor_layers " +
                                                                    std::to_string(c.spkv.predictor_layers) + ")"
                                                              : " has no spkv block, so the model has no utility predictor"));
    throw CheckpointError(origin(name), "unexpected tensor '" + name + "': the config " + config_file + " (" +
                                            std::to_string(c.n_layers) + " layers, tie_word_embeddings " +
                                            (c.tied_embeddings ? "true" : "false") + ", attention_bias " +
                                            (c.attention_bias ? "true" : "false") + ") has no such parameter");
  }
}

}  // namespace spkv
