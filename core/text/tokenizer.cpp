// The Tokenizer base, format detection, and the llama2.c tokenizer.bin (SentencePiece BPE pieces merged by
// score, byte fallback <0xNN> at ids 3..258), matching run.c's encode() and decode().
#include "core/text/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <unordered_map>

#include "core/base/errors.h"
#include "core/base/progress.h"
#include "core/text/bpe_merge.h"

namespace spkv {
namespace fs = std::filesystem;

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  int32_t prev = -1;
  for (int32_t id : ids) {
    out += token_bytes(prev, id);
    prev = id;
  }
  return out;
}

std::string Tokenizer::summary() const {
  return kind() + ", vocab " + std::to_string(vocab_size()) + ", bos " + std::to_string(bos_id) + ", eos " +
         std::to_string(eos_id) + " (" + path + ")";
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  if (!fs::exists(path)) throw TokenizerError(path, "no such file");
  if (fs::path(path).extension() == ".json") return load_hf_tokenizer(path);
  if (fs::path(path).extension() == ".model") return load_sentencepiece_tokenizer(path);
  return load_llama2c_tokenizer(path);
}

std::string default_tokenizer_path(const std::string& model_path) {
  fs::path p(model_path);
  fs::path dir = fs::is_directory(p) ? p : p.parent_path();
  if (dir.empty()) dir = ".";
  for (const char* n : {"tokenizer.json", "tokenizer.model", "tokenizer.bin"})
    if (fs::exists(dir / n)) return (dir / n).string();
  for (auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("tok", 0) == 0 && e.path().extension() == ".bin") return e.path().string();
  }
  throw TokenizerError(model_path, "no tokenizer found beside the model (looked for tokenizer.json, "
                                   "tokenizer.model, tokenizer.bin, tok*.bin); pass --tokenizer");
}

namespace {

class Llama2cTokenizer : public Tokenizer {
 public:
  Llama2cTokenizer(const std::string& file, int32_t expected_vocab) {
    path = file;
    std::ifstream in(file, std::ios::binary);
    if (!in) throw TokenizerError(file, "cannot open");
    in.seekg(0, std::ios::end);
    const auto size = static_cast<int64_t>(in.tellg());
    in.seekg(0);
    int32_t max_len = 0;
    if (!in.read(reinterpret_cast<char*>(&max_len), 4)) throw TokenizerError(file, "truncated: no header");
    while (in.tellg() < size) {
      float score;
      int32_t len;
      if (!in.read(reinterpret_cast<char*>(&score), 4) || !in.read(reinterpret_cast<char*>(&len), 4))
        throw TokenizerError(file, "truncated in the entry of token " + std::to_string(pieces_.size()));
      if (len < 0 || len > max_len || in.tellg() + int64_t(len) > size)
        throw TokenizerError(file, "token " + std::to_string(pieces_.size()) + " has invalid length " +
                                       std::to_string(len));
      std::string s(len, '\0');
      in.read(s.data(), len);
      pieces_.push_back(std::move(s));
      scores_.push_back(score);
    }
    if (expected_vocab > 0 && int32_t(pieces_.size()) != expected_vocab)
      throw TokenizerError(file, "has " + std::to_string(pieces_.size()) + " tokens, the model expects " +
                                     std::to_string(expected_vocab));
    if (pieces_.size() < 259) throw TokenizerError(file, "too few tokens for byte fallback (need >= 259)");
    for (size_t i = 0; i < pieces_.size(); ++i) {
      lookup_.emplace(pieces_[i], int32_t(i));  // first wins
      inner_space_ = inner_space_ || (pieces_[i].size() > 1 && pieces_[i].find(' ', 1) != std::string::npos);
    }
    bos_id = 1;
    eos_id = 2;
  }

  std::string kind() const override { return "llama2c"; }
  int32_t vocab_size() const override { return int32_t(pieces_.size()); }

  std::vector<int32_t> do_encode(std::string_view text, bool bos, bool eos, const EncodeProgress& progress) const override {
    std::vector<int32_t> ids;
    if (bos) ids.push_back(bos_id);
    std::vector<int32_t> t;
    if (!text.empty()) {  // the dummy prefix, as SentencePiece's add_dummy_prefix: the space piece, else its byte token
      const int32_t space = find(" ");
      t.push_back(space >= 0 ? space : ' ' + 3);
    }
    std::string buf;
    for (size_t i = 0; i < text.size(); ++i) {
      buf += text[i];
      // Flush at the end of a UTF-8 code point (next byte is not a continuation byte) or at 4 bytes.
      if (i + 1 < text.size() && (uint8_t(text[i + 1]) & 0xC0) == 0x80 && buf.size() < 4) continue;
      int32_t id = find(buf);
      if (id >= 0) t.push_back(id);
      else
        for (unsigned char b : buf) t.push_back(int32_t(b) + 3);
      buf.clear();
    }
    // Greedily merge the adjacent pair whose merged piece has the highest score (leftmost on ties), until
    // none exists. When no piece holds a space after its first byte, no merge joins a symbol to a following
    // one that starts with a space, so the words are merged one at a time: the result is the same and the
    // working memory is that of the longest word.
    size_t begin = 0, reported = 0;
    for (size_t i = 1; i <= t.size(); ++i)
      if (i == t.size() || (!inner_space_ && !pieces_[size_t(t[i])].empty() && pieces_[size_t(t[i])][0] == ' ')) {
        merge(t, begin, i, ids);
        begin = i;
        if (progress && i - reported >= (size_t(1) << 20)) {  // symbols stand for about one byte each
          progress(size_t(double(text.size()) * double(i) / double(t.size())));
          reported = i;
        }
      }
    if (eos) ids.push_back(eos_id);
    return ids;
  }

  std::string token_bytes(int32_t prev, int32_t id) const override {
    if (id < 0 || id >= vocab_size()) throw InputError("token id " + std::to_string(id) + " is outside the vocabulary of " + path);
    if (id == bos_id || id == eos_id) return {};
    if (id >= 3 && id < 259) return std::string(1, char(id - 3));  // <0xNN>
    std::string_view p = pieces_[id];
    if ((prev == bos_id || prev == -1) && !p.empty() && p[0] == ' ') p.remove_prefix(1);
    return std::string(p);
  }

 private:
  // Merges the symbols t[begin, end) as run.c does (core/text/bpe_merge.h) and appends them to out.
  void merge(const std::vector<int32_t>& t, size_t begin, size_t end, std::vector<int32_t>& out) const {
    bpe_merge<int32_t, float>(std::vector<int32_t>(t.begin() + long(begin), t.begin() + long(end)),
                              [&](int32_t a, int32_t b) -> std::optional<std::pair<float, int32_t>> {
                                const int32_t id = find(pieces_[size_t(a)] + pieces_[size_t(b)]);
                                if (id < 0) return std::nullopt;
                                return std::make_pair(-scores_[size_t(id)], id);  // the highest score first
                              },
                              out);
  }

  int32_t find(const std::string& s) const {
    auto it = lookup_.find(s);
    return it == lookup_.end() ? -1 : it->second;
  }
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> lookup_;
  bool inner_space_ = false;  // some piece holds a space after its first byte
};

}  // namespace

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool bos, bool eos, const EncodeProgress& progress) const {
  auto ids = do_encode(text, bos, eos, progress);
  if (progress) progress(text.size());
  return ids;
}

std::vector<int32_t> encode_showing_progress(const Tokenizer& tok, std::string_view text, bool bos, bool eos,
                                             size_t min_bytes) {
  if (text.size() < min_bytes) return tok.encode(text, bos, eos);
  Progress bar("tokenize", int64_t(text.size()), "B");
  size_t shown = 0;
  auto ids = tok.encode(text, bos, eos, [&](size_t done) { bar.add(int64_t(done - shown)), shown = done; });
  bar.finish();
  return ids;
}

std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path, int32_t vocab_size) {
  return std::make_unique<Llama2cTokenizer>(path, vocab_size);
}

std::string copy_tokenizer_into(const std::string& tokenizer_path, const std::string& model_dir) {
  const auto ext = std::filesystem::path(tokenizer_path).extension();
  const auto dst = std::filesystem::path(model_dir) /
                   (ext == ".json" ? "tokenizer.json" : ext == ".model" ? "tokenizer.model" : "tokenizer.bin");
  std::error_code ec;
  std::filesystem::copy_file(tokenizer_path, dst, std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) throw TokenizerError(tokenizer_path, "cannot copy into " + model_dir + ": " + ec.message());
  return dst.string();
}

}  // namespace spkv
