#include "core/text/documents.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "core/base/errors.h"

namespace spkv {
namespace fs = std::filesystem;

long utf8_error_offset(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned c = p[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > n) return long(i);
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return long(i);
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are invalid.
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return long(i);
    i += len;
  }
  return -1;
}

namespace {
void check_utf8(const std::string& text, const std::string& where) {
  const long bad = utf8_error_offset(text);
  if (bad >= 0) throw InputError(where + ": invalid UTF-8 at byte " + std::to_string(bad) + " of the document");
}

void read_jsonl(const fs::path& f, std::vector<Document>& docs) {
  std::ifstream in(f, std::ios::binary);
  if (!in) throw InputError(f.string() + ": cannot open");
  std::string line;
  int64_t count = 0;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = f.string() + ":" + std::to_string(n);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw InputError(where + ": not JSON (" + e.what() + ")");
    }
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
      throw InputError(where + ": expected an object with a string field 'text'");
    Document d;
    d.text = j["text"].get<std::string>();
    check_utf8(d.text, where);
    if (j.contains("id")) d.id = j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump();
    if (d.id.empty()) d.id = f.string() + "#" + std::to_string(count);
    ++count;
    docs.push_back(std::move(d));
  }
}

void read_text(const fs::path& f, const std::string& separator, std::vector<Document>& docs) {
  std::ifstream in(f, std::ios::binary);
  if (!in) throw InputError(f.string() + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  check_utf8(text, f.string());
  size_t pos = 0;
  int part = 0;
  while (pos <= text.size()) {
    const size_t end = separator.empty() ? std::string::npos : text.find(separator, pos);
    const std::string doc = text.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    const size_t a = doc.find_first_not_of(" \t\r\n"), b = doc.find_last_not_of(" \t\r\n");
    if (a != std::string::npos) docs.push_back({f.string() + "#" + std::to_string(part++), doc.substr(a, b - a + 1)});
    if (end == std::string::npos) break;
    pos = end + separator.size();
  }
}
}  // namespace

std::vector<Document> read_documents(const std::string& input, const std::string& separator) {
  std::vector<fs::path> files;
  if (fs::is_directory(input)) {
    // Not recursive_directory_iterator (see remove_tree in core/model/safetensors.h); like it, links to folders
    // are not followed.
    std::function<void(const fs::path&)> walk = [&](const fs::path& dir) {
      for (auto& e : fs::directory_iterator(dir))
        if (e.is_directory() && !e.is_symlink()) walk(e.path());
        else if (e.is_regular_file() && (e.path().extension() == ".txt" || e.path().extension() == ".jsonl"))
          files.push_back(e.path());
    };
    walk(input);
    std::sort(files.begin(), files.end());
  } else if (fs::is_regular_file(input)) {
    files.push_back(input);
  } else {
    throw InputError(input + ": no such file or directory");
  }
  std::vector<Document> docs;
  for (auto& f : files) {
    if (f.extension() == ".jsonl")
      read_jsonl(f, docs);
    else
      read_text(f, separator, docs);
  }
  if (docs.empty()) throw InputError(input + ": no documents (no non-empty .txt or .jsonl text)");
  return docs;
}

const char* const kSplitPolicy =
    "a document of more than `context` tokens (BOS included) is cut into pieces of at most `context` tokens that "
    "overlap by one: the first holds its first `context` tokens, each later piece the token before its first "
    "scored one (no BOS: training windows cut a long document anywhere) and the next context - 1 tokens, so every "
    "token after BOS is scored once; piece k >= 1 is a document of its own with id '<id>@<k>' and its own cache, "
    "whose first token is context only (no NLL, no text)";

std::vector<TokenPiece> split_to_context(const std::string& id, const std::vector<int32_t>& ids, int64_t context) {
  if (int64_t(ids.size()) <= context) return {{id, ids}};
  std::vector<TokenPiece> out{{id, std::vector<int32_t>(ids.begin(), ids.begin() + context)}};
  for (int64_t begin = context, k = 1; begin < int64_t(ids.size()); begin += context - 1, ++k) {
    const int64_t end = std::min<int64_t>(int64_t(ids.size()), begin + context - 1);
    out.push_back({id + "@" + std::to_string(k), std::vector<int32_t>(ids.begin() + begin - 1, ids.begin() + end), true});
  }
  return out;
}

std::vector<Document> read_all_documents(const std::vector<std::string>& inputs, const std::string& separator) {
  std::vector<Document> docs;
  for (auto& in : inputs) {
    auto d = read_documents(in, separator);
    docs.insert(docs.end(), d.begin(), d.end());
  }
  return docs;
}

std::vector<size_t> balanced_ranges(const std::vector<int64_t>& tokens, int64_t parts) {
  std::vector<int64_t> prefix(tokens.size() + 1, 0);
  for (size_t i = 0; i < tokens.size(); ++i) prefix[i + 1] = prefix[i] + tokens[i];
  // Compared in integers: prefix * parts against k * total.
  auto scaled = [&](size_t i) { return __int128(prefix[i]) * parts; };
  std::vector<size_t> bounds{0};
  for (int64_t k = 1; k < parts; ++k) {
    const __int128 target = __int128(k) * prefix.back();
    // The first boundary at or past the target, and the first one of the plateau just before it.
    const size_t hi = size_t(std::partition_point(prefix.begin(), prefix.end(), [&](int64_t p) { return __int128(p) * parts < target; }) -
                             prefix.begin());
    size_t best = hi;
    if (hi > 0) {
      const size_t lo = size_t(std::lower_bound(prefix.begin(), prefix.end(), prefix[hi - 1]) - prefix.begin());
      if (target - scaled(lo) <= scaled(hi) - target) best = lo;
    }
    bounds.push_back(std::max(best, bounds.back()));
  }
  bounds.push_back(tokens.size());
  return bounds;
}

}  // namespace spkv
