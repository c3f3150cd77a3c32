// Layout derivation from a Report's per-head counts, and the three file formats.
#include "analysis/layout.h"

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <sstream>

#include "core/base/errors.h"
#include "core/base/json_text.h"

namespace spkv::analysis {

int64_t Layout::n_global() const { return std::accumulate(global.begin(), global.end(), int64_t(0)); }

bool Layout::layer_uniform() const {
  for (int64_t il = 0; il < n_layers; ++il)
    for (int64_t h = 1; h < n_kv_heads; ++h)
      if (global[il * n_kv_heads + h] != global[il * n_kv_heads]) return false;
  return true;
}

Budget parse_budget(const std::string& text) {
  Budget b;
  b.text = text;
  auto bad = [&](const std::string& why) -> ConfigError {
    return ConfigError("--budget '" + text + "': " + why +
                       " (expected a head count N, a fraction 0.F or F%, kv:R for a KV-byte ratio, or density)");
  };
  auto number = [&](const std::string& s) {
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(s, &used);
    } catch (const std::exception&) {
      throw bad("not a number");
    }
    if (used != s.size() || !std::isfinite(v)) throw bad("not a number");
    if (v < 0) throw bad("must not be negative");
    return v;
  };
  if (text == "density") {
    b.kind = Budget::Kind::density;
  } else if (text.rfind("kv:", 0) == 0) {
    b.kind = Budget::Kind::kv_ratio, b.value = number(text.substr(3));
    if (b.value > 1) throw bad("a KV ratio is at most 1");
  } else if (!text.empty() && text.back() == '%') {
    b.kind = Budget::Kind::fraction, b.value = number(text.substr(0, text.size() - 1)) / 100;
    if (b.value > 1) throw bad("a share of the heads is at most 100%");
  } else if (text.find('.') != std::string::npos) {
    b.kind = Budget::Kind::fraction, b.value = number(text);
    if (b.value > 1) throw bad("a fraction of the heads is at most 1");
  } else {
    b.kind = Budget::Kind::heads, b.value = number(text);
  }
  return b;
}

namespace {
int64_t heads_of(const Report& r) { return r.n_layers * r.n_kv_heads; }

// Entries a head holds at the end of each document, summed: global heads hold T, local heads min(T, W).
std::pair<double, double> entries(const Report& r) {  // (sum of T, sum of min(T, W))
  double all = 0, local = 0;
  for (const auto& d : r.compression) all += double(d.tokens), local += double(std::min(d.tokens, r.window));
  return {all, local};
}

double kv_ratio_for(int64_t g, const Report& r) {
  const auto [all, local] = entries(r);
  const int64_t LH = heads_of(r);
  return all > 0 ? (double(g) * all + double(LH - g) * local) / (double(LH) * all) : std::nan("");
}

// Heads by density, densest first; ties go to the head with more kept keys, then the lower index.
std::vector<int64_t> ranked_heads(const Report& r) {
  std::vector<int64_t> order(heads_of(r));
  std::iota(order.begin(), order.end(), 0);
  auto density = [&](int64_t i) { return r.eligible[i] > 0 ? double(r.kept[i]) / double(r.eligible[i]) : -1.0; };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    if (density(a) != density(b)) return density(a) > density(b);
    return r.kept[a] > r.kept[b];
  });
  return order;
}
}  // namespace

int64_t budget_heads(const Budget& b, const Report& r) {
  const int64_t LH = heads_of(r);
  int64_t g = 0;
  switch (b.kind) {
    case Budget::Kind::heads:
      if (b.value != std::floor(b.value)) throw ConfigError("--budget '" + b.text + "': a head count must be whole");
      g = int64_t(b.value);
      break;
    case Budget::Kind::fraction: g = int64_t(std::llround(b.value * double(LH))); break;
    case Budget::Kind::density:
      if (!std::isfinite(r.overall.mean)) throw ConfigError("--budget density: the logs have no eligible keys, so no density");
      g = int64_t(std::llround(r.overall.mean * double(LH)));
      break;
    case Budget::Kind::kv_ratio:
      g = -1;
      for (int64_t k = 0; k <= LH; ++k)
        if (kv_ratio_for(k, r) <= b.value + 1e-12) g = k;
      if (g < 0)
        throw ConfigError(fmt::format("--budget '{}': even an all-local layout keeps {:.4f} of the KV entries of these "
                                      "documents (window {})", b.text, kv_ratio_for(0, r), r.window));
      break;
  }
  if (g > LH)
    throw ConfigError(fmt::format("--budget '{}' asks for {} global heads but the model has {} ({} layers x {} KV heads)",
                                  b.text, g, LH, r.n_layers, r.n_kv_heads));
  return g;
}

double layout_coverage(const std::vector<uint8_t>& global, const Report& r) {
  double in = 0, all = 0;
  for (int64_t i = 0; i < heads_of(r); ++i) all += double(r.kept[i]), in += global[i] ? double(r.kept[i]) : 0.0;
  return all > 0 ? in / all : std::nan("");
}

double layout_kv_ratio(const std::vector<uint8_t>& global, const Report& r) {
  return kv_ratio_for(std::accumulate(global.begin(), global.end(), int64_t(0)), r);
}

double spkv_kv_ratio(const Report& r) {
  double all = 0, spkv = 0;
  for (const auto& d : r.compression) all += double(d.tokens), spkv += d.spkv_entries;
  return all > 0 ? spkv / (double(heads_of(r)) * all) : std::nan("");
}

std::vector<Layout> derive_layouts(const Report& r, int64_t g, int n_random) {
  const int64_t L = r.n_layers, Hkv = r.n_kv_heads, LH = L * Hkv;
  if (g < 1 || g > LH)
    throw ConfigError(fmt::format("layout: a budget of {} global heads is outside 1..{}", g, LH));
  Layout base;
  base.n_layers = L, base.n_kv_heads = Hkv, base.window = r.window, base.logs = r.logs, base.tau = r.tau;
  base.model_path = r.model_path, base.checkpoint_sha256 = r.checkpoint_sha256, base.model_type = r.model_type;
  std::vector<Layout> out;
  auto add = [&](std::string name, std::string method, std::vector<uint8_t> global) {
    Layout l = base;
    l.name = std::move(name), l.method = std::move(method), l.global = std::move(global);
    l.coverage = layout_coverage(l.global, r), l.kv_ratio = layout_kv_ratio(l.global, r);
    out.push_back(std::move(l));
  };
  std::vector<uint8_t> guided(LH, 0);
  const auto order = ranked_heads(r);
  for (int64_t k = 0; k < g; ++k) guided[order[k]] = 1;
  add("guided", fmt::format("the {} densest of {} heads (SP-KV density, tau {})", g, LH, r.tau), guided);

  const int64_t m = std::max<int64_t>(1, g / Hkv);  // whole layers within this budget (at least one)
  std::vector<int64_t> layers(L);
  std::iota(layers.begin(), layers.end(), 0);
  auto layer_kept = [&](int64_t il) { return std::accumulate(r.kept.begin() + il * Hkv, r.kept.begin() + (il + 1) * Hkv, int64_t(0)); };
  std::stable_sort(layers.begin(), layers.end(), [&](int64_t a, int64_t b) { return layer_kept(a) > layer_kept(b); });
  std::vector<uint8_t> by_layer(LH, 0);
  for (int64_t k = 0; k < std::min(m, L); ++k) std::fill_n(by_layer.begin() + layers[k] * Hkv, Hkv, 1);
  add("guided-layers", fmt::format("per-layer projection: the {} layer(s) holding the most kept keys", std::min(m, L)), by_layer);

  const int64_t p = std::max<int64_t>(2, std::llround(double(L) / double(m)));  // at least one local layer a period
  for (int64_t offset : std::set<int64_t>{0, p - 1}) {
    std::vector<uint8_t> il_flags(LH, 0);
    for (int64_t il = offset; il < L; il += p) std::fill_n(il_flags.begin() + il * Hkv, Hkv, 1);
    add(fmt::format("interleaved-{}", offset),
        fmt::format("{}:1 interleaved layers, the global layer at offset {}", p - 1, offset), il_flags);
  }
  // Fisher-Yates with the standard engine (the same heads everywhere). Draws are distinct while there are
  // head sets left: a seed whose draw repeats an earlier seed's shuffles again (seeds 1 and 2 pick the
  // same 3 of 20 heads).
  std::set<std::vector<uint8_t>> drawn;
  double sets = 1;  // C(LH, g), capped: only compared with n_random
  for (int64_t k = 0; k < g && sets < 1e9; ++k) sets = sets * double(LH - k) / double(k + 1);
  for (int seed = 1; seed <= n_random; ++seed) {
    std::mt19937_64 rng{uint64_t(seed)};
    std::vector<uint8_t> flags;
    do {
      std::vector<int64_t> heads(LH);
      std::iota(heads.begin(), heads.end(), 0);
      for (int64_t i = LH - 1; i > 0; --i) std::swap(heads[i], heads[int64_t(rng() % uint64_t(i + 1))]);
      flags.assign(LH, 0);
      for (int64_t k = 0; k < g; ++k) flags[heads[k]] = 1;
    } while (drawn.count(flags) && double(drawn.size()) < sets);
    drawn.insert(flags);
    add(fmt::format("random-{}", seed), fmt::format("{} heads drawn uniformly, seed {}", g, seed), flags);
  }
  return out;
}

std::vector<uint8_t> layer_flags(const Layout& l) {
  std::vector<uint8_t> out(l.n_layers);
  for (int64_t il = 0; il < l.n_layers; ++il) {
    const int64_t n = std::accumulate(l.global.begin() + il * l.n_kv_heads, l.global.begin() + (il + 1) * l.n_kv_heads, int64_t(0));
    out[il] = 2 * n >= l.n_kv_heads;
  }
  return out;
}

namespace {
nlohmann::json number_or_null(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); }
}  // namespace

std::string layout_json(const Layout& l) {
  using nlohmann::json;
  json rows = json::array();
  for (int64_t il = 0; il < l.n_layers; ++il)
    rows.push_back(std::vector<int>(l.global.begin() + il * l.n_kv_heads, l.global.begin() + (il + 1) * l.n_kv_heads));
  const auto lf = layer_flags(l);
  json j = {{"format", "spkv-layout"},
            {"version", 1},
            {"name", l.name},
            {"method", l.method},
            {"n_layers", l.n_layers},
            {"n_kv_heads", l.n_kv_heads},
            {"window", l.window},
            {"global", rows},
            {"n_global", l.n_global()},
            {"global_layers", std::vector<int>(lf.begin(), lf.end())},
            {"coverage", number_or_null(l.coverage)},
            {"kv_ratio", number_or_null(l.kv_ratio)},
            {"provenance", {{"logs", l.logs}, {"model_path", l.model_path}, {"checkpoint_sha256", l.checkpoint_sha256},
                            {"model_type", l.model_type}, {"tau", l.tau}, {"created", l.created}, {"tool", l.tool}}}};
  return json_text(j);
}

namespace {
nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw FileError(path, "cannot open the file");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw FileError(path, std::string("not JSON: ") + e.what());
  }
}
}  // namespace

Layout read_layout(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  auto need = [&](const char* key) -> const nlohmann::json& {
    if (!j.contains(key)) throw FileError(path, std::string("the field '") + key + "' is missing");
    return j[key];
  };
  auto integer = [&](const char* key, int64_t min) {
    const auto& v = need(key);
    if (!v.is_number_integer() || v.get<int64_t>() < min)
      throw FileError(path, fmt::format("'{}' must be an integer of at least {}, got {}", key, min, v.dump()));
    return v.get<int64_t>();
  };
  if (!j.is_object() || need("format") != "spkv-layout")
    throw FileError(path, "not an spkv layout (expected \"format\": \"spkv-layout\")");
  if (integer("version", 1) > 1) throw FileError(path, "layout version " + j["version"].dump() + " is newer than this build reads (1)");
  Layout l;
  l.n_layers = integer("n_layers", 1), l.n_kv_heads = integer("n_kv_heads", 1), l.window = integer("window", 1);
  l.name = j.value("name", ""), l.method = j.value("method", "");
  const auto& rows = need("global");
  if (!rows.is_array() || int64_t(rows.size()) != l.n_layers)
    throw FileError(path, fmt::format("'global' must be {} rows (n_layers), one per layer", l.n_layers));
  for (int64_t il = 0; il < l.n_layers; ++il) {
    const auto& row = rows[il];
    if (!row.is_array() || int64_t(row.size()) != l.n_kv_heads)
      throw FileError(path, fmt::format("'global'[{}] must hold {} flags (n_kv_heads)", il, l.n_kv_heads));
    for (const auto& v : row) {
      if (!v.is_number_integer() || (v != 0 && v != 1))
        throw FileError(path, fmt::format("'global'[{}] holds {}: flags are 0 (local) or 1 (global)", il, v.dump()));
      l.global.push_back(uint8_t(v.get<int>()));
    }
  }
  auto num = [&](const char* key) { return j.contains(key) && j[key].is_number() ? j[key].get<double>() : std::nan(""); };
  l.coverage = num("coverage"), l.kv_ratio = num("kv_ratio");
  if (j.contains("provenance") && j["provenance"].is_object()) {
    const auto& p = j["provenance"];
    l.logs = p.value("logs", std::vector<std::string>{});
    l.model_path = p.value("model_path", ""), l.checkpoint_sha256 = p.value("checkpoint_sha256", "");
    l.model_type = p.value("model_type", ""), l.created = p.value("created", ""), l.tool = p.value("tool", "");
    l.tau = p.value("tau", 0.0);
  }
  return l;
}

std::string hf_config_fragment(const Layout& l, const std::string& model_type, std::vector<std::string>& warnings) {
  using nlohmann::json;
  const auto lf = layer_flags(l);
  const int64_t L = l.n_layers;
  json types = json::array();
  for (auto f : lf) types.push_back(f ? "full_attention" : "sliding_attention");
  json j = {{"num_hidden_layers", L}, {"layer_types", types}, {"sliding_window", l.window}};
  if (!l.layer_uniform()) {
    int64_t changed = 0;
    for (int64_t i = 0; i < L * l.n_kv_heads; ++i) changed += l.global[i] != lf[i / l.n_kv_heads];
    warnings.push_back(fmt::format("the layout is per head; layer_types holds its per-layer projection (a layer is full "
                                   "attention when at least half its heads are global), which changes {} of {} heads: "
                                   "use the TSV for frameworks that take per-head layouts",
                                   changed, L * l.n_kv_heads));
  }
  static const std::set<std::string> qwen{"qwen2", "qwen3", "qwen2_moe", "qwen3_moe"};
  static const std::set<std::string> gemma{"gemma3", "gemma3_text", "cohere2"};
  static const std::set<std::string> reads{"qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma2", "gemma3", "gemma3_text",
                                           "cohere2", "gpt_oss", "smollm3", "exaone4"};
  if (qwen.count(model_type)) {
    // Releases before layer_types make layers >= max_window_layers sliding: right only for a full prefix.
    int64_t prefix = 0;
    while (prefix < L && lf[prefix]) ++prefix;
    bool suffix_sliding = true;
    for (int64_t il = prefix; il < L; ++il) suffix_sliding = suffix_sliding && !lf[il];
    j["use_sliding_window"] = true, j["max_window_layers"] = prefix;
    if (!suffix_sliding)
      warnings.push_back(fmt::format("{}: max_window_layers ({}) can only say 'the first N layers are full'; "
                                     "transformers releases that predate layer_types will not follow this list",
                                     model_type, prefix));
  } else if (gemma.count(model_type)) {
    // sliding_window_pattern N: layer i is full attention iff (i + 1) % N == 0. Written only if it agrees.
    for (int64_t n = 1; n <= L; ++n) {
      bool agrees = true;
      for (int64_t il = 0; il < L; ++il) agrees = agrees && (lf[il] != 0) == ((il + 1) % n == 0);
      if (agrees) {
        j["sliding_window_pattern"] = n;
        break;
      }
    }
    if (!j.contains("sliding_window_pattern"))
      warnings.push_back(model_type + ": no sliding_window_pattern matches this list, so none is written (readers "
                                      "of the legacy pattern alone will not follow layer_types)");
  }
  if (!reads.count(model_type))
    warnings.push_back("model_type '" + (model_type.empty() ? std::string("(unknown)") : model_type) +
                       "' is not known to read layer_types (Llama and Mistral apply one attention type to every "
                       "layer): this fragment will not change that model in Hugging Face transformers");
  return json_text(j);
}

std::vector<uint8_t> read_hf_layer_types(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  if (!j.is_object() || !j.contains("layer_types") || !j["layer_types"].is_array())
    throw FileError(path, "no 'layer_types' list");
  std::vector<uint8_t> out;
  for (const auto& t : j["layer_types"]) {
    if (t == "full_attention") out.push_back(1);
    else if (t == "sliding_attention") out.push_back(0);
    else throw FileError(path, "'layer_types' holds " + t.dump() + ": expected \"full_attention\" or \"sliding_attention\"");
  }
  if (j.contains("num_hidden_layers") && j["num_hidden_layers"] != int64_t(out.size()))
    throw FileError(path, fmt::format("'layer_types' has {} entries but num_hidden_layers is {}", out.size(),
                                      j["num_hidden_layers"].dump()));
  return out;
}

std::string duo_attention_tsv(const Layout& l) {
  std::string s;
  for (int64_t il = 0; il < l.n_layers; ++il)
    for (int64_t h = 0; h < l.n_kv_heads; ++h)
      s += fmt::format("{}{}", int(l.global[il * l.n_kv_heads + h]), h + 1 < l.n_kv_heads ? "\t" : "\n");
  return s;
}

std::vector<uint8_t> read_duo_attention_tsv(const std::string& path, int64_t& n_layers, int64_t& n_kv_heads) {
  std::ifstream in(path);
  if (!in) throw FileError(path, "cannot open the TSV file");
  std::vector<uint8_t> out;
  n_layers = 0, n_kv_heads = 0;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    std::istringstream cells(line);
    std::string cell;
    int64_t cols = 0;
    while (std::getline(cells, cell, '\t')) {
      size_t used = 0;
      double v = -1;
      try {
        v = std::stod(cell, &used);
      } catch (const std::exception&) {
      }
      if (used != cell.size() || !(v >= 0 && v <= 1))
        throw FileError(path, fmt::format("line {}: '{}' is not a head score in [0, 1]", n, cell));
      out.push_back(v >= 0.5);  // DuoAttention's gate values: >= 0.5 reads as a full-attention head
      ++cols;
    }
    if (n_kv_heads && cols != n_kv_heads)
      throw FileError(path, fmt::format("line {}: {} columns, but the first layer has {}", n, cols, n_kv_heads));
    n_kv_heads = cols, ++n_layers;
  }
  if (n_layers == 0) throw FileError(path, "empty: expected one line per layer");
  return out;
}

}  // namespace spkv::analysis
