#!/usr/bin/python3
"""scripts/retrieval_heads.py on a hand-made document whose token classes, far attention and keep decisions
are known: fact tokens overlap a fact span, filler tokens sit on lines without facts or answers, and the
per-head score and keep rates are the counts below. Run by ctest (Scripts.RetrievalHeads)."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import retrieval_heads  # noqa: E402

TEXT = "Some filler words.\nThe code of the pine is 7806.\nMore filler here.\nWhat is the code of the pine? 7806\n"
FACT = TEXT.index(" 7806.")
ANSWER = TEXT.rindex(" 7806")
PIECES = ["", "Some", " filler", " words", ".\n", "The", " code", " of", " the", " pine", " is", " 78", "06", ".\n",
          "More", " filler", " here", ".\n", "What", " is", " the", " code", " of", " the", " pine", "?", " 78", "06", "\n"]
# 0 neither (BOS, the kv line's key words, the query line), 1 fact, 2 filler
CLASSES = [0, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 1, 1, 0, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]


def offsets():
    out = [0]
    for p in PIECES:
        out.append(out[-1] + len(p.encode()))
    return np.array(out, np.int64)


class RetrievalHeads(unittest.TestCase):
    def test_token_classes(self):
        self.assertEqual("".join(PIECES), TEXT)
        got = retrieval_heads.token_classes(TEXT, [[FACT, FACT + 5]], [[ANSWER, ANSWER + 5]], offsets())
        self.assertEqual(got.tolist(), CLASSES)

    def test_scores_and_keep_rates(self):
        T, L, H, W = len(PIECES), 1, 2, 4
        cls = np.array(CLASSES)
        far = np.zeros((T, L, H), np.float32)
        z = np.zeros((T, L, H), np.uint8)
        far[cls == 1, 0, 0] = 0.5   # head 0 sends its far attention to the facts
        far[cls == 2, 0, 0] = 0.01
        far[:, 0, 1] = 0.1          # head 1 spreads it evenly
        z[cls == 1, 0, 0] = 1       # head 0 keeps both facts and one filler key (of 8 eligible)
        z[1, 0, 0] = 1
        z[:, 0, 1] = 1              # head 1 keeps everything
        u = np.full((T, L, H), 0.5, np.float16)  # head 1 scores every key alike: AUC 0.5
        u[cls == 2, 0, 0] = 0.1     # head 0 ranks one filler key (0.85) between its two facts (0.9, 0.8):
        u[cls == 1, 0, 0] = [0.9, 0.8]  # fact pairs won 8 + 7 of 16, AUC 15 / 16
        u[1, 0, 0] = 0.85
        with tempfile.TemporaryDirectory() as d:
            for name, data in (("dense.h5", far), ("gated.h5", z)):
                with h5py.File(os.path.join(d, name), "w") as f:
                    for k, v in (("n_layers", L), ("n_kv_heads", H), ("window", W), ("keep_first", 1)):
                        f.attrs[k] = v
                    f["documents/token_offsets"] = np.array([0, T], np.int64)
                    f["documents/id_offsets"] = np.array([0, 13], np.int64)
                    f["documents/id_bytes"] = np.frombuffer(b"tasks.jsonl#0", np.uint8)
                    f["tokens/text_offsets"] = offsets()
                    f["attention/received_far"] = far
                    f["gates/z"] = z
                    if name == "gated.h5":
                        f["gates/u"] = u
            tasks = os.path.join(d, "tasks.jsonl")
            with open(tasks, "w") as f:
                f.write(json.dumps({"text": TEXT, "facts": [[FACT, FACT + 5]], "answers": [[ANSWER, ANSWER + 5]],
                                    "kind": "kv"}) + "\n")
            out = os.path.join(d, "r.json")
            run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "retrieval_heads.py"), tasks,
                                  os.path.join(d, "dense.h5"), os.path.join(d, "gated.h5"), "--json", out, "--head", "0,0"],
                                 check=True, capture_output=True, text=True)
            r = json.load(open(out))
        # Eligible: positions 1 .. T - W - 1 = 24: both facts, all 8 filler tokens.
        self.assertEqual((r["fact_keys"], r["filler_keys"]), (2, 8))
        self.assertAlmostEqual(r["retrieval_score"][0][0], 50.0, places=4)
        self.assertAlmostEqual(r["retrieval_score"][0][1], 1.0, places=4)
        self.assertEqual(r["retrieving"], [[True, False]])
        self.assertEqual(r["keep_facts"], [[1.0, 1.0]])
        self.assertEqual(r["keep_filler"], [[0.125, 1.0]])
        self.assertAlmostEqual(r["gate_auc"][0][0], 15 / 16)
        self.assertAlmostEqual(r["gate_auc"][0][1], 0.5)
        self.assertAlmostEqual(r["pooled_keep_facts"], 1.0)
        self.assertAlmostEqual(r["pooled_keep_filler"], 0.125)
        # --head 0,0: its one kept filler key is among the four before the fact; none of the four after it.
        self.assertIn("| kv | before the first fact | 4 | 0.250 |", run.stdout)
        self.assertIn("| kv | after the last fact | 4 | 0.000 |", run.stdout)
        self.assertNotIn("between facts", run.stdout)

    def test_text_far_share(self):
        # Two documents of 7 and 3 tokens at W = 4: 3 + 0 queries see keys beyond the window; head 0 puts
        # 0.2 + 0.3 + 0.4 of its attention there, head 1 0.6 each, so their shares are 0.3 and 0.6.
        far = np.zeros((10, 1, 2), np.float32)
        far[0, 0, 0], far[1, 0, 0], far[2, 0, 0] = 0.5, 0.3, 0.1
        far[0:3, 0, 1] = 0.6
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "text.h5")
            with h5py.File(path, "w") as f:
                for k, v in (("n_layers", 1), ("n_kv_heads", 2), ("window", 4)):
                    f.attrs[k] = v
                f["documents/token_offsets"] = np.array([0, 7, 10], np.int64)
                f["attention/received_far"] = far
            np.testing.assert_allclose(retrieval_heads.far_share(path, 1, 2), [[0.3, 0.6]], rtol=1e-6)
            with self.assertRaises(SystemExit) as e:
                retrieval_heads.far_share(path, 2, 2)
            self.assertIn("1 layers x 2 KV heads, expected 2 x 2", str(e.exception))


if __name__ == "__main__":
    unittest.main()
