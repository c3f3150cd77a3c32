// The JSON text spkv writes (logs' attributes, --json reports, layouts): bytes that are not UTF-8, such as a
// Latin-1 file name, become U+FFFD instead of an exception. Header-only, torch-free.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace spkv {

// indent >= 0: pretty-printed with a final newline; -1: one line, no newline.
inline std::string json_text(const nlohmann::json& j, int indent = 2) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace) + (indent >= 0 ? "\n" : "");
}

}  // namespace spkv
