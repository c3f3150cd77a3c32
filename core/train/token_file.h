// The memory-mapped token file written by `spkv tokenize` and read by the trainer: documents as CSR
// (indptr[n_docs + 1] into one flat token array). Torch-free. Not a dataset with shuffling or batching
// (that is the trainer's sampler).
//
// Layout (little-endian): magic "SPKVTOK1" | u32 version (1 or 2) | u32 token_bytes (2 or 4) | u64 n_tokens |
// u64 n_docs | u64 vocab_size | tokens[n_tokens] | u64 indptr[n_docs + 1] | version 2 only: u8 counts[n_tokens],
// 1 where predicting the token counts in the training loss (`spkv tokenize --loss answers`), else 0.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace spkv {

class MappedFile;

class TokenFile {
 public:
  // Maps and validates the header, the sizes and the indptr. Throws InputError naming the file.
  explicit TokenFile(const std::string& path);
  const std::string& path() const { return path_; }
  int64_t n_tokens() const { return n_tokens_; }
  int64_t n_docs() const { return n_docs_; }
  int64_t vocab_size() const { return vocab_size_; }
  int32_t token(int64_t i) const;
  int64_t doc_begin(int64_t d) const;  // d in [0, n_docs]; doc_begin(n_docs) = n_tokens
  // Index of the document holding flat token i.
  int64_t doc_of(int64_t i) const;
  // Version 2: whether predicting flat token i counts in the loss. Version 1: every token counts.
  bool has_loss_mask() const { return counts_ != nullptr; }
  bool counts(int64_t i) const { return counts_ == nullptr || counts_[i] != 0; }

 private:
  std::string path_;
  std::shared_ptr<MappedFile> map_;
  int64_t n_tokens_ = 0, n_docs_ = 0, vocab_size_ = 0, token_bytes_ = 0;
  const uint8_t* tokens_ = nullptr;
  const uint8_t* indptr_ = nullptr;  // unaligned u64s, read with memcpy
  const uint8_t* counts_ = nullptr;  // version 2's loss mask, else null
};

// Writes documents (each already tokenized, BOS first if wanted) atomically to `path`: version 1, or version 2
// when `counts` is given (one 0/1 per token of every document, the same shapes as docs).
void write_token_file(const std::string& path, const std::vector<std::vector<int32_t>>& docs, int64_t vocab_size,
                      const std::vector<std::vector<uint8_t>>* counts = nullptr);

}  // namespace spkv
