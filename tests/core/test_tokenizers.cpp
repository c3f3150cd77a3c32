// Tokenizers: hand-derived encodings for a byte-level BPE tokenizer.json (merge ranks, added tokens,
// GPT-2 and Llama-3 pre-tokenizer regexes), a SentencePiece model trained here, and
// decode(encode(x)) == x for arbitrary bytes (emoji, CJK, invalid UTF-8) in every format.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>

#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/text/tokenizer.h"
#include "tests/test_util.h"

namespace spkv {
namespace {
using json = nlohmann::json;

// GPT-2's bytes_to_unicode, written out independently of the library.
std::string byte_char(int b) {
  int n = 0;
  for (int x = 0; x < b; ++x)
    if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174)) ++n;
  const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
  const int cp = printable ? b : 256 + n;
  std::string s;
  if (cp < 0x80) s += char(cp);
  else s += char(0xC0 | (cp >> 6)), s += char(0x80 | (cp & 0x3F));
  return s;
}

const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Vocab: byte b has id b; merges add ids 256.. in rank order; added tokens 265..267.
std::string make_tokenizer_json(bool llama3) {
  json vocab;
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  const std::string G = byte_char(' ');  // "Ġ"
  std::vector<std::pair<std::string, std::string>> merges = {
      {G, "t"}, {"h", "e"}, {G + "t", "he"}, {"1", "2"}, {"3", "4"}, {"m", G}};
  int id = 256;
  json jm = json::array();
  for (auto& [a, b] : merges) vocab[a + b] = id++, jm.push_back(a + " " + b);
  json added = json::array();
  for (auto [c, i] : {std::pair{"<|begin_of_text|>", 265}, {"<|end_of_text|>", 266}, {"<|eot_id|>", 267}})
    added.push_back({{"id", i}, {"content", c}, {"special", true}});
  json pre = llama3 ? json{{"type", "Sequence"},
                           {"pretokenizers",
                            {{{"type", "Split"}, {"pattern", {{"Regex", kLlama3Regex}}}, {"behavior", "Isolated"}},
                             {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}
                    : json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  return json{{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", jm}}},
              {"added_tokens", added},
              {"normalizer", nullptr},
              {"pre_tokenizer", pre},
              {"decoder", {{"type", "ByteLevel"}}}}
      .dump();
}

// Random byte strings mixing ASCII, multi-byte UTF-8 (é, 中, emoji) and invalid sequences.
std::vector<std::string> nasty_strings() {
  const std::vector<std::string> atoms = {"a", "Z", " ", "  ", "\n", "\t", "7", "123456", "'s", "!?", "é", "中文",
                                          "😀", "👩‍👩‍👧", "\xFF", "\x80", "\xE2\x82", "\xF0\x9F", "\xC0\xAF", "\0",
                                          "the", " theme", "<|eot_id|>", "<0x41>", "▁"};
  std::mt19937 rng(1234);
  std::vector<std::string> out = {"", " ", "\xFF", "hello world", "😀😀 x", "  leading", "trailing  "};
  for (int i = 0; i < 300; ++i) {
    std::string s;
    const int n = 1 + int(rng() % 12);
    for (int k = 0; k < n; ++k) s += atoms[rng() % atoms.size()];
    out.push_back(s);
  }
  return out;
}

void expect_round_trip(const Tokenizer& tok) {
  int checked = 0;
  for (auto& s : nasty_strings()) {
    for (bool bos : {false, true}) {
      auto ids = tok.encode(s, bos, false);
      ASSERT_EQ(tok.decode(ids), s) << tok.kind() << " bos=" << bos << " input bytes: " << s.size();
      ++checked;
    }
  }
  EXPECT_EQ(checked, 2 * int(nasty_strings().size()));
}

TEST(HfBpe, Llama3StyleEncodingMatchesHandDerivation) {
  test::TempDir dir;
  test::write_file(dir / "tokenizer.json", make_tokenizer_json(true));
  auto tok = load_tokenizer(dir / "tokenizer.json");
  EXPECT_EQ(tok->kind(), "hf-bpe");
  EXPECT_EQ(tok->bos_id, 265);
  // " theme": Ġ t h e m e -> (Ġ t, rank 0) -> (h e, rank 1) -> (Ġt he, rank 2) = [Ġthe, m, e].
  // " 12345": the space alone (\s+), then \p{N}{1,3}: "123" -> [12, 3] and "45" -> [4, 5]; the merge
  // "3 4" must not cross the digit-group boundary. "m Ġ" must not cross words.
  auto ids = tok->encode("<|begin_of_text|> the theme 12345<|eot_id|>I'm x", false, false);
  std::vector<int32_t> want = {265, 258, 258, 'm', 'e', ' ', 259, '3', '4', '5', 267, 'I', '\'', 'm', ' ', 'x'};
  EXPECT_EQ(ids, want);
  EXPECT_EQ(tok->encode("x", true, true), (std::vector<int32_t>{265, 'x', 266}));
  expect_round_trip(*tok);
}

TEST(HfBpe, Gpt2StyleRegexSplitsDifferently) {
  test::TempDir dir;
  test::write_file(dir / "tokenizer.json", make_tokenizer_json(false));
  auto tok = load_tokenizer(dir / "tokenizer.json");
  // GPT-2: " 12345" is one \p{N}+ piece with its space: Ġ 1 2 3 4 5 -> (1 2) -> (3 4) = [Ġ, 12, 34, 5].
  EXPECT_EQ(tok->encode(" 12345", false, false), (std::vector<int32_t>{' ', 259, 260, '5'}));
  expect_round_trip(*tok);
}

TEST(HfBpe, UnsupportedPreTokenizerIsAClearError) {
  test::TempDir dir;
  auto j = json::parse(make_tokenizer_json(true));
  j["pre_tokenizer"] = {{"type", "Metaspace"}};
  test::write_file(dir / "tokenizer.json", j.dump());
  try {
    load_tokenizer(dir / "tokenizer.json");
    FAIL() << "no error";
  } catch (const TokenizerError& e) {
    EXPECT_NE(std::string(e.what()).find("Metaspace"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos);
  }
}

// Malformed files are refused on load with the file and field named: an added token with empty content
// (encode looped forever on it), ids that are out of range or not integers, fields of the wrong JSON type.
TEST(HfBpe, MalformedFieldsAreNamedOnLoad) {
  test::TempDir dir;
  auto expect_error = [&](const std::function<void(json&)>& edit, const std::string& want) {
    auto j = json::parse(make_tokenizer_json(true));
    edit(j);
    test::write_file(dir / "tokenizer.json", j.dump());
    try {
      load_tokenizer(dir / "tokenizer.json");
      ADD_FAILURE() << "no error for " << want;
    } catch (const TokenizerError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("tokenizer.json"), std::string::npos) << what;
      EXPECT_NE(what.find(want), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  };
  expect_error([](json& j) { j["added_tokens"].push_back({{"id", 300}, {"content", ""}}); },
               "content must be a non-empty string");
  expect_error([](json& j) { j["added_tokens"].push_back({{"id", -4}, {"content", "<x>"}}); },
               "'<x>': id must be an integer in [0, 16777216), got -4");
  expect_error([](json& j) { j["added_tokens"].push_back({{"id", 1e12}, {"content", "<x>"}}); }, "got 1000000000000");
  expect_error([](json& j) { j["added_tokens"].push_back({{"id", "7"}, {"content", "<x>"}}); }, "got \"7\"");
  expect_error([](json& j) { j["added_tokens"].push_back({{"content", "<x>"}}); }, "got null");
  expect_error([](json& j) { j["added_tokens"] = "none"; }, "added_tokens must be an array");
  expect_error([](json& j) { j["model"]["vocab"]["a"] = 2.5; }, "model.vocab 'a': id must be an integer");
  expect_error([](json& j) { j["model"]["vocab"] = json::array(); }, "model.vocab must be an object");
  expect_error([](json& j) { j["model"]["merges"].push_back(7); }, "must be \"a b\" or [\"a\", \"b\"], got 7");
  expect_error([](json& j) { j["model"]["ignore_merges"] = "yes"; }, "malformed tokenizer.json");
}

using Vocab = std::vector<std::pair<std::string, float>>;  // piece, score

// A llama2.c vocabulary: <unk>, BOS, EOS, the 256 byte pieces <0xNN>, then `extra`.
Vocab llama2c_vocab(const Vocab& extra) {
  Vocab v = {{"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}};
  for (int b = 0; b < 256; ++b) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "<0x%02X>", b);
    v.emplace_back(hex, 0.f);
  }
  v.insert(v.end(), extra.begin(), extra.end());
  return v;
}

// tokenizer.bin: max_len, then per token its score, length and bytes.
void write_llama2c_tokenizer(const std::string& path, const Vocab& v) {
  std::string out(4, '\0');
  const int32_t max_len = 16;
  std::memcpy(out.data(), &max_len, 4);
  for (auto& [piece, score] : v) {
    const int32_t len = int32_t(piece.size());
    out.append(reinterpret_cast<const char*>(&score), 4).append(reinterpret_cast<const char*>(&len), 4) += piece;
  }
  test::write_file(path, out);
}

// run.c's encode, as written there: rescan every pair after each merge (quadratic), the first best wins.
std::vector<int32_t> run_c_encode(const Vocab& vocab, const std::string& text) {
  auto find = [&](const std::string& s) {
    for (size_t i = 0; i < vocab.size(); ++i)
      if (vocab[i].first == s) return int32_t(i);
    return int32_t(-1);
  };
  std::vector<int32_t> t;
  if (!text.empty()) t.push_back(find(" "));
  std::string buf;
  for (size_t i = 0; i < text.size(); ++i) {
    buf += text[i];
    if (i + 1 < text.size() && (uint8_t(text[i + 1]) & 0xC0) == 0x80 && buf.size() < 4) continue;
    const int32_t id = find(buf);
    if (id >= 0) t.push_back(id);
    else
      for (unsigned char b : buf) t.push_back(int32_t(b) + 3);
    buf.clear();
  }
  while (true) {
    float best = -1e10f;
    int32_t best_id = -1;
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < t.size(); ++i) {
      const int32_t id = find(vocab[size_t(t[i])].first + vocab[size_t(t[i + 1])].first);
      if (id >= 0 && vocab[size_t(id)].second > best) best = vocab[size_t(id)].second, best_id = id, best_i = i;
    }
    if (best_id < 0) break;
    t[best_i] = best_id;
    t.erase(t.begin() + long(best_i) + 1);
  }
  t.insert(t.begin(), 1);
  return t;
}

// The heap-based encode gives run.c's tokens on random texts, with tied scores and overlapping merges,
// both when words are merged one at a time and when a piece with an inner space forbids it.
TEST(Llama2c, FastEncodeEqualsRunCsGreedyMerges) {
  test::TempDir dir;
  const Vocab base = {
      {" ", -1}, {"a", -2}, {"b", -2}, {"c", -2}, {"ab", 3}, {"bc", 3}, {"ca", 3}, {"abc", 5}, {" a", 2},
      {" ab", 4}, {"bb", 3}, {"bbb", 1}, {"cab", 5}, {"\xc3\xa9", -1}, {"a\xc3\xa9", 2}, {"  ", 0.5}};
  std::mt19937 rng(11);
  const char* alphabet[] = {"a", "b", "c", " ", "\xc3\xa9", "x"};
  for (bool inner_space : {false, true}) {
    Vocab extra = base;
    if (inner_space) extra.push_back({"b a", 6});
    const Vocab full = llama2c_vocab(extra);
    write_llama2c_tokenizer(dir / "t.bin", full);
    auto tok = load_tokenizer(dir / "t.bin");
    int merged = 0;
    for (int k = 0; k < 300; ++k) {
      std::string text;
      const int n = int(rng() % 120);
      for (int i = 0; i < n; ++i) text += alphabet[rng() % 6];
      const auto want = run_c_encode(full, text);
      ASSERT_EQ(tok->encode(text, true, false), want) << "inner space " << inner_space << ", text '" << text << "'";
      merged += int(want.size()) < n;
    }
    EXPECT_GT(merged, 200);
  }
}

// The same on the real stories260K tokenizer and real text (whose pieces hold no inner space).
TEST(Llama2c, FastEncodeEqualsRunCsGreedyMergesOnStories260K) {
  SPKV_REQUIRE_SHARED();
  const std::string path = test::shared_dir() + "/models/stories260K/tok512.bin";
  const std::string bytes = test::read_file(path);
  Vocab vocab;
  for (size_t at = 4; at + 8 <= bytes.size();) {
    float score;
    int32_t len;
    std::memcpy(&score, bytes.data() + at, 4), std::memcpy(&len, bytes.data() + at + 4, 4);
    vocab.emplace_back(bytes.substr(at + 8, size_t(len)), score);
    at += 8 + size_t(len);
  }
  ASSERT_EQ(vocab.size(), 512u);
  auto tok = load_tokenizer(path);
  const std::string text = test::read_file(test::shared_dir() + "/corpora/tinystories_sample.txt");
  for (size_t at = 0; at + 400 < text.size() && at < 12000; at += 997)
    EXPECT_EQ(tok->encode(text.substr(at, 400), true, false), run_c_encode(vocab, text.substr(at, 400))) << "at " << at;
}

TEST(Llama2c, RoundTripsArbitraryBytes) {
  SPKV_REQUIRE_SHARED();
  auto tok = load_tokenizer(test::shared_dir() + "/models/stories260K/tok512.bin");
  EXPECT_EQ(tok->vocab_size(), 512);
  expect_round_trip(*tok);
}

// Progress while encoding one large document (3 MB of words): the same ids as without a callback, reports
// that never go back, several before the end, and the text's size last; for llama2.c and tokenizer.json.
TEST(Tokenizers, ProgressOnOneLargeDocumentIsMonotonicAndEndsAtItsSize) {
  test::TempDir dir;
  write_llama2c_tokenizer(dir / "t.bin", llama2c_vocab({{" ", -1}, {"a", -2}, {"b", -2}, {"ab", 3}, {" ab", 4}}));
  test::write_file(dir / "tokenizer.json", make_tokenizer_json(true));
  std::mt19937 rng(5);
  const char* words[] = {"ab", " ab", " b", "a", " the", " theme", "\n"};
  std::string text;
  while (text.size() < (size_t(3) << 20)) text += words[rng() % 7];
  for (const std::string file : {"t.bin", "tokenizer.json"}) {
    auto tok = load_tokenizer(dir / file);
    std::vector<size_t> reports;
    const auto ids = tok->encode(text, true, false, [&](size_t done) { reports.push_back(done); });
    EXPECT_EQ(ids, tok->encode(text, true, false)) << file;
    ASSERT_GE(reports.size(), 3u) << file;
    EXPECT_TRUE(std::is_sorted(reports.begin(), reports.end())) << file;
    EXPECT_LT(reports.front(), text.size()) << file;
    EXPECT_EQ(reports.back(), text.size()) << file;
  }
}

TEST(SentencePiece, TrainedModelRoundTripsArbitraryBytes) {
  test::TempDir dir;
  // A generated corpus: sentences from a small word list, so frequent words become single pieces.
  const std::vector<std::string> words = {"the", "cat", "sat", "on", "mat", "and", "dog", "ran", "to", "park",
                                          "a", "big", "red", "ball", "she", "said", "hello", "über", "café", "猫"};
  std::mt19937 rng(5);
  std::string corpus;
  for (int i = 0; i < 3000; ++i) {
    for (int k = 0, n = 4 + int(rng() % 8); k < n; ++k) corpus += (k ? " " : "") + words[rng() % words.size()];
    corpus += ".\n";
  }
  test::write_file(dir / "corpus.txt", corpus);
  for (bool dummy : {true, false}) {
    SentencePieceTrainOptions o;
    o.input = dir / "corpus.txt";
    o.out_model = dir / (dummy ? "sp_dummy.model" : "sp_plain.model");
    o.vocab_size = 370;
    o.add_dummy_prefix = dummy;
    train_sentencepiece(o);
    auto tok = load_tokenizer(o.out_model);
    EXPECT_EQ(tok->kind(), "sentencepiece");
    EXPECT_EQ(tok->vocab_size(), 370);
    // A frequent word is one piece; a rare string falls back to bytes.
    auto park = tok->encode(dummy ? "park" : " park", false, false);
    EXPECT_EQ(park.size(), 1u) << "dummy=" << dummy;
    EXPECT_GE(tok->encode("\xF0\x9F\x98\x80", false, false).size(), 4u);  // emoji: 4 byte pieces
    expect_round_trip(*tok);
  }
}

TEST(SentencePiece, NotAModelIsAClearError) {
  test::TempDir dir;
  test::write_file(dir / "bad.model", "this is not a protobuf");
  EXPECT_THROW(load_tokenizer(dir / "bad.model"), TokenizerError);
}

}  // namespace
}  // namespace spkv
