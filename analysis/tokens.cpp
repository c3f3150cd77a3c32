// Token-level retention counts: classes, log2 position bins, and per-token-id counts ranked at the end.
#include "analysis/tokens.h"

#include <algorithm>
#include <cctype>

namespace spkv::analysis {
namespace {
constexpr int kPositionBins = 32;  // [0, 1), [1, 2), [2, 4), ..., [2^30, 2^31)

int position_bin(int64_t p) {
  int b = 0;
  while (b + 1 < kPositionBins && (int64_t(1) << b) <= p) ++b;
  return b;
}

bool is_space(const std::string& t, size_t& i) {  // skips ' ', '\t' and U+2581 (SentencePiece's word start)
  if (t[i] == ' ' || t[i] == '\t') return ++i, true;
  if (t.compare(i, 3, "\xe2\x96\x81") == 0) return i += 3, true;
  return false;
}
}  // namespace

const char* token_class_name(TokenClass c) {
  static const char* names[kTokenClasses] = {"first", "newline", "digits", "punctuation", "other"};
  return names[int(c)];
}

TokenClass token_class(const std::string& text, int64_t position) {
  if (position == 0) return TokenClass::first;
  if (text.find('\n') != std::string::npos) return TokenClass::newline;
  bool digits = true, punct = true, any = false;
  for (size_t i = 0; i < text.size();) {
    if (is_space(text, i)) continue;
    const unsigned char c = static_cast<unsigned char>(text[i++]);
    any = true;
    digits = digits && c >= '0' && c <= '9';
    punct = punct && c < 128 && std::ispunct(c);
  }
  if (any && digits) return TokenClass::digits;
  if (any && punct) return TokenClass::punctuation;
  return TokenClass::other;
}

TokenRetentionCounter::TokenRetentionCounter(int64_t heads)
    : heads_(heads),
      class_kept_(kTokenClasses, std::vector<int64_t>(heads, 0)),
      class_elig_(kTokenClasses, std::vector<int64_t>(heads, 0)),
      pos_kept_(kPositionBins, std::vector<int64_t>(heads, 0)),
      pos_elig_(kPositionBins, std::vector<int64_t>(heads, 0)) {}

void TokenRetentionCounter::add(int64_t first, const std::vector<int32_t>& ids, const std::vector<std::string>& texts,
                                const std::vector<uint8_t>& z) {
  for (size_t t = 0; t < ids.size(); ++t) {
    const int64_t pos = first + int64_t(t);
    const int c = int(token_class(texts[t], pos)), b = position_bin(pos);
    auto& counts = by_id_[ids[t]];
    if (counts.kept.empty()) counts.kept.assign(heads_, 0), counts.eligible.assign(heads_, 0), text_[ids[t]] = texts[t];
    for (int64_t h = 0; h < heads_; ++h) {
      const int64_t k = z[t * heads_ + h] != 0;
      class_kept_[c][h] += k, ++class_elig_[c][h];
      pos_kept_[b][h] += k, ++pos_elig_[b][h];
      counts.kept[h] += k, ++counts.eligible[h];
    }
  }
}

TokenRetention TokenRetentionCounter::finish(int64_t min_count, size_t n) const {
  TokenRetention r;
  r.heads = heads_;
  r.class_kept = class_kept_, r.class_eligible = class_elig_;
  int last = 0;  // drop the empty bins past the longest document
  for (int b = 0; b < kPositionBins; ++b)
    if (std::any_of(pos_elig_[b].begin(), pos_elig_[b].end(), [](int64_t e) { return e > 0; })) last = b;
  for (int b = 0; b <= last; ++b) {
    r.position_edges.push_back(b == 0 ? 0 : int64_t(1) << (b - 1));
    r.position_kept.push_back(pos_kept_[b]), r.position_eligible.push_back(pos_elig_[b]);
  }
  r.position_edges.push_back(int64_t(1) << last);
  // Ranked by keep rate, then by how often the string was seen; ties by text, so the order is stable.
  auto ranked = [&](std::vector<KeptString> all, bool most) {
    std::sort(all.begin(), all.end(), [&](const KeptString& a, const KeptString& b) {
      if (a.rate() != b.rate()) return most ? a.rate() > b.rate() : a.rate() < b.rate();
      if (a.eligible != b.eligible) return a.eligible > b.eligible;
      return a.text < b.text;
    });
    if (all.size() > n) all.resize(n);
    return all;
  };
  for (int64_t h = -1; h < heads_; ++h) {  // -1: all heads pooled
    std::vector<KeptString> all;
    for (const auto& [id, c] : by_id_) {
      KeptString s{text_.at(id), 0, 0};
      for (int64_t i = 0; i < heads_; ++i)
        if (h < 0 || i == h) s.kept += c.kept[i], s.eligible += c.eligible[i];
      if (s.eligible >= min_count * (h < 0 ? heads_ : 1)) all.push_back(s);
    }
    if (h < 0) r.most_kept_all = ranked(all, true), r.least_kept_all = ranked(all, false);
    else r.most_kept.push_back(ranked(all, true)), r.least_kept.push_back(ranked(all, false));
  }
  return r;
}

}  // namespace spkv::analysis
