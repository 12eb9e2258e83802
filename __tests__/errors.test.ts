// Every invalid argument names the parameter, what was expected and what was received; failed calls
// change nothing; use after dispose throws.
import { KVCache, Sequence } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";
import { appendRandom } from "./helpers/cache";

const seed = testSeed("errors");
const base = { layers: 2, kvHeads: 2, queryHeads: 4, headDim: 8, pageSize: 4, dtype: "f32" as const, maxTokens: 64 };

function expectError(fn: () => unknown, name: string, message: string | RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeDefined();
  const err = caught as Error;
  expect(err.name).toBe(name);
  if (typeof message === "string") expect(err.message).toBe(message);
  else expect(err.message).toMatch(message);
}

describe("KVCache options", () => {
  test.each([
    [{ ...base, layers: 0 }, "Expected positive integer at most 65536 for layers but received 0 of type number"],
    [{ ...base, layers: 1.5 }, "Expected positive integer at most 65536 for layers but received 1.5 of type number"],
    [{ ...base, kvHeads: NaN }, "Expected positive integer at most 65536 for kvHeads but received NaN of type number"],
    [{ ...base, queryHeads: 3 }, "Expected a multiple of kvHeads (2) for queryHeads but received 3 of type number"],
    [{ ...base, headDim: Infinity }, "Expected positive integer at most 4096 for headDim but received Infinity of type number"],
    [{ ...base, pageSize: -1 }, "Expected positive integer at most 65536 for pageSize but received -1 of type number"],
    [{ ...base, maxTokens: "64" }, 'Expected positive integer at most 1099511627776 for maxTokens but received "64" of type string'],
    [{ ...base, dtype: "f64" }, 'Expected one of "f32", "f16", "bf16" for dtype but received "f64" of type string'],
    [{ ...base, device: "gpu" }, 'Expected one of "auto", "cpu", "cuda" for device but received "gpu" of type string'],
    [{ ...base, threads: 0 }, "Expected positive integer at most 1024 for threads but received 0 of type number"],
    [{ ...base, simd: "sse" }, 'Expected one of "auto", "avx512", "avx2", "neon", "generic" for simd but received "sse" of type string'],
    [{ ...base, prefetch: "t1" }, 'Expected one of "auto", "t0", "t2", "nta", "none" for prefetch but received "t1" of type string'],
  ])("%j", (opts, message) => {
    expectError(() => new KVCache(opts as never), "InvalidArgumentError", message);
  });

  test("a kernel table this processor cannot run", () => {
    const { backends } = require("../ts");
    const supported: string[] = backends().cpu.simdSupported;
    const missing = ["avx512", "avx2", "neon"].filter((l) => !supported.includes(l));
    expect(missing.length).toBeGreaterThan(0); // no processor runs both the x86 and the arm64 tables
    for (const level of missing)
      expectError(
        () => new KVCache({ ...base, simd: level as never }),
        "InvalidArgumentError",
        `Expected one of the levels this processor supports (${supported.join(", ")}) for simd but received "${level}" of type string`,
      );
  });

  test("missing options object", () => {
    expectError(() => new KVCache(undefined as never), "InvalidArgumentError", "Expected an options object for options but received undefined");
  });

  test("device cuda on a machine without a usable GPU throws BackendUnavailableError with the reason", () => {
    expectError(() => new KVCache({ ...base, device: "cuda" }), "BackendUnavailableError", /^device "cuda" was requested but cannot be used: .+\. Use device "cpu" or "auto"\.$/);
  });

  test("errors carry stable codes and are lukv error classes", () => {
    const { InvalidArgumentError, LukvError } = require("../ts");
    try {
      new KVCache({ ...base, layers: 0 });
    } catch (e) {
      expect(e).toBeInstanceOf(InvalidArgumentError);
      expect(e).toBeInstanceOf(LukvError);
      expect((e as { code: string }).code).toBe("ERR_LUKV_INVALID_ARGUMENT");
    }
  });
});

describe("append and attend arguments", () => {
  let cache: KVCache;
  let seq: Sequence;
  beforeEach(() => {
    cache = new KVCache(base);
    seq = cache.createSequence();
  });
  afterEach(() => cache.dispose());

  const row = base.kvHeads * base.headDim;
  test("layer out of range", () => {
    expectError(() => seq.append(2, new Float32Array(row), new Float32Array(row)), "InvalidArgumentError", "Expected integer between 0 and 1 for layer but received 2 of type number");
    expectError(() => seq.attend(-1, new Float32Array(32)), "InvalidArgumentError", "Expected integer between 0 and 1 for layer but received -1 of type number");
    expectError(() => seq.positions(0, 2), "InvalidArgumentError", "Expected integer between 0 and 1 for head but received 2 of type number");
  });
  test("wrong length for the shape", () => {
    expectError(() => seq.append(0, new Float32Array(row + 1), new Float32Array(row + 1)), "InvalidArgumentError", "Expected a non-empty length that is a multiple of 16 ([tokens, kvHeads, headDim]) for keys but received Float32Array(17)");
    expectError(() => seq.append(0, new Float32Array(0), new Float32Array(0)), "InvalidArgumentError", "Expected a non-empty length that is a multiple of 16 ([tokens, kvHeads, headDim]) for keys but received Float32Array(0)");
    expectError(() => seq.append(0, new Float32Array(row), new Float32Array(2 * row)), "InvalidArgumentError", "Expected 1 tokens like keys (length 16) for values but received Float32Array(32)");
  });
  test("wrong array type", () => {
    expectError(() => seq.append(0, new Float64Array(row) as never, new Float32Array(row)), "InvalidArgumentError", "Expected Float32Array for keys but received Float64Array(16)");
    expectError(() => seq.append(0, [1, 2] as never, new Float32Array(row)), "InvalidArgumentError", "Expected Float32Array for keys but received Array(2)");
    expectError(() => seq.append(0, new Uint16Array(row), new Uint16Array(row)), "InvalidArgumentError", "Expected Float32Array (the cache dtype is f32) for keys but received Uint16Array(16)");
    const c16 = new KVCache({ ...base, dtype: "f16" });
    const s16 = c16.createSequence();
    expectError(() => s16.append(0, new Float32Array(row), new Uint16Array(row)), "InvalidArgumentError", "Expected the same array type as keys (Float32Array(16)) for values but received Uint16Array(16)");
    expectError(() => s16.append(0, new Int16Array(row) as never, new Int16Array(row) as never), "InvalidArgumentError", "Expected Float32Array or Uint16Array (raw f16 bits) for keys but received Int16Array(16)");
    c16.dispose();
  });
  test("queries for more positions than appended", () => {
    const r = rng(seed);
    appendRandom(seq, 0, 3, r);
    const qrow = base.queryHeads * base.headDim;
    expectError(() => seq.attend(0, new Float32Array(4 * qrow)), "InvalidArgumentError", "Expected at most 3 tokens (the positions appended to layer 0) for queries but received 4 tokens");
    expectError(() => seq.attend(1, new Float32Array(qrow)), "InvalidArgumentError", "Expected at most 0 tokens (the positions appended to layer 1) for queries but received 1 tokens");
    expectError(() => seq.attend(0, new Float32Array(qrow + 3)), "InvalidArgumentError", "Expected a non-empty length that is a multiple of 32 ([tokens, queryHeads, headDim]) for queries but received Float32Array(35)");
    expectError(() => seq.attend(0, new Float32Array(qrow), { scale: NaN }), "InvalidArgumentError", "Expected finite number for scale but received NaN of type number");
  });
  test("out of the wrong type, length, or overlapping the queries", () => {
    const r = rng(seed + 2);
    const c = new KVCache({ ...base, observationWindow: 2 });
    try {
      const s = c.createSequence();
      appendRandom(s, 0, 4, r);
      const qrow = base.queryHeads * base.headDim;
      const q = randn(r, 2 * qrow);
      const before = s.attend(0, q);
      // SnapKV scores read the window of recent queries: a failed call must not add its queries.
      const scoresBefore = s.scores(0, "snapkv", { window: 2 });
      const other = randn(r, 2 * qrow);
      expectError(() => s.attend(0, other, { out: new Float64Array(2 * qrow) as never }), "InvalidArgumentError", "Expected Float32Array for out but received Float64Array(64)");
      expectError(() => s.attend(0, other, { out: new Float32Array(qrow) }), "InvalidArgumentError", "Expected a Float32Array of length 64 (the queries' length) for out but received Float32Array(32)");
      expectError(() => s.attend(0, other, { out: other }), "InvalidArgumentError", "Expected an array that does not overlap the queries for out but received Float32Array(64)");
      const shared = new Float32Array(3 * qrow);
      shared.set(other);
      expectError(
        () => s.attend(0, shared.subarray(0, 2 * qrow), { out: shared.subarray(qrow) }),
        "InvalidArgumentError",
        "Expected an array that does not overlap the queries for out but received Float32Array(64)",
      );
      expect(s.scores(0, "snapkv", { window: 2 })).toEqual(scoresBefore);
      // Adjacent views of one buffer do not overlap.
      const both = new Float32Array(4 * qrow);
      both.set(q);
      expect(s.attend(0, both.subarray(0, 2 * qrow), { out: both.subarray(2 * qrow) })).toEqual(before);
    } finally {
      c.dispose();
    }
  });
  const gone = (call: string) =>
    `out was detached or resized before ${call} finished: the attention ran (its queries joined the observation window, as in a call that succeeds) but its output was dropped`;
  test("attendAsync with out: a caller's array detached before the result is written rejects; the attention ran", async () => {
    const r = rng(seed + 3);
    appendRandom(seq, 0, 2, r);
    const qrow = base.queryHeads * base.headDim;
    // A twin from the saved state takes the same queries in a call that succeeds: the sequence must
    // end up as the twin does (observation window and the queries' bound, which save() records).
    const twin = seq.cache.loadSequence(seq.save());
    try {
      const queries = new Float32Array(qrow).fill(6.5);
      const out = new Float32Array(qrow);
      const p = seq.attendAsync(0, queries, { out });
      structuredClone(out.buffer, { transfer: [out.buffer] });
      await expect(p).rejects.toMatchObject({ name: "InvalidArgumentError", message: gone("attendAsync") });
      twin.attend(0, queries);
      expect(seq.save().equals(twin.save())).toBe(true);
    } finally {
      twin.dispose();
    }
  });
  test("attendBatchAsync: one detached out rejects the batch, no out is written, and the attention ran", async () => {
    const r = rng(seed + 4);
    const other = seq.cache.createSequence();
    try {
      appendRandom(seq, 0, 2, r);
      appendRandom(other, 0, 3, r);
      const qrow = base.queryHeads * base.headDim;
      const kept = new Float32Array(qrow).fill(7), lost = new Float32Array(qrow);
      const twins = [seq.cache.loadSequence(seq.save()), seq.cache.loadSequence(other.save())];
      const p = seq.cache.attendBatchAsync(0, [
        { sequence: seq, queries: new Float32Array(qrow).fill(0.5), out: kept },
        { sequence: other, queries: new Float32Array(qrow).fill(0.5), out: lost },
      ]);
      structuredClone(lost.buffer, { transfer: [lost.buffer] });
      await expect(p).rejects.toMatchObject({ name: "InvalidArgumentError", message: gone("attendBatchAsync") });
      expect(kept.every((x) => x === 7)).toBe(true);
      // Both sequences took their queries, as in a batch that succeeds.
      seq.cache.attendBatch(0, twins.map((t) => ({ sequence: t, queries: new Float32Array(qrow).fill(0.5) })));
      expect([seq.save().equals(twins[0].save()), other.save().equals(twins[1].save())]).toEqual([true, true]);
      twins.forEach((t) => t.dispose());
      // Without a detached array the same batch writes both.
      const outs = await seq.cache.attendBatchAsync(0, [
        { sequence: seq, queries: new Float32Array(qrow).fill(0.5), out: kept },
        { sequence: other, queries: new Float32Array(qrow).fill(0.5) },
      ]);
      expect(outs[0]).toBe(kept);
      expect(Array.from(kept)).toEqual(Array.from(seq.attend(0, new Float32Array(qrow).fill(0.5))));
      expect(Array.from(outs[1])).toEqual(Array.from(other.attend(0, new Float32Array(qrow).fill(0.5))));
    } finally {
      other.dispose();
    }
  });
  test("attendAsync rejects with the same typed error", async () => {
    await expect(seq.attendAsync(0, new Float32Array(32))).rejects.toMatchObject({
      name: "InvalidArgumentError",
      message: "Expected at most 0 tokens (the positions appended to layer 0) for queries but received 1 tokens",
    });
  });
});

describe("out of pages", () => {
  test("a failed append throws OutOfPagesError and changes nothing", () => {
    const r = rng(seed + 1);
    // 64 tokens per pool / pageSize 4 = 16 pages; 2 heads per layer.
    const cache = new KVCache(base);
    const a = cache.createSequence();
    const b = cache.createSequence();
    appendRandom(a, 0, 13, r); // 4 pages per head = 8 pages
    appendRandom(b, 1, 10, r); // 3 pages per head = 6 pages
    const before = {
      usage: cache.usage(),
      lengths: [a.lengths(), b.lengths()],
      keys: [a.keys(0, 0), a.keys(0, 1), a.values(0, 1), b.keys(1, 0)],
      positions: [a.positions(0, 1), b.positions(1, 1)],
    };
    const q = randn(r, base.queryHeads * base.headDim);
    const outBefore = a.attend(0, q);
    // 4 more tokens need 1 page per head in layer 0 (13 -> 17 tokens): 2 pages, 2 free: fits.
    // 8 more need 2 per head: 4 pages, only 2 free.
    const k = randn(r, 8 * base.kvHeads * base.headDim);
    expectError(() => a.append(0, k, k), "OutOfPagesError", "append needs 4 free pages but the pool has 2 of 16 (maxTokens 64, pageSize 4); nothing was appended");
    expect(cache.usage()).toEqual(before.usage);
    expect(a.lengths()).toEqual(before.lengths[0]);
    expect(b.lengths()).toEqual(before.lengths[1]);
    expect([a.keys(0, 0), a.keys(0, 1), a.values(0, 1), b.keys(1, 0)]).toEqual(before.keys);
    expect([a.positions(0, 1), b.positions(1, 1)]).toEqual(before.positions);
    expect(a.appended(0)).toBe(13);
    expect(a.attend(0, q)).toEqual(outBefore);
    // The pool is still usable after the failure.
    appendRandom(a, 0, 3, r);
    expect(Array.from(a.lengths())).toEqual([16, 16, 0, 0]);
    cache.dispose();
  });
});

describe("dispose", () => {
  test("any use after dispose throws; dispose is idempotent", () => {
    const r = rng(seed + 2);
    const cache = new KVCache(base);
    const seq = cache.createSequence();
    appendRandom(seq, 0, 2, r);
    seq.dispose();
    seq.dispose();
    expect(seq.disposed).toBe(true);
    expectError(() => seq.lengths(), "DisposedError", "Sequence was used after dispose()");
    expectError(() => seq.append(0, new Float32Array(16), new Float32Array(16)), "DisposedError", "Sequence was used after dispose()");
    expect(cache.usage().pagesUsed).toBe(0);
    const other = cache.createSequence();
    cache.dispose();
    cache.dispose();
    expect(cache.disposed).toBe(true);
    expect(other.disposed).toBe(true);
    expectError(() => cache.usage(), "DisposedError", "KVCache was used after dispose()");
    expectError(() => cache.createSequence(), "DisposedError", "KVCache was used after dispose()");
    expectError(() => other.attend(0, new Float32Array(32)), "DisposedError", "Sequence was used after dispose()");
    other.dispose();
  });

  test("Symbol.dispose releases pages", () => {
    const r = rng(seed + 3);
    const cache = new KVCache(base);
    {
      const seq = cache.createSequence();
      appendRandom(seq, 0, 5, r);
      expect(cache.usage().pagesUsed).toBe(4);
      seq[Symbol.dispose]();
    }
    expect(cache.usage().pagesUsed).toBe(0);
    cache[Symbol.dispose]();
    expect(cache.disposed).toBe(true);
  });

  test("attendAsync in flight when the cache is disposed settles without crashing", async () => {
    const r = rng(seed + 4);
    const cache = new KVCache({ ...base, headDim: 64, maxTokens: 8192 });
    const seq = cache.createSequence();
    appendRandom(seq, 0, 1000, r);
    const p = seq.attendAsync(0, randn(r, 4 * 64));
    cache.dispose();
    const result = await p.then(
      (v) => ({ ok: true as const, v }),
      (e) => ({ ok: false as const, e }),
    );
    if (result.ok) expect(result.v.length).toBe(256);
    else expect((result.e as Error).name).toBe("DisposedError");
  });
});

describe("fork", () => {
  test("a fork shares pages and diverges on write", () => {
    const r = rng(seed + 5);
    const cache = new KVCache({ ...base, maxTokens: 256 });
    const a = cache.createSequence();
    appendRandom(a, 0, 6, r); // 2 pages per head, the second half full
    const used = cache.usage().pagesUsed;
    const b = a.fork();
    expect(cache.usage().pagesUsed).toBe(used);
    const aKeys = a.keys(0, 1);
    appendRandom(b, 0, 1, r); // copies the shared last page of each head
    expect(cache.usage().pagesUsed).toBe(used + 2);
    expect(a.keys(0, 1)).toEqual(aKeys);
    expect(b.keys(0, 1).subarray(0, aKeys.length)).toEqual(aKeys);
    expect(Array.from(a.lengths())).toEqual([6, 6, 0, 0]);
    expect(Array.from(b.lengths())).toEqual([7, 7, 0, 0]);
    a.dispose();
    expect(b.keys(0, 1).subarray(0, aKeys.length)).toEqual(aKeys);
    b.dispose();
    expect(cache.usage().pagesUsed).toBe(0);
    cache.dispose();
  });
});

describe("checks of small entry points", () => {
  test("toBits, fromBits and roundTo refuse a dtype they do not know (a typo was taken for bf16) and non-arrays", () => {
    const { toBits, fromBits, roundTo } = require("../ts") as typeof import("../ts");
    for (const dtype of ["F16", "fp16", "f32", "half", undefined]) {
      expectError(() => toBits([1.1], dtype as "f16"), "InvalidArgumentError", /^Expected "f16" or "bf16" for dtype but received/);
      expectError(() => fromBits(Uint16Array.of(0x3c00), dtype as "f16"), "InvalidArgumentError", /^Expected "f16" or "bf16" for dtype/);
    }
    expectError(() => roundTo([1.1], "F32" as "f32"), "InvalidArgumentError", /^Expected "f32" or "f16" or "bf16" for dtype/);
    expectError(() => toBits(null as unknown as number[], "f16"), "InvalidArgumentError", /^Expected an array or typed array for values but received null/);
    expectError(() => roundTo(undefined as unknown as number[], "f16"), "InvalidArgumentError", /for values/);
    expectError(() => fromBits(5 as unknown as Uint16Array, "bf16"), "InvalidArgumentError", /for bits/);
    expect(Array.from(toBits([1.1], "f16"))).toEqual([0x3c66]);
    expect(Array.from(fromBits(Uint16Array.of(0x3c00), "f16"))).toEqual([1]);
    expect(Array.from(roundTo([1.1], "bf16"))).toEqual([1.1015625]);
  });

  test("accumulateAttention takes a boolean only (\"false\" turned accumulation on)", () => {
    const cache = new KVCache(base);
    const seq = cache.createSequence();
    for (const on of ["false", "off", {}, 0, null]) expectError(() => seq.accumulateAttention(on as boolean), "InvalidArgumentError", /for on but received/);
    // Still off: h2o scores need the mass.
    appendRandom(seq, 0, 8, rng(seed));
    expectError(() => seq.scores(0, "h2o", { window: 2 }), "InvalidArgumentError", /accumulateAttention/);
    seq.accumulateAttention(true);
    expect(seq.scores(0, "h2o", { window: 2 })).toHaveLength(2);
    cache.dispose();
  });

  test("null is the default for scale, budget, budgets and observationQueries as for the other options", () => {
    const a = new KVCache(base), b = new KVCache(base);
    const [x, y] = [a.createSequence(), b.createSequence()];
    for (const seq of [x, y]) for (let l = 0; l < 2; l++) appendRandom(seq, l, 12, rng(seed + l));
    const q = Float32Array.from({ length: 4 * 8 }, (_, i) => Math.sin(i));
    expect(Array.from(x.attend(0, q, { scale: null as unknown as undefined }))).toEqual(Array.from(y.attend(0, q)));
    const nulls = { scale: null, budget: null, budgets: null, observationQueries: null } as unknown as object;
    const rx = x.compress({ ratio: 0.5, scorer: "knorm", sink: 0, window: 2, ...nulls });
    const ry = y.compress({ ratio: 0.5, scorer: "knorm", sink: 0, window: 2 });
    expect(rx.total).toBe(24);
    expect([Array.from(rx.kept), Array.from(x.lengths())]).toEqual([Array.from(ry.kept), Array.from(y.lengths())]);
    a.dispose();
    b.dispose();
  });

  test("new Sequence() is refused: sequences come from the cache", () => {
    const cache = new KVCache(base);
    const seq = cache.createSequence();
    const Ctor = Sequence as unknown as new (...a: unknown[]) => Sequence;
    expectError(() => new Ctor(), "InvalidArgumentError", /Sequences are made by cache.createSequence\(\)/);
    // A second handle to a live sequence would get round its busy checks and dispose it under it.
    expectError(() => new Ctor(cache, 0), "InvalidArgumentError", /not by new Sequence\(\)/);
    const fromNative = (Sequence as unknown as { fromNative: (...a: unknown[]) => Sequence }).fromNative;
    expectError(() => fromNative(Symbol("lukv.Sequence"), cache, 0), "InvalidArgumentError", /not by new Sequence\(\)/);
    expect(seq.lengths()).toHaveLength(4);
    cache.dispose();
  });
});
