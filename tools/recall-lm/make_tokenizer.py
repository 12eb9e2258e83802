#!/usr/bin/python3
"""Writes models/recall-lm/tokenizer.json (word-level "lukv-bpe-1", see tasks.py) and checks it
against the reference encoder tools/tiny-lm/bpe.py."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tiny-lm"))
sys.path.insert(0, HERE)

import numpy as np

import tasks
from bpe import Tokenizer

OUT = os.path.join(HERE, "..", "..", "models", "recall-lm", "tokenizer.json")


def main():
    tj = tasks.build_tokenizer_json()
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(tj, f, separators=(",", ":"))
    tok = Tokenizer.load(OUT)
    v = tasks.Vocab(tj)
    rng = np.random.default_rng(5)
    for task in tasks.TASKS:
        for _ in range(20):
            inst = tasks.instance(v, task, rng, 512, all_questions=True)
            ids, _ = tasks.sequence(v, inst)
            text = inst["context"].text + "".join(q.text + a.text + " ." for group in inst["qas"] for q, a in group)
            assert tok.encode(text) == ids[1:], task
    print(f"wrote {OUT}: vocab {tj['vocab_size']} ({len(tj['merges'])} merges); encoder check passed")


if __name__ == "__main__":
    main()
