#!/usr/bin/python3
"""Trains lukv's tiny LM on CPU. See README.md for the exact command and settings.

Schedule (fixed, seeded; a batch is a function of (SEED, step) only, so a resumed
run sees the same data):
  steps [0, PHASE2_START):   8 sequences x 512 tokens
  steps [PHASE2_START, STEPS): 4 sequences x 1024 tokens  (context extension)
  each sequence: real text (70%), passkey retrieval (15%), repeated passage (15%)
  AdamW(b1=0.9, b2=0.95, wd=0.1 on matrices), lr: linear warmup WARMUP steps to
  LR, cosine to LR_MIN at the last step, gradient clipping at 1.0.
"""
import argparse
import json
import math
import os
import sys
import time

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
if os.path.exists(TCMALLOC) and TCMALLOC not in os.environ.get("LD_PRELOAD", ""):
    # glibc malloc returns big tensors to the OS and pays page faults on every
    # allocation (40x slower elementwise ops here); tcmalloc keeps them.
    os.environ["LD_PRELOAD"] = TCMALLOC
    os.execv(sys.executable, [sys.executable] + sys.argv)

import numpy as np
import torch
import torch.nn.functional as F

from bpe import Tokenizer
from model import Config, TinyLM
import tasks
import evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 1234
STEPS = 1000
PHASE2_START = 880
B1, T1 = 8, 512
B2, T2 = 4, 1024
LR = 2e-3
LR_MIN = 1e-4
WARMUP = 60
WD = 0.1
P_PASSKEY = 0.15
P_REPEAT = 0.15
LOG_EVERY = 10
MODEL = dict(vocab_size=4096, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2,
             head_dim=32, intermediate_size=512, rope_theta=10000.0, rms_norm_eps=1e-5,
             max_position=T2)


def lr_at(step):
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    t = (step - WARMUP) / max(1, STEPS - 1 - WARMUP)
    return LR_MIN + 0.5 * (LR - LR_MIN) * (1 + math.cos(math.pi * t))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(HERE, "data"))
    ap.add_argument("--ckpt", default=os.path.join(HERE, "checkpoints"))
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "..", "..", "models", "tiny-lm", "tokenizer.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=STEPS, help="stop early (schedule unchanged)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    os.makedirs(args.ckpt, exist_ok=True)
    tok = Tokenizer.load(args.tokenizer)
    train = tasks.load_split(tok, args.data, "train")
    val = tasks.load_split(tok, args.data, "val")
    print(f"train tokens {len(train)}, val tokens {len(val)}, LD_PRELOAD={os.environ.get('LD_PRELOAD')}", flush=True)

    cfg = Config(**MODEL)
    model = TinyLM(cfg)
    model.init_weights(SEED)
    nparam = sum(p.numel() for p in model.parameters())
    print(f"model {json.dumps(cfg.to_dict())} params {nparam}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.95), eps=1e-8)

    step0, elapsed0 = 0, 0.0
    last = os.path.join(args.ckpt, "last.pt")
    if os.path.exists(last):
        ck = torch.load(last)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step0, elapsed0 = ck["step"], ck["elapsed"]
        print(f"resumed at step {step0} ({elapsed0:.0f}s)", flush=True)

    t_start = time.time() - elapsed0
    t_log = time.time()
    toks_log = 0
    loss_acc = {"text": [], "passkey": [], "repeat": []}
    model.train()
    for step in range(step0, min(args.steps, STEPS)):
        B, T = (B1, T1) if step < PHASE2_START else (B2, T2)
        rng = np.random.default_rng([SEED, step])
        batch, kinds = tasks.make_batch(tok, train, rng, B, T + 1, P_PASSKEY, P_REPEAT)
        x = torch.from_numpy(batch)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(x[:, :-1])
        nll = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), x[:, 1:].reshape(-1), reduction="none").view(B, T)
        loss = nll.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            per = nll.mean(1)
            for k, l in zip(kinds, per.tolist()):
                loss_acc[k].append(l)
        toks_log += B * T
        if (step + 1) % LOG_EVERY == 0:
            now = time.time()
            msg = " ".join(f"{k}={np.mean(v):.3f}" for k, v in loss_acc.items() if v)
            print(f"step {step+1} T={T} lr={lr_at(step):.2e} loss={loss.item():.3f} [{msg}] gnorm={float(gn):.2f} "
                  f"tok/s={toks_log/(now-t_log):.0f} elapsed={now-t_start:.0f}s", flush=True)
            t_log, toks_log = now, 0
            loss_acc = {k: [] for k in loss_acc}
        if (step + 1) % 100 == 0 or step + 1 == STEPS:
            ppl, n = evaluate.perplexity(model, val, T1, tok.eos, tok.bos, max_windows=24)
            acc, tot = evaluate.passkey_accuracy(model, tok, val, [T], 8, seed=99)
            print(f"eval step {step+1}: val ppl (T={T1}, {n} tokens) {ppl:.2f}; passkey@{T} {tot:.2f}", flush=True)
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                        "elapsed": time.time() - t_start, "config": cfg.to_dict()}, last + ".tmp")
            os.replace(last + ".tmp", last)
    if step0 < STEPS and args.steps >= STEPS:
        elapsed = time.time() - t_start
        torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "steps": STEPS,
                    "train_seconds": elapsed}, os.path.join(args.ckpt, "final.pt"))
        print(f"training done: {STEPS} steps in {elapsed:.0f}s ({elapsed/60:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
