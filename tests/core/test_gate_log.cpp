// `spkv run` and its HDF5 gate log, read back with /usr/bin/python3 + h5py (an independent reader) and
// compared with the engine's in-memory values; the summaries are recomputed from the decisions in Python;
// a run killed with SIGKILL leaves a readable log that --resume completes to the uninterrupted result;
// bad inputs get clear messages and leave no file behind.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "core/base/errors.h"
#include "core/base/sha256.h"
#include "core/gatelog/writer.h"
#include "core/infer/engine.h"
#include "core/model/checkpoint.h"
#include "core/text/documents.h"
#include "core/text/tokenizer.h"
#include "tests/core/reference_model.h"
#include "tests/test_util.h"

namespace spkv {
namespace {
using nlohmann::json;

const std::string kModel = std::string(SPKV_SOURCE_DIR) + "/data/models/spkv-default";
const std::string kHeldout = kModel + "/heldout/text";

#define SPKV_REQUIRE_MODEL_AND_H5PY()                                                                   \
  do {                                                                                                  \
    if (!std::filesystem::exists(kModel + "/model.safetensors")) GTEST_SKIP() << kModel << " is absent"; \
    if (std::system("/usr/bin/python3 -c 'import h5py' 2>/dev/null") != 0)                               \
      GTEST_SKIP() << "/usr/bin/python3 has no h5py (Debian package python3-h5py)";                       \
  } while (0)

json read_log(const std::string& path) {
  test::expect_valid_log(path);
  test::TempDir tmp;
  const std::string cmd = "/usr/bin/python3 " + test::quote(std::string(SPKV_SOURCE_DIR) + "/tests/core/read_gate_log.py") +
                          " " + test::quote(path) + " > " + (tmp / "log.json") + " 2> " + (tmp / "err");
  if (std::system(cmd.c_str()) != 0) {
    ADD_FAILURE() << "h5py could not read " << path << ": " << test::read_file(tmp / "err");
    return json();
  }
  return json::parse(test::read_file(tmp / "log.json"));
}

void expect_checks(const json& log) {
  ASSERT_TRUE(log.contains("checks"));
  for (auto& [name, ok] : log["checks"].items()) EXPECT_TRUE(ok.get<bool>()) << "h5py check failed: " << name;
}

TEST(GateLog, RunLogReadsBackWithH5pyAndMatchesTheEngine) {
  SPKV_REQUIRE_MODEL_AND_H5PY();
  test::TempDir tmp;
  const std::string jargon = test::read_file(kHeldout + "/jargon.txt"), kjv = test::read_file(kHeldout + "/kjv.txt");
  std::vector<std::pair<std::string, std::string>> jsonl = {
      {"a", jargon.substr(0, 1000)}, {"b", jargon.substr(5000, 700)},
      {"utf8", "A na\xc3\xafve caf\xc3\xa9 \xe2\x80\x94 \xe4\xbd\xa0\xe5\xa5\xbd, then more text to score."},
      {"c", kjv.substr(20000, 900)}};
  std::string lines;
  for (auto& [id, text] : jsonl) lines += json{{"id", id}, {"text", text}}.dump() + "\n";
  test::write_file(tmp / "docs.jsonl", lines);
  const std::string long_text = kjv.substr(0, 9000);  // about 2,500 tokens: several pieces at the model's context
  test::write_file(tmp / "long.txt", long_text);
  auto r = test::run_spkv("run -m " + test::quote(kModel) + " --out " + (tmp / "log.h5") + " " + (tmp / "docs.jsonl") +
                          " " + (tmp / "long.txt") + " --tau 0.4 --window 32 --chunk 100");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("density"), std::string::npos) << r.out;
  const json log = read_log(tmp / "log.h5");
  expect_checks(log);
  const json& a = log["attrs"];
  EXPECT_EQ(a["schema_version"], 2);
  EXPECT_EQ(a["complete"], 1);
  EXPECT_EQ(a["gating_mode"], "hard");
  EXPECT_DOUBLE_EQ(a["tau"].get<double>(), 0.4);
  EXPECT_EQ(a["window"], 32);
  EXPECT_EQ(a["checkpoint_sha256"], sha256_files({kModel + "/model.safetensors"}));
  EXPECT_EQ(json::parse(a["model_config"].get<std::string>())["num_hidden_layers"], 4);

  // The engine, in this process, on the same pieces.
  auto model = load_model(kModel);
  model->gates.tau = 0.4, model->config.spkv.window = 32;
  auto tok = load_tokenizer(kModel + "/tokenizer.model");
  std::vector<TokenPiece> pieces;
  for (auto& [id, text] : jsonl) pieces.push_back({id, tok->encode(text, true, false)});  // each within the context
  for (auto& p : split_to_context((tmp / "long.txt") + "#0", tok->encode(long_text, true, false), model->config.max_seq_len))
    pieces.push_back(p);
  const json& docs = log["documents"];
  ASSERT_EQ(docs.size(), pieces.size());
  ASSERT_GE(pieces.size(), 4u + 3) << "the long document is split into at least three pieces";
  EXPECT_EQ(log["summary"]["documents"], pieces.size());
  EngineOptions eo;
  eo.chunk = 100;  // as in the run: the same chunks give the same float rounding
  Engine engine(model, eo);
  std::string long_back;
  for (size_t d = 0; d < pieces.size(); ++d) {
    SCOPED_TRACE(pieces[d].id);
    const json& got = docs[d];
    EXPECT_EQ(got["id"], pieces[d].id);
    ASSERT_EQ(got["tokens"].get<std::vector<int32_t>>(), pieces[d].tokens);
    if (d < jsonl.size()) EXPECT_EQ(got["text"], jsonl[d].second) << "token texts concatenate to the document";
    else long_back += got["text"].get<std::string>();
    const ScoredDocument s = score_document(engine, pieces[d].tokens);
    const int64_t T = int64_t(pieces[d].tokens.size());
    auto u = s.utility.reshape({T, 16}), z = s.keep.reshape({T, 16});
    EXPECT_TRUE(got["nll"][0].is_null());
    int64_t bad_nll = 0, bad_u = 0, bad_z = 0;
    for (int64_t t = 0; t < T; ++t) {
      EXPECT_EQ(got["position"][t], t);
      // 1e-4: float32 rounding differs with the thread count (the run uses every core, this test one).
      if (t > 0 && std::abs(got["nll"][t].get<double>() - s.nll[t - 1]) > 1e-4 && bad_nll++ < 3)
        ADD_FAILURE() << "nll at " << t << ": " << got["nll"][t] << " vs " << s.nll[t - 1];
      for (int64_t i = 0; i < 16; ++i) {
        const double ui = u[t][i].item<double>(), logged = got["u"][t][i].get<double>();
        if (std::abs(logged - ui) > 1e-3 * std::max(ui, 0.01) && bad_u++ < 3)  // float16 rounding
          ADD_FAILURE() << "u at " << t << "," << i << ": " << logged << " vs " << ui;
        if (got["z"][t][i].get<int>() != z[t][i].item<int>() && bad_z++ < 3)
          ADD_FAILURE() << "z at " << t << "," << i << ": " << got["z"][t][i] << " vs u " << ui;
      }
    }
    EXPECT_EQ(bad_nll + bad_u + bad_z, 0);
  }
  EXPECT_EQ(long_back, long_text) << "the pieces of the long document concatenate to it";
}

// A document longer than the context: the pieces overlap by one token and only the first starts with BOS,
// as training windows and `spkv eval`'s windows cut it, so `spkv run` scores every token once and its NLL is
// eval's (with BOS restarting each piece, the model's NLL on this text is about 0.6% higher).
TEST(GateLog, LongDocumentPiecesScoreAsEvalWindowsDo) {
  SPKV_REQUIRE_MODEL_AND_H5PY();
  test::TempDir tmp;
  const std::string long_text = test::read_file(kHeldout + "/kjv.txt").substr(30000, 9000);
  test::write_file(tmp / "long.txt", long_text);
  auto tok = load_tokenizer(kModel + "/tokenizer.model");
  const auto ids = tok->encode(long_text, true, false);
  const int64_t context = load_hf_config(kModel + "/config.json").max_seq_len;
  const auto pieces = split_to_context("long", ids, context);
  ASSERT_GE(pieces.size(), 3u);
  std::vector<int32_t> scored;
  for (size_t k = 0; k < pieces.size(); ++k) {
    const auto& p = pieces[k].tokens;
    EXPECT_LE(int64_t(p.size()), context);
    EXPECT_EQ(pieces[k].continues, k > 0);
    if (k > 0) EXPECT_EQ(p.front(), pieces[k - 1].tokens.back()) << "piece " << k << " opens with the token before";
    EXPECT_EQ(std::count(p.begin(), p.end(), int32_t(tok->bos_id)), k == 0 ? 1 : 0) << "piece " << k;
    scored.insert(scored.end(), p.begin() + 1, p.end());
  }
  EXPECT_EQ(scored, std::vector<int32_t>(ids.begin() + 1, ids.end())) << "every token after BOS is scored once";

  auto r = test::run_spkv("run -m " + test::quote(kModel) + " --out " + (tmp / "log.h5") + " " + (tmp / "long.txt"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_spkv("eval -m " + test::quote(kModel) + " --separator '' --json " + (tmp / "eval.json") + " " + (tmp / "long.txt"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json log = read_log(tmp / "log.h5"), eval = json::parse(test::read_file(tmp / "eval.json"));
  ASSERT_EQ(log["documents"].size(), pieces.size());
  double sum = 0;
  int64_t n = 0;
  std::string text;
  for (size_t k = 0; k < pieces.size(); ++k) {
    const json& d = log["documents"][k];
    EXPECT_EQ(d["tokens"].get<std::vector<int32_t>>(), pieces[k].tokens);
    text += d["text"].get<std::string>();
    for (const auto& x : d["nll"])
      if (!x.is_null()) sum += x.get<double>(), ++n;
  }
  EXPECT_EQ(text, long_text) << "the pieces' token texts concatenate to the document once";
  EXPECT_EQ(n, eval["tokens"].get<int64_t>());
  EXPECT_NEAR(sum / double(n), eval["nll"].get<double>(), 1e-4) << "spkv run against spkv eval on the same document";
}

// Starts `spkv run ARGS --flush-seconds 0 --out OUT`, waits until a few blocks have reached OUT.partial,
// sends `sig` and returns the wait status.
int run_and_signal(const std::string& args, const std::string& out, int sig) {
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string cmd = "exec " + std::string(SPKV_BIN) + " run " + args + " --flush-seconds 0 --out " + out + " >/dev/null 2>&1";
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const std::string partial = out + ".partial";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  std::error_code ec;
  while (std::chrono::steady_clock::now() < deadline &&
         (!std::filesystem::exists(partial) || std::filesystem::file_size(partial, ec) < 400000))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(pid, sig);
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

TEST(GateLog, KilledRunLeavesAReadableLogThatResumeCompletes) {
  SPKV_REQUIRE_MODEL_AND_H5PY();
  test::TempDir tmp;
  const std::string args = test::quote(kHeldout) + " --separator '<|endoftext|>' --max-docs 30 -m " + test::quote(kModel);
  auto full = test::run_spkv("run " + args + " --out " + (tmp / "full.h5"));
  ASSERT_EQ(full.exit_code, 0) << full.err;
  const json ref = read_log(tmp / "full.h5");
  const size_t n_docs = ref["documents"].size();

  // Start the same run and SIGKILL it once a few blocks have reached the partial log.
  const std::string out = tmp / "killed.h5", killed = out + ".partial";
  const int status = run_and_signal(args, out, SIGKILL);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the run finished before it could be killed";

  const json part = read_log(killed);
  expect_checks(part);
  EXPECT_EQ(part["attrs"]["complete"], 0);
  const size_t n_part = part["documents"].size();
  EXPECT_GT(n_part, 0u);
  EXPECT_LT(n_part, n_docs);
  for (size_t d = 0; d < n_part; ++d) EXPECT_EQ(part["documents"][d], ref["documents"][d]) << "document " << d;

  // Without --resume the partial log is refused and left as it is; a different tau cannot resume it.
  const std::string before = sha256_files({killed});
  auto refused = test::run_spkv("run " + args + " --out " + out);
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("an interrupted run left this log"), std::string::npos) << refused.err;
  auto other_tau = test::run_spkv("run " + args + " --out " + out + " --resume --tau 0.3");
  EXPECT_NE(other_tau.exit_code, 0);
  EXPECT_NE(other_tau.err.find("cannot resume: tau"), std::string::npos) << other_tau.err;
  EXPECT_EQ(sha256_files({killed}), before) << "refused runs leave the partial log untouched";

  auto resumed = test::run_spkv("run " + args + " --out " + out + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resuming after " + std::to_string(n_part) + " documents"), std::string::npos) << resumed.err;
  EXPECT_FALSE(std::filesystem::exists(killed)) << "the finished log replaces the partial one";
  const json done = read_log(out);
  expect_checks(done);
  EXPECT_EQ(done["attrs"]["complete"], 1);
  EXPECT_EQ(done["documents"], ref["documents"]) << "the resumed log equals the uninterrupted one";
  auto again = test::run_spkv("run " + args + " --out " + out);
  EXPECT_NE(again.err.find("already exists"), std::string::npos) << again.err;
}

// SIGTERM, as a batch scheduler sends it, stops a run after its current document with exit status 143
// (so `spkv run ... && spkv analyze` does not go on); --resume completes it, and --resume on the finished
// log is a no-op that says so.
TEST(GateLog, TerminatedRunExitsNonZeroAndResumeOfAFinishedLogIsANoOp) {
  SPKV_REQUIRE_MODEL_AND_H5PY();
  test::TempDir tmp;
  const std::string args = test::quote(kHeldout) + " --separator '<|endoftext|>' --max-docs 30 -m " + test::quote(kModel);
  const std::string out = tmp / "t.h5", partial = out + ".partial";
  const int status = run_and_signal(args, out, SIGTERM);
  ASSERT_TRUE(WIFEXITED(status)) << "SIGTERM should be caught, not kill the run";
  ASSERT_EQ(WEXITSTATUS(status), 128 + SIGTERM) << "the run finished before the signal, or ignored it";
  const json part = read_log(partial);
  expect_checks(part);
  EXPECT_EQ(part["attrs"]["complete"], 0);
  EXPECT_GT(part["documents"].size(), 0u);

  auto resumed = test::run_spkv("run " + args + " --out " + out + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_EQ(read_log(out)["attrs"]["complete"], 1);
  const std::string sha = sha256_files({out});
  auto again = test::run_spkv("run " + args + " --out " + out + " --resume");
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.err.find("t.h5 is already complete: nothing to resume"), std::string::npos) << again.err;
  EXPECT_EQ(sha256_files({out}), sha);
  EXPECT_FALSE(std::filesystem::exists(partial));
}

// A full disk mid-run (a 700 kB tmpfs; needs root to mount, else skipped): a one-line error that says so,
// the documents before it kept, and --resume, once there is space, finishes a log equal to an
// uninterrupted one.
TEST(GateLog, FullDiskKeepsTheFlushedDocumentsAndResumeCompletes) {
  SPKV_REQUIRE_MODEL_AND_H5PY();
  if (geteuid() != 0) GTEST_SKIP() << "mounting a small tmpfs needs root";
  test::TempDir tmp;
  const std::string small = tmp / "small";
  std::filesystem::create_directories(small);
  if (std::system(("mount -t tmpfs -o size=700k tmpfs " + test::quote(small) + " 2>/dev/null").c_str()) != 0)
    GTEST_SKIP() << "cannot mount a tmpfs here";
  struct Unmount {
    std::string dir;
    ~Unmount() { std::system(("umount " + test::quote(dir)).c_str()); }
  } unmount{small};
  const std::string args = test::quote(kHeldout) + " --separator '<|endoftext|>' --max-docs 30 -m " + test::quote(kModel);
  auto full = test::run_spkv("run " + args + " --out " + (tmp / "full.h5"));
  ASSERT_EQ(full.exit_code, 0) << full.err;
  const json ref = read_log(tmp / "full.h5");

  const std::string out = small + "/e.h5";
  // HDF5 keeps a file it could not flush (no space) in its metadata cache until exit, and LeakSanitizer
  // reports that cache's strings (H5MM_xstrdup) in sanitizer builds: leak checks are off for this one run.
  const char* asan = std::getenv("ASAN_OPTIONS");
  const std::string saved = asan ? asan : "";
  setenv("ASAN_OPTIONS", (saved + (saved.empty() ? "" : ":") + "detect_leaks=0").c_str(), 1);
  auto failed = test::run_spkv("run " + args + " --flush-seconds 0 --out " + test::quote(out));
  asan ? setenv("ASAN_OPTIONS", saved.c_str(), 1) : unsetenv("ASAN_OPTIONS");
  ASSERT_EQ(failed.exit_code, 1) << "the log should not fit: " << failed.err;
  const std::string last = failed.err.substr(failed.err.rfind('\n', failed.err.size() - 2) + 1);
  EXPECT_EQ(last.rfind("spkv: error: " + out + ".partial: HDF5: ", 0), 0u) << last;
  EXPECT_NE(last.find("No space left on device"), std::string::npos) << last;
  EXPECT_EQ(failed.err.find("HDF5-DIAG"), std::string::npos) << "no HDF5 trace: " << failed.err.substr(0, 300);

  ASSERT_EQ(std::system(("mount -o remount,size=20m " + test::quote(small)).c_str()), 0);
  auto resumed = test::run_spkv("run " + args + " --out " + test::quote(out) + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  const size_t at = resumed.err.find("resuming after ");
  ASSERT_NE(at, std::string::npos) << resumed.err;
  EXPECT_GT(std::stoi(resumed.err.substr(at + 15)), 0) << "documents flushed before the failure are kept";
  const json done = read_log(out);
  expect_checks(done);
  EXPECT_EQ(done["documents"], ref["documents"]) << "the resumed log equals the uninterrupted one";
}

TEST(GateLog, DenseRunLogsAttentionStatisticsEqualToAFloat64Reference) {
  SPKV_REQUIRE_MODEL_AND_H5PY();
  test::TempDir tmp;
  const std::string jargon = test::read_file(kHeldout + "/jargon.txt");
  const std::vector<std::string> texts = {jargon.substr(100, 500), jargon.substr(9000, 300)};
  test::write_file(tmp / "docs.jsonl", json{{"text", texts[0]}}.dump() + "\n" + json{{"text", texts[1]}}.dump() + "\n");
  auto r = test::run_spkv("run -m " + test::quote(kModel) + " --out " + (tmp / "log.h5") + " " + (tmp / "docs.jsonl") +
                          " --dense --attention-stats --last-queries 16");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json log = read_log(tmp / "log.h5");
  expect_checks(log);
  EXPECT_EQ(log["attrs"]["gating_mode"], "dense");
  EXPECT_EQ(log["attrs"]["attention_last_queries"], 16);
  auto model = load_model(kModel);
  model->config.spkv.enabled = false;  // the reference attends to every causal key
  auto tok = load_tokenizer(kModel + "/tokenizer.model");
  for (size_t d = 0; d < texts.size(); ++d) {
    const auto ids = tok->encode(texts[d], true, false);
    std::vector<double> recv, tail, far;
    test::ref_forward(model, std::vector<int64_t>(ids.begin(), ids.end()), nullptr, &recv, 16, &tail, 64, &far);
    const int64_t T = int64_t(ids.size()), L = 4, Hkv = 4;
    const json& got = log["documents"][d];
    ASSERT_EQ(int64_t(got["received"].size()), T);
    double worst = 0;
    for (int64_t il = 0; il < L; ++il)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < Hkv; ++h) {
          worst = std::max(worst, std::abs(got["received"][t][il * Hkv + h].get<double>() - recv[(il * T + t) * Hkv + h]));
          worst = std::max(worst, std::abs(got["received_last"][t][il * Hkv + h].get<double>() - tail[(il * T + t) * Hkv + h]));
          worst = std::max(worst, std::abs(got["received_far"][t][il * Hkv + h].get<double>() - far[(il * T + t) * Hkv + h]));
        }
    EXPECT_LT(worst, 1e-4) << "document " << d;
  }
  auto gated = test::run_spkv("run -m " + test::quote(kModel) + " --out " + (tmp / "x.h5") + " " + (tmp / "docs.jsonl") + " --attention-stats");
  EXPECT_NE(gated.err.find("--attention-stats needs --dense"), std::string::npos) << gated.err;
}

// `spkv run --policy` (schema 2): a baseline's log records when each key left its head's cache, read back
// with h5py, whose script recounts the cache entries from evicted_at alone. StreamingLLM without sinks in
// 20 slots evicts key s exactly when token s + 20 comes (worked out, not simulated); a matched budget holds
// after every token exactly the entries the SP-KV run's log reports; a log of schema 1 still opens.
TEST(GateLog, PolicyRunLogsWhenEachKeyLeftTheCache) {
  SPKV_REQUIRE_MODEL_AND_H5PY();
  test::TempDir tmp;
  std::string corpus;
  auto docs = read_documents(kHeldout + "/jargon.txt", "<|endoftext|>");
  for (size_t d = 0; d < 3; ++d) corpus += docs[d].text.substr(0, 900) + "\n<|endoftext|>\n";
  test::write_file(tmp / "c.txt", corpus);
  const std::string in = tmp / "c.txt --separator '<|endoftext|>' ";
  auto r = test::run_spkv("run -m " + kModel + " --policy streaming:0 --budget slots:20 --window 8 " + in + "--out " + tmp / "s.h5");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json s = read_log(tmp / "s.h5");
  expect_checks(s);
  EXPECT_EQ(s["attrs"]["schema_version"], 2);
  EXPECT_EQ(s["attrs"]["gating_mode"], "policy");
  EXPECT_EQ(s["attrs"]["policy"], "streaming:0");
  EXPECT_EQ(s["attrs"]["budget"], "slots:20");
  EXPECT_EQ(s["attrs"]["window"], 8);
  ASSERT_EQ(s["documents"].size(), 3u);
  for (const auto& doc : s["documents"]) {
    const int64_t T = int64_t(doc["tokens"].size());
    ASSERT_GT(T, 60);
    for (int64_t p = 0; p < T; ++p)
      for (const auto& e : doc["evicted_at"][size_t(p)]) {
        EXPECT_EQ(e.get<int64_t>(), p + 20 < T ? p + 20 : -1) << "key " << p << " of " << T;
        EXPECT_EQ(doc["z"][size_t(p)][0].get<int>(), p + 20 < T ? 0 : 1);
      }
  }
  r = test::run_spkv("run -m " + kModel + " --policy h2o " + in + "--out " + tmp / "h.h5");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_spkv("run -m " + kModel + " " + in + "--out " + tmp / "g.h5");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json h = read_log(tmp / "h.h5"), g = read_log(tmp / "g.h5");
  expect_checks(h);
  EXPECT_EQ(h["attrs"]["budget"], "matched");
  int64_t evicted = 0;
  for (size_t d = 0; d < 3; ++d) {
    EXPECT_EQ(h["documents"][d]["tokens"], g["documents"][d]["tokens"]);
    for (const auto& row : h["documents"][d]["evicted_at"])
      for (const auto& e : row) evicted += e.get<int64_t>() >= 0;
  }
  EXPECT_GT(evicted, 100) << "H2O under the SP-KV budget must evict";
  // The entries per token: the h5py script recounted them from evicted_at; they equal the SP-KV run's.
  EXPECT_EQ(test::run_spkv("check " + tmp / "h.h5").exit_code, 0);
  const std::string entries = "import h5py,sys; print(list(h5py.File(sys.argv[1])['tokens/cache_entries'][:]))";
  auto py = [&](const std::string& f) {
    const std::string cmd = "/usr/bin/python3 -c \"" + entries + "\" " + f + " > " + f + ".txt";
    EXPECT_EQ(std::system(cmd.c_str()), 0);
    return test::read_file(f + ".txt");
  };
  EXPECT_EQ(py(tmp / "h.h5"), py(tmp / "g.h5"));
  // A log of schema 1 (before policy logs) opens and checks.
  std::filesystem::copy_file(tmp / "g.h5", tmp / "v1.h5");
  const std::string v1 = "import h5py,sys,numpy; f = h5py.File(sys.argv[1], 'r+'); f.attrs.modify('schema_version', numpy.int32(1))";
  ASSERT_EQ(std::system(("/usr/bin/python3 -c \"" + v1 + "\" " + tmp / "v1.h5").c_str()), 0);
  r = test::run_spkv("check " + tmp / "v1.h5");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // A model without SP-KV needs the policy's window.
  r = test::run_spkv("run -m " + kModel + "/stages/dense-control -t " + kModel + "/tokenizer.model --policy h2o --budget slots:30 " +
                     in + "--out " + tmp / "x.h5");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("needs --window"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(tmp / "x.h5"));
}

TEST(GateLog, BadInputsGetClearMessagesAndNoFile) {
  if (!std::filesystem::exists(kModel + "/model.safetensors")) GTEST_SKIP() << kModel << " is absent";
  test::TempDir tmp;
  auto run = [&](const std::string& inputs, const std::string& model = kModel) {
    return test::run_spkv("run -m " + test::quote(model) + " --out " + (tmp / "log.h5") + " " + inputs);
  };
  auto missing = run(tmp / "nope.txt");
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.err.find("nope.txt: no such file"), std::string::npos) << missing.err;
  test::write_file(tmp / "latin1.txt", "caf\xe9 au lait");
  auto utf8 = run(tmp / "latin1.txt");
  EXPECT_NE(utf8.exit_code, 0);
  EXPECT_NE(utf8.err.find("latin1.txt: invalid UTF-8 at byte 3"), std::string::npos) << utf8.err;
  test::write_file(tmp / "bad.jsonl", "{\"text\": \"fine\"}\n{\"body\": \"no text\"}\n");
  auto jsonl = run(tmp / "bad.jsonl");
  EXPECT_NE(jsonl.exit_code, 0);
  EXPECT_NE(jsonl.err.find("bad.jsonl:2: expected an object with a string field 'text'"), std::string::npos) << jsonl.err;
  ModelConfig c;  // a dense model: nothing to log
  c.dim = 16, c.hidden_dim = 32, c.n_layers = 1, c.n_heads = 2, c.n_kv_heads = 2, c.head_dim = 8;
  c.vocab_size = 2048, c.max_seq_len = 64;
  LlamaForCausalLM m(c);
  save_hf_checkpoint(tmp / "dense", c, m->named_tensors());
  copy_tokenizer_into(kModel + "/tokenizer.model", tmp / "dense");
  auto dense = run(test::quote(kHeldout), tmp / "dense");
  EXPECT_NE(dense.exit_code, 0);
  EXPECT_NE(dense.err.find("has no spkv block"), std::string::npos) << dense.err;
  EXPECT_FALSE(std::filesystem::exists(tmp / "log.h5"));
}

// Two writers on one log: the second is refused while the first runs (HDF5's own locking is off on most
// cluster file systems), the lock goes with the first writer, and a lock left by a dead process of this
// host is taken over; one from another host is not.
TEST(GateLog, ASecondWriterIsRefusedAndAStaleLockIsTakenOver) {
  test::TempDir tmp;
  const std::string out = tmp / "x.h5", lock = out + ".lock";
  GateLogHeader h;
  h.n_layers = 1, h.n_kv_heads = 1, h.window = 2, h.tau = 0.5, h.gating_mode = "hard", h.checkpoint_sha256 = "x";
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  {
    GateLogWriter first(out, h, false, 0);
    EXPECT_TRUE(std::filesystem::exists(lock));
    try {
      GateLogWriter second(out, h, true, 0);
      FAIL() << "a second writer was accepted";
    } catch (const FileError& e) {
      const std::string want = "x.h5: being written by " + std::string(host) + " pid " + std::to_string(getpid());
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
    first.close();
  }
  EXPECT_FALSE(std::filesystem::exists(lock)) << "the lock goes with its writer";
  EXPECT_TRUE(std::filesystem::exists(out));

  const pid_t child = fork();  // a pid that has certainly exited
  if (child == 0) _exit(0);
  waitpid(child, nullptr, 0);
  test::write_file(lock, std::string(host) + " " + std::to_string(child) + "\n");
  {
    GateLogWriter w(tmp / "y.h5", h, false, 0);  // another log: unaffected by x's lock
    w.close();
  }
  std::filesystem::remove(out);
  {
    GateLogWriter w(out, h, false, 0);  // the stale lock is taken over
    w.close();
  }
  EXPECT_FALSE(std::filesystem::exists(lock));
  std::filesystem::remove(out);
  test::write_file(lock, "some-other-host 12\n");
  try {
    GateLogWriter w(out, h, false, 0);
    FAIL() << "a lock of another host was taken over";
  } catch (const FileError& e) {
    EXPECT_NE(std::string(e.what()).find("being written by some-other-host pid 12"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(std::filesystem::exists(lock)) << "a refused writer leaves the other's lock";
  EXPECT_FALSE(std::filesystem::exists(out + ".partial"));
}

// File names need not be UTF-8: a Latin-1 name runs, and the analysis JSON names it with U+FFFD.
TEST(GateLog, NonUtf8FileNamesRunAndAnalyze) {
  SPKV_REQUIRE_MODEL_AND_H5PY();
  test::TempDir tmp;
  const std::string input = tmp / "caf\xe9.txt";
  test::write_file(input, "The river ran past a quiet town where the owners sang.\n");
  auto run = test::run_spkv("run -m " + test::quote(kModel) + " --out " + (tmp / "l.h5") + " " + test::quote(input));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  auto an = test::run_spkv("analyze " + (tmp / "l.h5") + " --out " + test::quote(tmp / "r\xe9.json"));
  ASSERT_EQ(an.exit_code, 0) << an.err;
  const json r = json::parse(test::read_file(tmp / "r\xe9.json"));
  EXPECT_NE(r.dump().find("caf\xef\xbf\xbd.txt#0"), std::string::npos) << "the id with U+FFFD for the byte 0xE9";
}

TEST(GateLog, Sha256MatchesTheFipsExamples) {
  EXPECT_EQ(sha256_string(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_string("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_string("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_string(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

}  // namespace
}  // namespace spkv
