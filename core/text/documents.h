// Reading corpora into documents: text files (optionally split on a separator), folders of them, and JSONL
// files with a "text" field and an optional "id". Torch-free. Not tokenization.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace spkv {

struct Document {
  std::string id;    // "id" of a JSONL line, else "<file>#<n>" (n counts the file's documents from 0)
  std::string text;  // UTF-8
};

// Documents from a file or a folder (walked recursively in sorted order; links to folders are not
// followed): .txt files split on `separator` ("" = whole files, surrounding whitespace trimmed, empty
// parts skipped) and .jsonl files, one document per non-blank line. Throws InputError naming the file
// (and line) for an unreadable file, a JSONL line that is not an object with a string "text", text that
// is not valid UTF-8 (with the byte offset), or an input with no documents.
std::vector<Document> read_documents(const std::string& input, const std::string& separator);
std::vector<Document> read_all_documents(const std::vector<std::string>& inputs, const std::string& separator);

// A tokenized document, or a piece of one that fits the model's context.
struct TokenPiece {
  std::string id;
  std::vector<int32_t> tokens;
  bool continues = false;  // a later piece: tokens[0] is the previous piece's last token, context only
};
// The split policy of `spkv run`, in words for the log's split_policy attribute.
extern const char* const kSplitPolicy;
// Cuts ids (BOS first) into pieces of at most `context` tokens (context >= 2) by kSplitPolicy: the pieces
// overlap by one token, as `spkv eval`'s windows do, so a long document is scored the same by both.
std::vector<TokenPiece> split_to_context(const std::string& id, const std::vector<int32_t>& ids, int64_t context);

// Splits items 0..n-1 with these token counts into `parts` contiguous ranges of nearly equal token counts:
// boundary k is the item boundary nearest k/parts of the total (ties to the earlier one), so each range is
// within one item's tokens of an equal share. Returns parts + 1 boundaries, from 0 to n. Depends on nothing
// but the counts and `parts`: every process of a sharded run computes the same ranges.
std::vector<size_t> balanced_ranges(const std::vector<int64_t>& tokens, int64_t parts);

// The byte offset of the first invalid UTF-8 sequence in s, or -1 if s is valid UTF-8.
long utf8_error_offset(const std::string& s);

}  // namespace spkv
