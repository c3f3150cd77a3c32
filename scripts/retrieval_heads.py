#!/usr/bin/python3
"""Which heads retrieve, and do their gates keep the facts? Per layer and KV head, from two gate logs of the
same task documents (`spkv tasks generate` JSONL, in file order):

  - DENSE.h5: `spkv run --dense --attention-stats` of a model: the far attention mass each key received
    (from queries that see it from outside the window W);
  - GATES.h5: `spkv run` of the SP-KV model: its keep decisions z.

Token classes come from the documents' byte spans: a *fact* token overlaps a fact span; a *filler* token lies
on a line holding no fact and no answer byte (so the key names of a kv line and the query lines are
neither). Only eligible keys count (positions keep_first <= s < T - W, the keys a gate decides about).

Per head: far mass per fact key / per filler key (the retrieval score: > 1 means the head's far attention
goes to facts), the gates' keep rate of fact and filler keys, and, from the gate scores u, the gate's ROC
AUC: the chance that a random fact key scores above a random filler key (0.5: the gate cannot tell them
apart, so no threshold makes it select). The retrieving heads are those with a
score of at least --min-score; the pooled fact/filler keep ratio over them is the number to report.
--text TEXT.h5 (`spkv run --dense --attention-stats` of the same model on natural text) adds each head's far
share on that text: the attention mass its queries put on keys beyond the window, per query that has such
keys. A head that retrieves on the tasks and also reads far on natural text is asked by the method's own
signal to keep a task's natural filler.
--head L,H adds that head's filler keep rate by where the filler lies (before the document's first fact, between
facts, after its last fact) and kind: a gate that uses the document's context keeps less filler once facts came.
Usage: retrieval_heads.py TASKS.jsonl DENSE.h5 GATES.h5 [--min-score 3] [--text TEXT.h5] [--head L,H] [--json OUT.json]
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np


def token_classes(text, facts, answers, text_offsets):
    """(T,) int8 per token of one document: 1 fact, 2 filler, 0 neither. text_offsets: (T + 1) byte offsets."""
    raw = text.encode()
    n = len(raw)
    fact = np.zeros(n + 1, bool)
    marked = np.zeros(n + 1, bool)  # fact or answer bytes
    for a, b in facts:
        fact[a:b] = True
        marked[a:b] = True
    for a, b in answers:
        marked[a:b] = True
    line_marked = np.zeros(n + 1, bool)  # byte lies on a line with a fact or an answer byte
    start = 0
    for end in [i for i, c in enumerate(raw) if c == 0x0A] + [n]:
        if marked[start:end + 1].any():
            line_marked[start:end + 1] = True
        start = end + 1
    T = len(text_offsets) - 1
    out = np.zeros(T, np.int8)
    for t in range(T):
        a, b = int(text_offsets[t]), int(text_offsets[t + 1])
        if b <= a:
            continue
        if fact[a:b].any():
            out[t] = 1
        elif not line_marked[a:b].any():
            out[t] = 2
    return out


def auc(pos, neg):
    """P(a random pos value > a random neg value), ties counting half (Mann-Whitney U / (n_pos n_neg)); None
    when either is empty."""
    if len(pos) == 0 or len(neg) == 0:
        return None
    _, inv, counts = np.unique(np.concatenate([pos, neg]).astype(np.float64), return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based rank of each distinct value, ties averaged
    r = mean_rank[inv][:len(pos)].sum()
    return float((r - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def far_share(path, L, H):
    """(L, H): far attention mass per query that sees keys beyond the window, over a dense log's documents."""
    f = h5py.File(path, "r")
    if "attention/received_far" not in f:
        sys.exit(f"{path}: no attention/received_far (run spkv run --dense --attention-stats)")
    if (int(f.attrs["n_layers"]), int(f.attrs["n_kv_heads"])) != (L, H):
        sys.exit(f"{path}: {f.attrs['n_layers']} layers x {f.attrs['n_kv_heads']} KV heads, expected {L} x {H}")
    W = int(f.attrs["window"])
    T = np.diff(f["documents/token_offsets"][:])
    return f["attention/received_far"][:].sum(axis=0, dtype=np.float64) / max(np.maximum(T - W, 0).sum(), 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tasks")
    ap.add_argument("dense")
    ap.add_argument("gates")
    ap.add_argument("--min-score", type=float, default=3.0)
    ap.add_argument("--text")
    ap.add_argument("--head")
    ap.add_argument("--json")
    a = ap.parse_args()
    docs = [json.loads(line) for line in open(a.tasks)]
    fd, fg = h5py.File(a.dense, "r"), h5py.File(a.gates, "r")
    if "attention/received_far" not in fd:
        sys.exit(f"{a.dense}: no attention/received_far (run spkv run --dense --attention-stats)")
    L, H, W, first = (int(fg.attrs[k]) for k in ("n_layers", "n_kv_heads", "window", "keep_first"))
    off_d, off_g = fd["documents/token_offsets"][:], fg["documents/token_offsets"][:]
    D = min(len(off_d), len(off_g)) - 1
    # Log document ids are "<file>#<line>" (the JSONL has no ids); a document longer than the context is
    # cut, and its later pieces ("...@k") hold no facts at their start: only whole documents and first
    # pieces are used.
    id_off, id_bytes = fg["documents/id_offsets"][:], fg["documents/id_bytes"][:]
    line_of = []
    for d in range(D):
        doc_id = bytes(id_bytes[id_off[d]:id_off[d + 1]]).decode()
        line_of.append(-1 if "@" in doc_id else int(doc_id.rsplit("#", 1)[1]))
        if line_of[-1] >= len(docs):
            sys.exit(f"{a.gates}: document '{doc_id}' is past the {len(docs)} lines of {a.tasks}")
    mass = np.zeros((2, L, H))     # far mass summed over fact / filler keys
    keys = np.zeros(2)             # eligible fact / filler keys
    kept = np.zeros((2, L, H))     # of them, z = 1
    scores = ([], [])              # their gate scores u, (n, L, H) per document, when the log has them
    has_u = "gates/u" in fg
    txt_off = fg["tokens/text_offsets"]
    used = 0
    focus = tuple(int(v) for v in a.head.split(",")) if a.head else None
    by_place = {}  # (kind, place) -> [keys, kept] of the --head head
    for d in range(D):
        if line_of[d] < 0:
            continue
        used += 1
        bd, ed, bg, eg = int(off_d[d]), int(off_d[d + 1]), int(off_g[d]), int(off_g[d + 1])
        if ed - bd != eg - bg:
            sys.exit(f"document {d}: {ed - bd} tokens in {a.dense}, {eg - bg} in {a.gates}: not the same inputs")
        T = eg - bg
        to = txt_off[bg:eg + 1] - txt_off[bg]
        doc = docs[line_of[d]]
        cls = token_classes(doc["text"], doc["facts"], doc["answers"], to)
        elig = np.zeros(T, bool)
        elig[min(T, first):max(0, T - W)] = True
        far = fd["attention/received_far"][bd:ed]  # (T, L, H)
        z = fg["gates/z"][bg:eg]                   # (T, L, H)
        u = fg["gates/u"][bg:eg] if has_u else None  # (T, L, H)
        for c in (1, 2):
            sel = elig & (cls == c)
            keys[c - 1] += sel.sum()
            mass[c - 1] += far[sel].sum(axis=0)
            kept[c - 1] += z[sel].sum(axis=0)
            if has_u:
                scores[c - 1].append(u[sel])
        if focus and (cls == 1).any():
            fact_at = np.flatnonzero(cls == 1)
            place = np.where(np.arange(T) < fact_at[0], 0, np.where(np.arange(T) < fact_at[-1], 1, 2))
            for p, name in enumerate(("before the first fact", "between facts", "after the last fact")):
                sel = elig & (cls == 2) & (place == p)
                n_k = by_place.setdefault((doc.get("kind", "?"), name), [0, 0])
                n_k[0] += int(sel.sum())
                n_k[1] += int(z[sel][:, focus[0], focus[1]].sum())
    per_key = mass / np.maximum(keys, 1)[:, None, None]
    score = per_key[0] / np.maximum(per_key[1], 1e-12)
    keep = kept / np.maximum(keys, 1)[:, None, None]
    retr = score >= a.min_score
    su = [np.concatenate(v) if v else np.zeros((0, L, H)) for v in scores]
    gate_auc = [[auc(su[0][:, l, h], su[1][:, l, h]) if has_u else None for h in range(H)] for l in range(L)]
    pooled_fact = kept[0][retr].sum() / max(keys[0] * retr.sum(), 1)
    pooled_filler = kept[1][retr].sum() / max(keys[1] * retr.sum(), 1)
    text = far_share(a.text, L, H) if a.text else None
    text_col = (" text far share |", "---|") if a.text else ("", "")
    lines = [f"{used} documents, {int(keys[0])} eligible fact keys, {int(keys[1])} eligible filler keys (W = {W}).", "",
             "| layer | kv head | far mass per fact key | per filler key | retrieval score | keep facts | keep filler | facts / filler | gate AUC |" + text_col[0],
             "|---|---|---|---|---|---|---|---|---|" + text_col[1]]
    for l in range(L):
        for h in range(H):
            ratio = keep[0, l, h] / keep[1, l, h] if keep[1, l, h] > 0 else float("inf")
            mark = " **retrieving**" if retr[l, h] else ""
            lines.append(f"| {l} | {h}{mark} | {per_key[0, l, h]:.4f} | {per_key[1, l, h]:.4f} | {score[l, h]:.1f} | "
                         f"{keep[0, l, h]:.3f} | {keep[1, l, h]:.3f} | {ratio:.1f} | "
                         + ("–" if gate_auc[l][h] is None else f"{gate_auc[l][h]:.2f}") + " |"
                         + (f" {text[l, h]:.3f} |" if a.text else ""))
    lines += ["", f"Retrieving heads (score >= {a.min_score:g}): {int(retr.sum())}; over them the gates keep "
              f"{pooled_fact:.3f} of fact keys and {pooled_filler:.3f} of filler keys "
              f"({pooled_fact / pooled_filler if pooled_filler > 0 else float('inf'):.1f}x)."]
    if focus:
        lines += ["", f"Head {focus}: filler keys kept by where they lie.", "", "| kind | filler | keys | kept |", "|---|---|---|---|"]
        lines += [f"| {k} | {p} | {n} | {kk / n:.3f} |" for (k, p), (n, kk) in sorted(by_place.items()) if n]
    print("\n".join(lines))
    if a.json:
        out = {"documents": used, "fact_keys": int(keys[0]), "filler_keys": int(keys[1]), "min_score": a.min_score,
               "far_mass_per_fact_key": per_key[0].tolist(), "far_mass_per_filler_key": per_key[1].tolist(),
               "retrieval_score": score.tolist(), "keep_facts": keep[0].tolist(), "keep_filler": keep[1].tolist(),
               "retrieving": retr.tolist(), "text_far_share": None if text is None else text.tolist(), "gate_auc": gate_auc, "pooled_keep_facts": pooled_fact, "pooled_keep_filler": pooled_filler}
        with open(a.json + ".tmp", "w") as f:
            json.dump(out, f, indent=1)

        os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
