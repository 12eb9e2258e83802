#!/usr/bin/python3
"""Exports the trained tiny LM into models/tiny-lm/ (see README.md "Files"):

  model.safetensors   f16 weights (written by hand: 8-byte LE header length, JSON header, data)
  config.json         hyperparameters, tensor layouts, training facts, evaluation results
  reference.json      reference logits of the exported model (f16 weights, f32 compute)
  heldout/*.txt       held-out English texts (never trained on), heldout/passkey.json
  calibration/*.txt   texts for profiling (calib split, never trained on, not held-out)

Every number in config.json "evaluation" is measured here on the f16-rounded weights.
Usage: /usr/bin/python3 tools/tiny-lm/export.py [--ckpt tools/tiny-lm/checkpoints/final.pt]
"""
import argparse
import json
import math
import os
import struct
import sys
import time

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
if os.path.exists(TCMALLOC) and TCMALLOC not in os.environ.get("LD_PRELOAD", ""):
    os.environ["LD_PRELOAD"] = TCMALLOC
    os.execv(sys.executable, [sys.executable] + sys.argv)

import numpy as np
import torch
import torch.nn.functional as F

from bpe import Tokenizer
from model import Config, TinyLM, rope_tables, apply_rope
import tasks
import evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "models", "tiny-lm")
EXPORT_SEED = 4321

REFERENCE_TEXT = (
    "The Debian project was founded in 1993 by Ian Murdock. Its package manager, APT, "
    "installs software together with everything it depends on, and a key is what makes "
    "the signature trustworthy. To list the files of a package, run dpkg -L followed by "
    "the name of the package."
)
TOKENIZER_TESTS = [
    "Hello, world!",
    "The pass key is 48213. Remember it.",
    "  two spaces,\tthen a tab\nand a newline\n\n    indented code: x = f(y) + 1",
    "naïve café — “quoted” … 日本語 text",
    "trailing spaces   ",
    "\n\n\n",
    "version 3.11.2 (2023-02-08) costs $4,000,000",
    "def __init__(self, **kwargs):\n        return {'a': [1, 2]}",
]


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, np.ndarray float16). Data in the given order, no gaps."""
    header = {"__metadata__": metadata}
    off = 0
    blobs = []
    for name, arr in tensors:
        assert arr.dtype == np.float16 and arr.flags["C_CONTIGUOUS"]
        b = arr.astype("<f2").tobytes()
        header[name] = {"dtype": "F16", "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)  # pad the header with spaces to a multiple of 8
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        a, b = h["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f2").reshape(h["shape"])
    return out, header.get("__metadata__", {})


def load_exported(out_dir=OUT):
    """The shipped model: f16 weights from model.safetensors, computed in f32."""
    with open(os.path.join(out_dir, "config.json")) as f:
        cfgj = json.load(f)
    cfg = Config(**{k: cfgj[k] for k in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                                         "num_kv_heads", "head_dim", "intermediate_size",
                                         "rope_theta", "rms_norm_eps", "max_position")})
    model = TinyLM(cfg)
    w, _ = read_safetensors(os.path.join(out_dir, "model.safetensors"))
    sd = {k[len("model."):]: torch.from_numpy(v.astype(np.float32)) for k, v in w.items()}
    model.load_state_dict(sd)
    model.eval()
    return model, cfgj


def f32list(a):
    return [float(np.float32(x)) for x in np.asarray(a, dtype=np.float32).ravel()]


def tensor_layouts(cfg):
    H, KV, hd, d, m, V = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size,
                          cfg.intermediate_size, cfg.vocab_size)
    lay = [{"name": "model.embed_tokens.weight", "shape": [V, d],
            "layout": "[vocab, hidden]: row t is the embedding of token t; also the output (LM head) matrix (tied): logits = h_final @ E^T"}]
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        lay += [
            {"name": p + "input_layernorm.weight", "shape": [d], "layout": "[hidden]: RMSNorm gain before attention"},
            {"name": p + "self_attn.q_proj.weight", "shape": [H * hd, d],
             "layout": "[out=num_heads*head_dim, in=hidden]: q = x @ W^T; output index = head*head_dim + i"},
            {"name": p + "self_attn.k_proj.weight", "shape": [KV * hd, d],
             "layout": "[out=num_kv_heads*head_dim, in=hidden]: k = x @ W^T; output index = kv_head*head_dim + i"},
            {"name": p + "self_attn.v_proj.weight", "shape": [KV * hd, d],
             "layout": "[out=num_kv_heads*head_dim, in=hidden]: v = x @ W^T"},
            {"name": p + "self_attn.o_proj.weight", "shape": [d, H * hd],
             "layout": "[out=hidden, in=num_heads*head_dim]: y = concat(heads) @ W^T (lukv's W_O = this matrix transposed, [num_heads*head_dim, hidden])"},
            {"name": p + "post_attention_layernorm.weight", "shape": [d], "layout": "[hidden]: RMSNorm gain before the MLP"},
            {"name": p + "mlp.gate_proj.weight", "shape": [m, d], "layout": "[out=intermediate, in=hidden]"},
            {"name": p + "mlp.up_proj.weight", "shape": [m, d], "layout": "[out=intermediate, in=hidden]"},
            {"name": p + "mlp.down_proj.weight", "shape": [d, m], "layout": "[out=hidden, in=intermediate]"},
        ]
    lay.append({"name": "model.norm.weight", "shape": [d], "layout": "[hidden]: final RMSNorm gain"})
    return lay


@torch.no_grad()
def reference(model, tok, cfg):
    ids = [tok.bos] + tok.encode(REFERENCE_TEXT)
    assert len(ids) >= 64, len(ids)
    ids = ids[:64]
    x = torch.tensor([ids])
    logits, aux = model(x, want_attn=True)
    logits = logits[0].numpy().astype(np.float32)
    per_pos = []
    for i in range(len(ids)):
        row = logits[i].astype(np.float64)
        top = np.argsort(-row, kind="stable")[:5]
        lse = float(row.max() + np.log(np.exp(row - row.max()).sum()))
        per_pos.append({"argmax": int(top[0]), "max": float(row.max()), "logsumexp": lse,
                        "sum": float(row.sum()), "sumsq": float((row * row).sum()),
                        "top5": [[int(t), float(np.float32(row[t]))] for t in top]})
    full_positions = [0, 31, 62, 63]
    last = len(ids) - 1
    hid = [f32list(h[0, last].numpy()) for h in aux["hidden"]]
    q0, k0, v0 = aux["qkv"][0]
    greedy_prompt = ids[:24]
    g = list(greedy_prompt)
    margins = []
    for _ in range(16):
        lo = model(torch.tensor([g]))[0, -1].numpy()
        o = np.argsort(-lo)
        margins.append(float(lo[o[0]] - lo[o[1]]))
        g.append(int(o[0]))
    return {
        "description": "Exported model (f16 weights converted to f32, all arithmetic in f32, PyTorch 1.13 CPU). "
                       "tokens = [BOS] + encode(text), first 64. logits[i] predict token i+1. "
                       "A correct forward pass matches 'full_logits' and the per-position statistics "
                       "with relative error well under 1e-3.",
        "text": REFERENCE_TEXT,
        "tokens": ids,
        "vocab_size": cfg.vocab_size,
        "per_position": per_pos,
        "full_logits": {str(p): f32list(logits[p]) for p in full_positions},
        "checksum": {"sum_all_logits": float(logits.astype(np.float64).sum()),
                     "sum_abs_all_logits": float(np.abs(logits.astype(np.float64)).sum())},
        "intermediates_at_last_position": {
            "description": "position 63: hidden[0] = embedding, hidden[l+1] = residual stream after layer l; "
                           "layer0_q_head0 / layer0_k_kvhead0 are after RoPE (scale 1/sqrt(head_dim) not applied); "
                           "layer0_v_kvhead0 is v.",
            "hidden": hid,
            "layer0_q_head0": f32list(q0[0, 0, last].numpy()),
            "layer0_k_kvhead0": f32list(k0[0, 0, last].numpy()),
            "layer0_v_kvhead0": f32list(v0[0, 0, last].numpy()),
            "layer0_attn_head0_row": f32list(aux["attn"][0][0, 0, last].numpy()),
        },
        "greedy": {"prompt_tokens": greedy_prompt, "generated_tokens": g[len(greedy_prompt):],
                   "top2_margins": margins, "text": tok.decode(g[len(greedy_prompt):])},
        "tokenizer_tests": [{"text": t, "ids": tok.encode(t)} for t in TOKENIZER_TESTS],
    }


def pick_texts(path, tok, n_by_source, lo, hi, prefix):
    chunks = [json.loads(l) for l in open(path, encoding="utf-8")]
    picked = []
    for src, n in n_by_source:
        c = [ch for ch in chunks if ch["source"] == src]
        trimmed = []
        for ch in c:
            paras = ch["text"].split("\n\n")
            while len(paras) > 1 and len(tok.encode("\n\n".join(paras))) > hi:
                paras.pop()  # drop whole paragraphs (fortunes) from the end
            ch = dict(ch, text="\n\n".join(paras))
            trimmed.append((ch, len(tok.encode(ch["text"]))))
        c = [x for x in trimmed if lo <= x[1] <= hi]
        for ch, nt in c[:n]:
            picked.append((f"{prefix}{src}-{len([p for p in picked if p[2] == src]) + 1}", ch, src, nt))
    return [(name, ch, nt) for name, ch, src, nt in picked]


def passkey_prompts(tok, heldout_texts, rng):
    """Text prompts: filler from held-out texts, the needle, more filler, the question."""
    paras = []
    for t in heldout_texts:
        paras += [p for p in t.split("\n\n") if len(p) > 40]
    prompts = []
    specs = [(L, d) for L in (256, 512, 1000) for d in (0.1, 0.5, 0.9)] + [(2000, d) for d in (0.1, 0.5, 0.9)]
    for L, depth in specs:
        key = tasks.passkey_key(rng)
        needle = tasks.NEEDLE.format(k=key)
        q = tasks.QUESTION
        start = int(rng.integers(0, len(paras)))
        fill = []
        base = 1 + len(tok.encode(needle)) + len(tok.encode(q))
        used = base
        for i in range(start, start + 400):  # whole paragraphs, in order, skipping any that do not fit
            p = paras[i % len(paras)]
            n = len(tok.encode(p)) + 1
            if used + n <= L:
                fill.append(p)
                used += n
            if used > L - 24:
                break
        cut = int(round(depth * len(fill)))
        before, after = "\n\n".join(fill[:cut]), "\n\n".join(fill[cut:])
        text = before + needle + after + q
        ids = [tok.bos] + tok.encode(text)
        prompts.append({"target_tokens": L, "depth": depth, "prompt": text, "answer": key,
                        "prompt_tokens": len(ids), "answer_tokens": tok.encode(key),
                        "beyond_trained_context": len(ids) + len(key) > 1024})
    return prompts


@torch.no_grad()
def check_passkey_prompt(model, tok, p):
    ids = [tok.bos] + tok.encode(p["prompt"]) + p["answer_tokens"]
    logits = model(torch.tensor([ids]))[0]
    n = len(p["answer_tokens"])
    pred = logits[-n - 1:-1].argmax(-1).tolist()
    return pred == p["answer_tokens"], tok.decode(pred)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=os.path.join(HERE, "checkpoints", "final.pt"))
    ap.add_argument("--data", default=os.path.join(HERE, "data"))
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--skip-eval", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    tok = Tokenizer.load(os.path.join(args.out, "tokenizer.json"))
    ck = torch.load(args.ckpt)
    cfg = Config(**ck["config"])
    model = TinyLM(cfg)
    model.load_state_dict(ck["model"])

    # 1. weights -> f16, in the order of tensor_layouts
    layouts = tensor_layouts(cfg)
    sd = {"model." + k: v for k, v in model.state_dict().items()}  # HF Llama-style names
    assert set(sd) == {l["name"] for l in layouts}, set(sd) ^ {l["name"] for l in layouts}
    tensors = []
    for l in layouts:
        a = sd[l["name"]].numpy()
        assert list(a.shape) == l["shape"] and np.abs(a).max() < 60000
        tensors.append((l["name"], np.ascontiguousarray(a.astype(np.float16))))
    write_safetensors(os.path.join(args.out, "model.safetensors"), tensors,
                      {"format": "pt", "model": "lukv-tiny-lm", "dtype": "float16"})

    train_facts = {k: ck[k] for k in ("steps", "tokens", "train_seconds", "decay_start", "decay_steps") if k in ck}
    cfgj = {
        "model_type": "lukv-tiny-lm",
        "architecture": "decoder-only transformer, pre-norm, RMSNorm, RoPE (rotate-half), GQA, SwiGLU MLP, tied embeddings, no biases",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_layers,
        "num_heads": cfg.num_heads,
        "num_kv_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "gqa_group_size": cfg.num_heads // cfg.num_kv_heads,
        "gqa_mapping": "query head q uses KV head floor(q / gqa_group_size)",
        "intermediate_size": cfg.intermediate_size,
        "mlp": "SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x)), silu(z) = z * sigmoid(z)",
        "rope_theta": cfg.rope_theta,
        "rope": "rotate-half (Llama / GPT-NeoX) over the full head_dim: for j < head_dim/2, "
                "inv_freq[j] = rope_theta^(-2j/head_dim), angle = position * inv_freq[j]; "
                "out[j] = x[j]*cos - x[j+head_dim/2]*sin, out[j+head_dim/2] = x[j+head_dim/2]*cos + x[j]*sin; "
                "positions start at 0 (the BOS token); applied to q and k, not v",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rms_norm": "y = x / sqrt(mean(x^2) + eps) * weight",
        "attention_scale": 1.0 / math.sqrt(cfg.head_dim),
        "max_position": cfg.max_position,
        "context_length": cfg.max_position,
        "tie_word_embeddings": True,
        "bos_token_id": tok.bos,
        "eos_token_id": tok.eos,
        "dtype": "float16",
        "weights_file": "model.safetensors",
        "tensors": layouts,
        "forward": [
            "x = E[tokens]  (E = model.embed_tokens.weight)",
            "for each layer: h = x + Attn(RMSNorm(x; input_layernorm)); x = h + MLP(RMSNorm(h; post_attention_layernorm))",
            "Attn: q = x Wq^T, k = x Wk^T, v = x Wv^T; RoPE on q, k; per query head q: softmax(q k^T * attention_scale, causal) v of KV head floor(q/group); out = concat(heads) Wo^T",
            "logits = RMSNorm(x; model.norm) E^T",
        ],
        "training": dict(train_facts, **{"context": "8 x 512 tokens per step before decay_start, 4 x 1024 from it on",
                                         "details": "tools/tiny-lm/README.md, tools/tiny-lm/train.log"}),
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfgj, f, indent=1)
        f.write("\n")

    # 2. the shipped model (f16 rounded, f32 compute)
    model, _ = load_exported(args.out)
    ref = reference(model, tok, cfg)
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")
    print(f"reference: greedy continuation {ref['greedy']['text']!r}", flush=True)

    # 3. held-out texts, passkey prompts, calibration texts
    rng = np.random.default_rng(EXPORT_SEED)
    hdir = os.path.join(args.out, "heldout")
    cdir = os.path.join(args.out, "calibration")
    for d in (hdir, cdir):
        os.makedirs(d, exist_ok=True)
        for fn in os.listdir(d):
            os.remove(os.path.join(d, fn))
    held = pick_texts(os.path.join(args.data, "heldout.jsonl"), tok,
                      [("handbook", 2), ("pydoc", 2), ("fortunes", 2)], 2000, 4000, "")
    index = []
    for name, ch, nt in held:
        with open(os.path.join(hdir, name + ".txt"), "w", encoding="utf-8") as f:
            f.write(ch["text"] + "\n")
        index.append({"file": name + ".txt", "source_id": ch["id"], "tokens": nt + 1})
    all_held = [json.loads(l)["text"] for l in open(os.path.join(args.data, "heldout.jsonl"), encoding="utf-8")]
    prompts = passkey_prompts(tok, all_held, rng)
    for p in prompts:
        ok, pred = check_passkey_prompt(model, tok, p)
        p["model_answer"] = pred
        p["model_correct"] = ok
    with open(os.path.join(hdir, "passkey.json"), "w", encoding="utf-8") as f:
        json.dump({"description": "Passkey retrieval prompts built from held-out text. Tokenize as [BOS] + encode(prompt); "
                                  "the expected continuation is encode(answer) (one token per digit). "
                                  "model_answer / model_correct: greedy answer of the shipped model. "
                                  "Prompts with beyond_trained_context exceed the 1024-token training context.",
                   "texts": index, "prompts": prompts}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    calib = pick_texts(os.path.join(args.data, "calib.jsonl"), tok,
                       [("handbook", 1), ("pydoc", 2), ("fortunes", 1)], 1500, 4000, "")
    for name, ch, nt in calib:
        with open(os.path.join(cdir, name + ".txt"), "w", encoding="utf-8") as f:
            f.write(ch["text"] + "\n")
    print(f"held-out {[h[0] for h in held]}, calibration {[c[0] for c in calib]}", flush=True)

    # 4. evaluation of the shipped model
    if not args.skip_eval:
        val = tasks.load_split(tok, args.data, "val")
        held_stream = tasks.load_split(tok, args.data, "heldout")
        ev = {}
        for T in (512, 1024, 2048):
            ppl, n = evaluate.perplexity(model, val, T, tok.eos, tok.bos)
            ev[f"val_ppl_ctx{T}"] = round(ppl, 3)
            ev[f"val_tokens_ctx{T}"] = n
            print(f"val ppl ctx {T}: {ppl:.3f} over {n} tokens ({time.time()-t0:.0f}s)", flush=True)
        lengths = [256, 512, 768, 1024, 2048]
        acc, tot = evaluate.passkey_accuracy(model, tok, held_stream, lengths, 25, seed=EXPORT_SEED)
        ev["passkey_accuracy_by_length"] = {str(k): v for k, v in acc.items()}
        acc_in = float(np.mean([acc[L] for L in lengths if L <= cfg.max_position]))
        ev["passkey_accuracy_within_context"] = acc_in
        ev["passkey_prompts_correct"] = f"{sum(p['model_correct'] for p in prompts)}/{len(prompts)}"
        ev["passkey_method"] = ("25 sequences per length from the held-out split, depths (j+0.5)/25, 5-digit key, "
                                "exact match of greedy decoding")
        ev["val_ppl_method"] = ("validation split (real text only), non-overlapping windows [BOS] + (ctx-1) tokens, "
                                "all tokens except EOS separators are targets")
        print(json.dumps(ev), flush=True)
        cfgj["evaluation"] = ev
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump(cfgj, f, indent=1)
            f.write("\n")
    print(f"export done in {time.time()-t0:.0f}s")


if __name__ == "__main__":
    main()
