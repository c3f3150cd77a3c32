// Process groups for running spkv on several processes and machines, over torch.distributed's c10d as
// LibTorch ships it: a TCPStore for the rendezvous and ProcessGroupGloo for the collectives (CPU tensors).
// Launches are read the way users launch everything else: torchrun's environment (RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR, MASTER_PORT), Slurm's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the master
// being the first host of SLURM_JOB_NODELIST), or explicit flags. A rank that dies or stops answering makes
// the others fail with a DistributedError that names it, within the group's timeout (docs/distributed.md).
// Not a transport of our own, and not the sharding of any command (that is each command's).
#pragma once
#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace spkv::dist {

// Where this process sits in a launch.
struct Launch {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;        // torchrun's default
  std::string source = "single";  // "single" | "flags" | "torchrun" | "slurm"
};

// Explicit settings (command-line flags); unset fields are -1 / empty.
struct LaunchFlags {
  int rank = -1, world_size = -1;
  std::string master;  // "host:port"
};

// Flags first, then torchrun's environment, then Slurm's, else a single process. Throws ConfigError naming
// the flag or variable that is malformed or inconsistent (rank outside [0, world_size), a port outside
// 1..65535, half of a pair missing).
Launch resolve_launch(const LaunchFlags& flags = {});

// The first host of a Slurm node list: "node[003-005,9],gpu1" -> "node003". Throws ConfigError when empty.
std::string first_slurm_host(const std::string& nodelist);

// A process group. Collectives block; on a dead or silent peer they throw DistributedError naming it.
class Group {
 public:
  // Forms the group (rank 0 hosts the store). Every rank must call it within `timeout`, which also bounds
  // every collective afterwards.
  Group(const Launch& launch, std::chrono::milliseconds timeout = std::chrono::seconds(300));
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const;
  int size() const;
  // Sums the values over the ranks, in place (int64 or double; each rank passes the same count).
  void allreduce_sum(std::vector<double>& v);
  void allreduce_sum(std::vector<int64_t>& v);
  // Every rank's value, in rank order.
  std::vector<int64_t> all_gather(int64_t v);
  void barrier();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace spkv::dist
