// `spkv tokenize | train-tokenizer | tasks generate | repeat | stats | eval`: text into token files, a
// SentencePiece tokenizer, and the long-range task documents with their make-up and scores.
#include <fmt/core.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <filesystem>

#include "core/base/json_text.h"
#include "core/base/progress.h"
#include "core/model/safetensors.h"
#include "core/text/documents.h"
#include "core/text/tasks.h"
#include "core/train/token_file.h"
#include "tools/cli.h"

namespace spkv::cli {
namespace {
namespace fs = std::filesystem;

// Documents of `inputs`, with the answer spans of the task JSONL files among them when `with_answers`
// (a .jsonl input is read as tasks; other inputs, and task lines without answers, have none).
std::vector<TaskDoc> read_inputs(const std::vector<std::string>& inputs, const std::string& separator, bool with_answers) {
  std::vector<TaskDoc> docs;
  for (const auto& in : inputs) {
    if (with_answers && fs::path(in).extension() == ".jsonl" && !fs::is_directory(in)) {
      auto t = read_tasks_jsonl(in);
      docs.insert(docs.end(), std::make_move_iterator(t.begin()), std::make_move_iterator(t.end()));
      continue;
    }
    for (auto& d : read_documents(in, separator)) docs.push_back({"", std::move(d.text), {}, {}});
  }
  return docs;
}

// Tokenizes documents into out_dir/train.tok and out_dir/val.tok: the documents of val_inputs are the
// validation split, or, when there are none, every val_every-th document is held out. loss "answers": in a
// document with answer spans only the answer tokens count as training targets (token file version 2).
void cmd_tokenize(const std::string& tokenizer, const std::vector<std::string>& inputs,
                  const std::vector<std::string>& val_inputs, const std::string& separator, const std::string& out_dir,
                  int64_t val_every, const std::string& loss) {
  const bool answers = loss == "answers";
  auto docs = read_inputs(inputs, separator, answers);
  const size_t n_train_docs = docs.size();
  if (!val_inputs.empty()) {
    auto v = read_inputs(val_inputs, separator, answers);
    docs.insert(docs.end(), std::make_move_iterator(v.begin()), std::make_move_iterator(v.end()));
  }
  auto tok = load_tokenizer(tokenizer);
  struct Split {
    std::vector<std::vector<int32_t>> docs;
    std::vector<std::vector<uint8_t>> counts;
    int64_t tokens = 0, targets = 0;
  } train, val;
  int64_t bytes = 0;
  for (auto& d : docs) bytes += int64_t(d.text.size());
  Progress bar("tokenize", bytes, "B");  // bytes, so that one very large document shows progress too
  for (size_t i = 0; i < docs.size(); ++i) {
    size_t shown = 0;
    const std::string doc = "doc " + std::to_string(i + 1) + "/" + std::to_string(docs.size());
    auto ids = tok->encode(docs[i].text, /*bos=*/true, /*eos=*/false,
                           [&](size_t done) { bar.add(int64_t(done - shown), doc), shown = done; });
    const bool held_out = val_inputs.empty() ? i % size_t(val_every) == size_t(val_every) - 1 : i >= n_train_docs;
    Split& s = held_out ? val : train;
    std::vector<uint8_t> counts(ids.size(), docs[i].answers.empty() ? 1 : 0);
    if (!docs[i].answers.empty())
      for (const auto& span : span_tokens(*tok, ids, docs[i].text, docs[i].answers))
        for (int64_t j : span) counts[size_t(j)] = 1;
    s.tokens += int64_t(ids.size());
    for (uint8_t c : counts) s.targets += c;
    s.docs.push_back(std::move(ids)), s.counts.push_back(std::move(counts));
  }
  bar.finish();
  if (val.docs.empty()) throw InputError("tokenize: no document was held out for validation (" + std::to_string(docs.size()) +
                                         " documents, --val-every " + std::to_string(val_every) + ")");
  fs::create_directories(out_dir);
  for (auto [s, name] : {std::pair{&train, "train.tok"}, {&val, "val.tok"}})
    write_token_file((fs::path(out_dir) / name).string(), s->docs, tok->vocab_size(), answers ? &s->counts : nullptr);
  fmt::print("train.tok  {} documents, {} tokens\nval.tok    {} documents, {} tokens\nvocab      {} ({})\n",
             train.docs.size(), train.tokens, val.docs.size(), val.tokens, tok->vocab_size(), tokenizer);
  if (answers)
    fmt::print("targets    {} of the training tokens count ({:.3f}), {} of the validation tokens ({:.3f})\n", train.targets,
               double(train.targets) / double(train.tokens), val.targets, double(val.targets) / double(val.tokens));
}

// SentencePiece BPE/unigram on the documents of `inputs`, one line per input line.
void cmd_train_tokenizer(const std::vector<std::string>& inputs, const std::string& separator,
                         SentencePieceTrainOptions o) {
  std::string text;
  for (auto& d : read_all_documents(inputs, separator)) text += d.text + "\n";
  const std::string tmp = o.out_model + ".input.txt";
  write_file_atomic(tmp, text);
  o.input = tmp;
  try {
    train_sentencepiece(o);
  } catch (...) {
    fs::remove(tmp);
    throw;
  }
  fs::remove(tmp);
  fmt::print("wrote {} ({} {}, trained on {} bytes)\n", o.out_model, o.model_type, o.vocab_size, text.size());
}

void cmd_tasks_generate(const std::vector<std::string>& filler_inputs, const std::string& separator,
                        const TaskGenOptions& o, const std::string& out) {
  std::vector<std::string> filler;
  for (auto& d : read_all_documents(filler_inputs, separator)) filler.push_back(d.text);
  auto docs = generate_tasks(filler, o);
  write_tasks_jsonl(out, docs);
  fmt::print("wrote {} tasks to {}\n", docs.size(), out);
}

void cmd_tasks_repeat(const std::string& tokenizer, const RepeatOptions& o, int64_t n_val, const std::string& out_dir) {
  auto tok = load_tokenizer(tokenizer);
  RepeatOptions r = o;
  if (tok->bos_id >= 0) r.bos_id = tok->bos_id;
  fs::create_directories(out_dir);
  write_token_file((fs::path(out_dir) / "train.tok").string(), repeat_documents(r, tok->vocab_size()), tok->vocab_size());
  r.n = n_val, r.seed = o.seed + 1;
  write_token_file((fs::path(out_dir) / "val.tok").string(), repeat_documents(r, tok->vocab_size()), tok->vocab_size());
  fmt::print("wrote {} + {} repeated sequences of {}..{} ids to {}/train.tok and val.tok\n", o.n, n_val, o.min_len,
             o.max_len, out_dir);
}

// Task files (.jsonl with spans) count by their kinds, text documents by their file's name.
void cmd_tasks_stats(const std::string& tokenizer, const std::vector<std::string>& inputs, const std::string& separator,
                     int64_t window, const std::string& json_out) {
  auto tok = load_tokenizer(tokenizer);
  std::vector<TaskDoc> docs;
  for (const std::string& in : inputs) {
    if (fs::path(in).extension() == ".jsonl") {
      for (auto& d : read_tasks_jsonl(in)) docs.push_back(std::move(d));
      continue;
    }
    for (auto& d : read_documents(in, separator)) {
      TaskDoc t;
      t.kind = fs::path(d.id.substr(0, d.id.rfind('#'))).stem().string();
      t.text = std::move(d.text);
      docs.push_back(std::move(t));
    }
  }
  const auto r = task_composition(*tok, docs, window);
  fmt::print("{:<14} {:>9} {:>11} {:>7} {:>7} {:>9} {:>9} {:>7}  {:>24}  {:>8}\n", "kind", "documents", "tokens", "longest", "share",
             "answers", "ans. tok", "share", "distance min/med/p90/max", "beyond W");
  auto row = [](const std::string& k, const nlohmann::json& t) {
    std::string dist = "-", beyond = "-";
    if (t.contains("distance")) {
      const auto& q = t["distance"];
      dist = fmt::format("{}/{}/{}/{}", q["min"].get<int64_t>(), q["median"].get<int64_t>(), q["p90"].get<int64_t>(),
                         q["max"].get<int64_t>());
      beyond = fmt::format("{:.3f}", double(t["beyond_window"].get<int64_t>()) / double(t["answers"].get<int64_t>()));
    }
    fmt::print("{:<14} {:>9} {:>11} {:>7} {:>7.3f} {:>9} {:>9} {:>7.3f}  {:>24}  {:>8}\n", k, t["documents"].get<int64_t>(),
               t["tokens"].get<int64_t>(), t["longest_document"].get<int64_t>(), t["token_share"].get<double>(), t["answers"].get<int64_t>(),
               t["answer_tokens"].get<int64_t>(), t["answer_token_share"].get<double>(), dist, beyond);
  };
  for (auto& [k, t] : r["kinds"].items()) row(k, t);
  row("all", r["all"]);
  fmt::print("(distance: tokens from the query that predicts an answer's first token back to its fact; W = {})\n", window);
  if (!json_out.empty()) write_file_atomic(json_out, json_text(r));
}

void print_task_results(const nlohmann::json& r) {
  fmt::print("{:<10} {:>8} {:>8} {:>10} {:>8} {:>10}\n", "kind", "answers", "tokens", "token acc", "exact", "truncated");
  auto row = [](const std::string& k, const nlohmann::json& t) {
    fmt::print("{:<10} {:>8} {:>8} {:>10.4f} {:>8.4f} {:>10}\n", k, t["answers"].get<int64_t>(), t["tokens"].get<int64_t>(),
               t["token_acc"].get<double>(), t["exact"].get<double>(), t["truncated"].get<int64_t>());
  };
  for (auto& [k, t] : r["kinds"].items()) row(k, t);
  row("all", r["all"]);
  if (!r.contains("gates")) return;
  const auto& g = r["gates"];
  if (g["evictable_keys"].get<int64_t>() == 0) return fmt::print("gates: no key is outside the window\n");
  fmt::print("gates (tau {}): density {:.4f}; keep facts {:.4f}, keep other {:.4f}\n", g["tau"].get<double>(),
             g["density"].get<double>(), g["keep_facts"].get<double>(), g["keep_other"].get<double>());
  for (size_t l = 0; l < g["keep_facts_per_layer"].size(); ++l)
    fmt::print("  layer {:<3} keep facts {:.3f}  other {:.3f}\n", l, g["keep_facts_per_layer"][l].get<double>(),
               g["keep_other_per_layer"][l].get<double>());
}

void cmd_tasks_eval(const ModelArgs& a, const std::string& tasks, int64_t max_docs, const EvalOverrides& ov,
                    const std::string& json_out, dist::Group* group) {
  if (ov.compare_instead(a, tasks, "", max_docs, json_out, group)) return;
  auto model = load_model(a.model);
  ov.apply(model, a.model);
  auto tok = a.load_tokenizer_for(model->config);
  auto docs = read_tasks_jsonl(tasks);
  if (max_docs > 0 && int64_t(docs.size()) > max_docs) docs.resize(size_t(max_docs));
  auto r = evaluate_tasks(model, *tok, docs, /*progress=*/true, group);
  if (group && group->rank() != 0) return;  // rank 0 reports
  r["model"] = a.model;
  r["tasks"] = tasks;
  if (!ov.layout.empty()) r["layout"] = ov.layout;
  print_task_results(r);
  if (!json_out.empty()) write_file_atomic(json_out, json_text(r));
}


}  // namespace

void add_data_commands(CLI::App& app, Commands& out) {
  struct Tokenize {
    std::string tok, out, separator = "<|endoftext|>";
    std::vector<std::string> inputs, val;
    int64_t val_every = 20;
    std::string loss = "all";
  };
  auto k = options<Tokenize>();
  auto* tk = add_command(app, "tokenize");
  tk->add_option("--tokenizer,-t", k->tok, "tokenizer file")->required();
  tk->add_option("inputs", k->inputs, "text files or folders of .txt files")->required();
  tk->add_option("--separator", k->separator, "document separator inside files (\"\" = one document per file)");
  tk->add_option("--out,-o", k->out, "output folder")->required();
  tk->add_option("--val-every", k->val_every, "hold out every N-th document for validation")->check(CLI::PositiveNumber);
  tk->add_option("--val", k->val, "validation inputs (then every input document goes to train.tok)");
  tk->add_option("--loss", k->loss,
                 "which tokens are training targets: all, or answers (in task JSONL documents with answer spans, only "
                 "the answer tokens; every token of other documents)")
      ->check(CLI::IsMember({"all", "answers"}));
  out.push_back({tk, [k] { return cmd_tokenize(k->tok, k->inputs, k->val, k->separator, k->out, k->val_every, k->loss), true; }});

  struct TrainTokenizer {
    SentencePieceTrainOptions sp;
    std::vector<std::string> inputs;
    std::string separator = "<|endoftext|>";
  };
  auto t = options<TrainTokenizer>();
  auto* ttk = add_command(app, "train-tokenizer");
  ttk->add_option("inputs", t->inputs, "text files, .jsonl files or folders")->required();
  ttk->add_option("--separator", t->separator, "document separator inside .txt files");
  ttk->add_option("--out,-o", t->sp.out_model, "output file (must end in .model)")->required();
  ttk->add_option("--vocab-size", t->sp.vocab_size, "vocabulary size")->check(CLI::Range(8, 1 << 20));
  ttk->add_option("--model-type", t->sp.model_type, "bpe or unigram")->check(CLI::IsMember({"bpe", "unigram"}));
  out.push_back({ttk, [t] { return cmd_train_tokenizer(t->inputs, t->separator, t->sp), true; }});

  auto* tasks = add_command(app, "tasks");
  tasks->require_subcommand(1);
  struct Generate {
    TaskGenOptions tg;
    std::vector<std::string> filler;
    std::string out, separator = "<|endoftext|>";
  };
  auto g = options<Generate>();
  auto* tgen = tasks->add_subcommand("generate", "write task documents (JSONL) with filler cut from natural text");
  tgen->add_option("--filler", g->filler, "text files or folders to cut filler from")->required();
  tgen->add_option("--separator", g->separator, "document separator inside filler files");
  tgen->add_option("--out,-o", g->out, "output .jsonl file")->required();
  tgen->add_option("-n", g->tg.n, "documents")->check(CLI::PositiveNumber);
  tgen->add_option("--seed", g->tg.seed, "generator seed");
  tgen->add_option("--kinds", g->tg.kinds, "kv, needle, reversal, copy, copy-shuffled (used in turn)")->delimiter(',');
  tgen->add_option("--min-chars", g->tg.min_chars, "shortest document in bytes");
  tgen->add_option("--max-chars", g->tg.max_chars, "longest document in bytes");
  tgen->add_option("--min-gap", g->tg.min_gap_chars, "filler bytes between the last fact and the first answer");
  tgen->add_option("--min-facts", g->tg.min_facts, "fewest key-value pairs in a kv document");
  tgen->add_option("--max-facts", g->tg.max_facts, "most key-value pairs in a kv document");
  out.push_back({tgen, [g] { return cmd_tasks_generate(g->filler, g->separator, g->tg, g->out), true; }});

  struct Repeat {
    RepeatOptions r;
    std::string tok, out;
    int64_t val = 500;
  };
  auto r = options<Repeat>();
  auto* trep = tasks->add_subcommand("repeat", "induction data: token files of random id sequences, each repeated once");
  trep->add_option("--tokenizer,-t", r->tok, "tokenizer file (its vocabulary size and BOS)")->required();
  trep->add_option("--out,-o", r->out, "output folder for train.tok and val.tok")->required();
  trep->add_option("-n", r->r.n, "training documents")->check(CLI::PositiveNumber);
  trep->add_option("--val", r->val, "validation documents")->check(CLI::PositiveNumber);
  trep->add_option("--min-len", r->r.min_len, "shortest sequence before its repeat");
  trep->add_option("--max-len", r->r.max_len, "longest sequence before its repeat");
  trep->add_option("--first-id", r->r.first_id, "smallest id drawn (skips special and byte tokens)");
  trep->add_option("--seed", r->r.seed, "generator seed (validation: seed + 1)");
  out.push_back({trep, [r] { return cmd_tasks_repeat(r->tok, r->r, r->val, r->out), true; }});

  struct Stats {
    std::string tok, json, separator = "<|endoftext|>";
    std::vector<std::string> inputs;
    int64_t window = 64;
  };
  auto s = options<Stats>();
  auto* tstats = tasks->add_subcommand("stats", "a corpus' make-up: tokens and answer tokens per kind, fact-to-answer distances");
  tstats->add_option("--tokenizer,-t", s->tok, "tokenizer file")->required();
  tstats->add_option("inputs", s->inputs, "task files (.jsonl) and text files or folders (counted by file name)")->required();
  tstats->add_option("--separator", s->separator, "document separator inside text files");
  tstats->add_option("--window", s->window, "local window W: answers whose fact is at least W tokens back count as beyond it")
      ->check(CLI::PositiveNumber);
  tstats->add_option("--json", s->json, "also write the results here");
  out.push_back({tstats, [s] { return cmd_tasks_stats(s->tok, s->inputs, s->separator, s->window, s->json), true; }});

  struct TaskEval {
    ModelArgs ma;
    std::string tasks, json;
    int64_t max_docs = 0;
    EvalOverrides ov;
    dist::LaunchFlags launch;
    double dist_timeout = 300;
  };
  auto e = options<TaskEval>();
  auto* teval = tasks->add_subcommand("eval", "teacher-forced accuracy on the answers of a task file, and what the gates keep");
  e->ma.add(teval);
  teval->add_option("tasks", e->tasks, "task file (.jsonl)")->required();
  teval->add_option("--max-docs", e->max_docs, "score at most this many documents (0 = all)");
  teval->add_option("--json", e->json, "also write the results here");
  e->ov.add(teval);
  add_launch_flags(teval, e->launch, e->dist_timeout);
  out.push_back({teval, [e] {
                   const auto group = join_launch(e->launch, e->dist_timeout);
                   return cmd_tasks_eval(e->ma, e->tasks, e->max_docs, e->ov, e->json, group.get()), true;
                 }});
}

}  // namespace spkv::cli
