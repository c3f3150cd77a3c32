// Policy scores and budget schedules (cache_policy.h).
#include "core/infer/cache_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "core/base/errors.h"

namespace spkv {

const char* to_string(PolicyKind k) {
  switch (k) {
    case PolicyKind::streaming: return "streaming";
    case PolicyKind::knorm: return "knorm";
    case PolicyKind::random: return "random";
    case PolicyKind::h2o: return "h2o";
    case PolicyKind::tova: return "tova";
    case PolicyKind::snapkv: return "snapkv";
    case PolicyKind::oracle: return "oracle";
  }
  return "?";
}

namespace {
uint64_t splitmix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// "name:value" -> value, or "" without a colon.
std::string argument(const std::string& text, const std::string& name) {
  return text.size() > name.size() + 1 && text[name.size()] == ':' ? text.substr(name.size() + 1) : "";
}

int64_t whole_number(const std::string& s, const std::string& what) {
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v < 0) throw ConfigError(what + ": expected a non-negative whole number, got '" + s + "'");
  return v;
}
}  // namespace

double PolicySpec::entry_score(int64_t il, int64_t hk, int64_t pos, const float* k, int64_t D) const {
  switch (kind) {
    case PolicyKind::streaming: return pos < sinks ? 1e18 + double(pos) : double(pos);
    case PolicyKind::knorm: {
      double s = 0;
      for (int64_t d = 0; d < D; ++d) s += double(k[d]) * double(k[d]);
      return -std::sqrt(s);
    }
    case PolicyKind::random:
      return double(splitmix(seed ^ splitmix(uint64_t(il) << 40 ^ uint64_t(hk) << 20 ^ uint64_t(pos))) >> 11) * 0x1.0p-53;
    default: return 0;  // scored by attention
  }
}

std::string PolicySpec::name() const {
  switch (kind) {
    case PolicyKind::streaming: return "streaming:" + std::to_string(sinks);
    case PolicyKind::random: return "random:" + std::to_string(seed);
    case PolicyKind::snapkv: return "snapkv:" + std::to_string(observe);
    default: return to_string(kind);
  }
}

FutureAttention::FutureAttention(int64_t T_, int64_t L_, int64_t Hkv_) : T(T_), L(L_), Hkv(Hkv_) {
  const double bytes = double(L) * double(Hkv) * double(T) * double(T + 1) * sizeof(float);
  if (bytes > double(int64_t(2) << 30))
    throw ConfigError("oracle: a document of " + std::to_string(T) + " tokens needs " + std::to_string(int64_t(bytes / (1 << 20))) +
                      " MiB of future attention (layers x KV heads x T x T); at most 2048 MiB: use shorter documents");
  from.assign(size_t(L * Hkv * T * (T + 1)), 0.f);
}

void FutureAttention::accumulate() {
  for (int64_t row = 0; row < L * Hkv * T; ++row) {
    float* f = &from[size_t(row * (T + 1))];
    double sum = 0;
    for (int64_t t = T - 1; t >= 0; --t) f[t] = float(sum += f[t]);
    f[T] = 0;
  }
}

PolicySpec parse_policy(const std::string& text) {
  PolicySpec p;
  const std::string where = "--policy " + text;
  if (text == "streaming" || text.rfind("streaming:", 0) == 0) {
    p.kind = PolicyKind::streaming;
    if (text != "streaming") p.sinks = whole_number(argument(text, "streaming"), where);
  } else if (text == "knorm" || text == "h2o" || text == "tova" || text == "oracle") {
    p.kind = text == "knorm" ? PolicyKind::knorm : text == "h2o" ? PolicyKind::h2o : text == "tova" ? PolicyKind::tova : PolicyKind::oracle;
  } else if (text == "snapkv" || text.rfind("snapkv:", 0) == 0) {
    p.kind = PolicyKind::snapkv;
    if (text != "snapkv") p.observe = whole_number(argument(text, "snapkv"), where);
    if (p.observe < 1) throw ConfigError(where + ": the observation window must be at least 1 query");
  } else if (text == "random" || text.rfind("random:", 0) == 0) {
    p.kind = PolicyKind::random;
    if (text != "random") p.seed = uint64_t(whole_number(argument(text, "random"), where));
  } else {
    throw ConfigError(where + ": expected streaming[:SINKS], knorm, random[:SEED], h2o, tova, snapkv[:OBSERVE] or oracle");
  }
  return p;
}

CacheBudget parse_budget(const std::string& text) {
  CacheBudget b;
  const std::string where = "--budget " + text;
  if (text.rfind("slots:", 0) == 0) {
    b.kind = CacheBudget::Kind::slots, b.slots = whole_number(argument(text, "slots"), where);
  } else if (text.rfind("density:", 0) == 0) {
    b.kind = CacheBudget::Kind::density;
    const std::string v = argument(text, "density");
    char* end = nullptr;
    b.density = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || !(b.density >= 0 && b.density <= 1))
      throw ConfigError(where + ": expected a density in [0, 1], got '" + v + "'");
  } else {
    throw ConfigError(where + ": expected slots:N or density:RHO");
  }
  return b;
}

int64_t CacheBudget::rows(int64_t n, int64_t il, int64_t hk, int64_t W) const {
  const int64_t window = std::min(n, W);
  int64_t r = 0;
  switch (kind) {
    case Kind::slots: r = slots; break;
    case Kind::density: r = n <= W ? n : W + int64_t(std::floor(density * double(n - W))); break;
    case Kind::matched: {
      const int64_t LH = n_layers * n_kv_heads;
      if (n < 1 || (n - 1) * LH >= int64_t(matched.size()))
        throw ConfigError("matched budget: no SP-KV entries for token " + std::to_string(n - 1));
      const int32_t* at = &matched[size_t((n - 1) * LH)];
      if (!uniform) {
        r = at[il * n_kv_heads + hk];
      } else {
        int64_t total = 0;
        for (int64_t i = 0; i < LH; ++i) total += at[i];
        r = total / LH + (il * n_kv_heads + hk < total % LH ? 1 : 0);
      }
      break;
    }
  }
  return std::max(r, window);
}

CacheBudget matched_budget(const uint8_t* keep, int64_t T, int64_t L, int64_t Hkv, int64_t W, bool uniform) {
  CacheBudget b;
  b.kind = CacheBudget::Kind::matched, b.n_layers = L, b.n_kv_heads = Hkv, b.uniform = uniform;
  const int64_t LH = L * Hkv;
  b.matched.assign(size_t(T * LH), 0);
  std::vector<int32_t> left(size_t(LH), 0);  // open gates among the tokens that have left the window
  for (int64_t n = 1; n <= T; ++n) {
    if (n > W)  // token n - 1 - W left the window when token n - 1 came
      for (int64_t i = 0; i < LH; ++i) left[size_t(i)] += keep[(n - 1 - W) * LH + i] ? 1 : 0;
    for (int64_t i = 0; i < LH; ++i) b.matched[size_t((n - 1) * LH + i)] = int32_t(std::min(n, W)) + left[size_t(i)];
  }
  return b;
}

}  // namespace spkv
