// Batched steps (attendBatch, appendBatch and their async variants) against per-sequence calls and
// the float64 reference: mixed lengths, forks, eviction (heads left empty), dtypes, GQA, decode rows
// and prefill chunks in one batch; all-or-nothing appends; checks; call order with queued work.
import { KVCache, Sequence, DType, toBits, roundTo, AttendBatchItem, SequenceBusyError } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";
import { referenceAttention, relativeError } from "./helpers/reference";
import { headsOf, lastPositions } from "./helpers/cache";

const seed = testSeed("batch");
const tolerance: Record<DType, number> = { f32: 1e-5, f16: 2e-3, bf16: 2e-3 };

function rows(seq: Sequence, tokens: number, r: () => number, per: "kv" | "q"): Float32Array {
  const { kvHeads, queryHeads, headDim } = seq.cache.config;
  return randn(r, tokens * (per === "kv" ? kvHeads : queryHeads) * headDim);
}

function append(seq: Sequence, layer: number, tokens: number, r: () => number): void {
  seq.append(layer, rows(seq, tokens, r, "kv"), rows(seq, tokens, r, "kv"));
}

function bits(a: Float32Array): string {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString("hex");
}

/** Sequences of mixed shapes: short and long, a fork sharing pages, and one to be evicted (last). */
function mixedSequences(cache: KVCache, r: () => number, long = 300): Sequence[] {
  const { layers } = cache.config;
  const lengths = [1, 7, 40, long];
  const seqs = lengths.map((n) => {
    const s = cache.createSequence();
    for (let l = 0; l < layers; l++) append(s, l, n, r);
    return s;
  });
  // A fork: shares the long sequence's pages, then grows apart from it.
  const fork = seqs[3].fork();
  for (let l = 0; l < layers; l++) append(fork, l, 5, r);
  seqs.push(fork);
  const evicted = cache.createSequence();
  for (let l = 0; l < layers; l++) append(evicted, l, 50, r);
  seqs.push(evicted);
  return seqs;
}

/**
 * Keeps only the newest token on head 0 of every layer (9 on the others): after a prefill chunk
 * was appended, its earlier query rows then see no token at all on head 0.
 */
function evictToNewest(seq: Sequence): void {
  const { layers, kvHeads } = seq.cache.config;
  const budgets = Int32Array.from({ length: layers * kvHeads }, (_, i) => (i % kvHeads === 0 ? 1 : 9));
  seq.compress({ budgets, scorer: "knorm", sink: 0, window: 1 });
  expect(seq.lengths()[0]).toBe(1);
}

describe("attendBatch equals per-sequence attend", () => {
  const cases: { dtype: DType; group: number; pageSize: number }[] = [];
  for (const dtype of ["f32", "f16", "bf16"] as DType[]) for (const group of [1, 4]) cases.push({ dtype, group, pageSize: group === 1 ? 16 : 3 });

  test.each(cases)("$dtype, GQA $group, pageSize $pageSize: decode rows and prefill chunks, forks, evicted heads", ({ dtype, group, pageSize }) => {
    const r = rng(seed ^ (group * 7919 + dtype.length * 31 + pageSize));
    const kvHeads = 2, headDim = 32;
    const cache = new KVCache({ layers: 2, kvHeads, queryHeads: kvHeads * group, headDim, pageSize, maxTokens: 8192, dtype, threads: 2, device: "cpu" });
    try {
      const seqs = mixedSequences(cache, r);
      const layer = 1;
      // Prefill chunks on some sequences (rows appended just before), one decode row on the others.
      const tokens = seqs.map((_, i) => (i % 2 === 0 ? 1 : 5));
      seqs.forEach((s, i) => append(s, layer, tokens[i], r));
      evictToNewest(seqs[seqs.length - 1]);
      expect(tokens[seqs.length - 1]).toBe(5);
      const queries = seqs.map((s, i) => rows(s, tokens[i], r, "q"));
      // Raw 16-bit queries for one item where the dtype has them.
      const given: (Float32Array | Uint16Array)[] = queries.map((q, i) => (dtype !== "f32" && i === 1 ? toBits(q, dtype) : q));
      const asF32 = given.map((q, i) => (q instanceof Uint16Array ? roundTo(queries[i], dtype) : queries[i]));
      const batched = cache.attendBatch(layer, seqs.map((sequence, i) => ({ sequence, queries: given[i] })));
      expect(batched).toHaveLength(seqs.length);
      seqs.forEach((s, i) => {
        const single = s.attend(layer, given[i]);
        expect({ item: i, bits: bits(batched[i]) }).toEqual({ item: i, bits: bits(single) });
        const ref = referenceAttention(headsOf(s, layer), asF32[i], lastPositions(s, layer, tokens[i]), cache.config.queryHeads, headDim);
        expect({ item: i, close: relativeError(batched[i], ref) < tolerance[dtype] || (ref.every((v) => v === 0) && batched[i].every((v) => v === 0)) }).toEqual({ item: i, close: true });
      });
    } finally {
      cache.dispose();
    }
  });

  test("long sequences split over the threads (split-K inside the batch) and a given scale and out", () => {
    const r = rng(seed ^ 0x51);
    const cache = new KVCache({ layers: 1, kvHeads: 1, queryHeads: 4, headDim: 64, pageSize: 16, maxTokens: 1 << 14, dtype: "f16", threads: 2, device: "cpu" });
    try {
      const seqs = [3000, 2500, 9].map((n) => {
        const s = cache.createSequence();
        append(s, 0, n, r);
        return s;
      });
      const qs = seqs.map((s) => rows(s, 1, r, "q"));
      const outs = seqs.map((_, i) => (i === 1 ? new Float32Array(qs[i].length) : undefined));
      const batched = cache.attendBatch(0, seqs.map((sequence, i) => ({ sequence, queries: qs[i], out: outs[i] })), { scale: 0.3 });
      expect(batched[1]).toBe(outs[1]);
      seqs.forEach((s, i) => expect(bits(batched[i])).toBe(bits(s.attend(0, qs[i], { scale: 0.3 }))));
      const ref = referenceAttention(headsOf(seqs[0], 0), qs[0], lastPositions(seqs[0], 0, 1), 4, 64, 0.3);
      expect(relativeError(batched[0], ref)).toBeLessThan(2e-3);
    } finally {
      cache.dispose();
    }
  });

  test("accumulated attention mass (h2o) and the observation window are those of single calls", () => {
    const r = rng(seed ^ 0x77);
    const cache = new KVCache({ layers: 1, kvHeads: 2, queryHeads: 4, headDim: 16, pageSize: 4, maxTokens: 4096, dtype: "f32", threads: 2, device: "cpu" });
    try {
      const a = cache.createSequence();
      append(a, 0, 30, r);
      a.accumulateAttention(true);
      const twin = a.fork(); // same rows, same (empty) mass
      const other = cache.createSequence();
      append(other, 0, 12, r);
      for (let step = 0; step < 3; step++) {
        const q = rows(a, 2, r, "q");
        cache.attendBatch(0, [{ sequence: other, queries: rows(other, 1, r, "q") }, { sequence: a, queries: q }]);
        twin.attend(0, q);
      }
      const ma = a.scores(0, "h2o", { window: 6 }), mt = twin.scores(0, "h2o", { window: 6 });
      expect(ma.map(bits)).toEqual(mt.map(bits));
      const sa = a.scores(0, "snapkv", { window: 6 }), st = twin.scores(0, "snapkv", { window: 6 });
      expect(sa.map(bits)).toEqual(st.map(bits));
    } finally {
      cache.dispose();
    }
  });
});

describe("appendBatch", () => {
  test("equals appends one by one, Float32Array and raw bits", () => {
    const r = rng(seed ^ 0x99);
    for (const raw of [false, true]) {
      const cache = new KVCache({ layers: 2, kvHeads: 2, headDim: 8, pageSize: 4, maxTokens: 2048, dtype: "bf16", device: "cpu" });
      try {
        const a = [cache.createSequence(), cache.createSequence(), cache.createSequence()];
        append(a[0], 1, 6, r);
        const b = a.map((s) => s.fork());
        const tokens = [3, 1, 9];
        const kv = tokens.map((n) => [randn(r, n * 16), randn(r, n * 16)]).map(([k, v]) => (raw ? [toBits(k, "bf16"), toBits(v, "bf16")] : [k, v]));
        cache.appendBatch(1, a.map((sequence, i) => ({ sequence, keys: kv[i][0], values: kv[i][1] })));
        b.forEach((s, i) => s.append(1, kv[i][0], kv[i][1]));
        a.forEach((s, i) => {
          expect(Array.from(s.lengths())).toEqual(Array.from(b[i].lengths()));
          expect(s.appended(1)).toBe(b[i].appended(1));
          for (let h = 0; h < 2; h++) {
            expect(bits(s.keys(1, h))).toBe(bits(b[i].keys(1, h)));
            expect(bits(s.values(1, h))).toBe(bits(b[i].values(1, h)));
            expect(Array.from(s.positions(1, h))).toEqual(Array.from(b[i].positions(1, h)));
          }
        });
      } finally {
        cache.dispose();
      }
    }
  });

  test("out of pages: nothing of the batch is appended; forks behind one shared page need one copy", () => {
    const r = rng(seed ^ 0xaa);
    // 2 pages of 4 tokens, one KV head.
    const cache = new KVCache({ layers: 1, kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 8, dtype: "f32", device: "cpu" });
    try {
      const p = cache.createSequence();
      append(p, 0, 2, r);
      const c = p.fork(); // both end in the same partly filled page: 1 page used, 1 free
      const kv = () => ({ keys: randn(r, 4), values: randn(r, 4) });
      const before = { usage: cache.usage(), p: bits(p.keys(0, 0)), c: bits(c.keys(0, 0)) };
      // 3 rows into p need a copy of the shared page and a second page: 2 pages, 1 free.
      expect(() => cache.appendBatch(0, [{ sequence: c, ...kv() }, { sequence: p, keys: randn(r, 12), values: randn(r, 12) }])).toThrow(
        expect.objectContaining({ name: "OutOfPagesError", message: expect.stringContaining("nothing was appended") }),
      );
      expect({ usage: cache.usage(), p: bits(p.keys(0, 0)), c: bits(c.keys(0, 0)) }).toEqual(before);
      expect([p.appended(0), c.appended(0)]).toEqual([2, 2]);
      // One row each: the first copies the shared page, the second then owns it: 1 page in all.
      const a = kv(), b = kv();
      cache.appendBatch(0, [{ sequence: p, ...a }, { sequence: c, ...b }]);
      expect(cache.usage().pagesUsed).toBe(2);
      expect(Array.from(p.keys(0, 0).subarray(8))).toEqual(Array.from(a.keys));
      expect(Array.from(c.keys(0, 0).subarray(8))).toEqual(Array.from(b.keys));
    } finally {
      cache.dispose();
    }
  });

  test("a bad item fails the whole batch, named by its index", () => {
    const r = rng(seed ^ 0xbb);
    const cache = new KVCache({ layers: 1, kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 64, dtype: "f16", device: "cpu" });
    try {
      const s = [cache.createSequence(), cache.createSequence()];
      const good = { keys: randn(r, 8), values: randn(r, 8) };
      const nan = randn(r, 8);
      nan[5] = NaN;
      expect(() => cache.appendBatch(0, [{ sequence: s[0], ...good }, { sequence: s[1], keys: nan, values: good.values }])).toThrow(
        "Expected finite numbers for items[1].keys but received NaN at index 5 (token 1, head 0, element 1)",
      );
      expect(() => cache.appendBatch(0, [{ sequence: s[0], ...good }, { sequence: s[1], keys: good.keys, values: randn(r, 4) }])).toThrow(
        "Expected 2 tokens like keys (length 8) for items[1].values but received Float32Array(4)",
      );
      expect(() => cache.appendBatch(0, [{ sequence: s[0], ...good }, { sequence: s[1], keys: toBits(good.keys, "f16"), values: toBits(good.values, "f16") }])).toThrow(
        "Expected the same array type as items[0].keys (Float32Array) for items[1].keys but received Uint16Array(8)",
      );
      expect(() => cache.appendBatch(0, [{ sequence: s[0], ...good }, { sequence: s[0], ...good }])).toThrow(
        /Expected a sequence not already in the batch \(it is items\[0\]\.sequence\) for items\[1\]\.sequence/,
      );
      expect(cache.usage().pagesUsed).toBe(0);
      expect([s[0].appended(0), s[1].appended(0)]).toEqual([0, 0]);
      cache.appendBatch(0, []);
      expect(cache.usage().pagesUsed).toBe(0);
    } finally {
      cache.dispose();
    }
  });

  // The batch scans every item's keys and values in one call: an item's bad value is still named
  // (the first in item order, keys before values), and each item's bounds are its own.
  test("values scanned for the whole batch: the first bad one named, each sequence's bounds its own", () => {
    const r = rng(seed ^ 0xbd);
    for (const raw of [false, true]) {
      const cache = new KVCache({ layers: 1, kvHeads: 1, queryHeads: 1, headDim: 4, pageSize: 4, maxTokens: 64, dtype: "f16", device: "cpu" });
      try {
        const s = [cache.createSequence(), cache.createSequence(), cache.createSequence()];
        const rows = (a: Float32Array) => (raw ? toBits(a, "f16") : a);
        const good = () => ({ keys: rows(randn(r, 8)), values: rows(randn(r, 8)) });
        const bad = randn(r, 8);
        bad[6] = raw ? Infinity : 70000; // raw: an infinity's bits; f32: beyond f16's range
        const badValues = { keys: rows(randn(r, 8)), values: rows(bad) };
        const badKeys = { keys: rows(bad), values: rows(randn(r, 8)) };
        const message = raw
          ? "Expected finite numbers for items[1].values but received Infinity at index 6 (token 1, head 0, element 2)"
          : "Expected numbers that f16 can hold (magnitude below 65520) for items[1].values but received 70000 at index 6 (token 1, head 0, element 2); scale the inputs down or use a wider dtype";
        expect(() => cache.appendBatch(0, [{ sequence: s[0], ...good() }, { sequence: s[1], ...badValues }, { sequence: s[2], ...badKeys }])).toThrow(message);
        expect(cache.usage().pagesUsed).toBe(0);
        // A later item's getter that throws comes after an earlier item's bad value, as item by item
        const throwing = { sequence: s[2], get keys(): Float32Array { throw new Error("getter"); }, values: rows(randn(r, 8)) };
        expect(() => cache.appendBatch(0, [{ sequence: s[0], ...good() }, { sequence: s[1], ...badValues }, throwing as never])).toThrow(message);
        // Large keys in one item only: its queries are bounded by them, the others' are not.
        const big = new Float32Array(8).fill(2 ** 14);
        cache.appendBatch(0, [{ sequence: s[0], ...good() }, { sequence: s[1], keys: rows(big), values: rows(randn(r, 8)) }]);
        // 4 x 2^110 x 2^14 is past 2^120; against keys below 8, 4 x 2^110 x 8 is not
        const q = new Float32Array(4).fill(2 ** 110);
        expect(() => s[1].attend(0, q, { scale: 1 })).toThrow(/whose scores stay within float32/);
        expect(s[0].attend(0, q, { scale: 1 })).toHaveLength(4);
      } finally {
        cache.dispose();
      }
    }
  });

  test("goes through the onPressure policy: other sequences are compressed, then the whole batch fits", () => {
    const r = rng(seed ^ 0xcc);
    const cache = new KVCache({ layers: 1, kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 64, dtype: "f32", device: "cpu" });
    try {
      const big = cache.createSequence();
      append(big, 0, 60, r); // 15 of 16 pages
      const a = cache.createSequence(), b = cache.createSequence();
      const items = [{ sequence: a, keys: randn(r, 16), values: randn(r, 16) }, { sequence: b, keys: randn(r, 16), values: randn(r, 16) }];
      expect(() => cache.appendBatch(0, items)).toThrow(expect.objectContaining({ name: "OutOfPagesError" }));
      const events: string[] = [];
      cache.onPressure({ evict: "largest", scorer: "knorm", ratio: 0.5, sink: 0, window: 0, listener: (e) => events.push(`${e.sequence === big}:${e.requestedBy === a}`) });
      cache.appendBatch(0, items);
      expect(events).toEqual(["true:true"]);
      expect([a.appended(0), b.appended(0), big.lengths()[0]]).toEqual([4, 4, 30]);
      expect(cache.pressureStats.events).toBe(1);
    } finally {
      cache.dispose();
    }
  });
});

describe("batch checks", () => {
  const cache = new KVCache({ layers: 2, kvHeads: 1, queryHeads: 2, headDim: 4, pageSize: 4, maxTokens: 256, dtype: "f32", device: "cpu" });
  const other = new KVCache({ layers: 2, kvHeads: 1, queryHeads: 2, headDim: 4, maxTokens: 64, dtype: "f32", device: "cpu" });
  afterAll(() => {
    cache.dispose();
    other.dispose();
  });
  const r = rng(seed ^ 0xdd);
  const s0 = cache.createSequence(), s1 = cache.createSequence();
  for (const s of [s0, s1]) s.append(0, randn(r, 12), randn(r, 12));
  const q = () => randn(r, 8);

  test("empty batch, bad layer and items", () => {
    expect(cache.attendBatch(0, [])).toEqual([]);
    expect(() => cache.attendBatch(2, [])).toThrow("Expected integer between 0 and 1 for layer but received 2");
    expect(() => cache.attendBatch(0, {} as unknown as AttendBatchItem[])).toThrow("Expected an array of batch items for items but received object");
    expect(() => cache.attendBatch(0, [{ sequence: s0, queries: q() }, { sequence: s1, queries: q(), scale: 1 } as AttendBatchItem])).toThrow(
      'Expected only sequence, queries, out in items[1] but received "scale"',
    );
    expect(() => cache.attendBatch(0, [{ sequence: other.createSequence(), queries: q() }])).toThrow(/Expected a Sequence of this cache for items\[0\]\.sequence/);
    expect(() => cache.attendBatch(0, [{ sequence: s0, queries: q() }, { sequence: s0, queries: q() }])).toThrow(
      /Expected a sequence not already in the batch \(it is items\[0\]\.sequence\) for items\[1\]\.sequence/,
    );
    // Past 32 items the repeat is found by another path (a map instead of a scan): the same message.
    const many = Array.from({ length: 40 }, () => cache.createSequence());
    for (const s of many) s.append(0, randn(r, 4), randn(r, 4));
    const manyItems = many.map((sequence) => ({ sequence, queries: q() }));
    manyItems[37] = { sequence: many[3], queries: q() };
    expect(() => cache.attendBatch(0, manyItems)).toThrow(/Expected a sequence not already in the batch \(it is items\[3\]\.sequence\) for items\[37\]\.sequence/);
    expect(() => cache.attendBatch(0, manyItems.slice(0, 32).concat([{ sequence: many[31], queries: q() }]))).toThrow(
      /\(it is items\[31\]\.sequence\) for items\[32\]\.sequence/,
    );
    for (const s of many) s.dispose();
    expect(() => cache.attendBatch(0, [{ sequence: s0, queries: q() }, { sequence: s1, queries: randn(r, 7) }])).toThrow(
      "Expected a non-empty length that is a multiple of 8 ([tokens, queryHeads, headDim]) for items[1].queries but received Float32Array(7)",
    );
    expect(() => cache.attendBatch(1, [{ sequence: s0, queries: q() }])).toThrow(
      "Expected at most 0 tokens (the positions appended to layer 1) for items[0].queries but received 1 tokens",
    );
    const bad = q();
    bad[3] = Infinity;
    expect(() => cache.attendBatch(0, [{ sequence: s0, queries: q() }, { sequence: s1, queries: bad }])).toThrow(
      "Expected finite numbers for items[1].queries but received Infinity at index 3 (token 0, head 0, element 3)",
    );
    const shared = new Float32Array(16);
    expect(() => cache.attendBatch(0, [{ sequence: s0, queries: shared.subarray(0, 8) }, { sequence: s1, queries: q(), out: shared.subarray(4, 12) }])).toThrow(
      "Expected an array that does not overlap items[0].queries for items[1].out but received Float32Array(8)",
    );
    expect(() => cache.attendBatch(0, [{ sequence: s0, queries: q() }], { scale: NaN })).toThrow(/scale/);
  });

  test("outputs in one buffer that do not overlap are written like separate calls'", () => {
    const shared = new Float32Array(24);
    const qa = q(), qb = q();
    const got = cache.attendBatch(0, [{ sequence: s0, queries: qa, out: shared.subarray(0, 8) }, { sequence: s1, queries: qb, out: shared.subarray(16, 24) }]);
    expect(got[0].buffer).toBe(shared.buffer);
    expect(bits(shared.subarray(0, 8))).toBe(bits(s0.attend(0, qa)));
    expect(bits(shared.subarray(16, 24))).toBe(bits(s1.attend(0, qb)));
    expect(shared.subarray(8, 16).every((x) => x === 0)).toBe(true);
    // Two outputs over the same floats are refused, and neither is written.
    shared.fill(3);
    expect(() => cache.attendBatch(0, [{ sequence: s0, queries: q(), out: shared.subarray(0, 8) }, { sequence: s1, queries: q(), out: shared.subarray(4, 12) }])).toThrow(
      "Expected an array that does not overlap items[1].out for items[0].out but received Float32Array(8)",
    );
    expect(shared.every((x) => x === 3)).toBe(true);
  });

  test("two SharedArrayBuffer objects over one memory: overlaps are refused by address, disjoint parts accepted", () => {
    // structuredClone of a SharedArrayBuffer is another object over the same memory: the buffers
    // differ, the floats are the same.
    const sab = new SharedArrayBuffer(32 * 4);
    const view = (buffer: SharedArrayBuffer, at: number) => new Float32Array(buffer, at * 4, 8);
    const alias = structuredClone(sab);
    view(sab, 0).set(q());
    view(sab, 8).set(q());
    for (const s of [s0, s1]) s.attend(0, q()); // an observation row to score with
    const states = () => [s0, s1].map((s) => bits(s.scores(0, "snapkv", { window: 1, pooling: "none" })[0]));
    const before = states();
    expect(() => s0.attend(0, view(sab, 0), { out: view(alias, 4) })).toThrow(
      expect.objectContaining({ name: "InvalidArgumentError", message: "Expected an out array that does not share memory with the queries (two SharedArrayBuffer objects over one memory)" }),
    );
    expect(() => cache.attendBatch(0, [{ sequence: s0, queries: view(sab, 0) }, { sequence: s1, queries: view(sab, 8), out: view(alias, 4) }])).toThrow(
      expect.objectContaining({ name: "InvalidArgumentError", message: "Expected items[1].out not to share memory with items[0].queries (two SharedArrayBuffer objects over one memory)" }),
    );
    expect(() => cache.attendBatch(0, [{ sequence: s0, queries: q(), out: view(sab, 16) }, { sequence: s1, queries: q(), out: view(alias, 20) }])).toThrow(
      expect.objectContaining({ name: "InvalidArgumentError", message: "Expected items[1].out not to share memory with items[0].out (two SharedArrayBuffer objects over one memory)" }),
    );
    expect(states()).toEqual(before); // the refused calls remembered no query rows
    // Disjoint parts of the one memory: accepted, and as with separate arrays.
    const qa = view(sab, 0).slice(), qb = view(sab, 8).slice();
    const got = cache.attendBatch(0, [{ sequence: s0, queries: view(sab, 0), out: view(alias, 16) }, { sequence: s1, queries: view(alias, 8), out: view(sab, 24) }]);
    expect(got.map(bits)).toEqual([bits(s0.attend(0, qa)), bits(s1.attend(0, qb))]);
  });

  test("the number of query rows is checked against the positions appended, after every kind of append", async () => {
    const rowsOf = (n: number) => randn(r, n * 4);
    const tooMany = (n: number) => `Expected at most ${n} tokens (the positions appended to layer 0) for items[0].queries but received ${n + 1} tokens`;
    const check = (s: Sequence, n: number) => {
      expect(s.appended(0)).toBe(n);
      expect(() => cache.attendBatch(0, [{ sequence: s, queries: randn(r, (n + 1) * 8) }])).toThrow(tooMany(n));
      expect(cache.attendBatch(0, [{ sequence: s, queries: randn(r, n * 8) }])[0]).toHaveLength(n * 8);
    };
    const s = cache.createSequence();
    s.append(0, rowsOf(3), rowsOf(3));
    check(s, 3);
    cache.appendBatch(0, [{ sequence: s, keys: rowsOf(2), values: rowsOf(2) }]);
    check(s, 5);
    await cache.appendBatchAsync(0, [{ sequence: s, keys: rowsOf(1), values: rowsOf(1) }]);
    check(s, 6);
    // A failed append adds nothing.
    expect(() => s.append(0, rowsOf(1), randn(r, 3))).toThrow();
    check(s, 6);
    const child = s.fork();
    child.append(0, rowsOf(2), rowsOf(2));
    check(child, 8);
    check(s, 6);
    s.compress({ ratio: 0.5, scorer: "knorm", window: 1, sink: 0 });
    expect(s.lengths()[0]).toBeLessThan(6);
    check(s, 6);
    const loaded = cache.loadSequence(child.save());
    check(loaded, 8);
    for (const x of [s, child, loaded]) x.dispose();
  });

  test("disposed and busy sequences", async () => {
    const gone = cache.createSequence();
    gone.append(0, randn(r, 12), randn(r, 12));
    gone.dispose();
    expect(() => cache.attendBatch(0, [{ sequence: s0, queries: q() }, { sequence: gone, queries: q() }])).toThrow(
      expect.objectContaining({ name: "DisposedError", message: "Sequence of items[1] was used after dispose()" }),
    );
    const pending = s1.attendAsync(0, q());
    expect(() => cache.attendBatch(0, [{ sequence: s0, queries: q() }, { sequence: s1, queries: q() }])).toThrow(expect.objectContaining({ name: "SequenceBusyError" }));
    expect(() => cache.appendBatch(0, [{ sequence: s1, keys: randn(r, 4), values: randn(r, 4) }])).toThrow(expect.objectContaining({ name: "SequenceBusyError" }));
    await pending;
    expect(cache.attendBatch(0, [{ sequence: s0, queries: q() }, { sequence: s1, queries: q() }])).toHaveLength(2);
  });

  // The addon checks the batch's queries and reports each item's largest |q|, which its sequence
  // remembers for the scorers that read the observation window, as a single attend's.
  test("each item's queries' bound is remembered; without checkFinite the batch takes what attend takes", async () => {
    const shape = { layers: 1, kvHeads: 1, queryHeads: 2, headDim: 2, pageSize: 4, maxTokens: 64, dtype: "f32", device: "cpu" } as const;
    const checked = new KVCache(shape);
    const unchecked = new KVCache({ ...shape, checkFinite: false });
    try {
      const [a, b] = [checked.createSequence(), checked.createSequence()];
      // Zero keys: any query scores 0, so only q x scale bounds the queries
      for (const s of [a, b]) s.append(0, new Float32Array(2), Float32Array.from([1, 2]));
      checked.attendBatch(0, [{ sequence: a, queries: Float32Array.from([1, 2, 3, 4]) }, { sequence: b, queries: new Float32Array(4).fill(-1e38) }], { scale: 1e-30 });
      expect(() => b.scores(0, "snapkv", { window: 1, scale: 10 })).toThrow(/max\|q\| 1e\+38 with scale 10/);
      expect(Array.from(a.scores(0, "snapkv", { window: 1, scale: 10 }))).toHaveLength(1);
      // The same off the main thread; a refused batch rejects without ever being pending.
      const [e, f] = [checked.createSequence(), checked.createSequence()];
      for (const s of [e, f]) s.append(0, new Float32Array(2), Float32Array.from([1, 2]));
      const refused = checked.attendBatchAsync(0, [{ sequence: e, queries: Float32Array.from([1, 2, 3, 4]) }, { sequence: f, queries: Float32Array.from([0, 0, NaN, 0]) }]);
      expect([e.pending, f.pending]).toEqual([0, 0]);
      await expect(refused).rejects.toMatchObject({ name: "InvalidArgumentError", message: "Expected finite numbers for items[1].queries but received NaN at index 2 (token 0, head 1, element 0)" });
      await checked.attendBatchAsync(0, [{ sequence: e, queries: Float32Array.from([1, 2, 3, 4]) }, { sequence: f, queries: new Float32Array(4).fill(-1e38) }], { scale: 1e-30 });
      expect(() => f.scores(0, "snapkv", { window: 1, scale: 10 })).toThrow(/max\|q\| 1e\+38 with scale 10/);
      expect(Array.from(e.scores(0, "snapkv", { window: 1, scale: 10 }))).toHaveLength(1);

      const [c, d] = [unchecked.createSequence(), unchecked.createSequence()];
      for (const s of [c, d]) s.append(0, Float32Array.from([1, 0]), Float32Array.from([1, 2]));
      const nan = Float32Array.from([NaN, 0, 1, 0]);
      const got = unchecked.attendBatch(0, [{ sequence: c, queries: nan }, { sequence: d, queries: Float32Array.from([1, 0, 1, 0]) }]);
      expect(bits(got[0])).toBe(bits(c.attend(0, nan)));
      expect(Array.from(got[1])).toEqual([1, 2, 1, 2]);
    } finally {
      checked.dispose();
      unchecked.dispose();
    }
  });
});

// A batch's items are read once, before anything else of the batch is decided: an item's getter can
// run any code, another batch or an async call on a sequence of this batch included.
describe("items whose getters call the cache", () => {
  const shape = { layers: 1, kvHeads: 1, queryHeads: 2, headDim: 4, pageSize: 4, maxTokens: 256, dtype: "f32", device: "cpu" } as const;
  const r = rng(seed ^ 0x6e7);
  const setup = () => {
    const cache = new KVCache(shape);
    const seqs = Array.from({ length: 4 }, () => cache.createSequence());
    for (const s of seqs) s.append(0, randn(r, 40 * 4), randn(r, 40 * 4));
    return { cache, seqs };
  };

  test("a getter that makes a batch of the same size: each item still attends over its own sequence", () => {
    const { cache, seqs } = setup();
    const twin = new KVCache(shape);
    try {
      const [a, b, c, d] = seqs;
      const q = seqs.map(() => randn(r, 8));
      // The same sequences in a second cache, for the expected outputs
      const copies = seqs.map((s) => twin.loadSequence(s.save()));
      let nested = false;
      const second = {
        get sequence() {
          if (!nested) {
            nested = true;
            cache.attendBatch(0, [{ sequence: c, queries: q[2] }, { sequence: d, queries: q[3] }]);
          }
          return b;
        },
        queries: q[1],
      };
      const got = cache.attendBatch(0, [{ sequence: a, queries: q[0] }, second]);
      expect(bits(got[0])).toBe(bits(copies[0].attend(0, q[0])));
      expect(bits(got[1])).toBe(bits(copies[1].attend(0, q[1])));
    } finally {
      cache.dispose();
      twin.dispose();
    }
  });

  test("a getter that raises an earlier item's key bound: the queries are checked against the new bound", () => {
    const { cache, seqs } = setup();
    try {
      const [a, b] = seqs;
      const q = new Float32Array(8).fill(2 ** 60);
      const second = {
        get sequence() {
          a.append(0, new Float32Array(4).fill(2 ** 60), new Float32Array(4));
          return b;
        },
        queries: randn(r, 8),
      };
      expect(() => cache.attendBatch(0, [{ sequence: a, queries: q }, second])).toThrow(/^Expected items\[0\]\.queries whose scores stay within float32/);
    } finally {
      cache.dispose();
    }
  });

  // The busy checks come after every item's arrays were read: a getter that starts an async call on
  // a sequence of the batch makes the synchronous batch throw, and nothing of it runs.
  test("a keys, values or queries getter that starts an async call on its sequence: the sync batch throws SequenceBusyError", async () => {
    const { cache, seqs } = setup();
    try {
      const [a, b] = seqs;
      const started: Promise<unknown>[] = [];
      const appended = () => seqs.map((s) => s.appended(0));
      const before = appended();
      const busy = (seq: Sequence) => {
        started.push(seq.attendAsync(0, randn(r, 8)));
      };
      const keysGetter = { sequence: b, get keys() { busy(b); return randn(r, 4); }, values: randn(r, 4) };
      expect(() => cache.appendBatch(0, [{ sequence: a, keys: randn(r, 4), values: randn(r, 4) }, keysGetter])).toThrow(SequenceBusyError);
      await Promise.all(started.splice(0));
      const valuesGetter = { sequence: a, keys: randn(r, 4), get values() { busy(a); return randn(r, 4); } };
      expect(() => cache.appendBatch(0, [valuesGetter, { sequence: b, keys: randn(r, 4), values: randn(r, 4) }])).toThrow(SequenceBusyError);
      await Promise.all(started.splice(0));
      expect(appended()).toEqual(before);
      // attendBatch's item-by-item checks (raw 16-bit queries): the same
      const f16 = new KVCache({ ...shape, dtype: "f16" });
      const x = f16.createSequence(), y = f16.createSequence();
      for (const s of [x, y]) s.append(0, randn(r, 8 * 4), randn(r, 8 * 4));
      const queriesGetter = { sequence: y, get queries() { started.push(y.attendAsync(0, randn(r, 8))); return new Uint16Array(8); } };
      expect(() => f16.attendBatch(0, [{ sequence: x, queries: new Uint16Array(8) }, queriesGetter])).toThrow(SequenceBusyError);
      await Promise.all(started.splice(0));
      f16.dispose();
    } finally {
      cache.dispose();
    }
  });

  // The item-by-item path (raw 16-bit queries) reads each item's fields once: a sequence getter
  // that answers differently the second time cannot have one sequence checked and another run.
  test("item-by-item checks: each field is read once, and the sequence checked is the one attended", () => {
    const f16 = new KVCache({ ...shape, dtype: "f16" });
    const twin = new KVCache({ ...shape, dtype: "f16" });
    try {
      const a = f16.createSequence(), b = f16.createSequence();
      a.append(0, randn(r, 40 * 4), randn(r, 40 * 4));
      b.append(0, randn(r, 2 * 4), randn(r, 2 * 4));
      const copy = twin.loadSequence(a.save());
      const q = new Uint16Array(20 * 8).map((_, i) => 0x3000 + (i % 97));
      let reads = 0, queryReads = 0;
      const item = {
        get sequence() {
          return reads++ === 0 ? a : b;
        },
        get queries() {
          queryReads++;
          return q;
        },
      };
      const [got] = f16.attendBatch(0, [item]);
      expect([reads, queryReads]).toEqual([1, 1]);
      expect(bits(got)).toBe(bits(copy.attend(0, q)));
      // appendBatch: rows of mixed types take the item-by-item checks, on the rows read once
      let keyReads = 0;
      const mixed = { sequence: b, get keys() { keyReads++; return new Uint16Array(4); }, values: new Uint16Array(4) };
      expect(() => f16.appendBatch(0, [{ sequence: a, keys: randn(r, 4), values: randn(r, 4) }, mixed])).toThrow(/items\[1\]\.keys/);
      expect(keyReads).toBe(1);
    } finally {
      f16.dispose();
      twin.dispose();
    }
  });

  test("a later item's getter that throws comes after an earlier item's bad field, as item by item", async () => {
    const { cache, seqs } = setup();
    try {
      const [a, b] = seqs;
      const throwing = { sequence: b, get queries(): Float32Array { throw new Error("getter"); } };
      const items = [{ sequence: a, queries: "x" as never }, throwing];
      expect(() => cache.attendBatch(0, items)).toThrow(/^Expected Float32Array .*for items\[0\]\.queries/);
      await expect(cache.attendBatchAsync(0, items)).rejects.toThrow(/^Expected Float32Array .*for items\[0\]\.queries/);
      // Alone, the getter's own error
      expect(() => cache.attendBatch(0, [throwing])).toThrow("getter");
    } finally {
      cache.dispose();
    }
  });

  test("attendBatchAsync: a getter that queues an async call on an earlier item's sequence: the batch runs after it", async () => {
    const { cache, seqs } = setup();
    const twin = new KVCache(shape);
    try {
      const [a, b] = seqs;
      const copy = twin.loadSequence(a.save());
      const qa = randn(r, 8);
      const options = { ratio: 0.25, scorer: "knorm", window: 2, sink: 0 } as const;
      let queued: Promise<unknown> | undefined;
      const second = {
        get sequence() {
          // The compression waits its turn behind the save: the batch must wait for both.
          queued ??= Promise.all([a.saveAsync(), a.compressAsync(options)]);
          return b;
        },
        queries: randn(r, 8),
      };
      const got = await cache.attendBatchAsync(0, [{ sequence: a, queries: qa }, second]);
      await queued;
      copy.compress(options);
      expect(bits(got[0])).toBe(bits(copy.attend(0, qa)));
    } finally {
      cache.dispose();
      twin.dispose();
    }
  });
});

describe("batches in call order with queued async calls", () => {
  test("appendBatchAsync, attendBatchAsync, compressAsync and single async calls take effect in call order", async () => {
    const r = rng(seed ^ 0xee);
    const cache = new KVCache({ layers: 1, kvHeads: 2, queryHeads: 4, headDim: 8, pageSize: 4, maxTokens: 4096, dtype: "f32", device: "cpu", threads: 2 });
    try {
      const a = cache.createSequence(), b = cache.createSequence();
      append(a, 0, 20, r);
      append(b, 0, 9, r);
      // Twins that replay the same calls synchronously, in the same order.
      const ta = a.fork(), tb = b.fork();
      const k1 = randn(r, 16), v1 = randn(r, 16), k2 = randn(r, 32), v2 = randn(r, 32);
      const k1Given = k1.slice();
      const q0 = randn(r, 32), q1 = randn(r, 32), qb = randn(r, 64), q2 = randn(r, 32);
      const compress = { ratio: 0.5, scorer: "knorm", sink: 0, window: 0 } as const;
      const order: string[] = [];
      const p0 = a.attendAsync(0, q0).then((o) => (order.push("a.attendAsync"), o));
      const p1 = cache.appendBatchAsync(0, [{ sequence: a, keys: k1, values: v1 }, { sequence: b, keys: k2, values: v2 }]).then(() => order.push("appendBatchAsync"));
      k1.fill(0); // read at the call: the rows appended are the ones given then
      // b's two query rows are the two rows the queued batch appends: accepted at the call.
      const p2 = cache.attendBatchAsync(0, [{ sequence: a, queries: q1 }, { sequence: b, queries: qb }]).then((o) => (order.push("attendBatchAsync"), o));
      const p3 = a.compressAsync(compress).then((rep) => (order.push("a.compressAsync"), rep));
      const p4 = cache.attendBatchAsync(0, [{ sequence: b, queries: randn(r, 32) }, { sequence: a, queries: q2 }]).then((o) => (order.push("attendBatchAsync 2"), o));
      expect(() => b.lengths()).toThrow(expect.objectContaining({ name: "SequenceBusyError" }));
      const [o0, , o2, rep, o4] = await Promise.all([p0, p1, p2, p3, p4]);
      expect(order).toEqual(["a.attendAsync", "appendBatchAsync", "attendBatchAsync", "a.compressAsync", "attendBatchAsync 2"]);
      expect(bits(o0)).toBe(bits(ta.attend(0, q0)));
      ta.append(0, k1Given, v1);
      tb.append(0, k2, v2);
      const e2 = cache.attendBatch(0, [{ sequence: ta, queries: q1 }, { sequence: tb, queries: qb }]);
      expect(o2.map(bits)).toEqual(e2.map(bits));
      expect(Array.from(rep.kept)).toEqual(Array.from(ta.compress(compress).kept));
      expect(bits(o4[1])).toBe(bits(ta.attend(0, q2)));
      expect(Array.from(a.lengths())).toEqual(Array.from(ta.lengths()));
    } finally {
      cache.dispose();
    }
  });

  test("a batch waits for async calls on any of its sequences; a failed batch releases them", async () => {
    const r = rng(seed ^ 0xef);
    const cache = new KVCache({ layers: 1, kvHeads: 1, queryHeads: 1, headDim: 4, pageSize: 4, maxTokens: 16, dtype: "f32", device: "cpu" });
    try {
      const a = cache.createSequence(), b = cache.createSequence();
      append(a, 0, 4, r);
      append(b, 0, 4, r);
      const order: string[] = [];
      const pb = b.attendAsync(0, randn(r, 4)).then(() => order.push("b"));
      // 3 pages free: 8 rows each need 4 → out of pages when its turn comes.
      const big = cache.appendBatchAsync(0, [{ sequence: a, keys: randn(r, 32), values: randn(r, 32) }, { sequence: b, keys: randn(r, 32), values: randn(r, 32) }]);
      const after = a.attendAsync(0, randn(r, 4)).then(() => order.push("a after"));
      await expect(big).rejects.toMatchObject({ name: "OutOfPagesError" });
      await Promise.all([pb, after]);
      expect(order).toEqual(["b", "a after"]);
      expect([a.appended(0), b.appended(0), a.pending, b.pending]).toEqual([4, 4, 0, 0]);
      // The rows it would have added no longer count for later checks.
      expect(() => a.attend(0, randn(r, 20))).toThrow("Expected at most 4 tokens (the positions appended to layer 0) for queries but received 5 tokens");
    } finally {
      cache.dispose();
    }
  });

  test("native batches over the same sequences in opposite orders, at once, do not deadlock and match", async () => {
    const r = rng(seed ^ 0xf1);
    const cache = new KVCache({ layers: 1, kvHeads: 2, queryHeads: 4, headDim: 16, pageSize: 8, maxTokens: 4096, dtype: "f32", device: "cpu", threads: 2 });
    try {
      const seqs = [0, 1, 2].map(() => cache.createSequence());
      seqs.forEach((s, i) => append(s, 0, 40 + 30 * i, r));
      const ids = seqs.map((s) => s.id);
      const q = seqs.map((s) => rows(s, 1, r, "q"));
      // Straight to the addon (the TypeScript queues would order them): the native locks must.
      const calls = Array.from({ length: 24 }, (_, k) => {
        const order = k % 2 ? [2, 0, 1] : [1, 2, 0];
        const outs = order.map((i) => new Float32Array(q[i].length));
        return cache.handle.attendBatchAsync(0, Int32Array.from(order, (i) => ids[i]), order.map((i) => q[i]), 0.25, outs).then(() => ({ order, outs }));
      });
      for (const { order, outs } of await Promise.all(calls)) order.forEach((i, j) => expect(bits(outs[j])).toBe(bits(seqs[i].attend(0, q[i], { scale: 0.25 }))));
    } finally {
      cache.dispose();
    }
  });
});
