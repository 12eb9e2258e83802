// Shapes and options away from the tuned decode shape, each against the tuned one in the same run:
// query groups that are not a multiple of four (MHA, 2:1, 7:1), head sizes that are a multiple of 8
// and not of 16 (with the table "auto" takes and AVX-512's), heads of unequal length (as
// per-head budgets leave them) against equal heads of the same total, and compress with each
// scorer and allocation on a fresh copy of one prefill state. Variants run in alternating rounds
// (the host's speed drifts), each round after a pause and untimed warm-up calls.
// Usage: node dist/bench/shapes.js [--tokens 1024] [--skew-tokens 16384] [--compress-tokens 65536] [--rounds 9] [--threads N]
import { backends, KVCache, Sequence } from "../ts";
import type { CompressOptions } from "../ts";
import { benchOptions, intOption, median, pause, printTable, host, hostLine, pseudoRandomF16, pseudoRandomF32, writeResults } from "./common";

const options = benchOptions({
  script: "shapes",
  about: "Decode by query-group size, head size and with heads of unequal length, and compress by scorer and allocation (8 KV heads, headDim 128, f16), against the tuned shape in the same run.",
  options: {
    tokens: intOption({ default: 1024, min: 16, multipleOf: 16, help: "context per KV head of the group-size rows" }),
    "skew-tokens": intOption({ default: 16384, min: 1024, multipleOf: 16, help: "the long head's length in the unequal-heads rows (the seven others keep 300)" }),
    "compress-tokens": intOption({ default: 65536, min: 0, multipleOf: 512, help: "context per KV head of the compress rows (0 skips them: give 1024 for a quick run)" }),
    rounds: intOption({ default: 9, min: 1, help: "alternating rounds; each variant's median over them" }),
    threads: intOption({ default: 0, min: 0, max: 256, defaultText: "the library's default", help: "kernel threads of every cache (0: the library's default)" }),
  },
});
const { tokens, rounds } = options;
const skewTokens = options["skew-tokens"], compressTokens = options["compress-tokens"];
const threads = options.threads > 0 ? { threads: options.threads } : {};
const kvHeads = 8, headDim = 128, pageSize = 16;
const h = host();
console.log(`${hostLine(h)}${options.threads > 0 ? ` (caches made with threads ${options.threads})` : ""}; medians of ${rounds} alternating rounds\n`);

interface Variant {
  group: string;
  name: string;
  run: () => void;
  calls: number;
}

/** Median microseconds per call of each variant, over rounds in which every variant takes its turn. */
function alternate(variants: Variant[]): number[] {
  const times: number[][] = variants.map(() => []);
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < variants.length; k++) {
      const i = r % 2 ? variants.length - 1 - k : k;
      const v = variants[i];
      pause(10);
      for (const start = performance.now(); performance.now() - start < 5; ) v.run();
      const t = performance.now();
      for (let c = 0; c < v.calls; c++) v.run();
      times[i].push(((performance.now() - t) * 1e3) / v.calls);
    }
  }
  return times.map(median);
}

const caches: KVCache[] = [];
const decode: Variant[] = [];
// Query groups: the same K and V bytes, G query heads per KV head.
for (const group of [1, 2, 3, 4, 7, 8]) {
  const cache = new KVCache({ layers: 1, kvHeads, queryHeads: kvHeads * group, headDim, dtype: "f16", pageSize, maxTokens: kvHeads * tokens, ...threads });
  caches.push(cache);
  const seq = cache.createSequence();
  const kv = pseudoRandomF16(tokens * kvHeads * headDim, 1);
  seq.append(0, kv, kv);
  const q = pseudoRandomF32(kvHeads * group * headDim, 2), out = new Float32Array(q.length);
  decode.push({ group: "query heads per KV head", name: `G = ${group}${group === 4 ? " (tuned)" : ""}, ${tokens} tokens`, run: () => seq.attend(0, q, { out }), calls: 20 });
}
// Head sizes that are a multiple of 8 and not of 16: the table "auto" takes for them, and AVX-512's.
const tables = backends().cpu.simdSupported;
for (const headSize of [72, 104])
  for (const simd of tables[0] === "avx512" ? (["auto", "avx512"] as const) : (["auto"] as const)) {
    const cache = new KVCache({ layers: 1, kvHeads, queryHeads: 4 * kvHeads, headDim: headSize, dtype: "f16", pageSize, maxTokens: kvHeads * tokens, simd, ...threads });
    caches.push(cache);
    const seq = cache.createSequence();
    const kv = pseudoRandomF16(tokens * kvHeads * headSize, 7);
    seq.append(0, kv, kv);
    const q = pseudoRandomF32(4 * kvHeads * headSize, 8), out = new Float32Array(q.length);
    decode.push({ group: "head size (G = 4)", name: `headDim ${headSize}, simd ${simd} (${cache.config.simd}), ${tokens} tokens`, run: () => seq.attend(0, q, { out }), calls: 20 });
  }
// One long head beside seven short ones, and eight equal heads of the same total.
const short = 300;
const skewTotal = skewTokens + (kvHeads - 1) * short;
for (const [name, budgets] of [
  ["equal heads", new Int32Array(kvHeads).fill(Math.floor(skewTotal / kvHeads))],
  [`one head of ${skewTokens}, seven of ${short}`, Int32Array.from({ length: kvHeads }, (_, i) => (i === 0 ? skewTokens : short))],
] as const) {
  const cache = new KVCache({ layers: 1, kvHeads, queryHeads: 4 * kvHeads, headDim, dtype: "f16", pageSize, maxTokens: 2 * kvHeads * skewTokens, ...threads });
  caches.push(cache);
  const seq = cache.createSequence();
  const kv = pseudoRandomF16(skewTokens * kvHeads * headDim, 3);
  seq.append(0, kv, kv);
  seq.compress({ budgets, scorer: "streaming", sink: 0, window: 0 });
  const q = pseudoRandomF32(4 * kvHeads * headDim, 4), out = new Float32Array(q.length);
  decode.push({ group: "head lengths (G = 4)", name: `${name} (${Array.from(seq.lengths()).reduce((a, b) => a + b, 0)} tokens)`, run: () => seq.attend(0, q, { out }), calls: 20 });
}
const decodeUs = alternate(decode);
const rows: (string | number)[][] = decode.map((v, i) => [v.group, v.name, decodeUs[i].toFixed(1)]);
printTable(["decode", "variant", "µs / call"], rows);
for (const c of caches) c.dispose();

// compress: each call on a fresh copy of one prefill state (loaded untimed before it).
const compressRows: (string | number)[][] = [];
const compressResults: { variant: string; medianMs: number }[] = [];
if (compressTokens > 0) {
  const cache = new KVCache({ layers: 1, kvHeads, queryHeads: 4 * kvHeads, headDim, dtype: "f16", pageSize, maxTokens: 2 * kvHeads * (compressTokens + 64), ...threads });
  const prefill = cache.createSequence();
  const chunk = 512;
  const block = pseudoRandomF16(chunk * kvHeads * headDim, 5);
  for (let done = 0; done < compressTokens; done += chunk) prefill.append(0, block, block);
  prefill.attend(0, pseudoRandomF32(32 * 4 * kvHeads * headDim, 6)); // the observation window: the last 32 positions' queries
  const saved = prefill.save();
  prefill.dispose();
  const sets: [string, CompressOptions][] = [
    ["knorm", { scorer: "knorm", ratio: 0.8 }],
    ["knorm, adakv", { scorer: "knorm", allocation: "adakv", ratio: 0.8 }],
    ["snapkv", { scorer: "snapkv", ratio: 0.8 }],
    ["snapkv, adakv", { scorer: "snapkv", allocation: "adakv", ratio: 0.8 }],
    ["keydiff", { scorer: "keydiff", ratio: 0.8 }],
  ];
  const times: number[][] = sets.map(() => []);
  for (let r = 0; r < Math.min(rounds, 5); r++) {
    for (let k = 0; k < sets.length; k++) {
      const i = r % 2 ? sets.length - 1 - k : k;
      const copy: Sequence = cache.loadSequence(saved);
      pause(10);
      const t = performance.now();
      copy.compress(sets[i][1]);
      times[i].push(performance.now() - t);
      copy.dispose();
    }
  }
  sets.forEach(([name], i) => {
    const ms = median(times[i]);
    compressRows.push([name, `${compressTokens}`, ms.toFixed(1), ((ms * 1e6) / (compressTokens * kvHeads)).toFixed(1)]);
    compressResults.push({ variant: name, medianMs: ms });
  });
  cache.dispose();
  console.log("");
  printTable(["compress (ratio 0.8)", "tokens per head", "ms", "ns / (token, KV head)"], compressRows);
}
const file = writeResults("shapes", {
  benchmark: "decode by group size and head lengths; compress by scorer and allocation",
  rounds,
  ...h,
  cacheThreads: options.threads || undefined,
  decode: decode.map((v, i) => ({ group: v.group, variant: v.name, medianMicros: decodeUs[i] })),
  compress: compressResults,
});
console.log(`\nwritten ${file}`);
