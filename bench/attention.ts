// Decode attention on the CPU against the machine's read bandwidth, measured in the same run.
// Usage: node dist/bench/attention.js [--tokens 1024,8192,32768,131072] [--repeats 15] [--prefetch auto,nta] [--step-mib 128] [--warmup-ms 5]
// With several prefetch hints, one cache per hint holds the same rows and the hints take turns
// with the plain read, so every column comes from the same stretch of time.
// One layer attended over and over stays in the processor's caches when it is small (4 MiB at 1K
// tokens), and so does the plain read of its bytes. A model's decode step attends every layer once,
// so a layer's rows come from memory: the "model step" columns attend over as many layers (one call
// each, in order) as make at least --step-mib MiB (at most 32 layers), against a plain read of all
// of their bytes, with the first prefetch hint given (its column names it).
import { KVCache, PrefetchHint } from "../ts";
import { native } from "../ts/native";
import { benchOptions, intOption, intListOption, choiceListOption, median, timeRuns, pause, printTable, host, hostLine, writeResults } from "./common";

const PREFETCH: readonly PrefetchHint[] = ["auto", "t0", "t2", "nta", "none"];
const options = benchOptions({
  script: "attention",
  about: "Decode attention on the CPU (8 KV heads, 32 query heads, headDim 128, f16) against a plain read of the same bytes, measured in the same run.",
  options: {
    // The pool holds exactly the rows, in whole pages.
    tokens: intListOption({ default: [1024, 8192, 32768, 131072], min: 16, multipleOf: 16, help: "context lengths, one row each" }),
    repeats: intOption({ default: 15, min: 1, help: "timed calls per median, in 5 rounds: rounded up to a multiple of 5" }),
    prefetch: choiceListOption({ choices: PREFETCH, default: ["auto"], help: "prefetch hints, one cache each, taking turns" }),
    "step-mib": intOption({ default: 128, min: 0, help: "the model step attends over as many layers as make this many MiB, at most 32, with the first --prefetch hint; 0: no model step" }),
    "warmup-ms": intOption({ default: 5, min: 0, help: "untimed calls for this long at the start of each round" }),
  },
});
const sizes = options.tokens;
const hints = options.prefetch;
const stepBytes = options["step-mib"] * 2 ** 20;
// Each round's timed calls start after this many milliseconds of untimed calls (see timeRuns).
const warmupMs = options["warmup-ms"];
// Every variant runs the same number of calls in each round: the header and JSON give the total made.
const rounds = 5;
const perRound = Math.ceil(options.repeats / rounds);
const repeats = rounds * perRound;
const kvHeads = 8, queryHeads = 32, headDim = 128, pageSize = 16;
const h = host();
const threads = h.threads;
// The hints as the columns name them: "auto" with the hint it stands for.
const used = hints.map((hint) => (hint === "auto" ? `auto=${h.prefetch}` : hint));

console.log(`decode attention, ${kvHeads} KV heads x ${queryHeads} query heads, headDim ${headDim}, f16, pageSize ${pageSize}`);
console.log(`${hostLine(h, used.join(", "))}; model step with ${used[0]}; median of ${repeats} runs\n`);

const rows: (string | number)[][] = [];
const results: unknown[] = [];
for (const tokens of sizes) {
  const chunk = 4096;
  const rows16 = new Uint16Array(chunk * kvHeads * headDim);
  for (let i = 0; i < rows16.length; i++) rows16[i] = 0x3000 + ((i * 2654435761) >>> 22); // small f16 values
  const caches = hints.map((prefetch) => {
    const cache = new KVCache({ layers: 1, kvHeads, queryHeads, headDim, dtype: "f16", pageSize, maxTokens: kvHeads * tokens, prefetch });
    const seq = cache.createSequence();
    for (let done = 0; done < tokens; done += chunk) {
      const n = Math.min(chunk, tokens - done);
      const part = rows16.subarray(0, n * kvHeads * headDim);
      seq.append(0, part, part);
    }
    return { cache, seq, runs: [] as number[] };
  });
  const bytes = tokens * kvHeads * headDim * 2 * 2; // K and V, f16
  const stepLayers = Math.min(32, Math.max(1, Math.ceil(stepBytes / bytes)));
  const step = (() => {
    if (stepLayers === 1) return undefined;
    const cache = new KVCache({ layers: stepLayers, kvHeads, queryHeads, headDim, dtype: "f16", pageSize, maxTokens: stepLayers * kvHeads * tokens, prefetch: hints[0] });
    const seq = cache.createSequence();
    for (let layer = 0; layer < stepLayers; layer++)
      for (let done = 0; done < tokens; done += chunk) {
        const part = rows16.subarray(0, Math.min(chunk, tokens - done) * kvHeads * headDim);
        seq.append(layer, part, part);
      }
    return { cache, seq, runs: [] as number[], readRuns: [] as number[] };
  })();
  const q = new Float32Array(queryHeads * headDim).map((_, i) => Math.sin(i) * 0.1);
  const out = new Float32Array(q.length); // reused, as a decode loop would: no allocation per call
  // The machine's state drifts (other tenants of the host): attention and the plain read are
  // measured in alternating rounds, so all medians come from the same stretch of time.
  const readRuns: number[] = [];
  // Each group of runs starts after a pause, so that no other cache's threads still spin beside it.
  for (let round = 0; round < rounds; round++) {
    for (const c of caches) {
      pause(10);
      c.runs.push(...timeRuns(() => c.seq.attend(0, q, { out }), perRound, round === 0 ? 2 : 1, warmupMs));
    }
    pause(10);
    readRuns.push(...native().memoryReadBenchmark(bytes, threads, perRound + 1).slice(1).map((s: number) => s * 1000));
    if (step) {
      pause(10);
      step.runs.push(...timeRuns(() => { for (let layer = 0; layer < stepLayers; layer++) step.seq.attend(layer, q, { out }); }, perRound, round === 0 ? 2 : 1, warmupMs));
      pause(10);
      step.readRuns.push(...native().memoryReadBenchmark(bytes * stepLayers, threads, perRound + 1).slice(1).map((s: number) => s * 1000));
    }
  }
  const readMs = median(readRuns);
  const limit = bytes / (readMs / 1000) / 1e9;
  const row: (string | number)[] = [tokens, (bytes / 2 ** 20).toFixed(1)];
  const perHint = caches.map((c) => {
    const attendMs = median(c.runs);
    const gbps = bytes / (attendMs / 1000) / 1e9;
    row.push(attendMs.toFixed(3), gbps.toFixed(2), (gbps / limit).toFixed(2));
    return { prefetch: c.cache.config.prefetch, attendMs, attendGBps: gbps, ratio: gbps / limit };
  });
  for (const c of caches) c.cache.dispose();
  row.push(limit.toFixed(2));
  // The model step: milliseconds per layer, and the ratio against the plain read of all its bytes.
  let modelStep: Record<string, number | string> | undefined;
  if (step) {
    const layerMs = median(step.runs) / stepLayers;
    const stepReadMs = median(step.readRuns);
    const ratio = stepReadMs / stepLayers / layerMs;
    row.push(stepLayers, layerMs.toFixed(3), ratio.toFixed(2), ((bytes * stepLayers) / (stepReadMs / 1000) / 1e9).toFixed(2));
    modelStep = { layers: stepLayers, prefetch: step.cache.config.prefetch, msPerLayer: layerMs, plainReadMs: stepReadMs, ratio };
    step.cache.dispose();
  } else {
    row.push(1, "= single", "", "");
  }
  rows.push(row);
  results.push({ tokens, bytes, plainReadMs: readMs, plainReadGBps: limit, hints: perHint, modelStep });
}
printTable(["tokens", "K+V MiB", ...used.flatMap((hint) => [`ms (${hint})`, "GB/s", "ratio"]), "plain read GB/s", "step layers", `step ms / layer (${used[0]})`, "step ratio", "step read GB/s"], rows);
const file = writeResults("attention", { benchmark: "decode attention", kvHeads, queryHeads, headDim, dtype: "f16", pageSize, ...h, prefetch: used, prefetchAuto: h.prefetch, repeats, warmupMs, results });
console.log(`\nwritten ${file}`);
