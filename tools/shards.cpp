// Shard paths, the manifest, progress files and `spkv run --status` (shards.h).
#include "tools/shards.h"

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/base/errors.h"
#include "core/base/json_field.h"
#include "core/base/json_text.h"
#include "core/gatelog/writer.h"
#include "core/model/safetensors.h"
#include "tools/run.h"

namespace spkv {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
std::string without_h5(const std::string& out) {
  const fs::path p(out);
  return p.extension() == ".h5" ? (p.parent_path() / p.stem()).string() : out;
}

json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileError(path, "cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    throw FileError(path, std::string("invalid JSON: ") + e.what());
  }
}

template <class T>
T field(const json& j, const char* name, const std::string& path) {
  if (!j.contains(name)) throw FileError(path, std::string("missing field '") + name + "'");
  return json_field<T>(j.at(name), name, path);
}
}  // namespace

std::string shard_log_path(const std::string& out, int64_t index, int64_t count) {
  return fmt::format("{}.shard-{:05d}-of-{:05d}.h5", without_h5(out), index, count);
}
std::string manifest_path(const std::string& out) { return without_h5(out) + ".manifest.json"; }
std::string progress_path(const std::string& shard_log) { return shard_log + ".progress.json"; }
bool log_complete(const std::string& log) { return fs::exists(log) && !fs::exists(GateLogWriter::partial_path(log)); }

void write_manifest(const std::string& path, const Manifest& m) {
  json j{{"out", m.out}, {"created", m.created}, {"checkpoint_sha256", m.checkpoint_sha256},
         {"inputs", json::parse(m.inputs_json.empty() ? "[]" : m.inputs_json)}, {"shard_count", m.shard_count},
         {"documents", m.documents}, {"tokens", m.tokens}, {"shards", json::array()}};
  for (const ShardEntry& s : m.shards)
    j["shards"].push_back({{"index", s.index}, {"file", s.file}, {"first_document", s.first_document},
                           {"documents", s.documents}, {"tokens", s.tokens}, {"first_id", s.first_id}, {"last_id", s.last_id}});
  write_file_atomic(path, json_text(j) + "\n");
}

Manifest read_manifest(const std::string& path) {
  const json j = read_json(path);
  Manifest m;
  m.out = field<std::string>(j, "out", path), m.created = field<std::string>(j, "created", path);
  m.checkpoint_sha256 = field<std::string>(j, "checkpoint_sha256", path);
  m.shard_count = field<int64_t>(j, "shard_count", path);
  m.documents = field<int64_t>(j, "documents", path), m.tokens = field<int64_t>(j, "tokens", path);
  if (!j.contains("shards") || !j["shards"].is_array()) throw FileError(path, "missing list 'shards'");
  for (const json& s : j["shards"]) {
    ShardEntry e;
    e.index = field<int64_t>(s, "index", path), e.file = field<std::string>(s, "file", path);
    e.first_document = field<int64_t>(s, "first_document", path), e.documents = field<int64_t>(s, "documents", path);
    e.tokens = field<int64_t>(s, "tokens", path);
    e.first_id = field<std::string>(s, "first_id", path), e.last_id = field<std::string>(s, "last_id", path);
    m.shards.push_back(e);
  }
  if (int64_t(m.shards.size()) != m.shard_count)
    throw FileError(path, fmt::format("lists {} shards but shard_count is {}", m.shards.size(), m.shard_count));
  return m;
}

ShardProgress::ShardProgress(const ShardEntry& shard, int64_t documents_done, int64_t tokens_done)
    : shard_(shard), documents_done_(documents_done), tokens_done_(tokens_done), tokens_at_start_(tokens_done),
      start_(std::chrono::steady_clock::now()), last_write_(start_) {
  write("running");
}

void ShardProgress::add(int64_t tokens) {
  documents_done_ += 1, tokens_done_ += tokens;
  if (std::chrono::steady_clock::now() - last_write_ >= std::chrono::seconds(5)) write("running");
}

void ShardProgress::finish(const char* state) { write(state); }

void ShardProgress::write(const char* state) {
  const auto now = std::chrono::steady_clock::now();
  const double seconds = std::chrono::duration<double>(now - start_).count();
  last_write_ = now;
  const json j{{"index", shard_.index}, {"state", state}, {"updated", now_iso8601()},
               {"documents_done", documents_done_}, {"documents", shard_.documents},
               {"tokens_done", tokens_done_}, {"tokens", shard_.tokens},
               {"tokens_per_second", seconds > 0 ? double(tokens_done_ - tokens_at_start_) / seconds : 0.0}};
  try {
    write_file_atomic(progress_path(shard_.file), json_text(j) + "\n");
  } catch (const std::exception&) {
    // Progress is a courtesy to `--status`: a full disk shows up in the log's own writes.
  }
}

void print_run_status(const std::string& out) {
  const std::string mpath = manifest_path(out);
  if (!fs::exists(mpath))
    throw FileError(out, "no manifest " + mpath + ": --status reports sharded runs (a run in one process shows its progress on its terminal)");
  const Manifest m = read_manifest(mpath);
  fmt::print("{}: {} shards, {} documents, {} tokens (manifest {}, {})\n", out, m.shard_count, m.documents, m.tokens, mpath, m.created);
  fmt::print("{:>5}  {:>21}  {:>25}  {:<8}  {:>10}  {}\n", "shard", "documents", "tokens", "state", "tok/s", "updated");
  const bool merged = log_complete(out);
  int64_t docs = 0, toks = 0, eta_s = 0;
  double rate = 0;
  bool eta_known = true;
  for (const ShardEntry& s : m.shards) {
    int64_t d = 0, t = 0;
    double r = 0;
    std::string state = "waiting", updated = "-";
    if (fs::exists(progress_path(s.file))) {
      const json p = read_json(progress_path(s.file));
      d = field<int64_t>(p, "documents_done", progress_path(s.file)), t = field<int64_t>(p, "tokens_done", progress_path(s.file));
      state = field<std::string>(p, "state", progress_path(s.file)), updated = field<std::string>(p, "updated", progress_path(s.file));
      r = field<double>(p, "tokens_per_second", progress_path(s.file));
    }
    if (log_complete(s.file) || merged) d = s.documents, t = s.tokens, state = "done";
    if (state == "running") rate += r;
    if (t < s.tokens) {  // the run ends with its slowest shard
      if (state == "running" && r > 0) eta_s = std::max(eta_s, int64_t(double(s.tokens - t) / r));
      else eta_known = false;
    }
    docs += d, toks += t;
    fmt::print("{:>5}  {:>21}  {:>25}  {:<8}  {:>10.0f}  {}\n", s.index,
               fmt::format("{}/{} ({:.0f}%)", d, s.documents, s.documents ? 100.0 * double(d) / double(s.documents) : 100.0),
               fmt::format("{}/{}", t, s.tokens), state, r, updated);
  }
  const std::string eta = toks == m.tokens ? "0:00:00"
                          : eta_known       ? fmt::format("{}:{:02d}:{:02d}", eta_s / 3600, (eta_s / 60) % 60, eta_s % 60)
                                            : "- (a shard is not running)";
  fmt::print("{:>5}  {:>21}  {:>25}  {:<8}  {:>10.0f}  eta {}\n", "all",
             fmt::format("{}/{} ({:.0f}%)", docs, m.documents, m.documents ? 100.0 * double(docs) / double(m.documents) : 100.0),
             fmt::format("{}/{}", toks, m.tokens), merged ? "merged" : docs == m.documents ? "to merge" : "running", rate, eta);
  fmt::print("{}: {}\n", out, merged ? "merged, complete" : "not merged yet");
}

}  // namespace spkv
