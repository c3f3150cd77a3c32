// Tokenizers behind one interface: llama2.c tokenizer.bin, Hugging Face tokenizer.json (byte-level BPE)
// and SentencePiece .model. Torch-free. decode() is defined as the concatenation of token_bytes(), so
// streamed output and whole-sequence decoding agree byte for byte.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace spkv {

// Told how many bytes of the text are encoded so far: non-decreasing, and text.size() last.
using EncodeProgress = std::function<void(size_t bytes_done)>;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  std::vector<int32_t> encode(std::string_view text, bool bos, bool eos, const EncodeProgress& progress = {}) const;
  // The bytes token `id` contributes when it follows token `prev` (-1 at the start of a sequence).
  // BOS and EOS contribute nothing.
  virtual std::string token_bytes(int32_t prev, int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual std::string kind() const = 0;  // "llama2c" | "hf-bpe" | "sentencepiece"
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string summary() const;  // one line: kind, vocab, bos/eos, file

  int32_t bos_id = -1, eos_id = -1;  // -1: the tokenizer has none
  std::string path;

 protected:
  // progress may be empty. Implementations report as they go where their algorithm has a natural step
  // (a word, a pre-tokenized piece); encode() reports the end.
  virtual std::vector<int32_t> do_encode(std::string_view text, bool bos, bool eos, const EncodeProgress& progress) const = 0;
};

// encode() with a progress bar (bytes, rate, ETA) on stderr when the text has at least min_bytes: one very
// large document otherwise tokenizes for seconds to minutes without a sign of life.
std::vector<int32_t> encode_showing_progress(const Tokenizer& tok, std::string_view text, bool bos, bool eos,
                                             size_t min_bytes = size_t(16) << 20);

// Chooses the format from the file: tokenizer.json -> hf-bpe, *.model -> sentencepiece, else llama2.c.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);
// The tokenizer that belongs to a model path when none is given: tokenizer.json or tokenizer.model in an HF
// directory; tokenizer.bin or tok*.bin beside a llama2.c file. Throws TokenizerError when there is none.
std::string default_tokenizer_path(const std::string& model_path);
// Copies a tokenizer file into a model directory under the name default_tokenizer_path looks for there
// (tokenizer.json, tokenizer.model or tokenizer.bin); returns the new path.
std::string copy_tokenizer_into(const std::string& tokenizer_path, const std::string& model_dir);

std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path, int32_t vocab_size = -1);
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path);
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& path);

// Trains a SentencePiece model with byte fallback and an identity normalizer, so that
// decode(encode(x)) == x holds for any input. Writes out_model atomically.
struct SentencePieceTrainOptions {
  std::string input;       // text file(s), comma-separated
  std::string out_model;   // must end in .model
  int vocab_size = 512;
  std::string model_type = "bpe";  // bpe | unigram
  bool add_dummy_prefix = true;
};
void train_sentencepiece(const SentencePieceTrainOptions& o);

}  // namespace spkv
