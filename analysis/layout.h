// Hybrid local-global layouts (method doc, section 6): which (layer, KV head) keeps full attention (global)
// and which sees only the local window. Derivation from gate-log densities (the guided layout), the
// reference layouts at the same budget (interleaved layers, random heads), the per-layer projection, and
// the three export formats (our JSON, a Hugging Face config fragment, the DuoAttention/kvpress TSV).
// Torch-free, Qt-free. Not the evaluation: that runs the model (tools/layout.cpp through core/infer/engine.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "analysis/report.h"

namespace spkv::analysis {

struct Layout {
  std::string name;             // guided, guided-layers, interleaved-0, random-3, ... (stable: file names, GUI labels)
  std::string method;           // one sentence: how the heads were chosen
  int64_t n_layers = 0, n_kv_heads = 0, window = 0;
  std::vector<uint8_t> global;  // (L, Hkv): 1 = global (every key), 0 = local (the last `window` keys)
  // Measured against the logs it was derived from (NaN when unknown, e.g. a hand-written file):
  double coverage = 0;          // share of the SP-KV-kept keys that fall in the global heads
  double kv_ratio = 0;          // KV entries against full attention, over the logs' documents
  // Provenance: where the densities came from.
  std::vector<std::string> logs;
  std::string model_path, checkpoint_sha256, model_type, created, tool;
  double tau = 0;

  int64_t n_global() const;
  bool layer_uniform() const;   // every layer all global or all local (expressible as layer_types)
};

// A budget of global heads: "N" heads, "F%" or a fraction "0.F" of all heads, "kv:R" the largest layout
// whose KV entries are at most R of full attention, or "density" (as many heads as the SP-KV density).
struct Budget {
  enum class Kind { heads, fraction, kv_ratio, density } kind = Kind::heads;
  double value = 0;
  std::string text;  // as given
};
Budget parse_budget(const std::string& text);  // throws ConfigError naming the text and the accepted forms
// The number of global heads the budget buys for the logs in r. Throws ConfigError when the budget is
// negative or asks for more heads than the model has.
int64_t budget_heads(const Budget& b, const Report& r);

// Coverage and KV ratio of `global` (L * Hkv flags) against the logs in r.
double layout_coverage(const std::vector<uint8_t>& global, const Report& r);
double layout_kv_ratio(const std::vector<uint8_t>& global, const Report& r);
double spkv_kv_ratio(const Report& r);  // the dynamic SP-KV cache over the same documents

// The layouts at a budget of g global heads, all measured against r:
//   guided         the g densest heads (ties: more kept keys, then the lower index);
//   guided-layers  its per-layer projection: the floor(g / Hkv) layers (at least 1) holding the most kept keys;
//   interleaved-K  one global layer in every p = max(2, round(L / m)) layers at offset K, for K = 0 and K = p - 1
//                  (m as above; the paper's 3:1 layers at offsets 0 and 3 when p = 4);
//   random-S       g heads drawn uniformly with seed S = 1..n_random.
std::vector<Layout> derive_layouts(const Report& r, int64_t g, int n_random = 3);

// Our JSON format (docs/layouts.md). read_layout throws FileError naming the file and field.
std::string layout_json(const Layout& l);
Layout read_layout(const std::string& path);

// The per-layer projection used by formats that only know whole layers: a layer is global when at least
// half of its heads are.
std::vector<uint8_t> layer_flags(const Layout& l);  // (L)

// A Hugging Face config fragment for `model_type`: layer_types ("full_attention" / "sliding_attention",
// one per layer, from layer_flags) and sliding_window, with the family's own switches (Qwen2/3:
// use_sliding_window and max_window_layers; Gemma: sliding_window_pattern only when it agrees with the
// list). `warnings` gets a line for each thing a user must know: a model type that ignores layer_types, a
// per-head layout that was projected, a switch that cannot express the list.
std::string hf_config_fragment(const Layout& l, const std::string& model_type, std::vector<std::string>& warnings);
std::vector<uint8_t> read_hf_layer_types(const std::string& path);  // (L) 1 = full_attention

// The layers x KV-heads table DuoAttention (full_attention_heads.tsv) and kvpress read: one line per
// layer, tab-separated, 1 for a global (full attention) head and 0 for a local (streaming) head.
std::string duo_attention_tsv(const Layout& l);
std::vector<uint8_t> read_duo_attention_tsv(const std::string& path, int64_t& n_layers, int64_t& n_kv_heads);

}  // namespace spkv::analysis
