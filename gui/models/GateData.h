// What spkv-studio holds of a gate log, and the computations that fill it off the GUI thread: the corpus
// (settings, per-document summaries, per-head histograms of u for counterfactual tau), one document's
// token rows, and its level-of-detail pyramid. Plain C++ (no Qt, no torch): tested without a window.
// HDF5 is not thread-safe in Debian's build, so every read holds hdf5_mutex() (core/gatelog/lock.h), one chunk at a time.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "analysis/report.h"
#include "core/gatelog/lock.h"
#include "core/gatelog/reader.h"
#include "core/gatelog/rule.h"

namespace spkv::gui {

using Cancel = std::atomic<bool>;
using Progress = std::function<void(double)>;  // fraction done, in [0, 1]
struct Cancelled {};                            // thrown by a job that saw its Cancel flag set

// float16 codes of non-negative values are ordered like their values: u >= tau iff code >= tauCode(tau).
constexpr int kHalfOne = 0x3C00;  // the code of 1.0; u in [0, 1] has codes 0 .. kHalfOne
float halfToFloat(uint16_t code);
uint16_t tauCode(double tau);    // the smallest code whose value is >= tau (kHalfOne + 1 when tau > 1)

// Which keys count as kept: the logged decisions z, or u re-thresholded at a counterfactual tau.
struct KeptRule {
  bool logged = true;
  uint16_t code = 0;  // tauCode(tau) when !logged
  int64_t keep_first = 0;
};

struct Corpus {
  LogInfo info;
  std::vector<int64_t> offsets;          // (D + 1) token offsets
  std::vector<std::string> ids;          // (D)
  std::vector<int64_t> kept, eligible;   // (D, LH) as logged
  std::vector<int64_t> eligible_total;   // (LH) eligible summed over documents (tau does not change it)
  std::vector<int64_t> logged_kept_total;// (LH) kept summed over documents, as logged
  // KV entries at the end of every document, summed over documents and heads, that any rule keeps: the
  // windows and the keep_first tokens. Add the kept eligible keys for a rule's total.
  double fixed_entries = 0;
  int64_t head_dim = 0;                  // from the model config; 0 when it does not say
  // Per head, how many eligible keys have each u code (filled by scanHistograms; empty before).
  std::vector<uint32_t> hist;            // (LH, kHalfOne + 1)

  int64_t D() const { return int64_t(ids.size()); }
  int64_t LH() const { return info.n_layers * info.n_kv_heads; }
  int64_t tokens(int64_t d) const { return offsets[d + 1] - offsets[d]; }
  std::vector<int64_t> keptTotal(const KeptRule& rule) const;  // (LH) over documents; rule.logged or hist
  double denseEntries() const { return double(info.n_tokens) * double(LH()); }  // full attention's
  double kvBytesPerEntry() const { return 2.0 * double(head_dim) * 2.0; }  // K and V rows in 16-bit
};

Corpus openCorpus(const std::string& path);                      // the summaries only: fast

// The corpus under one set of decisions (logged, or a counterfactual tau), aggregated off the GUI thread for
// the heatmap, the document list and the layout designer.
struct CorpusStats {
  std::vector<int64_t> kept;         // (D, LH) kept eligible keys
  std::vector<int64_t> keptTotal;   // (LH)
  std::vector<double> lo, hi;        // (LH) 5th and 95th percentile of the per-document density
  std::vector<double> docDensity;   // (D) over every head
  analysis::Report report;           // analysis::summary_report of these counts (compression per document, ...)
};
CorpusStats corpusStats(const Corpus& c, std::vector<int64_t> kept);
std::vector<uint32_t> scanHistograms(const Corpus& c, Cancel& cancel, const Progress& progress);  // Corpus::hist
// Kept eligible keys of every document at a counterfactual tau: (D, LH).
std::vector<int64_t> keptPerDocument(const Corpus& c, uint16_t code, Cancel& cancel, const Progress& progress);

struct Document {
  int64_t index = -1, begin = 0, T = 0, LH = 0, window = 0, keep_first = 0;
  std::string id;
  std::vector<uint16_t> u;              // (T, LH) float16 codes
  std::vector<uint8_t> z;               // (T, LH) logged decisions
  std::vector<std::string> text;        // (T)
  std::vector<int32_t> cache_entries;   // (T) as logged
  std::vector<int32_t> evicted_at;      // (T, LH) a policy log's evictions (docs/hdf5-schema.md); else empty
  bool full_attention = false;          // a dense log: every earlier key was in the cache
  bool kept(int64_t t, int64_t i, const KeptRule& r) const {
    const size_t k = size_t(t * LH + i);
    return r.logged ? z[k] != 0 : (t < keep_first || u[k] >= r.code);
  }
  // Whether head i's cache held key s when query t attended: a policy log's evictions; else the window, or
  // the key's decision under the rule; every earlier key under full attention.
  bool present(int64_t t, int64_t s, int64_t i, const KeptRule& r) const {
    if (s > t) return false;
    if (!evicted_at.empty()) {
      const int32_t e = evicted_at[size_t(s * LH + i)];
      return e == -1 || e > t;
    }
    return full_attention || t - s < window || kept(s, i, r);
  }
  bool eligible(int64_t t) const { return t >= keep_first && t < T - window; }
  std::vector<int64_t> keptEligible(const KeptRule& r) const;  // (LH)
  std::vector<double> entriesByPosition(const KeptRule& r) const;  // (T) cache rows after each token, all heads
};
Document loadDocument(const Corpus& c, int64_t d, Cancel& cancel, const Progress& progress);
// Tokens at which an occurrence of `query` starts in the document's text (token texts concatenated), in order.
std::vector<int64_t> findTokens(const Document& doc, const std::string& query);

// Level-of-detail pyramid: level k holds blocks of 4 * 2^k tokens, each (layer, head) cell the mean u and the
// kept fraction, both scaled to 0..255. Raw tokens serve spans shorter than 4.
struct LodLevel {
  int64_t block = 0, n = 0;
  std::vector<uint8_t> u, kept;  // (n, LH)
};
struct Lod {
  KeptRule rule;
  std::vector<LodLevel> levels;
};
Lod buildLod(const Document& doc, const KeptRule& rule, Cancel& cancel);
// Mean u and kept fraction of head i over tokens [t0, t1) (t1 > t0), from the coarsest level whose blocks fit
// the span, so the cost does not grow with the span. Exact on raw tokens; else exact to block boundaries.
void lodCell(const Document& doc, const Lod& lod, int64_t t0, int64_t t1, int64_t i, double& u, double& kept);

}  // namespace spkv::gui
