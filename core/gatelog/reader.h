// Reads an HDF5 gate log (docs/hdf5-schema.md) for analysis and spkv-studio: the run's settings, the
// per-document summaries, and token ranges of u, z, ids, text and NLL read on demand, so that memory does
// not grow with the file. Torch-free, Qt-free (HDF5's C API). Not the writer (core/gatelog/writer.h).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace spkv {

struct LogInfo {
  std::string path, gating_mode, model_path, created, git_commit, checkpoint_sha256, model_config;
  std::string tokenizer, inputs, split_policy;  // inputs: the run's inputs as a JSON list ("" in older logs)
  int schema_version = 0;
  bool complete = false;
  double tau = 0;
  int64_t window = 0, keep_first = 0, n_layers = 0, n_kv_heads = 0, attention_last_queries = 0;
  int64_t n_documents = 0, n_tokens = 0;
  bool attention_far = false;  // /attention/received_far is present (a dense run with --attention-stats)
  std::string policy, budget;  // a policy log (gating_mode "policy", schema 2): the baseline and its budget
  bool evictions = false;      // /gates/evicted_at is present (a policy log)
  std::string tool_version, tap;
  int64_t context = 0, chunk = 0;
  // A shard of a sharded run (GateLogHeader): shard_count 0 when the log is not one.
  int64_t shard_index = 0, shard_count = 0, shard_first_document = 0, corpus_documents = 0;
};

class GateLogReader {
 public:
  // Opens a gate log read-only. Throws spkv::FileError naming the file when it is not a gate log, has a
  // newer schema than this build reads, or lacks a dataset the schema requires.
  explicit GateLogReader(const std::string& path);
  ~GateLogReader();
  GateLogReader(const GateLogReader&) = delete;
  GateLogReader& operator=(const GateLogReader&) = delete;

  const LogInfo& info() const { return info_; }
  const std::vector<int64_t>& token_offsets() const { return token_offsets_; }  // (D + 1)
  const std::vector<std::string>& document_ids() const { return ids_; }         // (D)
  const std::vector<int64_t>& kept() const { return kept_; }                    // (D, L, Hkv)
  const std::vector<int64_t>& eligible() const { return eligible_; }            // (D, L, Hkv)

  // Token rows [begin, end) of the token-axis datasets.
  std::vector<float> u(int64_t begin, int64_t end) const;                // (n, L, Hkv), float16 widened
  std::vector<uint16_t> u_bits(int64_t begin, int64_t end) const;        // (n, L, Hkv) the float16 bit patterns as stored
  std::vector<uint8_t> z(int64_t begin, int64_t end) const;              // (n, L, Hkv)
  std::vector<int32_t> evicted_at(int64_t begin, int64_t end) const;     // (n, L, Hkv) policy logs
  std::vector<int32_t> token_ids(int64_t begin, int64_t end) const;      // (n)
  std::vector<float> nll(int64_t begin, int64_t end) const;              // (n)
  std::vector<int32_t> cache_entries(int64_t begin, int64_t end) const;  // (n)
  std::vector<std::string> token_text(int64_t begin, int64_t end) const; // (n) UTF-8 bytes of each token
  std::vector<int32_t> positions(int64_t begin, int64_t end) const;      // (n) position in the document
  // /attention: the mass each key received from every query, the last queries, and the far queries.
  std::vector<float> received(int64_t begin, int64_t end) const;       // (n, L, Hkv)
  std::vector<float> received_last(int64_t begin, int64_t end) const;  // (n, L, Hkv)
  std::vector<float> received_far(int64_t begin, int64_t end) const;   // (n, L, Hkv)

  // For the validator (analysis/check_log.h): any dataset's shape, a whole dataset converted to int64 or
  // float64, and a string attribute of an object ("/" = the root), scalar or one-dimensional.
  std::vector<int64_t> shape(const std::string& dataset) const;
  std::vector<int64_t> whole_int64(const std::string& dataset) const;
  std::vector<double> whole_double(const std::string& dataset) const;
  std::vector<std::string> attribute_strings(const std::string& object, const std::string& name) const;
  bool exists(const std::string& path) const;  // a link at `path` ("summary/density")

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  LogInfo info_;
  std::vector<int64_t> token_offsets_, kept_, eligible_;
  std::vector<std::string> ids_;
};

}  // namespace spkv
