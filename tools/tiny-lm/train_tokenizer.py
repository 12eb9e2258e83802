#!/usr/bin/python3
"""Trains the byte-level BPE (see bpe.py for the exact rules) on a sample of the
training split and writes models/tiny-lm/tokenizer.json.

Sample: the train chunks in a random.Random(TOKENIZER_SEED) shuffled order, taken
until SAMPLE_CHARS characters. Merges are learned greedily: at each step the adjacent
pair with the highest count over the sample's pre-tokens wins; ties go to the
smallest (a, b). The pair is then merged left to right without overlap in every word.

Usage: /usr/bin/python3 tools/tiny-lm/train_tokenizer.py
"""
import argparse
import collections
import heapq
import json
import os
import random
import time

from bpe import pre_split, merge_pair, Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER_SEED = 7
SAMPLE_CHARS = 4_000_000
VOCAB_SIZE = 4096
SPECIALS = ["<|bos|>", "<|eos|>"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(HERE, "data"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "..", "models", "tiny-lm", "tokenizer.json"))
    args = ap.parse_args()
    t0 = time.time()
    with open(os.path.join(args.data, "train.jsonl"), encoding="utf-8") as f:
        chunks = [json.loads(l)["text"] for l in f]
    random.Random(TOKENIZER_SEED).shuffle(chunks)
    sample, n = [], 0
    for c in chunks:
        if n >= SAMPLE_CHARS:
            break
        sample.append(c)
        n += len(c)
    counts = collections.Counter()
    for c in sample:
        counts.update(pre_split(c.encode("utf-8")))
    words = [list(w) for w in counts]
    freqs = [counts[w] for w in counts]
    print(f"sample {n} chars, {len(words)} unique pre-tokens, {time.time()-t0:.1f}s", flush=True)

    pair_count = collections.defaultdict(int)
    where = collections.defaultdict(set)
    for wi, w in enumerate(words):
        for k in range(len(w) - 1):
            p = (w[k], w[k + 1])
            pair_count[p] += freqs[wi]
            where[p].add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)

    n_merges = VOCAB_SIZE - 256 - len(SPECIALS)
    merges = []
    while len(merges) < n_merges and heap:
        negc, p = heapq.heappop(heap)
        if pair_count.get(p, 0) != -negc:
            continue  # stale entry
        if -negc < 2:
            break
        new = 256 + len(merges)
        merges.append(p)
        touched = collections.defaultdict(int)
        for wi in list(where[p]):
            w = words[wi]
            f = freqs[wi]
            for k in range(len(w) - 1):
                q = (w[k], w[k + 1])
                pair_count[q] -= f
                touched[q] += 0
                where[q].discard(wi)
            w = merge_pair(w, p[0], p[1], new)
            words[wi] = w
            for k in range(len(w) - 1):
                q = (w[k], w[k + 1])
                pair_count[q] += f
                touched[q] += 0
                where[q].add(wi)
        for q in touched:
            c = pair_count[q]
            if c <= 0:
                pair_count.pop(q, None)
                where.pop(q, None)
            else:
                heapq.heappush(heap, (-c, q))
        if len(merges) % 500 == 0:
            print(f"{len(merges)} merges, last count {-negc}, {time.time()-t0:.1f}s", flush=True)

    specials = {s: 256 + len(merges) + i for i, s in enumerate(SPECIALS)}
    tok = Tokenizer(merges, specials)
    doc = {
        "format": "lukv-bpe-1",
        "description": "byte-level BPE; ids 0..255 = bytes, id 256+r = merges[r] joined; see tools/tiny-lm/README.md for the exact pre-split and merge rules",
        "vocab_size": tok.vocab_size,
        "pre_split": "byte-classes-v1",
        "special_tokens": specials,
        "merges": [list(m) for m in merges],
        "vocab": [v.hex() for v in tok.vocab],
        "training": {"sample_chars": n, "seed": TOKENIZER_SEED, "source": "train split of prepare_data.py"},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}: vocab {tok.vocab_size}, {len(merges)} merges, {time.time()-t0:.1f}s")
    ex = "The pass key is 48213. Remember it.\n  def f(x):\n    return x"
    ids = tok.encode(ex)
    print(len(ids), ids, [tok.vocab[i] for i in ids])
    assert tok.decode(ids) == ex


if __name__ == "__main__":
    main()
