// Eviction cost and payoff on the CPU: compress time per layer against prefill attention time for
// the same layer, and decode-step time after ratio 0.8 against the full cache, measured in one run.
// compress evicts for real, so every timed compress runs on a fresh copy of the prefill state: the
// sequence is saved (seq.save()) right after its prefill, and each copy is loaded from those bytes
// (cache.loadSequence, untimed). The full decode step is timed on the prefill's own sequence, which
// is never compressed, and the step after 0.8 on the last compressed copy: the decode steps' query
// rows never join the observation window that SnapKV scores the compressed copies with.
// Usage: node dist/bench/compress.js [--tokens 8192,32768] [--layers 32] [--repeats 5]
import { KVCache, Sequence } from "../ts";
import type { CompressReport } from "../ts";
import { benchOptions, intOption, intListOption, median, timeRuns, printTable, host, hostLine, pseudoRandomF16, pseudoRandomF32, writeResults } from "./common";

const options = benchOptions({
  script: "compress",
  about: "compress time per layer against prefill attention time of a layer, and the decode step after ratio 0.8 against the full cache (8 KV heads, 32 query heads, headDim 128, f16).",
  options: {
    // Rows are appended in whole 512-token chunks, and the last chunk's queries are the observation window.
    tokens: intListOption({ default: [8192, 32768], min: 512, multipleOf: 512, help: "context lengths, one row each" }),
    layers: intOption({ default: 32, min: 1, max: 65536, help: "layers in the cache" }),
    repeats: intOption({ default: 5, min: 1, help: "compress calls (each on a fresh copy of the prefill state) and decode steps per median" }),
  },
});
const { tokens: sizes, layers, repeats } = options;
const kvHeads = 8, queryHeads = 32, headDim = 128, pageSize = 16, chunk = 512, ratio = 0.8;
const h = host();
console.log(`compress: ${layers} layers x ${kvHeads} KV heads (${queryHeads} query heads), headDim ${headDim}, f16, pageSize ${pageSize}`);
console.log(`${hostLine(h)}; scorer snapkv (window 32, max-pool 7), allocation adakv, ratio ${ratio}; medians of ${repeats}\n`);

const queriesF32 = (rows: number, salt: number) => pseudoRandomF32(rows * queryHeads * headDim, salt);

const rows: (string | number)[][] = [];
const results: unknown[] = [];
for (const tokens of sizes) {
  // Room for the prefill's sequence and a loaded copy of it: the full and the compressed decode
  // step are timed in alternating rounds, in the same stretch of time (the host's bandwidth drifts).
  const cache = new KVCache({ layers, kvHeads, queryHeads, headDim, pageSize, dtype: "f16", maxTokens: layers * kvHeads * (2 * tokens + 64) });
  const seq = cache.createSequence();
  const block = pseudoRandomF16(chunk * kvHeads * headDim, tokens);
  const lastChunk = queriesF32(chunk, 7);
  let prefillChunkMs = 0;
  for (let l = 0; l < layers; l++) {
    for (let done = 0; done < tokens; done += chunk) seq.append(l, block, block);
    // The last prefill chunk of every layer: its queries are the observation window.
    const t = performance.now();
    seq.attend(l, lastChunk);
    if (l === 0) prefillChunkMs = performance.now() - t;
  }
  // The prefill state, before anything else attends: what every timed compress starts from.
  const saved = seq.save();
  // Prefill attention of a whole layer, from the measured last chunk: chunk k of n costs about
  // (k + 1/2) / n of the last one, so the layer costs about n/2 last chunks.
  const lastChunkMs = median(timeRuns(() => seq.attend(0, lastChunk), 3, 0));
  const nChunks = tokens / chunk;
  const prefillLayerMs = lastChunkMs * (nChunks / 2);
  const q = queriesF32(1, 3);
  const step = (s: Sequence) => () => {
    for (let l = 0; l < layers; l++) s.attend(l, q);
  };
  const usedFull = cache.usage().bytesUsed;
  // One copy in the pool besides the prefill's: the one compressed last is kept for the decode step after it.
  let compressed: Sequence | undefined;
  let rep: CompressReport | undefined;
  const compressRuns: number[] = [];
  for (let r = 0; r < repeats; r++) {
    compressed?.dispose();
    compressed = cache.loadSequence(saved);
    rep = compressed.compress({ ratio, scorer: "snapkv", allocation: "adakv" });
    compressRuns.push(rep.ms);
  }
  const compressMs = median(compressRuns);
  const compressLayerMs = compressMs / layers;
  const usedAfter = cache.usage().bytesUsed - usedFull;
  const decodeFullRuns: number[] = [], decodeCompressedRuns: number[] = [];
  for (let r = 0; r < repeats; r++) {
    decodeFullRuns.push(...timeRuns(step(seq), 1, 1));
    decodeCompressedRuns.push(...timeRuns(step(compressed!), 1, 1));
  }
  cache.dispose();
  const decodeFullMs = median(decodeFullRuns), decodeCompressedMs = median(decodeCompressedRuns);
  rows.push([
    tokens,
    compressLayerMs.toFixed(1),
    prefillLayerMs.toFixed(0),
    ((compressLayerMs / prefillLayerMs) * 100).toFixed(2) + "%",
    decodeFullMs.toFixed(1),
    decodeCompressedMs.toFixed(1),
    (decodeCompressedMs / decodeFullMs).toFixed(2),
    `${(usedFull / 2 ** 20).toFixed(0)} -> ${(usedAfter / 2 ** 20).toFixed(0)}`,
  ]);
  results.push({
    tokens, layers, compressMsTotal: compressMs, compressMsPerLayer: compressLayerMs, compressRunsMs: compressRuns,
    prefillLastChunkMs: lastChunkMs, prefillFirstRunMs: prefillChunkMs, prefillLayerMsEstimated: prefillLayerMs, compressOverPrefill: compressLayerMs / prefillLayerMs,
    decodeStepFullMs: decodeFullMs, decodeStepCompressedMs: decodeCompressedMs, decodeRatio: decodeCompressedMs / decodeFullMs,
    decodeStepFullRunsMs: decodeFullRuns, decodeStepCompressedRunsMs: decodeCompressedRuns,
    bytesFull: usedFull, bytesCompressed: usedAfter, pagesFreed: rep!.pagesFreed, kept: rep!.total, before: rep!.before,
  });
}
printTable(["tokens", "compress ms/layer", "prefill ms/layer*", "compress/prefill", "decode ms (full)", "decode ms (0.8)", "ratio", "KV MiB"], rows);
console.log(`\n* prefill attention of one layer in ${chunk}-token chunks, estimated as (tokens/${chunk})/2 times the measured last chunk`);
console.log(`compress ms = median of ${repeats} compress calls, each on a fresh copy of the prefill state (cache.loadSequence of seq.save() after the prefill, untimed)`);
console.log(`decode ms = one decode step over all ${layers} layers (attention only), median of ${repeats}: full on the prefill's sequence, 0.8 on the last compressed copy, the two taking turns step by step`);
const file = writeResults("compress", { benchmark: "compress", kvHeads, queryHeads, headDim, dtype: "f16", pageSize, ratio, scorer: "snapkv", allocation: "adakv", ...h, repeats, results });
console.log(`written ${file}`);
