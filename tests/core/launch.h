// Launching several spkv processes on loopback the way torchrun does (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT), for the tests of distributed commands.
#pragma once
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace spkv::test {

inline int free_port() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET, a.sin_addr.s_addr = htonl(INADDR_LOOPBACK), a.sin_port = 0;
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t n = sizeof a;
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &n);
  close(s);
  return ntohs(a.sin_port);
}

struct RankResult {
  int exit_code = -1;
  std::string out, err;
};

// Starts one process `spkv --threads 1 ARGS[r]` per rank r with torchrun's variables, all at once;
// `kill_rank` >= 0 is killed (SIGKILL) once its stdout holds `kill_when` (or 60 s after the start): a rank is
// killed at a known point of its run however long a loaded machine takes to start it.
// Every process runs under `timeout 120`.
inline std::vector<RankResult> launch(const std::vector<std::string>& args, int kill_rank = -1,
                                      const std::string& kill_when = "") {
  const int n = int(args.size());
  test::TempDir tmp;
  const int port = free_port();
  std::string script;
  for (int r = 0; r < n; ++r)
    script += "(RANK=" + std::to_string(r) + " WORLD_SIZE=" + std::to_string(n) + " LOCAL_RANK=" + std::to_string(r) +
              " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " exec timeout 120 " + SPKV_BIN +
              " --threads 1 " + args[size_t(r)] + " >" + (tmp / ("o" + std::to_string(r))) + " 2>" +
              (tmp / ("e" + std::to_string(r))) + ") & p" + std::to_string(r) + "=$!\n";
  if (kill_rank >= 0)  // the spkv process itself, timeout's child
    script += "for i in $(seq 600); do grep -qF '" + kill_when + "' " + (tmp / ("o" + std::to_string(kill_rank))) +
              " && break; sleep 0.1; done; kill -9 $(pgrep -P $p" + std::to_string(kill_rank) + ")\n";
  for (int r = 0; r < n; ++r)
    script += "wait $p" + std::to_string(r) + "; echo $? >" + (tmp / ("c" + std::to_string(r))) + "\n";
  test::write_file(tmp / "launch.sh", script);
  std::system(("bash " + (tmp / "launch.sh")).c_str());
  std::vector<RankResult> out(n);
  for (int r = 0; r < n; ++r) {
    out[r].exit_code = std::atoi(test::read_file(tmp / ("c" + std::to_string(r))).c_str());
    out[r].out = test::read_file(tmp / ("o" + std::to_string(r)));
    out[r].err = test::read_file(tmp / ("e" + std::to_string(r)));
  }
  return out;
}

// `n` ranks of the same command.
inline std::vector<RankResult> launch(int n, const std::string& args, int kill_rank = -1,
                                      const std::string& kill_when = "") {
  return launch(std::vector<std::string>(size_t(n), args), kill_rank, kill_when);
}

}  // namespace spkv::test
