// The bookkeeping of a sharded `spkv run` (docs/distributed.md): where the shard logs, the manifest and the
// progress files live, the manifest itself (which shard holds which documents), each shard's progress file,
// and `spkv run --status`, which reads them. Torch-free. Not the run (run.cpp) and not the merge
// (core/gatelog/merge.h).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace spkv {

// OUT = runs/x.h5: shard 1 of 3 is runs/x.shard-00001-of-00003.h5, the manifest runs/x.manifest.json.
std::string shard_log_path(const std::string& out, int64_t index, int64_t count);
std::string manifest_path(const std::string& out);
std::string progress_path(const std::string& shard_log);  // SHARD.progress.json
bool log_complete(const std::string& log);  // LOG exists and no LOG.partial: its run finished

struct ShardEntry {
  int64_t index = 0, first_document = 0, documents = 0, tokens = 0;
  std::string file;  // the shard log's path
  std::string first_id, last_id;
};

struct Manifest {
  std::string out, checkpoint_sha256, inputs_json, created;
  int64_t shard_count = 0, documents = 0, tokens = 0;
  std::vector<ShardEntry> shards;
};
void write_manifest(const std::string& path, const Manifest& m);  // atomically
Manifest read_manifest(const std::string& path);                  // throws FileError naming the field

// A shard's SHARD.progress.json, rewritten (atomically) at most every 5 s and at the end: documents and
// tokens done of those assigned, the rate, and the state (running, stopped, done).
class ShardProgress {
 public:
  ShardProgress(const ShardEntry& shard, int64_t documents_done, int64_t tokens_done);
  void add(int64_t tokens);  // one more document
  void finish(const char* state);

 private:
  void write(const char* state);
  ShardEntry shard_;
  int64_t documents_done_, tokens_done_, tokens_at_start_;
  std::chrono::steady_clock::time_point start_, last_write_;
};

// Prints, from OUT's manifest and its shards' progress files and logs, every shard's documents and tokens
// done, its state and rate, the total with an ETA, and whether OUT is merged. Throws FileError when OUT has
// no manifest (a run in one process shows its progress on its terminal).
void print_run_status(const std::string& out);

}  // namespace spkv
