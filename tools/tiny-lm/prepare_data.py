#!/usr/bin/python3
"""Extract plain English text from Debian packages and split it deterministically.

Installs nothing itself. The text comes from these Debian 12 packages:

    apt-get update
    apt-get install -y --no-install-recommends debian-handbook python3-doc fortunes

Sources (read-only):
  * /usr/share/doc/debian-handbook/html/en-US/*.html   (The Debian Administrator's Handbook, English)
  * /usr/share/doc/python3.11/html/**/*.html           (the Python 3.11 documentation)
  * /usr/share/games/fortunes/<name>                   (fortune cookie files, '%' separated)

Pipeline:
  1. HTML -> paragraphs with a small stdlib HTMLParser: only the main content is kept
     (navigation, tables of contents, sidebars, header links, scripts are dropped);
     <pre> blocks keep their line breaks, other blocks have whitespace collapsed.
     Fortunes: one fortune = one paragraph, line breaks kept, tabs -> 4 spaces.
  2. Deduplication: a paragraph of >= 32 characters whose exact text (whitespace
     collapsed) was already seen anywhere earlier is dropped. Files are visited in
     sorted order (handbook, python docs, fortunes), so the result is deterministic.
  3. Chunking: consecutive paragraphs of one source file are joined with a blank line
     into chunks of at least CHUNK_CHARS characters (the last chunk of a file may be
     shorter; chunks under MIN_CHUNK_CHARS are dropped).
  4. Split: random.Random(SPLIT_SEED) draws one number per chunk in order:
     < 0.03 -> val, < 0.06 -> heldout, < 0.08 -> calib, else train.

Output: <out>/{train,val,heldout,calib}.jsonl, one chunk per line:
  {"id": "pydoc/library/os.html#3", "source": "pydoc", "text": "..."}
and <out>/stats.json.

Usage: /usr/bin/python3 tools/tiny-lm/prepare_data.py [--out tools/tiny-lm/data]
"""
import argparse
import glob
import html.parser
import json
import os
import random
import re
import sys

HANDBOOK_DIR = "/usr/share/doc/debian-handbook/html/en-US"
PYDOC_DIR = "/usr/share/doc/python3.11/html"
FORTUNE_DIR = "/usr/share/games/fortunes"

CHUNK_CHARS = 12000
MIN_CHUNK_CHARS = 400
DEDUP_MIN_CHARS = 32
SPLIT_SEED = 20261128

# Python doc pages that are indexes, not prose.
PYDOC_SKIP = re.compile(r"^(genindex.*|py-modindex|search|contents|glossary_index)\.html$")
# Fortune files that are not prose.
FORTUNE_SKIP = {"ascii-art"}

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
        "param", "source", "track", "wbr"}
BLOCK = {"p", "div", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "tr",
         "table", "blockquote", "section", "ul", "ol", "dl", "br", "hr", "figure",
         "figcaption", "caption", "th", "td", "title", "body"}
SKIP_TAGS = {"script", "style", "head", "noscript", "nav", "form", "button"}
SKIP_CLASSES = {"toc", "docnav", "headerlink", "sphinxsidebar", "related", "footer",
                "navheader", "navfooter", "indexterm", "mobile-nav",
                "clearer", "legalnotice"}
SKIP_IDS = {"banner", "title"}


class TextExtractor(html.parser.HTMLParser):
    """Collects paragraphs. If `main` is given as (tag, attr, value), text is only
    collected inside the first element that matches it."""

    def __init__(self, main=None):
        super().__init__(convert_charrefs=True)
        self.main = main
        self.stack = []  # entries: (tag, skip, main, pre)
        self.paras = []
        self.buf = []
        self.cur_pre = False

    def _state(self):
        if not self.stack:
            return (False, self.main is None, False)
        _, skip, main, pre = self.stack[-1]
        return (skip, main, pre)

    def _flush(self):
        text = "".join(self.buf)
        self.buf = []
        if self.cur_pre:
            lines = [l.rstrip() for l in text.expandtabs(4).split("\n")]
            while lines and not lines[0]:
                lines.pop(0)
            while lines and not lines[-1]:
                lines.pop()
            text = "\n".join(lines)
        else:
            text = " ".join(text.split())
        if text:
            self.paras.append(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        skip, main, pre = self._state()
        classes = set((a.get("class") or "").split())
        if tag in SKIP_TAGS or classes & SKIP_CLASSES or a.get("id") in SKIP_IDS:
            skip = True
        if self.main is not None and not main:
            mt, ma, mv = self.main
            if tag == mt and (a.get(ma) or "") == mv:
                main = True
        if tag in BLOCK or tag == "pre":
            if not skip and main:
                self._flush()
        if tag == "pre":
            pre = True
            self.cur_pre = True
        if tag not in VOID:
            self.stack.append((tag, skip, main, pre))

    def handle_startendtag(self, tag, attrs):
        if tag in BLOCK:
            skip, main, _ = self._state()
            if not skip and main:
                if tag == "br" and self.cur_pre:
                    self.buf.append("\n")
                else:
                    self._flush()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        # pop to the matching start tag (tolerates unclosed <p>, <li>, ...)
        idx = None
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                idx = i
                break
        if idx is None:
            return
        was_skip, was_main = self.stack[idx][1], self.stack[idx][2]
        del self.stack[idx:]
        if (tag in BLOCK or tag == "pre") and not was_skip and was_main:
            self._flush()
        if tag == "pre":
            self.cur_pre = self._state()[2]

    def handle_data(self, data):
        skip, main, _ = self._state()
        if not skip and main:
            self.buf.append(data)

    def close(self):
        super().close()
        self._flush()


def html_paragraphs(path, main=None):
    with open(path, encoding="utf-8", errors="replace") as f:
        src = f.read()
    p = TextExtractor(main)
    p.feed(src)
    p.close()
    return [x for x in p.paras if x not in ("¶", "#")]


def fortune_paragraphs(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        src = f.read()
    out = []
    for block in re.split(r"^%\s*$", src, flags=re.M):
        lines = [l.rstrip() for l in block.expandtabs(4).split("\n")]
        while lines and not lines[0]:
            lines.pop(0)
        while lines and not lines[-1]:
            lines.pop()
        if lines:
            out.append("\n".join(lines))
    return out


def sources():
    """Yields (source, relative id, paragraphs) in a fixed order."""
    for path in sorted(glob.glob(os.path.join(HANDBOOK_DIR, "*.html"))):
        name = os.path.basename(path)
        if name == "index.html":  # the table of contents
            continue
        yield "handbook", "handbook/" + name, html_paragraphs(path)
    for path in sorted(glob.glob(os.path.join(PYDOC_DIR, "**", "*.html"), recursive=True)):
        rel = os.path.relpath(path, PYDOC_DIR)
        if rel.startswith("_") or PYDOC_SKIP.match(os.path.basename(rel)):
            continue
        yield "pydoc", "pydoc/" + rel, html_paragraphs(path, main=("div", "role", "main"))
    for path in sorted(glob.glob(os.path.join(FORTUNE_DIR, "*"))):
        name = os.path.basename(path)
        if "." in name or name in FORTUNE_SKIP or not os.path.isfile(path):
            continue
        yield "fortunes", "fortunes/" + name, fortune_paragraphs(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    args = ap.parse_args()
    for d in (HANDBOOK_DIR, PYDOC_DIR, FORTUNE_DIR):
        if not os.path.isdir(d):
            sys.exit(f"missing {d}: apt-get install -y --no-install-recommends debian-handbook python3-doc fortunes")
    os.makedirs(args.out, exist_ok=True)

    seen = set()
    chunks = []
    stats = {"files": 0, "paragraphs": 0, "dropped_duplicates": 0, "chars_by_source": {}}
    for source, rid, paras in sources():
        stats["files"] += 1
        kept = []
        for p in paras:
            key = " ".join(p.split())
            if len(key) >= DEDUP_MIN_CHARS:
                if key in seen:
                    stats["dropped_duplicates"] += 1
                    continue
                seen.add(key)
            kept.append(p)
        stats["paragraphs"] += len(kept)
        cur, n, k = [], 0, 0
        for p in kept + [None]:
            if p is not None:
                cur.append(p)
                n += len(p) + 2
            if (p is None and cur) or n >= CHUNK_CHARS:
                text = "\n\n".join(cur)
                if len(text) >= MIN_CHUNK_CHARS:
                    chunks.append({"id": f"{rid}#{k}", "source": source, "text": text})
                    k += 1
                cur, n = [], 0

    rng = random.Random(SPLIT_SEED)
    splits = {"train": [], "val": [], "heldout": [], "calib": []}
    for c in chunks:
        r = rng.random()
        name = "val" if r < 0.03 else "heldout" if r < 0.06 else "calib" if r < 0.08 else "train"
        splits[name].append(c)
    for name, cs in splits.items():
        with open(os.path.join(args.out, name + ".jsonl"), "w", encoding="utf-8") as f:
            for c in cs:
                f.write(json.dumps(c, ensure_ascii=False) + "\n")
        chars = {}
        for c in cs:
            chars[c["source"]] = chars.get(c["source"], 0) + len(c["text"])
        stats["chars_by_source"][name] = chars
        stats[name + "_chunks"] = len(cs)
        stats[name + "_chars"] = sum(chars.values())
    with open(os.path.join(args.out, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
