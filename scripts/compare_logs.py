#!/usr/bin/python3
"""Compares two gate logs of the same run on different devices (scripts/gpu-full-check): the same documents
and tokens, gate scores and NLL within a tolerance, and the gates' decisions (with everything counted from
them) equal, or agreeing on a share of the keys with --decisions (then the scores' and NLL's mean difference
is held to the tolerance, since a token after a flipped decision can move far). Prints one line per dataset;
exits 1 when a check fails. Not a schema check (that is `spkv check`).

Usage: compare_logs.py A.h5 B.h5 [--tol 1e-3] [--decisions 1.0]"""
import argparse
import sys

import h5py
import numpy as np

CONTINUOUS = {"gates/u", "tokens/nll"}  # float scores: max absolute difference <= tol
DECIDED = {"gates/z", "documents/kept", "summary/kept", "summary/density/density", "summary/overall_density",
           "tokens/cache_entries"}      # the decisions and what is counted from them


def datasets(f):
    out = {}
    f.visititems(lambda name, o: out.__setitem__(name, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--decisions", type=float, default=1.0, help="least share of equal gate decisions")
    o = ap.parse_args()
    with h5py.File(o.a, "r") as fa, h5py.File(o.b, "r") as fb:
        a, b = datasets(fa), datasets(fb)
    ok = True
    if sorted(a) != sorted(b):
        print(f"datasets differ: only in A {sorted(set(a) - set(b))}, only in B {sorted(set(b) - set(a))}")
        ok = False
    for name in sorted(set(a) & set(b)):
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape:
            print(f"{name}: shapes {x.shape} and {y.shape}")
            ok = False
            continue
        if name in CONTINUOUS:  # NaN (a piece's first token has no NLL) must be NaN in both
            x, y = x.astype(np.float64), y.astype(np.float64)
            same_nan = np.array_equal(np.isnan(x), np.isnan(y))
            diff = np.abs(x - y)[~np.isnan(x)] if same_nan else np.array([np.inf])
            d = float(diff.max()) if diff.size else 0.0
            if o.decisions < 1 and diff.size:
                # Decisions may differ: a token after a flipped key can move far, so the mean is judged.
                m = float(diff.mean())
                good = m <= o.tol
                print(f"{name}: mean |difference| {m:.3g} (tolerance {o.tol:g}), 99.9th percentile "
                      f"{np.quantile(diff, 0.999):.3g}, max {d:.3g} {'ok' if good else 'FAILED'}")
            else:
                good = d <= o.tol
                print(f"{name}: max |difference| {d:.3g} (tolerance {o.tol:g}) {'ok' if good else 'FAILED'}")
            if name == "tokens/nll" and same_nan:
                print(f"{name}: mean {np.nanmean(x):.6f} and {np.nanmean(y):.6f}")
        elif name == "gates/z":
            agree = float(np.mean(x == y)) if x.size else 1.0
            good = agree >= o.decisions
            print(f"{name}: decisions agree on {agree:.6f} of the keys (at least {o.decisions:g}) {'ok' if good else 'FAILED'}")
        elif name in DECIDED and o.decisions < 1:
            d = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
            print(f"{name}: max |difference| {d:.3g} (follows the decisions; not checked)")
            good = True
        else:
            good = np.array_equal(x, y)
            print(f"{name}: {'equal' if good else 'DIFFERENT'}")
        ok = ok and good
    print("logs agree" if ok else "logs DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
