// The version and the git commit this build was configured at: what --version prints and what gate logs and
// layout files record as their provenance. One small translation unit (build_info.cpp) holds them, so a new
// commit recompiles that file alone rather than every command.
#pragma once

namespace spkv::cli {

const char* spkv_version();     // the project version, e.g. "0.1.0"
const char* spkv_git_commit();  // 12 hex digits, or "" when the source tree is not a git checkout

}  // namespace spkv::cli
