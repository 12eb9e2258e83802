// Batched decode steps on the CPU: (a) one attendBatch over many long sequences against a plain
// read of the same bytes, measured in the same run; (b) one attendBatch over many short sequences
// against one attend call per sequence (what batching saves in per-call overhead), at the shape of
// an 8B-class model's layer and at the embedded tiny-lm's (2 KV heads, 8 query heads, headDim 32);
// (c) the same short steps off the main thread, as a server makes them: one attendBatchAsync
// against one attendAsync per sequence, all awaited together; (d) where the short steps' time goes:
// the same calls made on the addon directly with the same arrays (no TypeScript checks), so the
// difference is the TypeScript layer's share; (e) one appendBatch of a decode row per sequence against
// one append per sequence (tiny-lm shape).
// Usage: node dist/bench/batch.js [--sequences 16] [--long 4096] [--short 256] [--repeats 15] [--warmup-ms 5]
import { KVCache, Sequence } from "../ts";
import { native } from "../ts/native";
import { benchOptions, intOption, median, timeRuns, timeRunsAsync, pause, printTable, host, hostLine, writeResults } from "./common";

const options = benchOptions({
  script: "batch",
  about: "One attendBatch over many decoding sequences against a same-run plain read of their bytes and against one attend call per sequence.",
  options: {
    sequences: intOption({ default: 16, min: 1, help: "sequences in each batch" }),
    long: intOption({ default: 4096, min: 1, help: "tokens per sequence in the long steps, 8 x 32 x 128 shape" }),
    short: intOption({ default: 256, min: 1, help: "tokens per sequence in the short steps, 8 x 32 x 128 and tiny-lm shapes" }),
    repeats: intOption({ default: 15, min: 1, help: "timed calls per median of the long steps, in 5 rounds: rounded up to a multiple of 5; the short steps take 10 times as many" }),
    "warmup-ms": intOption({ default: 5, min: 0, help: "untimed calls for this long at the start of each round" }),
  },
});
const { sequences, long: longTokens, short: shortTokens } = options;
// measure() runs whole rounds of 5: the header and JSON give the number of calls made, for the long
// steps and for the short ones (10 times as many).
const repeats = 5 * Math.ceil(options.repeats / 5);
const shortRepeats = 10 * repeats;
// Each round's timed calls start after this many milliseconds of untimed calls (see timeRuns).
const warmupMs = options["warmup-ms"];
const pageSize = 16;
type Shape = { kvHeads: number; queryHeads: number; headDim: number };
const large: Shape = { kvHeads: 8, queryHeads: 32, headDim: 128 };
const tiny: Shape = { kvHeads: 2, queryHeads: 8, headDim: 32 };
const h = host();
const threads = h.threads;

console.log(`batched decode, ${sequences} sequences, f16, pageSize ${pageSize}; shapes: KV heads x query heads x headDim`);
console.log(`${hostLine(h)}; medians of ${repeats} runs (${longTokens}-token steps), ${shortRepeats} runs (the ${shortTokens}-token rows of every table)\n`);

/** A cache holding `sequences` sequences of `tokens` tokens each (small f16 values). */
function build(tokens: number, { kvHeads, queryHeads, headDim }: Shape): { cache: KVCache; seqs: Sequence[] } {
  const cache = new KVCache({ layers: 1, kvHeads, queryHeads, headDim, dtype: "f16", pageSize, maxTokens: kvHeads * sequences * (tokens + pageSize) });
  const chunk = Math.min(tokens, 4096);
  const rows16 = new Uint16Array(chunk * kvHeads * headDim);
  const seqs: Sequence[] = [];
  for (let s = 0; s < sequences; s++) {
    for (let i = 0; i < rows16.length; i++) rows16[i] = 0x3000 + (((i + s * 7919) * 2654435761) >>> 22);
    const seq = cache.createSequence();
    for (let done = 0; done < tokens; done += chunk) {
      const part = rows16.subarray(0, Math.min(chunk, tokens - done) * kvHeads * headDim);
      seq.append(0, part, part);
    }
    seqs.push(seq);
  }
  return { cache, seqs };
}

// Decode: one query row per sequence, outputs reused as a decode loop would.
function decodeCalls(seqs: Sequence[], cache: KVCache) {
  const { queryHeads, headDim } = cache.config;
  const qs = seqs.map((_, s) => new Float32Array(queryHeads * headDim).map((_, i) => Math.sin(i + s) * 0.1));
  const outs = qs.map((q) => new Float32Array(q.length));
  const items = seqs.map((sequence, i) => ({ sequence, queries: qs[i], out: outs[i] }));
  const handle = cache.handle, ids = Int32Array.from(seqs, (s) => s.id), scale = 1 / Math.sqrt(headDim);
  return {
    batch: () => cache.attendBatch(0, items),
    separate: () => seqs.forEach((s, i) => s.attend(0, qs[i], { out: outs[i] })),
    addonBatch: () => handle.attendBatch(0, ids, qs, scale, outs),
    addonSeparate: () => ids.forEach((id, i) => handle.attend(id, 0, qs[i], scale, outs[i])),
    batchAsync: () => cache.attendBatchAsync(0, items),
    separateAsync: () => Promise.all(seqs.map((s, i) => s.attendAsync(0, qs[i], { out: outs[i] }))),
  };
}

// Alternating rounds, so that every median comes from the same stretch of time on a shared machine;
// with `bytes`, a plain read of that many bytes is timed in every round too. Calls that return
// promises (`awaited`) are awaited one after another (timeRunsAsync).
async function measure(
  fns: Record<string, () => unknown>,
  runs: number,
  { bytes, awaited = false }: { bytes?: number; awaited?: boolean } = {},
): Promise<Record<string, number[]>> {
  const rounds = 5;
  const perRound = Math.ceil(runs / rounds);
  const out: Record<string, number[]> = Object.fromEntries(Object.keys(fns).map((k) => [k, []]));
  if (bytes !== undefined) out.read = [];
  for (let round = 0; round < rounds; round++) {
    for (const [k, fn] of Object.entries(fns)) {
      pause(10);
      const warm = round === 0 ? 2 : 1;
      const times = awaited ? await timeRunsAsync(fn as () => Promise<unknown>, perRound, warm, warmupMs) : timeRuns(fn, perRound, warm, warmupMs);
      out[k].push(...times);
    }
    if (bytes !== undefined) {
      pause(10);
      out.read.push(...native().memoryReadBenchmark(bytes, threads, perRound + 1).slice(1).map((s: number) => s * 1000));
    }
  }
  return out;
}

const table: (string | number)[][] = [];
const asyncTable: (string | number)[][] = [];
const splitTable: (string | number)[][] = [];
const appendTable: (string | number)[][] = [];
const results: Record<string, unknown> = {};

const name = (x: Shape) => `${x.kvHeads}x${x.queryHeads}x${x.headDim}`;
async function main(): Promise<void> {
  for (const [key, tokens, shape, runs] of [["long", longTokens, large, repeats], ["short", shortTokens, large, shortRepeats], ["shortTiny", shortTokens, tiny, shortRepeats]] as const) {
    const { cache, seqs } = build(tokens, shape);
    const calls = decodeCalls(seqs, cache);
    const bytes = sequences * tokens * shape.kvHeads * shape.headDim * 2 * 2; // K and V, f16
    const m = await measure({ batch: calls.batch, separate: calls.separate }, runs, { bytes });
    const batchMs = median(m.batch), separateMs = median(m.separate), readMs = median(m.read);
    table.push([name(shape), `${sequences} x ${tokens}`, (bytes / 2 ** 20).toFixed(1), batchMs.toFixed(3), separateMs.toFixed(3), readMs.toFixed(3), (readMs / batchMs).toFixed(2), (separateMs / batchMs).toFixed(2)]);
    const entry: Record<string, unknown> = { shape, tokens, repeats: m.batch.length, bytes, attendBatchMs: batchMs, separateMs, plainReadMs: readMs, readOverBatch: readMs / batchMs, separateOverBatch: separateMs / batchMs, runs: m };
    if (key !== "long") {
      const d = await measure({ batch: calls.batch, addonBatch: calls.addonBatch, separate: calls.separate, addonSeparate: calls.addonSeparate }, runs);
      const [b, ab, sp, as] = [d.batch, d.addonBatch, d.separate, d.addonSeparate].map(median);
      splitTable.push([name(shape), `${sequences} x ${tokens}`, (b * 1000).toFixed(1), (ab * 1000).toFixed(1), ((b - ab) * 1000).toFixed(1), (sp * 1000).toFixed(1), (as * 1000).toFixed(1), ((sp - as) * 1000).toFixed(1)]);
      Object.assign(entry, { split: { attendBatchMs: b, addonBatchMs: ab, separateMs: sp, addonSeparateMs: as, runs: d } });
      const a = await measure({ batchAsync: calls.batchAsync, separateAsync: calls.separateAsync }, runs, { awaited: true });
      const batchAsyncMs = median(a.batchAsync), separateAsyncMs = median(a.separateAsync);
      asyncTable.push([name(shape), `${sequences} x ${tokens}`, batchAsyncMs.toFixed(3), separateAsyncMs.toFixed(3), (separateAsyncMs / batchAsyncMs).toFixed(2)]);
      Object.assign(entry, { attendBatchAsyncMs: batchAsyncMs, separateAsyncMs, separateAsyncOverBatchAsync: separateAsyncMs / batchAsyncMs, asyncRuns: a });
    }
    results[key] = entry;
    cache.dispose();
  }

  // Appends of one decode row per sequence (tiny-lm shape). The pool holds every row the calls
  // make: each call takes over 6 µs, so a round's untimed calls append at most 150 rows per ms.
  {
    const appendRuns = Math.min(shortRepeats, 1000);
    const perSequence = 2 * 5 * (150 * warmupMs + Math.ceil(appendRuns / 5) + 2) + pageSize;
    const appendCache = new KVCache({ layers: 1, ...tiny, dtype: "f16", pageSize, maxTokens: tiny.kvHeads * sequences * perSequence });
    const aseqs = Array.from({ length: sequences }, () => appendCache.createSequence());
    const rows = aseqs.map((_, s) => new Float32Array(tiny.kvHeads * tiny.headDim).map((_, i) => Math.sin(i + s) * 0.1));
    const items = aseqs.map((sequence, i) => ({ sequence, keys: rows[i], values: rows[i] }));
    const m = await measure({ batch: () => appendCache.appendBatch(0, items), separate: () => aseqs.forEach((q, i) => q.append(0, rows[i], rows[i])) }, appendRuns);
    const [b, sp] = [median(m.batch), median(m.separate)];
    results.appendTiny = { shape: tiny, tokensPerCall: 1, appendBatchMs: b, separateMs: sp, separateOverBatch: sp / b, repeats: m.batch.length, runs: m };
    appendTable.push([name(tiny), `${sequences} x 1`, (b * 1000).toFixed(1), (sp * 1000).toFixed(1), (sp / b).toFixed(2)]);
    appendCache.dispose();
  }

  printTable(["shape", "sequences x tokens", "K+V MiB", "attendBatch ms", "separate ms", "plain read ms", "read / batch", "separate / batch"], table);
  console.log("\noff the main thread:");
  printTable(["shape", "sequences x tokens", "attendBatchAsync ms", `${sequences} x attendAsync ms`, "separate / batch"], asyncTable);
  console.log("\nwhere the short steps' time goes (the addon called directly with the same arrays; TypeScript = the difference):");
  printTable(["shape", "sequences x tokens", "attendBatch us", "addon alone us", "TypeScript us", `${sequences} x attend us`, "addon alone us", "TypeScript us"], splitTable);
  console.log("\nappends of one decode row per sequence:");
  printTable(["shape", "sequences x tokens", "appendBatch us", `${sequences} x append us`, "separate / batch"], appendTable);
  const file = writeResults("batch", { benchmark: "batched decode", sequences, dtype: "f16", pageSize, ...h, repeatsLong: repeats, repeatsShort: shortRepeats, warmupMs, results });
  console.log(`\nwritten ${file}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
