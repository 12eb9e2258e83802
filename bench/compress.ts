// Eviction cost and payoff on the CPU: compress time per layer against prefill attention time for
// the same layer, and decode-step time after ratio 0.8 against the full cache, measured in one run.
// Usage: node dist/bench/compress.js [--tokens 8192,32768] [--layers 32] [--repeats 5]
import { KVCache, backends } from "../ts";
import { benchOptions, intOption, intListOption, median, timeRuns, printTable, machine, cpuLine, writeResults } from "./common";

const options = benchOptions({
  script: "compress",
  about: "compress time per layer against prefill attention time of a layer, and the decode step after ratio 0.8 against the full cache (8 KV heads, 32 query heads, headDim 128, f16).",
  options: {
    // Rows are appended in whole 512-token chunks, and the last chunk's queries are the observation window.
    tokens: intListOption({ default: [8192, 32768], min: 512, multipleOf: 512, help: "context lengths, one row each" }),
    layers: intOption({ default: 32, min: 1, max: 65536, help: "layers in the cache" }),
    repeats: intOption({ default: 5, min: 1, help: "decode steps per median" }),
  },
});
const { tokens: sizes, layers, repeats } = options;
const kvHeads = 8, queryHeads = 32, headDim = 128, pageSize = 16, chunk = 512, ratio = 0.8;
const b = backends();
console.log(`compress: ${layers} layers x ${kvHeads} KV heads (${queryHeads} query heads), headDim ${headDim}, f16, pageSize ${pageSize}`);
console.log(`CPU: ${cpuLine()}; ${b.cpu.threads} threads, kernels ${b.cpu.simd}, prefetch ${b.cpu.prefetch}; scorer snapkv (window 32, max-pool 7), allocation adakv, ratio ${ratio}\n`);

function pseudoRandomF16(n: number, salt: number): Uint16Array {
  const out = new Uint16Array(n);
  let s = (salt * 2654435761) >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    // f16 values of magnitude about 0.06..1, random sign
    out[i] = ((s >>> 31) << 15) | (0x2c00 + ((s >>> 12) & 0xfff));
  }
  return out;
}

function queriesF32(rows: number, salt: number): Float32Array {
  const q = new Float32Array(rows * queryHeads * headDim);
  let s = (salt * 40503) >>> 0;
  for (let i = 0; i < q.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    q[i] = (s / 4294967296 - 0.5) * 0.5;
  }
  return q;
}

const rows: (string | number)[][] = [];
const results: unknown[] = [];
for (const tokens of sizes) {
  const cache = new KVCache({ layers, kvHeads, queryHeads, headDim, pageSize, dtype: "f16", maxTokens: layers * kvHeads * (tokens + 64) });
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
  // Prefill attention of a whole layer, from the measured last chunk: chunk k of n costs about
  // (k + 1/2) / n of the last one, so the layer costs about n/2 last chunks.
  const lastChunkMs = median(timeRuns(() => seq.attend(0, lastChunk), 3, 0));
  const nChunks = tokens / chunk;
  const prefillLayerMs = lastChunkMs * (nChunks / 2);
  const q = queriesF32(1, 3);
  const stepFull = () => {
    for (let l = 0; l < layers; l++) seq.attend(l, q);
  };
  const decodeFullMs = median(timeRuns(stepFull, repeats, 1));
  const usedFull = cache.usage().bytesUsed;
  const rep = seq.compress({ ratio, scorer: "snapkv", allocation: "adakv" });
  const compressLayerMs = rep.ms / layers;
  const decodeCompressedMs = median(timeRuns(stepFull, repeats, 1));
  const usedAfter = cache.usage().bytesUsed;
  cache.dispose();
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
    tokens, layers, compressMsTotal: rep.ms, compressMsPerLayer: compressLayerMs, prefillLastChunkMs: lastChunkMs, prefillFirstRunMs: prefillChunkMs,
    prefillLayerMsEstimated: prefillLayerMs, compressOverPrefill: compressLayerMs / prefillLayerMs,
    decodeStepFullMs: decodeFullMs, decodeStepCompressedMs: decodeCompressedMs, decodeRatio: decodeCompressedMs / decodeFullMs,
    bytesFull: usedFull, bytesCompressed: usedAfter, pagesFreed: rep.pagesFreed, kept: rep.total, before: rep.before,
  });
}
printTable(["tokens", "compress ms/layer", "prefill ms/layer*", "compress/prefill", "decode ms (full)", "decode ms (0.8)", "ratio", "KV MiB"], rows);
console.log(`\n* prefill attention of one layer in ${chunk}-token chunks, estimated as (tokens/${chunk})/2 times the measured last chunk`);
console.log(`decode ms = one decode step over all ${layers} layers (attention only), median of ${repeats}`);
const file = writeResults("compress", { benchmark: "compress", kvHeads, queryHeads, headDim, dtype: "f16", pageSize, ratio, scorer: "snapkv", allocation: "adakv", threads: b.cpu.threads, simd: b.cpu.simd, prefetch: b.cpu.prefetch, repeats, machine: machine(), results });
console.log(`written ${file}`);
