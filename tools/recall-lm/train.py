#!/usr/bin/python3
"""Trains recall-lm on CPU on the retrieval tasks of tasks.py. See README.md.

Curriculum (context T, batch B): T=128 B=16, T=256 B=8, T=512 B=4 (2K tokens per step
throughout). The batch of step s is a function of (SEED, s) only, so a
resumed or replayed run sees the same data.
Loss: mean cross-entropy on the answer tokens plus LM_WEIGHT x the mean cross-entropy of a random
LM_SAMPLE of the other real tokens (filler, needles, questions): next-token prediction on the
structured filler is what forms the previous-token heads that retrieval builds on.
Learning rate: linear warmup over WARMUP steps to LR, constant, then linear to LR_MIN over the
decay steps at the end.

The machine is shared, so phase lengths are set by wall-clock time unless given: phase 1 starts
at PHASE_AT[0] x budget, phase 2 at PHASE_AT[1] x budget, the decay at DECAY_AT x budget and
gets the steps the measured step time leaves. The step numbers are printed (and stored in the
checkpoints); `--phase-steps A,B --decay-start S --decay-steps D` replays a run exactly.
Every EVAL_MINUTES a checkpoint is written (checkpoints/step-N.pt) with a greedy exact-match
check on EVAL_N held-out instances per task at T=512 (seed 99).
"""
import argparse
import json
import os
import sys
import time

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
if os.path.exists(TCMALLOC) and TCMALLOC not in os.environ.get("LD_PRELOAD", ""):
    os.environ["LD_PRELOAD"] = TCMALLOC
    os.execv(sys.executable, [sys.executable] + sys.argv)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tiny-lm"))
sys.path.insert(0, HERE)

import numpy as np
import torch
import torch.nn.functional as F

from model import Config, TinyLM  # tools/tiny-lm/model.py: the same architecture
import tasks

SEED = 2718
EVAL_SEED = 99
PHASES = ((128, 16), (256, 8), (512, 4))
PHASE_AT = (0.30, 0.60)
DECAY_AT = 0.88
LR = 2e-3
LR_MIN = 1e-4
WARMUP = 30
WD = 0.05
COPY_SHARE = 0.3
LM_WEIGHT = 0.5
LM_SAMPLE = 0.5
EVAL_MINUTES = 8
EVAL_N = {512: 12}
EVAL_T = 512
MODEL = dict(hidden_size=128, num_layers=4, num_heads=8, num_kv_heads=4, head_dim=16,
             intermediate_size=256, rope_theta=10000.0, rms_norm_eps=1e-5, max_position=512)


def lr_at(step, decay_start, decay_steps):
    if decay_start is not None and step >= decay_start:
        t = (step - decay_start + 1) / decay_steps
        return LR + (LR_MIN - LR) * min(1.0, t)
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    return LR


def phase_of(step, phase_steps):
    p = 0
    for s in phase_steps:
        if s is not None and step >= s:
            p += 1
    return p


def hidden_states(model, ids):
    """Final-norm hidden states [B, T, d] of TinyLM (its forward without the LM head)."""
    from model import rope_tables
    T = ids.shape[1]
    cos, sin = rope_tables(model.c.head_dim, torch.arange(T), model.c.rope_theta)
    mask = model._mask(T)
    x = model.embed_tokens(ids)
    for layer in model.layers:
        x = layer(x, cos, sin, mask)
    return model.norm(x)


def batch_loss(model, X, M, pad, rng, bf16=False):
    """Mean cross-entropy of the answer tokens plus LM_WEIGHT x that of LM_SAMPLE of the other
    real tokens (next-token prediction on filler, needles and questions); the LM head is applied
    to those positions only. bf16: the forward pass under CPU autocast (matrix products in
    bfloat16, weights, softmax and the loss in float32)."""
    x = torch.from_numpy(X)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        h = hidden_states(model, x[:, :-1])
        tgt = X[:, 1:]
        ans = M[:, 1:] > 0
        other = (~ans) & (tgt != pad) & (rng.random(tgt.shape) < LM_SAMPLE)
        sel = torch.from_numpy(np.nonzero((ans | other).reshape(-1))[0])
        hs = h.reshape(-1, h.shape[-1])[sel]
        logits = hs @ model.embed_tokens.weight.t()
    nll = F.cross_entropy(logits.float(), torch.from_numpy(tgt.reshape(-1))[sel], reduction="none")
    a = torch.from_numpy(M[:, 1:].reshape(-1)[sel.numpy()]).float()  # answer weights (1, or decision_weight), 0 elsewhere
    ans_loss = (nll * a).sum() / a.sum().clamp(min=1)
    o = 1 - torch.from_numpy(ans.reshape(-1)[sel.numpy()]).float()
    lm_loss = (nll * o).sum() / o.sum().clamp(min=1)
    return ans_loss + LM_WEIGHT * lm_loss, ans_loss


def eval_instances(v, seed, n, T, vt_style="direct"):
    """n instances per task at length T (the first question only; mq-niah's second sentence
    given, as in the evaluation), as {task: [(ids, mask)]}."""
    out = {}
    for ti, task in enumerate(tasks.TASKS):
        rng = np.random.default_rng([seed, ti])
        out[task] = [tasks.sequence(v, tasks.instance(v, task, rng, T, **tasks.EVAL_SETTINGS[task], vt_style=vt_style, mq_style="given"))
                     for _ in range(n)]
    return out


@torch.no_grad()
def exact_match(model, items, pad, bs=8):
    """Fraction of instances whose answer tokens are all the argmax (= greedy decoding)."""
    model.eval()
    ok = 0
    for i in range(0, len(items), bs):
        chunk = items[i:i + bs]
        L = max(len(ids) for ids, _ in chunk)
        X = np.full((len(chunk), L), pad, dtype=np.int64)
        M = np.zeros((len(chunk), L), dtype=bool)
        for b, (ids, mask) in enumerate(chunk):
            X[b, :len(ids)] = ids
            M[b, :len(mask)] = np.array(mask, dtype=bool)
        logits = model(torch.from_numpy(X[:, :-1]))
        pred = logits.argmax(-1).numpy()
        for b in range(len(chunk)):
            sel = M[b, 1:]
            ok += int(np.all(pred[b][sel] == X[b, 1:][sel]))
    model.train()
    return ok / len(items)


@torch.no_grad()
def kv_accuracy(model, v, T, n=8):
    """Token accuracy of the answers of n kv_sequence instances of length T (seed EVAL_SEED)."""
    rng = np.random.default_rng([EVAL_SEED, 100])
    model.eval()
    ok = tot = 0
    for _ in range(n):
        ids, mask = tasks.kv_sequence(v, rng, T)
        pred = model(torch.tensor([ids[:-1]])).argmax(-1)[0].numpy()
        sel = np.array(mask[1:], dtype=bool)
        ok += int((pred[sel] == np.array(ids[1:])[sel]).sum())
        tot += int(sel.sum())
    model.train()
    return ok / max(1, tot)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=os.path.join(HERE, "checkpoints"))
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "..", "..", "models", "recall-lm", "tokenizer.json"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true",
                    help="matrix products in bfloat16 (CPU autocast; AMX/AVX-512 BF16 where the CPU has them)")
    ap.add_argument("--budget-minutes", type=float, default=75)
    ap.add_argument("--phase-steps", default=None, help="A,B: first steps of phases 1 and 2 (replay)")
    ap.add_argument("--decay-start", type=int, default=None)
    ap.add_argument("--decay-steps", type=int, default=None)
    ap.add_argument("--fixed-phase", type=int, default=None, help="train every step at PHASES[i] (a continuation)")
    ap.add_argument("--copy-share", type=float, default=None, help="share of copy sequences (default COPY_SHARE)")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this step (writes final.pt)")
    ap.add_argument("--copy-start", type=int, default=None, help="first step whose batches mix in copy sequences")
    ap.add_argument("--eval-minutes", type=float, default=EVAL_MINUTES)
    ap.add_argument("--plan", default=None,
                    help="stages START:T:B:KV:COPY[:KVNUM],... (first step, context, batch, shares of kv_sequence and "
                         "copy sequences, share of the kv sequences with multi-digit values, task weights W1/W2/W3/W4 of niah, "
                         "mk-niah, mq-niah, vt replacing --task-weights[, LR: the stage's learning rate until the decay, "
                         "in place of --lr]); T and B may be lists "
                         "T1/T2/..:B1/B2/.. that the steps of the stage cycle through (step s uses entry s mod n); "
                         "replaces the time-based phases")
    ap.add_argument("--task-weights", default=None, help="W1,W2,W3,W4: weights of niah, mk-niah, mq-niah, vt in the "
                    "task share (default uniform, the draw of the earlier runs)")
    ap.add_argument("--decay-at-minutes", type=float, default=None,
                    help="with --plan: start the decay when the run's wall clock (resumes included) reaches this, "
                         "with the steps the mean step time leaves until --stop-minutes")
    ap.add_argument("--stop-minutes", type=float, default=None, help="stop (writing final.pt) at this wall clock")
    ap.add_argument("--eval-lengths", default=None, help="T1,T2,...: lengths of the training-time checks (12 per task)")
    ap.add_argument("--decision-weight", type=float, default=1.0,
                    help="loss weight of the answer tokens that decide an answer (first digit of a value, mq-niah's "
                         "second key); the other answer tokens weigh 1 (tasks.sequence)")
    ap.add_argument("--vt-style", default="direct", choices=("direct", "var", "chained"),
                    help="tasks.instance's vt_style of the training instances (direct: the r3 checkpoint's; the shipped model: chained)")
    ap.add_argument("--vt-chained-from", type=int, default=None,
                    help="from this step on, vt instances use vt_style \"chained\" (before it --vt-style)")
    ap.add_argument("--mq-style", default="answer", choices=("answer", "given"),
                    help="tasks.instance's mq_style of the training instances (answer: the r3 checkpoint's; the shipped model: given)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default LR)")
    ap.add_argument("--model", default=None, help="JSON object of MODEL entries to override, e.g. '{\"num_layers\": 2}'")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    global LR, EVAL_N
    if args.lr is not None:
        LR = args.lr
    if args.eval_lengths:
        EVAL_N = {int(t): 12 for t in args.eval_lengths.split(",")}
    plan = None
    if args.plan:
        plan = []
        for st in args.plan.split(","):
            f = st.split(":")
            Ts, Bs = [int(x) for x in f[1].split("/")], [int(x) for x in f[2].split("/")]
            assert len(Ts) == len(Bs), st
            plan.append((int(f[0]), Ts, Bs, float(f[3]), float(f[4]), float(f[5]) if len(f) > 5 else 0.0,
                         [float(x) for x in f[6].split("/")] if len(f) > 6 else None,
                         float(f[7]) if len(f) > 7 else None))
        plan.sort()
    task_weights = [float(x) for x in args.task_weights.split(",")] if args.task_weights else None
    torch.manual_seed(SEED)
    os.makedirs(args.ckpt, exist_ok=True)
    tj = json.load(open(args.tokenizer))
    v = tasks.Vocab(tj)
    cfg = Config(vocab_size=v.size, **{**MODEL, **json.loads(args.model or "{}")})
    model = TinyLM(cfg)
    model.init_weights(SEED)
    nparam = sum(p.numel() for p in model.parameters())
    print(f"model {json.dumps(cfg.to_dict())} params {nparam} LD_PRELOAD={os.environ.get('LD_PRELOAD')}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.95), eps=1e-8)

    phase_steps = [None, None]
    if args.phase_steps:
        phase_steps = [int(s) for s in args.phase_steps.split(",")]
    decay_start, decay_steps = args.decay_start, args.decay_steps
    copy_start = args.copy_start
    step0, elapsed0 = 0, 0.0
    last = os.path.join(args.ckpt, "last.pt")
    if os.path.exists(last):
        ck = torch.load(last)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step0, elapsed0 = ck["step"], ck["elapsed"]
        phase_steps = (ck["phase_steps"] + [None] * len(PHASE_AT))[:len(PHASE_AT)]
        if copy_start is None:
            copy_start = ck.get("copy_start")
        if ck.get("decay_start") is not None and args.decay_start is None:
            decay_start, decay_steps = ck["decay_start"], ck["decay_steps"]
        if args.decay_at_minutes is not None and args.decay_start is None and ck.get("decay_at_minutes") != args.decay_at_minutes:
            decay_start, decay_steps = None, None  # a decay of an earlier run: this one's is set by time
        print(f"resumed at step {step0} ({elapsed0:.0f}s)", flush=True)

    def vt_style_at(step):
        return "chained" if args.vt_chained_from is not None and step >= args.vt_chained_from else args.vt_style

    # the checks use the run's last vt style
    evals = {T: eval_instances(v, EVAL_SEED, EVAL_N[T], T, vt_style_at(float("inf"))) for T in EVAL_N}
    budget = args.budget_minutes * 60
    t_start = time.time() - elapsed0
    t_eval = time.time()
    t_log, toks_log = time.time(), 0
    acc = {k: [] for k in tasks.TASKS}
    model.train()
    step = step0
    step_times = []

    def save(name, extra=None, next_step=None):
        # "step": the first step not yet trained (where a resume from this file starts)
        d = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1 if next_step is None else next_step, "elapsed": time.time() - t_start,
             "config": cfg.to_dict(), "phase_steps": phase_steps, "decay_start": decay_start, "decay_steps": decay_steps, "copy_start": copy_start,
             "decay_at_minutes": args.decay_at_minutes}
        if extra:
            d.update(extra)
        torch.save(d, os.path.join(args.ckpt, name + ".tmp"))
        os.replace(os.path.join(args.ckpt, name + ".tmp"), os.path.join(args.ckpt, name))

    while (decay_start is None or step < decay_start + decay_steps) and (args.max_steps is None or step < args.max_steps):
        el = time.time() - t_start
        for i in range(len(PHASE_AT)):
            if phase_steps[i] is None and el >= PHASE_AT[i] * budget and (i == 0 or phase_steps[i - 1] is not None):
                phase_steps[i] = step
                print(f"phase {i + 1} starts at step {step} ({el:.0f}s)", flush=True)
                step_times = []
        # The decay of the time-based curriculum (DECAY_AT of --budget-minutes), unless
        # --decay-at-minutes sets it (it once fired first, at 66 minutes, in a run that asked for 77).
        if decay_start is None and args.decay_at_minutes is None and phase_of(step, phase_steps) == len(PHASE_AT) \
                and len(step_times) >= 10 and el >= DECAY_AT * budget:
            per = float(np.median(step_times[-30:]))
            decay_start, decay_steps = step, max(20, int((budget - el) / per))
            print(f"decay: --phase-steps {','.join(map(str, phase_steps))} --decay-start {decay_start} "
                  f"--decay-steps {decay_steps} (median step {per:.2f}s)", flush=True)
        if plan is not None and args.stop_minutes is not None and el >= args.stop_minutes * 60:
            print(f"stop: wall clock {el:.0f}s reached --stop-minutes", flush=True)
            break
        if plan is not None and decay_start is None and args.decay_at_minutes is not None \
                and el >= args.decay_at_minutes * 60 and len(step_times) >= 10:
            per = float(np.mean(step_times[-30:]))
            decay_start = step
            decay_steps = max(20, int(((args.stop_minutes or args.budget_minutes) * 60 - el) / per))
            print(f"decay: --decay-start {decay_start} --decay-steps {decay_steps} (mean step {per:.2f}s)", flush=True)
        kv_number_share = 0.0
        stage_lr = None
        if plan is not None:
            st = [st for st in plan if st[0] <= step][-1]
            T, B = st[1][step % len(st[1])], st[2][step % len(st[2])]
            kv_share, copy_share, kv_number_share = st[3], st[4], st[5]
            stage_weights = st[6] if st[6] is not None else task_weights
            stage_lr = st[7]
        else:
            T, B = PHASES[phase_of(step, phase_steps) if args.fixed_phase is None else args.fixed_phase]
            kv_share = 0.0
            copy_share = (args.copy_share or COPY_SHARE) if copy_start is not None and step >= copy_start else 0.0
        t0 = time.time()
        rng = np.random.default_rng([SEED, step])
        X, M, kinds = tasks.make_batch(v, rng, B, T, copy_share, kv_share, kv_number_share,
                                       stage_weights if plan is not None else task_weights, args.decision_weight,
                                       vt_style_at(step), args.mq_style)
        lr = lr_at(step, decay_start, decay_steps)
        if stage_lr is not None and (decay_start is None or step < decay_start):
            lr = stage_lr
        for g in opt.param_groups:
            g["lr"] = lr
        loss, ans_loss = batch_loss(model, X, M, v.eos, rng, args.bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step_times.append(time.time() - t0)
        toks_log += B * T
        if (step + 1) % 10 == 0:
            now = time.time()
            print(f"step {step + 1} T={T} lr={lr:.2e} loss={loss.item():.3f} "
                  f"answer_nll={ans_loss.item():.3f} gnorm={float(gn):.2f} tok/s={toks_log / (now - t_log):.0f} "
                  f"elapsed={now - t_start:.0f}s", flush=True)
            t_log, toks_log = now, 0
        done = (decay_start is not None and step + 1 == decay_start + decay_steps) or step + 1 == args.max_steps
        if time.time() - t_eval >= args.eval_minutes * 60 or done:
            te = time.time()
            res = {}
            for Te in EVAL_N:
                res[Te] = {task: exact_match(model, evals[Te][task], v.eos) for task in tasks.TASKS}
                res[Te]["kv"] = kv_accuracy(model, v, Te)
                print(f"eval step {step + 1} (T={Te}, {EVAL_N[Te]} per task): " + " ".join(f"{k}={a:.3f}" for k, a in res[Te].items())
                      + f" [{time.time() - te:.0f}s]", flush=True)
            save(f"step-{step + 1}.pt", {"eval": res})
            save("last.pt")
            t_eval = time.time()
            t_log = time.time()
        step += 1
    el = time.time() - t_start
    save("final.pt", {"train_seconds": el}, next_step=step)  # the loop has counted its last step
    print(f"training done: {step} steps in {el:.0f}s ({el / 60:.1f} min); replay: --phase-steps "
          f"{','.join(map(str, phase_steps))} --decay-start {decay_start} --decay-steps {decay_steps} --copy-start {copy_start}", flush=True)


if __name__ == "__main__":
    main()
