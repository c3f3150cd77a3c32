// `spkv dist check`: forms a process group the way a distributed spkv job would (torchrun's or Slurm's
// environment, or --rank/--world-size/--master) and runs its collectives once: the smoke test of a launch
// before a long job. docs/distributed.md.
#include <fmt/core.h>

#include <chrono>
#include <thread>
#include <unistd.h>

#include "core/dist/process_group.h"
#include "tools/cli.h"

namespace spkv {
namespace {
struct DistCheck {
  dist::LaunchFlags flags;
  double timeout_s = 60, hold_s = 0;
};

void cmd_dist_check(const DistCheck& o) {
  const dist::Launch l = dist::resolve_launch(o.flags);
  const auto t0 = std::chrono::steady_clock::now();
  dist::Group g(l, std::chrono::milliseconds(int64_t(o.timeout_s * 1000)));
  const double formed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<int64_t> v{int64_t(l.rank) + 1};
  g.allreduce_sum(v);
  const int64_t n = l.world_size;
  if (v[0] != n * (n + 1) / 2) throw DistributedError(fmt::format("rank {}: allreduce gave {}, expected {}", l.rank, v[0], n * (n + 1) / 2));
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const auto pids = g.all_gather(int64_t(getpid()));
  if (o.hold_s > 0) {  // a launch's fault tests kill a rank once it says it is in the group
    fmt::print("rank {} of {}: in the group, holding {} s\n", l.rank, n, o.hold_s);
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::milliseconds(int64_t(o.hold_s * 1000)));
  }
  g.barrier();
  fmt::print("rank {} of {} (local rank {}, {}, host {}, pid {}): group formed in {:.2f} s at {}:{}; allreduce and "
             "all_gather agree across {} ranks\n",
             l.rank, n, l.local_rank, l.source, host, pids[size_t(l.rank)], formed, l.master_addr, l.master_port, pids.size());
}
}  // namespace

void cli::add_launch_flags(CLI::App* app, dist::LaunchFlags& flags, double& timeout_s) {
  app->add_option("--rank", flags.rank, "this process's rank in a launch (default: torchrun's RANK or Slurm's SLURM_PROCID)");
  app->add_option("--world-size", flags.world_size, "processes in the launch (default: WORLD_SIZE or SLURM_NTASKS)");
  app->add_option("--master", flags.master, "HOST:PORT of rank 0's store (default: MASTER_ADDR:MASTER_PORT)");
  app->add_option("--dist-timeout", timeout_s, "seconds for every rank to join the launch, and for each collective")
      ->check(CLI::PositiveNumber);
}

std::unique_ptr<dist::Group> cli::join_launch(const dist::LaunchFlags& flags, double timeout_s) {
  const dist::Launch l = dist::resolve_launch(flags);
  if (l.world_size == 1) return nullptr;
  return std::make_unique<dist::Group>(l, std::chrono::milliseconds(int64_t(timeout_s * 1000)));
}

void cli::add_dist_commands(CLI::App& app, Commands& out) {
  auto* dist = add_command(app, "dist");
  dist->require_subcommand(1);
  auto o = options<DistCheck>();
  auto* check = dist->add_subcommand("check", "form the process group of this launch and run its collectives once");
  check->add_option("--rank", o->flags.rank, "this process's rank (default: torchrun's RANK or Slurm's SLURM_PROCID)");
  check->add_option("--world-size", o->flags.world_size, "processes in the group (default: WORLD_SIZE or SLURM_NTASKS)");
  check->add_option("--master", o->flags.master, "HOST:PORT of rank 0's store (default: MASTER_ADDR:MASTER_PORT)");
  check->add_option("--timeout", o->timeout_s, "seconds to form the group and for each collective")->check(CLI::PositiveNumber);
  check->add_option("--hold", o->hold_s, "seconds to stay in the group before the last collective (to try a launch's fault handling)")
      ->check(CLI::NonNegativeNumber);
  out.push_back({check, [o] { return cmd_dist_check(*o), true; }});
}

}  // namespace spkv
