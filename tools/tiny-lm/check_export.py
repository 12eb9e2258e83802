#!/usr/bin/python3
"""Independent check of models/tiny-lm against its documentation: a NumPy-only
tokenizer and forward pass written from README.md (no torch, no bpe.py, no model.py),
compared with reference.json. Exits non-zero on a mismatch.

Usage: /usr/bin/python3 tools/tiny-lm/check_export.py
"""
import json
import os
import struct
import sys

import numpy as np

D = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models", "tiny-lm")


def cls(b):
    if 65 <= b <= 90 or 97 <= b <= 122 or b >= 128:
        return "L"
    if 48 <= b <= 57:
        return "D"
    if b in (9, 10, 11, 12, 13, 32):
        return "W"
    return "P"


def presplit(s):
    b = s.encode("utf-8")
    out, i, n = [], 0, len(b)
    while i < n:
        if b[i] == 32 and i + 1 < n and cls(b[i + 1]) in "LP":
            c, j = cls(b[i + 1]), i + 1
            while j < n and cls(b[j]) == c:
                j += 1
        elif cls(b[i]) == "D":
            j = i + 1
        elif cls(b[i]) in "LP":
            c, j = cls(b[i]), i
            while j < n and cls(b[j]) == c:
                j += 1
        else:
            j = i
            while j < n and cls(b[j]) == "W":
                j += 1
            if j - i >= 2 and b[j - 1] == 32 and j < n and cls(b[j]) in "LP":
                j -= 1
        out.append(b[i:j])
        i = j
    return out


def encode(s, ranks):
    ids = []
    for piece in presplit(s):
        t = list(piece)
        while True:
            cand = [(ranks[(t[k], t[k + 1])], k) for k in range(len(t) - 1) if (t[k], t[k + 1]) in ranks]
            if not cand:
                break
            r = min(cand)[0]
            a, bb = t[min(cand)[1]], t[min(cand)[1] + 1]
            new, k = [], 0
            while k < len(t):
                if k + 1 < len(t) and t[k] == a and t[k + 1] == bb:
                    new.append(256 + r)
                    k += 2
                else:
                    new.append(t[k])
                    k += 1
            t = new
        ids += t
    return ids


def load_weights(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        assert n % 8 == 0
        hdr = json.loads(f.read(n))
        data = f.read()
    w = {}
    for k, h in hdr.items():
        if k == "__metadata__":
            continue
        a, b = h["data_offsets"]
        assert h["dtype"] == "F16"
        w[k] = np.frombuffer(data[a:b], dtype="<f2").astype(np.float32).reshape(h["shape"])
    return w, hdr


def forward(tokens, w, c):
    H, KV, hd = c["num_heads"], c["num_kv_heads"], c["head_dim"]
    eps, G, n = c["rms_norm_eps"], c["num_heads"] // c["num_kv_heads"], len(tokens)

    def rms(x, g):
        return (x / np.sqrt((x * x).mean(-1, keepdims=True) + np.float32(eps))).astype(np.float32) * g

    half = hd // 2
    theta = c["rope_theta"] ** (-2.0 * np.arange(half) / hd)
    ang = np.arange(n)[:, None] * theta[None, :]
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)

    def rope(x):  # x [n, heads, hd]
        x1, x2 = x[..., :half], x[..., half:]
        cc, ss = cos[:, None, :], sin[:, None, :]
        return np.concatenate([x1 * cc - x2 * ss, x2 * cc + x1 * ss], -1)

    E = w["model.embed_tokens.weight"]
    x = E[tokens]
    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
    for l in range(c["num_layers"]):
        p = f"model.layers.{l}."
        a = rms(x, w[p + "input_layernorm.weight"])
        q = rope((a @ w[p + "self_attn.q_proj.weight"].T).reshape(n, H, hd))
        k = rope((a @ w[p + "self_attn.k_proj.weight"].T).reshape(n, KV, hd))
        v = (a @ w[p + "self_attn.v_proj.weight"].T).reshape(n, KV, hd)
        o = np.zeros((n, H, hd), dtype=np.float32)
        for h in range(H):
            s = q[:, h] @ k[:, h // G].T * np.float32(c["attention_scale"]) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            o[:, h] = (s / s.sum(-1, keepdims=True)) @ v[:, h // G]
        x = x + o.reshape(n, H * hd) @ w[p + "self_attn.o_proj.weight"].T
        m = rms(x, w[p + "post_attention_layernorm.weight"])
        g = m @ w[p + "mlp.gate_proj.weight"].T
        u = m @ w[p + "mlp.up_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "mlp.down_proj.weight"].T
    return rms(x, w["model.norm.weight"]) @ E.T


def main():
    c = json.load(open(os.path.join(D, "config.json")))
    tj = json.load(open(os.path.join(D, "tokenizer.json")))
    ref = json.load(open(os.path.join(D, "reference.json")))
    ranks = {tuple(m): r for r, m in enumerate(tj["merges"])}
    ok = True
    for t in ref["tokenizer_tests"]:
        got = encode(t["text"], ranks)
        if got != t["ids"]:
            ok = False
            print("tokenizer mismatch:", repr(t["text"]), got, t["ids"])
    bos = tj["special_tokens"]["<|bos|>"]
    toks = ([bos] + encode(ref["text"], ranks))[:64]
    if toks != ref["tokens"]:
        ok = False
        print("reference tokens differ")
    for name in os.listdir(os.path.join(D, "heldout")):
        if name == "passkey.json":
            pj = json.load(open(os.path.join(D, "heldout", name)))
            for p in pj["prompts"]:
                if len(encode(p["prompt"], ranks)) + 1 != p["prompt_tokens"]:
                    ok = False
                    print("passkey prompt token count differs")
    w, hdr = load_weights(os.path.join(D, "model.safetensors"))
    order = sorted((h["data_offsets"][0], k) for k, h in hdr.items() if k != "__metadata__")
    if [k for _, k in order] != [t["name"] for t in c["tensors"]]:
        ok = False
        print("tensor order differs from config.json")
    logits = forward(np.array(ref["tokens"]), w, c)
    worst = 0.0
    for pos, row in ref["full_logits"].items():
        r = np.array(row, dtype=np.float64)
        worst = max(worst, float(np.abs(logits[int(pos)] - r).max() / np.abs(r).max()))
    for i, st in enumerate(ref["per_position"]):
        row = logits[i].astype(np.float64)
        lse = row.max() + np.log(np.exp(row - row.max()).sum())
        worst = max(worst, abs(lse - st["logsumexp"]) / abs(st["logsumexp"]))
        if int(row.argmax()) != st["argmax"]:
            ok = False
            print("argmax differs at", i)
    print(f"max relative error vs reference: {worst:.2e}")
    if worst > 1e-4:
        ok = False
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
