// SHA-256 (FIPS 180-4) of files, for the provenance of logs (the checkpoint a gate log came from).
// Torch-free, no dependencies. Not for anything security-related.
#pragma once
#include <string>
#include <vector>

namespace spkv {

// Lower-case hex digest of the concatenated bytes of `files`, in the given order. Throws FileError for a
// file that cannot be read.
std::string sha256_files(const std::vector<std::string>& files);
// The digest of a string (tests use it against the FIPS examples).
std::string sha256_string(const std::string& bytes);

}  // namespace spkv
