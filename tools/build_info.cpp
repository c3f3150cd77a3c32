// The only translation unit compiled with SPKV_VERSION and SPKV_GIT_COMMIT (tools/CMakeLists.txt).
#include "tools/build_info.h"

namespace spkv::cli {

const char* spkv_version() { return SPKV_VERSION; }
const char* spkv_git_commit() { return SPKV_GIT_COMMIT; }

}  // namespace spkv::cli
