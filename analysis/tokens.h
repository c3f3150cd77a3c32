// Which tokens the gates keep: retention (kept / eligible out-of-window keys) by token class, by position in
// the document, and the most- and least-kept token strings per (layer, KV head) and over all heads.
// Counts are accumulated one document at a time; memory grows with the vocabulary, not the token count.
// Torch-free, Qt-free. Not the density report itself (report.h), which uses this.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace spkv::analysis {

// Classes, in order of precedence: the document's first token (BOS, or a later piece's context token), a
// token holding a newline, digits (its text, spaces and SentencePiece's '▁' aside, is all ASCII digits),
// punctuation (all ASCII punctuation), and everything else.
enum class TokenClass { first = 0, newline, digits, punctuation, other };
constexpr int kTokenClasses = 5;
const char* token_class_name(TokenClass c);
TokenClass token_class(const std::string& text, int64_t position);

struct KeptString {
  std::string text;  // the token's UTF-8 text
  int64_t kept = 0, eligible = 0;
  double rate() const { return eligible > 0 ? double(kept) / double(eligible) : 0.0; }
};

struct TokenRetention {
  int64_t heads = 0;  // L * Hkv
  std::vector<std::vector<int64_t>> class_kept, class_eligible;  // (classes, L * Hkv)
  std::vector<int64_t> position_edges;                           // bin i holds positions [edges[i], edges[i + 1])
  std::vector<std::vector<int64_t>> position_kept, position_eligible;  // (bins, L * Hkv)
  // Token strings seen at least `min_count` times among the eligible keys, by keep rate:
  std::vector<std::vector<KeptString>> most_kept, least_kept;  // (L * Hkv, up to n)
  std::vector<KeptString> most_kept_all, least_kept_all;       // all heads pooled
};

class TokenRetentionCounter {
 public:
  explicit TokenRetentionCounter(int64_t heads);
  // The eligible keys of one document: positions first .. first + ids.size() - 1, their token ids and texts,
  // and z (n, heads) row-major.
  void add(int64_t first, const std::vector<int32_t>& ids, const std::vector<std::string>& texts,
           const std::vector<uint8_t>& z);
  TokenRetention finish(int64_t min_count = 20, size_t n = 10) const;

 private:
  struct Counts {
    std::vector<int64_t> kept, eligible;  // (heads)
  };
  int64_t heads_;
  std::vector<std::vector<int64_t>> class_kept_, class_elig_, pos_kept_, pos_elig_;
  std::map<int32_t, Counts> by_id_;
  std::map<int32_t, std::string> text_;
};

}  // namespace spkv::analysis
