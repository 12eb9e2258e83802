#!/usr/bin/python3
"""Writes recall-lm task instances drawn with another seed, to check a setting on instances it was
not chosen on:

  python3 tools/recall-lm/instances.py --seed 5050 --n 64 --out /tmp/recall-fresh
  node dist/ts/cli.js eval --model /tmp/recall-fresh --task all ...

--out becomes a copy of models/recall-lm (weights, tokenizer, profiles, calibration instances)
whose heldout/<task>.json hold the new instances (2,048 tokens, the shipped vt format, the same
generator as export.py). Seeds already used: 4321 held-out, 777 calibration, 99 and 4242 checks
during training, [2718, step] training batches.
"""
import argparse
import importlib.util
import json
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "..", "models", "recall-lm")
USED = {4321, 777, 99, 4242, 2718}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--n", type=int, default=64, help="instances per task")
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.seed in USED:
        raise SystemExit(f"seed {args.seed} is already used ({sorted(USED)})")
    # --out is replaced whole: never the model folder it is copied from (or one holding it).
    model, out = os.path.realpath(MODEL), os.path.realpath(args.out)
    if model == out or model.startswith(out + os.sep):
        raise SystemExit(f"--out {args.out} would replace {model}: choose another folder")
    spec = importlib.util.spec_from_file_location("recall_export", os.path.join(HERE, "export.py"))
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    tasks = export.tasks
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    shutil.copytree(MODEL, args.out)
    tok = export.Tokenizer.load(os.path.join(args.out, "tokenizer.json"))
    v = tasks.Vocab(json.load(open(os.path.join(args.out, "tokenizer.json"))))
    made = export.instances(v, tok, args.seed, args.n, args.length, "chained")
    for task, items in made.items():
        with open(os.path.join(args.out, "heldout", f"{task}.json"), "w") as f:
            json.dump({"task": task, "length": args.length, "seed": [args.seed, tasks.TASKS.index(task)],
                       "settings": tasks.EVAL_SETTINGS[task],
                       "instances": [{k: x for k, x in it.items() if k != "ids"} for it in items]}, f, indent=0)
    print(f"{args.out}: {args.n} instances per task, seed {args.seed}")


if __name__ == "__main__":
    main()
