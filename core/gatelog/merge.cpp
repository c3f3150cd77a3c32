// Shard logs of one run -> one gate log (merge.h): checks, then every document copied in order through
// GateLogWriter, which recomputes the summaries.
#include "core/gatelog/merge.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>

#include "core/base/errors.h"
#include "core/base/progress.h"
#include "core/gatelog/reader.h"
#include "core/gatelog/writer.h"

namespace spkv {

namespace {

GateLogHeader header_of(const LogInfo& i) {
  GateLogHeader h;
  h.tool_version = i.tool_version, h.git_commit = i.git_commit, h.created = i.created;
  h.model_path = i.model_path, h.model_config_json = i.model_config, h.checkpoint_sha256 = i.checkpoint_sha256;
  h.tokenizer_path = i.tokenizer, h.gating_mode = i.gating_mode, h.tap = i.tap, h.tau = i.tau;
  h.window = i.window, h.keep_first = i.keep_first, h.context = i.context, h.chunk = i.chunk;
  h.n_layers = i.n_layers, h.n_kv_heads = i.n_kv_heads, h.last_queries = i.attention_last_queries;
  h.inputs_json = i.inputs, h.split_policy = i.split_policy, h.policy = i.policy, h.budget = i.budget;
  return h;
}

// The first field in which shard b differs from shard a ("" if none): what makes them two runs.
std::string differing_field(const LogInfo& a, const LogInfo& b) {
  const std::pair<const char*, bool> same[] = {
      {"checkpoint_sha256", a.checkpoint_sha256 == b.checkpoint_sha256},
      {"model_config", a.model_config == b.model_config},
      {"tokenizer", a.tokenizer == b.tokenizer},
      {"inputs", a.inputs == b.inputs},
      {"split_policy", a.split_policy == b.split_policy},
      {"git_commit", a.git_commit == b.git_commit},
      {"gating_mode", a.gating_mode == b.gating_mode},
      {"policy", a.policy == b.policy},
      {"budget", a.budget == b.budget},
      {"tap", a.tap == b.tap},
      {"tau", a.tau == b.tau},
      {"window", a.window == b.window},
      {"keep_first", a.keep_first == b.keep_first},
      {"context", a.context == b.context},
      {"chunk", a.chunk == b.chunk},
      {"attention_last_queries", a.attention_last_queries == b.attention_last_queries},
      {"attention/received_far", a.attention_far == b.attention_far},
      {"shard_count", a.shard_count == b.shard_count},
      {"corpus_documents", a.corpus_documents == b.corpus_documents},
  };
  for (auto& [name, ok] : same)
    if (!ok) return name;
  return "";
}

}  // namespace

MergeSummary merge_gate_logs(const std::vector<std::string>& shards, const std::string& out) {
  if (shards.empty()) throw InputError("merge: no shard logs given");
  std::vector<std::unique_ptr<GateLogReader>> logs;
  for (const std::string& s : shards) {
    logs.push_back(std::make_unique<GateLogReader>(s));
    const LogInfo& i = logs.back()->info();
    if (!i.complete) throw FileError(s, "the shard is incomplete (its run stopped early): finish it with `spkv run ... --resume`");
    if (i.shard_count == 0) throw FileError(s, "not a shard log (no shard_count attribute): a log of a whole run needs no merge");
  }
  const LogInfo& first = logs[0]->info();
  std::map<int64_t, size_t> by_index;  // shard index -> position in `shards`
  for (size_t k = 0; k < logs.size(); ++k) {
    const LogInfo& i = logs[k]->info();
    const std::string field = differing_field(first, i);
    if (!field.empty())
      throw FileError(shards[k], "belongs to another run than " + shards[0] + ": its " + field + " differs");
    if (i.shard_index < 0 || i.shard_index >= i.shard_count)
      throw FileError(shards[k], "shard_index " + std::to_string(i.shard_index) + " is outside [0, shard_count " +
                                     std::to_string(i.shard_count) + ")");
    auto [it, inserted] = by_index.emplace(i.shard_index, k);
    if (!inserted)
      throw FileError(shards[k], "is shard " + std::to_string(i.shard_index) + " of " + std::to_string(i.shard_count) +
                                     ", and so is " + shards[it->second]);
  }
  for (int64_t s = 0; s < first.shard_count; ++s)
    if (!by_index.count(s))
      throw InputError("merge: shard " + std::to_string(s) + " of " + std::to_string(first.shard_count) +
                       " is missing (given: " + std::to_string(logs.size()) + " shard logs)");
  int64_t next = 0, tokens = 0;
  for (auto& [index, k] : by_index) {
    const LogInfo& i = logs[k]->info();
    if (i.shard_first_document != next)
      throw FileError(shards[k], "holds documents from " + std::to_string(i.shard_first_document) + ", but the shards before it end at " +
                                     std::to_string(next) + (i.shard_first_document > next ? " (documents missing)" : " (documents twice)"));
    next += i.n_documents, tokens += i.n_tokens;
  }
  if (next != first.corpus_documents)
    throw FileError(shards[by_index.rbegin()->second], "the shards hold " + std::to_string(next) + " documents, the run had " +
                                                           std::to_string(first.corpus_documents));

  std::error_code ec;
  std::filesystem::remove(GateLogWriter::partial_path(out), ec);  // an interrupted merge starts again
  GateLogWriter writer(out, header_of(first), /*resume=*/false);
  Progress bar("merge", tokens, "tok");
  const int64_t LH = first.n_layers * first.n_kv_heads;
  // Rows are read in blocks of whole documents (about 64k tokens): one read per dataset and block, so that
  // a compressed chunk is inflated once, not once per document in it.
  constexpr int64_t kBlockTokens = 1 << 16;
  for (auto& [index, k] : by_index) {
    const GateLogReader& r = *logs[k];
    const auto& off = r.token_offsets();
    const int64_t D = r.info().n_documents;
    for (int64_t d0 = 0, d1 = 0; d0 < D; d0 = d1) {
      for (d1 = d0 + 1; d1 < D && off[size_t(d1) + 1] - off[size_t(d0)] <= kBlockTokens;) ++d1;
      const int64_t b0 = off[size_t(d0)], e1 = off[size_t(d1)];
      const auto ids = r.token_ids(b0, e1);
      const auto text = r.token_text(b0, e1);
      const auto nll = r.nll(b0, e1);
      const auto u = r.u_bits(b0, e1);
      const auto z = r.z(b0, e1);
      const auto entries = r.cache_entries(b0, e1);
      const auto evicted = first.evictions ? r.evicted_at(b0, e1) : std::vector<int32_t>();
      std::vector<float> received, received_last, received_far;
      if (first.attention_last_queries > 0) {
        received = r.received(b0, e1), received_last = r.received_last(b0, e1);
        if (first.attention_far) received_far = r.received_far(b0, e1);
      }
      for (int64_t d = d0; d < d1; ++d) {
        const size_t b = size_t(off[size_t(d)] - b0), e = size_t(off[size_t(d) + 1] - b0), lh = size_t(LH);
        auto rows = [&](const auto& v, size_t width) { return std::vector(v.begin() + b * width, v.begin() + e * width); };
        LoggedDocument doc;
        doc.id = r.document_ids()[size_t(d)];
        doc.tokens = rows(ids, 1), doc.text = rows(text, 1), doc.nll = rows(nll, 1);
        doc.u = rows(u, lh), doc.z = rows(z, lh), doc.cache_entries = rows(entries, 1);
        if (!evicted.empty()) doc.evicted_at = rows(evicted, lh);
        doc.kept.assign(r.kept().begin() + d * LH, r.kept().begin() + (d + 1) * LH);
        doc.eligible.assign(r.eligible().begin() + d * LH, r.eligible().begin() + (d + 1) * LH);
        if (!received.empty()) doc.received = rows(received, lh), doc.received_last = rows(received_last, lh);
        if (!received_far.empty()) doc.received_far = rows(received_far, lh);
        writer.add(std::move(doc));
        bar.add(int64_t(e - b));
      }
    }
  }
  writer.close();
  bar.finish();
  return {int64_t(logs.size()), next, tokens};
}

}  // namespace spkv
