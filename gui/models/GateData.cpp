// Gate-log data for spkv-studio: summaries at open, u histograms and document rows read chunk by chunk
// (each chunk under the HDF5 lock, so other jobs interleave and a cancel takes effect within a chunk).
#include "gui/models/GateData.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

namespace spkv::gui {
namespace {
constexpr int64_t kChunkTokens = 16384;

void check(const Cancel& c) {
  if (c.load()) throw Cancelled{};
}
uint16_t clampCode(uint16_t h) { return h & 0x8000 ? 0 : std::min<uint16_t>(h, kHalfOne); }  // negative -> 0

// A reader whose construction, every use and destruction (also on a cancel) hold the HDF5 lock.
struct LockedReader {
  explicit LockedReader(const std::string& path) {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    r = std::make_unique<GateLogReader>(path);
  }
  ~LockedReader() {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    r.reset();
  }
  template <class F>
  auto operator()(F f) {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    return f(*r);
  }
  std::unique_ptr<GateLogReader> r;
};
}  // namespace

float halfToFloat(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp == 0) return (sign ? -1.f : 1.f) * std::ldexp(float(man), -24);  // zero and subnormals
  uint32_t bits = sign | (exp == 31 ? 0x7f800000u | (man << 13) : ((exp + 112) << 23) | (man << 13));
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t tauCode(double tau) {
  if (tau <= 0) return 0;
  int lo = 0, hi = kHalfOne + 1;  // the first code in [0, kHalfOne] whose value >= tau; kHalfOne + 1 if none
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (double(halfToFloat(uint16_t(mid))) >= tau) hi = mid;
    else lo = mid + 1;
  }
  return uint16_t(lo);
}

std::vector<int64_t> Corpus::keptTotal(const KeptRule& rule) const {
  if (rule.logged) return logged_kept_total;
  const int64_t LH = this->LH();
  std::vector<int64_t> out(LH, 0);
  for (int64_t i = 0; i < LH; ++i)
    for (int c = rule.code; c <= kHalfOne; ++c) out[i] += hist[size_t(i * (kHalfOne + 1) + c)];
  return out;
}

Corpus openCorpus(const std::string& path) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  GateLogReader r(path);
  Corpus c;
  c.info = r.info(), c.offsets = r.token_offsets(), c.ids = r.document_ids(), c.kept = r.kept(), c.eligible = r.eligible();
  c.eligible_total.assign(size_t(c.LH()), 0), c.logged_kept_total.assign(size_t(c.LH()), 0);
  for (int64_t d = 0; d < c.D(); ++d) {
    for (int64_t i = 0; i < c.LH(); ++i) {
      c.eligible_total[size_t(i)] += c.eligible[size_t(d * c.LH() + i)];
      c.logged_kept_total[size_t(i)] += c.kept[size_t(d * c.LH() + i)];
    }
    c.fixed_entries += spkv_cache_entries(c.tokens(d), c.info.window, c.info.keep_first, c.LH(), 0);
  }
  const auto cfg = nlohmann::json::parse(c.info.model_config, nullptr, false);
  if (cfg.is_object()) {
    const auto num = [&](const char* k) { return cfg.contains(k) && cfg[k].is_number_integer() ? cfg[k].get<int64_t>() : 0; };
    c.head_dim = num("head_dim");
    const int64_t dim = num("dim") ? num("dim") : num("hidden_size"), heads = num("n_heads") ? num("n_heads") : num("num_attention_heads");
    if (!c.head_dim && dim && heads) c.head_dim = dim / heads;
  }
  return c;
}

CorpusStats corpusStats(const Corpus& c, std::vector<int64_t> kept) {
  const int64_t D = c.D(), LH = c.LH();
  CorpusStats s;
  s.keptTotal.assign(size_t(LH), 0), s.lo.resize(size_t(LH)), s.hi.resize(size_t(LH));
  std::vector<double> xs;
  for (int64_t i = 0; i < LH; ++i) {
    xs.clear();
    for (int64_t d = 0; d < D; ++d) {
      const size_t k = size_t(d * LH + i);
      s.keptTotal[size_t(i)] += kept[k];
      if (c.eligible[k] > 0) xs.push_back(double(kept[k]) / double(c.eligible[k]));
    }
    std::sort(xs.begin(), xs.end());
    auto at = [&](double q) { return xs.empty() ? std::nan("") : xs[size_t(std::lround(q * double(xs.size() - 1)))]; };
    s.lo[size_t(i)] = at(0.05), s.hi[size_t(i)] = at(0.95);
  }
  for (int64_t d = 0; d < D; ++d) {
    int64_t k = 0, e = 0;
    for (int64_t i = 0; i < LH; ++i) k += kept[size_t(d * LH + i)], e += c.eligible[size_t(d * LH + i)];
    s.docDensity.push_back(e > 0 ? double(k) / double(e) : std::nan(""));
  }
  s.report = analysis::summary_report(c.info, c.offsets, c.ids, kept, c.eligible);
  s.kept = std::move(kept);
  return s;
}

// Calls f(d, u) for the eligible rows (keep_first <= s < T - W) of every document, in chunks: u holds the
// (rows, L, Hkv) float16 codes, negative ones as 0. Checks the cancel flag and reports progress per chunk.
template <class F>
void forEachEligibleChunk(const Corpus& c, Cancel& cancel, const Progress& progress, F f) {
  LockedReader reader(c.info.path);
  for (int64_t d = 0; d < c.D(); ++d) {
    const EligibleKeys elig = eligible_keys(c.tokens(d), c.info.window, c.info.keep_first);
    const int64_t b = c.offsets[d] + elig.begin, e = c.offsets[d] + elig.end;
    for (int64_t s = b; s < e; s += kChunkTokens) {
      check(cancel);
      auto u = reader([&](auto& r) { return r.u_bits(s, std::min(e, s + kChunkTokens)); });
      for (auto& h : u) h = clampCode(h);
      f(d, u);
      progress(double(std::min(e, s + kChunkTokens)) / double(std::max<int64_t>(1, c.info.n_tokens)));
    }
  }
}

std::vector<uint32_t> scanHistograms(const Corpus& c, Cancel& cancel, const Progress& progress) {
  const size_t LH = size_t(c.LH());
  std::vector<uint32_t> hist(LH * (kHalfOne + 1), 0);
  forEachEligibleChunk(c, cancel, progress, [&](int64_t, const std::vector<uint16_t>& u) {
    for (size_t k = 0; k < u.size(); ++k) ++hist[(k % LH) * (kHalfOne + 1) + u[k]];
  });
  return hist;
}

std::vector<int64_t> keptPerDocument(const Corpus& c, uint16_t code, Cancel& cancel, const Progress& progress) {
  const size_t LH = size_t(c.LH());
  std::vector<int64_t> out(size_t(c.D()) * LH, 0);
  forEachEligibleChunk(c, cancel, progress, [&](int64_t d, const std::vector<uint16_t>& u) {
    for (size_t k = 0; k < u.size(); ++k) out[size_t(d) * LH + k % LH] += u[k] >= code;
  });
  return out;
}

std::vector<int64_t> Document::keptEligible(const KeptRule& r) const {
  std::vector<int64_t> out(size_t(LH), 0);
  const EligibleKeys elig = eligible_keys(T, window, keep_first);
  for (int64_t t = elig.begin; t < elig.end; ++t)
    for (int64_t i = 0; i < LH; ++i) out[i] += kept(t, i, r);
  return out;
}

std::vector<double> Document::entriesByPosition(const KeptRule& r) const {
  std::vector<double> out(static_cast<size_t>(T));
  int64_t stored = 0;  // kept eligible tokens that have left the window
  for (int64_t t = 0; t < T; ++t) {
    if (t - window >= keep_first)
      for (int64_t i = 0; i < LH; ++i) stored += kept(t - window, i, r);
    out[t] = double(spkv_cache_entries(t + 1, window, keep_first, LH, stored));
  }
  return out;
}

Document loadDocument(const Corpus& c, int64_t d, Cancel& cancel, const Progress& progress) {
  Document doc;
  doc.index = d, doc.begin = c.offsets[d], doc.T = c.tokens(d), doc.LH = c.LH(), doc.id = c.ids[d];
  doc.window = c.info.window, doc.keep_first = c.info.keep_first, doc.full_attention = c.info.gating_mode == "dense";
  LockedReader reader(c.info.path);
  doc.u.reserve(size_t(doc.T * doc.LH)), doc.z.reserve(size_t(doc.T * doc.LH)), doc.text.reserve(size_t(doc.T));
  for (int64_t s = 0; s < doc.T; s += kChunkTokens) {
    check(cancel);
    const int64_t b = doc.begin + s, e = doc.begin + std::min(doc.T, s + kChunkTokens);
    std::vector<uint16_t> u;
    std::vector<uint8_t> z;
    std::vector<std::string> text;
    std::vector<int32_t> ce;
    std::vector<int32_t> ev;
    reader([&](auto& r) {
      u = r.u_bits(b, e), z = r.z(b, e), text = r.token_text(b, e), ce = r.cache_entries(b, e);
      if (c.info.evictions) ev = r.evicted_at(b, e);
    });
    doc.u.insert(doc.u.end(), u.begin(), u.end()), doc.z.insert(doc.z.end(), z.begin(), z.end());
    doc.evicted_at.insert(doc.evicted_at.end(), ev.begin(), ev.end());
    for (auto& t : text) doc.text.push_back(std::move(t));
    doc.cache_entries.insert(doc.cache_entries.end(), ce.begin(), ce.end());
    progress(double(e - doc.begin) / double(std::max<int64_t>(1, doc.T)));
  }
  for (auto& h : doc.u) h = clampCode(h);
  return doc;
}

std::vector<int64_t> findTokens(const Document& doc, const std::string& query) {
  std::vector<int64_t> out;
  if (query.empty()) return out;
  std::string text;
  std::vector<int64_t> owner;  // (bytes) the token each byte of text belongs to
  for (int64_t t = 0; t < doc.T; ++t) text += doc.text[size_t(t)], owner.resize(text.size(), t);
  for (size_t at = text.find(query); at != std::string::npos; at = text.find(query, at + 1))
    if (out.empty() || out.back() != owner[at]) out.push_back(owner[at]);
  return out;
}

Lod buildLod(const Document& doc, const KeptRule& rule, Cancel& cancel) {
  Lod lod;
  lod.rule = rule;
  const int64_t LH = doc.LH;
  // Level 0 from the tokens (sums in float), every further level from the one below.
  std::vector<float> su, sk;  // (n, LH) sums of the current level
  std::vector<int64_t> count; // (n) tokens in each block
  int64_t block = 4, n = (doc.T + block - 1) / block;
  su.assign(size_t(n * LH), 0), sk.assign(size_t(n * LH), 0), count.assign(size_t(n), 0);
  for (int64_t t = 0; t < doc.T; ++t) {
    if (t % 65536 == 0) check(cancel);
    const int64_t b = t / block;
    ++count[b];
    for (int64_t i = 0; i < LH; ++i) {
      su[b * LH + i] += halfToFloat(doc.u[t * LH + i]);
      sk[b * LH + i] += doc.kept(t, i, rule);
    }
  }
  while (n >= 1) {
    check(cancel);
    LodLevel lv;
    lv.block = block, lv.n = n, lv.u.resize(size_t(n * LH)), lv.kept.resize(size_t(n * LH));
    for (int64_t b = 0; b < n; ++b)
      for (int64_t i = 0; i < LH; ++i) {
        lv.u[b * LH + i] = uint8_t(std::lround(255.0 * su[b * LH + i] / double(count[b])));
        lv.kept[b * LH + i] = uint8_t(std::lround(255.0 * sk[b * LH + i] / double(count[b])));
      }
    lod.levels.push_back(std::move(lv));
    if (n == 1) break;
    const int64_t m = (n + 1) / 2;
    for (int64_t b = 0; b < m; ++b) {
      const int64_t a = 2 * b, c = 2 * b + 1;
      for (int64_t i = 0; i < LH; ++i) {
        su[b * LH + i] = su[a * LH + i] + (c < n ? su[c * LH + i] : 0.f);
        sk[b * LH + i] = sk[a * LH + i] + (c < n ? sk[c * LH + i] : 0.f);
      }
      count[b] = count[a] + (c < n ? count[c] : 0);
    }
    n = m, block *= 2;
    su.resize(size_t(n * LH)), sk.resize(size_t(n * LH)), count.resize(size_t(n));
  }
  return lod;
}

void lodCell(const Document& doc, const Lod& lod, int64_t t0, int64_t t1, int64_t i, double& u, double& kept) {
  t0 = std::max<int64_t>(0, t0), t1 = std::min(doc.T, t1);
  const int64_t span = t1 - t0;
  u = 0, kept = 0;
  if (span <= 0) return;
  const LodLevel* lv = nullptr;
  for (const auto& l : lod.levels)
    if (l.block * 2 <= span) lv = &l;
  if (!lv) {  // raw tokens
    for (int64_t t = t0; t < t1; ++t) u += halfToFloat(doc.u[t * doc.LH + i]), kept += doc.kept(t, i, lod.rule);
    u /= double(span), kept /= double(span);
    return;
  }
  // Blocks overlapping [t0, t1), each weighted by its overlap (a block counts as uniform inside).
  double w = 0;
  for (int64_t b = t0 / lv->block; b * lv->block < t1; ++b) {
    const int64_t bs = b * lv->block, be = std::min(doc.T, bs + lv->block);
    const double o = double(std::min(be, t1) - std::max(bs, t0));
    u += o * lv->u[b * doc.LH + i], kept += o * lv->kept[b * doc.LH + i], w += o;
  }
  u /= 255.0 * w, kept /= 255.0 * w;
}

}  // namespace spkv::gui
