// What the addon reads is what was checked: options holding typed arrays are read once (a getter
// could hand the addon another array, and the addon read a Uint8Array as 4-byte elements past its
// end), and an append's rows are checked again when user code (onCompress, a pressure listener) ran
// between the check and the write (it could detach, resize or rewrite them).
import { KVCache } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";
import { filledSequence } from "./helpers/cache";

const seed = testSeed("inputs-read-once");
const shape = { layers: 2, kvHeads: 1, queryHeads: 2, headDim: 8 };
const row = shape.kvHeads * shape.headDim;

/** An object whose `name` is `first` on the first read and `later` on every read after it. */
function changing<T extends object>(name: string, first: unknown, later: unknown, base: T = {} as T): T {
  let reads = 0;
  return Object.defineProperty(base, name, { enumerable: true, get: () => (reads++ === 0 ? first : later) });
}

/** An array whose element `i` is `first` on its first read and `later` after. */
function changingElements(values: unknown[], i: number, later: unknown): unknown[] {
  const a = [...values];
  let reads = 0;
  const first = a[i];
  Object.defineProperty(a, i, { enumerable: true, get: () => (reads++ === 0 ? first : later) });
  return a;
}


describe("options holding typed arrays are read once", () => {
  test("budgets, observationQueries and outputProjection whose later reads return a Uint8Array: the checked arrays are used", () => {
    const r = rng(seed);
    using cache = new KVCache({ ...shape, maxTokens: 1024, dtype: "f32" });
    const budgets = Int32Array.of(10, 12);
    const a = filledSequence(cache, 40, r);
    const plain = a.fork();
    const report = a.compress(changing("budgets", budgets, new Uint8Array(4), { scorer: "knorm" as const, sink: 2, window: 2 }));
    expect(Array.from(report.kept)).toEqual([10, 12]);
    expect(Array.from(plain.compress({ scorer: "knorm", sink: 2, window: 2, budgets }).kept)).toEqual([10, 12]);
    for (let l = 0; l < shape.layers; l++) expect(Array.from(a.positions(l, 0))).toEqual(Array.from(plain.positions(l, 0)));

    const queries = [randn(r, 3 * shape.queryHeads * shape.headDim), randn(r, 3 * shape.queryHeads * shape.headDim)];
    const b = filledSequence(cache, 40, r), c = b.fork();
    const options = { scorer: "snapkv" as const, window: 3, sink: 2, ratio: 0.5 };
    const got = b.compress({ ...options, observationQueries: changingElements(queries, 1, new Uint8Array(8)) as Float32Array[] });
    const want = c.compress({ ...options, observationQueries: queries });
    expect(Array.from(got.kept)).toEqual(Array.from(want.kept));
    for (let l = 0; l < shape.layers; l++) expect(Array.from(b.positions(l, 0))).toEqual(Array.from(c.positions(l, 0)));

    const hidden = 4;
    const wo = [randn(r, shape.queryHeads * shape.headDim * hidden), randn(r, shape.queryHeads * shape.headDim * hidden)];
    const d = filledSequence(cache, 20, r), e = d.fork();
    d.recordOracle({ outputProjection: changingElements(wo, 0, new Uint8Array(16)) as Float32Array[] });
    e.recordOracle({ outputProjection: wo });
    for (const s of [d, e]) for (let l = 0; l < shape.layers; l++) s.attend(l, randn(rng(seed ^ l), shape.queryHeads * shape.headDim));
    for (let l = 0; l < shape.layers; l++) expect(Array.from(d.oracle(l)[0])).toEqual(Array.from(e.oracle(l)[0]));
  });

  test("the addon refuses an option array of another element type (it read a Uint8Array as 4-byte elements)", () => {
    const r = rng(seed ^ 1);
    using cache = new KVCache({ ...shape, maxTokens: 1024, dtype: "f32" });
    const seq = filledSequence(cache, 40, r);
    const handle = (cache as unknown as { handle: { compress(id: number, o: object): unknown; recordOracle(id: number, wo: unknown[], n: boolean): void } }).handle;
    const base = { scorer: "knorm", window: 2, pooling: "none", kernel: 7, groupMax: 0, groupLayer: 0, valueNorm: 0, seed: 0, scale: 0.25, sink: 2, alpha: 0.2, beta: 20 };
    expect(() => handle.compress(seq.nativeId(), { ...base, allocation: "explicit", ratio: 0, budgets: new Uint8Array(8) })).toThrow(
      expect.objectContaining({ code: "ERR_LUKV_INVALID_ARGUMENT", message: "Expected an Int32Array for budgets" }),
    );
    expect(() => handle.compress(seq.nativeId(), { ...base, scorer: "snapkv", allocation: "uniform", ratio: 0.5, observation: [new Uint8Array(64), undefined] })).toThrow(
      expect.objectContaining({ code: "ERR_LUKV_INVALID_ARGUMENT", message: "Expected a Float32Array for observationQueries" }),
    );
    expect(() => handle.recordOracle(seq.nativeId(), [new Float64Array(64), new Float32Array(64)], false)).toThrow(
      expect.objectContaining({ code: "ERR_LUKV_INVALID_ARGUMENT", message: "Expected a Float32Array for outputProjection" }),
    );
    expect(Array.from(seq.lengths())).toEqual([40, 40]);
  });
});

describe("an append's rows are checked again after user code ran", () => {
  const detach = (a: Float32Array) => void structuredClone(a.buffer, { transfer: [a.buffer as ArrayBuffer] });

  test("an onCompress that detaches or poisons the rows: InvalidArgumentError, nothing appended (it appended nothing and said nothing, or stored NaN)", () => {
    const r = rng(seed ^ 2);
    for (const [what, change, message] of [
      ["detached", (k: Float32Array) => detach(k), "Expected keys to hold the 16 tokens it held when the append was called, but an onCompress or pressure listener that ran before the rows were written emptied it (detached, or resized to 0); nothing was appended"],
      ["poisoned", (k: Float32Array) => void (k[3] = NaN), "Expected finite numbers for keys but received NaN at index 3 (token 0, head 0, element 3)"],
    ] as const) {
      using cache = new KVCache({ ...shape, maxTokens: 1024, dtype: "f32" });
      const seq = filledSequence(cache, 16, r);
      const keys = randn(r, 16 * row), values = randn(r, 16 * row);
      seq.autoCompress({ maxTokens: 8, every: 1, scorer: "knorm", sink: 2, window: 2, onCompress: () => change(keys) });
      // A position appended to the last layer makes the compression due at the next append.
      for (let l = 0; l < shape.layers; l++) seq.append(l, randn(r, row), randn(r, row));
      const before = [Array.from(seq.lengths()), seq.appended(0), cache.usage()];
      let err: unknown;
      try {
        seq.append(0, keys, values);
      } catch (e) {
        err = e;
      }
      expect([what, (err as Error)?.name, (err as Error)?.message]).toEqual([what, "InvalidArgumentError", expect.stringContaining(message)]);
      // The due compression ran (its callback did); the append did not.
      expect([what, seq.autoCompressions, seq.appended(0)]).toEqual([what, 1, before[1]]);
      expect(Array.from(seq.keys(0, 0)).every(Number.isFinite)).toBe(true);
      // The sequence goes on: a later append and attend work, and counts agree with the addon.
      seq.append(0, randn(r, 4 * row), randn(r, 4 * row));
      expect(seq.attend(0, randn(r, 20 * shape.queryHeads * shape.headDim)).every(Number.isFinite)).toBe(true);
    }
  });

  test("a pressure listener that detaches the rows before the retry, and an onCompress that detaches another item's rows in appendBatch", () => {
    const r = rng(seed ^ 3);
    {
      using cache = new KVCache({ ...shape, layers: 1, pageSize: 4, maxTokens: 16, dtype: "f32" });
      const big = cache.createSequence();
      big.append(0, randn(r, 12 * row), randn(r, 12 * row));
      const seq = cache.createSequence();
      const keys = randn(r, 8 * row), values = randn(r, 8 * row);
      cache.onPressure({ evict: "largest", scorer: "knorm", ratio: 0.5, sink: 1, window: 1, listener: () => detach(values) });
      expect(() => seq.append(0, keys, values)).toThrow(
        "Expected values to hold the 8 tokens it held when the append was called, but an onCompress or pressure listener that ran before the rows were written emptied it (detached, or resized to 0); nothing was appended",
      );
      expect([seq.appended(0), Array.from(seq.lengths())]).toEqual([0, [0]]);
      expect(cache.pressureStats.events).toBe(1);
    }
    {
      using cache = new KVCache({ ...shape, maxTokens: 1024, dtype: "f32" });
      const a = filledSequence(cache, 16, r), b = filledSequence(cache, 4, r);
      const items = [a, b].map((sequence) => ({ sequence, keys: randn(r, 2 * row), values: randn(r, 2 * row) }));
      a.autoCompress({ maxTokens: 8, every: 1, scorer: "knorm", sink: 2, window: 2, onCompress: () => detach(items[1].keys) });
      for (let l = 0; l < shape.layers; l++) a.append(l, randn(r, row), randn(r, row));
      expect(() => cache.appendBatch(0, items)).toThrow(
        "Expected items[1].keys to hold the 2 tokens it held when the append was called, but an onCompress or pressure listener that ran before the rows were written emptied it (detached, or resized to 0); nothing was appended",
      );
      expect([a.appended(0), b.appended(0), a.autoCompressions]).toEqual([17, 4, 1]);
    }
  });

  test("appendBatchAsync: an onCompress in its turn that detaches another item's rows rejects it, nothing appended", async () => {
    const r = rng(seed ^ 4);
    using cache = new KVCache({ ...shape, maxTokens: 1024, dtype: "f32" });
    const a = filledSequence(cache, 16, r), b = filledSequence(cache, 4, r);
    const items = [a, b].map((sequence) => ({ sequence, keys: randn(r, 3 * row), values: randn(r, 3 * row) }));
    a.autoCompress({ maxTokens: 8, every: 1, scorer: "knorm", sink: 2, window: 2, onCompress: () => detach(items[1].values) });
    for (let l = 0; l < shape.layers; l++) a.append(l, randn(r, row), randn(r, row));
    await expect(cache.appendBatchAsync(0, items)).rejects.toThrow(
      "Expected items[1].values to hold the 3 tokens it held when the append was called, but an onCompress or pressure listener that ran before the rows were written emptied it (detached, or resized to 0); nothing was appended",
    );
    expect([a.appended(0), b.appended(0), a.autoCompressions]).toEqual([17, 4, 1]);
    // Later calls go on.
    await cache.appendBatchAsync(0, [{ sequence: b, keys: randn(r, row), values: randn(r, row) }]);
    expect(b.appended(0)).toBe(5);
  });
});

describe("user code cannot change checked inputs before the call reads them", () => {
  const qRow = shape.queryHeads * shape.headDim;

  test("attend: the out option is read before the queries are checked (a getter writing NaN into them is refused)", async () => {
    const r = rng(seed + 11);
    using cache = new KVCache({ ...shape, maxTokens: 1024, dtype: "f32" });
    const seq = filledSequence(cache, 8, r);
    const poisoning = (queries: Float32Array) => Object.defineProperty({}, "out", { enumerable: true, get: () => ((queries[0] = NaN), undefined) });
    const q1 = randn(r, qRow), q2 = randn(r, qRow);
    expect(() => seq.attend(0, q1, poisoning(q1))).toThrow(/Expected finite numbers for queries/);
    await expect(seq.attendAsync(0, q2, poisoning(q2))).rejects.toThrow(/Expected finite numbers for queries/);
  });

  test("attend: an out whose class overrides length runs none of it (the engine's length is checked)", () => {
    const r = rng(seed + 12);
    using cache = new KVCache({ ...shape, maxTokens: 1024, dtype: "f32" });
    const seq = filledSequence(cache, 8, r);
    const queries = randn(r, qRow);
    let ran = false;
    class Out extends Float32Array {
      override get length(): number {
        ran = true;
        queries.fill(NaN);
        return super.length;
      }
    }
    const want = seq.fork().attend(0, queries.slice());
    const out = new Out(qRow);
    seq.attend(0, queries, { out });
    expect(ran).toBe(false);
    expect(Array.from(out)).toEqual(Array.from(want));
  });

  test("attendBatch of more than 32 items reads every item before checking any (a getter cannot rewrite an earlier item's queries)", () => {
    const r = rng(seed + 13);
    using cache = new KVCache({ ...shape, maxTokens: 4096, dtype: "f32" });
    const seqs = Array.from({ length: 40 }, () => filledSequence(cache, 4, r));
    const items = seqs.map((sequence) => ({ sequence, queries: randn(r, qRow) }));
    const first = items[0].queries;
    const later = items[1].queries;
    Object.defineProperty(items[1], "queries", { enumerable: true, get: () => ((first[0] = NaN), later) });
    expect(() => cache.attendBatch(0, items)).toThrow(/Expected finite numbers for items\[0\]\.queries/);
  });

  test("rows of a Float32Array subclass are read as the engine holds them: its slice and species are never used", async () => {
    const r = rng(seed + 14);
    using cache = new KVCache({ ...shape, maxTokens: 1024, dtype: "f32" });
    const a = filledSequence(cache, 8, r), b = a.fork();
    let used = 0;
    class Rows extends Float32Array {
      static get [Symbol.species](): Float32ArrayConstructor {
        used++;
        return class extends Float32Array {
          constructor(n: number) {
            super(n + 2 * row);
            this.fill(NaN);
          }
        } as unknown as Float32ArrayConstructor;
      }
      override slice(): Float32Array<ArrayBuffer> {
        used++;
        return new Float32Array(this.length).fill(NaN);
      }
    }
    const keys = randn(r, row), values = randn(r, row), queries = randn(r, qRow);
    // Each call waits its turn behind an async call, so it keeps a copy of its arrays.
    const pending = a.attendAsync(0, randn(r, qRow));
    const appended = cache.appendBatchAsync(0, [{ sequence: a, keys: new Rows(keys), values: new Rows(values) }]);
    const attended = a.attendAsync(0, new Rows(queries));
    await Promise.all([pending, appended]);
    const got = await attended;
    b.append(0, keys, values);
    expect(used).toBe(0);
    expect(Array.from(a.positions(0, 0))).toEqual(Array.from(b.positions(0, 0)));
    expect(Array.from(got)).toEqual(Array.from(b.attend(0, queries)));
  });

  test("compress: every option is read before any is checked (a later option's getter that empties observationQueries is refused)", () => {
    const r = rng(seed + 15);
    using cache = new KVCache({ ...shape, maxTokens: 1024, dtype: "f32" });
    const seq = filledSequence(cache, 40, r);
    const before = Array.from(seq.positions(0, 0));
    const obs = [randn(r, 2 * qRow), randn(r, 2 * qRow)];
    const options = { scorer: "snapkv" as const, ratio: 0.5, window: 2, observationQueries: obs };
    Object.defineProperty(options, "sink", { enumerable: true, get: () => (structuredClone(obs[0], { transfer: [obs[0].buffer as ArrayBuffer] }), 2) });
    expect(() => seq.compress(options)).toThrow(/Expected a non-empty Float32Array whose length is a multiple of 16 \(\[rows, queryHeads, headDim\]\) for observationQueries\[0\]/);
    expect(Array.from(seq.positions(0, 0))).toEqual(before);
  });
});

describe("typed-array subclasses count as the engine holds them", () => {
  test("keys whose class reports a shorter length: the rows appended are counted (autoCompress and the query-row bound saw 1 of 3)", () => {
    const r = rng(seed + 16);
    using cache = new KVCache({ ...shape, maxTokens: 1024, dtype: "f32" });
    class Short extends Float32Array {
      override get length(): number {
        return row; // one token, whatever it holds
      }
    }
    const seq = cache.createSequence();
    for (let l = 0; l < shape.layers; l++) seq.append(l, new Short(randn(r, 3 * row)), new Short(randn(r, 3 * row)));
    expect(seq.appended(0)).toBe(3);
    expect(seq.attend(0, randn(r, 3 * shape.queryHeads * shape.headDim))).toHaveLength(3 * shape.queryHeads * shape.headDim);
    const seqAuto = cache.createSequence();
    seqAuto.autoCompress({ maxTokens: 2, every: 4, scorer: "streaming", sink: 0, window: 1 });
    for (let step = 0; step < 3; step++)
      for (let l = 0; l < shape.layers; l++) seqAuto.append(l, new Short(randn(r, 3 * row)), new Short(randn(r, 3 * row)));
    // 6 positions after two steps: the third step's append first evicts back to 2 per head, then adds 3.
    expect(Array.from(seqAuto.lengths())).toEqual(new Array(shape.layers * shape.kvHeads).fill(5));
  });

  test("an array with a length property of its own is copied too; a Proxy is refused without running its traps", () => {
    const r = rng(seed + 18);
    using cache = new KVCache({ ...shape, maxTokens: 1024, dtype: "f32" });
    const seq = cache.createSequence();
    const lying = (rows: Float32Array) => Object.defineProperty(rows, "length", { value: row });
    for (let l = 0; l < shape.layers; l++) seq.append(l, lying(randn(r, 3 * row)), lying(randn(r, 3 * row)));
    expect(seq.appended(0)).toBe(3);
    let traps = 0;
    const proxy = new Proxy(randn(r, row), { getPrototypeOf: () => (traps++, Float32Array.prototype) });
    const revocable = Proxy.revocable(randn(r, row), {});
    revocable.revoke();
    for (const p of [proxy, revocable.proxy])
      expect(() => seq.append(0, p as Float32Array, p as Float32Array)).toThrow("Expected Float32Array for keys but received a Proxy");
    expect(traps).toBe(0);
  });

  test("an out refused for its length is described by the engine's length, its class's getter not run", () => {
    const r = rng(seed + 17);
    using cache = new KVCache({ ...shape, maxTokens: 1024, dtype: "f32" });
    const seq = filledSequence(cache, 4, r);
    let ran = 0;
    class Out extends Float32Array {
      override get length(): number {
        ran++;
        throw new Error("user code");
      }
      override get [Symbol.toStringTag](): "Float32Array" {
        ran++;
        throw new Error("user code");
      }
    }
    expect(() => seq.attend(0, randn(r, shape.queryHeads * shape.headDim), { out: new Out(3) })).toThrow(
      "Expected a Float32Array of length 16 (the queries' length) for out but received Float32Array(3)",
    );
    expect(ran).toBe(0);
  });
});
