// `spkv layout derive | eval | export`: hybrid local-global layouts from gate logs (analysis/layout.h),
// their evaluation by running the model with the layout imposed on its cache, and their export. Declared
// here so that spkv.cpp only parses flags.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace spkv {
namespace dist {
class Group;
}

struct LayoutDeriveOptions {
  std::vector<std::string> logs;
  std::string budget = "density";  // analysis::parse_budget's forms
  std::string out_dir;             // one <name>.json per layout
  int random = 3;                  // random-head layouts (seeds 1..random)
  std::string tool;                // "spkv VERSION (COMMIT)", recorded in each layout
};
void cmd_layout_derive(const LayoutDeriveOptions& o);

struct LayoutEvalOptions {
  std::string model, tokenizer, json, markdown;
  std::vector<std::string> layouts;  // layout files (our JSON)
  std::vector<std::string> inputs;   // held-out corpus
  std::string separator = "<|endoftext|>";
  int64_t skip_docs = 0, max_docs = 0, chunk = 256;  // documents skip_docs .. skip_docs + max_docs - 1
};
// Full attention, dynamic SP-KV (when the model has gates) and every layout over the same documents:
// NLL with its spread across documents, the paired NLL change against full attention, and KV bytes.
// group: the ranks of a launch share the documents (docs/distributed.md); rank 0 reports.
void cmd_layout_eval(const LayoutEvalOptions& o, dist::Group* group = nullptr);

struct LayoutExportOptions {
  std::string layout, out_dir, model_type;  // model_type: default the layout's provenance
};
// Writes OUT/layout.json, OUT/hf_config_fragment.json and OUT/full_attention_heads.tsv; warnings on stderr.
void cmd_layout_export(const LayoutExportOptions& o);

}  // namespace spkv
