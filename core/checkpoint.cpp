// llama2.c legacy .bin and Hugging Face safetensors checkpoint loading; HF-style checkpoint writing.
#include "core/checkpoint.h"

#include <torch/torch.h>

#include <cstring>
#include <filesystem>
#include <set>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/errors.h"
#include "core/safetensors.h"

namespace spkv {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string layer_name(int64_t il, const char* rest) { return "model.layers." + std::to_string(il) + "." + rest; }

// A float32 tensor that views mapped bytes (no copy); the mapping lives as long as the tensor.
torch::Tensor view_mapped(const std::shared_ptr<MappedFile>& file, const void* data, std::vector<int64_t> shape) {
  auto keep = file;
  return torch::from_blob(const_cast<void*>(data), shape, [keep](void*) {}, torch::kFloat32);
}

torch::Tensor to_f32(const TensorView& v, const std::shared_ptr<MappedFile>& file, const std::string& path) {
  switch (v.dtype) {
    case DType::f32: return view_mapped(file, v.data, v.shape);
    case DType::f16:
      return torch::from_blob(const_cast<void*>(v.data), v.shape, torch::kFloat16).to(torch::kFloat32);
    case DType::bf16:
      return torch::from_blob(const_cast<void*>(v.data), v.shape, torch::kBFloat16).to(torch::kFloat32);
    case DType::f64:
      return torch::from_blob(const_cast<void*>(v.data), v.shape, torch::kFloat64).to(torch::kFloat32);
    default:
      throw CheckpointError(path, "tensor '" + v.name + "' has dtype " + to_string(v.dtype) +
                                      ", expected F32, F16 or BF16");
  }
}

Checkpoint load_llama2c(const std::string& path) {
  auto file = std::make_shared<MappedFile>(path);
  if (file->size() < 28) throw CheckpointError(path, "truncated file: no 28-byte llama2.c header");
  int32_t h[7];
  std::memcpy(h, file->data(), sizeof h);
  Checkpoint ck;
  ck.path = ck.config_file = path;
  ck.format = "llama2c";
  ModelConfig& c = ck.config;
  c.dim = h[0], c.hidden_dim = h[1], c.n_layers = h[2], c.n_heads = h[3], c.n_kv_heads = h[4];
  c.vocab_size = std::abs(h[5]), c.max_seq_len = h[6];
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
  size_t expected = 28;
  for (auto& b : blocks) {
    int64_t n = 1;
    for (auto s : b.shape) n *= s;
    expected += 4 * n;
  }
  if (file->size() != expected)
    throw CheckpointError(path, std::string(file->size() < expected ? "truncated file" : "trailing bytes") +
                                    ": the header (dim " + std::to_string(C) + ", hidden_dim " + std::to_string(F) +
                                    ", n_layers " + std::to_string(L) + ", vocab " + std::to_string(V) +
                                    ") implies " + std::to_string(expected) + " bytes, the file has " +
                                    std::to_string(file->size()));
  std::map<std::string, torch::Tensor> raw;
  size_t off = 28;
  for (auto& b : blocks) {
    raw[b.name] = view_mapped(file, file->data() + off, b.shape);
    off += 4 * static_cast<size_t>(raw[b.name].numel());
  }
  auto& t = ck.tensors;
  t["model.embed_tokens.weight"] = raw["tok"];
  t["model.norm.weight"] = raw["rms_final"];
  if (!c.tied_embeddings) t["lm_head.weight"] = raw["wcls"];
  for (int64_t il = 0; il < L; ++il) {
    t[layer_name(il, "input_layernorm.weight")] = raw["rms_att"][il];
    t[layer_name(il, "self_attn.q_proj.weight")] = raw["wq"][il];
    t[layer_name(il, "self_attn.k_proj.weight")] = raw["wk"][il];
    t[layer_name(il, "self_attn.v_proj.weight")] = raw["wv"][il];
    t[layer_name(il, "self_attn.o_proj.weight")] = raw["wo"][il];
    t[layer_name(il, "post_attention_layernorm.weight")] = raw["rms_ffn"][il];
    t[layer_name(il, "mlp.gate_proj.weight")] = raw["w1"][il];
    t[layer_name(il, "mlp.down_proj.weight")] = raw["w2"][il];
    t[layer_name(il, "mlp.up_proj.weight")] = raw["w3"][il];
  }
  for (auto& kv : t) ck.origin[kv.first] = path;
  return ck;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CheckpointError(path, "cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void add_safetensors(Checkpoint& ck, const std::string& file) {
  SafetensorsFile st(file);
  for (auto& [name, view] : st.tensors()) {
    if (ck.tensors.count(name))
      throw CheckpointError(file, "tensor '" + name + "' also appears in " + ck.origin[name]);
    ck.tensors[name] = to_f32(view, st.mapping(), file);
    ck.origin[name] = file;
  }
}

Checkpoint load_hf(const fs::path& dir, const fs::path& single_file) {
  Checkpoint ck;
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
    } catch (const json::parse_error& e) {
      throw CheckpointError(index.string(), std::string("invalid JSON: ") + e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      throw CheckpointError(index.string(), "missing object 'weight_map'");
    std::set<std::string> shards;
    for (auto& v : j["weight_map"]) shards.insert(v.get<std::string>());
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

Checkpoint load_checkpoint(const std::string& path) {
  const fs::path p(path);
  if (!fs::exists(p)) throw CheckpointError(path, "no such file or directory");
  Checkpoint ck;
  if (fs::is_directory(p)) ck = load_hf(p, {});
  else if (p.extension() == ".safetensors") ck = load_hf(p.parent_path().empty() ? "." : p.parent_path(), p);
  else ck = load_llama2c(path);
  ck.path = path;
  return ck;
}

torch::Tensor permute_for_rotate_half(const torch::Tensor& w, int64_t n_heads) {
  const int64_t rows = w.size(0), cols = w.size(1);
  // (H, D/2, 2, C) -> (H, 2, D/2, C): pair member j of pair i moves to row j * D/2 + i.
  return w.reshape({n_heads, rows / n_heads / 2, 2, cols}).transpose(1, 2).reshape({rows, cols}).contiguous();
}

void save_hf_checkpoint(const std::string& dir, const ModelConfig& config,
                        const std::map<std::string, torch::Tensor>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create directory: " + ec.message());
  std::vector<torch::Tensor> keep;
  std::vector<TensorView> views;
  for (auto& [name, t] : tensors) {
    keep.push_back(t.detach().to(torch::kCPU, torch::kFloat32).contiguous());
    TensorView v;
    v.name = name;
    v.dtype = DType::f32;
    v.shape = keep.back().sizes().vec();
    v.data = keep.back().data_ptr();
    v.nbytes = keep.back().numel() * sizeof(float);
    views.push_back(v);
  }
  auto meta = metadata;
  meta.emplace("format", "pt");
  write_safetensors((fs::path(dir) / "model.safetensors").string(), views, meta);
  write_file_atomic((fs::path(dir) / "config.json").string(), config.to_hf_json());
}

}  // namespace spkv
