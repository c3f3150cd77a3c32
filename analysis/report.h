// The analysis of one or more gate logs (`spkv analyze`): density per (layer, head), per layer and overall
// with its spread across documents; compression per document against length with a least-squares fit;
// a counterfactual tau sweep from the logged u; which tokens are kept (tokens.h); eviction baselines at
// matched density and the predictor's calibration when attention statistics were logged (attention.h);
// and, given several logs
// (e.g. of different corpora), how stable each head's density is between them. Memory is bounded by the
// summaries, one document and the vocabulary, not by the token count. Torch-free, Qt-free. Not the layouts (those build on this report).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "analysis/offline_baselines.h"
#include "analysis/stats.h"
#include "analysis/tokens.h"
#include "core/gatelog/reader.h"

namespace spkv::analysis {

struct DocumentCompression {
  std::string id;
  int64_t tokens = 0;
  double compression = 0;  // dense KV entries / SP-KV KV entries at the end of the document
  double spkv_entries = 0; // SP-KV KV entries at the end, over every (layer, head)
};

struct LinearFit {
  double slope = 0, intercept = 0, r2 = 0;  // y = slope * x + intercept, least squares
  int64_t n = 0;
};
LinearFit fit_line(const std::vector<double>& x, const std::vector<double>& y);

// Two logs compared head by head: the density difference (b - a) and the rank correlation of the densities.
struct Stability {
  size_t a = 0, b = 0;        // indices into Report::logs
  std::vector<double> diff;   // (L * Hkv) NaN where either log has nothing eligible
  double mean_abs_diff = 0, max_abs_diff = 0, spearman = 0;
};

struct Report {
  std::vector<std::string> logs;
  int64_t n_layers = 0, n_kv_heads = 0, window = 0, keep_first = 0, documents = 0, tokens = 0;
  double tau = 0;
  std::string gating_mode;
  std::string model_path, checkpoint_sha256, model_type;  // of the first log (model_type from its config)
  // Density = kept / eligible. `mean` of each Summary is the pooled density (documents weighted by their
  // eligible keys); stddev and the bootstrap interval describe the spread across documents.
  std::vector<int64_t> kept, eligible;  // (L, Hkv) totals
  Summary overall;
  std::vector<Summary> per_layer;  // (L)
  std::vector<Summary> per_head;   // (L, Hkv)
  std::vector<DocumentCompression> compression;
  LinearFit compression_fit;  // compression against document length (tokens)
  // Counterfactual thresholds: the density each head would have at tau_grid[i], from the logged u.
  std::vector<double> tau_grid;
  std::vector<std::vector<double>> tau_density;  // (grid, L * Hkv)
  std::vector<double> tau_overall;               // (grid)
  TokenRetention retention;  // which tokens are kept
  bool has_attention = false;  // every log is a dense run with attention statistics (/attention/received_far)
  AttentionReport attention;   // baselines at matched density and calibration, when has_attention
  std::vector<std::vector<double>> log_density;  // (logs, L * Hkv) each log's own per-head density
  std::vector<Stability> stability;              // every pair of logs
};

// Reads the logs (same L, Hkv, W and keep_first; else FileError naming the log that differs) and computes
// the report. tau_grid defaults to 0.05, 0.10, ..., 0.95.
Report analyze_logs(const std::vector<std::string>& paths, std::vector<double> tau_grid = {});

// The summary fields of one log's report from its per-document counts alone, without reading token rows:
// settings, kept and eligible totals, the pooled overall density (mean only) and per-document compression,
// which is what the layout functions read. kept and eligible: (D, L * Hkv); kept as logged or at another tau.
Report summary_report(const LogInfo& info, const std::vector<int64_t>& token_offsets, const std::vector<std::string>& ids,
                      const std::vector<int64_t>& kept, const std::vector<int64_t>& eligible);

std::string report_json(const Report& r);      // the whole report, JSON
std::string report_markdown(const Report& r);  // tables for people

}  // namespace spkv::analysis
