// Before and after: batched and separate decode steps of this build against another built checkout
// of lukv (its dist/ts and its addon), loaded in the same process, taking turns round by round, so
// that both see the same stretch of a shared machine. Each round times `--calls` calls of one kind
// (the two builds' attendBatch over `--sequences` sequences, and their separate attend calls) after
// a 10 ms pause (the other build's kernel threads spin for up to 2 ms after their last call) and 5 ms
// of untimed calls (which wake this build's threads); every column is the median over the rounds.
// Usage: node dist/bench/batch-ab.js --base DIR [--tokens 256] [--sequences 16] [--shape tiny|large] [--rounds 21] [--calls 2000]
import * as fs from "fs";
import * as path from "path";
import * as lukv from "../ts";
import { benchOptions, choiceOption, hostLine, host, intOption, median, pause, printTable, textOption, writeResults } from "./common";

const options = benchOptions({
  script: "batch-ab",
  about: "attendBatch and separate attend calls of this build against another built checkout's, alternating in one process.",
  options: {
    base: textOption({ meta: "DIR", default: "", help: "a checkout of lukv built with npm ci (dist/ts/index.js and its addon), to compare against" }),
    tokens: intOption({ default: 256, min: 1, help: "tokens per sequence" }),
    sequences: intOption({ default: 16, min: 1, help: "sequences in each batch" }),
    shape: choiceOption({ choices: ["tiny", "large"], default: "tiny", help: "tiny-lm's 2 KV heads x 8 query heads x 32, or an 8B-class layer's 8 x 32 x 128" }),
    rounds: intOption({ default: 21, min: 1, help: "rounds of each kind of call" }),
    calls: intOption({ default: 2000, min: 1, help: "timed calls per round" }),
  },
  check: (o) => (o.base === "" ? "--base DIR is required" : !fs.existsSync(path.join(o.base, "dist", "ts", "index.js")) ? `--base ${o.base} holds no dist/ts/index.js (build it with npm ci)` : undefined),
});
const { tokens, sequences, rounds, calls } = options;
const shape = options.shape === "tiny" ? { kvHeads: 2, queryHeads: 8, headDim: 32 } : { kvHeads: 8, queryHeads: 32, headDim: 128 };
const base = require(path.resolve(options.base, "dist", "ts")) as typeof lukv;

/** The two calls on `sequences` sequences of `tokens` f16 tokens each, of one build. */
function calls_(lib: typeof lukv): { batch: () => void; separate: () => void; cache: lukv.KVCache } {
  const { kvHeads, queryHeads, headDim } = shape;
  const cache = new lib.KVCache({ layers: 1, ...shape, dtype: "f16", pageSize: 16, maxTokens: kvHeads * sequences * (tokens + 16) });
  const seqs = Array.from({ length: sequences }, (_, s) => {
    const seq = cache.createSequence();
    const rows = new Uint16Array(tokens * kvHeads * headDim).map((_, i) => 0x3000 + (((i + s * 7919) * 2654435761) >>> 22));
    seq.append(0, rows, rows);
    return seq;
  });
  const qs = seqs.map((_, s) => new Float32Array(queryHeads * headDim).map((_, i) => Math.sin(i + s) * 0.1));
  const outs = qs.map((q) => new Float32Array(q.length));
  const items = seqs.map((sequence, i) => ({ sequence, queries: qs[i], out: outs[i] }));
  return {
    cache,
    batch: () => void cache.attendBatch(0, items),
    separate: () => seqs.forEach((s, i) => s.attend(0, qs[i], { out: outs[i] })),
  };
}

const builds = { base: calls_(base), this: calls_(lukv) };
const kinds: [string, () => void][] = [
  ["base batch", builds.base.batch],
  ["this batch", builds.this.batch],
  ["base separate", builds.base.separate],
  ["this separate", builds.this.separate],
];
console.log(`before and after: ${sequences} sequences x ${tokens} tokens, ${shape.kvHeads}x${shape.queryHeads}x${shape.headDim}, f16; base ${path.resolve(options.base)}`);
console.log(`${hostLine()}; ${rounds} rounds of ${calls} calls of each kind, medians\n`);
const times = new Map<string, number[]>(kinds.map(([k]) => [k, []]));
for (let r = 0; r < rounds; r++)
  for (const [kind, fn] of kinds) {
    pause(10);
    for (const start = performance.now(); performance.now() - start < 5; ) fn();
    const t = performance.now();
    for (let i = 0; i < calls; i++) fn();
    times.get(kind)!.push(((performance.now() - t) / calls) * 1000);
  }
const us = Object.fromEntries([...times].map(([k, v]) => [k, median(v)]));
printTable(
  ["build", "attendBatch us", "separate us", "separate / batch"],
  (["base", "this"] as const).map((b) => [b, us[`${b} batch`].toFixed(1), us[`${b} separate`].toFixed(1), (us[`${b} separate`] / us[`${b} batch`]).toFixed(2)]),
);
console.log(`\nthis / base: attendBatch ${(us["this batch"] / us["base batch"]).toFixed(3)}, separate ${(us["this separate"] / us["base separate"]).toFixed(3)}`);
for (const b of Object.values(builds)) b.cache.dispose();
console.log(`\nwritten ${writeResults("batch-ab", { ...host(), base: path.resolve(options.base), shape, sequences, tokens, rounds, calls, microseconds: us, runs: Object.fromEntries(times) })}`);
