// Tokenizers behind one interface: llama2.c tokenizer.bin, Hugging Face tokenizer.json (byte-level BPE)
// and SentencePiece .model. Torch-free. decode() is defined as the concatenation of token_bytes(), so
// streamed output and whole-sequence decoding agree byte for byte.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace spkv {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(std::string_view text, bool bos, bool eos) const = 0;
  // The bytes token `id` contributes when it follows token `prev` (-1 at the start of a sequence).
  // BOS and EOS contribute nothing.
  virtual std::string token_bytes(int32_t prev, int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual std::string kind() const = 0;  // "llama2c" | "hf-bpe" | "sentencepiece"
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string summary() const;  // one line: kind, vocab, bos/eos, file

  int32_t bos_id = -1, eos_id = -1;  // -1: the tokenizer has none
  std::string path;
};

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
