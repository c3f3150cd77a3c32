// Long-range tasks: the generated documents say what their answers claim, files round-trip and reject bad
// spans, spans map to the right tokens, and evaluation counts greedy hits like an independent recount.
#include <gtest/gtest.h>

#include <regex>
#include <set>

#include "core/base/errors.h"
#include "core/text/tasks.h"
#include "core/train/token_file.h"
#include "tests/test_util.h"

namespace spkv {
namespace {
using test::TempDir;

// Natural-looking filler with lines of different lengths, one very long line without spaces made of
// multi-byte characters (the cut must fall between characters), and accented words.
std::vector<std::string> make_filler() {
  const char* words[] = {"the", "river", "ran", "past", "a", "quiet", "town", "where", "café", "owners", "sang", "loudly"};
  std::mt19937 rng(7);
  std::vector<std::string> docs;
  for (int d = 0; d < 6; ++d) {
    std::string doc;
    for (int line = 0; line < 60; ++line) {
      const int n = 3 + int(rng() % 14);
      for (int w = 0; w < n; ++w) doc += std::string(w ? " " : "") + words[rng() % 12];
      doc += ".\n";
      if (line == 30 && d == 2) {
        for (int i = 0; i < 1500; ++i) doc += "═";
        doc += "\n";
      }
    }
    docs.push_back(doc);
  }
  return docs;
}

std::string at(const TaskDoc& d, const ByteSpan& s) { return d.text.substr(size_t(s.begin), size_t(s.end - s.begin)); }

bool in_any(const std::vector<std::string>& docs, const std::string& s) {
  for (auto& d : docs)
    if (d.find(s) != std::string::npos) return true;
  return false;
}

std::vector<std::string> split_ws(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

TEST(Tasks, AnswersFollowFromTheFactsFarAway) {
  const auto filler = make_filler();
  TaskGenOptions o;
  o.n = 80;
  o.seed = 3;
  o.min_chars = 900, o.max_chars = 1600, o.min_gap_chars = 400;
  const auto docs = generate_tasks(filler, o);
  ASSERT_EQ(docs.size(), 80u);
  std::map<std::string, int> kinds;
  for (const TaskDoc& d : docs) {
    kinds[d.kind]++;
    ASSERT_FALSE(d.answers.empty());
    ASSERT_FALSE(d.facts.empty());
    EXPECT_LE(d.text.size(), size_t(o.max_chars) + 64 + 200 * (d.facts.size() + 1)) << d.kind;  // filler runs <= 200 over
    EXPECT_GE(d.answers.front().begin - d.facts.back().end, o.min_gap_chars) << d.kind;
    if (d.kind == "needle") {
      ASSERT_EQ(d.answers.size(), 1u);
      EXPECT_EQ(at(d, d.answers[0]), at(d, d.facts[0]));
      EXPECT_TRUE(std::regex_match(at(d, d.answers[0]), std::regex(" [0-9]{5}")));
    } else if (d.kind == "reversal") {
      auto fact = split_ws(at(d, d.facts[0])), ans = split_ws(at(d, d.answers[0]));
      ASSERT_EQ(fact.size(), 8u);
      std::reverse(fact.begin(), fact.end());
      EXPECT_EQ(ans, fact);
    } else if (d.kind == "copy") {
      // The answer repeats the passage, whole lines of the filler.
      ASSERT_EQ(d.answers.size(), 1u);
      EXPECT_EQ(at(d, d.answers[0]), at(d, d.facts[0]));
      const std::string first_line = at(d, d.facts[0]).substr(0, at(d, d.facts[0]).find('\n'));
      EXPECT_TRUE(in_any(filler, first_line)) << first_line;
    } else {
      ASSERT_EQ(d.kind, "kv");
      // Each answer's key is named right before it; the fact with that key holds the same value.
      std::map<std::string, std::string> value_of;
      std::regex key(R"(The code of the (\w+) is$)");
      auto key_before = [&](const ByteSpan& s) {
        std::smatch m;
        const std::string before = d.text.substr(0, size_t(s.begin));
        EXPECT_TRUE(std::regex_search(before, m, key)) << before.substr(before.size() - 40);
        return m[1].str();
      };
      for (auto& f : d.facts) value_of[key_before(f)] = at(d, f);
      EXPECT_EQ(value_of.size(), d.facts.size()) << "keys must be distinct";
      EXPECT_EQ(d.answers.size(), d.facts.size()) << "every key is asked for";
      for (auto& a : d.answers) EXPECT_EQ(at(d, a), value_of[key_before(a)]);
    }
  }
  EXPECT_EQ(kinds["kv"], 20);
  EXPECT_EQ(kinds["needle"], 20);
  EXPECT_EQ(kinds["reversal"], 20);
  EXPECT_EQ(kinds["copy"], 20);

  // Deterministic in the seed, different across seeds; valid UTF-8 (the JSON writer rejects anything
  // else) and a lossless round trip through the file.
  EXPECT_EQ(generate_tasks(filler, o)[5].text, docs[5].text);
  o.seed = 4;
  EXPECT_NE(generate_tasks(filler, o)[5].text, docs[5].text);
  TempDir tmp;
  write_tasks_jsonl(tmp / "t.jsonl", docs);
  const auto back = read_tasks_jsonl(tmp / "t.jsonl");
  ASSERT_EQ(back.size(), docs.size());
  for (size_t i = 0; i < docs.size(); ++i) {
    EXPECT_EQ(back[i].text, docs[i].text);
    EXPECT_EQ(back[i].answers.size(), docs[i].answers.size());
    EXPECT_EQ(back[i].facts.back().end, docs[i].facts.back().end);
  }
}

// copy-shuffled: the answer repeats the passage, which holds the words of filler lines in an order that is
// not in the filler (so it cannot be recalled, only copied).
TEST(Tasks, ShuffledCopyRepeatsWordsInAnOrderTheFillerDoesNotHave) {
  const auto filler = make_filler();
  TaskGenOptions o;
  o.n = 20, o.seed = 5, o.kinds = {"copy-shuffled"};
  o.min_chars = 600, o.max_chars = 900, o.min_gap_chars = 200;
  int checked = 0;
  for (const TaskDoc& d : generate_tasks(filler, o)) {
    ASSERT_EQ(d.kind, "copy-shuffled");
    ASSERT_EQ(d.answers.size(), 1u);
    const std::string passage = at(d, d.facts[0]);
    EXPECT_EQ(at(d, d.answers[0]), passage);
    EXPECT_EQ(passage.find('\n'), passage.size() - 1) << "one line";
    EXPECT_GE(d.answers[0].begin - d.facts[0].end, o.min_gap_chars);
    if (split_ws(passage).size() < 8) continue;  // the one long line without spaces
    EXPECT_FALSE(in_any(filler, passage.substr(0, 40))) << passage;
    ++checked;
  }
  EXPECT_GE(checked, 15);
}

TEST(Tasks, BadFilesAndOptionsNameTheProblem) {
  TempDir tmp;
  test::write_file(tmp / "t.jsonl", "{\"text\": \"abc\", \"answers\": [[0, 2]]}\n{\"text\": \"abc\", \"answers\": [[1, 9]]}\n");
  try {
    read_tasks_jsonl(tmp / "t.jsonl");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("t.jsonl:2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("outside the text (3 bytes)"), std::string::npos) << e.what();
  }
  test::write_file(tmp / "u.jsonl", "{\"text\": 5}\n");
  EXPECT_THROW(read_tasks_jsonl(tmp / "u.jsonl"), InputError);
  TaskGenOptions o;
  o.kinds = {"kv", "sorting"};
  EXPECT_THROW(generate_tasks(make_filler(), o), ConfigError);
  EXPECT_THROW(generate_tasks({"too short\n"}, TaskGenOptions{}), InputError);
  o.kinds = {"kv"}, o.min_facts = 5, o.max_facts = 4;
  EXPECT_THROW(generate_tasks(make_filler(), o), ConfigError);
  o.min_facts = 12, o.max_facts = 12, o.n = 3;
  for (const TaskDoc& d : generate_tasks(make_filler(), o)) EXPECT_EQ(d.facts.size(), 12u);
}

TEST(Tasks, CommandLineErrorsNameTheFileAndLeaveNothingBehind) {
  TempDir tmp;
  test::write_file(tmp / "short.txt", "one line of filler\n");
  auto r = test::run_spkv("tasks generate --filler " + test::quote(tmp / "short.txt") + " --out " + test::quote(tmp / "t.jsonl"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("too little filler text"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(tmp / "t.jsonl"));
  test::write_file(tmp / "bad.jsonl", "{\"text\": \"x\", \"answers\": [[0, 1]]}\nnot json\n");
  r = test::run_spkv("tokenize -t x.model --out " + test::quote(tmp / "tok") + " " + test::quote(tmp / "bad.jsonl"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("bad.jsonl:2: not JSON"), std::string::npos) << r.err;
}

// A small SentencePiece tokenizer trained on the filler.
std::unique_ptr<Tokenizer> filler_tokenizer(const TempDir& tmp) {
  std::string text;
  for (auto& d : make_filler()) text += d;
  test::write_file(tmp / "f.txt", text);
  SentencePieceTrainOptions so;
  so.input = tmp / "f.txt";
  so.out_model = tmp / "f.model";
  so.vocab_size = 320;
  train_sentencepiece(so);
  return load_tokenizer(so.out_model);
}

TEST(Tasks, SpansMapToTheTokensThatSpellThem) {
  TempDir tmp;
  auto tok = filler_tokenizer(tmp);
  TaskGenOptions o;
  o.n = 9, o.min_chars = 900, o.max_chars = 1600, o.min_gap_chars = 400;
  for (const TaskDoc& d : generate_tasks(make_filler(), o)) {
    const auto ids = tok->encode(d.text, true, false);
    const auto spans = span_tokens(*tok, ids, d.text, d.answers);
    ASSERT_EQ(spans.size(), d.answers.size());
    for (size_t k = 0; k < spans.size(); ++k) {
      const auto& idx = spans[k];
      ASSERT_FALSE(idx.empty());
      for (size_t j = 1; j < idx.size(); ++j) EXPECT_EQ(idx[j], idx[j - 1] + 1) << "contiguous";
      // Recount independently: the decoded prefix before the first token ends at or before the span, the
      // prefix through the last token reaches past its end, and dropping either end token loses a byte.
      auto prefix_len = [&](int64_t n) {
        return int64_t(tok->decode(std::vector<int32_t>(ids.begin(), ids.begin() + n)).size());
      };
      EXPECT_LE(prefix_len(idx.front()), d.answers[k].begin);
      EXPECT_GT(prefix_len(idx.front() + 1), d.answers[k].begin);
      EXPECT_GE(prefix_len(idx.back() + 1), d.answers[k].end);
      EXPECT_LT(prefix_len(idx.back()), d.answers[k].end);
    }
  }
}

// `spkv tokenize --loss answers`: in task documents only the answer tokens are targets (the tokens
// span_tokens maps the answers to, tested above), every token of a plain document is, and the held-out
// split carries its mask too; without --loss the file stays version 1.
TEST(Tasks, TokenizeWithAnswerLossCountsOnlyTheAnswerTokens) {
  TempDir tmp;
  auto tok = filler_tokenizer(tmp);
  TaskGenOptions o;
  o.n = 8, o.min_chars = 900, o.max_chars = 1600, o.min_gap_chars = 400, o.kinds = {"kv", "needle"};
  const auto tasks = generate_tasks(make_filler(), o);
  write_tasks_jsonl(tmp / "t.jsonl", std::vector<TaskDoc>(tasks.begin(), tasks.begin() + 6));
  write_tasks_jsonl(tmp / "v.jsonl", std::vector<TaskDoc>(tasks.begin() + 6, tasks.end()));
  test::write_file(tmp / "plain.txt", make_filler()[4]);
  auto r = test::run_spkv("tokenize -t " + test::quote(tmp / "f.model") + " --loss answers --out " + test::quote(tmp / "tok") + " " +
                          test::quote(tmp / "t.jsonl") + " " + test::quote(tmp / "plain.txt") + " --val " + test::quote(tmp / "v.jsonl"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  int64_t answer_tokens = 0;
  for (const char* split : {"train", "val"}) {
    TokenFile f(tmp / ("tok/" + std::string(split) + ".tok"));
    ASSERT_TRUE(f.has_loss_mask());
    const size_t first = split == std::string("train") ? 0 : 6;
    for (int64_t d = 0; d < f.n_docs(); ++d) {
      const bool plain = first == 0 && d == 6;
      const TaskDoc& t = tasks[first + size_t(plain ? 0 : d)];
      std::set<int64_t> want;
      if (!plain) {
        const auto ids = tok->encode(t.text, true, false);
        ASSERT_EQ(int64_t(ids.size()), f.doc_begin(d + 1) - f.doc_begin(d));
        for (const auto& span : span_tokens(*tok, ids, t.text, t.answers)) want.insert(span.begin(), span.end());
        answer_tokens += int64_t(want.size());
      }
      for (int64_t i = f.doc_begin(d); i < f.doc_begin(d + 1); ++i)
        ASSERT_EQ(f.counts(i), plain || want.count(i - f.doc_begin(d))) << split << " document " << d << " token " << i;
    }
  }
  EXPECT_GT(answer_tokens, 30);
  r = test::run_spkv("tokenize -t " + test::quote(tmp / "f.model") + " --out " + test::quote(tmp / "tok1") + " " +
                     test::quote(tmp / "t.jsonl") + " --val " + test::quote(tmp / "v.jsonl"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(TokenFile(tmp / "tok1/train.tok").has_loss_mask());
}

// The composition recounted by decoding prefixes: an answer's first token is the first whose prefix
// reaches past the answer's first byte, a fact's last token the first whose prefix covers its last byte.
// Answers out of order match the fact with their text (kv), others the last fact before them.
TEST(Tasks, CompositionCountsTokensAndFactDistances) {
  TempDir tmp;
  auto tok = filler_tokenizer(tmp);
  TaskGenOptions o;
  o.n = 12, o.min_chars = 900, o.max_chars = 1600, o.min_gap_chars = 400, o.min_facts = 3, o.max_facts = 9;
  o.kinds = {"kv", "needle", "copy-shuffled"};
  auto docs = generate_tasks(make_filler(), o);
  TaskDoc plain;
  plain.kind = "text", plain.text = make_filler()[1];
  docs.push_back(plain);

  std::map<std::string, std::vector<int64_t>> dist;
  std::map<std::string, int64_t> tokens, answer_tokens, longest;
  int64_t all_tokens = 0;
  for (const TaskDoc& d : docs) {
    const auto ids = tok->encode(d.text, true, false);
    tokens[d.kind] += int64_t(ids.size()), all_tokens += int64_t(ids.size());
    longest[d.kind] = std::max(longest[d.kind], int64_t(ids.size()));
    auto prefix_len = [&](size_t n) { return int64_t(tok->decode(std::vector<int32_t>(ids.begin(), ids.begin() + int64_t(n))).size()); };
    auto first_reaching = [&](int64_t byte) {  // the first token index whose prefix through it exceeds `byte`
      size_t n = 0;
      while (prefix_len(n + 1) <= byte) ++n;
      return int64_t(n);
    };
    for (const ByteSpan& a : d.answers) {
      const std::string text = at(d, a);
      const ByteSpan* fact = nullptr;
      for (const ByteSpan& f : d.facts)
        if (f.begin < a.begin && (at(d, f) == text || !fact || at(d, *fact) != text)) fact = &f;
      ASSERT_NE(fact, nullptr);
      const int64_t a0 = first_reaching(a.begin), a1 = first_reaching(a.end - 1);
      answer_tokens[d.kind] += a1 - a0 + 1;
      dist[d.kind].push_back(a0 - 1 - first_reaching(fact->end - 1));
    }
  }
  // A window between the kv distances splits them.
  auto& kv = dist["kv"];
  std::sort(kv.begin(), kv.end());
  ASSERT_GT(kv.size(), 20u);
  ASSERT_LT(kv.front(), kv.back());
  const int64_t window = kv[kv.size() / 2];
  const auto r = task_composition(*tok, docs, window);
  EXPECT_EQ(r["all"]["tokens"].get<int64_t>(), all_tokens);
  EXPECT_EQ(r["kinds"]["text"]["tokens"].get<int64_t>(), tokens["text"]);
  EXPECT_EQ(r["kinds"]["text"]["answers"].get<int64_t>(), 0);
  EXPECT_FALSE(r["kinds"]["text"].contains("distance"));
  for (const char* k : {"kv", "needle", "copy-shuffled"}) {
    auto& v = dist[k];
    std::sort(v.begin(), v.end());
    const auto& j = r["kinds"][k];
    SCOPED_TRACE(k);
    EXPECT_EQ(j["tokens"].get<int64_t>(), tokens[k]);
    EXPECT_EQ(j["longest_document"].get<int64_t>(), longest[k]);
    EXPECT_NEAR(j["token_share"].get<double>(), double(tokens[k]) / double(all_tokens), 1e-12);
    EXPECT_EQ(j["answers"].get<int64_t>(), int64_t(v.size()));
    EXPECT_EQ(j["answer_tokens"].get<int64_t>(), answer_tokens[k]);
    EXPECT_EQ(j["distance"]["min"].get<int64_t>(), v.front());
    EXPECT_EQ(j["distance"]["max"].get<int64_t>(), v.back());
    EXPECT_EQ(j["distance"]["median"].get<int64_t>(), v[size_t(0.5 * double(v.size() - 1) + 0.5)]);
    EXPECT_EQ(j["beyond_window"].get<int64_t>(), std::count_if(v.begin(), v.end(), [&](int64_t x) { return x >= window; }));
  }
  const int64_t beyond_kv = r["kinds"]["kv"]["beyond_window"].get<int64_t>();
  EXPECT_GT(beyond_kv, 0);
  EXPECT_LT(beyond_kv, int64_t(kv.size()));
}

// On a real model: token accuracy and exact match equal a recount from the logits, and a one-key window
// (the model sees only the current token) cannot copy what full attention copies.
TEST(Tasks, EvaluationCountsGreedyHitsOnARealModel) {
  SPKV_REQUIRE_SHARED();
  const std::string dir = test::shared_dir() + "/models/stories260K/";
  auto m = load_model(dir + "stories260K.bin");
  auto tok = load_tokenizer(dir + "tok512.bin");
  // A story told twice: the second telling is predictable from the first by copying.
  const std::string story =
      "Once upon a time, there was a little girl named Lily. She liked to play with her red ball in the park. "
      "One day, the ball rolled into the pond and a big frog jumped on it.";
  std::vector<TaskDoc> docs(2);
  for (int i = 0; i < 2; ++i) {
    docs[size_t(i)].kind = i ? "b" : "a";
    docs[size_t(i)].text = story + "\n" + story;
    const int64_t second = int64_t(story.size()) + 1;
    docs[size_t(i)].facts = {{0, int64_t(story.size())}};
    docs[size_t(i)].answers = {{second + 40 + 30 * i, second + 90 + 30 * i}, {second + 100, int64_t(story.size()) * 2 + 1}};
  }
  auto full = evaluate_tasks(m, *tok, docs);
  for (size_t i = 0; i < 2; ++i) {
    const TaskDoc& d = docs[i];
    const auto ids = tok->encode(d.text, true, false);
    const auto spans = span_tokens(*tok, ids, d.text, d.answers);
    auto pred = m(torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0))[0].argmax(-1);
    double hits = 0, tokens = 0, exact = 0;
    for (auto& s : spans) {
      int64_t ok = 0;
      for (int64_t t : s) ok += pred[t - 1].item<int64_t>() == ids[size_t(t)];
      hits += double(ok), tokens += double(s.size()), exact += ok == int64_t(s.size());
    }
    const auto& r = full["kinds"][d.kind];
    EXPECT_EQ(r["tokens"].get<double>(), tokens);
    EXPECT_DOUBLE_EQ(r["token_acc"].get<double>(), hits / tokens);
    EXPECT_DOUBLE_EQ(r["exact"].get<double>(), exact / 2);
  }
  std::printf("copy accuracy: full %.3f\n", full["all"]["token_acc"].get<double>());
  EXPECT_GT(full["all"]["token_acc"].get<double>(), 0.6);
  m->config.sliding_window = 1;
  auto local = evaluate_tasks(m, *tok, docs);
  EXPECT_EQ(local["sliding_window"].get<int64_t>(), 1);
  std::printf("copy accuracy: window 1 %.3f\n", local["all"]["token_acc"].get<double>());
  EXPECT_LT(local["all"]["token_acc"].get<double>(), full["all"]["token_acc"].get<double>() - 0.3);
}


// Induction data: BOS, x, x with x drawn from the id range; each length and id value is reached, and the
// command line writes token files the trainer reads back.
TEST(Tasks, RepeatDocumentsAreASequenceAndItsCopy) {
  RepeatOptions o;
  o.n = 400, o.min_len = 3, o.max_len = 9, o.first_id = 10, o.last_id = 30, o.bos_id = 1, o.seed = 5;
  const auto docs = repeat_documents(o, 40);
  ASSERT_EQ(docs.size(), 400u);
  std::set<size_t> lengths;
  std::set<int32_t> ids;
  for (const auto& d : docs) {
    ASSERT_EQ(d.size() % 2, 1u);
    const size_t L = d.size() / 2;
    lengths.insert(L);
    EXPECT_EQ(d[0], 1);
    for (size_t i = 1; i <= L; ++i) {
      EXPECT_EQ(d[i], d[i + L]);
      ids.insert(d[i]);
    }
  }
  EXPECT_EQ(lengths, (std::set<size_t>{3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(ids.size(), 20u);
  EXPECT_EQ(*ids.begin(), 10);
  EXPECT_EQ(*ids.rbegin(), 29);
  EXPECT_EQ(repeat_documents(o, 40), docs);  // deterministic
  o.seed = 6;
  EXPECT_NE(repeat_documents(o, 40), docs);
  o.last_id = 41;
  EXPECT_THROW(repeat_documents(o, 40), ConfigError);
  o.last_id = 0, o.min_len = 0;
  EXPECT_THROW(repeat_documents(o, 40), ConfigError);
}

}  // namespace
}  // namespace spkv
