#!/usr/bin/python3
"""Reads a gate log with h5py (Debian's python3-h5py) and prints it as JSON for the C++ tests.

It also recomputes, from the logged decisions alone, what the schema says the summaries are (eligible and
kept counts, corpus totals, the NXdata heatmap, cache entries per token) and reports each check, so that the
writer's summaries are checked against an independent implementation.
Usage: read_gate_log.py LOG.h5
"""
import json
import sys

import h5py
import numpy as np


def text(attr):
    return attr.decode() if isinstance(attr, bytes) else str(attr)


def main(path):
    f = h5py.File(path, "r")
    a = f.attrs
    L, H, W, first = int(a["n_layers"]), int(a["n_kv_heads"]), int(a["window"]), int(a["keep_first"])
    gated = text(a["gating_mode"]) == "hard"
    evicted = f["gates/evicted_at"][:] if "gates/evicted_at" in f else None  # a policy log (schema 2)
    tok_off = f["documents/token_offsets"][:]
    id_off, id_bytes = f["documents/id_offsets"][:], f["documents/id_bytes"][:]
    txt_off, txt_bytes = f["tokens/text_offsets"][:], f["tokens/text_bytes"][:]
    u, z = f["gates/u"][:], f["gates/z"][:]
    kept, elig = f["documents/kept"][:], f["documents/eligible"][:]
    entries = f["tokens/cache_entries"][:]
    checks = {}
    docs = []
    exp_kept, exp_elig, exp_entries = np.zeros_like(kept), np.zeros_like(elig), np.zeros_like(entries)
    for d in range(len(tok_off) - 1):
        b, e = int(tok_off[d]), int(tok_off[d + 1])
        T = e - b
        lo, hi = min(T, first), T - W
        exp_elig[d] = max(0, hi - lo)
        exp_kept[d] = z[b + lo:b + hi].sum(axis=0) if hi > lo else 0
        for t in range(T):
            if evicted is not None:  # held after token t: keys s <= t not evicted by a token up to t
                ev = evicted[b:b + t + 1]
                exp_entries[b + t] = int(((ev == -1) | (ev > t)).sum())
            elif gated:
                exp_entries[b + t] = min(t + 1, W) * L * H + (z[b:b + max(0, t - W + 1)].sum() if t >= W else 0)
            else:
                exp_entries[b + t] = (t + 1) * L * H
        docs.append({
            "id": bytes(id_bytes[id_off[d]:id_off[d + 1]]).decode(),
            "text": bytes(txt_bytes[txt_off[b]:txt_off[e]]).decode(),
            "tokens": f["tokens/ids"][b:e].tolist(),
            "nll": [None if np.isnan(x) else float(x) for x in f["tokens/nll"][b:e]],
            "u": u[b:e].astype(np.float64).reshape(T, -1).tolist(),
            "z": z[b:e].reshape(T, -1).tolist(),
            "position": f["tokens/position"][b:e].tolist(),
        })
        if evicted is not None:
            docs[-1]["evicted_at"] = evicted[b:e].reshape(T, -1).tolist()
    checks["eligible"] = bool((exp_elig == elig).all())
    checks["kept"] = bool((exp_kept == kept).all())
    checks["cache_entries"] = bool((exp_entries == entries).all())
    checks["summary_kept"] = bool((f["summary/kept"][:] == kept.sum(axis=0)).all())
    checks["summary_eligible"] = bool((f["summary/eligible"][:] == elig.sum(axis=0)).all())
    density = kept.sum(axis=0) / np.maximum(elig.sum(axis=0), 1)
    checks["nxdata_density"] = bool(np.allclose(f["summary/density/density"][:], density))
    checks["summary_counts"] = (int(f["summary/n_documents"][()]) == len(tok_off) - 1
                                and int(f["summary/n_tokens"][()]) == int(tok_off[-1]))
    # The summary lives in object headers (compact layout): metadata that reaches the file in the same flush
    # as the documents it sums, so a run killed between flushes cannot leave it out of step with them.
    summary_sets = ["kept", "eligible", "n_documents", "n_tokens", "overall_density", "density/density"]
    checks["summary_compact"] = all(f["summary/" + n].id.get_create_plist().get_layout() == h5py.h5d.COMPACT
                                    for n in summary_sets)
    nx = f[text(f.attrs["default"])]
    nxd = nx[text(nx.attrs["default"])]
    checks["nxdata_default_chain"] = text(nxd.attrs["NX_class"]) == "NXdata" and text(nxd.attrs["signal"]) == "density"
    checks["nxdata_axes"] = [text(x) for x in nxd.attrs["axes"]] == ["layer", "kv_head"]
    checks["gates_dtype"] = str(u.dtype) == "float16" and str(z.dtype) == "uint8"
    checks["chunked_compressed"] = all(f[n].chunks is not None and f[n].compression == "gzip" and f[n].shuffle
                                       for n in ["gates/u", "gates/z", "tokens/ids", "tokens/nll"])
    if "attention" in f:
        # Each query spreads a mass of 1 over the keys it sees: per document, layer and head, the received
        # mass sums to the number of queries (all of them, or the last `attention_last_queries`).
        recv, last, far = f["attention/received"][:], f["attention/received_last"][:], f["attention/received_far"][:]
        n_last = int(a["attention_last_queries"])
        ok_sum, ok_last, ok_far = True, True, True
        for d in range(len(tok_off) - 1):
            b, e = int(tok_off[d]), int(tok_off[d + 1])
            ok_sum &= bool(np.allclose(recv[b:e].sum(axis=0), e - b, rtol=1e-4))
            ok_last &= bool(np.allclose(last[b:e].sum(axis=0), min(n_last, e - b), rtol=1e-4))
            ok_last &= bool((last[b:e] <= recv[b:e] + 1e-5).all())
            # Query t spreads over keys s <= t - W a mass of at most 1; only keys before T - W receive any.
            ok_far &= bool((far[b:e] <= recv[b:e] + 1e-5).all()) and bool(np.abs(far[b:e][max(0, e - b - W):]).max(initial=0) == 0)
            ok_far &= bool((far[b:e].sum(axis=0) <= max(0, e - b - W) + 1e-3).all())
        checks["attention_received_sums"], checks["attention_last_sums"] = ok_sum, ok_last
        checks["attention_far_bounds"] = ok_far
        for i, doc in enumerate(docs):
            b, e = int(tok_off[i]), int(tok_off[i + 1])
            doc["received"] = recv[b:e].reshape(e - b, -1).tolist()
            doc["received_last"] = last[b:e].reshape(e - b, -1).tolist()
            doc["received_far"] = far[b:e].reshape(e - b, -1).tolist()
    out = {
        "attrs": {k: (text(v) if isinstance(v, (bytes, str)) else v.item() if hasattr(v, "item") else v)
                  for k, v in a.items()},
        "documents": docs,
        "checks": checks,
        "summary": {"documents": int(nx["n_documents"][()]), "tokens": int(nx["n_tokens"][()])},
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
