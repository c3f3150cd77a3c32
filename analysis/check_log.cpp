// The gate-log validator: each invariant of docs/hdf5-schema.md recomputed from the file, one document at
// a time, stopping at the first violation.
#include "analysis/check_log.h"

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "core/base/errors.h"
#include "core/gatelog/reader.h"
#include "core/gatelog/schema.h"
#include "core/gatelog/rule.h"

namespace spkv::analysis {
namespace {

// True when s is well-formed UTF-8 (no overlong forms, no surrogates, at most U+10FFFF).
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = uint8_t(s[i]);
    size_t n = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xE ? 2 : (c >> 3) == 0x1E ? 3 : 9;
    if (n == 9 || i + n >= s.size()) return false;
    uint32_t cp = n == 0 ? c : n == 1 ? c & 0x1F : n == 2 ? c & 0x0F : c & 0x07;
    for (size_t k = 1; k <= n; ++k) {
      const auto b = uint8_t(s[i + k]);
      if ((b >> 6) != 0x2) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n + 1;
  }
  return true;
}

}  // namespace

CheckReport check_gate_log(const std::string& path) {
  GateLogReader r(path);  // shapes, CSR offsets, attribute ranges and kept <= eligible are checked on open
  const LogInfo& info = r.info();
  auto fail = [&](const std::string& what) { throw LogViolation(path, what); };
  CheckReport rep;
  rep.documents = info.n_documents, rep.tokens = info.n_tokens, rep.complete = info.complete;
  const int64_t D = info.n_documents, N = info.n_tokens, L = info.n_layers, H = info.n_kv_heads, LH = L * H;
  const int64_t W = info.window, first = info.keep_first;
  const bool gated = info.gating_mode == "hard", policy = info.gating_mode == "policy";

  // Attributes.
  if (!gated && !policy && info.gating_mode != "dense")
    fail("root attribute 'gating_mode' is '" + info.gating_mode + "', expected 'hard', 'dense' or 'policy'");
  if (policy && (!info.evictions || info.policy.empty()))
    fail("a policy log (gating_mode 'policy') needs the root attribute 'policy' and gates/evicted_at");
  if (!policy && info.evictions) fail("gates/evicted_at is present, but gating_mode is '" + info.gating_mode + "', not 'policy'");
  // The single value of a scalar dataset or attribute.
  auto one = [&](const auto& v, const std::string& name) {
    if (v.size() != 1) fail(name + " must hold one value, holds " + std::to_string(v.size()));
    return v[0];
  };
  const std::string tap = one(r.attribute_strings("/", "tap"), "root attribute 'tap'");
  if (tap != "attn_norm" && tap != "residual") fail("root attribute 'tap' is '" + tap + "', expected 'attn_norm' or 'residual'");
  int64_t vocab = -1;
  try {
    const auto c = nlohmann::json::parse(info.model_config);
    if (c.value("num_hidden_layers", L) != L)
      fail(fmt::format("model_config has num_hidden_layers {} but n_layers is {}", c["num_hidden_layers"].dump(), L));
    const auto kv = c.contains("num_key_value_heads") ? c["num_key_value_heads"] : c.value("num_attention_heads", nlohmann::json(H));
    if (kv != H) fail(fmt::format("model_config has {} KV heads but n_kv_heads is {}", kv.dump(), H));
    if (c.contains("vocab_size") && c["vocab_size"].is_number_integer()) vocab = c["vocab_size"].get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("root attribute 'model_config' is not a JSON object: ") + e.what());
  }
  rep.checked.push_back("attributes (gating_mode, tap, model_config against n_layers and n_kv_heads)");

  // The NeXus chain to the heatmap.
  auto attr_is = [&](const std::string& object, const std::string& name, const std::vector<std::string>& want) {
    const auto got = r.attribute_strings(object, name);
    if (got != want) {
      std::string g;
      for (const auto& x : got) g += (g.empty() ? "'" : ", '") + x + "'";
      fail("attribute '" + name + "' of " + object + " is " + g + ", expected '" + want.at(0) + (want.size() > 1 ? "', ..." : "'"));
    }
  };
  attr_is("/", "NX_class", {"NXroot"}), attr_is("/", "default", {"summary"});
  attr_is("summary", "NX_class", {"NXentry"}), attr_is("summary", "default", {"density"});
  attr_is(schema::kDensityGroup, "NX_class", {"NXdata"}), attr_is(schema::kDensityGroup, "signal", {"density"});
  attr_is(schema::kDensityGroup, "axes", {"layer", "kv_head"});
  rep.checked.push_back("the NeXus default chain root -> summary -> density (signal, axes)");

  // Token text: one CSR over all tokens. Its ends here; that it never decreases, by the reader's token_text
  // on each document's rows (each range includes its end, so every entry is compared with the next).
  const auto text_off = r.whole_int64(schema::kTextOffsets);
  const auto text_len = r.shape(schema::kTextBytes);
  if (text_len.size() != 1) fail("tokens/text_bytes must be one-dimensional");
  if (text_off.front() != 0) fail("tokens/text_offsets must start with 0");
  if (text_off.back() != text_len[0])
    fail(fmt::format("tokens/text_offsets ends at {} but tokens/text_bytes holds {}", text_off.back(), text_len[0]));

  // Per document.
  const bool attention = r.exists(schema::kReceived);
  const auto& off = r.token_offsets();
  std::vector<int64_t> kept_sum(size_t(LH), 0), elig_sum(size_t(LH), 0);
  const double band = std::ldexp(std::max(std::abs(info.tau), 1e-4), -10);  // float16 rounding of u near tau
  for (int64_t d = 0; d < D; ++d) {
    const int64_t b = off[size_t(d)], e = off[size_t(d) + 1], T = e - b;
    const std::string doc = fmt::format("document {} ('{}')", d, r.document_ids()[size_t(d)]);
    if (T < 1) fail(doc + " has no tokens (each starts with BOS or a context token)");
    const auto pos = r.positions(b, e);
    const auto ids = r.token_ids(b, e);
    const auto nll = r.nll(b, e);
    const auto text = r.token_text(b, e);
    const auto u = r.u(b, e);
    const auto z = r.z(b, e);
    const auto entries = r.cache_entries(b, e);
    const auto evicted = policy ? r.evicted_at(b, e) : std::vector<int32_t>();
    std::vector<int64_t> evictions_at(size_t(T), 0);  // policy logs: keys evicted by each token's append
    for (size_t i = 0; i < evicted.size(); ++i) {
      const int64_t s = int64_t(i) / LH, at = evicted[i];
      if (at != -1 && !(at >= s + W && at < T))
        fail(fmt::format("gates/evicted_at[{}, layer {}, kv head {}] is {}, expected -1 or a position in [s + W = {}, T = {}) of {}",
                         b + s, int64_t(i) % LH / H, int64_t(i) % H, at, s + W, T, doc));
      if (at != -1) ++evictions_at[size_t(at)];
    }
    int64_t evicted_so_far = 0;
    std::string concat;
    int64_t closed_far = 0;  // z = 1 summed over (layer, head) and positions s <= t - W
    for (int64_t t = 0; t < T; ++t) {
      auto at = [&] { return fmt::format("token {} ({} position {})", b + t, doc, t); };  // built only to report
      if (pos[size_t(t)] != t) fail(fmt::format("tokens/position[{}] is {}, expected {} (its place in {})", b + t, pos[size_t(t)], t, doc));
      if (ids[size_t(t)] < 0 || (vocab > 0 && ids[size_t(t)] >= vocab))
        fail(fmt::format("tokens/ids[{}] is {}, outside the vocabulary [0, {})", b + t, ids[size_t(t)], vocab));
      const float x = nll[size_t(t)];
      if (t == 0 ? !std::isnan(x) : !(std::isfinite(x) && x >= 0))
        fail(fmt::format("tokens/nll[{}] is {}, expected {} at {}", b + t, x, t == 0 ? "NaN (position 0)" : "a finite value >= 0", at()));
      if (t == 0 && !text[0].empty()) fail(fmt::format("tokens/text of {} is '{}', expected empty (position 0)", at(), text[0]));
      concat += text[size_t(t)];
      for (int64_t k = 0; k < LH; ++k) {
        const size_t i = size_t(t * LH + k);
        const float uv = u[i];
        auto cell = [&] { return fmt::format("[{}, layer {}, kv head {}] ({})", b + t, k / H, k % H, at()); };
        if (!(uv >= 0 && uv <= 1)) fail(fmt::format("gates/u{} is {}, outside [0, 1]", cell(), uv));
        if (z[i] > 1) fail(fmt::format("gates/z{} is {}, expected 0 or 1", cell(), int(z[i])));
        if (policy) {  // z: held to the end of the document; u = z
          if (bool(z[i]) != (evicted[i] == -1) || uv != float(z[i]))
            fail(fmt::format("gates/z{} is {} and u {}, but evicted_at is {} (a policy log: z = u = 1 iff never evicted)",
                             cell(), int(z[i]), uv, evicted[i]));
          continue;
        }
        const bool want = t < first || uv >= info.tau;
        if (bool(z[i]) != want && !(t >= first && std::abs(double(uv) - info.tau) <= band))
          fail(fmt::format("gates/z{} is {} but u = {} and tau = {}{}", cell(), int(z[i]), uv, info.tau,
                           t < first ? fmt::format(" and position < keep_first = {}", first) : ""));
      }
      if (gated && t - W >= first)
        for (int64_t k = 0; k < LH; ++k) closed_far += z[size_t((t - W) * LH + k)];
      if (policy) evicted_so_far += evictions_at[size_t(t)];
      const int64_t want_entries = gated    ? spkv_cache_entries(t + 1, W, first, LH, closed_far)
                                   : policy ? (t + 1) * LH - evicted_so_far
                                            : (t + 1) * LH;
      if (entries[size_t(t)] != want_entries)
        fail(fmt::format("tokens/cache_entries[{}] is {}, expected {} ({} run, {})", b + t, entries[size_t(t)], want_entries,
                         gated    ? "gated: L*Hkv*min(t+1, W) + the kept tokens at positions <= t - W"
                         : policy ? "policy: L*Hkv*(t+1) - the keys evicted by tokens up to t"
                                  : "dense: L*Hkv*(t+1)", at()));
    }
    if (!valid_utf8(concat)) fail("the token texts of " + doc + " do not concatenate to valid UTF-8");
    // Eligible: positions keep_first <= s < T - W; kept: those with z = 1.
    const EligibleKeys elig = eligible_keys(T, W, first);
    const int64_t lo = elig.begin, hi = elig.end, n_elig = elig.count();
    for (int64_t k = 0; k < LH; ++k) {
      int64_t kept = 0;
      for (int64_t s = lo; s < hi; ++s) kept += z[size_t(s * LH + k)];
      const size_t row = size_t(d * LH + k);
      if (r.eligible()[row] != n_elig)
        fail(fmt::format("documents/eligible[{}, layer {}, kv head {}] is {}, expected {} (positions {} <= s < T - W = {})", d,
                         k / H, k % H, r.eligible()[row], n_elig, lo, hi));
      if (r.kept()[row] != kept)
        fail(fmt::format("documents/kept[{}, layer {}, kv head {}] is {}, but {} eligible tokens of {} have z = 1", d, k / H,
                         k % H, r.kept()[row], kept, doc));
      kept_sum[size_t(k)] += kept, elig_sum[size_t(k)] += n_elig;
    }
    if (attention) {  // each query spreads a mass of 1: sums per (layer, head) are the query counts
      const auto recv = r.received(b, e), last = r.received_last(b, e);
      const auto far = info.attention_far ? r.received_far(b, e) : std::vector<float>();
      const int64_t n_last = std::min(T, info.attention_last_queries);
      for (int64_t k = 0; k < LH; ++k) {
        double s_all = 0, s_last = 0;
        for (int64_t t = 0; t < T; ++t) {
          const size_t i = size_t(t * LH + k);
          s_all += recv[i], s_last += last[i];
          if (!(recv[i] >= 0 && last[i] >= 0 && last[i] <= recv[i] * (1 + 1e-5) + 1e-6))
            fail(fmt::format("attention/received_last[{}, layer {}, kv head {}] is {} with received {}: expected 0 <= last <= received",
                             b + t, k / H, k % H, last[i], recv[i]));
          if (!far.empty() && !(far[i] >= 0 && far[i] <= recv[i] * (1 + 1e-5) + 1e-6 && (t < T - W || far[i] == 0)))
            fail(fmt::format("attention/received_far[{}, layer {}, kv head {}] is {} with received {}: expected 0 <= far <= "
                             "received, and 0 for the last W keys", b + t, k / H, k % H, far[i], recv[i]));
        }
        if (std::abs(s_all - double(T)) > 1e-3 * double(T) || std::abs(s_last - double(n_last)) > 1e-3 * double(std::max<int64_t>(n_last, 1)))
          fail(fmt::format("attention of {} at layer {}, kv head {}: received sums to {} (expected {} queries), received_last "
                           "to {} (expected {})", doc, k / H, k % H, s_all, T, s_last, n_last));
      }
    }
  }
  rep.checked.push_back("per token: position, ids in the vocabulary, NLL (NaN at position 0), text (position 0 empty, UTF-8 per document)");
  rep.checked.push_back(policy ? "per token: z = u = 1 iff never evicted; evicted_at -1 or in [s + W, T)"
                               : "per token: z = u >= tau or position < keep_first (u in [0, 1]; float16 rounding at tau allowed)");
  rep.checked.push_back(gated    ? "per token: cache_entries = L*Hkv*min(t+1, W) + kept tokens at positions <= t - W"
                        : policy ? "per token: cache_entries = L*Hkv*(t+1) - keys evicted by tokens up to t (policy run)"
                                 : "per token: cache_entries = L*Hkv*(t+1) (dense run)");
  rep.checked.push_back("per document: eligible = positions keep_first <= s < T - W, kept = their z = 1");
  if (attention) rep.checked.push_back("per document: attention received sums to the query counts; last, far <= received");

  // The summary, from the documents.
  const auto s_kept = r.whole_int64(schema::kSummaryKept), s_elig = r.whole_int64(schema::kSummaryEligible);
  if (s_kept.size() != size_t(LH) || s_elig.size() != size_t(LH)) fail("summary/kept and summary/eligible must be (n_layers, n_kv_heads)");
  const auto dens = r.whole_double(schema::kDensity);
  if (dens.size() != size_t(LH)) fail("summary/density/density must be (n_layers, n_kv_heads)");
  int64_t tk = 0, te = 0;
  for (int64_t k = 0; k < LH; ++k) {
    const size_t i = size_t(k);
    if (s_kept[i] != kept_sum[i] || s_elig[i] != elig_sum[i])
      fail(fmt::format("summary kept/eligible at layer {}, kv head {} are {}/{}, but the documents sum to {}/{}", k / H, k % H,
                       s_kept[i], s_elig[i], kept_sum[i], elig_sum[i]));
    const double want = elig_sum[i] ? double(kept_sum[i]) / double(elig_sum[i]) : std::nan("");
    if (std::isnan(want) ? !std::isnan(dens[i]) : !(std::abs(dens[i] - want) <= 1e-12))
      fail(fmt::format("summary/density/density[{}, {}] is {}, expected kept/eligible = {}", k / H, k % H, dens[i], want));
    tk += kept_sum[i], te += elig_sum[i];
  }
  const double overall = one(r.whole_double(schema::kOverallDensity), schema::kOverallDensity), want_overall = te ? double(tk) / double(te) : std::nan("");
  if (std::isnan(want_overall) ? !std::isnan(overall) : !(std::abs(overall - want_overall) <= 1e-12))
    fail(fmt::format("summary/overall_density is {}, expected {} / {} = {}", overall, tk, te, want_overall));
  const int64_t n_docs = one(r.whole_int64(schema::kNDocuments), schema::kNDocuments);
  const int64_t n_toks = one(r.whole_int64(schema::kNTokens), schema::kNTokens);
  if (n_docs != D || n_toks != N)
    fail(fmt::format("summary/n_documents and n_tokens are {} and {}, expected {} and {}", n_docs, n_toks, D, N));
  auto axis = [&](const char* name, int64_t n) {
    const auto v = r.whole_int64(name);
    for (int64_t k = 0; k < n; ++k)
      if (v.size() != size_t(n) || v[size_t(k)] != k) fail(fmt::format("{} must be 0 .. {}", name, n - 1));
  };
  axis(schema::kDensityLayer, L), axis(schema::kDensityKvHead, H);
  rep.checked.push_back("summary: kept, eligible, density, overall_density, n_documents, n_tokens, axes");
  return rep;
}

}  // namespace spkv::analysis
