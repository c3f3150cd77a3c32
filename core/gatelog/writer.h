// The HDF5 gate log, schema v2 (docs/hdf5-schema.md): every token's id, text, NLL, and for every layer and
// KV head its gate score u (float16) and decision z, with per-document and corpus summaries and an NXdata
// heatmap. GateLogWriter appends documents to LOG.h5.partial from a writer thread, in blocks, flushing at
// most every flush_seconds, so a killed run leaves a readable partial log of every document flushed, which
// --resume continues; close() turns it into LOG.h5. Torch-free (plain arrays in). Not the reader.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/gatelog/schema.h"

namespace spkv {


// The run's provenance and gate settings: root attributes of the file.
struct GateLogHeader {
  std::string tool_version, git_commit, created;  // created: ISO 8601 UTC
  std::string model_path, model_config_json, checkpoint_sha256, tokenizer_path;
  // "hard" (the gates' decisions evict), "dense" (full attention, decisions only logged) or "policy" (an
  // eviction baseline's cache, core/infer/cache_policy.h: `policy` under `budget`)
  std::string gating_mode;
  std::string policy, budget;  // only with gating_mode "policy"

  std::string tap = "attn_norm";  // predictor input: attn_norm or residual
  double tau = 0.5;
  int64_t window = 0, keep_first = 0, context = 0, chunk = 0;
  int64_t n_layers = 0, n_kv_heads = 0;
  int64_t last_queries = 0;  // > 0: /attention is logged, "received_last" over this many final queries
  std::string inputs_json;   // the command's inputs, a JSON list
  std::string split_policy;  // how documents longer than the context were split
  // A shard of a sharded run (docs/distributed.md): shard_index of shard_count, holding the run's documents
  // [shard_first_document, + its own) of corpus_documents. shard_count 0: not a shard (no attributes).
  int64_t shard_index = 0, shard_count = 0, shard_first_document = 0, corpus_documents = 0;
};

// One document as the engine saw it. T tokens, L layers, Hkv KV heads.
struct LoggedDocument {
  std::string id;
  std::vector<int32_t> tokens;         // (T)
  std::vector<std::string> text;       // (T) the bytes each token contributes (BOS: "")
  std::vector<float> nll;              // (T) NLL of each token given its prefix; NaN for the first
  std::vector<uint16_t> u;             // (T, L, Hkv) float16 bit patterns
  std::vector<uint8_t> z;              // (T, L, Hkv) decisions
  std::vector<int32_t> cache_entries;  // (T) K/V rows in the cache after the token, over every layer and head
  std::vector<int64_t> kept, eligible; // (L, Hkv) eligible: tokens some query sees outside the window
  // With attention statistics (header.last_queries > 0): (T, L, Hkv) attention mass each key received,
  // averaged over the query heads of its KV head, from every query and from the last queries.
  std::vector<float> received, received_last;
  std::vector<float> received_far;  // ... and from the queries that see the key from outside the window
  // A policy log: (T, L, Hkv) the position whose append evicted each key, -1 if it was held to the end.
  std::vector<int32_t> evicted_at;
};

class GateLogWriter {
 public:
  // Starts partial_path(path) (neither it nor `path` may exist), or with resume = true reopens a partial
  // log this header matches (same model checksum, tau, window, mode, shape), dropping rows of a document
  // whose write was cut off. Throws FileError naming the file and the mismatching field.
  GateLogWriter(const std::string& path, const GateLogHeader& h, bool resume, double flush_seconds = 5.0);
  static std::string partial_path(const std::string& path);  // path + ".partial"
  ~GateLogWriter();  // writes what is queued and closes, leaving the file marked incomplete; never throws
  GateLogWriter(const GateLogWriter&) = delete;
  GateLogWriter& operator=(const GateLogWriter&) = delete;

  // Document ids already in the file (resume), in order.
  const std::vector<std::string>& existing_ids() const { return existing_ids_; }
  // Queues a document for the writer thread. Rethrows an error of the writer thread.
  void add(LoggedDocument d);
  // Writes what is queued, marks the log complete and moves it to `path`. Rethrows a writer error.
  void close();

 private:
  struct Impl;
  void run();                    // the writer thread
  void finish(bool complete);    // drains the queue, joins the thread, closes the file
  std::unique_ptr<Impl> impl_;
  std::string path_;
  double flush_seconds_;
  bool finished_ = false;
  std::vector<std::string> existing_ids_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<LoggedDocument> queue_;
  bool closing_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace spkv
