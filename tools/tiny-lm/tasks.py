"""Synthetic long-range tasks mixed into training, and the real-text streams.

All sampling goes through a numpy Generator passed in by the caller, so a batch is a
pure function of (seed, step).
"""
import json
import os

import numpy as np

NEEDLE = "\n\nThe pass key is {k}. Remember it. {k} is the pass key.\n\n"
QUESTION = "\n\nWhat is the pass key? The pass key is "  # the answer digits follow
ANSWER_END = ".\n\n"


def load_split(tok, data_dir, name):
    """Token stream of a split: chunks joined with EOS, as uint16 (cached)."""
    cache = os.path.join(data_dir, f"tokens_{name}.npy")
    src = os.path.join(data_dir, f"{name}.jsonl")
    if os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(src):
        return np.load(cache)
    ids = []
    with open(src, encoding="utf-8") as f:
        for line in f:
            ids.extend(tok.encode(json.loads(line)["text"]))
            ids.append(tok.eos)
    arr = np.array(ids, dtype=np.uint16)
    np.save(cache, arr)
    return arr


def text_window(stream, rng, n):
    s = int(rng.integers(0, len(stream) - n))
    return stream[s:s + n].astype(np.int64)


def passkey_key(rng, ndigits=5):
    return str(int(rng.integers(10 ** (ndigits - 1), 10 ** ndigits)))


def passkey_sequence(tok, stream, rng, T, length=None, depth=None, key=None):
    """BOS + filler + NEEDLE + filler + QUESTION + key + ANSWER_END + filler (to T).

    Returns (ids[T], answer_positions) where answer_positions are the indices of the
    key's digit tokens in the question (the model predicts ids[p] from ids[:p])."""
    key = key or passkey_key(rng)
    needle = tok.encode(NEEDLE.format(k=key))
    q = tok.encode(QUESTION)
    ans = tok.encode(key)
    end = tok.encode(ANSWER_END)
    if length is None:
        length = int(rng.integers(min(160, T), T + 1))
    fill = length - 1 - len(needle) - len(q) - len(ans)
    assert fill > 8, "sequence too short for a passkey"
    if depth is None:
        depth = float(rng.random())
    f1 = int(round(depth * fill))
    f2 = fill - f1
    ids = [tok.bos]
    ids += text_window(stream, rng, f1).tolist() if f1 else []
    ids += needle
    ids += text_window(stream, rng, f2).tolist() if f2 else []
    ids += q
    a0 = len(ids)
    ids += ans
    positions = list(range(a0, a0 + len(ans)))
    ids += end
    if len(ids) < T:
        ids += text_window(stream, rng, T - len(ids)).tolist()
    return np.array(ids[:T], dtype=np.int64), positions


def repeat_sequence(tok, stream, rng, T, m=None):
    """BOS + filler A + passage P + filler G + P again + filler (to T).

    Returns (ids[T], (first_start, second_start, m))."""
    if m is None:
        m = int(rng.integers(16, min(257, (T - 1) // 2 - 8)))
    budget = T - 1 - 2 * m
    a = int(rng.integers(0, budget // 2 + 1))
    g = int(rng.integers(0, budget - a + 1))
    p = text_window(stream, rng, m).tolist()
    ids = [tok.bos]
    ids += text_window(stream, rng, a).tolist() if a else []
    s1 = len(ids)
    ids += p
    ids += text_window(stream, rng, g).tolist() if g else []
    s2 = len(ids)
    ids += p
    if len(ids) < T:
        ids += text_window(stream, rng, T - len(ids)).tolist()
    return np.array(ids[:T], dtype=np.int64), (s1, s2, m)


def shuffled_repeat_sequence(tok, stream, rng, T, m=None):
    """Like repeat_sequence, but the passage is made of tokens drawn independently from
    random positions of the stream (natural token frequencies, no n-gram structure),
    so its second copy can only be predicted by copying."""
    if m is None:
        m = int(rng.integers(16, min(257, (T - 1) // 2 - 8)))
    budget = T - 1 - 2 * m
    a = int(rng.integers(0, budget // 2 + 1))
    g = int(rng.integers(0, budget - a + 1))
    p = stream[rng.integers(0, len(stream), size=m)].astype(np.int64).tolist()
    ids = [tok.bos]
    ids += text_window(stream, rng, a).tolist() if a else []
    s1 = len(ids)
    ids += p
    ids += text_window(stream, rng, g).tolist() if g else []
    s2 = len(ids)
    ids += p
    if len(ids) < T:
        ids += text_window(stream, rng, T - len(ids)).tolist()
    return np.array(ids[:T], dtype=np.int64), (s1, s2, m)


def text_sequence(tok, stream, rng, T):
    return np.concatenate([[tok.bos], text_window(stream, rng, T - 1)])


def make_batch(tok, stream, rng, B, T, p_passkey, p_repeat, p_shuffled=0.0):
    rows = []
    kinds = []
    for _ in range(B):
        u = rng.random()
        if u < p_passkey:
            rows.append(passkey_sequence(tok, stream, rng, T)[0])
            kinds.append("passkey")
        elif u < p_passkey + p_repeat:
            rows.append(repeat_sequence(tok, stream, rng, T)[0])
            kinds.append("repeat")
        elif u < p_passkey + p_repeat + p_shuffled:
            rows.append(shuffled_repeat_sequence(tok, stream, rng, T)[0])
            kinds.append("shuffled")
        else:
            rows.append(text_sequence(tok, stream, rng, T))
            kinds.append("text")
    return np.stack(rows), kinds
