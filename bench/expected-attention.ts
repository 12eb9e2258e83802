// Expected Attention's cost against prefill, measured in one run:
//  1. the embedded model (models/tiny-lm): the full prefill of a held-out prompt, the same prefill
//     collecting the query statistics, and compress({ scorer: "expected-attention" }) (wall time of
//     the whole call, statistics conversion included) against compress with snapkv;
//  2. a Llama-8B-shaped layer stack (8 KV heads, 32 query heads, headDim 128, f16): compress per
//     layer against prefill attention per layer (estimated as in bench/compress.ts), and the cost
//     of QueryStatistics.add per prompt token and layer: the median of repeated adds, per row
//     accumulated, after a first add per layer that the median leaves out (a layer's first add sets
//     its shift and first touches its sums, once per prompt).
// Usage: node dist/bench/expected-attention.js [--tokens 8192] [--layers 8] [--repeats 5] [--prompt 896]
import * as path from "path";
import { KVCache, QueryStatistics } from "../ts";
import { loadTinyLM, modelTexts } from "../ts/model";
import { benchOptions, intOption, median, timeRuns, printTable, host, hostLine, writeResults } from "./common";

const options = benchOptions({
  script: "expected-attention",
  about: "Expected Attention: compress time against the embedded model's full prefill, and per layer against prefill attention on Llama-shaped layers; the cost of collecting the query statistics.",
  options: {
    // Rows are appended in whole 512-token chunks, and the last chunk's queries are the observation window.
    tokens: intOption({ default: 8192, min: 512, multipleOf: 512, help: "context length of the Llama-shaped layers" }),
    layers: intOption({ default: 8, min: 1, max: 65536, help: "Llama-shaped layers" }),
    repeats: intOption({ default: 5, min: 1, help: "runs per median of the tiny-lm prefill and compress, and rounds over the layers of the statistics add; the Llama-shaped compress takes 3" }),
    // snapkv's observation window is 32 tokens.
    prompt: intOption({ default: 896, min: 32, help: "tiny-lm prompt tokens, at most the held-out texts' length" }),
  },
});
const { repeats, prompt: promptTokens, tokens, layers: bigLayers } = options;
const h = host();
console.log(`${hostLine(h)}\n`);

// 1. tiny-lm
const dir = path.join(__dirname, "..", "..", "models", "tiny-lm");
const model = loadTinyLM(dir);
const { layers, heads, headDim, ropeTheta } = model.config;
const text = modelTexts(dir, "heldout").map((t) => t.text).join("\n\n");
const ids = [model.tokenizer!.bos!, ...model.tokenizer!.encode(text).slice(0, promptTokens - 1)];
const cache = model.createCache({ contextTokens: 2 * promptTokens + 64 });
const full = cache.createSequence();
const prefillMs = median(timeRuns(() => {
  const s = cache.createSequence();
  model.forward(s, ids, { logits: "last" });
  s.dispose();
}, repeats, 1));
let stats = new QueryStatistics({ layers, queryHeads: heads, headDim, skip: 4 });
const prefillStatsMs = median(timeRuns(() => {
  stats = new QueryStatistics({ layers, queryHeads: heads, headDim, skip: 4 });
  const s = cache.createSequence();
  model.forward(s, ids, { logits: "last", queryStatistics: stats });
  s.dispose();
}, repeats, 1));
model.forward(full, ids, { logits: "none" });
const expectedAttention = { statistics: stats, rope: { theta: ropeTheta } };
const compressMs = (scorer: "expected-attention" | "snapkv") =>
  median(timeRuns(() => {
    const f = full.fork();
    f.compress({ ratio: 0.8, scorer, sink: 4, window: scorer === "snapkv" ? 32 : 1, expectedAttention: scorer === "snapkv" ? undefined : expectedAttention });
    f.dispose();
  }, repeats, 1));
const eaMs = compressMs("expected-attention");
const snapMs = compressMs("snapkv");
cache.dispose();
printTable(
  ["tiny-lm prompt", "prefill ms", "prefill + statistics ms", "EA compress ms", "EA / prefill", "snapkv compress ms", "snapkv / prefill"],
  [[ids.length, prefillMs.toFixed(1), prefillStatsMs.toFixed(1), eaMs.toFixed(2), ((100 * eaMs) / prefillMs).toFixed(2) + "%", snapMs.toFixed(2), ((100 * snapMs) / prefillMs).toFixed(2) + "%"]],
);

// 2. Llama-8B-shaped layers
const kvHeads = 8, queryHeads = 32, D = 128, chunk = 512;
// Room for a fork that compress copies the shared pages of.
const big = new KVCache({ layers: bigLayers, kvHeads, queryHeads, headDim: D, dtype: "f16", maxTokens: 2 * bigLayers * kvHeads * (tokens + 64) });
const seq = big.createSequence();
let s = 12345;
const rand = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296 - 0.5);
const block = new Float32Array(chunk * kvHeads * D).map(() => rand());
const lastChunk = new Float32Array(chunk * queryHeads * D).map(() => rand() * 0.5);
const bigStats = new QueryStatistics({ layers: bigLayers, queryHeads, headDim: D, skip: 4 });
// The compress cost does not depend on how many rows made the statistics: a few hundred suffice here.
const statRows = 256;
const statQueries = new Float32Array(statRows * queryHeads * D).map(() => rand());
for (let l = 0; l < bigLayers; l++) {
  for (let done = 0; done < tokens; done += chunk) seq.append(l, block, block);
  seq.attend(l, lastChunk);
  bigStats.add(l, statQueries);
}
// The cost of add per prompt token and layer, on statistics of their own (bigStats keeps one add
// per layer for the compress): a layer's first add sets its shift and touches its sums (4 MiB of
// covariance here) for the first time, a cost a prompt pays once and not per token, so one add per
// layer runs first, recorded apart and left out of the median; then `repeats` rounds over the
// layers, every add timed and divided by the rows it accumulated (a layer's first `skip` positions
// are not).
const addStats = new QueryStatistics({ layers: bigLayers, queryHeads, headDim: D, skip: 4 });
const firstAddMs: number[] = [];
for (let l = 0; l < bigLayers; l++) {
  const t = performance.now();
  addStats.add(l, statQueries);
  firstAddMs.push(performance.now() - t);
}
const addUs: number[] = [];
for (let r = 0; r < repeats; r++)
  for (let l = 0; l < bigLayers; l++) {
    const before = addStats.rows(l);
    const t = performance.now();
    addStats.add(l, statQueries);
    const ms = performance.now() - t;
    addUs.push((1000 * ms) / (addStats.rows(l) - before));
  }
const addPerTokenLayerUs = median(addUs);
const lastChunkMs = median(timeRuns(() => seq.attend(0, lastChunk), 3, 0));
const prefillLayerMs = lastChunkMs * (tokens / chunk / 2);
const bigCompress = (scorer: "expected-attention" | "snapkv") =>
  median(timeRuns(() => {
    const f = seq.fork();
    f.compress({ ratio: 0.8, scorer, sink: 4, window: scorer === "snapkv" ? 32 : 1, allocation: "adakv", expectedAttention: scorer === "snapkv" ? undefined : { statistics: bigStats, rope: { theta: 500000 } } });
    f.dispose();
  }, Math.max(3, Math.min(repeats, 3)), 0)) / bigLayers;
const eaLayerMs = bigCompress("expected-attention");
const snapLayerMs = bigCompress("snapkv");
big.dispose();
console.log("");
printTable(
  ["tokens", "EA compress ms/layer", "snapkv compress ms/layer", "prefill attention ms/layer*", "EA / prefill attention", "statistics add µs per token-layer"],
  [[tokens, eaLayerMs.toFixed(1), snapLayerMs.toFixed(1), prefillLayerMs.toFixed(0), ((100 * eaLayerMs) / prefillLayerMs).toFixed(2) + "%", addPerTokenLayerUs.toFixed(1)]],
);
console.log(`\nstatistics add: median of ${addUs.length} adds of ${statRows} rows (${repeats} rounds over ${bigLayers} layers), after a first add per layer left out (the first add of a layer took ${median(firstAddMs).toFixed(2)} ms, median)`);
console.log(`* ${bigLayers} layers x ${kvHeads} KV heads (${queryHeads} query heads), headDim ${D}, f16; prefill attention of one layer in ${chunk}-token chunks, estimated as (tokens/${chunk})/2 times the measured last chunk (attention only: a real model's prefill adds its matrix products)`);
const file = writeResults("expected-attention", {
  benchmark: "expected-attention", repeats, ...h,
  tinyLm: { promptTokens: ids.length, prefillMs, prefillStatsMs, eaCompressMs: eaMs, snapkvCompressMs: snapMs },
  llamaShaped: { tokens, layers: bigLayers, eaCompressMsPerLayer: eaLayerMs, snapkvCompressMsPerLayer: snapLayerMs, prefillAttentionMsPerLayer: prefillLayerMs, statisticsAddUsPerTokenLayer: addPerTokenLayerUs, statisticsAddRows: statRows, statisticsAddRunsUs: addUs, statisticsFirstAddMs: firstAddMs },
});
console.log(`written ${file}`);
