// Typed reading of one JSON field for the config, recipe and layout parsers: a ConfigError that names the
// field ("WHERE: field 'KEY' must be an integer, got 1.5" or "... has the wrong type (VALUE)"). An integer
// field refuses a float, which nlohmann would cast (undefined behaviour when out of range). Header-only,
// torch-free.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>

#include "core/base/errors.h"

namespace spkv {

template <class T>
T json_field(const nlohmann::json& v, const std::string& key, const std::string& where) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>)
    if (v.is_number_float()) throw ConfigError(where + ": field '" + key + "' must be an integer, got " + v.dump());
  try {
    return v.get<T>();
  } catch (const nlohmann::json::exception&) {
    throw ConfigError(where + ": field '" + key + "' has the wrong type (" + v.dump() + ")");
  }
}

}  // namespace spkv
