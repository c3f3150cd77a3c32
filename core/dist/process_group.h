// Process groups for running spkv on several processes and machines, over torch.distributed's c10d as
// LibTorch ships it: a TCPStore for the rendezvous and ProcessGroupGloo for the collectives (CPU tensors).
// Launches are read the way users launch everything else: torchrun's environment (RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR, MASTER_PORT), Slurm's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the master
// being the first host of SLURM_JOB_NODELIST), or explicit flags. A rank that dies or stops answering makes
// the others fail with a DistributedError that names it, within the group's timeout (docs/distributed.md).
// Not a transport of our own, and not the sharding of any command (that is each command's).
#pragma once
#include <atomic>
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
  // Sums n floats over the ranks, in place (a bucket of gradients: one collective for all of them).
  void allreduce_sum(float* data, int64_t n);
  // Rank `root`'s n floats, copied to every rank, in place.
  void broadcast(float* data, int64_t n, int root = 0);
  // Every rank's vector (lengths may differ), concatenated in rank order.
  std::vector<double> all_gather_concat(const std::vector<double>& mine);
  // Every rank's value, in rank order.
  std::vector<int64_t> all_gather(int64_t v);
  void barrier();
  // Marks this rank as having reached `stage` and waits, with no time limit, until every rank has: the end
  // of work whose length differs between ranks (a shard of a corpus). A rank whose heartbeat stops before it
  // gets there makes this throw DistributedError naming it, within about 10 s. Returns false at once when
  // *stop becomes true.
  bool wait_for_all(const std::string& stage, const std::atomic<bool>* stop = nullptr);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace spkv::dist
