// What was checked is what is used, where user code can run between a check and the use: the
// addon's batch calls read every item before taking any array's memory (a getter of a later item
// could resize an earlier one's buffer under the kernel), TinyLM reads token ids and sequences once
// (an onProgress between chunks could change them), and Profiler.addSample reads each head once.
import { createHook } from "async_hooks";
import * as path from "path";
import { KVCache, Profiler } from "../ts";
import { native } from "../ts/native";
import { loadTinyLM, TinyLM } from "../ts/model";
import { rng, testSeed, randn } from "./helpers/random";
import { filledSequence } from "./helpers/cache";

const seed = testSeed("read-once-more");
const shape = { layers: 2, kvHeads: 2, queryHeads: 4, headDim: 8 };
const kvRow = shape.kvHeads * shape.headDim;
const qRow = shape.queryHeads * shape.headDim;

interface Handle {
  attendBatch(layer: number, ids: Int32Array, queries: unknown[], scale: number, outs: unknown[]): void;
  attendBatchAsync(layer: number, ids: Int32Array, queries: unknown[], scale: number, outs: unknown[]): Promise<boolean>;
  appendBatch(layer: number, ids: Int32Array, keys: unknown[], values: unknown[]): void;
}
const handleOf = (cache: KVCache) => (cache as unknown as { handle: Handle }).handle;

type Resizable = ArrayBuffer & { resize(bytes: number): void };
/** A resizable ArrayBuffer (ES2024, newer than this project's lib types): resize(0) decommits its memory. */
function resizable(bytes: number): Resizable {
  const Ctor = ArrayBuffer as unknown as new (bytes: number, options: { maxByteLength: number }) => Resizable;
  return new Ctor(bytes, { maxByteLength: 1 << 24 });
}

/** A copy of `values` whose element `i` runs `effect` on every read after the first `quiet` reads. */
function withGetter<T>(values: T[], i: number, effect: () => void, quiet = 0): T[] {
  const a = [...values];
  const v = a[i];
  let reads = 0;
  Object.defineProperty(a, i, {
    enumerable: true,
    get: () => {
      if (reads++ >= quiet) effect();
      return v;
    },
  });
  return a;
}


describe("addon batch calls take the arrays' memory only after every item was read", () => {
  const invalidArg = (message: string) => expect.objectContaining({ code: "ERR_LUKV_INVALID_ARGUMENT", message });

  // Each call sees the arrays as they are after the getters ran: here a queries or keys array
  // emptied by a getter of a later argument, which the checks refuse (it crashed in the kernel).
  test("attendBatch, attendBatchAsync and appendBatch: an item's buffer resized to 0 by a later item's getter is refused", () => {
    const r = rng(seed);
    using cache = new KVCache({ ...shape, pageSize: 4, maxTokens: 256, dtype: "f32", threads: 1 });
    const seq = filledSequence(cache, 8, r);
    const handle = handleOf(cache);
    const ids = Int32Array.of(seq.nativeId());
    for (const call of ["attendBatch", "attendBatchAsync"] as const) {
      const buffer = resizable(1 << 20);
      const q = new Float32Array(buffer, 0, qRow);
      q.set(randn(r, qRow));
      const outs = withGetter([new Float32Array(qRow)], 0, () => buffer.resize(0));
      expect(() => handle[call](0, ids, [q], 0.25, outs)).toThrow(invalidArg("queries must be non-empty Float32Arrays of whole rows"));
    }
    const buffer = resizable(1 << 20);
    const keys = new Float32Array(buffer, 0, 2 * kvRow);
    keys.set(randn(r, 2 * kvRow));
    const values = withGetter([randn(r, 2 * kvRow)], 0, () => buffer.resize(0));
    expect(() => handle.appendBatch(0, ids, [keys], values)).toThrow(invalidArg("keys and values must have one type and matching lengths"));
    expect([seq.appended(0), Array.from(seq.lengths())]).toEqual([8, [8, 8, 8, 8]]);
  });

  test("attendBatchAsync: an out array resized to 0 by another out's getter when the results are written resolves false, nothing written", async () => {
    const r = rng(seed ^ 1);
    using cache = new KVCache({ ...shape, pageSize: 4, maxTokens: 256, dtype: "f32", threads: 1 });
    const a = filledSequence(cache, 8, r), b = filledSequence(cache, 6, r);
    const buffer = resizable(1 << 20);
    const out0 = new Float32Array(buffer, 0, qRow), out1 = new Float32Array(qRow);
    // Quiet on the call's read of the outs; the read when the results are written resizes out0's buffer.
    const outs = withGetter<Float32Array>([out0, out1], 1, () => buffer.resize(0), 1);
    const written = await handleOf(cache).attendBatchAsync(0, Int32Array.of(a.nativeId(), b.nativeId()), [randn(r, qRow), randn(r, qRow)], 0.25, outs);
    expect(written).toBe(false);
    expect(Array.from(out1).every((x) => x === 0)).toBe(true);
  });

  test("attendBatchAsync copies the queries before making its worker (an async_hooks init hook runs there)", async () => {
    const r = rng(seed ^ 2);
    using cache = new KVCache({ ...shape, pageSize: 4, maxTokens: 256, dtype: "f32", threads: 1 });
    const seq = filledSequence(cache, 8, r);
    const handle = handleOf(cache);
    const queries = randn(r, qRow);
    const want = new Float32Array(qRow);
    handle.attendBatch(0, Int32Array.of(seq.fork().nativeId()), [queries.slice()], 0.25, [want]);
    const buffer = resizable(1 << 20);
    const q = new Float32Array(buffer, 0, qRow);
    q.set(queries);
    // The first async resource made after this point is the worker's: its init hook empties the queries.
    let armed = true;
    const hook = createHook({
      init: () => {
        if (!armed) return;
        armed = false;
        buffer.resize(0);
      },
    }).enable();
    const out = new Float32Array(qRow);
    let work: Promise<boolean>;
    try {
      work = handle.attendBatchAsync(0, Int32Array.of(seq.nativeId()), [q], 0.25, [out]);
    } finally {
      hook.disable();
    }
    expect([armed, q.length]).toEqual([false, 0]);
    expect(await work).toBe(true);
    expect(Array.from(out)).toEqual(Array.from(want));
  });

  test("scanValuesBatch: a result array resized to 0 by an array's getter is refused", () => {
    const r = rng(seed ^ 3);
    const buffer = resizable(1 << 20);
    const result = new Float64Array(buffer, 0, 4);
    const arrays = withGetter([randn(r, 16), randn(r, 16)], 1, () => buffer.resize(0));
    expect(() => native().scanValuesBatch(arrays, 0, Infinity, result)).toThrow(invalidArg("Expected a Float64Array of 2 per array for the result"));
  });
});

describe("TinyLM reads token ids and sequences once", () => {
  let model: TinyLM | undefined;
  const tiny = () => (model ??= loadTinyLM(path.join(__dirname, "..", "models", "tiny-lm")));
  const fresh = (m: TinyLM, cache: KVCache, prompt: number[]) => {
    const seq = cache.createSequence();
    m.forward(seq, prompt, { logits: "none" });
    return seq;
  };
  const randomIds = (r: () => number, n: number, V: number) => Array.from({ length: n }, () => Math.floor(((r() + 1) / 2) * V) % V);
  /** The first index where the logits differ (-1: none); a short failure message for 4096-wide rows. */
  const firstDifference = (a: Float32Array, b: Float32Array) => (a.length !== b.length ? -2 : a.findIndex((x, i) => !Object.is(x, b[i])));

  test("forward: an onProgress that changes the ids between chunks does not change what later chunks read", () => {
    const r = rng(seed ^ 4);
    const m = tiny();
    const V = m.config.vocabSize;
    using cache = m.createCache({ device: "cpu", contextTokens: 512 });
    const ids = randomIds(r, 12, V);
    const want = m.forward(cache.createSequence(), ids, { chunk: 4, logits: "all" });
    expect(want.every(Number.isFinite)).toBe(true);
    for (const bad of [V, -1, 1.5, NaN]) {
      const tokens = ids.slice();
      const got = m.forward(cache.createSequence(), tokens, { chunk: 4, logits: "all", onProgress: (done) => void (done === 4 && tokens.fill(bad, 4)) });
      expect([bad, firstDifference(got, want)]).toEqual([bad, -1]);
    }
  });

  test("forwardBatch: sequences and ids whose later reads differ give what the checked ones give", () => {
    const r = rng(seed ^ 5);
    const m = tiny();
    const V = m.config.vocabSize;
    using cache = m.createCache({ device: "cpu", contextTokens: 512 });
    const a = fresh(m, cache, randomIds(r, 5, V)), b = fresh(m, cache, randomIds(r, 3, V)), other = fresh(m, cache, randomIds(r, 7, V));
    const ids = randomIds(r, 2, V);
    const want = m.forwardBatch([a.fork(), b.fork()], ids);
    // After their first read, seqs[1] is another sequence and tokens[0] an id between two rows.
    let seqReads = 0, idReads = 0;
    const seqs = Object.defineProperty([a, b], 1, { get: () => (seqReads++ === 0 ? b : other) });
    const tokens = Object.defineProperty(ids.slice(), 0, { get: () => (idReads++ === 0 ? ids[0] : 1.5) });
    const got = m.forwardBatch(seqs, tokens);
    expect(got.map((x, i) => firstDifference(x, want[i]))).toEqual([-1, -1]);
    expect([seqReads, idReads, other.appended(0), b.appended(0)]).toEqual([1, 1, 7, 4]);
  });

  test("a BigInt64Array of ids is refused with the value's type", () => {
    const m = tiny();
    using cache = m.createCache({ device: "cpu", contextTokens: 512 });
    const seq = cache.createSequence();
    expect(() => m.forward(seq, BigInt64Array.of(1n, 2n) as never)).toThrow(/^Expected token ids in \[0, \d+\) but tokens\[0\] is 1n? of type bigint$/);
    expect(seq.appended(0)).toBe(0);
  });
});

describe("Profiler.addSample reads each head once", () => {
  const options = { layers: 1, kvHeads: 2, window: 1, sink: 0, grid: 3 };
  const summary = (p: Profiler) => ({ report: p.report(), table: Array.from(p.build().table) });
  const sample = (r: () => number) => ({ scores: [randn(r, 8), randn(r, 8)], oracle: [randn(r, 8).map(Math.abs), randn(r, 8).map(Math.abs)] });
  const reference = (scores: Float32Array[], oracle: Float32Array[]) => {
    const p = new Profiler(options);
    p.addSample({ scores: [scores], oracle: [oracle] });
    return summary(p);
  };

  test("a head whose later reads are longer: the values first read are kept (a bare RangeError before)", () => {
    const r = rng(seed ^ 6);
    const { scores, oracle } = sample(r);
    const p = new Profiler(options);
    let reads = 0;
    const row = Object.defineProperty([scores[0], scores[1]], 1, { get: () => (reads++ === 0 ? scores[1] : randn(r, 16)) });
    p.addSample({ scores: [row], oracle: [oracle] });
    expect([reads, summary(p)]).toEqual([1, reference(scores, oracle)]);
  });

  test("a head whose buffer a later head's getter shrinks: the values first read are kept (silently zero before)", () => {
    const r = rng(seed ^ 7);
    const { scores, oracle } = sample(r);
    const p = new Profiler(options);
    const buffer = resizable(8 * 4);
    const tracking = new Float32Array(buffer);
    tracking.set(scores[0]);
    p.addSample({ scores: [[tracking, scores[1]]], oracle: [withGetter(oracle, 1, () => buffer.resize(8))] });
    expect([tracking.length, summary(p)]).toEqual([2, reference(scores, oracle)]);
  });
});
