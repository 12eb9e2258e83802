#!/usr/bin/python3
"""Head analysis of the shipped model (models/tiny-lm/model.safetensors, f16 weights,
f32 compute). Writes models/tiny-lm/heads.json and prints a Markdown table.

Inputs (all from the held-out split, never trained on; seed ANALYSIS_SEED):
  text     N_TEXT windows of 1024 tokens ([BOS] + 1023 tokens of held-out text);
           queries are positions 512..1023, so every query sees >= 512 tokens.
  passkey  N_PASSKEY passkey sequences of 1024 tokens (depths (j+0.5)/N); queries are
           the positions that predict the answer digits; targets are the key's digit
           tokens in the needle (both copies of the key).
  repeat   N_REPEAT sequences of 1024 tokens with a 128-token passage that occurs
           twice; queries are positions s2+k (k = 1..127) of the second copy; the
           induction target is s1+k+1, the token after the previous occurrence of the
           current token (what the model must copy next).

Metrics per (layer, query head), averaged over queries and sequences:
  mean_distance             sum_j A[i,j] (i-j) on text
  mean_distance_excl_first  the same with the first token (BOS) removed and the rest
                            renormalised (the first token is a sink that lukv always keeps)
  prev_token                A[i, i-1] on text
  first_token               A[i, 0] on text
  self_token                A[i, i] on text
  passkey                   attention mass on the needle's key digits, passkey queries
  induction                 A[i, s1+k+1] on repeat queries
Per (layer, KV head): the mean over the query heads of its group (and the max, for
passkey and induction).

Labels (first rule that matches):
  retrieval/copying   induction >= 0.25 or passkey >= 0.25
  previous-token      prev_token >= 0.4
  sink                first_token >= 0.6
  uniform             mean_distance_excl_first >= 0.9 x that of uniform attention over
                      tokens 1..i (~383 here): an averaging head with no preferred position
  local               mean_distance_excl_first < 48
  broad               otherwise
"""
import argparse
import json
import os
import sys

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
if os.path.exists(TCMALLOC) and TCMALLOC not in os.environ.get("LD_PRELOAD", ""):
    os.environ["LD_PRELOAD"] = TCMALLOC
    os.execv(sys.executable, [sys.executable] + sys.argv)

import numpy as np
import torch

from bpe import Tokenizer
import tasks
from export import load_exported, OUT

HERE = os.path.dirname(os.path.abspath(__file__))
ANALYSIS_SEED = 777
T = 1024
Q0 = 512
N_TEXT, N_PASSKEY, N_REPEAT = 8, 24, 24
PASSAGE = 128
TH_COPY, TH_PREV, TH_SINK, TH_LOCAL, TH_UNIFORM = 0.25, 0.4, 0.6, 48.0, 0.9
# mean distance (first token excluded) of uniform attention over tokens 1..i, queries Q0..T-1
UNIFORM_DISTANCE = float(np.mean([(i - 1) / 2 for i in range(Q0, T)]))


def label(m):
    if m["induction"] >= TH_COPY or m["passkey"] >= TH_COPY:
        return "retrieval/copying"
    if m["prev_token"] >= TH_PREV:
        return "previous-token"
    if m["first_token"] >= TH_SINK:
        return "sink"
    if m["mean_distance_excl_first"] >= TH_UNIFORM * UNIFORM_DISTANCE:
        return "uniform"
    if m["mean_distance_excl_first"] < TH_LOCAL:
        return "local"
    return "broad"


@torch.no_grad()
def attn_of(model, ids):
    _, aux = model(torch.from_numpy(np.asarray(ids, dtype=np.int64)[None]), want_attn=True)
    return [a[0].numpy().astype(np.float64) for a in aux["attn"]]  # per layer [H, T, T]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(HERE, "data"))
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, cfgj = load_exported(args.out)
    tok = Tokenizer.load(os.path.join(args.out, "tokenizer.json"))
    Lr, H, KV = cfgj["num_layers"], cfgj["num_heads"], cfgj["num_kv_heads"]
    G = H // KV
    stream = tasks.load_split(tok, args.data, "heldout")
    rng = np.random.default_rng(ANALYSIS_SEED)

    acc = {k: np.zeros((Lr, H)) for k in ("mean_distance", "mean_distance_excl_first", "prev_token",
                                          "first_token", "self_token", "passkey", "induction")}
    qi = np.arange(Q0, T)
    dist = (qi[:, None] - np.arange(T)[None, :]).clip(min=0).astype(np.float64)
    for _ in range(N_TEXT):
        ids = tasks.text_sequence(tok, stream, rng, T)
        for l, A in enumerate(attn_of(model, ids)):
            rows = A[:, Q0:T, :]                        # H, Q, T
            acc["mean_distance"][l] += (rows * dist).sum(-1).mean(-1) / N_TEXT
            r1 = rows[:, :, 1:] / rows[:, :, 1:].sum(-1, keepdims=True)
            acc["mean_distance_excl_first"][l] += (r1 * dist[:, 1:]).sum(-1).mean(-1) / N_TEXT
            acc["prev_token"][l] += rows[:, np.arange(len(qi)), qi - 1].mean(-1) / N_TEXT
            acc["self_token"][l] += rows[:, np.arange(len(qi)), qi].mean(-1) / N_TEXT
            acc["first_token"][l] += rows[:, :, 0].mean(-1) / N_TEXT
    pk_correct = 0
    for j in range(N_PASSKEY):
        key = tasks.passkey_key(rng)
        ids, pos = tasks.passkey_sequence(tok, stream, rng, T, length=T, depth=(j + 0.5) / N_PASSKEY, key=key)
        digits = tok.encode(key)
        # locate the needle's digit tokens: the key occurs twice before the question
        needle_pos = []
        for s in range(1, pos[0] - len(digits)):
            if list(ids[s:s + len(digits)]) == digits:
                needle_pos += list(range(s, s + len(digits)))
        assert len(needle_pos) >= 2 * len(digits), "needle not found"
        q = [p - 1 for p in pos]
        out = model(torch.from_numpy(ids[None, :pos[-1]]))[0]
        pk_correct += bool((out[q].argmax(-1).numpy() == ids[pos]).all())
        for l, A in enumerate(attn_of(model, ids[:pos[-1]])):
            acc["passkey"][l] += A[:, q][:, :, needle_pos].sum(-1).mean(-1) / N_PASSKEY
    copy_hits, copy_total = 0, 0
    for _ in range(N_REPEAT):
        ids, (s1, s2, m) = tasks.repeat_sequence(tok, stream, rng, T, m=PASSAGE)
        q = np.arange(s2 + 1, s2 + m - 1)
        tgt = q - s2 + s1 + 1
        out = model(torch.from_numpy(ids[None]))[0]
        copy_hits += int((out[q].argmax(-1).numpy() == ids[q + 1]).sum())
        copy_total += len(q)
        for l, A in enumerate(attn_of(model, ids)):
            acc["induction"][l] += A[:, q, tgt].mean(-1) / N_REPEAT

    qheads, kvheads = [], []
    for l in range(Lr):
        for h in range(H):
            m = {k: round(float(v[l, h]), 4) for k, v in acc.items()}
            m = dict({"layer": l, "head": h, "kv_head": h // G}, **m)
            m["label"] = label(m)
            qheads.append(m)
        for g in range(KV):
            grp = [x for x in qheads if x["layer"] == l and x["kv_head"] == g]
            m = {k: round(float(np.mean([x[k] for x in grp])), 4) for k in acc}
            m["passkey_max"] = max(x["passkey"] for x in grp)
            m["induction_max"] = max(x["induction"] for x in grp)
            m = dict({"layer": l, "kv_head": g, "query_heads": [x["head"] for x in grp]}, **m)
            m["query_head_labels"] = [x["label"] for x in grp]
            m["label"] = label(m)
            kvheads.append(m)
    res = {
        "description": __doc__.strip(),
        "model": "models/tiny-lm/model.safetensors",
        "context": T,
        "seed": ANALYSIS_SEED,
        "samples": {"text": N_TEXT, "passkey": N_PASSKEY, "repeat": N_REPEAT, "passage_tokens": PASSAGE},
        "thresholds": {"copy": TH_COPY, "prev_token": TH_PREV, "sink": TH_SINK, "local_distance": TH_LOCAL,
                       "uniform_fraction": TH_UNIFORM, "uniform_distance": UNIFORM_DISTANCE},
        "model_behaviour": {"passkey_accuracy": pk_correct / N_PASSKEY,
                            "repeat_copy_accuracy": round(copy_hits / copy_total, 4)},
        "query_heads": qheads,
        "kv_heads": kvheads,
    }
    with open(os.path.join(args.out, "heads.json"), "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")

    def row(x, kv):
        name = f"L{x['layer']} KV{x['kv_head']}" if kv else f"L{x['layer']} H{x['head']} (KV{x['kv_head']})"
        return (f"| {name} | {x['mean_distance']:.0f} | {x['mean_distance_excl_first']:.0f} | {x['prev_token']:.2f} | "
                f"{x['first_token']:.2f} | {x['passkey']:.2f} | {x['induction']:.2f} | {x['label']} |")
    hdr = ("| head | mean dist | mean dist excl. first | prev token | first token | passkey digits | induction target | label |\n"
           "|---|---:|---:|---:|---:|---:|---:|---|")
    print("Query heads:\n" + hdr)
    for x in qheads:
        print(row(x, False))
    print("\nKV heads (mean over the 4 query heads of the group):\n" + hdr)
    for x in kvheads:
        print(row(x, True))
    print(f"\nmodel: passkey accuracy {pk_correct}/{N_PASSKEY}, repeat copy accuracy {copy_hits}/{copy_total}")


if __name__ == "__main__":
    main()
