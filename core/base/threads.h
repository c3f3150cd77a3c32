// The CPU thread policy: how many OpenMP threads (LibTorch's intra-op threads and the kernels') spkv uses.
// `--threads N` fixes N. Without it the count is automatic: the cores this process may run on, minus those
// that other processes are keeping busy right now, at least 1; long loops re-choose every few seconds, so a
// job that started on a quiet machine steps down when another one starts beside it, and back up when it
// ends. The reason (docs/design.md, "Threads"): an OpenMP parallel region waits for its slowest thread, and a
// thread that shares its core with a busy process waits for the scheduler at every region: with 2 threads on
// 2 cores, a one-core busy loop made decode 40x slower. One thread on the free core loses nothing.
// Not the kernels' own choice of when a region is worth opening (kernels/cpu: by the size of the work).
#pragma once

namespace spkv::threads {

// The cores in this process's affinity mask.
int usable_cores();
// Processes (threads) other than this one's that are runnable right now, as the kernel's run queue counts
// them (/proc/stat procs_running, less this process's running threads): the smallest of a few samples over
// about 4 ms, so that a short-lived task does not count. 0 when /proc cannot be read.
int busy_elsewhere();
// The automatic count now: usable_cores() - busy_elsewhere(), at least 1.
int choose();

// fixed > 0: always that many (--threads); 0: automatic. Applies the count and returns it. `apply` sets the
// count (LibTorch's at::set_num_threads in the spkv binary; OpenMP's omp_set_num_threads when null).
int configure(int fixed, void (*apply)(int) = nullptr);
// Under the automatic policy, re-chooses if the last choice is more than `interval_s` old; a no-op otherwise.
// Long loops (spkv run, train, eval) call it between units of work. Returns the current count.
int rebalance(double interval_s = 2.0);
// The current count.
int current();

}  // namespace spkv::threads
