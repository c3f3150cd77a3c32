// Long-range task generation, JSONL files and teacher-forced evaluation (see tasks.h).
#include "core/text/tasks.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include "core/base/errors.h"
#include "core/base/progress.h"
#include "core/base/threads.h"
#include "core/dist/process_group.h"
#include "core/model/safetensors.h"
#include "core/text/documents.h"
#include "core/train/trainer.h"

namespace spkv {
using nlohmann::json;

namespace {

const char* const kNames[] = {
    "amber",  "anchor", "badger", "beacon", "bramble", "candle", "cedar",  "cobalt", "copper", "coral",
    "crane",  "dagger", "ember",  "falcon", "fennel",  "garnet", "glacier", "harbor", "hazel", "heron",
    "indigo", "island", "jasper", "juniper", "kettle", "lantern", "lark",  "maple",  "marble", "meadow",
    "nickel", "oak",    "onyx",   "orchid", "otter",  "pebble", "pepper", "pine",   "quartz", "quill",
    "raven",  "river",  "saffron", "sparrow", "spruce", "tangle", "thistle", "timber", "topaz", "tulip",
    "velvet", "violet", "walnut", "willow", "wren",   "yarrow", "zephyr", "zinc",   "basil",  "clover"};
constexpr int64_t kNumNames = sizeof(kNames) / sizeof(kNames[0]);

enum class Role { plain, fact, answer };

// A document assembled from pieces; the spans of fact and answer pieces are recorded as they are appended.
struct Builder {
  TaskDoc doc;
  void add(const std::string& s, Role role = Role::plain) {
    const ByteSpan span{int64_t(doc.text.size()), int64_t(doc.text.size() + s.size())};
    doc.text += s;
    if (role == Role::fact) doc.facts.push_back(span);
    if (role == Role::answer) doc.answers.push_back(span);
  }
};

class Generator {
 public:
  Generator(const std::vector<std::string>& filler, const TaskGenOptions& o) : filler_(filler), o_(o), rng_(o.seed) {}

  int64_t uniform(int64_t n) { return int64_t(rng_() % uint64_t(n)); }  // [0, n)

  // At least `chars` bytes (and at most about 200 more) of whole lines of natural text, from a random line
  // of a random filler document on, continuing at the start of another one when it ends. A last line that
  // runs too long is cut at a space, or at a character boundary when it has none.
  std::string filler(int64_t chars) {
    std::string out;
    if (chars <= 0) return out;
    const std::string* d = &filler_[size_t(uniform(int64_t(filler_.size())))];
    size_t pos = d->find('\n', size_t(uniform(int64_t(d->size()))));
    pos = pos == std::string::npos ? d->size() : pos + 1;
    while (int64_t(out.size()) < chars) {
      if (pos >= d->size()) d = &filler_[size_t(uniform(int64_t(filler_.size())))], pos = 0;
      size_t nl = d->find('\n', pos);
      if (nl == std::string::npos) nl = d->size();
      out += d->substr(pos, nl - pos) + "\n";
      pos = nl + 1;
    }
    const size_t limit = size_t(chars) + 200;
    if (out.size() > limit) {
      size_t cut = out.find(' ', size_t(chars));
      if (cut == std::string::npos || cut > limit)
        for (cut = size_t(chars); cut < out.size() && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80;) ++cut;
      out.resize(cut);
    }
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out + "\n";
  }

  std::vector<int64_t> distinct(int64_t k, int64_t lo, int64_t hi) {  // k distinct values in [lo, hi)
    std::set<int64_t> seen;
    std::vector<int64_t> out;
    while (int64_t(out.size()) < k) {
      int64_t v = lo + uniform(hi - lo);
      if (seen.insert(v).second) out.push_back(v);
    }
    return out;
  }

  // The words of `text` in a random order, one line: a passage that can only be copied, not recalled from
  // training text.
  std::string shuffled_words(const std::string& text) {
    std::istringstream in(text);
    std::vector<std::string> words{std::istream_iterator<std::string>(in), std::istream_iterator<std::string>()};
    std::shuffle(words.begin(), words.end(), rng_);
    std::string out;
    for (auto& w : words) out += (out.empty() ? "" : " ") + w;
    return out + "\n";
  }

  // Splits `total` filler bytes into `parts` random pieces.
  std::vector<int64_t> split(int64_t total, int64_t parts) {
    std::vector<int64_t> cuts{0, std::max<int64_t>(total, 0)};
    for (int64_t i = 1; i < parts; ++i) cuts.push_back(uniform(std::max<int64_t>(total, 1)));
    std::sort(cuts.begin(), cuts.end());
    std::vector<int64_t> out;
    for (int64_t i = 0; i < parts; ++i) out.push_back(cuts[size_t(i + 1)] - cuts[size_t(i)]);
    return out;
  }

  TaskDoc make(const std::string& kind) {
    const int64_t target = o_.min_chars + uniform(o_.max_chars - o_.min_chars + 1);
    Builder b;
    b.doc.kind = kind;
    if (kind == "kv") {
      const int64_t k = o_.min_facts + uniform(o_.max_facts - o_.min_facts + 1);
      auto names = distinct(k, 0, kNumNames);
      auto values = distinct(k, 1000, 10000);
      const int64_t fixed = k * 64 + 12;
      const int64_t budget = std::max<int64_t>(target - fixed, o_.min_gap_chars);
      const int64_t gap = std::max(o_.min_gap_chars, budget * 3 / 10);
      auto pieces = split(budget - gap, k);
      for (int64_t i = 0; i < k; ++i) {
        if (pieces[size_t(i)] >= 60) b.add(filler(pieces[size_t(i)]));  // a whole line may run 200 bytes over
        b.add(std::string("The code of the ") + kNames[names[size_t(i)]] + " is");
        b.add(" " + std::to_string(values[size_t(i)]), Role::fact);
        b.add(".\n");
      }
      b.add(filler(gap));
      b.add("Questions.\n");
      for (int64_t i : distinct(k, 0, k)) {  // every fact, in a random order
        b.add(std::string("The code of the ") + kNames[names[size_t(i)]] + " is");
        b.add(" " + std::to_string(values[size_t(i)]), Role::answer);
        b.add(".\n");
      }
    } else if (kind == "needle") {
      const std::string value = std::to_string(10000 + uniform(90000));
      const int64_t budget = std::max<int64_t>(target - 100, o_.min_gap_chars);
      const int64_t after = o_.min_gap_chars + uniform(std::max<int64_t>(budget - o_.min_gap_chars, 0) + 1);
      b.add(filler(budget - after));
      b.add("The secret number is");
      b.add(" " + value, Role::fact);
      b.add(".\n");
      b.add(filler(after));
      b.add("What is the secret number? The secret number is");
      b.add(" " + value, Role::answer);
      b.add(".\n");
    } else if (kind == "reversal") {
      auto nums = distinct(8, 10, 100);
      std::string list, reversed;
      for (size_t i = 0; i < nums.size(); ++i) {
        list += " " + std::to_string(nums[i]);
        reversed += " " + std::to_string(nums[nums.size() - 1 - i]);
      }
      const int64_t budget = std::max<int64_t>(target - 90, o_.min_gap_chars);
      const int64_t before = uniform(std::max<int64_t>(budget - o_.min_gap_chars, 0) / 2 + 1);
      b.add(filler(before));
      b.add("Remember these numbers:");
      b.add(list, Role::fact);
      b.add(".\n");
      b.add(filler(budget - before));
      b.add("The numbers in reverse order:");
      b.add(reversed, Role::answer);
      b.add(".\n");
    } else if (kind == "copy" || kind == "copy-shuffled") {
      std::string passage = filler(100 + uniform(200));  // whole lines, ends with "\n"
      if (kind == "copy-shuffled") passage = shuffled_words(passage);
      const int64_t budget = std::max<int64_t>(target - 2 * int64_t(passage.size()) - 40, o_.min_gap_chars);
      const int64_t before = uniform(std::max<int64_t>(budget - o_.min_gap_chars, 0) / 2 + 1);
      b.add(filler(before));
      b.add("Remember this passage:\n");
      b.add(passage, Role::fact);
      b.add(filler(budget - before));
      b.add("Repeat the passage:\n");
      b.add(passage, Role::answer);
    } else {
      throw ConfigError("tasks: unknown kind '" + kind + "' (expected kv, needle, reversal, copy or copy-shuffled)");
    }
    return std::move(b.doc);
  }

 private:
  const std::vector<std::string>& filler_;
  const TaskGenOptions& o_;
  std::mt19937_64 rng_;
};

std::vector<ByteSpan> spans_from(const json& j, const std::string& where, const char* field) {
  if (!j[field].is_array()) throw InputError(where + ": field '" + field + "' must be an array");
  std::vector<ByteSpan> out;
  for (auto& s : j[field]) {
    if (!s.is_array() || s.size() != 2 || !s[0].is_number_integer() || !s[1].is_number_integer())
      throw InputError(where + ": field '" + field + "' must hold [begin, end] integer pairs");
    out.push_back({s[0].get<int64_t>(), s[1].get<int64_t>()});
  }
  return out;
}

}  // namespace

std::vector<TaskDoc> generate_tasks(const std::vector<std::string>& filler, const TaskGenOptions& o) {
  if (o.kinds.empty()) throw ConfigError("tasks: no kinds given");
  if (o.min_chars < 1 || o.max_chars < o.min_chars || o.min_gap_chars < 0)
    throw ConfigError("tasks: need 1 <= min_chars <= max_chars and min_gap_chars >= 0");
  if (o.min_facts < 1 || o.max_facts < o.min_facts || o.max_facts > kNumNames)
    throw ConfigError("tasks: need 1 <= min_facts <= max_facts <= " + std::to_string(kNumNames));
  int64_t filler_bytes = 0;
  for (auto& d : filler) filler_bytes += int64_t(d.size());
  if (filler.empty() || filler_bytes < 4 * o.max_chars)
    throw InputError("tasks: too little filler text (" + std::to_string(filler_bytes) + " bytes; need at least " +
                     std::to_string(4 * o.max_chars) + ")");
  Generator g(filler, o);
  std::vector<TaskDoc> out;
  for (int64_t i = 0; i < o.n; ++i) out.push_back(g.make(o.kinds[size_t(i) % o.kinds.size()]));
  return out;
}

std::vector<std::vector<int32_t>> repeat_documents(const RepeatOptions& o, int32_t vocab_size) {
  const int32_t last = o.last_id > 0 ? o.last_id : vocab_size;
  if (o.first_id < 0 || last > vocab_size || o.first_id >= last)
    throw ConfigError("tasks repeat: ids [" + std::to_string(o.first_id) + ", " + std::to_string(last) +
                      ") must be a non-empty range inside the vocabulary [0, " + std::to_string(vocab_size) + ")");
  if (o.min_len < 1 || o.max_len < o.min_len)
    throw ConfigError("tasks repeat: lengths " + std::to_string(o.min_len) + ".." + std::to_string(o.max_len) +
                      " (expected 1 <= min <= max)");
  if (o.bos_id < 0 || o.bos_id >= vocab_size)
    throw ConfigError("tasks repeat: BOS id " + std::to_string(o.bos_id) + " is outside the vocabulary");
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int64_t> len(o.min_len, o.max_len);
  std::uniform_int_distribution<int32_t> id(o.first_id, last - 1);
  std::vector<std::vector<int32_t>> docs(size_t(o.n));
  for (auto& d : docs) {
    std::vector<int32_t> x(size_t(len(rng)));
    for (auto& t : x) t = id(rng);
    d.reserve(1 + 2 * x.size());
    d.push_back(o.bos_id);
    d.insert(d.end(), x.begin(), x.end());
    d.insert(d.end(), x.begin(), x.end());
  }
  return docs;
}

void write_tasks_jsonl(const std::string& path, const std::vector<TaskDoc>& docs) {
  std::string s;
  for (auto& d : docs) {
    json a = json::array(), f = json::array();
    for (auto& x : d.answers) a.push_back({x.begin, x.end});
    for (auto& x : d.facts) f.push_back({x.begin, x.end});
    s += json{{"kind", d.kind}, {"text", d.text}, {"answers", a}, {"facts", f}}.dump() + "\n";
  }
  write_file_atomic(path, s);
}

std::vector<TaskDoc> read_tasks_jsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InputError(path + ": cannot open");
  std::vector<TaskDoc> out;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(n);
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      throw InputError(where + ": not JSON (" + e.what() + ")");
    }
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
      throw InputError(where + ": expected an object with a string field 'text'");
    TaskDoc d;
    d.text = j["text"].get<std::string>();
    d.kind = j.value("kind", std::string("task"));
    if (j.contains("answers")) d.answers = spans_from(j, where, "answers");
    if (j.contains("facts")) d.facts = spans_from(j, where, "facts");
    for (auto* v : {&d.answers, &d.facts})
      for (auto& s : *v)
        if (s.begin < 0 || s.end <= s.begin || s.end > int64_t(d.text.size()))
          throw InputError(where + ": span [" + std::to_string(s.begin) + ", " + std::to_string(s.end) +
                           ") is empty or outside the text (" + std::to_string(d.text.size()) + " bytes)");
    out.push_back(std::move(d));
  }
  if (out.empty()) throw InputError(path + ": no tasks");
  return out;
}

std::vector<std::vector<int64_t>> span_tokens(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                              const std::string& text, const std::vector<ByteSpan>& spans) {
  std::vector<int64_t> start(ids.size()), end(ids.size());
  std::string decoded;
  int32_t prev = -1;
  for (size_t i = 0; i < ids.size(); ++i) {
    start[i] = int64_t(decoded.size());
    decoded += tok.token_bytes(prev, ids[i]);
    end[i] = int64_t(decoded.size());
    prev = ids[i];
  }
  if (decoded != text) throw TokenizerError(tok.path, "does not decode its own encoding back to the text; spans cannot be mapped");
  std::vector<std::vector<int64_t>> out;
  for (auto& s : spans) {
    std::vector<int64_t> idx;
    for (size_t i = 0; i < ids.size(); ++i)
      if (end[i] > start[i] && start[i] < s.end && end[i] > s.begin) idx.push_back(int64_t(i));
    out.push_back(std::move(idx));
  }
  return out;
}

json task_composition(const Tokenizer& tok, const std::vector<TaskDoc>& docs, int64_t window) {
  struct Tally {
    int64_t documents = 0, tokens = 0, longest = 0, answers = 0, answer_tokens = 0, beyond = 0;
    std::vector<int64_t> distances;
  };
  std::map<std::string, Tally> by_kind;
  Tally all;
  Progress bar("composition", int64_t(docs.size()), "doc");
  for (const TaskDoc& d : docs) {
    const auto ids = encode_showing_progress(tok, d.text, /*bos=*/true, /*eos=*/false);
    Tally& t = by_kind[d.kind];
    t.documents += 1, t.tokens += int64_t(ids.size()), t.longest = std::max(t.longest, int64_t(ids.size()));
    if (!d.answers.empty()) {
      const auto answers = span_tokens(tok, ids, d.text, d.answers);
      const auto facts = span_tokens(tok, ids, d.text, d.facts);
      for (size_t a = 0; a < answers.size(); ++a) {
        if (answers[a].empty()) continue;
        const std::string text = d.text.substr(size_t(d.answers[a].begin), size_t(d.answers[a].end - d.answers[a].begin));
        int64_t fact_end = -1;  // the last token of the matching fact
        bool matched = false;
        for (size_t f = 0; f < facts.size(); ++f) {
          if (facts[f].empty() || d.facts[f].begin >= d.answers[a].begin) continue;
          const bool same = d.text.compare(size_t(d.facts[f].begin), size_t(d.facts[f].end - d.facts[f].begin), text) == 0;
          if (same || !matched) fact_end = facts[f].back();
          matched = matched || same;
        }
        t.answers += 1, t.answer_tokens += int64_t(answers[a].size());
        if (fact_end < 0) continue;
        const int64_t dist = answers[a].front() - 1 - fact_end;
        t.distances.push_back(dist);
        t.beyond += dist >= window;
      }
    }
    bar.add(1);
  }
  bar.finish();
  for (auto& [k, t] : by_kind) {
    all.documents += t.documents, all.tokens += t.tokens, all.answers += t.answers;
    all.longest = std::max(all.longest, t.longest);
    all.answer_tokens += t.answer_tokens, all.beyond += t.beyond;
    all.distances.insert(all.distances.end(), t.distances.begin(), t.distances.end());
  }
  auto summary = [&](Tally& t) {
    json j = {{"documents", t.documents}, {"tokens", t.tokens}, {"longest_document", t.longest},
              {"token_share", all.tokens ? double(t.tokens) / double(all.tokens) : 0.0}, {"answers", t.answers},
              {"answer_tokens", t.answer_tokens},
              {"answer_token_share", all.tokens ? double(t.answer_tokens) / double(all.tokens) : 0.0},
              {"beyond_window", t.beyond}};
    if (!t.distances.empty()) {
      std::sort(t.distances.begin(), t.distances.end());
      auto q = [&](double p) { return t.distances[size_t(p * double(t.distances.size() - 1) + 0.5)]; };
      j["distance"] = {{"min", q(0)}, {"median", q(0.5)}, {"p90", q(0.9)}, {"max", q(1)}};
    }
    return j;
  };
  json kinds = json::object();
  for (auto& [k, t] : by_kind) kinds[k] = summary(t);
  return {{"window", window}, {"kinds", kinds}, {"all", summary(all)}};
}

json evaluate_tasks(LlamaForCausalLM& m, const Tokenizer& tok, const std::vector<TaskDoc>& docs, bool progress,
                    dist::Group* group) {
  torch::NoGradGuard no_grad;
  m->eval();
  const ModelConfig& c = m->config;
  const bool gated = c.spkv.enabled;
  struct Tally { double answers = 0, exact = 0, tokens = 0, correct = 0, truncated = 0; };
  std::map<std::string, Tally> by_kind;
  auto counts = torch::zeros({c.n_layers, c.n_kv_heads, 2}, torch::kInt64);  // [kept, counted]: all, facts, other
  auto keep_fact = counts.clone(), keep_other = counts.clone();
  // A launch's ranks take contiguous shares of the documents, balanced by text length; the tallies are sums.
  std::vector<int64_t> bytes;
  for (const TaskDoc& d : docs) bytes.push_back(int64_t(d.text.size()));
  const auto bounds = balanced_ranges(bytes, group ? group->size() : 1);
  const size_t first = bounds[size_t(group ? group->rank() : 0)], end = bounds[size_t(group ? group->rank() : 0) + 1];
  for (const TaskDoc& d : docs) by_kind[d.kind];  // every kind of the file, also those of other ranks' documents
  std::optional<Progress> bar;
  if (progress) bar.emplace("tasks", int64_t(end - first), "doc");
  const auto device = m->parameters().front().device();
  for (size_t di = first; di < end; ++di) {
    const TaskDoc& d = docs[di];
    threads::rebalance();
    const auto ids = tok.encode(d.text, /*bos=*/true, /*eos=*/false);
    const auto answers = span_tokens(tok, ids, d.text, d.answers);
    const auto facts = span_tokens(tok, ids, d.text, d.facts);
    const int64_t T = std::min<int64_t>(int64_t(ids.size()), c.max_seq_len);
    auto x = torch::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + T)).unsqueeze(0).to(device);  // (1, T)
    auto pred = m(x)[0].argmax(-1).to(torch::kCPU);                                                       // (T)
    auto pa = pred.accessor<int64_t, 1>();
    Tally& t = by_kind[d.kind];
    for (auto& a : answers) {
      if (a.empty() || a.front() < 1) continue;
      if (a.back() >= T) {
        t.truncated += 1;
        continue;
      }
      int64_t ok = 0;
      for (int64_t i : a) ok += pa[i - 1] == ids[size_t(i)];
      t.answers += 1, t.tokens += double(a.size()), t.correct += double(ok);
      t.exact += ok == int64_t(a.size());
    }
    if (gated) {
      const auto ev = m->last_evictable.to(torch::kCPU);  // (1, T)
      auto is_fact = torch::zeros_like(ev);
      for (auto& f : facts)
        for (int64_t i : f)
          if (i < T) is_fact[0][i] = true;
      counts += m->gate_counts().to(torch::kCPU);
      keep_fact += m->gate_counts(is_fact & ev).to(torch::kCPU);
      keep_other += m->gate_counts(~is_fact & ev).to(torch::kCPU);
    }
    if (bar) bar->add(1);
  }
  if (bar) bar->finish();
  if (group) {  // sums over the ranks: every tally, and the gate counts
    std::vector<double> v;
    for (auto& [k, t] : by_kind) v.insert(v.end(), {t.answers, t.exact, t.tokens, t.correct, t.truncated});
    group->allreduce_sum(v);
    size_t i = 0;
    for (auto& [k, t] : by_kind) t = {v[i], v[i + 1], v[i + 2], v[i + 3], v[i + 4]}, i += 5;
    for (torch::Tensor* c : {&counts, &keep_fact, &keep_other}) {
      std::vector<int64_t> x(c->data_ptr<int64_t>(), c->data_ptr<int64_t>() + c->numel());
      group->allreduce_sum(x);
      *c = torch::tensor(x).reshape(c->sizes());
    }
  }
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  json out = json::object(), kinds = json::object();
  Tally all;
  for (auto& [k, t] : by_kind) {
    kinds[k] = {{"answers", t.answers}, {"tokens", t.tokens}, {"token_acc", ratio(t.correct, t.tokens)},
                {"exact", ratio(t.exact, t.answers)}, {"truncated", t.truncated}};
    all.answers += t.answers, all.tokens += t.tokens, all.correct += t.correct, all.exact += t.exact;
    all.truncated += t.truncated;
  }
  out["kinds"] = kinds;
  out["all"] = {{"answers", all.answers}, {"tokens", all.tokens}, {"token_acc", ratio(all.correct, all.tokens)},
                {"exact", ratio(all.exact, all.answers)}, {"truncated", all.truncated}};
  out["sliding_window"] = c.sliding_window;
  if (gated) {
    out["gates"] = density_json(counts);
    out["gates"]["tau"] = m->gates.tau;
    out["gates"].update(rate_json(keep_fact, "keep_facts"));
    out["gates"].update(rate_json(keep_other, "keep_other"));
  }
  return out;
}

}  // namespace spkv
