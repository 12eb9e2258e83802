// A decode step of the embedded model for several sequences: model.forwardBatch (one appendBatch and
// one attendBatch per layer, the matrix products over all the rows) against model.forward on each
// sequence in turn, in two caches holding the same prompts. The two take turns step by step, and
// their logits are compared (they are the same bit for bit on the CPU backend).
// Usage: node dist/bench/model-batch.js [--sequences 1,4,8] [--context 384] [--steps 40]
import { defaultModelDir, loadTinyLM } from "../ts/model";
import { Sequence } from "../ts";
import { benchOptions, intOption, intListOption, median, printTable, host, hostLine, writeResults } from "./common";

const options = benchOptions({
  script: "model-batch",
  about: "A decode step of the embedded model for several sequences: model.forwardBatch against model.forward on each sequence in turn, and whether their logits are the same bit for bit.",
  options: {
    sequences: intListOption({ default: [1, 4, 8], min: 1, help: "sequences per step, one row each" }),
    context: intOption({ default: 384, min: 1, help: "prompt tokens of each sequence" }),
    steps: intOption({ default: 40, min: 1, help: "decode steps per median" }),
  },
});
const { sequences: counts, context, steps } = options;
const model = loadTinyLM(defaultModelDir());
const V = model.config.vocabSize;
console.log(`embedded model decode steps, ${context}-token contexts; median of ${steps} steps`);
const h = host();
console.log(`${hostLine(h)}\n`);

// Token ids spread over the vocabulary, away from the special ones at its start.
const token = (i: number) => 5 + ((i * 7919) % (V - 10));

const rows: (string | number)[][] = [];
const results: unknown[] = [];
for (const n of counts) {
  const batched = model.createCache({ contextTokens: n * (context + steps + 16) });
  const alone = model.createCache({ contextTokens: n * (context + steps + 16) });
  try {
    const prompt = Array.from({ length: context }, (_, i) => token(i));
    const make = (cache: typeof batched): Sequence[] =>
      Array.from({ length: n }, () => {
        const seq = cache.createSequence();
        model.forward(seq, prompt, { logits: "none" });
        return seq;
      });
    const a = make(batched), b = make(alone);
    const batchMs: number[] = [], aloneMs: number[] = [];
    let identical = true;
    for (let s = 0; s < steps; s++) {
      const next = a.map((_, i) => token(s * 31 + i * 17));
      let t = performance.now();
      const got = model.forwardBatch(a, next);
      batchMs.push(performance.now() - t);
      t = performance.now();
      const want = b.map((seq, i) => model.forward(seq, [next[i]]));
      aloneMs.push(performance.now() - t);
      for (let i = 0; i < n; i++) for (let j = 0; j < V; j++) if (got[i][j] !== want[i][j]) identical = false;
    }
    const mb = median(batchMs), ma = median(aloneMs);
    rows.push([n, ma.toFixed(2), mb.toFixed(2), (ma / mb).toFixed(2), identical ? "yes" : "NO"]);
    results.push({ sequences: n, context, steps, forwardEachMs: ma, forwardBatchMs: mb, speedup: ma / mb, identical });
  } finally {
    batched.dispose();
    alone.dispose();
  }
}
printTable(["sequences", "forward each ms / step", "forwardBatch ms / step", "speedup", "same logits"], rows);
const file = writeResults("model-batch", { benchmark: "model decode batch", ...h, results });
console.log(`\nwritten ${file}`);
