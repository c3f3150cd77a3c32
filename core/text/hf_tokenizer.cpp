// Hugging Face tokenizer.json, byte-level BPE (GPT-2, Llama-3, Qwen2 style): added/special tokens are
// split out first, then the pre-tokenizer regex (PCRE2, Unicode properties) cuts words, bytes map to
// GPT-2's printable code points, and merges apply by rank. Not supported: Unigram/WordPiece models and
// normalizers other than none/NFC (NFC input is assumed, not enforced).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "core/base/errors.h"
#include "core/text/bpe_merge.h"
#include "core/text/tokenizer.h"

namespace spkv {
using json = nlohmann::json;

namespace {

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) s += char(cp);
  else if (cp < 0x800) s += char(0xC0 | (cp >> 6)), s += char(0x80 | (cp & 0x3F));
  else s += char(0xE0 | (cp >> 12)), s += char(0x80 | ((cp >> 6) & 0x3F)), s += char(0x80 | (cp & 0x3F));
  return s;
}

// One compiled pre-tokenizer regex. Matches are pieces; so are the gaps between them ("Isolated").
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& file) {
    int err = 0;
    PCRE2_SIZE off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw TokenizerError(file, "pre-tokenizer regex does not compile at offset " + std::to_string(off) + ": " +
                                     reinterpret_cast<char*>(msg));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;

  void split(std::string_view s, std::vector<std::string_view>& out) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t pos = 0, last = 0;
    while (pos <= s.size()) {
      int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos, 0, md, nullptr);
      if (rc < 0) break;
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      if (ov[0] > last) out.push_back(s.substr(last, ov[0] - last));  // unmatched gap (e.g. invalid UTF-8)
      if (ov[1] > ov[0]) out.push_back(s.substr(ov[0], ov[1] - ov[0]));
      last = ov[1];
      pos = ov[1] > ov[0] ? ov[1] : ov[1] + 1;
    }
    if (last < s.size()) out.push_back(s.substr(last));
    pcre2_match_data_free(md);
  }

 private:
  pcre2_code* code_ = nullptr;
};

class HfBpeTokenizer : public Tokenizer {
 public:
  explicit HfBpeTokenizer(const std::string& file) {
    path = file;
    std::ifstream in(file, std::ios::binary);
    if (!in) throw TokenizerError(file, "cannot open");
    json j;
    try {
      j = json::parse(in);
    } catch (const json::exception& e) {
      throw TokenizerError(file, std::string("invalid JSON: ") + e.what());
    }
    try {
      read_model(j, file);
      const json& norm = j.value("normalizer", json());
      if (!norm.is_null() && norm.value("type", "") != "NFC")
        throw TokenizerError(file, "normalizer '" + norm.value("type", "?") + "' is not supported (none or NFC)");
      parse_pre_tokenizer(j.value("pre_tokenizer", json()), file);
    } catch (const json::exception& e) {  // a field of the wrong JSON type that the checks do not name
      throw TokenizerError(file, std::string("malformed tokenizer.json: ") + e.what());
    }
    std::sort(added_.begin(), added_.end(), [](auto& a, auto& b) { return a.first.size() > b.first.size(); });
    for (auto& [content, id] : added_) added_by_id_[id] = content;

    for (auto& [tok, id] : vocab_) {
      if (id < 0) throw TokenizerError(file, "token '" + tok + "' has negative id");
      if (size_t(id) >= id_to_token_.size()) id_to_token_.resize(id + 1);
      id_to_token_[id] = tok;
    }
    // GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 upward.
    uint32_t n = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      byte_char_[b] = utf8(printable ? b : 256 + n++);
      char_byte_[byte_char_[b]] = uint8_t(b);
    }
    for (const char* name : {"<|begin_of_text|>", "<s>", "<|startoftext|>"})
      if (bos_id < 0 && vocab_.count(name)) bos_id = vocab_.at(name);
    for (const char* name : {"<|end_of_text|>", "</s>", "<|endoftext|>"})
      if (eos_id < 0 && vocab_.count(name)) eos_id = vocab_.at(name);
  }

  // The ids of vocab and added_tokens are checked before anything is sized by them.
  static int32_t token_id(const json& v, const std::string& file, const std::string& what) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= kMaxTokenId)
      throw TokenizerError(file, what + ": id must be an integer in [0, " + std::to_string(kMaxTokenId) + "), got " + v.dump());
    return v.get<int32_t>();
  }
  static constexpr int64_t kMaxTokenId = int64_t(1) << 24;

  void read_model(const json& j, const std::string& file) {
    const json& m = j.value("model", json::object());
    if (!m.is_object() || m.value("type", "BPE") != "BPE" || !m.contains("vocab") || !m.contains("merges"))
      throw TokenizerError(file, "model.type must be BPE with vocab and merges");
    if (!m["vocab"].is_object()) throw TokenizerError(file, "model.vocab must be an object of token: id");
    if (!m["merges"].is_array()) throw TokenizerError(file, "model.merges must be an array");
    for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it)
      vocab_[it.key()] = token_id(it.value(), file, "model.vocab '" + it.key() + "'");
    int32_t rank = 0;
    for (auto& mg : m["merges"]) {
      std::string a, b;
      if (mg.is_string()) {
        const std::string s = mg.get<std::string>();
        const size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) throw TokenizerError(file, "merge '" + s + "' has no space");
        a = s.substr(0, sp), b = s.substr(sp + 1);
      } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
        a = mg[0].get<std::string>(), b = mg[1].get<std::string>();
      } else {
        throw TokenizerError(file, "model.merges[" + std::to_string(rank) + "] must be \"a b\" or [\"a\", \"b\"], got " + mg.dump());
      }
      merges_.emplace(a + '\x01' + b, rank++);
    }
    ignore_merges_ = m.value("ignore_merges", false);
    byte_fallback_ = m.value("byte_fallback", false);
    if (m.contains("unk_token") && m["unk_token"].is_string() && vocab_.count(m["unk_token"].get<std::string>()))
      unk_id_ = vocab_.at(m["unk_token"].get<std::string>());

    if (!j.contains("added_tokens")) return;
    if (!j["added_tokens"].is_array()) throw TokenizerError(file, "added_tokens must be an array");
    for (size_t i = 0; i < j["added_tokens"].size(); ++i) {
      const json& t = j["added_tokens"][i];
      const std::string where = "added_tokens[" + std::to_string(i) + "]";
      if (!t.is_object() || !t.contains("content") || !t["content"].is_string() || t["content"].get<std::string>().empty())
        throw TokenizerError(file, where + ": content must be a non-empty string");
      const std::string content = t["content"].get<std::string>();
      const int32_t id = token_id(t.value("id", json()), file, where + " '" + content + "'");
      added_.emplace_back(content, id);
      vocab_[content] = id;
    }
  }

  std::string kind() const override { return "hf-bpe"; }
  int32_t vocab_size() const override { return int32_t(id_to_token_.size()); }

  std::vector<int32_t> do_encode(std::string_view text, bool bos, bool eos, const EncodeProgress& progress) const override {
    std::vector<int32_t> ids;
    if (bos && bos_id >= 0) ids.push_back(bos_id);
    size_t pos = 0;
    while (pos < text.size()) {
      // Find the earliest (then longest) added token; the text before it is ordinary text.
      size_t best = std::string_view::npos;
      const std::pair<std::string, int32_t>* hit = nullptr;
      for (auto& a : added_) {
        size_t f = text.find(a.first, pos);
        if (f < best) best = f, hit = &a;
      }
      encode_text(text.substr(pos, (hit ? best : text.size()) - pos), ids, progress, pos);
      if (!hit) break;
      ids.push_back(hit->second);
      pos = best + hit->first.size();
    }
    if (eos && eos_id >= 0) ids.push_back(eos_id);
    return ids;
  }

  std::string token_bytes(int32_t, int32_t id) const override {
    if (id < 0 || id >= vocab_size()) throw InputError("token id " + std::to_string(id) + " is outside the vocabulary of " + path);
    if (id == bos_id || id == eos_id) return {};
    const std::string& tok = id_to_token_[id];
    if (auto it = added_by_id_.find(id); it != added_by_id_.end()) return it->second;
    if (tok.size() == 6 && tok.compare(0, 3, "<0x") == 0 && tok[5] == '>')
      return std::string(1, char(std::stoi(tok.substr(3, 2), nullptr, 16)));
    std::string out;
    for (size_t i = 0; i < tok.size();) {  // map each code point back to its byte
      size_t len = (uint8_t(tok[i]) < 0x80) ? 1 : (uint8_t(tok[i]) < 0xE0) ? 2 : 3;
      auto it = char_byte_.find(tok.substr(i, len));
      out += it != char_byte_.end() ? std::string(1, char(it->second)) : tok.substr(i, len);
      i += len;
    }
    return out;
  }

 private:
  void parse_pre_tokenizer(const json& p, const std::string& file) {
    if (p.is_null()) return;
    const std::string type = p.value("type", "");
    if (type == "Sequence") {
      for (auto& q : p.at("pretokenizers")) parse_pre_tokenizer(q, file);
    } else if (type == "Split") {
      const json& pat = p.at("pattern");
      std::string re = pat.contains("Regex") ? pat["Regex"].get<std::string>() : quote(pat.at("String").get<std::string>());
      const std::string behavior = p.value("behavior", "Isolated");
      if (behavior != "Isolated" || p.value("invert", false))
        throw TokenizerError(file, "pre_tokenizer Split behavior '" + behavior + "' is not supported (Isolated)");
      regexes_.push_back(std::make_unique<Regex>(re, file));
    } else if (type == "ByteLevel") {
      add_prefix_space_ = p.value("add_prefix_space", false);
      if (p.value("use_regex", true)) regexes_.push_back(std::make_unique<Regex>(kGpt2Pattern, file));
    } else if (type == "Digits") {
      regexes_.push_back(std::make_unique<Regex>(p.value("individual_digits", false) ? "\\p{N}" : "\\p{N}+", file));
    } else {
      throw TokenizerError(file, "pre_tokenizer '" + type + "' is not supported (Sequence, Split, ByteLevel, Digits)");
    }
  }

  static std::string quote(const std::string& s) { return "\\Q" + s + "\\E"; }

  // offset: where text starts in the whole input, for progress.
  void encode_text(std::string_view text, std::vector<int32_t>& ids, const EncodeProgress& progress, size_t offset) const {
    if (text.empty()) return;
    const size_t len = text.size();  // before the prefix space, for progress
    std::string prefixed;
    if (add_prefix_space_ && text[0] != ' ') prefixed = " " + std::string(text), text = prefixed;
    std::vector<std::string_view> pieces{text};
    for (auto& re : regexes_) {  // each stage splits every piece of the previous one
      std::vector<std::string_view> next;
      for (auto pc : pieces) re->split(pc, next);
      pieces.swap(next);
    }
    size_t done = 0, reported = 0;
    for (auto pc : pieces) {
      bpe(pc, ids);
      done += pc.size();
      if (progress && done - reported >= (size_t(1) << 20)) progress(offset + std::min(done, len)), reported = done;
    }
  }

  void bpe(std::string_view piece, std::vector<int32_t>& ids) const {
    std::vector<std::string> sym;  // byte-mapped symbols
    for (unsigned char b : piece) sym.push_back(byte_char_[b]);
    if (ignore_merges_) {
      std::string whole;
      for (auto& s : sym) whole += s;
      if (auto it = vocab_.find(whole); it != vocab_.end()) return ids.push_back(it->second);
    }
    std::vector<std::string> merged;  // the lowest merge rank first (core/text/bpe_merge.h)
    bpe_merge<std::string, int32_t>(std::move(sym), [&](const std::string& a, const std::string& b)
                                        -> std::optional<std::pair<int32_t, std::string>> {
      auto it = merges_.find(a + '\x01' + b);
      if (it == merges_.end()) return std::nullopt;
      return std::make_pair(it->second, a + b);
    }, merged);
    for (auto& s : merged) {
      if (auto it = vocab_.find(s); it != vocab_.end()) ids.push_back(it->second);
      else unknown_symbol(s, ids);
    }
  }

  // A symbol the vocabulary lacks: byte-fallback tokens <0xNN> if the model has them, else unk.
  void unknown_symbol(const std::string& s, std::vector<int32_t>& ids) const {
    if (byte_fallback_) {
      for (size_t i = 0; i < s.size();) {
        size_t len = (uint8_t(s[i]) < 0x80) ? 1 : (uint8_t(s[i]) < 0xE0) ? 2 : 3;
        char hex[8];
        std::snprintf(hex, sizeof hex, "<0x%02X>", unsigned(char_byte_.at(s.substr(i, len))));
        auto it = vocab_.find(hex);
        if (it == vocab_.end()) throw TokenizerError(path, std::string("byte_fallback token ") + hex + " is missing");
        ids.push_back(it->second);
        i += len;
      }
    } else if (unk_id_ >= 0) {
      ids.push_back(unk_id_);
    } else {
      throw TokenizerError(path, "symbol '" + s + "' is not in the vocabulary, and there is no byte_fallback or unk_token");
    }
  }

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, int32_t> merges_;  // "a\x01b" -> rank
  std::vector<std::pair<std::string, int32_t>> added_;  // longest first
  std::unordered_map<int32_t, std::string> added_by_id_;
  std::vector<std::unique_ptr<Regex>> regexes_;
  std::string byte_char_[256];
  std::unordered_map<std::string, uint8_t> char_byte_;
  bool add_prefix_space_ = false, ignore_merges_ = false, byte_fallback_ = false;
  int32_t unk_id_ = -1;
};

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path) { return std::make_unique<HfBpeTokenizer>(path); }

}  // namespace spkv
