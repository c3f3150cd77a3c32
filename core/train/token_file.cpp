// Reading and writing the CSR token file (see token_file.h for the layout).
#include "core/train/token_file.h"

#include <cstring>

#include "core/base/errors.h"
#include "core/model/safetensors.h"

namespace spkv {
namespace {
constexpr char kMagic[8] = {'S', 'P', 'K', 'V', 'T', 'O', 'K', '1'};
constexpr size_t kHeader = 8 + 4 + 4 + 8 + 8 + 8;

template <class T>
T read_at(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <class T>
void append(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof(T));
}
}  // namespace

TokenFile::TokenFile(const std::string& path) : path_(path) {
  try {
    map_ = std::make_shared<MappedFile>(path);
  } catch (const FileError& e) {
    throw InputError(std::string(e.what()) + " (expected a token file written by `spkv tokenize`)");
  }
  const uint8_t* p = map_->data();
  const size_t size = map_->size();
  auto bad = [&](const std::string& what) { return InputError(path + ": not a valid spkv token file: " + what); };
  if (size < kHeader || std::memcmp(p, kMagic, 8) != 0) throw bad("missing the SPKVTOK1 header");
  const uint32_t version = read_at<uint32_t>(p + 8);
  if (version != 1 && version != 2) throw bad("version " + std::to_string(version) + " (expected 1 or 2)");
  token_bytes_ = read_at<uint32_t>(p + 12);
  n_tokens_ = int64_t(read_at<uint64_t>(p + 16));
  n_docs_ = int64_t(read_at<uint64_t>(p + 24));
  vocab_size_ = int64_t(read_at<uint64_t>(p + 32));
  if (token_bytes_ != 2 && token_bytes_ != 4) throw bad("token_bytes " + std::to_string(token_bytes_) + " (expected 2 or 4)");
  const size_t tok_end = kHeader + size_t(n_tokens_) * size_t(token_bytes_);
  const size_t indptr_end = tok_end + size_t(n_docs_ + 1) * 8;
  const size_t want = indptr_end + (version == 2 ? size_t(n_tokens_) : 0);
  if (size != want)
    throw bad("size " + std::to_string(size) + " bytes, but the header (" + std::to_string(n_tokens_) + " tokens, " +
              std::to_string(n_docs_) + " documents) implies " + std::to_string(want));
  tokens_ = p + kHeader;
  indptr_ = p + tok_end;
  if (version == 2) counts_ = p + indptr_end;
  if (doc_begin(0) != 0 || doc_begin(n_docs_) != n_tokens_) throw bad("indptr does not span the tokens");
  for (int64_t d = 0; d < n_docs_; ++d)
    if (doc_begin(d + 1) <= doc_begin(d)) throw bad("document " + std::to_string(d) + " is empty or out of order");
}

int64_t TokenFile::doc_begin(int64_t d) const { return int64_t(read_at<uint64_t>(indptr_ + 8 * d)); }

int32_t TokenFile::token(int64_t i) const {
  return token_bytes_ == 2 ? int32_t(read_at<uint16_t>(tokens_ + 2 * i)) : read_at<int32_t>(tokens_ + 4 * i);
}

int64_t TokenFile::doc_of(int64_t i) const {  // the last d with doc_begin(d) <= i
  int64_t lo = 0, hi = n_docs_ - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    doc_begin(mid) <= i ? lo = mid : hi = mid - 1;
  }
  return lo;
}

void write_token_file(const std::string& path, const std::vector<std::vector<int32_t>>& docs, int64_t vocab_size,
                      const std::vector<std::vector<uint8_t>>* counts) {
  const uint32_t tb = vocab_size <= 65536 ? 2 : 4;
  uint64_t n = 0, n_docs = 0;
  for (auto& d : docs) n += d.size(), n_docs += !d.empty();
  if (counts) {
    bool same = counts->size() == docs.size();
    for (size_t d = 0; same && d < docs.size(); ++d) same = (*counts)[d].size() == docs[d].size();
    if (!same) throw ConfigError(path + ": the loss mask does not have one entry per token of every document");
  }
  std::string out(kMagic, 8);
  append<uint32_t>(out, counts ? 2 : 1);
  append<uint32_t>(out, tb);
  append<uint64_t>(out, n);
  append<uint64_t>(out, n_docs);
  append<uint64_t>(out, uint64_t(vocab_size));
  for (auto& d : docs)
    for (int32_t t : d) {
      if (t < 0 || t >= vocab_size)
        throw InputError(path + ": token id " + std::to_string(t) + " is outside the vocabulary (size " +
                         std::to_string(vocab_size) + ")");
      tb == 2 ? append<uint16_t>(out, uint16_t(t)) : append<int32_t>(out, t);
    }
  uint64_t off = 0;
  append<uint64_t>(out, off);
  for (auto& d : docs)
    if (!d.empty()) append<uint64_t>(out, off += d.size());
  if (counts)
    for (auto& c : *counts)
      for (uint8_t v : c) append<uint8_t>(out, v != 0);
  write_file_atomic(path, out);
}

}  // namespace spkv
