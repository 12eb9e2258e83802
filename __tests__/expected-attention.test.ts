// The "expected-attention" scorer and QueryStatistics against a float64 reference written from the
// definition (kvpress ExpectedAttentionPress): two-pass query statistics, the RoPE rotation matrix
// averaged over the future positions as a dense matrix, softmax over the non-sink keys, GQA mean,
// value norm. Random data (seed printed) and the real tiny-lm.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { KVCache, Sequence, DType, QueryStatistics, InvalidArgumentError, CompressOptions, Profiler, loadProfile, backends, SimdLevel } from "../ts";
import { profileBuildCommand } from "../ts/cli/profile-build";
import { loadTinyLM } from "../ts/model";
import { rng, testSeed, randn } from "./helpers/random";
import { poolTokens, referenceSelect } from "./helpers/evict-reference";

const seed = testSeed("expected-attention");

/** Two-pass mean and covariance (divided by n) of rows [n, D] of one head. */
function twoPass(rows: number[][]): { mean: number[]; cov: number[][] } {
  const n = rows.length, D = rows[0].length;
  const mean = Array.from({ length: D }, (_, i) => rows.reduce((s, r) => s + r[i], 0) / n);
  const cov = Array.from({ length: D }, (_, i) =>
    Array.from({ length: D }, (_, j) => rows.reduce((s, r) => s + (r[i] - mean[i]) * (r[j] - mean[j]), 0) / n),
  );
  return { mean, cov };
}

/** The rotate-half RoPE matrix of one position, R = cos·I + sin·P, dense. */
function ropeMatrix(p: number, freqs: number[]): number[][] {
  const D = 2 * freqs.length, h = freqs.length;
  const R = Array.from({ length: D }, () => new Array<number>(D).fill(0));
  for (let i = 0; i < D; i++) {
    const w = freqs[i % h];
    R[i][i] = Math.cos(p * w);
    // P has -I in the upper right block and I in the lower left one.
    if (i < h) R[i][i + h] = -Math.sin(p * w);
    else R[i][i - h] = Math.sin(p * w);
  }
  return R;
}

const matmul = (A: number[][], B: number[][]) => A.map((row) => B[0].map((_, j) => row.reduce((s, a, k) => s + a * B[k][j], 0)));
const transpose = (A: number[][]) => A[0].map((_, j) => A.map((row) => row[j]));

const rotations = new Map<string, number[][]>();
/** The RoPE matrix averaged over the future positions (memoised: every head of a layer shares it). */
function averageRotation(o: RefOptions): number[][] {
  const key = `${o.prompt} ${o.future} ${o.freqs.join(",")}`;
  let Rbar = rotations.get(key);
  if (Rbar) return Rbar;
  const D = 2 * o.freqs.length;
  Rbar = Array.from({ length: D }, () => new Array<number>(D).fill(0));
  for (let p = o.prompt; p < o.prompt + o.future; p++) {
    const R = ropeMatrix(p, o.freqs);
    for (let i = 0; i < D; i++) for (let j = 0; j < D; j++) Rbar[i][j] += R[i][j] / o.future;
  }
  rotations.set(key, Rbar);
  return Rbar;
}

interface RefOptions {
  freqs: number[];
  prompt: number; // positions before the future ones
  future: number;
  sink: number;
  covariance: boolean;
  valueNorm: boolean;
  epsilon: number;
}

/**
 * Expected-attention scores of one KV head from the definition. stats[g] are the group's query
 * heads' pre-RoPE mean and covariance; keys and values [L][D] as stored.
 */
function referenceScores(stats: { mean: number[]; cov: number[][] }[], keys: number[][], values: number[][], o: RefOptions): number[] {
  const L = keys.length, D = keys[0].length, G = stats.length;
  const Rbar = averageRotation(o);
  const sink = Math.min(o.sink, L);
  const out = new Array<number>(L).fill(0);
  for (const s of stats) {
    const mu = Rbar.map((row) => row.reduce((acc, r, k) => acc + r * s.mean[k], 0));
    const sigma = matmul(matmul(Rbar, s.cov), transpose(Rbar));
    const z = keys.map((k) => {
      let lin = 0, quad = 0;
      for (let i = 0; i < D; i++) {
        lin += mu[i] * k[i];
        if (o.covariance) for (let j = 0; j < D; j++) quad += k[i] * sigma[i][j] * k[j];
      }
      return lin / Math.sqrt(D) + quad / D / 2;
    });
    const m = Math.max(...z.slice(sink));
    const e = z.map((v, j) => (j < sink ? 0 : Math.exp(v - m)));
    const total = e.reduce((a, b) => a + b, 0);
    for (let j = sink; j < L; j++) out[j] += e[j] / total / G;
  }
  for (let j = sink; j < L; j++) if (o.valueNorm) out[j] = (out[j] + o.epsilon) * Math.hypot(...values[j]);
  const top = Math.max(...out.slice(sink));
  for (let j = 0; j < sink; j++) out[j] = top;
  return out;
}

function rowsOf(a: Float32Array, D: number): number[][] {
  return Array.from({ length: a.length / D }, (_, i) => Array.from(a.subarray(i * D, (i + 1) * D)));
}

function thetaFreqs(theta: number, D: number): number[] {
  return Array.from({ length: D / 2 }, (_, i) => 1 / theta ** ((2 * i) / D));
}

interface Setup {
  cache: KVCache;
  seq: Sequence;
  stats: QueryStatistics;
  /** Every pre-RoPE query row given to the statistics, per layer, [tokens][queryHeads][D]. */
  queries: number[][][][];
}

/** Random keys/values in `layers` layers and correlated random queries whose mean is far from zero. */
function setup(r: () => number, shape: { layers: number; kvHeads: number; queryHeads: number; headDim: number }, dtype: DType, tokens: number, skip: number, covariance: boolean, simd: SimdLevel = "auto"): Setup {
  const { layers, kvHeads, queryHeads: Q, headDim: D } = shape;
  const cache = new KVCache({ ...shape, dtype, pageSize: 8, maxTokens: 4096, simd });
  const seq = cache.createSequence();
  const stats = new QueryStatistics({ layers, queryHeads: Q, headDim: D, skip, covariance });
  const queries: number[][][][] = [];
  for (let l = 0; l < layers; l++) {
    queries.push([]);
    const offset = randn(r, Q * D, 1);
    const mix = randn(r, D * D, 0.5 / Math.sqrt(D));
    for (let done = 0; done < tokens; ) {
      const t = Math.min(tokens - done, 1 + Math.floor(r() * 40));
      seq.append(l, randn(r, t * kvHeads * D), randn(r, t * kvHeads * D));
      const q = new Float32Array(t * Q * D);
      const noise = randn(r, t * Q * D);
      for (let i = 0; i < t * Q; i++)
        for (let a = 0; a < D; a++) {
          let v = offset[(i % Q) * D + a];
          for (let b = 0; b < D; b++) v += mix[a * D + b] * noise[i * D + b];
          q[i * D + a] = v;
        }
      stats.add(l, q);
      for (let i = 0; i < t; i++) queries[l].push(Array.from({ length: Q }, (_, h) => Array.from(q.subarray((i * Q + h) * D, (i * Q + h + 1) * D))));
      done += t;
    }
  }
  return { cache, seq, stats, queries };
}

function referenceLayer(s: Setup, layer: number, skip: number, o: Omit<RefOptions, "prompt">): number[][] {
  const { kvHeads, queryHeads: Q, headDim: D } = s.cache.config;
  const G = Q / kvHeads;
  const rows = s.queries[layer].slice(skip);
  return Array.from({ length: kvHeads }, (_, h) => {
    const stats = Array.from({ length: G }, (_, g) => twoPass(rows.map((t) => t[h * G + g])));
    return referenceScores(stats, rowsOf(s.seq.keys(layer, h), D), rowsOf(s.seq.values(layer, h), D), { ...o, prompt: s.seq.appended(layer) });
  });
}

function maxRelative(got: ArrayLike<number>, want: number[]): number {
  const scale = Math.max(...want.map(Math.abs));
  let e = 0;
  for (let i = 0; i < want.length; i++) e = Math.max(e, Math.abs(got[i] - want[i]) / scale);
  return e;
}

describe("QueryStatistics", () => {
  test("mean and covariance equal the two-pass float64 ones, skip counted across add() calls", () => {
    const r = rng(seed);
    const Q = 3, D = 6, skip = 5;
    const stats = new QueryStatistics({ layers: 2, queryHeads: Q, headDim: D, skip });
    const all: Float32Array[] = [];
    // Far from zero with a small spread: naive sums of squares in float32 would lose it.
    for (const t of [2, 1, 7, 30]) {
      const q = randn(r, t * Q * D, 0.01).map((v, i) => v + 1000 + (i % D));
      stats.add(1, q);
      all.push(q);
    }
    expect(stats.positions(1)).toBe(40);
    expect(stats.rows(1)).toBe(35);
    expect(stats.rows(0)).toBe(0);
    const flat = new Float32Array(all.reduce((n, a) => n + a.length, 0));
    all.reduce((at, a) => (flat.set(a, at), at + a.length), 0);
    const mean = stats.mean(1), cov = stats.covarianceOf(1);
    for (let h = 0; h < Q; h++) {
      const rows = Array.from({ length: 40 - skip }, (_, t) => Array.from(flat.subarray(((t + skip) * Q + h) * D, ((t + skip) * Q + h + 1) * D)));
      const want = twoPass(rows);
      for (let i = 0; i < D; i++) {
        expect(Math.abs(mean[h * D + i] - want.mean[i])).toBeLessThan(1e-9 * 1000);
        for (let j = 0; j < D; j++) expect(Math.abs(cov[(h * D + i) * D + j] - want.cov[i][j])).toBeLessThan(1e-9);
      }
      // The rows' spread is real (a sample variance of the drawn 1e-4, not float32 rounding of values
      // near 1000), so the 1e-9 agreement above is a relative error below 1e-4 of it. A bound on its
      // distance from 1e-4 would test the random draw (35 rows: a relative spread of about 24%).
      expect(want.cov[0][0]).toBeGreaterThan(1e-5);
      expect(cov[h * D * D]).toBeGreaterThan(1e-5);
    }
  });

  test("queries near 1e19: the covariance is the float64 one (float32 products would overflow), and scoring takes it", () => {
    const stats = new QueryStatistics({ layers: 1, queryHeads: 1, headDim: 2, skip: 0 });
    stats.add(0, Float32Array.from([0, 0, 2e19, 0]));
    // Deviations of ±1e19 from the mean (1e19, 0): variance 1e38, within float32's range.
    const cov = Array.from(stats.covarianceOf(0));
    expect(Math.abs(cov[0] / 1e38 - 1)).toBeLessThan(1e-6);
    expect(cov.slice(1)).toEqual([0, 0, 0]);
    // 2,000 rows of about 1e18: no single product overflows float32, but a block's sum would.
    const many = new QueryStatistics({ layers: 1, queryHeads: 1, headDim: 2, skip: 0 });
    const r = rng(seed + 1);
    const rows = randn(r, 2000 * 2).map((v) => v * 2e18); // squares near 4e36, a 256-row block's sum near 1e39
    many.add(0, rows);
    const want = twoPass(Array.from({ length: 2000 }, (_, t) => [rows[2 * t], rows[2 * t + 1]]));
    const got = many.covarianceOf(0);
    for (let i = 0; i < 2; i++) for (let j = 0; j < 2; j++) expect(Math.abs(got[i * 2 + j] - want.cov[i][j])).toBeLessThan(1e-6 * want.cov[0][0]);
    const cache = new KVCache({ layers: 1, kvHeads: 1, queryHeads: 1, headDim: 2, dtype: "f32" });
    const seq = cache.createSequence();
    seq.append(0, Float32Array.from({ length: 16 }, (_, i) => (i % 5) * 1e-20), new Float32Array(16).fill(1));
    expect(seq.scores(0, "expected-attention", { expectedAttention: { statistics: stats, rope: { theta: 10000 } }, window: 1, sink: 1 })[0].every(Number.isFinite)).toBe(true);
    cache.dispose();
  });

  test("an outlying first row and tiny queries: the covariance is still the two-pass float64 one", () => {
    const r = rng(seed + 2);
    // A BOS-like first row of 1e5 before 100k ordinary rows (skip 0): sums centred on the first
    // row lost 16x the rows' own spread to cancellation.
    const n = 100_000, D = 4;
    const rows = randn(r, n * D);
    rows.fill(1e5, 0, D);
    const stats = new QueryStatistics({ layers: 1, queryHeads: 1, headDim: D, skip: 0 });
    for (let at = 0; at < n; at += 7919) stats.add(0, rows.subarray(at * D, Math.min(n, at + 7919) * D));
    const want = twoPass(Array.from({ length: n }, (_, t) => Array.from(rows.subarray(t * D, t * D + D))));
    const got = stats.covarianceOf(0), mean = stats.mean(0);
    for (let i = 0; i < D; i++) {
      expect(Math.abs(mean[i] - want.mean[i])).toBeLessThan(1e-9 * 1e5);
      // The outlier's own block rounds its 1e10 square in float32 (relative 6e-8); the old sums lost
      // 8e-4 of the variance (~1e5) to cancellation.
      for (let j = 0; j < D; j++) expect(Math.abs(got[i * D + j] - want.cov[i][j])).toBeLessThan(2e-6 * want.cov[0][0]);
    }
    // Queries of 1e-25: float32 products underflow (the variance came out negative).
    const tiny = randn(r, 3000 * D).map((v) => v * 1e-25);
    const small = new QueryStatistics({ layers: 1, queryHeads: 1, headDim: D, skip: 0 });
    small.add(0, tiny);
    const ref = twoPass(Array.from({ length: 3000 }, (_, t) => Array.from(tiny.subarray(t * D, t * D + D))));
    const cov = small.covarianceOf(0);
    for (let i = 0; i < D; i++) for (let j = 0; j < D; j++) expect(Math.abs(cov[i * D + j] - ref.cov[i][j])).toBeLessThan(1e-9 * ref.cov[0][0]);
    // One tiny dimension beside ordinary ones: its own variance (1e-50) was lost to underflow.
    const mixed = randn(r, 3000 * D).map((v, i) => (i % D === 2 ? v * 1e-25 : v));
    const both = new QueryStatistics({ layers: 1, queryHeads: 1, headDim: D, skip: 0 });
    both.add(0, mixed);
    const want2 = twoPass(Array.from({ length: 3000 }, (_, t) => Array.from(mixed.subarray(t * D, t * D + D))));
    const got2 = both.covarianceOf(0);
    expect(Math.abs(got2[2 * D + 2] / want2.cov[2][2] - 1)).toBeLessThan(1e-6);
    for (let i = 0; i < D; i++) for (let j = 0; j < D; j++) expect(Math.abs(got2[i * D + j] - want2.cov[i][j])).toBeLessThan(1e-6 * Math.sqrt(want2.cov[i][i] * want2.cov[j][j]) + 1e-300);
  });

  test("bad input is refused with the field named, and changes nothing", () => {
    const stats = new QueryStatistics({ layers: 2, queryHeads: 2, headDim: 4, skip: 0 });
    stats.add(0, new Float32Array(8).fill(1));
    expect(() => stats.add(0, new Float32Array(7))).toThrow(/queries/);
    expect(() => stats.add(2, new Float32Array(8))).toThrow(/for layer/);
    const bad = new Float32Array(16).fill(2);
    bad[13] = NaN;
    expect(() => stats.add(0, bad)).toThrow("Expected finite values in queries but queries[13] (token 1, query head 1) is NaN");
    expect(stats.rows(0)).toBe(1);
    expect(Array.from(stats.mean(0))).toEqual(new Array(8).fill(1));
    expect(() => new QueryStatistics({ layers: 1, queryHeads: 1, headDim: 3 })).toThrow(/headDim/);
    expect(() => new QueryStatistics({ layers: 1, queryHeads: 1, headDim: 4, skip: -1 })).toThrow(/skip/);
    expect(() => new QueryStatistics({ layers: 1, queryHeads: 1, headDim: 4, covarance: true } as never)).toThrow(/did you mean covariance/);
    expect(() => new QueryStatistics({ layers: 1, queryHeads: 1, headDim: 4, covariance: false }).covarianceOf(0)).toThrow(InvalidArgumentError);
  });
});

describe("expected-attention scores", () => {
  // The kernel tables this processor runs: each has its own vector width and tile.
  const tables = (backends().cpu.simdSupported as SimdLevel[]).filter((t) => t !== "auto");
  const cases: { dtype: DType; queryHeads: number; covariance: boolean; valueNorm: boolean; rope: "theta" | "frequencies"; sink: number; headDim: number; simd: SimdLevel }[] = [
    { dtype: "f32", queryHeads: 8, covariance: true, valueNorm: true, rope: "theta", sink: 4, headDim: 16, simd: "auto" },
    { dtype: "f32", queryHeads: 2, covariance: false, valueNorm: true, rope: "frequencies", sink: 0, headDim: 16, simd: "auto" },
    { dtype: "f32", queryHeads: 4, covariance: true, valueNorm: false, rope: "frequencies", sink: 3, headDim: 16, simd: "auto" },
    { dtype: "f16", queryHeads: 8, covariance: true, valueNorm: true, rope: "frequencies", sink: 4, headDim: 16, simd: "auto" },
    { dtype: "f16", queryHeads: 2, covariance: false, valueNorm: false, rope: "theta", sink: 1, headDim: 16, simd: "auto" },
    { dtype: "bf16", queryHeads: 4, covariance: true, valueNorm: true, rope: "theta", sink: 4, headDim: 16, simd: "auto" },
    // Dimensions past whole tiles and whole vectors, on every kernel table.
    ...tables.map((simd) => ({ dtype: "f32" as DType, queryHeads: 4, covariance: true, valueNorm: true, rope: "theta" as const, sink: 2, headDim: 86, simd })),
  ];
  test.each(cases)("$dtype, $queryHeads query heads over 2 KV heads, headDim $headDim, $simd kernels, covariance $covariance, value norm $valueNorm, rope by $rope, sink $sink: match the float64 reference", (c) => {
    const r = rng(seed + c.queryHeads + (c.covariance ? 10 : 0) + c.headDim);
    const D = c.headDim, skip = 3, theta = 5000;
    const s = setup(r, { layers: 2, kvHeads: 2, queryHeads: c.queryHeads, headDim: D }, c.dtype, D > 16 ? 40 : 70, skip, c.covariance, c.simd);
    const freqs = c.rope === "theta" ? thetaFreqs(theta, D) : Array.from({ length: D / 2 }, () => Math.fround(0.5 * r() ** 2));
    const rope = c.rope === "theta" ? { theta } : { inverseFrequencies: new Float32Array(freqs) };
    for (const layer of [0, 1]) {
      const future = layer === 0 ? 512 : 37;
      const got = s.seq.scores(layer, "expected-attention", {
        sink: c.sink,
        window: 1,
        expectedAttention: { statistics: s.stats, rope, futurePositions: future, epsilon: 0.05, valueNorm: c.valueNorm },
      });
      const want = referenceLayer(s, layer, skip, { freqs: freqs.map((f) => (c.rope === "theta" ? f : Math.fround(f))), future, sink: c.sink, covariance: c.covariance, valueNorm: c.valueNorm, epsilon: 0.05 });
      want.forEach((w, h) => expect(maxRelative(got[h], w)).toBeLessThan(2e-4));
    }
    s.cache.dispose();
  });

  test("pooling: the reference's scores, max-pooled between the sink and the window", () => {
    const r = rng(seed + 98);
    const D = 16, skip = 4, sink = 4, window = 3;
    const s = setup(r, { layers: 2, kvHeads: 2, queryHeads: 8, headDim: D }, "f32", 90, skip, true);
    for (const layer of [0, 1]) {
      const want = referenceLayer(s, layer, skip, { freqs: thetaFreqs(10000, D), future: 512, sink, covariance: true, valueNorm: true, epsilon: 0.02 });
      const got = s.seq.scores(layer, "expected-attention", { sink, window, pooling: "max", kernel: 5, expectedAttention: { statistics: s.stats, rope: { theta: 10000 } } });
      want.forEach((w, h) => expect(maxRelative(got[h], poolTokens(Array.from(w), "max", 5, sink, window))).toBeLessThan(2e-4));
    }
    s.cache.dispose();
  });

  test("compress keeps the reference's top tokens per head, with the sink and window", () => {
    const r = rng(seed + 99);
    const D = 16, skip = 4, sink = 4, window = 3;
    const s = setup(r, { layers: 2, kvHeads: 2, queryHeads: 8, headDim: D }, "f32", 90, skip, true);
    const want = [0, 1].map((l) => referenceLayer(s, l, skip, { freqs: thetaFreqs(10000, D), future: 512, sink, covariance: true, valueNorm: true, epsilon: 0.02 }));
    const budgets = new Int32Array([20, 31, 45, 12]);
    const before = [0, 1].map((l) => [0, 1].map((h) => s.seq.positions(l, h)));
    s.seq.compress({ budgets, scorer: "expected-attention", sink, window, expectedAttention: { statistics: s.stats, rope: { theta: 10000 } } });
    let checked = 0;
    for (let l = 0; l < 2; l++)
      for (let h = 0; h < 2; h++) {
        const keep = budgets[l * 2 + h];
        const sc = want[l][h];
        // Skip a head whose last kept and first dropped reference scores are too close to call.
        const middle = sc.slice(sink, sc.length - window).sort((a, b) => b - a);
        const k = keep - sink - window;
        if (Math.abs(middle[k - 1] - middle[k]) < 1e-5 * middle[0]) continue;
        const expected = referenceSelect(sc, sink, window, keep).map((i) => before[l][h][i]);
        expect(Array.from(s.seq.positions(l, h))).toEqual(expected);
        checked++;
      }
    expect(checked).toBeGreaterThanOrEqual(3);
    s.cache.dispose();
  });

  test("bad options and statistics are refused with the field named, nothing evicted", () => {
    const r = rng(seed + 7);
    const s = setup(r, { layers: 2, kvHeads: 2, queryHeads: 4, headDim: 8 }, "f32", 30, 4, true);
    const statistics = s.stats;
    const rope = { theta: 10000 };
    const lengths = s.seq.lengths();
    const attempt = (o: Partial<CompressOptions>) => () => s.seq.compress({ ratio: 0.5, scorer: "expected-attention", window: 4, ...o } as CompressOptions);
    expect(attempt({})).toThrow('Expected { statistics, rope } (scorer "expected-attention" needs the prompt\'s query statistics) for expectedAttention but received undefined');
    expect(attempt({ expectedAttention: { statistics, rope, epsilom: 0.1 } as never })).toThrow(/in expectedAttention but received "epsilom" \(did you mean epsilon\?\)/);
    expect(attempt({ expectedAttention: { statistics: {} as never, rope } })).toThrow(/expectedAttention.statistics/);
    const other = new QueryStatistics({ layers: 2, queryHeads: 2, headDim: 8 });
    expect(attempt({ expectedAttention: { statistics: other, rope } })).toThrow(
      "Expected expectedAttention.statistics for 2 layers x 4 query heads x headDim 8 but received statistics for 2 x 2 x 8",
    );
    const partial = new QueryStatistics({ layers: 2, queryHeads: 4, headDim: 8 });
    partial.add(0, randn(r, 10 * 32));
    partial.add(1, randn(r, 3 * 32)); // all three positions skipped
    expect(attempt({ expectedAttention: { statistics: partial, rope } })).toThrow(
      "Expected rows for layer 1 in expectedAttention.statistics but it has none (3 positions added, skip 4): add the layer's pre-RoPE prompt queries",
    );
    expect(attempt({ expectedAttention: { statistics, rope: {} as never } })).toThrow(/exactly one of theta and inverseFrequencies for expectedAttention.rope/);
    expect(attempt({ expectedAttention: { statistics, rope: { theta: 10000, inverseFrequencies: new Float32Array(4) } as never } })).toThrow(/exactly one/);
    expect(attempt({ expectedAttention: { statistics, rope: { inverseFrequencies: new Float32Array(3) } } })).toThrow(/expectedAttention.rope.inverseFrequencies/);
    expect(attempt({ expectedAttention: { statistics, rope: { inverseFrequencies: new Float32Array([1, NaN, 0, 0]) } } })).toThrow(/inverseFrequencies\[1\]/);
    expect(attempt({ expectedAttention: { statistics, rope: { theta: -1 } } })).toThrow(/expectedAttention.rope.theta/);
    expect(attempt({ expectedAttention: { statistics, rope, futurePositions: 0 } })).toThrow(/expectedAttention.futurePositions/);
    expect(attempt({ expectedAttention: { statistics, rope, epsilon: -1 } })).toThrow(/expectedAttention.epsilon/);
    // A mean that fits float32 but not once rotated (a pair grows by up to √2): all scores were ε·‖v‖.
    const huge = new QueryStatistics({ layers: 2, queryHeads: 4, headDim: 8, skip: 0, covariance: false });
    for (const l of [0, 1]) huge.add(l, new Float32Array(32).fill(3e38));
    expect(attempt({ expectedAttention: { statistics: huge, rope } })).toThrow(/^Expected query statistics within the float32 range once rotated .* for layer 0 in expectedAttention.statistics/);
    // Past float32, ε made every score infinite (compress then kept the first tokens).
    expect(attempt({ expectedAttention: { statistics, rope, epsilon: 1e39 } })).toThrow("Expected a non-negative number within the float32 range for expectedAttention.epsilon but received 1e+39 of type number");
    expect(attempt({ expectedAttention: { statistics, rope, valueNorm: 1 as never } })).toThrow(/expectedAttention.valueNorm/);
    expect(() => s.seq.compress({ ratio: 0.5, scorer: "snapkv", expectedAttention: { statistics, rope } })).toThrow(/no value with scorer "snapkv"/);
    for (const f of [attempt({ expectedAttention: { statistics: partial, rope } })]) expect(f).toThrow(InvalidArgumentError);
    expect(Array.from(s.seq.lengths())).toEqual(Array.from(lengths));
    // scores() of a layer that has rows works with the same statistics.
    expect(s.seq.scores(0, "expected-attention", { window: 4, expectedAttention: { statistics: partial, rope } })[0].length).toBe(30);
    const report = s.seq.compress({ ratio: 0.5, scorer: "expected-attention", window: 4, expectedAttention: { statistics, rope } });
    expect(report.total).toBe(report.target);
    s.cache.dispose();
  });
});

test("with checkFinite, statistics whose logits would overflow float32 are refused (all scores came back 0 and compress kept the wrong token)", () => {
  const D = 2;
  const cache = new KVCache({ layers: 1, kvHeads: 1, queryHeads: 1, headDim: D, dtype: "f32" });
  const seq = cache.createSequence();
  const keys = new Float32Array(8 * D);
  for (let j = 0; j < 8; j++) [keys[j * D], keys[j * D + 1]] = [(j + 1) * Math.cos(8), (j + 1) * Math.sin(8)];
  seq.append(0, keys, new Float32Array(8 * D).fill(1));
  const huge = new QueryStatistics({ layers: 1, queryHeads: 1, headDim: D, skip: 0, covariance: false });
  huge.add(0, Float32Array.from([1e38, 0]));
  const ea = { statistics: huge, rope: { theta: 10000 }, futurePositions: 1, epsilon: 0, valueNorm: false };
  const options = { sink: 0, window: 0, expectedAttention: ea };
  expect(() => seq.scores(0, "expected-attention", options)).toThrow(/^Expected query statistics whose expected-attention logits stay within float32 .* max\|μ\| 1e\+38/);
  expect(() => seq.compress({ budgets: new Int32Array([1]), scorer: "expected-attention", ...options })).toThrow(InvalidArgumentError);
  expect(seq.lengths()[0]).toBe(8);
  // The same direction at a sane scale ranks token 7 (the largest projection) first.
  const sane = new QueryStatistics({ layers: 1, queryHeads: 1, headDim: D, skip: 0, covariance: false });
  sane.add(0, Float32Array.from([10, 0]));
  seq.compress({ budgets: new Int32Array([1]), scorer: "expected-attention", ...options, expectedAttention: { ...ea, statistics: sane } });
  expect(Array.from(seq.positions(0, 0))).toEqual([7]);
  cache.dispose();
});

describe("expected-attention on tiny-lm", () => {
  test("statistics collected by the forward pass; scores and selection match the reference", () => {
    const model = loadTinyLM(path.join(__dirname, "..", "models", "tiny-lm"));
    const { layers, heads, kvHeads, headDim, ropeTheta } = model.config;
    const cache = model.createCache({ contextTokens: 1024 });
    const seq = cache.createSequence();
    const stats = new QueryStatistics({ layers, queryHeads: heads, headDim, skip: 4 });
    const text = "The package manager keeps a list of installed software. To install a package, run the command with its name, and the system fetches the files, checks their signatures and records the version.";
    const ids = [model.config.bosTokenId ?? 4094, ...model.tokenizer!.encode(text)];
    model.forward(seq, ids, { queryStatistics: stats, logits: "none" });
    expect(stats.positions(0)).toBe(ids.length);
    expect(stats.rows(3)).toBe(ids.length - 4);
    const G = heads / kvHeads, D = headDim;
    const freqs = thetaFreqs(ropeTheta, D);
    for (let l = 0; l < layers; l++) {
      const got = seq.scores(l, "expected-attention", { sink: 4, window: 1, expectedAttention: { statistics: stats, rope: { theta: ropeTheta } } });
      const mean = stats.mean(l), cov = stats.covarianceOf(l);
      for (let h = 0; h < kvHeads; h++) {
        const st = Array.from({ length: G }, (_, g) => {
          const q = h * G + g;
          return {
            mean: Array.from(mean.subarray(q * D, (q + 1) * D)),
            cov: Array.from({ length: D }, (_, i) => Array.from(cov.subarray((q * D + i) * D, (q * D + i + 1) * D))),
          };
        });
        const want = referenceScores(st, rowsOf(seq.keys(l, h), D), rowsOf(seq.values(l, h), D), {
          freqs, prompt: ids.length, future: 512, sink: 4, covariance: true, valueNorm: true, epsilon: 0.02,
        });
        expect(maxRelative(got[h], want)).toBeLessThan(1e-3);
      }
    }
    const report = seq.compress({ ratio: 0.6, scorer: "expected-attention", sink: 4, window: 1, expectedAttention: { statistics: stats, rope: { theta: ropeTheta } } });
    expect(report.total).toBe(report.target);
    for (let l = 0; l < layers; l++)
      for (let h = 0; h < kvHeads; h++) {
        const pos = seq.positions(l, h);
        expect(Array.from(pos.subarray(0, 4))).toEqual([0, 1, 2, 3]);
        expect(pos[pos.length - 1]).toBe(ids.length - 1);
      }
    cache.dispose();
  });
});

describe("expected-attention in the profiler", () => {
  const model = loadTinyLM(path.join(__dirname, "..", "models", "tiny-lm"));
  const { layers, heads, kvHeads, headDim, ropeTheta } = model.config;
  const text =
    "Debian keeps every package in a signed archive. The package manager downloads the list of packages, checks the signature of the list and then installs what the user asked for, with every package it depends on.";
  const ids = [model.config.bosTokenId ?? 4094, ...model.tokenizer!.encode(text)];
  const settings = { rope: { inverseFrequencies: Array.from({ length: headDim / 2 }, (_, i) => 1 / ropeTheta ** ((2 * i) / headDim)) }, epsilon: 0.02 };

  test("options are checked; the samples hold the context's scores at recordOracle with the prompt's statistics", async () => {
    expect(() => new Profiler({ layers, kvHeads, scorer: "expected-attention" })).toThrow(/scorerOptions.expectedAttention/);
    expect(() => new Profiler({ layers, kvHeads, scorer: "expected-attention", scorerOptions: { expectedAttention: { rope: { theta: 1e4 }, statistics: 1 } as never } })).toThrow(
      /Expected only rope, futurePositions, epsilon, valueNorm in scorerOptions.expectedAttention but received "statistics"/,
    );
    expect(() => new Profiler({ layers, kvHeads, scorer: "snapkv", scorerOptions: { expectedAttention: settings } })).toThrow(/no value with scorer "snapkv"/);
    const sink = 4, window = 1;
    const profiler = new Profiler({ layers, kvHeads, scorer: "expected-attention", scorerOptions: { expectedAttention: settings }, sink, window, grid: 9 });
    const manual = new Profiler({ layers, kvHeads, scorer: "knorm", sink, window, grid: 9 });
    using cache = model.createCache({ contextTokens: 256 });
    using seq = cache.createSequence();
    const context = ids.length - 6;
    const stats = new QueryStatistics({ layers, queryHeads: heads, headDim, skip: sink });
    model.forward(seq, ids.slice(0, context), { logits: "none", queryStatistics: stats });
    const scores = Array.from({ length: layers }, (_, l) =>
      seq.scores(l, "expected-attention", { sink, window, expectedAttention: { ...settings, rope: { inverseFrequencies: Float32Array.from(settings.rope.inverseFrequencies) }, statistics: stats } }),
    );
    const outputProjection = model.outputProjections();
    expect(() => profiler.recordOracle(seq, { outputProjection })).toThrow(/for statistics/);
    profiler.recordOracle(seq, { outputProjection }, stats);
    for (let s = context; s < ids.length; s++) model.forward(seq, [ids[s]], { logits: "none" });
    profiler.addSequence(seq);
    manual.addSample({ scores, oracle: Array.from({ length: layers }, (_, l) => seq.oracle(l)) });
    const built = profiler.build();
    expect(Array.from(built.table)).toEqual(Array.from(manual.build().table));
    expect(built.meta.scorer).toBe("expected-attention");
    expect(built.meta.scorerOptions).toEqual({ expectedAttention: { ...settings, futurePositions: 512, valueNorm: true } });
    expect([built.meta.sink, built.meta.window]).toEqual([4, 1]);
    // Saved samples build again with `lukv profile build`, settings included.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-ea-"));
    profiler.save(dir);
    const out: string[] = [];
    const code = await profileBuildCommand([dir, "--out", path.join(dir, "p.json")], { out: (s) => out.push(s), err: (s) => out.push(s) });
    expect({ code, out }).toMatchObject({ code: 0 });
    expect(out.join("\n")).toMatch(/scorer expected-attention \{"expectedAttention":\{"rope":\{"inverseFrequencies":\[1,/);
    const loaded = loadProfile(path.join(dir, "p.json"));
    expect(Array.from(loaded.table)).toEqual(Array.from(built.table));
    fs.rmSync(dir, { recursive: true });
  });
});
