// `spkv run`: streams every document of a corpus through the engine (the compacted SP-KV cache, or full
// attention with --dense) and logs every token's gate scores and decisions to an HDF5 gate log. The
// main job of the toolkit; everything downstream (analysis, notebooks, spkv-studio) reads its output.
#include "tools/run.h"

#include <fmt/core.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <ctime>
#include <set>

#include "core/base/errors.h"
#include "core/base/json_text.h"
#include "core/base/progress.h"
#include "core/base/sha256.h"
#include "core/base/threads.h"
#include "core/dist/process_group.h"
#include "core/gatelog/merge.h"
#include "core/gatelog/rule.h"
#include "core/gatelog/writer.h"
#include "core/infer/engine.h"
#include "core/model/attention_stats.h"
#include "core/model/checkpoint.h"
#include "core/text/documents.h"
#include "core/text/tokenizer.h"
#include "tools/cli.h"
#include "tools/shards.h"

namespace spkv {

std::string now_iso8601() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

namespace {

void print_density(const std::vector<int64_t>& kept, const std::vector<int64_t>& eligible, int64_t L, int64_t Hkv) {
  int64_t k = 0, e = 0;
  for (size_t i = 0; i < kept.size(); ++i) k += kept[i], e += eligible[i];
  if (e == 0) return fmt::print("density     - (no key left the window)\n");
  fmt::print("density     {:.4f} (kept / eligible keys, {} eligible key-heads)\n", double(k) / double(e), e);
  fmt::print("{:<8}", "layer");
  for (int64_t h = 0; h < Hkv; ++h) fmt::print(" {:>7}", fmt::format("head {}", h));
  fmt::print("\n");
  for (int64_t il = 0; il < L; ++il) {
    fmt::print("{:<8}", il);
    for (int64_t h = 0; h < Hkv; ++h) {
      const int64_t i = il * Hkv + h;
      fmt::print(" {:>7.3f}", eligible[i] ? double(kept[i]) / double(eligible[i]) : std::nan(""));
    }
    fmt::print("\n");
  }
}

}  // namespace

LoggedDocument log_record(const TokenPiece& p, const ScoredDocument& s, const Tokenizer& tok, const ModelConfig& c,
                          bool gated, const BudgetedKvCache* baseline, int64_t W) {
  const int64_t T = int64_t(p.tokens.size()), L = c.n_layers, Hkv = c.n_kv_heads, LH = L * Hkv;
  if (!baseline) W = c.spkv.window;
  LoggedDocument d;
  d.id = p.id, d.tokens = p.tokens;
  for (size_t t = 0; t < p.tokens.size(); ++t) {
    if (t == 0 && p.continues) d.text.emplace_back();  // the previous piece's last token: its text is there
    else d.text.push_back(tok.token_bytes(t == 0 ? -1 : p.tokens[t - 1], p.tokens[t]));
  }
  d.nll.push_back(std::nanf(""));
  for (double x : s.nll) d.nll.push_back(float(x));
  if (baseline) {  // a policy log: when each key left, z = u = 1 for those that never did
    d.evicted_at.assign(size_t(T * LH), -1);
    std::vector<int64_t> evicted_by(size_t(T), 0);
    for (int64_t il = 0; il < L; ++il)
      for (int64_t hk = 0; hk < Hkv; ++hk)
        for (const auto& e : baseline->evictions(0, il, hk))
          d.evicted_at[size_t(e.pos * LH + il * Hkv + hk)] = int32_t(e.at), ++evicted_by[size_t(e.at)];
    for (int32_t e : d.evicted_at) d.z.push_back(e == -1), d.u.push_back(e == -1 ? 0x3C00 : 0);  // float16 1.0 and 0
    const EligibleKeys elig = eligible_keys(T, W, 0);
    d.kept.assign(size_t(LH), 0), d.eligible.assign(size_t(LH), elig.count());
    for (int64_t t = elig.begin; t < elig.end; ++t)
      for (int64_t i = 0; i < LH; ++i) d.kept[size_t(i)] += d.z[size_t(t * LH + i)];
    int64_t gone = 0;
    for (int64_t t = 0; t < T; ++t) d.cache_entries.push_back(int32_t((t + 1) * LH - (gone += evicted_by[size_t(t)])));
    return d;
  }
  auto u = s.utility.to(torch::kHalf).contiguous();  // (T, L, Hkv)
  const auto* ub = reinterpret_cast<const uint16_t*>(u.data_ptr<at::Half>());
  d.u.assign(ub, ub + T * L * Hkv);
  auto z = s.keep.to(torch::kUInt8).contiguous();  // (T, L, Hkv)
  d.z.assign(z.data_ptr<uint8_t>(), z.data_ptr<uint8_t>() + T * L * Hkv);
  const int64_t first = c.spkv.keep_first;
  const EligibleKeys elig = eligible_keys(T, W, first);
  d.kept.assign(L * Hkv, 0), d.eligible.assign(L * Hkv, elig.count());
  for (int64_t t = elig.begin; t < elig.end; ++t)
    for (int64_t i = 0; i < L * Hkv; ++i) d.kept[i] += d.z[t * L * Hkv + i];
  int64_t stored = 0;  // kept eligible tokens that have left the ring, over every (layer, head)
  for (int64_t t = 0; t < T; ++t) {
    if (!gated) {
      d.cache_entries.push_back(int32_t((t + 1) * L * Hkv));
      continue;
    }
    if (t - W >= first)  // the token leaving the ring at t
      for (int64_t i = 0; i < L * Hkv; ++i) stored += d.z[(t - W) * L * Hkv + i];
    d.cache_entries.push_back(int32_t(spkv_cache_entries(t + 1, W, first, L * Hkv, stored)));
  }
  return d;
}

namespace {

// Which part of the corpus this process runs: shard `index` of `count` (count 1: all of it).
struct ShardChoice {
  int64_t index = 0, count = 1;
  bool distributed = false;  // a launch of `count` processes (a group forms); else --shard or one process
};

ShardChoice choose_shard(const RunOptions& o, const dist::Launch& l) {
  if (l.world_size > 1) {
    if (!o.shard.empty())
      throw ConfigError("--shard " + o.shard + ": this is a launch of " + std::to_string(l.world_size) + " processes (" + l.source +
                        "), which splits the corpus already; use one or the other");
    return {l.rank, l.world_size, true};
  }
  if (o.shard.empty()) return {};
  ShardChoice c;
  char slash = 0, rest = 0;
  long long i = -1, n = -1;
  if (std::sscanf(o.shard.c_str(), "%lld%c%lld%c", &i, &slash, &n, &rest) != 3 || slash != '/' || n < 1 || i < 0 || i >= n)
    throw ConfigError("--shard " + o.shard + ": expected I/N with 0 <= I < N (e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)");
  c.index = i, c.count = n;
  return c;
}

}  // namespace

bool cmd_run(const RunOptions& o, const std::atomic<bool>& stop) {
  if (o.status) return print_run_status(o.out), true;
  const dist::Launch launch = dist::resolve_launch(o.launch);
  const ShardChoice shard = choose_shard(o, launch);
  const bool sharded = shard.count > 1;
  const std::string log_path = sharded ? shard_log_path(o.out, shard.index, shard.count) : o.out;
  if (o.resume && log_complete(o.out)) {
    fmt::print(stderr, "{} is already complete: nothing to resume\n", o.out);
    return true;
  }
  // Formed first: a rank that cannot join fails every rank early.
  const std::unique_ptr<dist::Group> group = shard.distributed ? cli::join_launch(o.launch, o.dist_timeout) : nullptr;
  Checkpoint ck = load_checkpoint(o.model);
  LlamaForCausalLM model(ck.config);
  model->load(ck);
  ModelConfig& c = model->config;
  const bool policy = !o.policy.empty();
  if (!c.spkv.enabled && !policy)
    throw ConfigError(o.model + ": the model has no spkv block, so there are no gates to log (adapt it with `spkv train`, "
                                "or log an eviction baseline with --policy)");
  if (policy && (o.dense || o.attention_stats)) throw ConfigError("--policy excludes --dense and --attention-stats");
  if (policy && !c.spkv.enabled && o.window <= 0)
    throw ConfigError("--policy on " + o.model + ", a model without SP-KV, needs --window (the recent keys the policy keeps)");
  if (o.tau > 0) {
    if (o.tau >= 1) throw ConfigError("--tau must be in (0, 1), got " + std::to_string(o.tau));
    model->gates.tau = o.tau;
  }
  if (o.window > 0) c.spkv.window = o.window;
  // One GPU per process of a launch: cuda means cuda:LOCAL_RANK.
  model->to(parse_device(shard.distributed && o.device == "cuda" ? "cuda:" + std::to_string(launch.local_rank) : o.device));
  if (o.attention_stats && !o.dense)
    throw ConfigError("--attention-stats needs --dense: the statistics are those of full attention");
  auto tok = load_tokenizer(o.tokenizer.empty() ? default_tokenizer_path(o.model) : o.tokenizer);
  if (tok->vocab_size() > c.vocab_size)
    throw TokenizerError(tok->path, fmt::format("has {} tokens but the model's vocab_size is {}", tok->vocab_size(), c.vocab_size));
  auto docs = read_all_documents(o.inputs, o.separator);
  if (o.max_docs > 0 && int64_t(docs.size()) > o.max_docs) docs.resize(size_t(o.max_docs));

  std::vector<TokenPiece> pieces;
  std::vector<int64_t> piece_tokens;
  for (auto& d : docs)
    for (auto& p : split_to_context(d.id, encode_showing_progress(*tok, d.text, /*bos=*/true, /*eos=*/false), c.max_seq_len))
      piece_tokens.push_back(int64_t(p.tokens.size())), pieces.push_back(std::move(p));
  if (sharded && int64_t(pieces.size()) < shard.count)
    throw ConfigError(fmt::format("{} shards for {} documents: use at most {}", shard.count, pieces.size(), pieces.size()));

  std::set<std::string> files;
  for (auto& [name, f] : ck.origin) files.insert(f);
  GateLogHeader h;
  h.tool_version = o.tool_version, h.git_commit = o.git_commit, h.created = now_iso8601();
  h.model_path = o.model, h.model_config_json = c.to_hf_json(), h.tokenizer_path = tok->path;
  h.checkpoint_sha256 = sha256_files({files.begin(), files.end()});
  EngineOptions eo;
  eo.chunk = o.chunk, eo.dense = o.dense, eo.kv_bf16 = o.kv_bf16;
  const bool matched = o.budget == "matched" || o.budget == "matched-uniform";
  std::unique_ptr<Engine> spkv_pass;  // a matched budget: the model's own SP-KV run of each piece
  if (policy) {
    if (matched && !c.spkv.enabled) throw ConfigError("--budget " + o.budget + " needs a model with SP-KV gates");
    if (matched) spkv_pass = std::make_unique<Engine>(model, EngineOptions{});
    eo.baseline = BaselineOptions{parse_policy(o.policy), parse_budget(matched ? "slots:0" : o.budget), o.window};
  }
  Engine engine(model, eo);
  const int64_t W = policy ? (o.window > 0 ? o.window : c.spkv.window) : c.spkv.window;
  h.gating_mode = policy ? "policy" : engine.gated() ? "hard" : "dense", h.tap = c.spkv.tap, h.tau = model->gates.tau;
  if (policy) h.policy = eo.baseline->policy.name(), h.budget = o.budget;
  h.window = W, h.keep_first = policy ? 0 : c.spkv.keep_first, h.context = c.max_seq_len, h.chunk = policy ? 1 : o.chunk;
  h.n_layers = c.n_layers, h.n_kv_heads = c.n_kv_heads;
  // File names need not be UTF-8: bytes that are not become U+FFFD in this JSON (the ids keep the bytes).
  h.inputs_json = json_text(o.inputs, -1);
  h.split_policy = kSplitPolicy;
  h.last_queries = o.attention_stats ? o.last_queries : 0;

  // The documents of each shard: contiguous, balanced by tokens, the same on every process.
  const std::vector<size_t> bounds = balanced_ranges(piece_tokens, shard.count);
  Manifest manifest;
  manifest.out = o.out, manifest.checkpoint_sha256 = h.checkpoint_sha256, manifest.inputs_json = h.inputs_json;
  manifest.created = h.created, manifest.shard_count = shard.count, manifest.documents = int64_t(pieces.size());
  for (int64_t k = 0; k < shard.count; ++k) {
    ShardEntry e;
    e.index = k, e.file = shard_log_path(o.out, k, shard.count);
    e.first_document = int64_t(bounds[size_t(k)]), e.documents = int64_t(bounds[size_t(k) + 1] - bounds[size_t(k)]);
    for (size_t i = bounds[size_t(k)]; i < bounds[size_t(k) + 1]; ++i) e.tokens += piece_tokens[i];
    e.first_id = pieces[bounds[size_t(k)]].id, e.last_id = pieces[bounds[size_t(k) + 1] - 1].id;
    manifest.tokens += e.tokens;
    manifest.shards.push_back(e);
  }
  const ShardEntry mine = sharded ? manifest.shards[size_t(shard.index)] : ShardEntry{0, 0, int64_t(pieces.size()), manifest.tokens, o.out, "", ""};
  if (sharded) {
    h.shard_index = shard.index, h.shard_count = shard.count, h.shard_first_document = mine.first_document;
    h.corpus_documents = int64_t(pieces.size());
    // Every shard writes the same manifest (a job array's shards never talk to each other); rank 0 alone
    // when they form a group.
    if (!shard.distributed || shard.index == 0) write_manifest(manifest_path(o.out), manifest);
  }
  const size_t first = size_t(mine.first_document), end = first + size_t(mine.documents);

  const bool finished = o.resume && log_complete(log_path);  // a shard finished before the launch was interrupted
  if (finished) fmt::print(stderr, "{} is already complete\n", log_path);
  if (!finished) {
    GateLogWriter log(log_path, h, o.resume, o.flush_seconds);
    const auto& done = log.existing_ids();
    const std::string partial = GateLogWriter::partial_path(log_path);
    if (done.size() > end - first)
      throw FileError(partial, fmt::format("cannot resume: the log holds {} documents, the inputs give only {}", done.size(), end - first));
    int64_t skipped_tokens = 0;
    for (size_t i = 0; i < done.size(); ++i) {
      if (done[i] != pieces[first + i].id)
        throw FileError(partial, fmt::format("cannot resume: document {} is '{}' in the log but '{}' in the inputs", first + i, done[i], pieces[first + i].id));
      skipped_tokens += piece_tokens[first + i];
    }
    if (o.resume) fmt::print(stderr, "resuming after {} documents ({} tokens)\n", done.size(), skipped_tokens);

    std::vector<int64_t> kept(c.n_layers * c.n_kv_heads, 0), eligible(kept.size(), 0);
    std::unique_ptr<ShardProgress> progress;
    if (sharded) progress = std::make_unique<ShardProgress>(mine, int64_t(done.size()), skipped_tokens);
    Progress bar(sharded ? fmt::format("run {}/{}", shard.index, shard.count) : "run", mine.tokens - skipped_tokens, "tok");
    size_t i = first + done.size();
    for (; i < end && !stop; ++i) {
      const TokenPiece& p = pieces[i];
      threads::rebalance();
      if (spkv_pass) {
        auto z = score_document(*spkv_pass, p.tokens).keep.to(torch::kUInt8).contiguous();  // (T, L, Hkv)
        engine.baseline_cache()->set_budget(matched_budget(z.data_ptr<uint8_t>(), int64_t(p.tokens.size()), c.n_layers,
                                                           c.n_kv_heads, c.spkv.window, o.budget == "matched-uniform"));
      }
      ScoredDocument s = score_document(engine, p.tokens);
      LoggedDocument d = log_record(p, s, *tok, c, engine.gated(), engine.baseline_cache(), W);
      if (o.attention_stats) {  // the masked forward under full attention, which measures what the cache cannot
        auto st = attention_stats(model, p.tokens, o.last_queries, c.spkv.window);  // 3 x (T, L, Hkv)
        auto put = [](const torch::Tensor& t, std::vector<float>& out) { out.assign(t.data_ptr<float>(), t.data_ptr<float>() + t.numel()); };
        put(st[0], d.received), put(st[1], d.received_last), put(st[2], d.received_far);
      }
      if (d.cache_entries.back() != engine.cache_entries())
        throw Error(fmt::format("run: {}: the cache holds {} entries but the decisions imply {}", p.id,
                                engine.cache_entries(), d.cache_entries.back()));
      for (size_t j = 0; j < kept.size(); ++j) kept[j] += d.kept[j], eligible[j] += d.eligible[j];
      log.add(std::move(d));
      bar.add(int64_t(p.tokens.size()), fmt::format("doc {}/{}", i - first + 1, end - first));
      if (progress) progress->add(int64_t(p.tokens.size()));
    }
    if (i < end) {
      bar.finish();
      if (progress) progress->finish("stopped");
      fmt::print("stopped after {} of {} documents; {} holds them; continue with --resume\n", i - first, end - first, partial);
      return false;  // the writer's destructor flushes and leaves the partial log, marked incomplete
    }
    log.close();
    bar.finish();
    if (progress) progress->finish("done");
    fmt::print("wrote {} ({} documents, {} tokens this run; gating {}, window {}, tau {})\n", log_path, end - first,
               mine.tokens - skipped_tokens, h.gating_mode, h.window, h.tau);
    if (done.empty() && !sharded) print_density(kept, eligible, c.n_layers, c.n_kv_heads);
  }
  if (!sharded) return true;
  if (!shard.distributed) {
    fmt::print("shard {} of {} is in {}; once all {} are done: spkv merge --out {} SHARD_LOGS...\n", shard.index, shard.count,
               log_path, shard.count, o.out);
    return true;
  }
  // A launch: rank 0 merges once every shard is written; every rank leaves once the merged log is there.
  if (!group->wait_for_all("finish its shard", &stop)) return false;
  if (shard.index == 0) {
    std::vector<std::string> shard_logs;
    for (const ShardEntry& e : manifest.shards) shard_logs.push_back(e.file);
    const MergeSummary m = merge_gate_logs(shard_logs, o.out);
    if (!o.keep_shards)
      for (const std::string& f : shard_logs) std::filesystem::remove(f), std::filesystem::remove(progress_path(f));
    fmt::print("merged {} shards into {} ({} documents, {} tokens){}\n", m.shards, o.out, m.documents, m.tokens,
               o.keep_shards ? "" : "; the shard logs are removed");
  }
  return group->wait_for_all("see the merged log", &stop);
}

}  // namespace spkv
