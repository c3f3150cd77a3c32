"""Reads spkv gate logs (docs/hdf5-schema.md) for notebooks: the reference Python reader of the schema.

It reads with h5py only (Debian's python3-h5py and python3-numpy; run notebooks with /usr/bin/python3) and
computes the same statistics as the C++ analysis library (analysis/report.h): density per layer and KV head,
compression per document against length with its least-squares fit, and the counterfactual tau sweep.
tests/analysis/test_notebooks.cpp checks it against the C++ reader. Not a writer, and not plotting.

    python3 spkv_log.py LOG.h5   prints those statistics as JSON
"""
import json
import sys

import h5py
import numpy as np

TAU_GRID = [0.05 * i for i in range(1, 20)]


def _text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


class GateLog:
    """One gate log. Per-token datasets are read one document at a time, so memory follows the document."""

    def __init__(self, path):
        self.path = path
        self.f = h5py.File(path, "r")
        a = self.f.attrs
        if "schema_version" not in a:
            raise ValueError(f"{path}: not a gate log (no schema_version attribute)")
        if int(a["schema_version"]) > 2:
            raise ValueError(f"{path}: schema version {int(a['schema_version'])} is newer than this reader (2)")
        self.attrs = {k: (_text(v) if isinstance(v, (bytes, str)) else v.item() if hasattr(v, "item") else v)
                      for k, v in a.items()}
        self.n_layers, self.n_kv_heads = int(a["n_layers"]), int(a["n_kv_heads"])
        self.window, self.keep_first, self.tau = int(a["window"]), int(a["keep_first"]), float(a["tau"])
        self.token_offsets = self.f["documents/token_offsets"][:]           # (D + 1)
        self.kept = self.f["documents/kept"][:]                             # (D, L, Hkv)
        self.eligible = self.f["documents/eligible"][:]                     # (D, L, Hkv)
        id_off, id_bytes = self.f["documents/id_offsets"][:], self.f["documents/id_bytes"][:]
        self.ids = [bytes(id_bytes[id_off[d]:id_off[d + 1]]).decode() for d in range(len(id_off) - 1)]

    @property
    def n_documents(self):
        return len(self.token_offsets) - 1

    def lengths(self):
        return np.diff(self.token_offsets)                                  # (D)

    def _rows(self, name, d):
        return self.f[name][self.token_offsets[d]:self.token_offsets[d + 1]]

    def token_ids(self, d):
        return self._rows("tokens/ids", d)                                  # (T)

    def nll(self, d):
        return self._rows("tokens/nll", d)                                  # (T), NaN at position 0

    def u(self, d):
        return self._rows("gates/u", d).astype(np.float32)                  # (T, L, Hkv)

    def z(self, d):
        return self._rows("gates/z", d)                                     # (T, L, Hkv)

    def evicted_at(self, d):
        """A policy log (schema 2): the position whose append evicted each key, -1 if never."""
        return self._rows("gates/evicted_at", d)                            # (T, L, Hkv)

    def token_text(self, d):
        """The UTF-8 text each token of document d contributes (position 0: ''), as a list of str."""
        b, e = self.token_offsets[d], self.token_offsets[d + 1]
        off = self.f["tokens/text_offsets"][b:e + 1]
        raw = bytes(self.f["tokens/text_bytes"][off[0]:off[-1]])
        return [raw[off[i] - off[0]:off[i + 1] - off[0]].decode("utf-8", "replace") for i in range(e - b)]

    def density(self):
        """Kept / eligible out-of-window keys per (layer, KV head), pooled over documents; NaN if none."""
        k, e = self.kept.sum(axis=0), self.eligible.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(e > 0, k / np.maximum(e, 1), np.nan)

    def overall_density(self):
        return self.kept.sum() / max(self.eligible.sum(), 1)

    def compression(self):
        """Per document: (tokens, dense KV entries / SP-KV KV entries at its end)."""
        LH, W = self.n_layers * self.n_kv_heads, self.window
        T = self.lengths()
        pinned = np.minimum(self.keep_first, np.maximum(0, T - W))
        spkv = LH * np.minimum(T, W) + self.kept.reshape(len(T), -1).sum(axis=1) + LH * pinned
        return T, LH * T / spkv

    def tau_sweep(self, grid=TAU_GRID):
        """Density each head would have at each tau, from the logged u of the eligible keys: (grid, L, Hkv)."""
        above = np.zeros((len(grid), self.n_layers, self.n_kv_heads))
        for d in range(self.n_documents):
            T = int(self.token_offsets[d + 1] - self.token_offsets[d])
            lo, hi = min(T, self.keep_first), T - self.window
            if hi <= lo:
                continue
            u = self.u(d)[lo:hi].astype(np.float64)  # compared in float64, as the C++ analysis does
            for i, tau in enumerate(grid):
                above[i] += (u >= tau).sum(axis=0)
        e = self.eligible.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_head = np.where(e > 0, above / np.maximum(e, 1), np.nan)
        return per_head, above.reshape(len(grid), -1).sum(axis=1) / max(e.sum(), 1)


def fit_line(x, y):
    """Least squares y = slope * x + intercept, with R^2."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    mx, my = x.mean(), y.mean()
    sxx, sxy, syy = ((x - mx) ** 2).sum(), ((x - mx) * (y - my)).sum(), ((y - my) ** 2).sum()
    slope = sxy / sxx
    return slope, my - slope * mx, (sxy * sxy / (sxx * syy) if syy > 0 else 1.0)


def summary(path):
    log = GateLog(path)
    T, ratio = log.compression()
    per_head, overall = log.tau_sweep()
    return {
        "documents": log.n_documents,
        "ids": log.ids,
        "density_per_head": np.nan_to_num(log.density(), nan=-1).tolist(),
        "overall_density": float(log.overall_density()),
        "compression": ratio.tolist(),
        "fit": list(fit_line(T, ratio)),
        "tau_overall": overall.tolist(),
        "tau_per_head": np.nan_to_num(per_head, nan=-1).tolist(),
        "text0": "".join(log.token_text(0)),
    }


if __name__ == "__main__":
    json.dump(summary(sys.argv[1]), sys.stdout)
