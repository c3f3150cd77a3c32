#!/usr/bin/python3
"""Compares two HDF5 files with h5py, independently of spkv's reader: every dataset (shape, dtype and every
element, NaN equal to NaN) and every root attribute but `created`. Prints one JSON object for the C++ tests:
{"datasets": N, "only_in_a": [...], "only_in_b": [...], "differ": [...], "attributes_differ": [...]}.
Usage: compare_gate_logs.py A.h5 B.h5
"""
import json
import sys

import h5py
import numpy as np


def datasets(f):
    out = {}
    f.visititems(lambda name, obj: out.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return out


def main(a_path, b_path):
    a, b = h5py.File(a_path, "r"), h5py.File(b_path, "r")
    da, db = datasets(a), datasets(b)
    differ = []
    for name in sorted(set(da) & set(db)):
        x, y = da[name][()], db[name][()]
        same = x.dtype == y.dtype and np.shape(x) == np.shape(y)
        if same:
            same = np.array_equal(x, y, equal_nan=True) if x.dtype.kind == "f" else np.array_equal(x, y)
        if not same:
            differ.append(name)
    attrs = sorted((set(a.attrs) | set(b.attrs)) - {"created"})
    attributes_differ = [k for k in attrs if k not in a.attrs or k not in b.attrs or
                         not np.array_equal(np.asarray(a.attrs[k]), np.asarray(b.attrs[k]))]
    print(json.dumps({"datasets": len(set(da) | set(db)), "only_in_a": sorted(set(da) - set(db)),
                      "only_in_b": sorted(set(db) - set(da)), "differ": differ, "attributes_differ": attributes_differ}))


if __name__ == "__main__":
    main(*sys.argv[1:])
