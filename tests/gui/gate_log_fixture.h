// A hand-made gate log whose every number is known, for the spkv-studio tests: 3 layers x 4 KV heads,
// W = 8, keep_first = 1, tau 0.5, documents of 40, 64 and 200 tokens. Head i keeps token t (m = t mod 12)
// iff m < i; its u is 0.6 + 0.02 m when kept and 0.1 + 0.03 m when not, so the logged decisions equal u >= 0.5
// and a counterfactual tau of 0.71 keeps exactly 6 <= m < i. The text repeats "the cat sat.\n".
#pragma once
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/gatelog/writer.h"
#include "tests/test_util.h"

namespace spkv::test {

struct KnownLog {
  static constexpr int64_t L = 3, H = 4, LH = L * H, W = 8, keep_first = 1;
  static inline const std::vector<int64_t> lengths{40, 64, 200};
  static bool kept_logged(int64_t t, int64_t i) { return t < keep_first || t % 12 < i; }
  static float u(int64_t t, int64_t i) { return t % 12 < i ? 0.6f + 0.02f * float(t % 12) : 0.1f + 0.03f * float(t % 12); }
  static std::string text(int64_t t) {
    static const char* words[] = {"the", " cat", " sat", ".\n"};
    return t == 0 ? "" : words[(t - 1) % 4];
  }
  static bool eligible(int64_t t, int64_t T) { return t >= keep_first && t < T - W; }
  // Density of head i over every document: kept eligible / eligible, counted from the rule above.
  static double density(int64_t i, bool (*keep)(int64_t, int64_t) = kept_logged) {
    double k = 0, e = 0;
    for (int64_t T : lengths)
      for (int64_t t = 0; t < T; ++t)
        if (eligible(t, T)) e += 1, k += keep(t, i);
    return k / e;
  }
};

// Round-to-nearest float16 bits of a positive normal float (the values above).
inline uint16_t to_half(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  const uint32_t exp = ((b >> 23) & 0xff) - 127 + 15, man = b & 0x7fffff;
  return uint16_t(((exp << 10) | (man >> 13)) + ((man >> 12) & 1));
}
inline float from_half(uint16_t h) {  // positive normal values only
  const uint32_t b = ((uint32_t(h >> 10) - 15 + 127) << 23) | (uint32_t(h & 0x3ff) << 13);
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

inline GateLogHeader known_header() {
  using K = KnownLog;
  GateLogHeader h;
  h.n_layers = K::L, h.n_kv_heads = K::H, h.window = K::W, h.keep_first = K::keep_first, h.tau = 0.5;
  h.gating_mode = "hard", h.checkpoint_sha256 = "0123456789abcdef0123", h.model_path = "models/known";
  h.model_config_json = R"({"model_type": "llama", "dim": 64, "n_heads": 4, "n_layers": 3})";
  h.inputs_json = R"(["corpus/known.txt"])", h.tokenizer_path = "models/known/tokenizer.model";
  return h;
}

// Writes KnownLog's documents (ids, tokens, text, nll) under header h; heads(doc, T) fills each token's
// per-head fields, the kept/eligible counts and the cache sizes. Checked by `spkv check` where it is built.
template <class Heads>
std::string write_known_documents(const std::string& path, const GateLogHeader& h, Heads heads) {
  using K = KnownLog;
  {
    GateLogWriter w(path, h, false, 0);
    for (size_t d = 0; d < K::lengths.size(); ++d) {
      const int64_t T = K::lengths[d];
      LoggedDocument doc;
      doc.id = "known#" + std::to_string(d);
      doc.kept.assign(K::LH, 0), doc.eligible.assign(K::LH, 0);
      for (int64_t t = 0; t < T; ++t)
        doc.tokens.push_back(int32_t(1 + t % 4)), doc.text.push_back(K::text(t)), doc.nll.push_back(t ? 1.0f : std::nanf(""));
      heads(doc, T);
      w.add(std::move(doc));
    }
    w.close();
  }
#ifdef SPKV_BIN
  expect_valid_log(path);
#endif
  return path;
}

inline std::string write_known_log(const std::string& path) {
  using K = KnownLog;
  return write_known_documents(path, known_header(), [](LoggedDocument& doc, int64_t T) {
    int64_t stored = 0;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < K::LH; ++i) {
        doc.u.push_back(to_half(K::u(t, i))), doc.z.push_back(K::kept_logged(t, i));
        if (K::eligible(t, T)) doc.eligible[i] += 1, doc.kept[i] += K::kept_logged(t, i);
      }
      if (t >= K::W)
        for (int64_t i = 0; i < K::LH; ++i) stored += K::kept_logged(t - K::W, i);
      doc.cache_entries.push_back(int32_t(std::min(t + 1, K::W) * K::LH + stored));
    }
  });
}

// A policy log (schema 2) over KnownLog's documents and shape: head i evicts key s when token s + W + 3i
// comes (if the document is that long), so query t saw key s of head i iff s <= t < s + W + 3i.
inline int64_t known_eviction(int64_t s, int64_t i, int64_t T) {
  const int64_t at = s + KnownLog::W + 3 * i;
  return at < T ? at : -1;
}
inline std::string write_policy_log(const std::string& path) {
  using K = KnownLog;
  GateLogHeader h = known_header();
  h.keep_first = 0, h.chunk = 1, h.gating_mode = "policy", h.policy = "h2o", h.budget = "slots:20";
  return write_known_documents(path, h, [](LoggedDocument& doc, int64_t T) {
    std::vector<int64_t> gone(size_t(T), 0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < K::LH; ++i) {
        const int64_t e = known_eviction(t, i, T);
        doc.evicted_at.push_back(int32_t(e)), doc.z.push_back(e == -1), doc.u.push_back(e == -1 ? 0x3C00 : 0);
        if (e >= 0) ++gone[size_t(e)];
        if (t < T - K::W) doc.eligible[i] += 1, doc.kept[i] += e == -1;
      }
    int64_t evicted = 0;
    for (int64_t t = 0; t < T; ++t) doc.cache_entries.push_back(int32_t((t + 1) * K::LH - (evicted += gone[size_t(t)])));
  });
}

}  // namespace spkv::test
