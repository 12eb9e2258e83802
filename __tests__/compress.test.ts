// compress(): scores, allocations, selection and compaction against plain references on random
// data; memory really returned; bad input leaves the sequence untouched.
import { KVCache, Sequence, DType, createProfile } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";
import { referenceAttention, relativeError, RefHead } from "./helpers/reference";
import { poolTokens, referenceScores, referenceSelect, referenceAdaKV, bounds, fitCost, idealBudgets, keptTotal, leastSquaresFit, ScoreRefOptions } from "./helpers/evict-reference";

const seed = testSeed("compress");

interface Built {
  cache: KVCache;
  seq: Sequence;
  /** Every row ever appended, per (layer, head), indexed by position (dtype-rounded, read back before eviction). */
  rows: { keys: Float32Array[]; values: Float32Array[] }[];
  queries: Float32Array[]; // every query row attended, per layer
}

const shape = { layers: 3, kvHeads: 2, queryHeads: 8, headDim: 32 };

function build(r: () => number, opts: { tokens: number[]; pageSize?: number; dtype?: DType; maxTokens?: number; accumulate?: boolean; chunk?: number }): Built {
  const cache = new KVCache({ ...shape, pageSize: opts.pageSize ?? 16, dtype: opts.dtype ?? "f32", maxTokens: opts.maxTokens ?? 64 * 1024, observationWindow: 48 });
  const seq = cache.createSequence();
  if (opts.accumulate) seq.accumulateAttention();
  const queries: Float32Array[] = [];
  const chunk = opts.chunk ?? 64;
  for (let l = 0; l < shape.layers; l++) {
    const n = opts.tokens[l];
    for (let done = 0; done < n; done += chunk) {
      const t = Math.min(chunk, n - done);
      seq.append(l, randn(r, t * shape.kvHeads * shape.headDim), randn(r, t * shape.kvHeads * shape.headDim));
      const q = randn(r, t * shape.queryHeads * shape.headDim, 1.5);
      seq.attend(l, q);
      const all = new Float32Array((queries[l]?.length ?? 0) + q.length);
      all.set(queries[l] ?? new Float32Array(0));
      all.set(q, all.length - q.length);
      queries[l] = all;
    }
  }
  const rows = Array.from({ length: shape.layers }, (_, l) => ({
    keys: Array.from({ length: shape.kvHeads }, (_, h) => seq.keys(l, h)),
    values: Array.from({ length: shape.kvHeads }, (_, h) => seq.values(l, h)),
  }));
  return { cache, seq, rows, queries };
}

/** Reference heads of `layer` restricted to the positions the sequence now keeps (rows taken from before eviction). */
function survivingHeads(b: Built, layer: number): RefHead[] {
  const D = shape.headDim;
  return Array.from({ length: shape.kvHeads }, (_, h) => {
    const pos = b.seq.positions(layer, h);
    const keys = new Float32Array(pos.length * D), values = new Float32Array(pos.length * D);
    pos.forEach((p, i) => {
      keys.set(b.rows[layer].keys[h].subarray(p * D, p * D + D), i * D);
      values.set(b.rows[layer].values[h].subarray(p * D, p * D + D), i * D);
    });
    return { keys, values, positions: pos };
  });
}

function lastRows(q: Float32Array, rows: number): Float32Array {
  const row = shape.queryHeads * shape.headDim;
  return q.subarray(q.length - rows * row);
}

describe("scores match the references", () => {
  const defaults: ScoreRefOptions = { scorer: "snapkv", pooling: "max", kernel: 7, groupReduce: "mean", seed: 0, scale: 1 / Math.sqrt(shape.headDim), sink: 4 };
  const cases: Partial<ScoreRefOptions & { window: number }>[] = [
    { scorer: "snapkv" },
    { scorer: "snapkv", pooling: "avg", kernel: 5, groupReduce: "max", window: 16 },
    { scorer: "snapkv", pooling: "none", window: 48 },
    { scorer: "tova", pooling: "none" },
    { scorer: "tova", pooling: "max", kernel: 5, window: 8 },
    { scorer: "tova", pooling: "avg", kernel: 3, groupReduce: "max", window: 16 },
    { scorer: "keydiff", pooling: "none" },
    { scorer: "keydiff", pooling: "max", kernel: 7 },
    { scorer: "keydiff", pooling: "avg", kernel: 5, window: 16 },
    { scorer: "knorm", pooling: "none" },
    { scorer: "knorm", pooling: "max", kernel: 3, window: 48 },
    { scorer: "streaming", pooling: "none" },
    { scorer: "random", pooling: "none", seed: 1234 },
  ];
  test.each(cases)("%j", (c) => {
    const r = rng(seed ^ 0x51);
    const b = build(r, { tokens: [150, 200, 130], pageSize: 5 });
    const window = c.window ?? 32;
    const o = { ...defaults, ...c, window };
    for (let l = 0; l < shape.layers; l++) {
      const got = b.seq.scores(l, o.scorer as never, { window, pooling: o.pooling, kernel: o.kernel, groupReduce: o.groupReduce, seed: o.seed });
      const rows = o.scorer === "tova" ? 1 : window;
      const appended = b.seq.appended(l);
      for (let h = 0; h < shape.kvHeads; h++) {
        const want = referenceScores(
          {
            keys: b.seq.keys(l, h), positions: b.seq.positions(l, h), headDim: shape.headDim, group: 4, headIndex: h, layer: l,
            queries: lastRows(b.queries[l], rows), queryPositions: Array.from({ length: rows }, (_, i) => appended - rows + i), queryHeads: shape.queryHeads,
            newest: appended - 1,
          },
          o,
        );
        expect(got[h].length).toBe(want.length);
        expect(relativeError(got[h], want)).toBeLessThan(1e-5);
      }
    }
    b.cache.dispose();
  });

  test("explicit observation queries are used instead of the remembered ones", () => {
    const r = rng(seed ^ 0x52);
    const b = build(r, { tokens: [100, 100, 100] });
    const obs = [randn(r, 8 * shape.queryHeads * shape.headDim), undefined, undefined];
    const got = b.seq.scores(0, "snapkv", { window: 8, observationQueries: obs });
    const want = referenceScores(
      { keys: b.seq.keys(0, 1), positions: b.seq.positions(0, 1), headDim: shape.headDim, group: 4, headIndex: 1, layer: 0, queries: obs[0], queryPositions: Array.from({ length: 8 }, (_, i) => 92 + i), queryHeads: shape.queryHeads },
      { ...defaults, window: 8 },
    );
    expect(relativeError(got[1], want)).toBeLessThan(1e-5);
    b.cache.dispose();
  });

  test("the remembered observation queries are the last observationWindow rows after many decode steps", () => {
    const r = rng(seed ^ 0x54);
    const W = 8;
    const cache = new KVCache({ ...shape, layers: 1, pageSize: 16, dtype: "f32", maxTokens: 4096, observationWindow: W });
    try {
      const seq = cache.createSequence();
      const rows: Float32Array[] = [];
      const feed = (t: number): void => {
        seq.append(0, randn(r, t * shape.kvHeads * shape.headDim), randn(r, t * shape.kvHeads * shape.headDim));
        const q = randn(r, t * shape.queryHeads * shape.headDim);
        seq.attend(0, q);
        for (let i = 0; i < t; i++) rows.push(q.subarray(i * shape.queryHeads * shape.headDim, (i + 1) * shape.queryHeads * shape.headDim));
      };
      feed(40); // a prefill chunk longer than the window
      // Then 37 decode steps: the ring of W rows wraps several times.
      for (let step = 0; step < 37; step++) {
        feed(1);
        const last = new Float32Array(W * shape.queryHeads * shape.headDim);
        rows.slice(-W).forEach((q, i) => last.set(q, i * shape.queryHeads * shape.headDim));
        const got = seq.scores(0, "snapkv", { window: W });
        const want = seq.scores(0, "snapkv", { window: W, observationQueries: [last] });
        for (let h = 0; h < shape.kvHeads; h++) expect(Array.from(got[h])).toEqual(Array.from(want[h]));
      }
      expect(() => seq.scores(0, "snapkv", { window: W + 1 })).toThrow(`the sequence remembers ${W} (`);
    } finally {
      cache.dispose();
    }
  });

  test("h2o mass is accumulated by attend: sum over every attended query of its softmax weights, mean over the group", () => {
    const r = rng(seed ^ 0x53);
    const cache = new KVCache({ ...shape, pageSize: 8, dtype: "f32", maxTokens: 8192 });
    const seq = cache.createSequence();
    seq.accumulateAttention();
    const D = shape.headDim, H = shape.kvHeads, Q = shape.queryHeads;
    const layer = 1;
    const mass = [new Float64Array(0), new Float64Array(0)];
    const addMass = (q: Float32Array, tokens: number) => {
      const heads: RefHead[] = Array.from({ length: H }, (_, h) => ({ keys: seq.keys(layer, h), values: seq.values(layer, h), positions: seq.positions(layer, h) }));
      const appended = seq.appended(layer);
      for (let h = 0; h < H; h++) {
        const grown = new Float64Array(heads[h].positions.length);
        grown.set(mass[h]);
        mass[h] = grown;
        for (let t = 0; t < tokens; t++)
          for (let g = 0; g < 4; g++) {
            const qo = (t * Q + h * 4 + g) * D;
            const qp = appended - tokens + t;
            const vis = Array.from(heads[h].positions).map((p, j) => [p, j]).filter(([p]) => p <= qp).map(([, j]) => j);
            const logits = vis.map((j) => { let s = 0; for (let d = 0; d < D; d++) s += q[qo + d] * heads[h].keys[j * D + d]; return s / Math.sqrt(D); });
            const m = Math.max(...logits);
            const e = logits.map((v) => Math.exp(v - m));
            const sum = e.reduce((a, c) => a + c, 0);
            vis.forEach((j, k) => (mass[h][j] += e[k] / sum / 4));
          }
      }
    };
    for (const tokens of [40, 1, 1, 17, 1]) {
      seq.append(layer, randn(r, tokens * H * D), randn(r, tokens * H * D));
      const q = randn(r, tokens * Q * D);
      seq.attend(layer, q);
      addMass(q, tokens);
    }
    const got = seq.scores(layer, "h2o");
    for (let h = 0; h < H; h++) expect(relativeError(got[h], mass[h])).toBeLessThan(1e-5);
    // Pooled: each token between the sink and the window takes the mean of its in-range neighbours.
    const pooled = seq.scores(layer, "h2o", { pooling: "avg", kernel: 3, window: 8 });
    for (let h = 0; h < H; h++) expect(relativeError(pooled[h], poolTokens(Array.from(mass[h]), "avg", 3, 4, 8))).toBeLessThan(1e-5);
    // Compaction carries the mass along with the kept tokens.
    const budgets = new Int32Array(shape.layers * H);
    budgets[layer * H] = 40;
    budgets[layer * H + 1] = 45;
    seq.compress({ budgets, scorer: "h2o", window: 8 });
    for (let h = 0; h < H; h++) {
      const pos = seq.positions(layer, h);
      const after = seq.scores(layer, "h2o")[h];
      expect(relativeError(after, Array.from(pos, (p) => mass[h][p]))).toBeLessThan(1e-5);
    }
    cache.dispose();
  });
});

describe("allocations select exactly the reference sets", () => {
  const allocations = ["uniform", "pyramidkv", "adakv"] as const;
  const scorers = ["snapkv", "keydiff", "random", "keydiff max 7"] as const;
  test.each(allocations.flatMap((allocation) => scorers.map((name) => ({ allocation, name }))))("$allocation / $name", ({ allocation, name }) => {
    const scorer = name === "keydiff max 7" ? "keydiff" : name;
    const pooling = name === "keydiff max 7" ? ({ pooling: "max", kernel: 7 } as const) : {};
    const r = rng(seed ^ (allocation.length * 131 + name.length));
    const b = build(r, { tokens: [300, 257, 190], pageSize: 16 });
    const ratio = 0.3 + 0.5 * r(); // keeps more than the forced tokens, so the total is the target
    const sink = 4, window = 32;
    const lengths = Array.from(b.seq.lengths());
    const scores = Array.from({ length: shape.layers }, (_, l) => b.seq.scores(l, scorer, { window, ...pooling })).flat();
    const input = { lengths, layers: shape.layers, kvHeads: shape.kvHeads, ratio, sink, window, scores, allocation };
    const q = randn(r, shape.queryHeads * shape.headDim);
    const report = b.seq.compress({ ratio, allocation, scorer, sink, window, ...pooling });
    const want = Array.from(report.kept);
    if (allocation === "adakv") expect(want).toEqual(referenceAdaKV(input));
    else {
      // uniform and pyramidkv: the integer budgets closest to the ideal ones, within the bounds, with the exact total.
      const { lo, hi } = bounds(lengths, sink, window);
      const ideal = idealBudgets(input);
      const total = keptTotal(input);
      want.forEach((k, i) => expect(k >= lo[i] && k <= hi[i]).toBe(true));
      expect(want.reduce((a, c) => a + c, 0)).toBe(total);
      expect(fitCost(want, ideal)).toBeCloseTo(fitCost(leastSquaresFit(ideal, lo, hi, total), ideal), 6);
    }
    expect(report.total).toBe(report.target);
    expect(report.target).toBe(Math.round((1 - ratio) * lengths.reduce((a, c) => a + c, 0)));
    expect(Array.from(b.seq.lengths())).toEqual(want);
    for (let i = 0; i < lengths.length; i++) {
      const l = Math.floor(i / shape.kvHeads), h = i % shape.kvHeads;
      const pos = Array.from(b.seq.positions(l, h));
      expect(pos).toEqual(referenceSelect(scores[i], sink, window, want[i]));
      // sink and window always survive
      for (let p = 0; p < sink; p++) expect(pos).toContain(p);
      for (let p = lengths[i] - window; p < lengths[i]; p++) expect(pos).toContain(p);
    }
    // attention over exactly the surviving tokens
    for (let l = 0; l < shape.layers; l++) {
      const out = b.seq.attend(l, q);
      const ref = referenceAttention(survivingHeads(b, l), q, [b.seq.appended(l) - 1], shape.queryHeads, shape.headDim);
      expect(relativeError(out, ref)).toBeLessThan(1e-5);
    }
    b.cache.dispose();
  });

  test("lukv: budgets from a profile, through budgetsFromProfile", () => {
    const r = rng(seed ^ 0x77);
    const b = build(r, { tokens: [256, 256, 256] });
    const grid = 99, heads = shape.layers * shape.kvHeads;
    // A profile where head i prunes more for larger i, monotone in the ratio.
    const table = new Float64Array(grid * heads);
    for (let g = 0; g < grid; g++) for (let i = 0; i < heads; i++) table[g * heads + i] = Math.min(1, ((g + 1) / (grid + 1)) * (0.5 + i / heads));
    const profile = createProfile({ table, layers: shape.layers, kvHeads: shape.kvHeads });
    const { budgetsFromProfile } = require("../ts");
    const lengths = b.seq.lengths();
    const minKeep = Array.from(lengths, (l) => Math.min(l, 36));
    const expected: Int32Array = budgetsFromProfile(profile, { ratio: 0.75, lengths, minKeep });
    const scores = Array.from({ length: shape.layers }, (_, l) => b.seq.scores(l, "snapkv")).flat();
    const rep = b.seq.compress({ ratio: 0.75, allocation: "lukv", profile });
    expect(Array.from(rep.kept)).toEqual(Array.from(expected));
    expect(rep.total).toBe(Math.round(0.25 * 1536));
    for (let i = 0; i < heads; i++)
      expect(Array.from(b.seq.positions(Math.floor(i / 2), i % 2))).toEqual(referenceSelect(scores[i], 4, 32, expected[i]));
    b.cache.dispose();
  });

  test("a profile is refused beside another allocation (LU-KV quietly off) and when it is not a Profile; null means none", async () => {
    const r = rng(seed ^ 0x7a);
    const grid = 9, heads = shape.layers * shape.kvHeads;
    const profile = createProfile({ table: new Float64Array(grid * heads).fill(0.5), layers: shape.layers, kvHeads: shape.kvHeads });
    const b = build(r, { tokens: [64, 64, 64] });
    const before = Array.from(b.seq.lengths());
    for (const allocation of [undefined, "uniform", "adakv", "pyramidkv"] as const)
      expect(() => b.seq.compress({ ratio: 0.5, allocation, profile })).toThrow(/no profile beside allocation "(uniform|adakv|pyramidkv)" \(only allocation "lukv" reads one\)/);
    for (const bad of [null, "garbage", 5]) {
      const options = { allocation: "lukv" as const, profile: bad as unknown as typeof profile };
      expect(() => b.seq.compress({ ratio: 0.5, ...options })).toThrow(/^Expected a Profile \(allocation "lukv" needs one; see loadProfile\) for profile/);
      await expect(b.seq.compressAsync({ ratio: 0.5, ...options })).rejects.toThrow(/for profile/);
      expect(() => b.seq.autoCompress({ maxTokens: 8, ...options })).toThrow(/for profile/);
      expect(() => b.cache.onPressure({ evict: "largest", ...options })).toThrow(/for profile/);
    }
    expect(() => b.seq.autoCompress({ maxTokens: 8, allocation: "adakv", profile })).toThrow(/no profile beside/);
    expect(Array.from(b.seq.lengths())).toEqual(before);
    // null is no profile, as null is the default for the other options.
    const rep = await b.seq.compressAsync({ ratio: 0.5, profile: null as unknown as undefined, scorer: "knorm", sink: 0, window: 0 });
    expect(rep.total).toBe(192);
    b.cache.dispose();
  });

  test("lukv: a ratio below the sink and window keeps exactly those, like the other allocations", () => {
    const r = rng(seed ^ 0x79);
    const grid = 99, heads = shape.layers * shape.kvHeads;
    const table = new Float64Array(grid * heads);
    for (let g = 0; g < grid; g++) for (let i = 0; i < heads; i++) table[g * heads + i] = Math.min(1, ((g + 1) / (grid + 1)) * (0.5 + i / heads));
    const profile = createProfile({ table, layers: shape.layers, kvHeads: shape.kvHeads });
    const tokens = [100, 120, 40];
    const a = build(r, { tokens });
    const u = build(r, { tokens });
    // 1% of 520 tokens is less than the 36 forced tokens of each of the 6 heads.
    const repL = a.seq.compress({ ratio: 0.99, allocation: "lukv", profile });
    const repU = u.seq.compress({ ratio: 0.99, allocation: "uniform" });
    expect(Array.from(repL.kept)).toEqual([36, 36, 36, 36, 36, 36]);
    expect(Array.from(repL.kept)).toEqual(Array.from(repU.kept));
    for (let i = 0; i < heads; i++) {
      const pos = Array.from(a.seq.positions(Math.floor(i / 2), i % 2));
      const len = tokens[Math.floor(i / 2)];
      // The sink (first 4) and the window (last 32) are what survives.
      const expected = [0, 1, 2, 3, ...Array.from({ length: 32 }, (_, j) => len - 32 + j)];
      expect(pos).toEqual(expected);
    }
    a.cache.dispose();
    u.cache.dispose();
  });

  test("explicit budgets; below the forced tokens they are raised to them", () => {
    const r = rng(seed ^ 0x78);
    const b = build(r, { tokens: [100, 120, 90] });
    const budgets = Int32Array.from([50, 10, 120, 37, 0, 90]);
    const scores = Array.from({ length: shape.layers }, (_, l) => b.seq.scores(l, "knorm")).flat();
    const rep = b.seq.compress({ budgets, scorer: "knorm" });
    expect(Array.from(rep.kept)).toEqual([50, 36, 120, 37, 36, 90]);
    for (let i = 0; i < 6; i++) expect(Array.from(b.seq.positions(Math.floor(i / 2), i % 2))).toEqual(referenceSelect(scores[i], 4, 32, rep.kept[i]));
    b.cache.dispose();
  });
});

describe("the sequence keeps working after compression", () => {
  test("decode, re-compression, ratio 0 and ratio near 1", () => {
    const r = rng(seed ^ 0x99);
    const b = build(r, { tokens: [400, 400, 400], pageSize: 16, dtype: "f32" });
    const D = shape.headDim, H = shape.kvHeads, Q = shape.queryHeads;
    b.seq.compress({ ratio: 0.6, allocation: "adakv", scorer: "snapkv" });
    // decode steps at the tail of every head
    for (let step = 0; step < 5; step++)
      for (let l = 0; l < shape.layers; l++) {
        const k = randn(r, H * D), v = randn(r, H * D);
        b.seq.append(l, k, v);
        const p = b.seq.appended(l) - 1;
        for (let h = 0; h < H; h++) {
          const grow = (a: Float32Array, rowv: Float32Array) => { const n = new Float32Array(a.length + D); n.set(a); n.set(rowv, p * D); return n; };
          b.rows[l].keys[h] = grow(b.rows[l].keys[h], b.seq.keys(l, h).subarray(-D));
          b.rows[l].values[h] = grow(b.rows[l].values[h], b.seq.values(l, h).subarray(-D));
        }
        const q = randn(r, Q * D);
        const ref = referenceAttention(survivingHeads(b, l), q, [p], Q, D);
        expect(relativeError(b.seq.attend(l, q), ref)).toBeLessThan(1e-5);
        for (let h = 0; h < H; h++) expect(b.seq.positions(l, h).at(-1)).toBe(p);
      }
    // compress again
    const before = Array.from(b.seq.lengths());
    const rep = b.seq.compress({ ratio: 0.5, scorer: "keydiff" });
    expect(rep.total).toBe(Math.round(0.5 * before.reduce((a, c) => a + c, 0)));
    for (let l = 0; l < shape.layers; l++) {
      const q = randn(r, Q * D);
      expect(relativeError(b.seq.attend(l, q), referenceAttention(survivingHeads(b, l), q, [b.seq.appended(l) - 1], Q, D))).toBeLessThan(1e-5);
    }
    // ratio 0 changes nothing
    const lengths0 = Array.from(b.seq.lengths());
    const pos0 = b.seq.positions(1, 1);
    const used0 = b.cache.usage().pagesUsed;
    const rep0 = b.seq.compress({ ratio: 0 });
    expect(rep0.pagesFreed).toBe(0);
    expect(Array.from(b.seq.lengths())).toEqual(lengths0);
    expect(b.seq.positions(1, 1)).toEqual(pos0);
    expect(b.cache.usage().pagesUsed).toBe(used0);
    // ratio near 1: every head keeps only its forced tokens (sink + window)
    const repMax = b.seq.compress({ ratio: 0.999 });
    expect(Array.from(repMax.kept)).toEqual(new Array(6).fill(36));
    expect(repMax.total).toBe(216);
    for (let l = 0; l < shape.layers; l++)
      for (let h = 0; h < H; h++) {
        const pos = Array.from(b.seq.positions(l, h));
        const app = b.seq.appended(l);
        expect(pos).toEqual([0, 1, 2, 3, ...Array.from({ length: 32 }, (_, i) => app - 32 + i)]);
      }
    b.cache.dispose();
  });

  test("compressAsync equals compress; a fork is unaffected by its parent's compression", async () => {
    const r = rng(seed ^ 0x9a);
    const b = build(r, { tokens: [300, 300, 300], dtype: "f16" });
    const f1 = b.seq.fork();
    const f2 = b.seq.fork();
    const keepPos = b.seq.positions(2, 1);
    const a = f1.compress({ ratio: 0.7, allocation: "pyramidkv" });
    const c = await f2.compressAsync({ ratio: 0.7, allocation: "pyramidkv" });
    expect(Array.from(c.kept)).toEqual(Array.from(a.kept));
    for (let l = 0; l < 3; l++) for (let h = 0; h < 2; h++) {
      expect(f2.positions(l, h)).toEqual(f1.positions(l, h));
      expect(f2.keys(l, h)).toEqual(f1.keys(l, h));
    }
    expect(b.seq.positions(2, 1)).toEqual(keepPos);
    expect(b.seq.keys(2, 1)).toEqual(b.rows[2].keys[1]);
    b.cache.dispose();
  });
});

describe("memory is returned to the pool", () => {
  test("4,096 tokens, pageSize 16, ratio 0.8 returns at least 75% of the pages, and another sequence can use them", () => {
    const r = rng(seed ^ 0xaa);
    const tokens = 4096;
    const cache = new KVCache({ layers: 2, kvHeads: 2, queryHeads: 4, headDim: 32, pageSize: 16, dtype: "f16", maxTokens: 2 * 2 * tokens });
    const seq = cache.createSequence();
    for (let l = 0; l < 2; l++) {
      seq.append(l, randn(r, tokens * 2 * 32), randn(r, tokens * 2 * 32));
      seq.attend(l, randn(r, 32 * 4 * 32));
    }
    const full = cache.usage();
    expect(full.pagesUsed).toBe(full.pagesTotal);
    const rep = seq.compress({ ratio: 0.8 });
    const after = cache.usage();
    expect(rep.pagesFreed).toBe(full.pagesUsed - after.pagesUsed);
    expect(rep.pagesFreed / full.pagesUsed).toBeGreaterThanOrEqual(0.75);
    expect(after.bytesUsed).toBe(after.pagesUsed * (full.bytesTotal / full.pagesTotal));
    // The pool was full; now a second sequence fits in what was freed.
    const other = cache.createSequence();
    const n = Math.floor(((after.pagesTotal - after.pagesUsed) / 4) * 16);
    other.append(0, randn(r, n * 2 * 32), randn(r, n * 2 * 32));
    other.append(1, randn(r, n * 2 * 32), randn(r, n * 2 * 32));
    expect(cache.usage().pagesUsed).toBe(cache.usage().pagesTotal);
    cache.dispose();
  });
});

describe("bad input: a clear error and the sequence untouched", () => {
  function snapshot(seq: Sequence, q: Float32Array) {
    return {
      lengths: Array.from(seq.lengths()),
      positions: [0, 1, 2].map((l) => [0, 1].map((h) => Array.from(seq.positions(l, h)))),
      out: [0, 1, 2].map((l) => Array.from(seq.attend(l, q))),
      usage: seq.cache.usage(),
    };
  }
  const cases: [string, object, string][] = [
    ["unknown scorer", { ratio: 0.5, scorer: "lru" }, 'Expected one of "snapkv", "keydiff", "knorm", "tova", "h2o", "streaming", "random", "expected-attention" for scorer but received "lru" of type string'],
    ["unknown allocation", { ratio: 0.5, allocation: "fair" }, 'Expected one of "uniform", "pyramidkv", "adakv", "lukv" for allocation but received "fair" of type string'],
    ["ratio 1", { ratio: 1 }, "Expected a number in [0, 1) for ratio but received 1 of type number"],
    ["ratio negative", { ratio: -0.1 }, "Expected a number in [0, 1) for ratio but received -0.1 of type number"],
    ["ratio NaN", { ratio: NaN }, "Expected a number in [0, 1) for ratio but received NaN of type number"],
    ["budgets of the wrong length", { budgets: new Int32Array(5) }, "Expected Int32Array of length 6 (layers * kvHeads) for budgets but received Int32Array(5)"],
    ["budgets of the wrong type", { budgets: [1, 2, 3, 4, 5, 6] }, "Expected Int32Array of length 6 (layers * kvHeads) for budgets but received Array(6)"],
    ["budget above a head's length", { budgets: Int32Array.from([50, 50, 50, 50, 50, 81]) }, "Expected budgets[5] (layer 2, head 1) between 0 and the head's length 80 but received 81"],
    ["window larger than the sequence", { ratio: 0.5, window: 81, scorer: "keydiff" }, "Expected window at most the sequence length (80 positions in layer 0) but received 81"],
    ["snapkv window beyond the remembered queries", { ratio: 0.5, window: 60 }, "snapkv needs 60 observation queries for layer 0 but the sequence remembers 48 (attend with at least that many queries, raise the cache's observationWindow (48), or pass observationQueries)"],
    ["h2o without accumulation", { ratio: 0.5, scorer: "h2o" }, 'scorer "h2o" needs attention mass accumulated during decode: call seq.accumulateAttention() before attending'],
    ["lukv without a profile", { ratio: 0.5, allocation: "lukv" }, 'Expected a Profile (allocation "lukv" needs one; see loadProfile) for profile but received undefined'],
    ["even pooling kernel", { ratio: 0.5, kernel: 4 }, "Expected odd integer between 1 and 1025 for kernel but received 4 of type number"],
    ["groupReduce for a scorer without query-head scores", { ratio: 0.5, scorer: "knorm", groupReduce: "max" }, 'Expected "mean" for scorer "knorm" (it combines the query heads\' attention scores: snapkv, tova) for groupReduce but received "max" of type string'],
    ["pooling for a scorer that ranks by position", { ratio: 0.5, scorer: "streaming", pooling: "max" }, 'Expected "none" for scorer "streaming" (its scores rank by position or at random; pooling applies to snapkv, tova, keydiff, knorm, h2o, expected-attention) for pooling but received "max" of type string'],
    ["pooling for the random scorer", { ratio: 0.5, scorer: "random", pooling: "avg" }, 'Expected "none" for scorer "random" (its scores rank by position or at random; pooling applies to snapkv, tova, keydiff, knorm, h2o, expected-attention) for pooling but received "avg" of type string'],
  ];
  test.each(cases)("%s", (_, opts, message) => {
    const r = rng(seed ^ 0xbb);
    const b = build(r, { tokens: [80, 80, 80], chunk: 80 });
    const q = randn(r, shape.queryHeads * shape.headDim);
    const before = snapshot(b.seq, q);
    let err: Error | undefined;
    try {
      b.seq.compress(opts);
    } catch (e) {
      err = e as Error;
    }
    expect(err?.name).toBe("InvalidArgumentError");
    expect(err?.message).toBe(message);
    expect(snapshot(b.seq, q)).toEqual(before);
    b.cache.dispose();
  });

  test("a profile of another model's shape", () => {
    const r = rng(seed ^ 0xbc);
    const b = build(r, { tokens: [80, 80, 80] });
    const profile = createProfile({ table: new Float64Array(99 * 4).fill(0.5), layers: 2, kvHeads: 2 });
    expect(() => b.seq.compress({ ratio: 0.5, allocation: "lukv", profile })).toThrow(
      "Expected a profile for 3 layers x 2 KV heads for profile but received one for 2 x 2",
    );
    b.cache.dispose();
  });
});

test("scores() refuses a window longer than the sequence, as compress() does", () => {
  const r = rng(seed ^ 0x77);
  const cache = new KVCache({ ...shape, dtype: "f32" });
  const seq = cache.createSequence();
  for (let l = 0; l < shape.layers; l++) {
    seq.append(l, randn(r, 5 * shape.kvHeads * shape.headDim), randn(r, 5 * shape.kvHeads * shape.headDim));
    seq.attend(l, randn(r, 5 * shape.queryHeads * shape.headDim));
  }
  const observationQueries = Array.from({ length: shape.layers }, () => randn(r, 8 * shape.queryHeads * shape.headDim));
  const message = "Expected window at most the sequence length (5 positions in layer 0) but received 8";
  for (const scorer of ["snapkv", "tova"] as const) {
    expect(() => seq.scores(0, scorer, { window: 8, observationQueries })).toThrow(expect.objectContaining({ name: "InvalidArgumentError", message }));
    expect(() => seq.compress({ ratio: 0.5, scorer, window: 8, observationQueries })).toThrow(expect.objectContaining({ name: "InvalidArgumentError", message }));
  }
  expect(seq.scores(0, "snapkv", { window: 5, observationQueries })[0].length).toBe(5);
  cache.dispose();
});

test.each([2 ** 24 + 1002, 2 ** 24 + 1003])("streaming keeps exactly the newest tokens past position 2^24 (%d tokens; positions as f32 scores tied there)", (n) => {
  using cache = new KVCache({ layers: 1, kvHeads: 1, queryHeads: 1, headDim: 1, dtype: "f16", pageSize: 16, maxTokens: n + 64, checkFinite: false });
  const seq = cache.createSequence();
  seq.append(0, new Uint16Array(n), new Uint16Array(n));
  seq.compress({ scorer: "streaming", sink: 4, window: 0, budgets: Int32Array.of(54) });
  expect(Array.from(seq.positions(0, 0))).toEqual([0, 1, 2, 3, ...Array.from({ length: 50 }, (_, i) => n - 50 + i)]);
  const scores = seq.scores(0, "streaming", { window: 0 })[0];
  expect(Array.from(scores.subarray(-3))).toEqual([-2, -1, 0]);
});

test("streaming with adakv: the heads of a layer compare by position (each head's own newest scored alike, it kept older tokens of one head over newer of another)", () => {
  using cache = new KVCache({ layers: 1, kvHeads: 2, queryHeads: 2, headDim: 4, dtype: "f32", pageSize: 4, maxTokens: 512 });
  const seq = cache.createSequence();
  // Keys of head 0 grow with the position: knorm (the smallest kept) leaves it positions 0..24, head 1 all 50.
  const keys = Float32Array.from({ length: 50 * 8 }, (_, i) => (i % 8 < 4 ? Math.floor(i / 8) + 1 : 1));
  seq.append(0, keys, keys);
  seq.compress({ budgets: Int32Array.of(25, 50), scorer: "knorm", sink: 0, window: 0 });
  expect(Array.from(seq.positions(0, 0))).toEqual(Array.from({ length: 25 }, (_, i) => i));
  // 30 of 75 kept, the newest of the layer first, ties to the lower head: head 1's 25..49, then
  // position 24 of both heads, 23 of both, 22 of head 0.
  seq.compress({ ratio: 0.6, allocation: "adakv", alpha: 0, scorer: "streaming", sink: 0, window: 0 });
  expect(Array.from(seq.positions(0, 0))).toEqual([22, 23, 24]);
  expect(Array.from(seq.positions(0, 1))).toEqual(Array.from({ length: 27 }, (_, i) => 23 + i));
});
