// Helpers shared by the test suites: where ../shared is, temporary folders, running the spkv binary.
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

namespace spkv::test {
namespace fs = std::filesystem;

// ../shared beside the checkout, or "" when absent (a user's fresh clone has none).
inline std::string shared_dir() {
  const fs::path p = fs::path(SPKV_SOURCE_DIR) / ".." / "shared";
  return fs::exists(p / "models") ? fs::canonical(p).string() : std::string();
}

#define SPKV_REQUIRE_SHARED()                                                               \
  do {                                                                                      \
    if (::spkv::test::shared_dir().empty())                                                 \
      GTEST_SKIP() << "../shared is absent (it holds the stories260K checkpoint and golden " \
                      "outputs); skipping";                                                 \
  } while (0)

// A fresh, empty temporary folder, removed when the object goes away.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("spkv-test-" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

inline std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs `binary` with `args` (already shell-quoted) under the name SPKV_BIN (its argv[0], which usage lines
// print), capturing stdout and stderr.
inline RunResult run_spkv_as(const std::string& binary, const std::string& args) {
  TempDir tmp;
  const std::string cmd = "bash -c 'exec -a \"$0\" \"$@\"' " + quote(SPKV_BIN) + " " + quote(binary) + " " + args +
                          " >" + (tmp / "out") + " 2>" + (tmp / "err");
  RunResult r;
  const int status = std::system(cmd.c_str());
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_file(tmp / "out");
  r.err = read_file(tmp / "err");
  return r;
}

// Runs the spkv binary with `args` (already shell-quoted), capturing stdout and stderr.
inline RunResult run_spkv(const std::string& args) { return run_spkv_as(SPKV_BIN, args); }

#ifdef SPKV_BIN
// Every gate log a test writes also passes `spkv check` (each invariant of docs/hdf5-schema.md).
inline void expect_valid_log(const std::string& path) {
  const RunResult r = run_spkv("check " + quote(path));
  EXPECT_EQ(r.exit_code, 0) << "spkv check " << path << ": " << r.err;
}
#endif

}  // namespace spkv::test
