#!/usr/bin/python3
"""Exports a recall-lm checkpoint to models/recall-lm (the formats of models/tiny-lm, see
tools/tiny-lm/README.md "Formats") and writes the held-out and calibration instances.

  model.safetensors   f16 weights, tiny-lm's tensor names and layouts
  config.json         hyperparameters, training record, evaluation (exact match, f16 weights)
  heldout/<task>.json N instances per task at --length tokens, seed HELDOUT_SEED (never trained
                      on: training batches use seeds [2718, step], the training-time checks 99)
  calibration/<task>.json instances for LU-KV's profiler, seed CALIB_SEED (disjoint from both)

An instance: context (text; the input is [BOS] + encode(context)), question (text appended
after it), answer (text, e.g. " 48193"), and their token counts; mq-niah's also followups: the
further parts of its question, each a prompt given after the answer before it (" . the special
magic number for K2 is") and the answer the model must produce.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tiny-lm"))
sys.path.insert(0, HERE)

import numpy as np
import torch

import tasks
from bpe import Tokenizer
import importlib.util
_spec = importlib.util.spec_from_file_location("tiny_lm_export", os.path.join(HERE, "..", "tiny-lm", "export.py"))
_tiny_export = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny_export)
write_safetensors = _tiny_export.write_safetensors  # the writer of tools/tiny-lm/export.py
from model import Config, TinyLM
from train import exact_match

OUT = os.path.join(HERE, "..", "..", "models", "recall-lm")
HELDOUT_SEED = 4321
CALIB_SEED = 777
GREEDY_CHECK = 4


def instances(v, tok, seed, n, length, vt_style):
    out = {}
    for ti, task in enumerate(tasks.TASKS):
        rng = np.random.default_rng([seed, ti])
        items = []
        for _ in range(n):
            # mq-niah's second sentence is given (the evaluation's format, whatever the training's)
            inst = tasks.instance(v, task, rng, length, **tasks.EVAL_SETTINGS[task], vt_style=vt_style, mq_style="given")
            (q, a), rest = inst["qas"][0][0], inst["qas"][0][1:]
            ctx = inst["context"]
            # a further part's prompt starts with the "." that ends the answer before it
            follow = [(" ." + fq.text, [v.id["."]] + fq.ids, fa) for fq, fa in rest]
            text = ctx.text + q.text + a.text + "".join(ft + fa.text for ft, _, fa in follow)
            assert tok.encode(text) == ctx.ids + q.ids + a.ids + [t for _, fids, fa in follow for t in fids + fa.ids]
            item = {"context": ctx.text, "question": q.text, "answer": a.text,
                    "context_tokens": 1 + len(ctx.ids), "question_tokens": len(q.ids), "answer_tokens": len(a.ids)}
            if follow:
                item["followups"] = [{"question": ft, "answer": fa.text, "question_tokens": len(fids), "answer_tokens": len(fa.ids)}
                                     for ft, fids, fa in follow]
            item["ids"] = tasks.sequence(v, inst)
            items.append(item)
        out[task] = items
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=os.path.join(HERE, "checkpoints", "final.pt"))
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--heldout", type=int, default=64, help="instances per task")
    ap.add_argument("--calibration", type=int, default=8, help="instances per task")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--also-lengths", default=None,
                    help="L1,L2,...: also measure the full-cache exact match on --heldout instances of these lengths "
                         "(same seed; recorded in config.json -> evaluation_other_lengths, not written as files)")
    ap.add_argument("--vt-style", default="direct", choices=("direct", "var", "chained"),
                    help="the vt format the checkpoint was trained on (tasks.instance)")
    ap.add_argument("--dry-run", action="store_true", help="measure the exact match only; write nothing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tj = json.load(open(os.path.join(OUT, "tokenizer.json")))
    tok = Tokenizer.load(os.path.join(OUT, "tokenizer.json"))
    v = tasks.Vocab(tj)
    ck = torch.load(args.ckpt)
    cfg = Config(**ck["config"])
    model = TinyLM(cfg)
    model.load_state_dict(ck["model"])
    # evaluate the weights as shipped (rounded to f16)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    names = ["model.embed_tokens.weight"]
    for l in range(cfg.num_layers):
        for n in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            names.append(f"model.layers.{l}.{n}.weight")
    names.append("model.norm.weight")
    sd = {("model." + k): t for k, t in model.state_dict().items()}
    tensors = [(n, np.ascontiguousarray(sd[n].numpy().astype(np.float16))) for n in names]
    if not args.dry_run:
        write_safetensors(os.path.join(OUT, "model.safetensors"), tensors,
                          {"format": "pt", "model": "lukv-recall-lm", "dtype": "float16"})

    held = instances(v, tok, HELDOUT_SEED, args.heldout, args.length, args.vt_style)
    # the greedy answers of the first GREEDY_CHECK instances per task (f16 weights, f32 math):
    # a cross-check for the TypeScript forward pass and cache
    # (with follow-ups: the model's answers with the given prompts between them, as one text)
    for task in ([] if args.dry_run else tasks.TASKS):
        for it in held[task][:GREEDY_CHECK]:
            ids, mask = it["ids"]
            # the runs of answer tokens; the given tokens between them are fed as they are
            starts = [i for i in range(1, len(mask)) if mask[i] and not mask[i - 1]]
            ends = [i + 1 for i in range(len(mask)) if mask[i] and (i + 1 == len(mask) or not mask[i + 1])]
            spans = list(zip(starts, ends))
            seq = ids[:spans[0][0]]
            with torch.no_grad():
                for k, (s, e) in enumerate(spans):
                    if k > 0:
                        seq += ids[spans[k - 1][1]:s]
                    for _ in range(e - s):
                        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
            it["model_answer"] = tok.decode(seq[spans[0][0]:])
    calib = instances(v, tok, CALIB_SEED, args.calibration, args.length, args.vt_style)
    evaluation = {}
    for task in tasks.TASKS:
        acc = exact_match(model, [it["ids"] for it in held[task]], v.eos, bs=4)
        evaluation[task] = {"exact_match": acc, "instances": len(held[task]), "length": args.length}
        print(f"{task}: exact match {acc:.3f} on {len(held[task])} held-out instances of {args.length} tokens", flush=True)
    other = {}
    for L in ([int(x) for x in args.also_lengths.split(",")] if args.also_lengths else []):
        extra = instances(v, tok, HELDOUT_SEED, args.heldout, L, args.vt_style)
        other[str(L)] = {}
        for task in tasks.TASKS:
            acc = exact_match(model, [it["ids"] for it in extra[task]], v.eos, bs=4)
            other[str(L)][task] = {"exact_match": acc, "instances": len(extra[task]), "length": L}
            print(f"{task}: exact match {acc:.3f} on {len(extra[task])} held-out instances of {L} tokens", flush=True)
    if args.dry_run:
        return
    for sub, data, seed in (("heldout", held, HELDOUT_SEED), ("calibration", calib, CALIB_SEED)):
        os.makedirs(os.path.join(OUT, sub), exist_ok=True)
        for task, items in data.items():
            with open(os.path.join(OUT, sub, f"{task}.json"), "w") as f:
                json.dump({"task": task, "length": args.length, "seed": [seed, tasks.TASKS.index(task)],
                           "settings": tasks.EVAL_SETTINGS[task],
                           "instances": [{k: x for k, x in it.items() if k != "ids"} for it in items]}, f, indent=0)
    config = {
        "model_type": "lukv-recall-lm",
        "architecture": "decoder-only transformer, pre-norm, RMSNorm, RoPE (rotate-half), GQA, SwiGLU MLP, tied embeddings, no biases (tools/tiny-lm/model.py)",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers,
        "num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        "gqa_group_size": cfg.num_heads // cfg.num_kv_heads,
        "gqa_mapping": "query head q uses KV head floor(q / gqa_group_size)",
        "intermediate_size": cfg.intermediate_size, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
        "attention_scale": 1.0 / cfg.head_dim ** 0.5, "max_position": args.length, "context_length": args.length,
        "tie_word_embeddings": True, "bos_token_id": v.bos, "eos_token_id": v.eos, "dtype": "float16",
        "weights_file": "model.safetensors",
        "tensors": [{"name": n, "shape": list(t.shape)} for n, t in tensors],
        "training": {k: ck.get(k) for k in ("step", "elapsed", "phase_steps", "decay_start", "decay_steps", "train_seconds")},
        "evaluation": evaluation,
    }
    if other:
        config["evaluation_other_lengths"] = other
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    print(f"exported {args.ckpt} (step {ck.get('step')}) to {OUT}", flush=True)


if __name__ == "__main__":
    main()
