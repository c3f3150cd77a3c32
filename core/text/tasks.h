// Long-range retrieval tasks for the default corpus and their evaluation: key-value lookup, needle
// retrieval and reversal, written as natural-text documents (filler drawn from real text) whose answers
// lie far outside a local window. The same JSONL files are training data (`spkv tokenize` reads their
// "text") and evaluation sets (`spkv tasks eval` scores the answer spans).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/model/model.h"
#include "core/text/tokenizer.h"

namespace spkv {
namespace dist {
class Group;
}

struct ByteSpan {
  int64_t begin = 0, end = 0;  // [begin, end) in the document's UTF-8 bytes
};

struct TaskDoc {
  std::string kind;  // "kv" | "needle" | "reversal" | "copy" | "copy-shuffled"
  std::string text;
  std::vector<ByteSpan> answers;  // what the model must predict; each starts with the space before it
  std::vector<ByteSpan> facts;    // where the information the answers need was stated
};

struct TaskGenOptions {
  int64_t n = 100;  // documents
  uint64_t seed = 0;
  std::vector<std::string> kinds = {"kv", "needle", "reversal", "copy"};  // used in turn
  int64_t min_chars = 1800, max_chars = 3400;  // document length, filler included
  int64_t min_gap_chars = 600;  // at least this much filler between the last fact and the first answer
  int64_t min_facts = 4, max_facts = 8;  // key-value pairs in a "kv" document (all are queried)
};

// filler: natural-text documents to cut filler spans from (at line boundaries). Deterministic in the
// options. Throws ConfigError for an unknown kind or impossible lengths, InputError for too little filler.
std::vector<TaskDoc> generate_tasks(const std::vector<std::string>& filler, const TaskGenOptions& o);

// Induction data in token ids (no text): each document is BOS, then x, then x again, where x is
// min_len..max_len ids drawn uniformly from [first_id, last_id). Only copying predicts the second x, so a
// model trained on it forms induction heads (previous-token and match-and-copy) in a few hundred steps,
// where natural text with embedded tasks forms none in thousands (docs/results.md, pilots G and H). The
// default model's first training stage. Deterministic in the arguments.
struct RepeatOptions {
  int64_t n = 1000, min_len = 20, max_len = 60;
  int32_t first_id = 300, last_id = 0;  // last_id 0: the vocabulary size
  int32_t bos_id = 1;
  uint64_t seed = 0;
};
std::vector<std::vector<int32_t>> repeat_documents(const RepeatOptions& o, int32_t vocab_size);  // throws ConfigError

// One JSON object per line: {"kind", "text", "answers": [[b, e], ...], "facts": [[b, e], ...]}; only "text"
// is required when reading (plain JSONL corpora).
void write_tasks_jsonl(const std::string& path, const std::vector<TaskDoc>& docs);  // atomic
// Throws InputError naming the file, line and field.
std::vector<TaskDoc> read_tasks_jsonl(const std::string& path);

// The token indices of `ids` (as encoded from `text`) whose bytes overlap each span; index 0 is BOS when
// the encoding has one. Throws TokenizerError when the tokens do not decode back to `text`.
std::vector<std::vector<int64_t>> span_tokens(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                              const std::string& text, const std::vector<ByteSpan>& spans);

// The make-up of a training corpus, per kind (a task kind, or for plain text the name its caller gives):
// documents, tokens (BOS included), the longest document's tokens, answers and answer tokens, and for every answer its distance: from the
// query that predicts the answer's first token back to the last token of its fact (the fact with the same
// text, else the last fact before the answer). "beyond_window" counts answers with distance >= window,
// whose fact a window-only model cannot see. Shares are of all tokens. Throws TokenizerError as span_tokens.
nlohmann::json task_composition(const Tokenizer& tok, const std::vector<TaskDoc>& docs, int64_t window);

// Teacher-forced greedy accuracy on the answer tokens, per kind and overall: answers, tokens, token_acc
// (argmax equals the answer token) and exact (every token of an answer right). With SP-KV (hard gates at
// m->gates.tau): density and the keep rate of fact keys vs all other evictable keys, pooled and per
// layer and head. Documents longer than the context are scored on their first max_seq_len tokens; answers
// beyond it are counted in "truncated".
// With a group (a launch, docs/distributed.md), each rank scores a contiguous share of the documents and
// every rank returns the totals over all of them, as one process would.
nlohmann::json evaluate_tasks(LlamaForCausalLM& m, const Tokenizer& tok, const std::vector<TaskDoc>& docs,
                              bool progress = true, dist::Group* group = nullptr);

}  // namespace spkv
