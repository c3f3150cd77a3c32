// SentencePiece .model files through libsentencepiece, reached via the shim module
// (sentencepiece_shim.cpp says why). Encoding is the library's; invalid UTF-8 bytes, which the library
// would replace, are cut out first and written as byte-fallback tokens <0xNN>, so decode(encode(x)) == x
// for models with byte fallback and an identity normalizer (Llama-2's kind). A literal "▁" in the input
// is written as bytes too, since the library cannot tell it from a space.
#include <dlfcn.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/base/errors.h"
#include "core/text/tokenizer.h"

namespace spkv {
namespace {

// Length of the valid UTF-8 sequence at s[i], or 0 if the bytes there are not one.
size_t valid_utf8_len(std::string_view s, size_t i) {
  const uint8_t c = uint8_t(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k)
    if ((uint8_t(s[i + k]) & 0xC0) != 0x80) return 0;
  uint32_t cp = n == 1 ? c : c & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (uint8_t(s[i + k]) & 0x3F);
  static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;  // overlong, surrogate
  return n;
}

// The shim's functions, resolved once from the module.
struct Shim {
  void* (*load)(const char*, char*, size_t);
  void (*free)(void*);
  int (*encode)(void*, const char*, size_t, int*, int);
  const char* (*piece)(void*, int);
  int (*piece_to_id)(void*, const char*);
  int (*query)(void*, int, int);

  static const Shim& get() {
    static const Shim shim = open();
    return shim;
  }

 private:
  static Shim open() {
    std::vector<std::string> candidates = {SPKV_SP_SHIM_PATH};
    char exe[4096];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) candidates.push_back((std::filesystem::path(std::string(exe, n)).parent_path() /
                                     std::filesystem::path(SPKV_SP_SHIM_PATH).filename()).string());
    void* lib = nullptr;
    std::string errors;
    for (auto& c : candidates) {
      // RTLD_DEEPBIND keeps the module's protobuf apart from LibTorch's (docs/design.md). AddressSanitizer
      // refuses it (google/sanitizers#611), so sanitizer builds load the module, built without the
      // sanitizer, into a link-map namespace of its own: its libc, libstdc++ and protobuf are its own.
#ifdef SPKV_SANITIZED
      if ((lib = dlmopen(LM_ID_NEWLM, c.c_str(), RTLD_NOW | RTLD_LOCAL))) break;
#else
      if ((lib = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND))) break;
#endif
      errors += std::string(" ") + dlerror();
    }
    if (!lib) throw Error("cannot load the SentencePiece module:" + errors);
    auto sym = [&](const char* name) {
      void* f = dlsym(lib, name);
      if (!f) throw Error(std::string("SentencePiece module lacks ") + name);
      return f;
    };
    Shim s;
    s.load = reinterpret_cast<decltype(s.load)>(sym("spkv_sp_load"));
    s.free = reinterpret_cast<decltype(s.free)>(sym("spkv_sp_free"));
    s.encode = reinterpret_cast<decltype(s.encode)>(sym("spkv_sp_encode"));
    s.piece = reinterpret_cast<decltype(s.piece)>(sym("spkv_sp_piece"));
    s.piece_to_id = reinterpret_cast<decltype(s.piece_to_id)>(sym("spkv_sp_piece_to_id"));
    s.query = reinterpret_cast<decltype(s.query)>(sym("spkv_sp_query"));
    return s;
  }
};

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& file) : shim_(Shim::get()) {
    path = file;
    char err[512] = {0};
    h_ = shim_.load(file.c_str(), err, sizeof err);
    if (!h_) throw TokenizerError(file, std::string("not a SentencePiece model: ") + err);
    bos_id = shim_.query(h_, 1, 0);
    eos_id = shim_.query(h_, 2, 0);
    unk_id_ = shim_.query(h_, 3, 0);
    auto probe = encode_ids("a");
    dummy_prefix_ = !probe.empty() && std::string(shim_.piece(h_, probe[0])).rfind("\xE2\x96\x81", 0) == 0;
  }
  ~SentencePieceTokenizer() override { shim_.free(h_); }

  std::string kind() const override { return "sentencepiece"; }
  int32_t vocab_size() const override { return shim_.query(h_, 0, 0); }

  // The library encodes each run of valid UTF-8 in one call: no progress within it (encode() reports the end).
  std::vector<int32_t> do_encode(std::string_view text, bool bos, bool eos, const EncodeProgress& /*progress*/) const override {
    std::vector<int32_t> ids;
    if (bos && bos_id >= 0) ids.push_back(bos_id);
    size_t i = 0, start = 0;
    bool first = true;
    auto flush = [&](size_t end) {
      if (end > start) encode_valid(text.substr(start, end - start), first, ids), first = false;
    };
    while (i < text.size()) {
      size_t n = valid_utf8_len(text, i);
      // U+2581 "▁" is SentencePiece's own space marker: the library would decode it as a space.
      const bool marker = n == 3 && text.compare(i, 3, "\xE2\x96\x81") == 0;
      if (n && !marker) {
        i += n;
        continue;
      }
      flush(i);
      for (size_t k = 0; k < (marker ? 3 : 1); ++k) ids.push_back(byte_id(uint8_t(text[i + k])));
      first = false;
      i += marker ? 3 : 1;
      start = i;
    }
    flush(i);
    if (eos && eos_id >= 0) ids.push_back(eos_id);
    return ids;
  }

  std::string token_bytes(int32_t prev, int32_t id) const override {
    if (id < 0 || id >= vocab_size()) throw InputError("token id " + std::to_string(id) + " is outside the vocabulary of " + path);
    if (id == bos_id || id == eos_id || shim_.query(h_, 4, id)) return {};
    const std::string piece = shim_.piece(h_, id);
    if (shim_.query(h_, 5, id)) return std::string(1, char(std::stoi(piece.substr(3, 2), nullptr, 16)));
    if (shim_.query(h_, 6, id)) return " \xE2\x81\x87 ";  // SentencePiece's default unk surface " ⁇ "
    std::string out;
    for (size_t i = 0; i < piece.size();) {
      if (piece.compare(i, 3, "\xE2\x96\x81") == 0) out += ' ', i += 3;
      else out += piece[i++];
    }
    if (dummy_prefix_ && (prev == -1 || prev == bos_id) && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }

 private:
  int32_t byte_id(uint8_t b) const {
    char hex[8];
    std::snprintf(hex, sizeof hex, "<0x%02X>", b);
    const int id = shim_.piece_to_id(h_, hex);
    if (id == unk_id_) throw InputError(path + ": input has invalid UTF-8 and the model has no byte fallback");
    return id;
  }

  // Valid UTF-8 text. After an invalid byte the library would add its dummy-prefix space again; that
  // leading "▁" is removed so the round trip stays exact.
  void encode_valid(std::string_view text, bool first, std::vector<int32_t>& ids) const {
    std::vector<int> got = encode_ids(text);
    size_t from = 0;
    if (!first && dummy_prefix_ && !got.empty()) {
      const std::string p0 = shim_.piece(h_, got[0]);
      if (p0.rfind("\xE2\x96\x81", 0) == 0) {
        from = 1;
        const std::string rest = p0.substr(3);
        if (!rest.empty()) {
          const int id = shim_.piece_to_id(h_, rest.c_str());
          if (id != unk_id_) ids.push_back(id);
          else
            for (unsigned char b : rest) ids.push_back(byte_id(b));
        }
      }
    }
    ids.insert(ids.end(), got.begin() + long(from), got.end());
  }

  std::vector<int> encode_ids(std::string_view text) const {
    std::vector<int> out(text.size() + 8);
    int n = shim_.encode(h_, text.data(), text.size(), out.data(), int(out.size()));
    if (n > int(out.size())) {
      out.resize(n);
      n = shim_.encode(h_, text.data(), text.size(), out.data(), n);
    }
    out.resize(n);
    return out;
  }

  const Shim& shim_;
  void* h_ = nullptr;
  int unk_id_ = 0;
  bool dummy_prefix_ = false;
};

}  // namespace

void train_sentencepiece(const SentencePieceTrainOptions& o) {
  if (o.vocab_size < 8) throw InputError("train_sentencepiece: vocab_size must be >= 8");
  std::string prefix = o.out_model;
  if (prefix.size() > 6 && prefix.compare(prefix.size() - 6, 6, ".model") == 0) prefix.resize(prefix.size() - 6);
  else throw InputError(o.out_model + ": the output name must end in .model");
  const std::string tmp = prefix + ".tmp" + std::to_string(getpid());
  std::string args = "--input=" + o.input + " --model_prefix=" + tmp + " --vocab_size=" +
                     std::to_string(o.vocab_size) + " --model_type=" + o.model_type +
                     " --character_coverage=1.0 --byte_fallback=true --normalization_rule_name=identity"
                     " --remove_extra_whitespaces=false --split_digits=true --allow_whitespace_only_pieces=true"
                     " --minloglevel=2 --add_dummy_prefix=" +
                     (o.add_dummy_prefix ? "true" : "false");
  // Training runs in the helper program spkv-sp-train (next to the shim): the trainer logs through
  // std::cerr, which a DEEPBIND-loaded library cannot reach safely.
  const std::string helper = (std::filesystem::path(SPKV_SP_SHIM_PATH).parent_path() / "spkv-sp-train").string();
  const std::string log = tmp + ".log";
  pid_t pid = 0;
  const char* argv[] = {helper.c_str(), args.c_str(), log.c_str(), nullptr};
  if (posix_spawn(&pid, helper.c_str(), nullptr, nullptr, const_cast<char**>(argv), environ) != 0)
    throw Error("cannot start " + helper);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::ifstream in(log);
    std::string why;
    std::getline(in, why);
    std::filesystem::remove(log);
    throw InputError(o.input + ": SentencePiece training failed: " + why);
  }
  std::filesystem::remove(log);
  std::filesystem::rename(tmp + ".model", o.out_model);
  std::filesystem::remove(tmp + ".vocab");
}

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& path) {
  return std::make_unique<SentencePieceTokenizer>(path);
}

}  // namespace spkv
