#!/usr/bin/python3
"""Extracts the public-domain natural text of the default corpus from Debian packages.

    corpus_text.py OUT_DIR

Sources (Debian package -> documents):
  bible-kjv      King James Bible, via the `bible` program   one document per chapter
  diatheke       World English Bible (sword-text-web)         one document per chapter
  jargon-text    The Jargon File 4.4.7                          ~3,000-character runs of paragraphs
  dict-devil     Ambrose Bierce, The Devil's Dictionary         ~3,000-character runs of entries
  libpython3.11-stdlib  the Python standard library's source   one document per module file (text that
                 is long-range by nature: names defined early recur far later); tests, idlelib and
                 files over 60,000 characters are left out

Every 20th document of each source goes to OUT_DIR/val/<source>.txt, the rest to OUT_DIR/train/<source>.txt;
documents are separated by <|endoftext|>. The output is a pure function of the package contents.
"""
import gzip
import os
import re
import subprocess
import sys

SEP = "\n<|endoftext|>\n"
VAL_EVERY = 20


def run(cmd):
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        sys.exit(f"corpus_text: {cmd[0]} is missing (install the Debian package that provides it)")


def chapters(lines, ref):
    """Groups verse lines by chapter; `ref` splits a line into (book, chapter, text)."""
    docs, key, cur = [], None, []
    for line in lines:
        m = ref.match(line)
        if not m:  # a verse's further lines (poetry), or blank lines and the module name
            if key and line.strip() and not line.startswith("("):
                cur.append(line.strip())
            continue
        book, chap, text = m.group(1), m.group(2), m.group(3).strip()
        if (book, chap) != key and cur:
            docs.append("\n".join(cur))
            cur = []
        if (book, chap) != key:
            cur.append(f"{book} {chap}")
            key = (book, chap)
        if text:
            cur.append(text)
    if cur:
        docs.append("\n".join(cur))
    return docs


def runs(paragraphs, size=3000):
    docs, cur = [], ""
    for p in paragraphs:
        p = p.strip()
        if not p:
            continue
        cur = f"{cur}\n\n{p}" if cur else p
        if len(cur) >= size:
            docs.append(cur)
            cur = ""
    if cur:
        docs.append(cur)
    return docs


def kjv():
    out = run(["bible", "-f", "Gen1:1-Rev22:21"])
    return chapters(out.splitlines(), re.compile(r"^(\w+?)(\d+):\d+ (.*)$"))


def web():
    out = run(["diatheke", "-b", "engWEB2015eb", "-f", "plain", "-k", "Gen 1-Rev 22"])
    return chapters(out.splitlines(), re.compile(r"^((?:\d )?[A-Za-z ]+?) (\d+):\d+: (.*)$"))


def read_gz(path):
    if not os.path.exists(path):
        sys.exit(f"corpus_text: {path} is missing (install the Debian package that provides it)")
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def jargon():
    text = read_gz("/usr/share/doc/jargon-text/jargon.txt.gz")
    return runs(re.split(r"\n\s*\n", text))


def devil():
    text = read_gz("/usr/share/dictd/devil.dict.dz")  # dictzip is gzip-compatible
    text = text[text.find("PREFACE"):]
    return runs(re.split(r"\n\s*\n", text))


def pystdlib():
    root = "/usr/lib/python3.11"
    if not os.path.isdir(root):
        sys.exit(f"corpus_text: {root} is missing (install libpython3.11-stdlib)")
    docs = []
    for d, subdirs, files in os.walk(root):
        subdirs[:] = sorted(s for s in subdirs
                            if s not in ("test", "tests", "idlelib", "__pycache__", "site-packages", "dist-packages"))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(d, name), encoding="utf-8", errors="replace") as f:
                text = f.read().replace("<|endoftext|>", "<|end of text|>").expandtabs(4)
            if 200 <= len(text) <= 60000:
                docs.append(text.strip("\n"))
    return docs


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    for split in ("train", "val"):
        os.makedirs(os.path.join(out, split), exist_ok=True)
    for name, fn in (("kjv", kjv), ("web", web), ("jargon", jargon), ("devil", devil), ("python", pystdlib)):
        docs = [re.sub(r"[ \t]+\n", "\n", d) for d in fn()]
        if len(docs) < VAL_EVERY:
            sys.exit(f"corpus_text: {name}: only {len(docs)} documents; the package contents look wrong")
        val = [d for i, d in enumerate(docs) if i % VAL_EVERY == VAL_EVERY - 1]
        train = [d for i, d in enumerate(docs) if i % VAL_EVERY != VAL_EVERY - 1]
        for split, part in (("train", train), ("val", val)):
            path = os.path.join(out, split, f"{name}.txt")
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(SEP.join(part) + "\n")
            os.replace(path + ".tmp", path)
        print(f"{name:7s} {len(train):5d} train / {len(val):4d} val documents, "
              f"{sum(map(len, train)) / 1e6:.2f} / {sum(map(len, val)) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
