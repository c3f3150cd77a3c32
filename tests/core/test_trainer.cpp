// The trainer: token files, packed windows, the LR and gate schedule against closed forms, recipe
// validation, exact resume through the real `spkv train` binary, the frozen predictor of the hard phase,
// heads made local on plain-text or on task documents (data.local_on_text, local_on_tasks), the gate target
// (optim.gate_target) against a float64 recomputation and through `spkv train`, and adaptation
// of stories260K starting at the dense model's logits with predictors drawn from the seed.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <thread>
#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/model/attention_stats.h"
#include "core/model/checkpoint.h"
#include "core/model/safetensors.h"
#include "core/train/trainer.h"
#include "tests/core/launch.h"
#include "tests/core/reference_model.h"
#include "tests/test_util.h"

namespace spkv {
namespace {
using json = nlohmann::json;

// Documents from a small Markov chain: learnable structure, varied lengths, BOS (1) first.
std::vector<std::vector<int32_t>> markov_docs(int n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> docs;
  for (int d = 0; d < n; ++d) {
    std::vector<int32_t> doc{1};
    const int len = 10 + int(rng() % 60);
    int32_t t = 2 + int32_t(rng() % (vocab - 2));
    for (int i = 0; i < len; ++i) {
      doc.push_back(t);
      t = rng() % 4 == 0 ? 2 + int32_t(rng() % (vocab - 2)) : 2 + (t * 7 + 3) % int32_t(vocab - 2);
    }
    docs.push_back(doc);
  }
  return docs;
}

TEST(TokenFile, RoundTripsAndRejectsCorruption) {
  test::TempDir dir;
  for (int64_t vocab : {500, 70000}) {  // 2-byte and 4-byte tokens
    auto docs = markov_docs(37, vocab, 1);
    docs[5].push_back(int32_t(vocab - 1));
    const std::string p = dir / ("t" + std::to_string(vocab) + ".tok");
    write_token_file(p, docs, vocab);
    TokenFile f(p);
    ASSERT_EQ(f.n_docs(), 37);
    EXPECT_EQ(f.vocab_size(), vocab);
    int64_t i = 0;
    for (size_t d = 0; d < docs.size(); ++d) {
      EXPECT_EQ(f.doc_begin(int64_t(d)), i);
      for (int32_t t : docs[d]) {
        ASSERT_EQ(f.token(i), t) << "token " << i;
        ASSERT_EQ(f.doc_of(i), int64_t(d)) << "token " << i;
        ++i;
      }
    }
    EXPECT_EQ(f.n_tokens(), i);
  }
  const std::string bytes = test::read_file(dir / "t500.tok");
  test::write_file(dir / "cut.tok", bytes.substr(0, bytes.size() - 3));
  try {
    TokenFile bad(dir / "cut.tok");
    FAIL() << "a truncated token file was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("cut.tok: not a valid spkv token file: size"), std::string::npos) << e.what();
  }
  EXPECT_THROW(write_token_file(dir / "x.tok", {{1, 2, 600}}, 500), InputError);
}

TEST(TokenFile, PackedWindowsMarkEveryDocumentStart) {
  test::TempDir dir;
  auto docs = markov_docs(50, 300, 2);
  write_token_file(dir / "a.tok", docs, 300);
  TokenFile f(dir / "a.tok");
  TokenFileSource src(dir / "a.tok", dir / "a.tok", 64, 6, 2, 9);
  Batch b = src.train_batch(3, 0);
  ASSERT_EQ(b.tokens.sizes(), (std::vector<int64_t>{6, 65}));
  int boundaries = 0;
  for (int64_t r = 0; r < 6; ++r) {
    // Find the window's start in the flat stream by matching, then check segments against doc_of.
    int64_t start = -1;
    for (int64_t s = 0; s + 65 <= f.n_tokens() && start < 0; ++s) {
      bool ok = true;
      for (int64_t t = 0; t < 65 && ok; ++t) ok = f.token(s + t) == b.tokens[r][t].item<int64_t>();
      if (ok) start = s;
    }
    ASSERT_GE(start, 0);
    for (int64_t t = 0; t < 65; ++t) {
      EXPECT_EQ(b.segments[r][t].item<int64_t>(), f.doc_of(start + t) - f.doc_of(start));
      boundaries += t > 0 && f.doc_of(start + t) != f.doc_of(start + t - 1);
    }
  }
  EXPECT_GT(boundaries, 3);
  EXPECT_TRUE(torch::equal(src.train_batch(3, 0).tokens, b.tokens));  // a pure function of (step, micro)
  EXPECT_FALSE(torch::equal(src.train_batch(3, 1).tokens, b.tokens));
}

// With aligned windows, a start drawn inside a document that fits a window moves to its first token; starts
// in longer documents stay. Every token is its own flat index, so a window's first token is its start.
TEST(TokenFile, AlignedWindowsStartShortDocumentsAtTheirFirstToken) {
  test::TempDir dir;
  std::vector<std::vector<int32_t>> docs;
  int32_t next = 0;
  for (int d = 0; d < 40; ++d) {
    std::vector<int32_t> doc(size_t(d % 2 ? 20 + d : 66 + 3 * d));  // short ones fit 65 tokens, long ones do not
    for (auto& t : doc) t = next++;
    docs.push_back(doc);
  }
  write_token_file(dir / "a.tok", docs, next);
  TokenFile f(dir / "a.tok");
  TokenFileSource plain(dir / "a.tok", dir / "a.tok", 64, 8, 1, 9), aligned(dir / "a.tok", dir / "a.tok", 64, 8, 1, 9, true);
  int moved = 0, kept = 0;
  for (int64_t step = 0; step < 20; ++step) {
    const Batch p = plain.train_batch(step, 0), a = aligned.train_batch(step, 0);
    for (int64_t r = 0; r < 8; ++r) {
      const int64_t drawn = p.tokens[r][0].item<int64_t>(), start = a.tokens[r][0].item<int64_t>();
      const int64_t d = f.doc_of(drawn);
      const bool fits = f.doc_begin(d + 1) - f.doc_begin(d) <= 65;
      EXPECT_EQ(start, fits ? f.doc_begin(d) : drawn);
      moved += fits && drawn != start, kept += !fits;
      EXPECT_EQ(a.tokens[r][64].item<int64_t>(), start + 64);
    }
  }
  EXPECT_GT(moved, 10);
  EXPECT_GT(kept, 10);

  // Validation windows: consecutive and non-overlapping; aligned, none starts inside a short document.
  TokenFileSource val_plain(dir / "a.tok", dir / "a.tok", 64, 4, 5, 9), val_aligned(dir / "a.tok", dir / "a.tok", 64, 4, 5, 9, true);
  int64_t prev_end = 0, inside_short = 0, skipped = 0;
  for (const Batch& b : val_plain.val_batches())
    for (int64_t r = 0; r < b.tokens.size(0); ++r) {
      const int64_t s = b.tokens[r][0].item<int64_t>(), d = f.doc_of(s);
      inside_short += s != f.doc_begin(d) && f.doc_begin(d + 1) - f.doc_begin(d) <= 65;
    }
  EXPECT_GT(inside_short, 2) << "the plain windows must cut short documents, or the test cannot fail";
  int64_t n = 0;
  for (const Batch& b : val_aligned.val_batches())
    for (int64_t r = 0; r < b.tokens.size(0); ++r, ++n) {
      const int64_t s = b.tokens[r][0].item<int64_t>(), d = f.doc_of(s);
      EXPECT_FALSE(s != f.doc_begin(d) && f.doc_begin(d + 1) - f.doc_begin(d) <= 65) << "window at " << s;
      EXPECT_GE(s, prev_end);
      skipped += s > prev_end;
      prev_end = s + 65;
    }
  EXPECT_EQ(n, 20);
  EXPECT_GT(skipped, 2);
}

json tiny_recipe(const std::string& dir) {
  return {{"seed", 3},
          {"model", {{"hidden_size", 32}, {"intermediate_size", 64}, {"num_hidden_layers", 2},
                     {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"vocab_size", 64},
                     {"max_position_embeddings", 64}}},
          {"spkv", {{"window", 8}, {"predictor_hidden", 8}}},
          {"data", {{"train", dir + "/train.tok"}, {"val", dir + "/val.tok"}, {"seq_len", 48}, {"batch_size", 4}}},
          {"optim", {{"lr", 3e-3}, {"grad_accum", 2}}},
          {"schedule", {{"steps", 12}, {"warmup", 2}, {"hard_at", 0.5}, {"anneal_steps", 3}}},
          {"eval", {{"every", 4}, {"batches", 2}}}};
}

// The ConfigError parse_recipe throws for a recipe (as file "r.json"), or "no error".
std::string recipe_error(const json& j) {
  try {
    parse_recipe(j, "r.json");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

// Version 2's loss mask: read back per token, carried into every window's loss_mask (train and
// validation), and the loss counts only those targets: evaluate() against a float64 recomputation from the
// logits, which with every target counted gives a different number.
TEST(TokenFile, LossMaskReachesEveryWindowAndOnlyItsTargetsCount) {
  test::TempDir dir;
  std::vector<std::vector<int32_t>> docs;
  std::vector<std::vector<uint8_t>> counts;
  int32_t next = 0;
  for (int d = 0; d < 30; ++d) {  // every token is its own flat index (mod 64); index i counts iff i % 3 == 1
    docs.emplace_back(), counts.emplace_back();
    for (int j = 0; j < 25 + 7 * (d % 5); ++j, ++next) docs.back().push_back(next % 64), counts.back().push_back(next % 3 == 1);
  }
  write_token_file(dir / "m.tok", docs, 64, &counts);
  write_token_file(dir / "plain.tok", docs, 64);
  TokenFile f(dir / "m.tok"), plain(dir / "plain.tok");
  ASSERT_TRUE(f.has_loss_mask());
  EXPECT_FALSE(plain.has_loss_mask());
  for (int64_t i = 0; i < f.n_tokens(); ++i) {
    ASSERT_EQ(f.counts(i), i % 3 == 1) << "token " << i;
    ASSERT_TRUE(plain.counts(i));
  }
  const std::string bytes = test::read_file(dir / "m.tok");
  test::write_file(dir / "cut.tok", bytes.substr(0, bytes.size() - size_t(f.n_tokens())));  // version 2 without its mask
  try {
    TokenFile bad(dir / "cut.tok");
    FAIL() << "a version 2 file without its mask was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("cut.tok: not a valid spkv token file: size"), std::string::npos) << e.what();
  }
  counts[3].pop_back();
  EXPECT_THROW(write_token_file(dir / "x.tok", docs, 64, &counts), ConfigError);

  // Windows: the flat index of target t is its window start + t + 1; starts are found through the segments.
  TokenFileSource src(dir / "m.tok", dir / "m.tok", 48, 4, 3, 5);
  std::vector<Batch> batches = src.val_batches();
  batches.push_back(src.train_batch(2, 0));
  for (const Batch& b : batches) {
    ASSERT_TRUE(b.loss_mask.defined());
    ASSERT_EQ(b.loss_mask.sizes(), (std::vector<int64_t>{b.tokens.size(0), 48}));
    for (int64_t r = 0; r < b.tokens.size(0); ++r) {
      int64_t start = -1;  // the flat index whose token and document layout match the window
      for (int64_t s = 0; s + 49 <= f.n_tokens() && start < 0; ++s) {
        bool ok = true;
        for (int64_t t = 0; t < 49 && ok; ++t)
          ok = f.token(s + t) == b.tokens[r][t].item<int64_t>() && f.doc_of(s + t) - f.doc_of(s) == b.segments[r][t].item<int64_t>();
        if (ok) start = s;
      }
      ASSERT_GE(start, 0);
      for (int64_t t = 0; t < 48; ++t) ASSERT_EQ(b.loss_mask[r][t].item<bool>(), (start + t + 1) % 3 == 1) << r << " " << t;
    }
  }

  json j = tiny_recipe(dir.path.string());
  j.erase("spkv");
  const Recipe recipe = parse_recipe(j, dir / "r.json");
  LlamaForCausalLM m = build_model(recipe);
  m->eval();
  torch::NoGradGuard ng;
  const auto& b = batches.front();
  const auto logits = m(b.tokens.narrow(1, 0, 48), b.segments.narrow(1, 0, 48)).to(torch::kDouble);  // (B, T, V)
  const auto nll = -torch::log_softmax(logits, -1).gather(-1, b.tokens.narrow(1, 1, 48).unsqueeze(-1)).squeeze(-1);  // (B, T)
  const auto same_doc = b.segments.narrow(1, 1, 48) == b.segments.narrow(1, 0, 48);  // (B, T)
  const auto counted = same_doc & b.loss_mask;
  const double want = (nll * counted).sum().item<double>() / counted.sum().item<double>();
  const double every = (nll * same_doc).sum().item<double>() / same_doc.sum().item<double>();
  const EvalResult got = evaluate(m, {b}, torch::kCPU);
  EXPECT_EQ(got.tokens, counted.sum().item<int64_t>());
  EXPECT_NEAR(got.nll, want, 1e-5);
  EXPECT_GT(std::abs(every - want), 1e-3) << "the mask must change the loss, or the test cannot fail";
}

// data.local_on_text: windows mark the tokens of plain-text documents (every target counted) and no other;
// a packed forward with those heads' gates shut on those keys equals, per document, the plain document run
// alone through a model whose shut head scores u = 0 (its output bias at -1e4) and the task document run
// alone through the unchanged model (or, with a head local on tasks too, through a model whose that head
// scores u = 0); the shut keys pass no gradient to the predictors.
TEST(Trainer, LocalOnTextShutsTheHeadsOnPlainTextDocumentsOnly) {
  test::TempDir dir;
  std::vector<std::vector<int32_t>> docs;
  std::vector<std::vector<uint8_t>> counts;
  for (int d = 0; d < 24; ++d) {  // plain documents use tokens 2..31, task documents 32..63 (answers: every 5th)
    const bool plain = d % 3 != 1;
    docs.emplace_back(), counts.emplace_back();
    for (int j = 0; j < 20 + 5 * (d % 4); ++j) {
      docs.back().push_back((plain ? 2 : 32) + (d * 7 + j * 5) % 30);
      counts.back().push_back(plain || j % 5 == 4);
    }
  }
  write_token_file(dir / "m.tok", docs, 64, &counts);
  write_token_file(dir / "v1.tok", docs, 64);
  TokenFileSource src(dir / "m.tok", dir / "m.tok", 48, 4, 2, 5), v1(dir / "v1.tok", dir / "v1.tok", 48, 4, 2, 5);
  std::vector<Batch> batches = src.val_batches();
  for (int step = 0; step < 3; ++step) batches.push_back(src.train_batch(step, 0));
  for (const Batch& b : batches) {
    ASSERT_TRUE(b.text.defined());
    EXPECT_TRUE(torch::equal(b.text, b.tokens < 32)) << b.tokens;
  }
  EXPECT_FALSE(v1.train_batch(0, 0).text.defined()) << "a file without a loss mask cannot tell the documents apart";
  // data.loss "all": the same windows and document kinds, every target counted
  TokenFileSource all(dir / "m.tok", dir / "m.tok", 48, 4, 2, 5, false, true);
  for (int step = 0; step < 3; ++step) {
    const Batch a = all.train_batch(step, 0), b = batches[batches.size() - 3 + size_t(step)];
    EXPECT_FALSE(a.loss_mask.defined());
    ASSERT_TRUE(b.loss_mask.defined() && a.text.defined());
    EXPECT_TRUE(torch::equal(a.tokens, b.tokens) && torch::equal(a.text, b.text));
    EXPECT_FALSE(b.loss_mask.all().item<bool>()) << "the mask must leave targets out, or the test cannot fail";
  }

  // One row: plain document 3 (28 of its 35 tokens), then task document 1 (20 of 25); window 8: both have far keys.
  json j = tiny_recipe(dir.path.string());
  j["spkv"]["init_bias"] = 0.0;  // gates near tau: u = 0 on a head changes what it keeps
  const Recipe recipe = parse_recipe(j, dir / "r.json");
  LlamaForCausalLM m = build_model(recipe);
  const auto plain_doc = torch::tensor(std::vector<int64_t>(docs[3].begin(), docs[3].begin() + 28)).unsqueeze(0);
  const auto task_doc = torch::tensor(std::vector<int64_t>(docs[1].begin(), docs[1].begin() + 20)).unsqueeze(0);
  const auto tokens = torch::cat({plain_doc, task_doc}, 1);                                           // (1, 48)
  const auto segments = torch::cat({torch::zeros({1, 28}, torch::kInt64), torch::ones({1, 20}, torch::kInt64)}, 1);
  const ShutGates shut{torch::tensor({0, 0, 1, 0}).view({2, 2}) != 0, tokens < 32};  // head (1, 0), plain keys
  m->eval();
  // with local_on_tasks too: head (0, 1) shut on the task document's keys
  const ShutGates both{shut.heads, shut.keys, torch::tensor({0, 1, 0, 0}).view({2, 2}) != 0};
  auto shut_copy = build_model(recipe), task_copy = build_model(recipe);
  shut_copy->eval(), task_copy->eval();
  {
    torch::NoGradGuard ng;
    shut_copy->model->layers[1]->as<DecoderLayer>()->self_attn->utility->fc2->bias[0].fill_(-1e4);
    task_copy->model->layers[0]->as<DecoderLayer>()->self_attn->utility->fc2->bias[1].fill_(-1e4);
  }
  for (GateMode mode : {GateMode::soft, GateMode::hard}) {
    torch::NoGradGuard ng;
    m->gates.mode = shut_copy->gates.mode = task_copy->gates.mode = mode;
    const auto packed = m(tokens, segments, shut), packed_both = m(tokens, segments, both);  // (1, 48, V)
    const auto want_plain = shut_copy(plain_doc), want_task = m(task_doc), want_task_shut = task_copy(task_doc);
    EXPECT_LT((packed.narrow(1, 0, 28) - want_plain).abs().max().item<double>(), 1e-4) << "mode " << int(mode);
    EXPECT_LT((packed.narrow(1, 28, 20) - want_task).abs().max().item<double>(), 1e-4) << "mode " << int(mode);
    EXPECT_LT((packed_both.narrow(1, 0, 28) - want_plain).abs().max().item<double>(), 1e-4) << "mode " << int(mode);
    EXPECT_LT((packed_both.narrow(1, 28, 20) - want_task_shut).abs().max().item<double>(), 1e-4) << "mode " << int(mode);
    EXPECT_GT((m(plain_doc) - want_plain).abs().max().item<double>(), 1e-3) << "shutting the head must matter";
    EXPECT_GT((want_task - want_task_shut).abs().max().item<double>(), 1e-3) << "shutting the head must matter";
  }
  // Every head shut on every key: the loss reaches no predictor parameter; unshut, it does.
  m->train();
  m->gates.mode = GateMode::soft;
  for (bool all_shut : {true, false}) {
    for (auto& p : m->parameters()) p.mutable_grad() = torch::Tensor();
    const ShutGates every{torch::ones({2, 2}, torch::kBool), torch::ones({1, 28}, torch::kBool)};
    m(plain_doc, torch::Tensor(), all_shut ? every : ShutGates{}).pow(2).mean().backward();
    double g = 0;
    for (auto& p : m->predictor_parameters()) g += p.grad().defined() ? p.grad().abs().sum().item<double>() : 0.0;
    if (all_shut) EXPECT_EQ(g, 0.0);
    else EXPECT_GT(g, 0.0);
  }
  try {
    m(tokens, segments, ShutGates{torch::ones({2, 2}, torch::kBool), torch::ones({1, 20}, torch::kBool)});
    ADD_FAILURE() << "shut keys of the wrong shape were accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("shut gates: keys must be (B, T) [1, 48]"), std::string::npos) << e.what();
  }
  try {
    m(tokens, segments, ShutGates{{}, tokens < 32, torch::ones({2, 3}, torch::kBool)});
    ADD_FAILURE() << "shut heads of the wrong shape were accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("shut gates: heads must be (L, Hkv) [2, 2], got [2, 3]"), std::string::npos) << e.what();
  }

  // A dense model has no gates: its shut heads see only the keys within the window (8) on those documents,
  // which a layout with those heads local gives each document run alone.
  json jd = tiny_recipe(dir.path.string());
  jd.erase("spkv");
  LlamaForCausalLM d = build_model(parse_recipe(jd, dir / "r.json"));
  d->eval();
  torch::NoGradGuard ng;
  ShutGates dense_both = both;
  dense_both.window = 8;
  const auto packed = d(tokens, segments, dense_both);                                     // (1, 48, V)
  const auto open_plain = d(plain_doc), open_task = d(task_doc);
  d->layout = {{1, 1, 0, 1}, 8};  // head (1, 0) local: the plain document
  const auto want_plain = d(plain_doc);
  d->layout = {{1, 0, 1, 1}, 8};  // head (0, 1) local: the task document
  const auto want_task = d(task_doc);
  d->layout = {};
  EXPECT_LT((packed.narrow(1, 0, 28) - want_plain).abs().max().item<double>(), 1e-4);
  EXPECT_LT((packed.narrow(1, 28, 20) - want_task).abs().max().item<double>(), 1e-4);
  EXPECT_GT((open_plain - want_plain).abs().max().item<double>(), 1e-3) << "making the head local must matter";
  EXPECT_GT((open_task - want_task).abs().max().item<double>(), 1e-3) << "making the head local must matter";
  try {
    d(tokens, segments, both);
    ADD_FAILURE() << "a dense model's shut heads without a window were accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("shut gates: a model without SP-KV needs a window of at least 1, got 0"),
              std::string::npos) << e.what();
  }
}

// Through `spkv train`, no weight decay on the predictors and no density knob: on a file of plain documents
// only, every head local on text leaves the predictors exactly where they started, while every head local on
// tasks changes nothing (bit-identical to the open control, which moves them); on a file of task documents
// only, every head local on tasks leaves them where they started. A dense model does the same with a window
// (data.local_window). A file without a loss mask, a head outside the model and a missing or misplaced window
// are errors naming the recipe and the field.
TEST(Trainer, LocalHeadsTrainNoGateOnTheirDocumentsThroughTheCommandLine) {
  test::TempDir dir;
  auto docs = markov_docs(200, 64, 4);
  std::vector<std::vector<uint8_t>> every, answers;
  for (auto& d : docs) {
    every.emplace_back(d.size(), 1);
    answers.emplace_back(d.size(), 0);
    for (size_t i = 1; i < d.size(); i += 2) answers.back()[i] = 1;
  }
  write_token_file(dir / "train.tok", docs, 64, &every);
  write_token_file(dir / "tasks.tok", docs, 64, &answers);
  write_token_file(dir / "val.tok", markov_docs(20, 64, 5), 64);
  write_token_file(dir / "train1.tok", docs, 64);
  const json all_heads = json::parse("[[0, 0], [0, 1], [1, 0], [1, 1]]");
  std::map<std::string, Checkpoint> out;
  for (const std::string arm : {"open", "text-shut", "tasks-shut", "tasks-only", "dense", "dense-text", "dense-tasks"}) {
    json j = tiny_recipe(dir.path.string());
    j["schedule"]["gating"] = "soft";
    j["optim"]["predictor_weight_decay"] = 0.0;
    if (arm == "text-shut" || arm == "dense-text") j["data"]["local_on_text"] = all_heads;
    if (arm == "tasks-shut" || arm == "tasks-only" || arm == "dense-tasks") j["data"]["local_on_tasks"] = all_heads;
    if (arm == "tasks-only") j["data"]["train"] = dir / "tasks.tok";
    if (arm.rfind("dense", 0) == 0) j.erase("spkv");
    if (arm == "dense-text" || arm == "dense-tasks") j["data"]["local_window"] = 8;
    const std::string o = dir / arm;
    test::write_file(o + ".json", j.dump());
    auto r = test::run_spkv("train --recipe " + test::quote(o + ".json") + " --out " + test::quote(o));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    out.emplace(arm, load_checkpoint(o + "/model"));
  }
  json j = tiny_recipe(dir.path.string());
  const auto init = build_model(parse_recipe(j, dir / "r.json"))->named_tensors();
  int n = 0;
  for (const auto& [name, t] : init) {
    EXPECT_TRUE(torch::equal(out.at("tasks-shut").tensors.at(name), out.at("open").tensors.at(name)))
        << name << ": local_on_tasks changed training on plain text";
    if (name.find(".utility.") == std::string::npos) continue;
    ++n;
    EXPECT_TRUE(torch::equal(out.at("text-shut").tensors.at(name), t)) << name << " moved with every gate shut on text";
    EXPECT_TRUE(torch::equal(out.at("tasks-only").tensors.at(name), t)) << name << " moved with every gate shut on tasks";
    EXPECT_FALSE(torch::equal(out.at("open").tensors.at(name), t)) << name << " did not move in the control";
  }
  EXPECT_EQ(n, 8);
  // Dense: heads local on tasks change nothing on plain documents; local on text, every weight moves otherwise.
  for (const auto& [name, t] : out.at("dense").tensors) {
    EXPECT_TRUE(torch::equal(out.at("dense-tasks").tensors.at(name), t)) << name << ": local_on_tasks changed dense training";
    EXPECT_FALSE(torch::equal(out.at("dense-text").tensors.at(name), t)) << name << ": local_on_text changed nothing";
  }

  j["data"]["train"] = dir / "train1.tok";
  j["data"]["local_on_text"] = json::parse("[[1, 1]]");
  test::write_file(dir / "v1.json", j.dump());
  auto r = test::run_spkv("train --recipe " + test::quote(dir / "v1.json") + " --out " + test::quote(dir / "v1"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("v1.json: data.local_on_text needs a training file with a loss mask"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("train1.tok has none"), std::string::npos) << r.err;
  j["data"]["local_on_text"] = json::parse("[[2, 0]]");
  EXPECT_NE(recipe_error(j).find("r.json: data.local_on_text: expected [layer, kv_head] pairs with layer in [0, 2)"), std::string::npos) << recipe_error(j);
  j["data"]["local_on_text"] = json::parse("[[1]]");
  EXPECT_NE(recipe_error(j).find("r.json: data.local_on_text: expected [layer, kv_head] pairs"), std::string::npos) << recipe_error(j);
  j["data"]["local_on_text"] = json::parse("[[1, 1]]");
  j["data"].erase("local_on_text");
  j["data"]["local_on_tasks"] = json::parse("[[0, 2]]");
  EXPECT_NE(recipe_error(j).find("r.json: data.local_on_tasks: expected [layer, kv_head] pairs with layer in [0, 2) and kv_head in [0, 2)"), std::string::npos) << recipe_error(j);
  j["data"]["local_on_tasks"] = json::parse("[[1, 1]]");
  j["data"]["local_window"] = 8;
  EXPECT_NE(recipe_error(j).find("r.json: data.local_window: expected a window >= 1, for a model without SP-KV"), std::string::npos) << recipe_error(j);
  j.erase("spkv");
  j["data"]["local_window"] = 0;
  EXPECT_NE(recipe_error(j).find("r.json: data.local_window: expected a window >= 1"), std::string::npos) << recipe_error(j);
  j["data"].erase("local_window");
  EXPECT_NE(recipe_error(j).find("r.json: data.local_window: a model without SP-KV needs the window"), std::string::npos) << recipe_error(j);
}

TEST(Trainer, ScheduleFollowsWarmupCosineAndTheHardSwitch) {
  json j = tiny_recipe("/nowhere");
  j["schedule"] = {{"steps", 1000}, {"warmup", 100}, {"hard_at", 0.75}, {"anneal_steps", 500}};
  j["optim"] = {{"lr", 1e-3}, {"min_lr_ratio", 0.1}};
  Recipe r = parse_recipe(j, "r.json");
  EXPECT_NEAR(r.lr_at(0), 1e-5, 1e-12);
  EXPECT_NEAR(r.lr_at(99), 1e-3, 1e-12);
  EXPECT_NEAR(r.lr_at(550), 1e-3 * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 0.5))), 1e-12);
  EXPECT_EQ(r.switch_step(), 775);
  bool frozen = true;
  EXPECT_EQ(r.gates_at(774, &frozen).mode, GateMode::soft);
  EXPECT_FALSE(frozen);
  auto g = r.gates_at(775, &frozen);
  EXPECT_EQ(g.mode, GateMode::annealed);
  EXPECT_TRUE(frozen);
  EXPECT_NEAR(g.anneal, 1.0 / 500, 1e-12);
  EXPECT_NEAR(r.gates_at(999, &frozen).anneal, 225.0 / 500, 1e-12);
  j["spkv"] = nullptr;  // the dense control
  EXPECT_EQ(parse_recipe(j, "r.json").gates_at(900, &frozen).mode, GateMode::dense);
}

TEST(Trainer, BadRecipesNameTheField) {
  json j = tiny_recipe("/d");
  j["optim"]["lr_mult"] = 2;
  EXPECT_NE(recipe_error(j).find("r.json: optim: unknown field 'lr_mult'"), std::string::npos);
  j = tiny_recipe("/d");
  j["schedule"]["gating"] = "sometimes";
  EXPECT_NE(recipe_error(j).find("schedule.gating 'sometimes'"), std::string::npos);
  j = tiny_recipe("/d");
  j["data"]["windows"] = "aligned";
  EXPECT_NE(recipe_error(j).find("r.json: data.windows must be \"random\" or \"documents\", got \"aligned\""), std::string::npos);
  j = tiny_recipe("/d");
  j["data"]["loss"] = "answers";
  EXPECT_NE(recipe_error(j).find("r.json: data.loss must be \"mask\" or \"all\", got \"answers\""), std::string::npos);
  j = tiny_recipe("/d");
  j["data"]["seq_len"] = 65;
  EXPECT_NE(recipe_error(j).find("data.seq_len must be in [2, max_position_embeddings = 64]"), std::string::npos);
  j = tiny_recipe("/d");
  j["spkv"]["tau"] = 1.5;
  EXPECT_NE(recipe_error(j).find("r.json: spkv.tau must be in (0, 1)"), std::string::npos);
  j = tiny_recipe("/d");
  j["init"] = "x.bin";
  EXPECT_NE(recipe_error(j).find("either 'init'"), std::string::npos);
}

std::vector<json> read_log(const std::string& path, const std::string& type) {
  std::vector<json> out;
  std::istringstream in(test::read_file(path));
  for (std::string line; std::getline(in, line);)
    if (json::parse(line)["type"] == type) out.push_back(json::parse(line));
  return out;
}

TEST(Trainer, ResumeReproducesTheUninterruptedRunExactly) {
  test::TempDir dir;
  write_token_file(dir / "train.tok", markov_docs(200, 64, 4), 64);
  write_token_file(dir / "val.tok", markov_docs(20, 64, 5), 64);
  test::write_file(dir / "recipe.json", tiny_recipe(dir.path.string()).dump());
  // A fixed thread count: LibTorch's reductions split by it, so bitwise equality needs the same count in
  // every process (the automatic policy could choose differently under the test runner's load).
  const std::string recipe = "--threads 2 train --recipe " + test::quote(dir / "recipe.json");
  auto a = test::run_spkv(recipe + " --out " + test::quote(dir / "a"));
  ASSERT_EQ(a.exit_code, 0) << a.err;
  auto b1 = test::run_spkv(recipe + " --out " + test::quote(dir / "b") + " --stop-after 5");
  ASSERT_EQ(b1.exit_code, 0) << b1.err;
  EXPECT_NE(b1.out.find("stopped after step 5"), std::string::npos) << b1.out;
  auto again = test::run_spkv(recipe + " --out " + test::quote(dir / "b"));  // would clobber the run
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("pass --resume"), std::string::npos) << again.err;
  auto b2 = test::run_spkv(recipe + " --out " + test::quote(dir / "b") + " --resume");
  ASSERT_EQ(b2.exit_code, 0) << b2.err;
  EXPECT_TRUE(read_log(dir / "b/train_log.jsonl", "recipe_change").empty());  // the same recipe: nothing to say

  auto la = read_log(dir / "a/train_log.jsonl", "step"), lb = read_log(dir / "b/train_log.jsonl", "step");
  ASSERT_EQ(la.size(), 12u);
  ASSERT_EQ(lb.size(), 12u);
  for (size_t i = 0; i < la.size(); ++i) {
    EXPECT_EQ(lb[i]["step"], la[i]["step"]);
    EXPECT_EQ(lb[i]["loss"].get<double>(), la[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(lb[i]["mode"], la[i]["mode"]);
  }
  EXPECT_LT(la.back()["loss"].get<double>(), la.front()["loss"].get<double>() - 0.2);  // it learns
  EXPECT_EQ(la[5]["mode"], "soft");  // steps 1..7 soft, 8..12 annealed (switch at 2 + 0.5 * 10)
  EXPECT_EQ(la[7]["mode"], "annealed");
  auto ea = read_log(dir / "a/train_log.jsonl", "eval"), eb = read_log(dir / "b/train_log.jsonl", "eval");
  ASSERT_EQ(ea.size(), 3u);
  ASSERT_EQ(eb.size(), 3u);
  EXPECT_EQ(eb.back()["val_nll"].get<double>(), ea.back()["val_nll"].get<double>());
  EXPECT_EQ(ea.back()["density_per_head"].size(), 2u);

  SafetensorsFile fa(dir / "a/model/model.safetensors"), fb(dir / "b/model/model.safetensors");
  ASSERT_EQ(fa.tensors().size(), fb.tensors().size());
  for (auto& [name, t] : fa.tensors()) {
    const auto& u = fb.get(name);
    ASSERT_EQ(t.nbytes, u.nbytes);
    EXPECT_EQ(std::memcmp(t.data, u.data, t.nbytes), 0) << name;
  }

  // The hard phase froze the predictor: checkpoints 8 and 12 share it, and nothing else.
  SafetensorsFile c8(dir / "a/checkpoints/step-0000008/model.safetensors"), c12(dir / "a/model/model.safetensors");
  for (auto& [name, t] : c8.tensors()) {
    const bool same = std::memcmp(t.data, c12.get(name).data, t.nbytes) == 0;
    if (name.find(".utility.") != std::string::npos) EXPECT_TRUE(same) << name;
    if (name.find("q_proj.weight") != std::string::npos) EXPECT_FALSE(same) << name;
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "a/checkpoints/step-0000004"));  // only the last two are kept
  EXPECT_EQ(load_hf_config(dir / "a/model/config.json").spkv.mode, GateMode::hard);

  // Resumed under another recipe: allowed (a change from step N on is an experiment), said on stderr, and
  // the log records the step, the fields and the recipe the run had until then.
  json changed = tiny_recipe(dir.path.string());
  changed["optim"]["lr"] = changed["optim"]["lr"].get<double>() / 2;
  changed["eval"]["every"] = 3;
  test::write_file(dir / "changed.json", changed.dump());
  auto c1 = test::run_spkv(recipe + " --out " + test::quote(dir / "c") + " --stop-after 4");
  ASSERT_EQ(c1.exit_code, 0) << c1.err;
  auto c2 = test::run_spkv("--threads 2 train --recipe " + test::quote(dir / "changed.json") + " --out " +
                           test::quote(dir / "c") + " --resume");
  ASSERT_EQ(c2.exit_code, 0) << c2.err;
  EXPECT_NE(c2.err.find("resumed at step 4 under a recipe that differs from the run's in eval.every, optim.lr"),
            std::string::npos) << c2.err;
  auto rc = read_log(dir / "c/train_log.jsonl", "recipe_change");
  ASSERT_EQ(rc.size(), 1u);
  EXPECT_EQ(rc[0]["step"], 4);
  EXPECT_EQ(rc[0]["fields"], json({"eval.every", "optim.lr"}));
  EXPECT_EQ(rc[0]["before"], tiny_recipe(dir.path.string()));
  EXPECT_EQ(json::parse(test::read_file(dir / "c/recipe.json")), changed);
  auto lc = read_log(dir / "c/train_log.jsonl", "step");
  ASSERT_EQ(lc.size(), 12u);
  EXPECT_EQ(lc[3]["loss"].get<double>(), la[3]["loss"].get<double>());  // the same run to step 4
  EXPECT_DOUBLE_EQ(lc[4]["lr"].get<double>(), la[4]["lr"].get<double>() / 2);  // the new recipe from step 5
}

// Data-parallel training (docs/distributed.md): two processes, each taking half of every micro-batch, train
// what one process trains with the same recipe (the density knob on, through the soft and annealed phases):
// the same loss and density at every step and the same weights, to float rounding (the halves' gradients are
// summed in another order). A run stopped at two ranks resumes in one process; a batch that does not divide
// among the ranks is refused.
TEST(Trainer, TwoRanksTrainWhatOneProcessTrainsAndResumeAtAnotherWorldSize) {
  test::TempDir dir;
  write_token_file(dir / "train.tok", markov_docs(200, 64, 4), 64);
  write_token_file(dir / "val.tok", markov_docs(20, 64, 5), 64);
  json recipe = tiny_recipe(dir.path.string());
  recipe["schedule"]["steps"] = 20;
  recipe["schedule"]["warmup"] = 3;
  recipe["eval"]["every"] = 10;
  recipe["optim"]["density_lambda"] = -3.0;  // as DensityKnobMovesTheGates: the gates close within the soft phase
  recipe["optim"]["predictor_lr_mult"] = 30.0;
  recipe["spkv"]["init_bias"] = 0.3;
  test::write_file(dir / "recipe.json", recipe.dump());
  const std::string train = "train --recipe " + test::quote(dir / "recipe.json") + " --out ";
  const auto one = test::run_spkv("--threads 1 " + train + test::quote(dir / "one"));
  ASSERT_EQ(one.exit_code, 0) << one.err;
  const auto two = test::launch(2, train + test::quote(dir / "two"));
  for (int r = 0; r < 2; ++r) ASSERT_EQ(two[r].exit_code, 0) << "rank " << r << ": " << two[r].err;
  EXPECT_NE(two[0].out.find("trained 20 steps"), std::string::npos) << two[0].out;
  EXPECT_TRUE(two[1].out.empty()) << "rank 0 reports: " << two[1].out;

  auto la = read_log(dir / "one/train_log.jsonl", "step"), lb = read_log(dir / "two/train_log.jsonl", "step");
  ASSERT_EQ(la.size(), 20u);
  ASSERT_EQ(lb.size(), 20u);
  for (size_t i = 0; i < la.size(); ++i) {
    EXPECT_NEAR(lb[i]["loss"].get<double>(), la[i]["loss"].get<double>(), 1e-5) << "step " << i + 1;
    EXPECT_NEAR(lb[i]["density"].get<double>(), la[i]["density"].get<double>(), 1e-6) << "step " << i + 1;
    EXPECT_NEAR(lb[i]["grad_norm"].get<double>(), la[i]["grad_norm"].get<double>(), 1e-4 * la[i]["grad_norm"].get<double>());
    EXPECT_EQ(lb[i]["tokens"], la[i]["tokens"]);
    EXPECT_EQ(lb[i]["mode"], la[i]["mode"]);
  }
  EXPECT_EQ(la[17]["mode"], "annealed");
  EXPECT_LT(la.back()["density"].get<double>(), 0.9) << "the knob closed gates, so the density term was in play";
  auto ea = read_log(dir / "one/train_log.jsonl", "eval"), eb = read_log(dir / "two/train_log.jsonl", "eval");
  ASSERT_EQ(eb.size(), 2u);
  EXPECT_NEAR(eb.back()["val_nll"].get<double>(), ea.back()["val_nll"].get<double>(), 1e-5);

  auto max_diff = [&](const std::string& a, const std::string& b) {
    SafetensorsFile fa(a), fb(b);
    EXPECT_EQ(fa.tensors().size(), fb.tensors().size());
    double worst = 0;
    for (auto& [name, t] : fa.tensors()) {
      const auto* x = static_cast<const float*>(t.data);
      const auto* y = static_cast<const float*>(fb.get(name).data);
      for (int64_t k = 0; k < t.numel(); ++k) worst = std::max(worst, double(std::abs(x[k] - y[k])));
    }
    return worst;
  };
  EXPECT_LT(max_diff(dir / "one/model/model.safetensors", dir / "two/model/model.safetensors"), 1e-4);
  // Another world size would train other weights if the data order depended on it: a 2-rank run stopped at
  // step 10 and resumed in one process ends where one process ends.
  const auto half = test::launch(2, train + test::quote(dir / "mixed") + " --stop-after 10");
  for (int r = 0; r < 2; ++r) ASSERT_EQ(half[r].exit_code, 0) << "rank " << r << ": " << half[r].err;
  const auto rest = test::run_spkv("--threads 1 " + train + test::quote(dir / "mixed") + " --resume");
  ASSERT_EQ(rest.exit_code, 0) << rest.err;
  EXPECT_LT(max_diff(dir / "one/model/model.safetensors", dir / "mixed/model/model.safetensors"), 1e-4);
  EXPECT_GT(max_diff(dir / "one/model/model.safetensors", dir / "one/checkpoints/step-0000010/model.safetensors"), 1e-3)
      << "the last ten steps move the weights by more than the tolerance, or the comparisons above prove little";

  const auto three = test::launch(3, train + test::quote(dir / "three"));
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(three[r].exit_code, 1);
    EXPECT_NE(three[r].err.find("data.batch_size 4 does not divide among 3 ranks"), std::string::npos) << three[r].err;
  }
}

// The density knob (optim.density_lambda, the method's L_aux = -lambda * mean(u)): with the same data and
// seed, a negative lambda closes gates the plain loss leaves open, a positive one keeps them open; the
// logged loss stays the NLL (identical at step 1, before the first update differs).
TEST(Trainer, DensityKnobMovesTheGatesAndLeavesTheLoggedNll) {
  test::TempDir dir;
  write_token_file(dir / "train.tok", markov_docs(200, 64, 4), 64);
  write_token_file(dir / "val.tok", markov_docs(20, 64, 5), 64);
  std::map<double, json> last, first_step;
  for (double lambda : {-3.0, 0.0, 3.0}) {
    json j = tiny_recipe(dir.path.string());
    j["optim"]["density_lambda"] = lambda;
    j["optim"]["predictor_lr_mult"] = 30.0;
    j["spkv"]["init_bias"] = 0.3;  // gates start near the threshold, so 12 steps can move them either way
    j["schedule"]["gating"] = "soft";
    const std::string out = dir / ("l" + std::to_string(int(lambda)));
    test::write_file(out + ".json", j.dump());
    auto r = test::run_spkv("train --recipe " + test::quote(out + ".json") + " --out " + test::quote(out));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    last[lambda] = read_log(out + "/train_log.jsonl", "eval").back();
    first_step[lambda] = read_log(out + "/train_log.jsonl", "step").front();
  }
  EXPECT_EQ(first_step[-3.0]["loss"], first_step[0.0]["loss"]);
  EXPECT_EQ(first_step[3.0]["loss"], first_step[0.0]["loss"]);
  const double closed = last[-3.0]["density"], plain = last[0.0]["density"], open = last[3.0]["density"];
  EXPECT_LT(closed, plain - 0.2) << closed << " vs " << plain << " vs " << open;
  EXPECT_GT(open, plain + 0.05) << open << " vs " << plain;
  // One lambda per layer: pressure on the last layer alone closes its gates and not the first's (which may
  // open further, taking over what the closed layer read); the scalar form equals one value per layer.
  std::map<std::string, json> arrays;
  const json per_head = json::parse("[[-3.0, -3.0], [-3.0, -3.0]]");  // the tiny model has 2 KV heads
  for (const json& lambda : {json::array({0.0, -3.0}), json::array({-3.0, -3.0}), per_head}) {
    json j = tiny_recipe(dir.path.string());
    j["optim"]["density_lambda"] = lambda;
    j["optim"]["predictor_lr_mult"] = 30.0;
    j["spkv"]["init_bias"] = 0.3;
    j["schedule"]["gating"] = "soft";
    const std::string out = dir / ("layers" + std::to_string(arrays.size()));
    test::write_file(out + ".json", j.dump());
    auto r = test::run_spkv("train --recipe " + test::quote(out + ".json") + " --out " + test::quote(out));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    arrays[lambda.dump()] = read_log(out + "/train_log.jsonl", "eval").back()["density_per_layer"];
  }
  const json pressed = arrays["[0.0,-3.0]"], plain_layers = last[0.0]["density_per_layer"];
  EXPECT_LT(pressed[1].get<double>(), plain_layers[1].get<double>() - 0.2) << pressed << " vs " << plain_layers;
  EXPECT_GT(pressed[0].get<double>(), pressed[1].get<double>() + 0.2) << pressed;  // the unpressed one stays open
  EXPECT_EQ(arrays["[-3.0,-3.0]"], last[-3.0]["density_per_layer"]);
  EXPECT_EQ(arrays[per_head.dump()], last[-3.0]["density_per_layer"]);  // one value per (layer, KV head)
  json bad = tiny_recipe(dir.path.string());
  bad["optim"]["density_lambda"] = {-0.1, -0.1, -0.1};  // 3 values for 2 layers
  try {
    parse_recipe(bad, "r.json");
    ADD_FAILURE() << "3 density_lambda values for 2 layers were accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("one number per layer (2) or one list of 2 per layer, got 3"), std::string::npos) << e.what();
  }
  bad["optim"]["density_lambda"] = json::parse("[[-0.1, -0.1], [-0.1]]");
  try {
    parse_recipe(bad, "r.json");
    ADD_FAILURE() << "a layer with 1 of 2 KV heads' values was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("one number per KV head (2), got 1"), std::string::npos) << e.what();
  }
  bad["optim"]["density_lambda"] = "strong";
  try {
    parse_recipe(bad, "r.json");
    ADD_FAILURE() << "a string density_lambda was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("density_lambda"), std::string::npos) << e.what();
  }
}

// The gate target's statistic (GateTargetAttention) against the float64 reference forward: per layer, key
// and KV head, the largest probability a query head of the KV head gives the key from a counted query that
// sees it from outside the window W = 8. Two packed documents (no key is read across their boundary), the
// gates open (dense mode; the reference with tau 0 keeps every key). Counting every query instead must give
// a different statistic, or the test could not tell the loss mask is used.
TEST(Trainer, GateTargetReadsTheLargestFarProbabilityOfACountedQuery) {
  test::TempDir dir;
  LlamaForCausalLM m = build_model(parse_recipe(tiny_recipe(dir.path.string()), dir / "r.json"));
  m->eval();
  m->gates.mode = GateMode::dense;
  std::mt19937_64 rng(7);
  const std::vector<int64_t> lengths{30, 26};
  std::vector<std::vector<int64_t>> docs(2);
  std::vector<std::vector<uint8_t>> counted(2);
  std::vector<int64_t> all_tokens, all_segments;
  std::vector<uint8_t> all_counted;
  for (size_t d = 0; d < 2; ++d)
    for (int64_t t = 0; t < lengths[d]; ++t) {
      docs[d].push_back(2 + int64_t(rng() % 62)), counted[d].push_back(rng() % 3 == 0);
      all_tokens.push_back(docs[d].back()), all_segments.push_back(int64_t(d)), all_counted.push_back(counted[d].back());
    }
  const int64_t T = int64_t(all_tokens.size());
  const auto tokens = torch::tensor(all_tokens).view({1, T}), segments = torch::tensor(all_segments).view({1, T});
  const auto mask = make_attention_mask(m->config, T, segments, torch::kCPU);
  GateTargetAttention g(m->config, mask, m->gates, {},
                        torch::tensor(std::vector<int64_t>(all_counted.begin(), all_counted.end())).view({1, T}) != 0);
  {
    torch::NoGradGuard ng;
    m->forward_with(tokens, mask.positions, g);
  }
  ASSERT_EQ(g.read_far.size(), 2u);
  const int64_t L = 2, Hkv = 2;
  m->config.spkv.tau = 0;  // the reference keeps a key when u >= tau: every key
  double largest = 0, moved = 0;
  for (size_t d = 0, at = 0; d < 2; at += size_t(lengths[d]), ++d) {
    std::vector<double> want, want_all;
    std::vector<uint8_t> every(size_t(lengths[d]), 1);
    test::ref_forward(m, docs[d], nullptr, nullptr, 0, nullptr, 0, nullptr, &counted[d], &want);
    test::ref_forward(m, docs[d], nullptr, nullptr, 0, nullptr, 0, nullptr, &every, &want_all);
    for (int64_t il = 0; il < L; ++il)
      for (int64_t s = 0; s < lengths[d]; ++s) {
        bool read = false;  // some counted query at t - s >= 8 in this document
        for (int64_t t = s + 8; t < lengths[d]; ++t) read = read || counted[d][size_t(t)];
        EXPECT_EQ(g.read_by[0][int64_t(at) + s].item<bool>(), read) << "doc " << d << " key " << s;
        for (int64_t h = 0; h < Hkv; ++h) {
          const size_t i = size_t((il * lengths[d] + s) * Hkv + h);
          const double got = g.read_far[size_t(il)][0][int64_t(at) + s][h].item<double>();
          EXPECT_NEAR(got, want[i], 1e-5) << "doc " << d << " layer " << il << " key " << s << " head " << h;
          largest = std::max(largest, want[i]);
          moved = std::max(moved, std::abs(want_all[i] - want[i]));
        }
      }
  }
  EXPECT_GT(largest, 0.1) << "the statistic must not be all zeros";
  EXPECT_GT(moved, 0.01) << "counting every query must change it";
}

// Through `spkv train` on a file whose task documents count only their answers: the gate target leaves the
// first step's logged NLL as it is (the same forward pass), and its logged term falls as the predictor
// learns it; without it the log has no such term; with "keys": "all" the term covers plain-text keys too,
// with "heads" only the listed heads.
// A file without a loss mask and the bad fields are errors.
TEST(Trainer, GateTargetTrainsThePredictorThroughTheCommandLine) {
  test::TempDir dir;
  std::vector<std::vector<int32_t>> docs = markov_docs(200, 64, 4);
  std::vector<std::vector<uint8_t>> counts;
  for (size_t d = 0; d < docs.size(); ++d) {  // every third document a task whose last third is its answers
    counts.emplace_back();
    for (size_t t = 0; t < docs[d].size(); ++t) counts.back().push_back(d % 3 != 1 || 3 * t >= 2 * docs[d].size());
  }
  write_token_file(dir / "train.tok", docs, 64, &counts);
  write_token_file(dir / "val.tok", markov_docs(20, 64, 5), 64);
  std::map<double, std::vector<json>> steps;  // weight 2: weight 1 with "keys": "all"; 3: with one head
  for (double weight : {0.0, 1.0, 2.0, 3.0}) {
    json j = tiny_recipe(dir.path.string());
    j["optim"]["gate_target"] = {{"weight", std::min(weight, 1.0)}, {"threshold", 0.1}};
    if (weight == 2.0) j["optim"]["gate_target"]["keys"] = "all";
    if (weight == 3.0) j["optim"]["gate_target"]["heads"] = json::parse("[[1, 0]]");
    j["optim"]["predictor_lr_mult"] = 30.0;
    j["schedule"]["gating"] = "soft";
    j["schedule"]["steps"] = 20;
    const std::string out = dir / ("w" + std::to_string(int(weight)));
    test::write_file(out + ".json", j.dump());
    auto r = test::run_spkv("train --recipe " + test::quote(out + ".json") + " --out " + test::quote(out));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    steps[weight] = read_log(out + "/train_log.jsonl", "step");
  }
  EXPECT_EQ(steps[1.0].front()["loss"], steps[0.0].front()["loss"]);
  EXPECT_FALSE(steps[0.0].front().contains("gate_target"));
  ASSERT_TRUE(steps[1.0].front().contains("gate_target"));
  double first = 0, last = 0;
  for (size_t i = 0; i < 4; ++i)
    first += steps[1.0][i]["gate_target"].get<double>(), last += steps[1.0][steps[1.0].size() - 1 - i]["gate_target"].get<double>();
  EXPECT_LT(last, 0.7 * first) << "the term must fall as the predictor learns it: " << first / 4 << " -> " << last / 4;
  // plain-text keys too: the same first forward pass, a term over more keys
  EXPECT_EQ(steps[2.0].front()["loss"], steps[0.0].front()["loss"]);
  EXPECT_NE(steps[2.0].front()["gate_target"], steps[1.0].front()["gate_target"]);
  // one head of four: the same forward pass, the term of that head alone
  EXPECT_EQ(steps[3.0].front()["loss"], steps[0.0].front()["loss"]);
  EXPECT_NE(steps[3.0].front()["gate_target"], steps[1.0].front()["gate_target"]);

  json j = tiny_recipe(dir.path.string());
  j["optim"]["gate_target"] = {{"weight", 1.0}};
  j["data"]["train"] = dir / "val.tok";  // no loss mask
  test::write_file(dir / "nomask.json", j.dump());
  auto r = test::run_spkv("train --recipe " + test::quote(dir / "nomask.json") + " --out " + test::quote(dir / "nomask"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("nomask.json: optim.gate_target needs a training file with a loss mask"), std::string::npos) << r.err;
  j = tiny_recipe("/d");
  j["optim"]["gate_target"] = {{"weight", 1.0}, {"threshold", 0.0}};
  EXPECT_NE(recipe_error(j).find("r.json: optim.gate_target.threshold must be in (0, 1]"), std::string::npos);
  j["optim"]["gate_target"] = {{"weight", 1.0}, {"keys", "text"}};
  EXPECT_NE(recipe_error(j).find("r.json: optim.gate_target.keys must be \"tasks\" or \"all\", got \"text\""),
            std::string::npos) << recipe_error(j);
  j["optim"]["gate_target"] = {{"weight", 1.0}, {"heads", json::parse("[[2, 0]]")}};
  EXPECT_NE(recipe_error(j).find("r.json: optim.gate_target.heads: expected [layer, kv_head] pairs with layer in [0, 2)"),
            std::string::npos) << recipe_error(j);
  j["optim"]["gate_target"] = {{"weight", 1.0}, {"level", 0.1}};
  EXPECT_NE(recipe_error(j).find("r.json: optim.gate_target: unknown field 'level'"), std::string::npos) << recipe_error(j);
  j["optim"]["gate_target"] = {{"weight", 1.0}};
  j.erase("spkv");
  EXPECT_NE(recipe_error(j).find("r.json: optim.gate_target needs an SP-KV model"), std::string::npos);
}

// "text_threshold" labels plain-text keys alone: on a file of plain-text documents the first step's term with
// threshold 0.3 and text_threshold 0.1 is the term with threshold 0.1 (and not the one with 0.3); on a file
// of task documents it is the term with threshold 0.3 (and not the one with 0.1). Without "keys": "all" it is
// an error.
TEST(Trainer, GateTargetTextThresholdLabelsPlainTextKeysAlone) {
  test::TempDir dir;
  std::vector<std::vector<int32_t>> docs = markov_docs(60, 64, 4);
  std::vector<std::vector<uint8_t>> plain, task;
  for (const auto& d : docs) {  // the same tokens as plain text (every target counted) and as tasks
    plain.emplace_back(d.size(), 1), task.emplace_back();
    for (size_t t = 0; t < d.size(); ++t) task.back().push_back(3 * t >= 2 * d.size());
  }
  write_token_file(dir / "plain.tok", docs, 64, &plain);
  write_token_file(dir / "task.tok", docs, 64, &task);
  write_token_file(dir / "val.tok", markov_docs(20, 64, 5), 64);
  const auto first_term = [&](const std::string& file, double threshold, double text_threshold) {
    json j = tiny_recipe(dir.path.string());
    j["data"]["train"] = dir / (file + ".tok");
    j["optim"]["gate_target"] = {{"weight", 1.0}, {"threshold", threshold}, {"keys", "all"}};
    if (text_threshold > 0) j["optim"]["gate_target"]["text_threshold"] = text_threshold;
    j["schedule"]["gating"] = "soft";
    j["schedule"]["steps"] = 1, j["schedule"]["warmup"] = 0;
    const std::string out = dir / (file + std::to_string(threshold) + "-" + std::to_string(text_threshold));
    test::write_file(out + ".json", j.dump());
    auto r = test::run_spkv("train --recipe " + test::quote(out + ".json") + " --out " + test::quote(out));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.exit_code ? std::nan("") : read_log(out + "/train_log.jsonl", "step").at(0).at("gate_target").get<double>();
  };
  const double plain_both = first_term("plain", 0.3, 0.1);
  EXPECT_EQ(plain_both, first_term("plain", 0.1, 0));
  EXPECT_NE(plain_both, first_term("plain", 0.3, 0));
  const double task_both = first_term("task", 0.3, 0.1);
  EXPECT_EQ(task_both, first_term("task", 0.3, 0));
  EXPECT_NE(task_both, first_term("task", 0.1, 0));

  json j = tiny_recipe("/d");
  j["optim"]["gate_target"] = {{"weight", 1.0}, {"text_threshold", 0.1}};
  EXPECT_NE(recipe_error(j).find("r.json: optim.gate_target.text_threshold needs \"keys\": \"all\""),
            std::string::npos) << recipe_error(j);
  j["optim"]["gate_target"] = {{"weight", 1.0}, {"keys", "all"}, {"text_threshold", 0.0}};
  EXPECT_NE(recipe_error(j).find("r.json: optim.gate_target.text_threshold must be in (0, 1]"), std::string::npos)
      << recipe_error(j);
}

// data.loss "all" with the gate target: the loss counts every target, the gate target's queries stay the
// answers. The first step's term equals "mask"'s (the same queries) and differs from the term of a file whose
// every target is an answer (queries everywhere); the logged loss is the all-target loss of that file.
TEST(Trainer, GateTargetQueriesStayTheAnswersWhenTheLossCountsEveryTarget) {
  test::TempDir dir;
  std::vector<std::vector<int32_t>> docs = markov_docs(60, 64, 4);
  std::vector<std::vector<uint8_t>> task, all;
  for (const auto& d : docs) {  // a task whose last third is its answers, and the same tokens all counted
    task.emplace_back(), all.emplace_back(d.size(), 1);
    for (size_t t = 0; t < d.size(); ++t) task.back().push_back(3 * t >= 2 * d.size());
  }
  write_token_file(dir / "task.tok", docs, 64, &task);
  write_token_file(dir / "all.tok", docs, 64, &all);
  write_token_file(dir / "val.tok", markov_docs(20, 64, 5), 64);
  const auto first_step = [&](const std::string& file, const std::string& loss) {
    json j = tiny_recipe(dir.path.string());
    j["data"]["train"] = dir / (file + ".tok");
    j["data"]["loss"] = loss;
    j["optim"]["gate_target"] = {{"weight", 1.0}, {"threshold", 0.1}, {"keys", "all"}};
    j["schedule"]["gating"] = "soft";
    j["schedule"]["steps"] = 1, j["schedule"]["warmup"] = 0;
    const std::string out = dir / (file + "-" + loss);
    test::write_file(out + ".json", j.dump());
    auto r = test::run_spkv("train --recipe " + test::quote(out + ".json") + " --out " + test::quote(out));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.exit_code ? json() : read_log(out + "/train_log.jsonl", "step").at(0);
  };
  const json answers = first_step("task", "mask"), whole = first_step("task", "all"), every = first_step("all", "mask");
  ASSERT_FALSE(answers.is_null() || whole.is_null() || every.is_null());
  EXPECT_EQ(whole.at("gate_target"), answers.at("gate_target")) << "the same queries: the answers";
  EXPECT_NE(whole.at("gate_target"), every.at("gate_target")) << "not every target's query";
  EXPECT_EQ(whole.at("loss"), every.at("loss")) << "the loss counts every target";
  EXPECT_NE(whole.at("loss"), answers.at("loss"));
}

// "into": "predictor": after one step the model outside the predictors is bit for bit the model trained
// without the term (the term reached only the predictors), while "into": "model" changes it; both change
// the predictors. (No gradient clipping, whose global norm would couple the two.)
TEST(Trainer, GateTargetIntoThePredictorLeavesTheRestOfTheModelToTheNextTokenLoss) {
  test::TempDir dir;
  std::vector<std::vector<int32_t>> docs = markov_docs(60, 64, 4);
  std::vector<std::vector<uint8_t>> counts;
  for (size_t d = 0; d < docs.size(); ++d) {  // every document a task whose last third is its answers
    counts.emplace_back();
    for (size_t t = 0; t < docs[d].size(); ++t) counts.back().push_back(3 * t >= 2 * docs[d].size());
  }
  write_token_file(dir / "train.tok", docs, 64, &counts);
  write_token_file(dir / "val.tok", markov_docs(20, 64, 5), 64);
  std::map<std::string, Checkpoint> out;
  for (std::string arm : {"off", "model", "predictor"}) {
    json j = tiny_recipe(dir.path.string());
    j["optim"]["grad_clip"] = 0.0;
    if (arm != "off") j["optim"]["gate_target"] = {{"weight", 1.0}, {"threshold", 0.1}, {"into", arm}};
    j["schedule"]["gating"] = "soft";
    j["schedule"]["steps"] = 1, j["schedule"]["warmup"] = 0;
    const std::string o = dir / arm;
    test::write_file(o + ".json", j.dump());
    auto r = test::run_spkv("train --recipe " + test::quote(o + ".json") + " --out " + test::quote(o));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    out.emplace(arm, load_checkpoint(o + "/model"));
  }
  int backbone = 0, model_moved = 0;
  for (const auto& [name, t] : out.at("off").tensors) {
    const bool predictor = name.find(".utility.") != std::string::npos;
    const bool same_p = torch::equal(out.at("predictor").tensors.at(name), t), same_m = torch::equal(out.at("model").tensors.at(name), t);
    if (predictor) {
      if (name.find("weight") != std::string::npos) EXPECT_FALSE(same_p || same_m) << name << ": the term must train the predictor";
      continue;
    }
    ++backbone;
    EXPECT_TRUE(same_p) << name << ": \"into\": \"predictor\" changed the model outside the predictors";
    model_moved += !same_m;
  }
  EXPECT_GT(backbone, 10);
  EXPECT_GT(model_moved, 5) << "\"into\": \"model\" must reach the layers below the predictors";
  json j = tiny_recipe("/d");
  j["optim"]["gate_target"] = {{"weight", 1.0}, {"into", "backbone"}};
  EXPECT_NE(recipe_error(j).find("r.json: optim.gate_target.into must be \"model\" or \"predictor\", got \"backbone\""),
            std::string::npos) << recipe_error(j);
}

// optim.train "predictors": from a trained SP-KV model, steps that move its predictors and leave every other
// tensor bit for bit as it was (the gates recalibrated on a frozen model); "all" moves both. The
// soft_then_hard schedule, whose hard phase freezes the predictors too, is refused.
TEST(Trainer, TrainingThePredictorsAloneLeavesTheModelAsItWas) {
  test::TempDir dir;
  write_token_file(dir / "train.tok", markov_docs(60, 64, 4), 64);
  write_token_file(dir / "val.tok", markov_docs(20, 64, 5), 64);
  auto train = [&](const std::string& name, const json& j) {
    test::write_file(dir / (name + ".json"), j.dump());
    auto r = test::run_spkv("train --recipe " + test::quote(dir / (name + ".json")) + " --out " + test::quote(dir / name));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return load_checkpoint(dir / (name + "/model"));
  };
  json base = tiny_recipe(dir.path.string());
  base["schedule"] = {{"steps", 3}, {"warmup", 0}, {"gating", "soft"}};
  const auto start = train("start", base);
  std::map<std::string, Checkpoint> out;
  for (std::string arm : {"predictors", "all"}) {
    json j = base;
    j.erase("model");
    j["init"] = dir / "start/model";
    j["optim"]["train"] = arm;
    out.emplace(arm, train(arm, j));
  }
  int backbone = 0, all_moved = 0, predictors = 0;
  for (const auto& [name, t] : start.tensors) {
    const bool same = torch::equal(out.at("predictors").tensors.at(name), t);
    if (name.find(".utility.") != std::string::npos) {
      if (name.find("weight") != std::string::npos) {
        ++predictors;
        EXPECT_FALSE(same) << name << ": the predictors must train";
      }
      continue;
    }
    ++backbone;
    EXPECT_TRUE(same) << name << ": optim.train \"predictors\" changed the model outside the predictors";
    all_moved += !torch::equal(out.at("all").tensors.at(name), t);
  }
  EXPECT_GT(predictors, 0);
  EXPECT_GT(backbone, 10);
  EXPECT_GT(all_moved, 10) << "optim.train \"all\" must move the model";
  json j = tiny_recipe("/d");
  j["optim"]["train"] = "predictors";
  EXPECT_NE(recipe_error(j).find("r.json: optim.train \"predictors\" needs schedule.gating \"soft\" or \"ste\""),
            std::string::npos) << recipe_error(j);
  j["optim"]["train"] = "gates";
  EXPECT_NE(recipe_error(j).find("r.json: optim.train must be \"all\" or \"predictors\", got \"gates\""),
            std::string::npos) << recipe_error(j);
}

TEST(Trainer, AdaptationStartsAtTheDenseModel) {
  SPKV_REQUIRE_SHARED();
  const std::string bin = test::shared_dir() + "/models/stories260K/stories260K.bin";
  json j = tiny_recipe("/d");
  j.erase("model");
  j["init"] = bin;
  j["spkv"] = {{"window", 16}};
  Recipe r = parse_recipe(j, "r.json");
  auto m = build_model(r);
  auto dense = load_model(bin);
  m->eval();
  EXPECT_EQ(m->predictor_parameters().size(), 4u * 5);
  {  // The new predictors are drawn from the recipe's seed, whatever the process drew before.
    torch::randn({1000});
    auto again = build_model(r);
    const auto pa = m->predictor_parameters(), pb = again->predictor_parameters();
    for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pb[i])) << "predictor tensor " << i;
    j["seed"] = 4;
    EXPECT_FALSE(torch::equal(build_model(parse_recipe(j, "r.json"))->predictor_parameters()[0], pa[0]));
  }
  std::vector<int64_t> toks;
  for (int i = 0; i < 120; ++i) toks.push_back((i * 37 + 5) % 500 + 3);
  torch::NoGradGuard ng;
  auto x = torch::tensor(toks).unsqueeze(0);
  auto want = dense(x), got = m(x);
  const double rel = ((got - want).norm() / want.norm()).item<double>();
  EXPECT_LT(rel, 1e-2);
  m->gates.mode = GateMode::soft;
  EXPECT_LT(((m(x) - want).norm() / want.norm()).item<double>(), 1e-2);
}

// Ctrl-C (SIGINT) finishes the current step, writes a checkpoint and exits 130, so a script that chains
// commands stops; the run resumes from that checkpoint.
TEST(Trainer, InterruptedRunExitsNonZeroWithACheckpoint) {
  test::TempDir dir;
  write_token_file(dir / "train.tok", markov_docs(200, 64, 4), 64);
  write_token_file(dir / "val.tok", markov_docs(20, 64, 5), 64);
  json recipe = tiny_recipe(dir.path.string());
  recipe["schedule"]["steps"] = 100000;
  recipe["eval"]["every"] = 100000;
  test::write_file(dir / "recipe.json", recipe.dump());
  const std::string log = dir / "run/train_log.jsonl";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string cmd = "exec " + std::string(SPKV_BIN) + " train --recipe " + test::quote(dir / "recipe.json") +
                            " --out " + test::quote(dir / "run") + " >/dev/null 2>&1";
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  auto lines = [&] {  // complete lines of the log so far (only steps: the first evaluation is far away)
    std::ifstream in(log);
    return std::count(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>(), '\n');
  };
  while (std::chrono::steady_clock::now() < deadline && lines() < 3)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "SIGINT should be caught";
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGINT);
  const int64_t steps = int64_t(read_log(log, "step").size());
  EXPECT_GE(steps, 3);
  EXPECT_TRUE(std::filesystem::exists(dir / "run/checkpoints")) << "the stop writes a checkpoint";
  auto resumed = test::run_spkv("train --recipe " + test::quote(dir / "recipe.json") + " --out " +
                                test::quote(dir / "run") + " --resume --stop-after " + std::to_string(steps + 2));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_EQ(int64_t(read_log(log, "step").size()), steps + 2);
}

// A checkpoint that cannot be written (here: a file-size limit, as a full disk) is an error naming the
// file, not an abort; a run folder left without a complete checkpoint starts over, with or without
// --resume, and then trains to the end.
TEST(Trainer, CheckpointWriteFailureIsAnErrorAndTheFolderStartsOver) {
  test::TempDir dir;
  write_token_file(dir / "train.tok", markov_docs(200, 64, 4), 64);
  write_token_file(dir / "val.tok", markov_docs(20, 64, 5), 64);
  test::write_file(dir / "recipe.json", tiny_recipe(dir.path.string()).dump());
  auto ref = test::run_spkv("train --recipe " + test::quote(dir / "recipe.json") + " --out " + test::quote(dir / "ref"));
  ASSERT_EQ(ref.exit_code, 0) << ref.err;
  const auto model_bytes = std::filesystem::file_size(dir / "ref/model/model.safetensors");
  std::uintmax_t optimizer_bytes = 0;
  for (auto& e : std::filesystem::directory_iterator(dir / "ref/checkpoints"))
    optimizer_bytes = std::filesystem::file_size(e.path() / "optimizer.pt");
  ASSERT_GT(optimizer_bytes, model_bytes + 4096);
  // A file-size limit between the two: the model's safetensors fits, the optimizer state does not.
  const std::string train = std::string(SPKV_BIN) + " train --recipe " + test::quote(dir / "recipe.json") + " --out " +
                            test::quote(dir / "run");
  const std::string limited = "bash -c " + test::quote("trap '' XFSZ; ulimit -f " + std::to_string(model_bytes / 1024 + 2) +
                                                       "; exec " + train + " 2>" + test::quote(dir / "err") + " >/dev/null");
  const int status = std::system(limited.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1) << "an error, not an abort (134)";
  std::string err = test::read_file(dir / "err");
  err = err.substr(err.rfind('\n', err.size() - 2) + 1);  // the last line; the progress bar comes before it
  EXPECT_EQ(err.rfind("spkv: error: ", 0), 0u) << err;
  EXPECT_NE(err.find("optimizer.pt"), std::string::npos) << err;
  EXPECT_NE(err.find("File too large"), std::string::npos) << err;
  if (std::filesystem::exists(dir / "run/checkpoints"))
    for (auto& e : std::filesystem::directory_iterator(dir / "run/checkpoints"))
      EXPECT_NE(e.path().filename().string().find(".tmp"), std::string::npos) << "a complete checkpoint: " << e.path();

  auto resumed = test::run_spkv("train --recipe " + test::quote(dir / "recipe.json") + " --out " + test::quote(dir / "run") + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("no complete checkpoint"), std::string::npos) << resumed.err;
  EXPECT_EQ(read_log(dir / "run/train_log.jsonl", "step").size(), 12u);
  EXPECT_TRUE(std::filesystem::exists(dir / "run/model/model.safetensors"));
}

// `eval.tasks` scores task documents at every evaluation, with hard gates; the last score equals
// `spkv tasks eval` of the saved model on the same documents (a separate process and code path).
TEST(Trainer, CommandLineScoresTasksAtEveryEvaluation) {
  const std::string model = std::string(SPKV_SOURCE_DIR) + "/data/models/spkv-default";
  if (!std::filesystem::exists(model + "/heldout/tasks.jsonl")) GTEST_SKIP() << model << " is absent";
  test::TempDir tmp;
  auto r = test::run_spkv("tokenize -t " + test::quote(model + "/tokenizer.model") + " --out " + (tmp / "tok") + " " +
                          test::quote(model + "/heldout/text") + " --val-every 4");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json recipe = tiny_recipe(tmp / "tok");
  recipe["model"]["vocab_size"] = 2048;
  recipe["model"]["max_position_embeddings"] = 1024;  // the task documents are scored whole
  recipe["spkv"] = {{"window", 16}, {"predictor_hidden", 8}, {"init_bias", 0.2}};
  recipe["data"]["seq_len"] = 128;
  recipe["tokenizer"] = model + "/tokenizer.model";
  recipe["schedule"] = {{"steps", 4}, {"warmup", 1}};
  recipe["eval"] = {{"every", 2}, {"batches", 1}, {"tasks", model + "/heldout/tasks.jsonl"}, {"tasks_docs", 5}};
  test::write_file(tmp / "r.json", recipe.dump());
  r = test::run_spkv("train --recipe " + (tmp / "r.json") + " --out " + (tmp / "run"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<json> evals;
  std::istringstream log(test::read_file(tmp / "run/train_log.jsonl"));
  for (std::string line; std::getline(log, line);)
    if (auto j = json::parse(line); j["type"] == "eval") evals.push_back(j);
  ASSERT_EQ(evals.size(), 2u);
  r = test::run_spkv("tasks eval -m " + (tmp / "run/model") + " " + test::quote(model + "/heldout/tasks.jsonl") +
                     " --max-docs 5 --json " + (tmp / "t.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json want = json::parse(test::read_file(tmp / "t.json"));
  const json& got = evals.back();
  ASSERT_TRUE(got.contains("tasks")) << got.dump();
  EXPECT_GT(want["all"]["answers"].get<double>(), 5);
  for (auto& [kind, w] : want["kinds"].items()) {
    SCOPED_TRACE(kind);
    EXPECT_EQ(got["tasks"][kind]["answers"], w["answers"]);
    EXPECT_NEAR(got["tasks"][kind]["token_acc"].get<double>(), w["token_acc"].get<double>(), 1e-12);
    EXPECT_NEAR(got["tasks"][kind]["exact"].get<double>(), w["exact"].get<double>(), 1e-12);
  }
  EXPECT_NEAR(got["tasks_gates"]["keep_facts"].get<double>(), want["gates"]["keep_facts"].get<double>(), 1e-12);
  EXPECT_NEAR(got["tasks_gates"]["keep_other"].get<double>(), want["gates"]["keep_other"].get<double>(), 1e-12);
  // Gates that start near u = 0.55 with tau 0.5 are partly closed: the hard mask is what was scored.
  EXPECT_GT(want["gates"]["keep_other"].get<double>(), 0.0);
}

}  // namespace
}  // namespace spkv
