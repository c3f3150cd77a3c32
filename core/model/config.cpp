// Parsing and validation of ModelConfig from Hugging Face config.json (Llama, Qwen2, Mistral).
#include "core/model/config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <type_traits>

#include "core/base/errors.h"
#include "core/base/json_field.h"

namespace spkv {
using json = nlohmann::json;

const char* to_string(RopeStyle s) { return s == RopeStyle::interleaved ? "interleaved" : "rotate_half"; }

namespace {
constexpr const char* kGateModes[] = {"dense", "soft", "hard", "annealed", "ste"};
}

const char* to_string(GateMode m) { return kGateModes[int(m)]; }

GateMode parse_gate_mode(const std::string& s, const std::string& where) {
  for (int i = 0; i < 5; ++i)
    if (s == kGateModes[i]) return GateMode(i);
  throw ConfigError(where + ": gate mode '" + s + "' (expected dense, soft, hard, annealed or ste)");
}

void SpkvConfig::validate(const std::string& where) const {
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) throw ConfigError(where + ": spkv." + what);
  };
  need(window >= 1, "window must be >= 1, got " + std::to_string(window));
  need(tau > 0.0 && tau < 1.0, "tau must be in (0, 1), got " + std::to_string(tau));
  need(keep_first >= 0, "keep_first must be >= 0, got " + std::to_string(keep_first));
  need(predictor_layers == 1 || predictor_layers == 2,
       "predictor_layers must be 1 or 2, got " + std::to_string(predictor_layers));
  need(predictor_hidden >= 0, "predictor_hidden must be >= 0 (0 = dim / 4), got " + std::to_string(predictor_hidden));
  need(tap == "attn_norm" || tap == "residual", "tap '" + tap + "' (expected attn_norm or residual)");
}

namespace {
constexpr int64_t kMaxPositions = int64_t(1) << 24;  // the RoPE tables are allocated whole: 16M positions
constexpr int64_t kMaxSize = int64_t(1) << 24;       // any one dimension
}  // namespace

void ModelConfig::validate(const std::string& where) const {
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) throw ConfigError(where + ": " + what);
  };
  need(dim > 0, "hidden_size/dim must be > 0");
  need(hidden_dim > 0, "intermediate_size/hidden_dim must be > 0");
  need(n_layers > 0, "num_hidden_layers must be > 0");
  need(n_heads > 0, "num_attention_heads must be > 0");
  need(n_kv_heads > 0 && n_heads % n_kv_heads == 0,
       "num_key_value_heads (" + std::to_string(n_kv_heads) + ") must divide num_attention_heads (" +
           std::to_string(n_heads) + ")");
  need(head_dim > 0 && head_dim % 2 == 0, "head_dim must be even and > 0, got " + std::to_string(head_dim));
  need(vocab_size > 0, "vocab_size must be > 0");
  need(max_seq_len > 0, "max_position_embeddings must be > 0");
  need(norm_eps > 0, "rms_norm_eps must be > 0");
  need(rope_theta > 0, "rope_theta must be > 0");
  need(rope_scaling.type == "none" || rope_scaling.type == "linear" || rope_scaling.type == "llama3",
       "rope_scaling.rope_type '" + rope_scaling.type + "' is not supported (expected linear or llama3)");
  need(rope_scaling.factor > 0, "rope_scaling.factor must be > 0");
  need(sliding_window >= 0, "sliding_window must be >= 0");
  need(max_seq_len <= kMaxPositions, "max_position_embeddings " + std::to_string(max_seq_len) + " is over the supported " +
                                         std::to_string(kMaxPositions));
  need(bos_id >= 0 && bos_id < vocab_size,
       "bos_token_id " + std::to_string(bos_id) + " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
  need(eos_id >= 0 && eos_id < vocab_size,
       "eos_token_id " + std::to_string(eos_id) + " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
  // Every size that multiplies into a tensor's element count, with room for the products to fit 64 bits.
  for (auto [v, name] : {std::pair{dim, "hidden_size"}, {hidden_dim, "intermediate_size"}, {n_layers, "num_hidden_layers"},
                         {n_heads, "num_attention_heads"}, {head_dim, "head_dim"}, {vocab_size, "vocab_size"}})
    need(v <= kMaxSize, std::string(name) + " " + std::to_string(v) + " is over the supported " + std::to_string(kMaxSize));
  if (spkv.enabled) spkv.validate(where);
}

namespace {

template <class T>
T get(const json& j, const char* key, const std::string& file) {
  if (!j.contains(key) || j[key].is_null()) throw ConfigError(file + ": missing field '" + key + "'");
  return json_field<T>(j[key], key, file);
}

template <class T>  // element i of an array field
T get(const json& a, size_t i, const char* key, const std::string& file) {
  const std::string name = std::string(key) + "[" + std::to_string(i) + "]";
  if (!a.is_array() || i >= a.size()) throw ConfigError(file + ": missing field '" + name + "'");
  return json_field<T>(a[i], name, file);
}

template <class T>
T get_or(const json& j, const char* key, T fallback, const std::string& file) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  return get<T>(j, key, file);
}

}  // namespace

ModelConfig parse_hf_config(const std::string& text, const std::string& file) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw ConfigError(file + ": invalid JSON: " + e.what());
  }
  if (!j.is_object()) throw ConfigError(file + ": expected a JSON object at top level");

  ModelConfig c;
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty())
    c.architecture = get<std::string>(j["architectures"], 0, "architectures", file);
  const std::string model_type = get_or<std::string>(j, "model_type", "llama", file);
  if (model_type != "llama" && model_type != "qwen2" && model_type != "mistral")
    throw ConfigError(file + ": model_type '" + model_type + "' is not supported (expected llama, qwen2 or mistral)");

  c.dim = get<int64_t>(j, "hidden_size", file);
  c.hidden_dim = get<int64_t>(j, "intermediate_size", file);
  c.n_layers = get<int64_t>(j, "num_hidden_layers", file);
  c.n_heads = get<int64_t>(j, "num_attention_heads", file);
  c.n_kv_heads = get_or<int64_t>(j, "num_key_value_heads", c.n_heads, file);
  c.head_dim = get_or<int64_t>(j, "head_dim", c.n_heads > 0 ? c.dim / c.n_heads : 0, file);
  c.vocab_size = get<int64_t>(j, "vocab_size", file);
  c.max_seq_len = get_or<int64_t>(j, "max_position_embeddings", 2048, file);
  c.norm_eps = get_or<double>(j, "rms_norm_eps", 1e-6, file);
  c.rope_theta = get_or<double>(j, "rope_theta", 10000.0, file);
  c.tied_embeddings = get_or<bool>(j, "tie_word_embeddings", false, file);
  c.attention_bias = get_or<bool>(j, "attention_bias", model_type == "qwen2", file);
  if (get_or<bool>(j, "mlp_bias", false, file))
    throw ConfigError(file + ": mlp_bias = true is not supported");
  const bool use_sw = model_type == "mistral" || get_or<bool>(j, "use_sliding_window", false, file);
  if (use_sw) c.sliding_window = get_or<int64_t>(j, "sliding_window", 0, file);
  c.bos_id = get_or<int64_t>(j, "bos_token_id", 1, file);
  const bool eos_list = j.contains("eos_token_id") && j["eos_token_id"].is_array();  // the first one ends generation
  if (eos_list && j["eos_token_id"].empty()) throw ConfigError(file + ": field 'eos_token_id' is an empty list");
  c.eos_id = eos_list ? get<int64_t>(j["eos_token_id"], 0, "eos_token_id", file) : get_or<int64_t>(j, "eos_token_id", 2, file);
  const std::string style = get_or<std::string>(j, "rope_style", "rotate_half", file);
  if (style != "rotate_half" && style != "interleaved")
    throw ConfigError(file + ": rope_style '" + style + "' (expected rotate_half or interleaved)");
  c.rope_style = style == "interleaved" ? RopeStyle::interleaved : RopeStyle::rotate_half;

  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const json& rs = j["rope_scaling"];
    if (!rs.is_object()) throw ConfigError(file + ": rope_scaling must be an object");
    auto& s = c.rope_scaling;
    s.type = rs.contains("rope_type") ? get<std::string>(rs, "rope_type", file + ": rope_scaling")
                                      : get_or<std::string>(rs, "type", "none", file + ": rope_scaling");
    if (s.type == "default") s.type = "none";
    s.factor = get_or<double>(rs, "factor", 1.0, file + ": rope_scaling");
    s.low_freq_factor = get_or<double>(rs, "low_freq_factor", 1.0, file + ": rope_scaling");
    s.high_freq_factor = get_or<double>(rs, "high_freq_factor", 4.0, file + ": rope_scaling");
    s.original_max_position_embeddings =
        get_or<int64_t>(rs, "original_max_position_embeddings", 8192, file + ": rope_scaling");
  }
  if (j.contains("spkv") && !j["spkv"].is_null()) {
    const json& sj = j["spkv"];
    if (!sj.is_object()) throw ConfigError(file + ": spkv must be an object");
    auto& s = c.spkv;
    s.enabled = true;
    s.window = get_or<int64_t>(sj, "window", s.window, file + ": spkv");
    s.tau = get_or<double>(sj, "tau", s.tau, file + ": spkv");
    s.keep_first = get_or<int64_t>(sj, "keep_first", s.keep_first, file + ": spkv");
    s.predictor_layers = get_or<int64_t>(sj, "predictor_layers", s.predictor_layers, file + ": spkv");
    s.predictor_hidden = get_or<int64_t>(sj, "predictor_hidden", s.predictor_hidden, file + ": spkv");
    s.tap = get_or<std::string>(sj, "tap", s.tap, file + ": spkv");
    s.init_bias = get_or<double>(sj, "init_bias", s.init_bias, file + ": spkv");
    s.mode = parse_gate_mode(get_or<std::string>(sj, "mode", "hard", file + ": spkv"), file + ": spkv.mode");
    static const std::set<std::string> known = {"window",           "tau", "keep_first", "predictor_layers",
                                                "predictor_hidden", "tap", "init_bias",  "mode"};
    for (auto& [k, v] : sj.items())
      if (!known.count(k)) throw ConfigError(file + ": unknown field 'spkv." + k + "'");
  }
  c.validate(file);
  return c;
}

ModelConfig load_hf_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot open config file");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_hf_config(ss.str(), path);
}

std::string ModelConfig::to_hf_json() const {
  static const char* model_types[][2] = {
      {"LlamaForCausalLM", "llama"}, {"Qwen2ForCausalLM", "qwen2"}, {"MistralForCausalLM", "mistral"}};
  std::string model_type = "llama";
  for (auto& mt : model_types)
    if (architecture == mt[0]) model_type = mt[1];
  json j = {{"architectures", {architecture}},
            {"model_type", model_type},
            {"hidden_size", dim},
            {"intermediate_size", hidden_dim},
            {"num_hidden_layers", n_layers},
            {"num_attention_heads", n_heads},
            {"num_key_value_heads", n_kv_heads},
            {"head_dim", head_dim},
            {"vocab_size", vocab_size},
            {"max_position_embeddings", max_seq_len},
            {"rms_norm_eps", norm_eps},
            {"rope_theta", rope_theta},
            {"tie_word_embeddings", tied_embeddings},
            {"attention_bias", attention_bias},
            {"bos_token_id", bos_id},
            {"eos_token_id", eos_id},
            {"hidden_act", "silu"},
            {"torch_dtype", "float32"}};
  if (rope_style != RopeStyle::rotate_half) j["rope_style"] = to_string(rope_style);
  if (sliding_window > 0) {
    j["sliding_window"] = sliding_window;
    j["use_sliding_window"] = true;
  }
  if (rope_scaling.type != "none") {
    j["rope_scaling"] = {{"rope_type", rope_scaling.type}, {"factor", rope_scaling.factor}};
    if (rope_scaling.type == "llama3") {
      j["rope_scaling"]["low_freq_factor"] = rope_scaling.low_freq_factor;
      j["rope_scaling"]["high_freq_factor"] = rope_scaling.high_freq_factor;
      j["rope_scaling"]["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
    }
  }
  if (spkv.enabled) {
    j["spkv"] = {{"window", spkv.window},
                 {"tau", spkv.tau},
                 {"keep_first", spkv.keep_first},
                 {"predictor_layers", spkv.predictor_layers},
                 {"predictor_hidden", spkv.hidden(dim)},
                 {"tap", spkv.tap},
                 {"init_bias", spkv.init_bias},
                 {"mode", to_string(spkv.mode)}};
  }
  return j.dump(2) + "\n";
}

}  // namespace spkv
