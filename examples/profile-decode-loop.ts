// Making an LU-KV profile for your own model inside your own decode loop, then using it.
//
// The "model" is a toy transformer with random weights (attention only, tied embeddings, greedy
// decoding), so the example runs anywhere in seconds; with a real model only forward() changes.
// In your code, import from "lukv" instead of "../ts".
//
//   npx tsc -p tsconfig.build.json && node dist/examples/profile-decode-loop.js [OUT_DIR]
import { mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KVCache, Profiler, budgetsFromProfile, loadProfile, saveProfile, type Sequence } from "../ts";

const layers = 4, kvHeads = 4, queryHeads = 8, headDim = 16, hidden = 64, vocab = 256;
const samples = 6, decodeSteps = 24, chunk = 128;

// Deterministic random numbers, so every run prints the same profile.
let state = 12345;
function random(): number {
  state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
  return state / 4294967296;
}
function randn(n: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
  return out;
}

/** y[rows, cols] = x[rows, inner] @ w[inner, cols] */
function matmul(x: Float32Array, w: Float32Array, rows: number, inner: number, cols: number): Float32Array {
  const y = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let k = 0; k < inner; k++) {
      const a = x[r * inner + k];
      if (a === 0) continue;
      for (let c = 0; c < cols; c++) y[r * cols + c] += a * w[k * cols + c];
    }
  return y;
}

const embedding = randn(vocab * hidden, 1);
const weights = Array.from({ length: layers }, () => {
  const wk = randn(hidden * kvHeads * headDim, 1 / Math.sqrt(hidden));
  // Give the KV heads different sharpness, as real heads have: some attend to a few tokens, some to many.
  for (let row = 0; row < hidden; row++)
    for (let h = 0; h < kvHeads; h++)
      for (let d = 0; d < headDim; d++) wk[(row * kvHeads + h) * headDim + d] *= [0.5, 1, 2.5, 5][h];
  return {
    wq: randn(hidden * queryHeads * headDim, 1 / Math.sqrt(hidden)),
    wk,
    wv: randn(hidden * kvHeads * headDim, 1 / Math.sqrt(hidden)),
    // W_O, row-major [queryHeads * headDim, hidden]: what recordOracle wants.
    wo: randn(queryHeads * headDim * hidden, 1 / Math.sqrt(queryHeads * headDim)),
  };
});

/** Runs `tokens` through the model, appending their keys and values; returns the last hidden state. */
function forward(seq: Sequence, tokens: number[]): Float32Array {
  const t = tokens.length;
  let x: Float32Array = new Float32Array(t * hidden);
  tokens.forEach((id, i) => x.set(embedding.subarray(id * hidden, (id + 1) * hidden), i * hidden));
  for (let l = 0; l < layers; l++) {
    const w = weights[l];
    seq.append(l, matmul(x, w.wk, t, hidden, kvHeads * headDim), matmul(x, w.wv, t, hidden, kvHeads * headDim));
    const heads = seq.attend(l, matmul(x, w.wq, t, hidden, queryHeads * headDim));
    const y = matmul(heads, w.wo, t, queryHeads * headDim, hidden);
    const next = new Float32Array(t * hidden);
    for (let r = 0; r < t; r++) {
      // Residual, then RMS normalisation keeps the toy stable.
      let ss = 0;
      for (let c = 0; c < hidden; c++) ss += (x[r * hidden + c] + y[r * hidden + c]) ** 2;
      const inv = 1 / Math.sqrt(ss / hidden + 1e-6);
      for (let c = 0; c < hidden; c++) next[r * hidden + c] = (x[r * hidden + c] + y[r * hidden + c]) * inv;
    }
    x = next;
  }
  return x.subarray((t - 1) * hidden);
}

/** Greedy next token under tied embeddings. */
function nextToken(h: Float32Array): number {
  let best = 0, bestScore = -Infinity;
  for (let v = 0; v < vocab; v++) {
    let s = 0;
    for (let c = 0; c < hidden; c++) s += h[c] * embedding[v * hidden + c];
    if (s > bestScore) [best, bestScore] = [v, s];
  }
  return best;
}

/** A context of random tokens, prefilled in chunks: attending each chunk lets the sequence remember its last queries (SnapKV's observation window). */
function prefill(seq: Sequence, length: number): Float32Array {
  const tokens = Array.from({ length }, () => Math.floor(random() * vocab));
  let last: Float32Array = new Float32Array(hidden);
  for (let i = 0; i < length; i += chunk) last = forward(seq, tokens.slice(i, i + chunk));
  return last;
}

function decode(seq: Sequence, last: Float32Array, steps: number): Float32Array {
  for (let s = 0; s < steps; s++) last = forward(seq, [nextToken(last)]);
  return last;
}

const outDir = process.argv[2] ?? mkdtempSync(join(tmpdir(), "lukv-profile-"));
mkdirSync(outDir, { recursive: true });
const t0 = performance.now();
using cache = new KVCache({ layers, kvHeads, queryHeads, headDim, dtype: "f32", maxTokens: layers * kvHeads * 2048 });
const profiler = new Profiler({ layers, kvHeads, scorer: "snapkv", sink: 4, window: 32, model: "toy-random-4L", dataset: "random tokens" });

for (let s = 0; s < samples; s++) {
  using seq = cache.createSequence();
  const last = prefill(seq, 384 + 64 * s);
  // From here on every attend() records the oracle over the context; the observation window is
  // frozen, so the scores rank the context as compress() would now. (Scorers "keydiff" and "h2o"
  // move as tokens are appended: use profiler.recordOracle(seq, options) for them.)
  seq.recordOracle({ outputProjection: weights.map((w) => w.wo), normalize: true });
  decode(seq, last, decodeSteps);
  profiler.addSequence(seq);
}

const profile = profiler.build();
const report = profiler.report();
const cal = profile.meta.calibration!;
console.log(`profiled ${cal.samples} samples (contexts of ${cal.contextLengths!.join(", ")} tokens, ${cal.decodeSteps} decode steps each) in ${(performance.now() - t0).toFixed(0)} ms`);
console.log(`table [${profile.grid}, ${profile.layers}, ${profile.kvHeads}]: prune ratio per KV head at compression 50% and 80%`);
const row = (ratio: number) => Math.round(ratio * (profile.grid + 1)) - 1;
for (let l = 0; l < layers; l++) {
  const cells = (ratio: number) => Array.from({ length: kvHeads }, (_, h) => profile.table[(row(ratio) * layers + l) * kvHeads + h].toFixed(2)).join(" ");
  console.log(`  layer ${l}:  ${cells(0.5)}   |  ${cells(0.8)}`);
}
const mean = (a: Float64Array) => a.reduce((x, y) => x + y, 0) / a.length;
console.log(`hull gap (mean over heads) ${mean(report.hullGap).toFixed(4)}, scorer's optimality gap ${mean(report.optimalityGap).toFixed(4)}`);
for (const ratio of [0.5, 0.8, 0.9]) {
  console.log(`  at ${ratio * 100}%: LU-KV evicts ${(100 * report.loss[row(ratio)]).toFixed(2)}% of the oracle mass, uniform ${(100 * report.uniformLoss[row(ratio)]).toFixed(2)}%`);
}

const npy = join(outDir, "toy-profile.npy");
saveProfile(profile, npy); // the [99, layers, kvHeads] table LU-KV's authors and kvpress use
saveProfile(profile, join(outDir, "toy-profile.json")); // the same table with its metadata
profiler.save(join(outDir, "samples")); // `lukv profile build DIR` rebuilds from these
console.log(`wrote ${npy}, toy-profile.json and samples/ in ${outDir}`);

// Online: look the profile up for a new sequence and evict with it.
const loaded = loadProfile(npy);
using seq = cache.createSequence();
prefill(seq, 1024);
const lengths = seq.lengths();
const budgets = budgetsFromProfile(loaded, { ratio: 0.8, lengths, minKeep: 4 + 32 });
console.log(`budgetsFromProfile at 80% for 1024-token heads (kept per KV head):`);
for (let l = 0; l < layers; l++) console.log(`  layer ${l}:  ${Array.from(budgets.subarray(l * kvHeads, (l + 1) * kvHeads), (b) => String(b).padStart(4)).join(" ")}`);
const done = seq.compress({ budgets });
console.log(`compress: kept ${done.total} of ${done.before} tokens, ${done.pagesFreed} pages back in the pool`);
