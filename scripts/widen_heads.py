#!/usr/bin/python3
"""Widens a dense Llama-architecture model (Hugging Face config.json + model.safetensors) to FACTOR times its
attention heads without changing what it computes: every KV head and its query heads are copied FACTOR
times (copies adjacent: old KV head k becomes heads k*FACTOR .. k*FACTOR + FACTOR - 1 of its layer), and the
output projection's columns of every copy are divided by FACTOR, so the copies' outputs sum to the old
head's. head_dim, the MLPs and the embeddings are unchanged.

What it is for (issue 16, "the gates select"): an SP-KV adaptation from the widened model starts with
retrieval intact and two copies of every head, each with its own gate (the fresh predictor's random output
weights tell them apart), so one copy can keep a task's facts while the other keeps natural text's far keys.
--noise S adds Gaussian noise of S times the head's RMS (over its block of rows) to the Q, K and V rows of every copy
but the first (the model then no longer computes exactly the same function).

It is not a general model surgery tool: models with an `spkv` block (a trained predictor) or attention biases
are refused. The tokenizer.model beside the input, if any, is copied.
Usage: widen_heads.py IN_DIR OUT_DIR [--factor 2] [--noise 0] [--seed 0]
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def read_safetensors(path):
    """{name: array}, metadata; only float tensors."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        sys.exit(f"{path}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, t in header.items():
        if t["dtype"] not in DTYPES:
            sys.exit(f"{path}: tensor '{name}' has dtype {t['dtype']}, expected one of {sorted(DTYPES)}")
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], DTYPES[t["dtype"]]).reshape(t["shape"])
    return out, meta


def write_safetensors(path, tensors, meta):
    """Temporary file, then rename: nothing half-written."""
    header, offset = {"__metadata__": meta}, 0
    names = sorted(tensors)
    for name in names:
        t = tensors[name]
        dtype = next(k for k, v in DTYPES.items() if v == t.dtype)
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for name in names:
            f.write(np.ascontiguousarray(tensors[name]).tobytes())
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--factor", type=int, default=2)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.factor < 2:
        sys.exit(f"--factor {a.factor}: expected an integer of at least 2")
    cfg_path = os.path.join(a.src, "config.json")
    cfg = json.load(open(cfg_path))
    if "spkv" in cfg:
        sys.exit(f"{cfg_path}: has an 'spkv' block; expected a dense model (widen before the SP-KV adaptation)")
    if cfg.get("attention_bias"):
        sys.exit(f"{cfg_path}: attention_bias is true; expected a model without attention biases")
    L, H = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads", H)
    D = cfg.get("head_dim", cfg["hidden_size"] // H)
    G, f = H // Hkv, a.factor
    src = os.path.join(a.src, "model.safetensors")
    w, meta = read_safetensors(src)
    rng = np.random.default_rng(a.seed)
    # new query head (k * f + c) * G + j is old query head k * G + j; new KV head k * f + c is old KV head k
    q_map = [k * G + j for k in range(Hkv) for c in range(f) for j in range(G)]
    kv_map = [k for k in range(Hkv) for c in range(f)]
    copy_no = lambda heads: [c for k in range(Hkv) for c in range(f) for j in range(heads)]
    for l in range(L):
        p = f"model.layers.{l}.self_attn."
        for proj, heads, m in (("q_proj", H, q_map), ("k_proj", Hkv, kv_map), ("v_proj", Hkv, kv_map)):
            name = p + proj + ".weight"
            if name not in w or w[name].shape[0] != heads * D:
                sys.exit(f"{src}: tensor '{name}' missing or not ({heads * D}, ...)")
            rows = w[name].reshape(heads, D, -1)[m]  # (heads * f, D, hidden)
            if a.noise > 0:
                first = np.array(copy_no(G if proj == "q_proj" else 1)) == 0
                rms = np.sqrt((rows ** 2).mean(axis=(1, 2), keepdims=True))
                rows = rows + np.where(first[:, None, None], 0, a.noise * rms * rng.standard_normal(rows.shape)).astype(rows.dtype)
            w[name] = rows.reshape(heads * f * D, -1)
        name = p + "o_proj.weight"
        if name not in w or w[name].shape[1] != H * D:
            sys.exit(f"{src}: tensor '{name}' missing or not (..., {H * D})")
        cols = w[name].reshape(w[name].shape[0], H, D)[:, q_map] / np.asarray(f, w[name].dtype)
        w[name] = cols.reshape(cols.shape[0], H * f * D)
    cfg.update(num_attention_heads=H * f, num_key_value_heads=Hkv * f, head_dim=D)
    os.makedirs(a.dst, exist_ok=True)
    meta = dict(meta, widened_from=os.path.abspath(a.src), widen_factor=str(f), widen_noise=str(a.noise))
    write_safetensors(os.path.join(a.dst, "model.safetensors"), w, meta)
    tok = os.path.join(a.src, "tokenizer.model")
    if os.path.exists(tok):
        shutil.copyfile(tok, os.path.join(a.dst, "tokenizer.model"))
    with open(os.path.join(a.dst, "config.json.tmp"), "w") as out:
        json.dump(cfg, out, indent=2)
    os.replace(os.path.join(a.dst, "config.json.tmp"), os.path.join(a.dst, "config.json"))
    print(f"{a.src}: {L} layers x {Hkv} KV heads ({H} query heads) -> {Hkv * f} ({H * f}) in {a.dst}")


if __name__ == "__main__":
    main()
