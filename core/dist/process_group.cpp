// Process groups over c10d (process_group.h): the launch environments, a TCPStore rendezvous hosted by rank
// 0, ProcessGroupGloo collectives, and a heartbeat per rank in the store, which is how a failed collective
// finds out which rank stopped.
#include "core/dist/process_group.h"

#include <torch/torch.h>
// Gloo's headers: Debian's libgloo-dev. PyTorch's own LibTorch (pip) ships none, so there a Group cannot form
// and says why; everything else of spkv works.
#if __has_include(<gloo/algorithm.h>)
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>  // needs USE_C10D_GLOO (core/CMakeLists.txt)
#define SPKV_HAVE_GLOO 1
#else
#include <torch/csrc/distributed/c10d/Backend.hpp>
#define SPKV_HAVE_GLOO 0
#endif
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>

#include "core/base/errors.h"

// LibTorch's log threshold: c10d logs a failed connection as an ERROR line on stderr, which the probe below
// expects and reports itself, in one line. Debian's LibTorch logs through glog (C10_USE_GLOG), whose flag is
// declared here rather than through glog's header (its CHECK and LOG macros clash with LibTorch's); PyTorch's
// own builds log through c10, whose flag is caffe2_log_level. In both, 3 is FATAL.
#ifdef C10_USE_GLOG
namespace fLI {
extern int FLAGS_minloglevel;
}
static int& torch_log_threshold() { return fLI::FLAGS_minloglevel; }
#else
static int& torch_log_threshold() { return FLAGS_caffe2_log_level; }
#endif

namespace spkv::dist {
namespace {
std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

int to_int(const std::string& s, const std::string& what) {
  size_t used = 0;
  int v = 0;
  try {
    v = std::stoi(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != s.size()) throw ConfigError(what + " must be an integer, got '" + s + "'");
  return v;
}

std::string first_line(std::string s) {
  const size_t nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  return s;
}

// A connection to rank 0's store (rank 0's first one hosts it). `member`: one of the world_size connections
// that the store counts before it lets the group form (each rank's first); the heartbeat and the probe are
// extra connections and not counted.
c10::intrusive_ptr<c10d::TCPStore> connect(const Launch& l, bool member, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions o;
  o.port = uint16_t(l.master_port), o.isServer = member && l.rank == 0, o.timeout = timeout;
  o.numWorkers = size_t(l.world_size), o.waitWorkers = member;
  return c10::make_intrusive<c10d::TCPStore>(l.master_addr, o);
}

std::string heartbeat_key(int r) { return "spkv/heartbeat/" + std::to_string(r); }
}  // namespace

std::string first_slurm_host(const std::string& nodelist) {
  if (nodelist.empty()) throw ConfigError("SLURM_JOB_NODELIST is empty: cannot tell the master host (set MASTER_ADDR)");
  const size_t comma = nodelist.find(','), bracket = nodelist.find('[');
  if (bracket == std::string::npos || (comma != std::string::npos && comma < bracket)) return nodelist.substr(0, comma);
  const size_t end = nodelist.find_first_of("-,]", bracket + 1);
  if (end == std::string::npos) throw ConfigError("SLURM_JOB_NODELIST '" + nodelist + "' has an unclosed '['");
  return nodelist.substr(0, bracket) + nodelist.substr(bracket + 1, end - bracket - 1);
}

Launch resolve_launch(const LaunchFlags& f) {
  Launch l;
  auto master = [&l](const std::string& addr, const std::string& port, const std::string& what) {
    if (!addr.empty()) l.master_addr = addr;
    if (!port.empty()) l.master_port = to_int(port, what);
  };
  if (f.rank >= 0 || f.world_size >= 0 || !f.master.empty()) {
    if (f.rank < 0 || f.world_size < 0) throw ConfigError("--rank and --world-size are given together");
    l.rank = f.rank, l.world_size = f.world_size, l.source = "flags";
    if (!f.master.empty()) {
      const size_t colon = f.master.rfind(':');
      if (colon == std::string::npos) throw ConfigError("--master must be HOST:PORT, got '" + f.master + "'");
      master(f.master.substr(0, colon), f.master.substr(colon + 1), "--master's port");
    }
    if (!env("LOCAL_RANK").empty()) l.local_rank = to_int(env("LOCAL_RANK"), "LOCAL_RANK");
  } else if (!env("RANK").empty() || !env("WORLD_SIZE").empty()) {
    if (env("RANK").empty() || env("WORLD_SIZE").empty())
      throw ConfigError(std::string(env("RANK").empty() ? "WORLD_SIZE" : "RANK") + " is set but " +
                        (env("RANK").empty() ? "RANK" : "WORLD_SIZE") + " is not (torchrun sets both)");
    l.rank = to_int(env("RANK"), "RANK"), l.world_size = to_int(env("WORLD_SIZE"), "WORLD_SIZE"), l.source = "torchrun";
    if (!env("LOCAL_RANK").empty()) l.local_rank = to_int(env("LOCAL_RANK"), "LOCAL_RANK");
    master(env("MASTER_ADDR"), env("MASTER_PORT"), "MASTER_PORT");
  } else if (!env("SLURM_PROCID").empty() && !env("SLURM_NTASKS").empty()) {
    l.rank = to_int(env("SLURM_PROCID"), "SLURM_PROCID"), l.world_size = to_int(env("SLURM_NTASKS"), "SLURM_NTASKS");
    l.source = "slurm";
    if (!env("SLURM_LOCALID").empty()) l.local_rank = to_int(env("SLURM_LOCALID"), "SLURM_LOCALID");
    const std::string nodes = !env("SLURM_JOB_NODELIST").empty() ? env("SLURM_JOB_NODELIST") : env("SLURM_NODELIST");
    master(!env("MASTER_ADDR").empty() ? env("MASTER_ADDR") : first_slurm_host(nodes), env("MASTER_PORT"), "MASTER_PORT");
  }
  if (l.world_size < 1) throw ConfigError("the world size must be at least 1, got " + std::to_string(l.world_size));
  if (l.rank < 0 || l.rank >= l.world_size)
    throw ConfigError("rank " + std::to_string(l.rank) + " is outside [0, " + std::to_string(l.world_size) + ") (" + l.source + ")");
  if (l.master_port < 1 || l.master_port > 65535)
    throw ConfigError("the master port must be in 1..65535, got " + std::to_string(l.master_port));
  return l;
}

struct Group::Impl {
  Launch l;
  std::chrono::milliseconds timeout;
  c10::intrusive_ptr<c10d::TCPStore> store;
#if SPKV_HAVE_GLOO
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
#else
  c10::intrusive_ptr<c10d::Backend> pg;  // never formed: Group() throws first
#endif
  std::thread heartbeat;
  std::atomic<bool> stop{false};
  bool failed = false;  // a collective failed: the group is broken, and leaving it waits for nobody

  // Which ranks stopped: their heartbeat counters do not move over 2.5 s. Rank 0 hosts the store, so a
  // store that cannot be reached means rank 0 is gone.
  std::string diagnose() const {
    const int loglevel = torch_log_threshold();
    torch_log_threshold() = 3;  // FATAL only, while probing
    struct Restore {
      int level;
      ~Restore() { torch_log_threshold() = level; }
    } restore{loglevel};
    try {
      auto probe = connect(l, false, std::chrono::seconds(5));
      std::vector<int64_t> before(size_t(l.world_size));
      for (int r = 0; r < l.world_size; ++r) before[size_t(r)] = probe->add(heartbeat_key(r), 0);
      std::this_thread::sleep_for(std::chrono::milliseconds(2500));
      std::string dead;
      for (int r = 0; r < l.world_size; ++r)
        if (r != l.rank && probe->add(heartbeat_key(r), 0) == before[size_t(r)]) dead += (dead.empty() ? "" : ", ") + std::to_string(r);
      return dead.empty() ? "every rank's heartbeat still moves (a collective timed out)" : "rank " + dead + " stopped";
    } catch (const std::exception& e) {
      if (l.rank != 0) return "rank 0 stopped (its store at " + l.master_addr + ":" + std::to_string(l.master_port) + " is unreachable)";
      return std::string("the store could not be read: ") + first_line(e.what());
    }
  }

  template <class Fn>
  void run(const char* what, Fn&& fn) {
    try {
      fn();
    } catch (const std::exception& e) {
      failed = true;
      throw DistributedError("rank " + std::to_string(l.rank) + " of " + std::to_string(l.world_size) + ": " + what +
                             " failed: " + diagnose() + " [" + first_line(e.what()) + "]");
    }
  }
};

Group::Group(const Launch& launch, std::chrono::milliseconds timeout) : impl_(std::make_unique<Impl>()) {
  Impl& g = *impl_;
  g.l = launch, g.timeout = timeout;
  const std::string where = "rank " + std::to_string(launch.rank) + " of " + std::to_string(launch.world_size);
#if SPKV_HAVE_GLOO
  try {
    g.store = connect(launch, /*member=*/true, timeout);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    // This process's address as the others reach it: its host name, or loopback on a one-host launch.
    opts->devices.push_back(launch.master_addr == "127.0.0.1" || launch.master_addr == "localhost"
                                ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                : c10d::ProcessGroupGloo::createDefaultDevice());
    g.pg = c10::make_intrusive<c10d::ProcessGroupGloo>(g.store, launch.rank, launch.world_size, opts);
  } catch (const std::exception& e) {
    throw DistributedError(where + ": the group did not form within " + std::to_string(timeout.count() / 1000) +
                           " s at " + launch.master_addr + ":" + std::to_string(launch.master_port) + " [" +
                           first_line(e.what()) + "]");
  }
#else
  throw DistributedError(where + ": this spkv was built against a LibTorch without Gloo's headers (PyTorch's own "
                         "builds ship none); rebuild with Debian's libtorch-dev and libgloo-dev for distributed runs");
#endif
  // The heartbeat: its own store connection (a TCPStore client is not shared between threads).
  auto beat = connect(launch, false, timeout);
  g.heartbeat = std::thread([&g, beat, key = heartbeat_key(launch.rank)] {
    while (!g.stop) {
      try {
        beat->add(key, 1);
      } catch (const std::exception&) {
        return;  // the store is gone: the next collective reports it
      }
      for (int i = 0; i < 10 && !g.stop; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
}

Group::~Group() {
  Impl& g = *impl_;
  g.stop = true;
  if (g.heartbeat.joinable()) g.heartbeat.join();
  // Rank 0 hosts the store: it leaves last, so that no rank loses the store while it still talks to it.
  if (g.failed) return;
  try {
    g.pg->barrier()->wait();
  } catch (const std::exception&) {
  }
}

int Group::rank() const { return impl_->l.rank; }
int Group::size() const { return impl_->l.world_size; }

void Group::allreduce_sum(std::vector<double>& v) {
  auto t = torch::tensor(v, torch::kFloat64);
  std::vector<at::Tensor> ts{t};
  impl_->run("allreduce", [&] { impl_->pg->allreduce(ts)->wait(); });
  std::copy_n(t.data_ptr<double>(), v.size(), v.begin());
}

void Group::allreduce_sum(std::vector<int64_t>& v) {
  auto t = torch::tensor(v, torch::kInt64);
  std::vector<at::Tensor> ts{t};
  impl_->run("allreduce", [&] { impl_->pg->allreduce(ts)->wait(); });
  std::copy_n(t.data_ptr<int64_t>(), v.size(), v.begin());
}

void Group::allreduce_sum(float* data, int64_t n) {
  std::vector<at::Tensor> ts{torch::from_blob(data, {n}, torch::kFloat32)};
  impl_->run("allreduce", [&] { impl_->pg->allreduce(ts)->wait(); });
}

void Group::broadcast(float* data, int64_t n, int root) {
  std::vector<at::Tensor> ts{torch::from_blob(data, {n}, torch::kFloat32)};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  impl_->run("broadcast", [&] { impl_->pg->broadcast(ts, o)->wait(); });
}

std::vector<int64_t> Group::all_gather(int64_t v) {
  std::vector<at::Tensor> in{torch::full({1}, v, torch::kInt64)};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < size(); ++r) out[0].push_back(torch::empty({1}, torch::kInt64));
  impl_->run("all_gather", [&] { impl_->pg->allgather(out, in)->wait(); });
  std::vector<int64_t> all;
  for (auto& t : out[0]) all.push_back(t.item<int64_t>());
  return all;
}

std::vector<double> Group::all_gather_concat(const std::vector<double>& mine) {
  const std::vector<int64_t> sizes = all_gather(int64_t(mine.size()));
  const int64_t longest = std::max<int64_t>(1, *std::max_element(sizes.begin(), sizes.end()));
  auto padded = torch::zeros({longest}, torch::kFloat64);  // Gloo's allgather takes equal sizes
  std::copy(mine.begin(), mine.end(), padded.data_ptr<double>());
  std::vector<at::Tensor> in{padded};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < size(); ++r) out[0].push_back(torch::empty({longest}, torch::kFloat64));
  impl_->run("all_gather", [&] { impl_->pg->allgather(out, in)->wait(); });
  std::vector<double> all;
  for (int r = 0; r < size(); ++r) all.insert(all.end(), out[0][size_t(r)].data_ptr<double>(), out[0][size_t(r)].data_ptr<double>() + sizes[size_t(r)]);
  return all;
}

void Group::barrier() {
  impl_->run("barrier", [&] { impl_->pg->barrier()->wait(); });
}

bool Group::wait_for_all(const std::string& stage, const std::atomic<bool>* stop) {
  Impl& g = *impl_;
  const Launch& l = g.l;
  const std::string where = "rank " + std::to_string(l.rank) + " of " + std::to_string(l.world_size) + ": waiting for every rank to " + stage;
  auto key = [&](int r) { return "spkv/stage/" + stage + "/" + std::to_string(r); };
  using clock = std::chrono::steady_clock;
  constexpr auto kSilent = std::chrono::seconds(10);
  try {
    auto s = connect(l, false, g.timeout);  // its own connection: a store client is not shared between threads
    s->add(key(l.rank), 1);
    // The first rank to see a peer stop writes why, so that every rank reports the same cause (rank 0 then
    // lingers a second before it leaves, since its store goes with it).
    const std::string failed_key = "spkv/stage/" + stage + "/failed";
    auto fail = [&](const std::string& cause, bool publish) {
      g.failed = true;
      if (publish) {
        s->set(failed_key, std::vector<uint8_t>(cause.begin(), cause.end()));
        if (l.rank == 0) std::this_thread::sleep_for(std::chrono::seconds(1));
      }
      throw DistributedError(where + ": " + cause);
    };
    std::vector<int64_t> beats(size_t(l.world_size), -1);
    std::vector<clock::time_point> moved(size_t(l.world_size), clock::now());
    while (true) {
      if (s->check({failed_key})) {
        const auto cause = s->get(failed_key);
        fail(std::string(cause.begin(), cause.end()), false);
      }
      bool all = true;
      for (int r = 0; r < l.world_size; ++r) {
        if (s->add(key(r), 0) > 0) continue;
        all = false;
        const int64_t b = s->add(heartbeat_key(r), 0);
        if (b != beats[size_t(r)]) beats[size_t(r)] = b, moved[size_t(r)] = clock::now();
        else if (clock::now() - moved[size_t(r)] > kSilent) fail("rank " + std::to_string(r) + " stopped (no heartbeat for 10 s)", true);
      }
      if (all) return true;
      if (stop && *stop) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  } catch (const DistributedError&) {
    throw;
  } catch (const std::exception& e) {
    g.failed = true;
    throw DistributedError(where + ": " + (l.rank != 0 ? "rank 0 stopped (its store at " + l.master_addr + ":" + std::to_string(l.master_port) + " is unreachable)" : "the store failed") +
                           " [" + first_line(e.what()) + "]");
  }
}

}  // namespace spkv::dist
