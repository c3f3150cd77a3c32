// Policy scores and budget schedules (cache_policy.h).
#include "core/infer/cache_policy.h"

#include <cmath>
#include <cstdlib>

#include "core/base/errors.h"

namespace spkv {

const char* to_string(PolicyKind k) {
  switch (k) {
    case PolicyKind::streaming: return "streaming";
    case PolicyKind::knorm: return "knorm";
    case PolicyKind::random: return "random";
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
  }
  return 0;
}

PolicySpec parse_policy(const std::string& text) {
  PolicySpec p;
  const std::string where = "--policy " + text;
  if (text == "streaming" || text.rfind("streaming:", 0) == 0) {
    p.kind = PolicyKind::streaming;
    if (text != "streaming") p.sinks = whole_number(argument(text, "streaming"), where);
  } else if (text == "knorm") {
    p.kind = PolicyKind::knorm;
  } else if (text == "random" || text.rfind("random:", 0) == 0) {
    p.kind = PolicyKind::random;
    if (text != "random") p.seed = uint64_t(whole_number(argument(text, "random"), where));
  } else {
    throw ConfigError(where + ": expected streaming[:SINKS], knorm or random[:SEED]");
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

}  // namespace spkv
