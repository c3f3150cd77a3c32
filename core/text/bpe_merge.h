// Greedy byte-pair merging in O(n log n), shared by the llama2.c and Hugging Face BPE tokenizers: the
// adjacent pair with the best key (the smallest) is merged first, the leftmost among equal keys, until no
// pair merges. This is the order of llama2.c's run.c and of tokenizers' BPE, without their rescan of every
// pair after each merge (quadratic: a 100 kB document took 91 s). Not a tokenizer: no pre-splitting.
#pragma once
#include <cstdint>
#include <optional>
#include <queue>
#include <utility>
#include <vector>

namespace spkv {

// merge(a, b) -> the key and the merged symbol when the pair merges, std::nullopt otherwise. Symbols are
// merged in place; the survivors are appended to `out` in order.
template <class Sym, class Key, class MergeFn>
void bpe_merge(std::vector<Sym> sym, MergeFn merge, std::vector<Sym>& out) {
  const int64_t n = int64_t(sym.size());
  std::vector<int64_t> next(sym.size()), prev(sym.size());
  std::vector<bool> alive(sym.size(), true);
  for (int64_t i = 0; i < n; ++i) next[size_t(i)] = i + 1 < n ? i + 1 : -1, prev[size_t(i)] = i - 1;
  struct Candidate {
    Key key;
    int64_t left, right;
  };
  auto worse = [](const Candidate& a, const Candidate& b) { return a.key != b.key ? b.key < a.key : a.left > b.left; };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> heap(worse);
  auto push = [&](int64_t l, int64_t r) {
    if (l < 0 || r < 0) return;
    if (auto m = merge(sym[size_t(l)], sym[size_t(r)])) heap.push({m->first, l, r});
  };
  for (int64_t i = 0; i + 1 < n; ++i) push(i, i + 1);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    // A candidate whose sides have changed since it was pushed is stale: skip it (its sides' current
    // pair, if it merges, was pushed when they changed).
    if (!alive[size_t(c.left)] || !alive[size_t(c.right)] || next[size_t(c.left)] != c.right) continue;
    auto m = merge(sym[size_t(c.left)], sym[size_t(c.right)]);
    if (!m || m->first != c.key) continue;
    sym[size_t(c.left)] = std::move(m->second);
    alive[size_t(c.right)] = false;
    next[size_t(c.left)] = next[size_t(c.right)];
    if (next[size_t(c.left)] >= 0) prev[size_t(next[size_t(c.left)])] = c.left;
    push(prev[size_t(c.left)], c.left);
    push(c.left, next[size_t(c.left)]);
  }
  for (int64_t i = 0; i < n; ++i)
    if (alive[size_t(i)]) out.push_back(std::move(sym[size_t(i)]));
}

}  // namespace spkv
