"""Evaluation: real-text perplexity and passkey accuracy."""
import math

import numpy as np
import torch
import torch.nn.functional as F

import tasks


@torch.no_grad()
def perplexity(model, stream, T, eos, bos, batch=8, max_windows=None):
    """exp(mean NLL) over non-overlapping windows [BOS] + stream[i*(T-1):(i+1)*(T-1)];
    every stream token is a target once, except EOS separators (not counted)."""
    model.eval()
    n = (len(stream)) // (T - 1)
    if max_windows is not None:
        n = min(n, max_windows)
    tot, cnt = 0.0, 0
    for i0 in range(0, n, batch):
        rows = []
        for i in range(i0, min(n, i0 + batch)):
            rows.append(np.concatenate([[bos], stream[i * (T - 1):(i + 1) * (T - 1)].astype(np.int64)]))
        x = torch.from_numpy(np.stack(rows))
        logits = model(x[:, :-1])
        tgt = x[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
        keep = (tgt.reshape(-1) != eos)
        tot += float(nll[keep].sum())
        cnt += int(keep.sum())
    model.train()
    return math.exp(tot / cnt), cnt


@torch.no_grad()
def passkey_accuracy(model, tok, stream, lengths, per_length, seed, T_max=None):
    """Exact-match accuracy of the greedy answer (argmax at every digit given the
    correct previous digits == greedy decoding of the whole key). Depths are spread
    evenly over (0, 1). Returns {length: accuracy} and the overall accuracy."""
    model.eval()
    rng = np.random.default_rng(seed)
    res = {}
    allc = 0
    alln = 0
    for L in lengths:
        correct = 0
        for j in range(per_length):
            depth = (j + 0.5) / per_length
            ids, pos = tasks.passkey_sequence(tok, stream, rng, L, length=L, depth=depth)
            x = torch.from_numpy(ids[None, :pos[-1]])
            logits = model(x)[0]
            pred = logits[[p - 1 for p in pos]].argmax(-1).numpy()
            ok = bool((pred == ids[pos]).all())
            correct += ok
        res[L] = correct / per_length
        allc += correct
        alln += per_length
    model.train()
    return res, allc / alln


@torch.no_grad()
def copy_stats(model, tok, stream, T, n, seed, m=100):
    """Mean NLL on the first and on the second copy of a repeated m-token passage, and
    the greedy accuracy on the second copy (1.0 = perfect copying)."""
    model.eval()
    rng = np.random.default_rng(seed)
    n1, n2, acc = [], [], []
    for _ in range(n):
        ids, (s1, s2, mm) = tasks.repeat_sequence(tok, stream, rng, T, m=m)
        x = torch.from_numpy(ids[None])
        lo = model(x)[0]
        nll = F.cross_entropy(lo[:-1], x[0, 1:], reduction="none").numpy()
        n1.append(nll[s1:s1 + mm - 1].mean())
        n2.append(nll[s2:s2 + mm - 1].mean())
        acc.append((lo[s2:s2 + mm - 1].argmax(-1).numpy() == ids[s2 + 1:s2 + mm]).mean())
    model.train()
    return float(np.mean(n1)), float(np.mean(n2)), float(np.mean(acc))
