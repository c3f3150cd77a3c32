// Typed exceptions thrown by the spkv libraries. Each carries what was wrong and where (file, tensor or
// field); only main() turns them into a one-line message and an exit code. No exit() in library code.
#pragma once
#include <stdexcept>
#include <string>

namespace spkv {

// Base of every spkv error; what() is a complete one-line message.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An error about one file. Message: "<file>: <problem>".
struct FileError : Error {
  FileError(const std::string& file, const std::string& problem) : Error(file + ": " + problem), file(file) {}
  std::string file;
};

// A checkpoint or weight file is malformed or contradicts its config.
struct CheckpointError : FileError {
  using FileError::FileError;
};

// A gate log breaks an invariant of its schema (docs/hdf5-schema.md); found by `spkv check`.
struct LogViolation : FileError {
  using FileError::FileError;
};

// A config (config.json, recipe, command-line setting) has a missing, mistyped or invalid field.
struct ConfigError : Error {
  using Error::Error;
};

// A tokenizer file is malformed or unsupported.
struct TokenizerError : FileError {
  using FileError::FileError;
};

// Input data (text corpus, prompt, token ids) is unusable.
struct InputError : Error {
  using Error::Error;
};

// A distributed run failed: a rank died or timed out, or the group could not form. The message names the
// rank (core/dist/process_group.h).
struct DistributedError : Error {
  using Error::Error;
};

}  // namespace spkv
