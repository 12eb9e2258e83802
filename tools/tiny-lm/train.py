#!/usr/bin/python3
"""Trains lukv's tiny LM on CPU. See README.md for the exact command and settings.

Schedule: warmup-stable-decay, seeded; a batch is a function of (SEED, step) only,
so a resumed run sees the same data.
  stable phase, steps [0, decay_start):  8 sequences x 512 tokens,
      lr: linear warmup over WARMUP steps to LR, then constant
  decay phase, steps [decay_start, decay_start + decay_steps): 4 sequences x 1024
      tokens (context extension), lr linear from LR down to LR_MIN
  each sequence: real text, passkey retrieval, repeated passage, repeated shuffled
  tokens, with the mixture of mix_at(step): 70/15/15/0 % before step 700,
  50/15/20/15 % for steps 700..1199, 40/20/20/20 % from step 1200 on (copying had
  not emerged by step 600 with the first mix, and only barely by step 1200)
  optional copy phase (--copy-steps N, default 0 = not used for the shipped model):
      N more steps after the decay: 4 x 1024, mix 30% text, 25% passkey, 20% repeat,
      25% shuffled repeat; lr warmup over COPY_WARMUP steps to COPY_LR, then linear
      down to LR_MIN. Tried with N = 200: see README "Notes".
  AdamW(b1=0.9, b2=0.95, wd=0.1 on matrices), gradient clipping at 1.0.

The machine is shared, so the length of the run is set by wall-clock time unless
given: when --budget-minutes * DECAY_AT has elapsed, the decay phase starts and gets
as many steps as the measured step time leaves until the budget ends. Both numbers
are printed and stored; `--decay-start S --decay-steps D` replays a run exactly
(same data, same schedule).
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
BUDGET_MINUTES = 55
DECAY_AT = 0.78
PHASE2_SLOWDOWN = 1.3  # step time at 4x1024 relative to 8x512 (attention is quadratic)
B1, T1 = 8, 512
B2, T2 = 4, 1024
LR = 2e-3
LR_MIN = 1e-4
WARMUP = 60
WD = 0.1
CURRICULUM_STEPS = (700, 1200)


COPY_STEPS = 0
COPY_WARMUP = 20
COPY_LR = 1e-3


def mix_at(step, copy_phase=False):
    """(p_passkey, p_repeat, p_shuffled); the rest is real text."""
    if copy_phase:
        return (0.25, 0.20, 0.25)
    if step < CURRICULUM_STEPS[0]:
        return (0.15, 0.15, 0.0)
    if step < CURRICULUM_STEPS[1]:
        return (0.15, 0.20, 0.15)
    return (0.20, 0.20, 0.20)

LOG_EVERY = 10
MODEL = dict(vocab_size=4096, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2,
             head_dim=32, intermediate_size=512, rope_theta=10000.0, rms_norm_eps=1e-5,
             max_position=T2)


def lr_at(step, decay_start, decay_steps):
    if decay_start is not None and step >= decay_start + decay_steps:
        k = step - decay_start - decay_steps
        if k < COPY_WARMUP:
            return COPY_LR * (k + 1) / COPY_WARMUP
        return COPY_LR + (LR_MIN - COPY_LR) * (k - COPY_WARMUP + 1) / (COPY_STEPS - COPY_WARMUP)
    if decay_start is not None and step >= decay_start:
        t = (step - decay_start + 1) / decay_steps
        return LR + (LR_MIN - LR) * min(1.0, t)
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    return LR


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(HERE, "data"))
    ap.add_argument("--ckpt", default=os.path.join(HERE, "checkpoints"))
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "..", "..", "models", "tiny-lm", "tokenizer.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget-minutes", type=float, default=BUDGET_MINUTES)
    ap.add_argument("--decay-start", type=int, default=None)
    ap.add_argument("--decay-steps", type=int, default=None)
    ap.add_argument("--copy-steps", type=int, default=0)
    args = ap.parse_args()
    global COPY_STEPS
    COPY_STEPS = args.copy_steps

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
    decay_start, decay_steps = args.decay_start, args.decay_steps
    assert (decay_start is None) == (decay_steps is None), "give both --decay-start and --decay-steps"
    last = os.path.join(args.ckpt, "last.pt")
    if os.path.exists(last):
        ck = torch.load(last)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step0, elapsed0 = ck["step"], ck["elapsed"]
        if ck.get("decay_start") is not None:
            decay_start, decay_steps = ck["decay_start"], ck["decay_steps"]
        print(f"resumed at step {step0} ({elapsed0:.0f}s)", flush=True)

    t_start = time.time() - elapsed0
    t_log = time.time()
    toks_log = 0
    loss_acc = {"text": [], "passkey": [], "repeat": [], "shuffled": []}
    model.train()
    step = step0
    step_times = []
    while decay_start is None or step < decay_start + decay_steps + COPY_STEPS:
        if decay_start is None and step_times and time.time() - t_start >= DECAY_AT * args.budget_minutes * 60:
            per_step = float(np.median(step_times[-30:])) * PHASE2_SLOWDOWN
            left = args.budget_minutes * 60 - (time.time() - t_start)
            decay_start, decay_steps = step, max(40, int(left / per_step))
            print(f"decay phase: decay_start={decay_start} decay_steps={decay_steps} "
                  f"(median step {per_step/PHASE2_SLOWDOWN:.2f}s at T={T1})", flush=True)
        phase2 = decay_start is not None and step >= decay_start
        copy_phase = decay_start is not None and step >= decay_start + decay_steps
        B, T = (B2, T2) if phase2 else (B1, T1)
        t_step = time.time()
        rng = np.random.default_rng([SEED, step])
        batch, kinds = tasks.make_batch(tok, train, rng, B, T + 1, *mix_at(step, copy_phase))
        x = torch.from_numpy(batch)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, decay_start, decay_steps)
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
        if not phase2:
            step_times.append(time.time() - t_step)
        if (step + 1) % LOG_EVERY == 0:
            now = time.time()
            msg = " ".join(f"{k}={np.mean(v):.3f}" for k, v in loss_acc.items() if v)
            print(f"step {step+1} T={T} lr={lr_at(step, decay_start, decay_steps):.2e} loss={loss.item():.3f} [{msg}] gnorm={float(gn):.2f} "
                  f"tok/s={toks_log/(now-t_log):.0f} elapsed={now-t_start:.0f}s", flush=True)
            t_log, toks_log = now, 0
            loss_acc = {k: [] for k in loss_acc}
        last_step = decay_start is not None and step + 1 in (decay_start + decay_steps,
                                                             decay_start + decay_steps + COPY_STEPS)
        if (step + 1) % 100 == 0 or last_step:
            ppl, n = evaluate.perplexity(model, val, T1, tok.eos, tok.bos, max_windows=24)
            acc, tot = evaluate.passkey_accuracy(model, tok, val, [T], 8, seed=99)
            c1, c2, cacc = evaluate.copy_stats(model, tok, val, T1, 4, seed=98)
            print(f"eval step {step+1}: val ppl (T={T1}, {n} tokens) {ppl:.2f}; passkey@{T} {tot:.2f}; "
                  f"repeat nll 1st/2nd copy {c1:.2f}/{c2:.2f}, copy acc {cacc:.2f}", flush=True)
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                        "elapsed": time.time() - t_start, "config": cfg.to_dict(),
                        "decay_start": decay_start, "decay_steps": decay_steps}, last + ".tmp")
            os.replace(last + ".tmp", last)
        step += 1
    elapsed = time.time() - t_start
    tokens = decay_start * B1 * T1 + (decay_steps + COPY_STEPS) * B2 * T2
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "steps": step,
                "decay_start": decay_start, "decay_steps": decay_steps, "tokens": tokens,
                "train_seconds": elapsed}, os.path.join(args.ckpt, "final.pt"))
    print(f"training done: {step} steps ({tokens} tokens) in {elapsed:.0f}s ({elapsed/60:.1f} min); "
          f"replay with --decay-start {decay_start} --decay-steps {decay_steps}", flush=True)


if __name__ == "__main__":
    main()
