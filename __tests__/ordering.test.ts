// Calls on one sequence take effect in call order: async calls wait for the ones before them, and a
// synchronous call on a sequence with async calls pending throws SequenceBusyError.
import { CompressOptions, KVCache, QueryStatistics, createProfile } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";

const seed = testSeed("ordering");
const shape = { layers: 2, kvHeads: 2, queryHeads: 8, headDim: 32 };

function filled(tokens: number, salt: number, maxTokens = 4096) {
  const r = rng(seed ^ salt);
  const cache = new KVCache({ ...shape, dtype: "f32", maxTokens, threads: 2 });
  const seq = cache.createSequence();
  const row = shape.kvHeads * shape.headDim;
  for (let l = 0; l < shape.layers; l++) seq.append(l, randn(r, tokens * row), randn(r, tokens * row));
  const q = randn(r, shape.queryHeads * shape.headDim);
  return { r, cache, seq, q, row };
}

function expectBusy(fn: () => unknown): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toMatchObject({ name: "SequenceBusyError", code: "ERR_LUKV_SEQUENCE_BUSY" });
  expect(String((caught as Error).message)).toMatch(/^Sequence has \d+ async calls? \(its own or a batch's \*Async calls\) pending; await (it|them) before a synchronous call/);
}

describe("call order on one sequence", () => {
  test("a synchronous append in the same tick as attendAsync is refused, and the attention sees the cache as it was at the call", async () => {
    for (let trial = 0; trial < 8; trial++) {
      const { r, cache, seq, q, row } = filled(200, trial);
      const before = seq.attend(0, q);
      const pending = seq.attendAsync(0, q);
      expectBusy(() => seq.append(0, randn(r, row), randn(r, row)));
      expect(await pending).toEqual(before);
      seq.append(0, randn(r, row), randn(r, row)); // allowed once settled
      expect(seq.appended(0)).toBe(201);
      cache.dispose();
    }
  });

  test("every synchronous method refuses while async work is pending; dispose does not", async () => {
    const { cache, seq, q } = filled(64, 1);
    const pending = seq.compressAsync({ ratio: 0.5, scorer: "knorm", sink: 0, window: 0 });
    expect(seq.pending).toBe(1);
    expectBusy(() => seq.lengths());
    expectBusy(() => seq.positions(0, 0));
    expectBusy(() => seq.appended(0));
    expectBusy(() => seq.attend(0, q));
    expectBusy(() => seq.compress({ ratio: 0.5, scorer: "knorm" }));
    expectBusy(() => seq.scores(0));
    expectBusy(() => seq.keys(0, 0));
    expectBusy(() => seq.fork());
    expectBusy(() => seq.accumulateAttention(true));
    expectBusy(() => seq.recordOracle());
    await pending;
    expect(seq.pending).toBe(0);
    expect(Array.from(seq.lengths())).toEqual(new Array(4).fill(32));
    // Another sequence of the same cache is not held up.
    const other = cache.createSequence();
    const p2 = seq.attendAsync(0, q);
    expect(other.lengths().length).toBe(4);
    await p2;
    // Disposing with calls queued: the queued ones reject with DisposedError.
    const a = seq.attendAsync(0, q);
    const b = seq.attendAsync(0, q);
    seq.dispose();
    const results = await Promise.allSettled([a, b]);
    expect(results[1]).toMatchObject({ status: "rejected", reason: { name: "DisposedError" } });
    cache.dispose();
  });

  test("attendAsync then compressAsync: the attention always sees the full cache, the compression follows", async () => {
    for (let trial = 0; trial < 10; trial++) {
      const { cache, seq, q } = filled(300, 100 + trial);
      const full = seq.attend(0, q);
      const a = seq.attendAsync(0, q);
      const c = seq.compressAsync({ ratio: 0.8, scorer: "knorm" });
      const after = seq.attendAsync(0, q);
      const [ra, rc, rafter] = await Promise.all([a, c, after]);
      expect(ra).toEqual(full);
      expect(rc.total).toBe(Math.round(0.2 * 300 * 4));
      expect(Array.from(seq.lengths())).toEqual(Array.from(rc.kept));
      expect(rafter).toEqual(seq.attend(0, q));
      expect(rafter).not.toEqual(full);
      cache.dispose();
    }
  });

  test("two queued compressAsync with LU-KV budgets: the second is fitted to what the first kept", async () => {
    const heads = shape.layers * shape.kvHeads, grid = 99;
    const table = new Float64Array(grid * heads);
    for (let g = 0; g < grid; g++) for (let i = 0; i < heads; i++) table[g * heads + i] = (g + 1) / 100;
    const profile = createProfile({ table, layers: shape.layers, kvHeads: shape.kvHeads });
    const run = async (queued: boolean): Promise<number[]> => {
      const { cache, seq } = filled(128, 7);
      const opts = { ratio: 0.5, allocation: "lukv" as const, profile, sink: 0, window: 0 };
      let totals: number[];
      if (queued) {
        const [x, y] = await Promise.all([seq.compressAsync(opts), seq.compressAsync(opts)]);
        totals = [x.before, x.total, y.before, y.total];
      } else {
        const x = seq.compress(opts);
        const y = seq.compress(opts);
        totals = [x.before, x.total, y.before, y.total];
      }
      cache.dispose();
      return totals;
    };
    const sync = await run(false);
    expect(sync).toEqual([512, 256, 256, 128]);
    expect(await run(true)).toEqual(sync);
  });

  test("a failed async call does not stop the ones queued after it", async () => {
    const { cache, seq, q } = filled(40, 3);
    const bad = seq.compressAsync({ budgets: new Int32Array(4).fill(1000) });
    const good = seq.attendAsync(0, q);
    await expect(bad).rejects.toMatchObject({ name: "InvalidArgumentError" });
    expect((await good).length).toBe(q.length);
    expect(seq.pending).toBe(0);
    cache.dispose();
  });
});

describe("what a queued call reads, and when", () => {
  const qrow = shape.queryHeads * shape.headDim;
  const heads = shape.layers * shape.kvHeads;

  test("compressAsync checks budgets against the lengths its turn finds (after the appends queued before it)", async () => {
    const run = async (queued: boolean) => {
      const { r, cache, seq, row } = filled(10, 21);
      const rows = Array.from({ length: shape.layers }, () => [randn(r, 10 * row), randn(r, 10 * row)]);
      const budgets = new Int32Array(heads).fill(15);
      let kept: number[];
      if (queued) {
        const appends = rows.map(([k, v], l) => cache.appendBatchAsync(l, [{ sequence: seq, keys: k, values: v }]));
        const report = await seq.compressAsync({ budgets, sink: 1, window: 1, scorer: "knorm" });
        await Promise.all(appends);
        kept = Array.from(report.kept);
        // Over the length the turn finds: rejected then, with that length.
        await expect(seq.compressAsync({ budgets: new Int32Array(heads).fill(16), scorer: "knorm", sink: 1, window: 1 })).rejects.toMatchObject({
          name: "InvalidArgumentError",
          message: "Expected budgets[0] (layer 0, head 0) between 0 and the head's length 15 but received 16",
        });
      } else {
        rows.forEach(([k, v], l) => seq.append(l, k, v));
        kept = Array.from(seq.compress({ budgets, sink: 1, window: 1, scorer: "knorm" }).kept);
      }
      const positions = Array.from({ length: heads }, (_, i) => Array.from(seq.positions(Math.floor(i / shape.kvHeads), i % shape.kvHeads)));
      cache.dispose();
      return { kept, positions };
    };
    const sync = await run(false);
    expect(sync.kept).toEqual(new Array(heads).fill(15));
    expect(await run(true)).toEqual(sync);
  });

  test("compressAsync reads its options at the call: observation queries, profile and query statistics changed afterwards change nothing", async () => {
    const grid = 99;
    const table = new Float64Array(grid * heads);
    for (let g = 0; g < grid; g++) for (let i = 0; i < heads; i++) table[g * heads + i] = Math.min(1, ((g + 1) / 100) * (0.4 + 0.4 * i));
    const cases: { name: string; options: () => CompressOptions; spoil: (o: CompressOptions) => void }[] = [
      {
        name: "observationQueries",
        options: () => ({ ratio: 0.6, scorer: "snapkv", window: 4, sink: 1, observationQueries: [0, 1].map((l) => randn(rng(seed ^ (31 + l)), 4 * qrow)) }),
        spoil: (o) => o.observationQueries!.forEach((q, l) => q!.set(randn(rng(seed ^ (41 + l)), q!.length, 3))),
      },
      {
        name: "profile",
        options: () => ({ ratio: 0.5, allocation: "lukv", profile: createProfile({ table, layers: shape.layers, kvHeads: shape.kvHeads }), scorer: "knorm", sink: 1, window: 1 }),
        spoil: (o) => o.profile!.table.reverse(),
      },
      {
        name: "expectedAttention.statistics",
        options: () => {
          const statistics = new QueryStatistics({ layers: shape.layers, queryHeads: shape.queryHeads, headDim: shape.headDim, skip: 0 });
          for (let l = 0; l < shape.layers; l++) statistics.add(l, randn(rng(seed ^ (51 + l)), 8 * qrow));
          return { ratio: 0.5, scorer: "expected-attention", expectedAttention: { statistics, rope: { theta: 10000 } }, sink: 1, window: 1 };
        },
        spoil: (o) => {
          for (let l = 0; l < shape.layers; l++) o.expectedAttention!.statistics.add(l, randn(rng(seed ^ (61 + l)), 64 * qrow, 5));
        },
      },
    ];
    for (const c of cases) {
      const kept = async (queued: boolean) => {
        const { cache, seq, q } = filled(40, 23);
        for (let l = 0; l < shape.layers; l++) seq.attend(l, q);
        const options = c.options();
        let report;
        if (queued) {
          const busy = seq.attendAsync(0, q); // the compression waits its turn behind it
          const pending = seq.compressAsync(options);
          c.spoil(options);
          await busy;
          report = await pending;
        } else report = seq.compress(options);
        const positions = Array.from({ length: heads }, (_, i) => Array.from(seq.positions(Math.floor(i / shape.kvHeads), i % shape.kvHeads)));
        cache.dispose();
        return { kept: Array.from(report.kept), positions };
      };
      const sync = await kept(false);
      expect({ case: c.name, ...(await kept(true)) }).toEqual({ case: c.name, ...sync });
    }
  });

  test("input bounds (checkFinite): a failed async append leaves none behind; queued compressAsync and saveAsync see only the calls before them", async () => {
    // Keys and queries of 1e18: one of them against ordinary values is fine, both together could
    // overflow a float32 score (headDim * |q| * |k| > 2^120), which checkFinite refuses.
    const big = (r: () => number, n: number) => randn(r, n).map((x) => x * 1e18);
    // A failed appendBatchAsync (out of pages): an attend with big queries still passes, and the
    // saved bytes are those of a sequence that never saw the call.
    {
      const { r, cache, seq, row } = filled(40, 25, 192); // 3 pages of 16 tokens per head: the pool is full
      const before = seq.save();
      await expect(cache.appendBatchAsync(0, [{ sequence: seq, keys: big(r, 40 * row), values: randn(r, 40 * row) }])).rejects.toMatchObject({ name: "OutOfPagesError" });
      expect(seq.save().equals(before)).toBe(true);
      expect(seq.attend(0, big(r, qrow)).length).toBe(qrow);
      cache.dispose();
    }
    // attend(big queries), then compress (snapkv scores those queries), then append big keys: fine
    // in this order, so fine queued too.
    const ordered = async (queued: boolean) => {
      const { r, cache, seq, row } = filled(40, 27);
      seq.attend(0, randn(r, qrow));
      const q = big(r, qrow), k = big(r, 4 * row), v = randn(r, 4 * row);
      let kept: number[], saved: Buffer;
      if (queued) {
        const calls = [seq.attendAsync(1, q), seq.compressAsync({ ratio: 0.5, window: 1, sink: 1 }), seq.saveAsync(), cache.appendBatchAsync(1, [{ sequence: seq, keys: k, values: v }]), seq.attendAsync(1, randn(r, qrow))] as const;
        const results = await Promise.all(calls);
        kept = Array.from(results[1].kept);
        saved = results[2];
      } else {
        seq.attend(1, q);
        kept = Array.from(seq.compress({ ratio: 0.5, window: 1, sink: 1 }).kept);
        saved = seq.save();
        seq.append(1, k, v);
        seq.attend(1, randn(r, qrow));
      }
      cache.dispose();
      return { kept, saved: saved.toString("base64") };
    };
    const sync = await ordered(false);
    expect(await ordered(true)).toEqual(sync);
  });
});

describe("unrelated sequences", () => {
  // One long prefill-sized attention (60 ms or more on two cores) on sequence A, in flight on a
  // worker thread.
  function longJob() {
    const { r, cache, seq: a, row } = filled(4096, 11, 20000);
    const b = cache.createSequence();
    for (let l = 0; l < shape.layers; l++) b.append(l, randn(r, 16 * row), randn(r, 16 * row));
    const q = randn(r, 2048 * shape.queryHeads * shape.headDim);
    return { r, cache, a, b, q, row };
  }

  test("synchronous calls on another sequence do not wait for an async call in flight", async () => {
    const { r, cache, a, b, q, row } = longJob();
    let t = performance.now();
    const expected = a.attend(0, q);
    const alone = performance.now() - t;
    const pending = a.attendAsync(0, q);
    // Keep calling sync methods of B on this thread while A's attention runs on a worker: with one
    // cache-wide lock a call would wait for the whole attention.
    const k = randn(r, row);
    let slowest = 0;
    let calls = 0;
    // Calls are made during the first half of A's attention only, so a call that waited for it
    // would take at least half of `alone`.
    const until = performance.now() + alone * 0.5;
    while (performance.now() < until) {
      t = performance.now();
      b.lengths();
      b.positions(1, 1);
      cache.usage();
      if (calls % 16 === 0) b.append(1, k, k);
      slowest = Math.max(slowest, performance.now() - t);
      calls++;
    }
    expect(await pending).toEqual(expected);
    expect(calls).toBeGreaterThan(10);
    // A call that waited would take at least alone / 2. A thread descheduled on a busy machine (the
    // async work and the pool's workers share the cores with this loop) loses ten milliseconds or
    // more, hence the long job (60 ms or more alone) and the bound between the two.
    expect(slowest).toBeLessThan(alone / 3);
    expect(b.appended(1)).toBe(16 + Math.ceil(calls / 16));
    cache.dispose();
  });

  // Six sequences and forks of two of them (forks share pages with their parents), each attended,
  // compressed and attended again with async calls all at once; the reference makes the same calls
  // one sequence after another on forks taken before anything ran.
  function manyData(salt: number, round = 0, pool?: Float32Array) {
    // Each round's rows are windows of one pool of random numbers at a round-dependent offset.
    const r = rng(seed ^ salt);
    const row = shape.kvHeads * shape.headDim;
    const size = (n: number) => n * row;
    const total = Array.from({ length: 6 }, (_, s) => 2 * shape.layers * size(100 + 37 * s)).reduce((a, b) => a + b, 0);
    const src = pool ?? randn(r, 2 * total + 3 * shape.queryHeads * shape.headDim);
    let at = (round * 7919 * row) % total;
    const take = (n: number) => src.subarray(at, (at += n));
    const rows = Array.from({ length: 6 }, (_, s) => Array.from({ length: shape.layers }, () => [take(size(100 + 37 * s)), take(size(100 + 37 * s))]));
    return { rows, q: take(3 * shape.queryHeads * shape.headDim), pool: src };
  }
  async function manyAtOnce({ rows, q }: ReturnType<typeof manyData>, ratio = 0.5, forks = 2) {
    const cache = new KVCache({ ...shape, dtype: "f32", maxTokens: 16384, threads: 2 });
    const seqs = rows.map((layers) => {
      const seq = cache.createSequence();
      layers.forEach(([k, v], l) => seq.append(l, k, v));
      return seq;
    });
    seqs.push(...seqs.slice(0, forks).map((s) => s.fork()));
    const opts = { ratio, scorer: "knorm" as const, sink: 2, window: 0 };
    const refs = seqs.map((s) => s.fork());
    const want = refs.map((s) => {
      const before = s.attend(1, q);
      s.compress(opts);
      return { before, after: s.attend(1, q), lengths: Array.from(s.lengths()) };
    });
    const got = await Promise.all(
      seqs.map(async (s) => {
        const before = s.attendAsync(1, q);
        const compressed = s.compressAsync(opts);
        const after = s.attendAsync(1, q);
        await compressed;
        return { before: await before, after: await after, lengths: Array.from(s.lengths()) };
      }),
    );
    for (const s of [...seqs, ...refs]) s.dispose();
    const pagesLeft = cache.usage().pagesUsed;
    cache.dispose();
    return { got, want, pagesLeft };
  }

  test("async calls on many sequences at once give what the same calls give one at a time", async () => {
    const { got, want, pagesLeft } = await manyAtOnce(manyData(12));
    expect(got).toEqual(want);
    expect(pagesLeft).toBe(0);
  });

  test("300 rounds, every sequence with a fork, ratios 0.3 to 0.7: parents and forks compressed at once never read each other's rows", async () => {
    // A compression copies a page it shares with a fork before compacting; the copy's source must
    // stay shared until the copy ran, or the fork, then its only holder, compacts it in place
    // meanwhile (without that, this test failed in 5 of 6 runs, 1 to 4 rounds each, and the
    // single round above failed about once in 25 seeds).
    const { pool } = manyData(13);
    const same = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((x, i) => Object.is(x, b[i]));
    const bad: number[] = [];
    for (let round = 0; round < 300; round++) {
      const { got, want, pagesLeft } = await manyAtOnce(manyData(13, round, pool), 0.3 + (0.4 * ((round * 37) % 100)) / 100, 6);
      const ok = got.every((g, i) => same(g.before, want[i].before) && same(g.after, want[i].after) && g.lengths.join() === want[i].lengths.join());
      if (!ok || pagesLeft !== 0) bad.push(round);
    }
    expect(bad).toEqual([]);
  });
});
