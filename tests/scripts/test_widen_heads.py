#!/usr/bin/python3
"""scripts/widen_heads.py on the bundled model's matched dense control (4 layers x 4 heads): the widened model
(8 heads a layer, a real checkpoint that spkv loads) scores three held-out documents with the same NLL as the
original to float rounding, which fails if a copy's output were not divided by the factor or a head landed
in another's place; with --noise it no longer does; and the SP-KV model (it has a predictor) is refused with a
one-line error naming its config.json. Run by ctest (Scripts.WidenHeads) with the spkv binary as its
argument."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "data", "models", "spkv-default")
SPKV = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "tools", "spkv")
WIDEN = os.path.join(ROOT, "scripts", "widen_heads.py")


def nll(model, tmp):
    out = os.path.join(tmp, "eval.json")
    subprocess.run([SPKV, "--threads", "1", "eval", "-m", model, "-t", os.path.join(MODEL, "tokenizer.model"),
                    os.path.join(MODEL, "heldout", "text"), "--max-docs", "3", "--json", out], check=True, capture_output=True)
    with open(out) as f:
        return json.load(f)["nll"]


class WidenHeads(unittest.TestCase):
    def test_widened_control_computes_the_same(self):
        control = os.path.join(MODEL, "stages", "dense-control")
        with tempfile.TemporaryDirectory() as tmp:
            wide, noisy = os.path.join(tmp, "wide"), os.path.join(tmp, "noisy")
            subprocess.run([sys.executable, WIDEN, control, wide], check=True, capture_output=True)
            subprocess.run([sys.executable, WIDEN, control, noisy, "--noise", "0.05"], check=True, capture_output=True)
            with open(os.path.join(wide, "config.json")) as f:
                cfg = json.load(f)
            self.assertEqual((cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]), (8, 8, 32))
            base, same, moved = nll(control, tmp), nll(wide, tmp), nll(noisy, tmp)
        self.assertGreater(base, 1.0)
        self.assertAlmostEqual(same / base, 1.0, delta=1e-6)
        self.assertGreater(abs(moved / base - 1.0), 1e-5)

    def test_a_model_with_a_predictor_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run([sys.executable, WIDEN, MODEL, os.path.join(tmp, "out")], capture_output=True, text=True)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("config.json: has an 'spkv' block", r.stderr)
            self.assertFalse(os.path.exists(os.path.join(tmp, "out")))


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
