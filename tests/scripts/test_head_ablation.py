#!/usr/bin/python3
"""scripts/head-ablation on the bundled model's matched dense control over 12 held-out task documents: the
all-global layout scores exactly like `spkv tasks eval` without a layout (full attention, another path),
every head gets a row, and making one head local costs some head at least half of the key-value answers
(the model retrieves through few heads, so a layout that changed nothing would fail here). Run by ctest
(Scripts.HeadAblation) with the spkv binary as its argument."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "data", "models", "spkv-default")
SPKV = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "tools", "spkv")


class HeadAblation(unittest.TestCase):
    def test_dense_control(self):
        control, tasks = os.path.join(MODEL, "stages", "dense-control"), os.path.join(MODEL, "heldout", "tasks.jsonl")
        tok = os.path.join(MODEL, "tokenizer.model")
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([os.path.join(ROOT, "scripts", "head-ablation"), control, tasks, tmp, "--max-docs", "12",
                            "--tokenizer", tok, "--spkv", SPKV, "--threads", "1"], check=True, capture_output=True)
            with open(os.path.join(tmp, "ablation.json")) as f:
                r = json.load(f)
            plain = os.path.join(tmp, "plain.json")
            subprocess.run([SPKV, "--threads", "1", "tasks", "eval", "-m", control, "-t", tok, tasks, "--max-docs", "12",
                            "--json", plain], check=True, capture_output=True)
            with open(plain) as f:
                full = json.load(f)
        self.assertEqual(len(r["heads"]), 16)
        for k in ("kv", "needle"):
            self.assertEqual(r["all_global"][k], full["kinds"][k]["exact"], k)
        self.assertGreater(r["all_global"]["kv"], 0.5)
        self.assertGreaterEqual(max(h["drop"]["kv"] for h in r["heads"]), 0.5)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
