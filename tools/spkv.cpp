// `spkv`, the command line's front: it answers --help, --version and `info` itself, without LibTorch, and
// replaces itself (execv: the same process, pid and arguments) with `spkv-torch` beside it for every other
// command. Loading LibTorch costs about 0.4 s (288 shared libraries and their static initializers), which a
// question about the tool or a model should not pay. Both binaries build their top level from cli_base.h.
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "tools/cli_base.h"

namespace {

// The first argument that is not a flag (nor the value of a global flag): the command, or "" for none.
std::string command_of(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    bool takes_value = false;
    for (const char* f : spkv::cli::kValueFlags) takes_value = takes_value || a == f;
    if (takes_value) ++i;
    else if (a.empty() || a[0] != '-') return a;
  }
  return "";
}

// spkv-torch in the folder of this executable.
std::string torch_binary() {
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  const std::filesystem::path self = n > 0 ? std::filesystem::path(std::string(exe, size_t(n))) : "spkv";
  return (self.parent_path() / "spkv-torch").string();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace spkv::cli;
  const std::string command = command_of(argc, argv);
  if (!command.empty() && command != "info") {
    const std::string bin = torch_binary();
    execv(bin.c_str(), argv);  // argv[0] stays what the user typed, so messages and usage read the same
    std::fprintf(stderr, "spkv: error: %s: cannot run the LibTorch half of spkv: %s\n", bin.c_str(), std::strerror(errno));
    return 1;
  }
  CLI::App app;
  GlobalOptions global;
  setup_top_level(app, global);
  Commands commands;
  for (const CommandName& c : kCommands) {
    if (std::string(c.name) == "info") add_info_command(app, commands);
    else add_command(app, c.name);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (const Command& c : commands)
      if (*c.app) c.run();
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::string message = e.what();
    message.resize(std::min(message.size(), message.find('\n')));
    std::fprintf(stderr, "spkv: error: %s\n", message.c_str());
    return 1;
  }
  return 0;
}
