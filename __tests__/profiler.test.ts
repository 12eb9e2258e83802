// The offline profiler on synthetic heads whose answer is known, against plain references and the
// budget solvers: eviction order, loss curves, hull and optimality gaps, per-sample solutions,
// averaging, determinism, the profile files and their meaning, saved samples and the CLI.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BadProfileError, InvalidArgumentError } from "../ts/errors";
import { lowerHull, solveBudgets, solveBudgetsExact, solveBudgetsForTotals } from "../ts/budget";
import { budgetsFromProfile, decodeNpy, loadProfile, profileToJson, profileToNpy, saveProfile } from "../ts/profile";
import { Profiler, type ProfilerOptions, type ProfilerSample } from "../ts/profiler";
import { KVCache } from "../ts";
import { analyzeSample, budgetGroups, evictionOrder, groupTargets, minKeepOf, sampleCurves, type FlatSample, type SampleConfig } from "../ts/profiler/sample";
import { profileBuildCommand } from "../ts/cli/profile-build";
import { decimalKeptTotal } from "./helpers/evict-reference";
import { rng, testSeed, randn } from "./helpers/random";

const seed = testSeed("profiler");

type Head = { scores: Float32Array; oracle: Float32Array };

/** A sample from a generator of heads, [layer][head]. */
function sampleOf(layers: number, kvHeads: number, head: (l: number, h: number) => Head, decodeSteps?: number): ProfilerSample {
  const heads = Array.from({ length: layers }, (_, l) => Array.from({ length: kvHeads }, (_, h) => head(l, h)));
  return { scores: heads.map((r) => r.map((x) => x.scores)), oracle: heads.map((r) => r.map((x) => x.oracle)), decodeSteps };
}

/** The same sample flattened as the profiler stores it. */
function flat(s: ProfilerSample): FlatSample {
  const scores = s.scores.flat() as Float32Array[];
  const oracle = s.oracle.flat() as Float32Array[];
  const lengths = Int32Array.from(scores, (x) => x.length);
  const offsets = new Float64Array(lengths.length + 1);
  lengths.forEach((t, i) => (offsets[i + 1] = offsets[i] + t));
  const cat = (xs: Float32Array[]) => {
    const out = new Float32Array(offsets[lengths.length]);
    xs.forEach((x, i) => out.set(x, offsets[i]));
    return out;
  };
  return { lengths, offsets, scores: cat(scores), oracle: cat(oracle) };
}

/** Heavy-tailed oracle values, as attention mass is. */
function lognormal(r: () => number, n: number, sigma = 2): Float32Array {
  return randn(r, n, sigma).map(Math.exp);
}

function uniform(r: () => number, n: number): Float32Array {
  return Float32Array.from({ length: n }, () => r());
}

/** Plain eviction order: the middle tokens sorted by score ascending, NaN lowest, later position first on ties. */
function referenceOrder(scores: Float32Array, sink: number, window: number): number[] {
  const T = scores.length;
  const front = Math.min(sink, T);
  const back = Math.min(window, T - front);
  const key = (j: number) => (Number.isNaN(scores[j]) ? -Infinity : scores[j]);
  const mid = Array.from({ length: T - front - back }, (_, i) => front + i);
  return mid.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : b - a));
}

/** Lower convex hull values by brute force: the lowest chord through each point. */
function referenceHull(c: Float64Array): Float64Array {
  const E = c.length - 1;
  const out = Float64Array.from(c);
  for (let a = 0; a <= E; a++)
    for (let b = a + 2; b <= E; b++)
      for (let n = a + 1; n < b; n++) out[n] = Math.min(out[n], c[a] + ((c[b] - c[a]) * (n - a)) / (b - a));
  return out;
}

function hullCurve(c: Float64Array): Float64Array {
  const m = lowerHull(c);
  const out = new Float64Array(c.length);
  for (let n = 0; n < m.length; n++) out[n + 1] = out[n] + m[n];
  return out;
}

describe("eviction order", () => {
  test("lowest score first, later position first among equal scores, sink and window never listed", () => {
    const r = rng(seed ^ 0x11);
    for (const [T, sink, window] of [[200, 4, 32], [50, 0, 0], [10, 4, 32], [37, 3, 5]]) {
      // Few distinct values so ties are common; NaN, ±0 and infinities mixed in.
      const scores = Float32Array.from({ length: T }, () => Math.floor(r() * 6) - 2);
      for (let k = 0; k < T / 10; k++) scores[Math.floor(r() * T)] = [NaN, -0, Infinity, -Infinity][k % 4];
      const got = Array.from(evictionOrder(scores, sink, window));
      expect(got).toEqual(referenceOrder(scores, sink, window));
      const front = Math.min(sink, T);
      expect(got.every((j) => j >= front && j < T - Math.min(window, T - front))).toBe(true);
    }
  });

  test("is the order compress keeps by: evicting the first n tokens of it is what compress evicts for every budget", () => {
    const r = rng(seed ^ 0x12);
    const cache = new KVCache({ layers: 1, kvHeads: 1, queryHeads: 1, headDim: 8, dtype: "f32", maxTokens: 256 });
    const T = 60, sink = 3, window = 5;
    const k = new Float32Array(T * 8);
    // Keys of few distinct norms, so the knorm scores tie often.
    for (let t = 0; t < T; t++) k[t * 8 + (t % 8)] = 1 + Math.floor(r() * 4);
    const base = cache.createSequence();
    base.append(0, k, k);
    const order = evictionOrder(base.scores(0, "knorm")[0], sink, window);
    for (let n = 0; n <= order.length; n += 7) {
      const s = base.fork();
      s.compress({ budgets: new Int32Array([T - n]), scorer: "knorm", sink, window });
      const evicted = new Set(Array.from(order.subarray(0, n)));
      expect(Array.from(s.positions(0, 0))).toEqual(Array.from({ length: T }, (_, t) => t).filter((t) => !evicted.has(t)));
      s.dispose();
    }
    cache.dispose();
  });

  test("all-equal scores evict from the latest middle token backwards", () => {
    const got = evictionOrder(new Float32Array(12).fill(0.5), 2, 3);
    expect(Array.from(got)).toEqual([8, 7, 6, 5, 4, 3, 2]);
  });

  test("the floor: sink and window, at least 1% of the head, never more than it has", () => {
    expect(minKeepOf(1000, 4, 32)).toBe(36);
    expect(minKeepOf(10000, 4, 32)).toBe(100);
    expect(minKeepOf(301, 0, 0)).toBe(4);
    expect(minKeepOf(20, 4, 32)).toBe(20);
  });
});

describe("per-sample analysis", () => {
  const config = (o: Partial<SampleConfig> = {}): SampleConfig => ({ layers: 2, kvHeads: 3, sink: 2, window: 5, grid: 99, scope: "global", ...o });

  function randomSample(r: () => number, layers: number, kvHeads: number, tied: boolean): ProfilerSample {
    return sampleOf(layers, kvHeads, () => {
      const T = 40 + Math.floor(r() * 50);
      const scores = tied ? Float32Array.from({ length: T }, () => Math.floor(r() * 8)) : uniform(r, T);
      return { scores, oracle: lognormal(r, T) };
    });
  }

  test("curves, hull gap and optimality gap match plain references", () => {
    const r = rng(seed ^ 0x21);
    const s = randomSample(r, 2, 3, true);
    const cfg = config();
    const res = analyzeSample(flat(s), cfg);
    const curves = sampleCurves(flat(s), cfg);
    for (let i = 0; i < 6; i++) {
      const scores = s.scores[Math.floor(i / 3)][i % 3] as Float32Array;
      const oracle = s.oracle[Math.floor(i / 3)][i % 3] as Float32Array;
      const T = scores.length;
      const E = T - minKeepOf(T, 2, 5);
      const order = referenceOrder(scores, 2, 5);
      const c = new Float64Array(E + 1);
      for (let n = 1; n <= E; n++) c[n] = c[n - 1] + oracle[order[n - 1]];
      expect(curves[i]).toEqual(c);
      const mass = oracle.reduce((a, b) => a + b, 0);
      expect(res.mass[i]).toBeCloseTo(mass, 6);
      const hull = referenceHull(c);
      const gap = Math.max(...c.map((y, n) => y - hull[n]));
      expect(res.hullGap[i]).toBeCloseTo(gap / mass, 12);
      const best = Array.from(oracle.slice(2, T - 5)).sort((a, b) => a - b);
      let cb = 0;
      let excess = 0;
      for (let n = 1; n <= E; n++) {
        cb += best[n - 1];
        excess += c[n] - cb;
      }
      expect(res.optimalityGap[i]).toBeCloseTo(excess / E / mass, 12);
      expect(res.optimalityGap[i]).toBeGreaterThan(0);
    }
  });

  test.each(["global", "per-layer"] as const)("scope %s: the solution at every ratio is the greedy's and an optimum of the hull curves", (scope) => {
    const r = rng(seed ^ 0x22 ^ (scope === "global" ? 0 : 1));
    for (const tied of [false, true]) {
      const s = flat(randomSample(r, 2, 3, tied));
      const cfg = config({ scope });
      const res = analyzeSample(s, cfg);
      const curves = sampleCurves(s, cfg);
      const H = 6;
      for (const group of budgetGroups(2, 3, scope)) {
        const targets = groupTargets(res.lengths, res.evictable, group, cfg.grid);
        const E = Array.from(group, (h) => res.evictable[h]);
        const sumE = E.reduce((a, b) => a + b, 0);
        const gc = Array.from(group, (h) => curves[h]);
        // The greedy on the same curves, ties included: keep = E − evicted.
        const greedy = solveBudgetsForTotals(gc, Array.from(targets, (t) => sumE - t));
        expect(solveBudgets(gc, sumE - targets[49])).toEqual(greedy[49].keep);
        const hulls = gc.map(hullCurve);
        for (let i = 0; i < cfg.grid; i++) {
          const evicted = Array.from(group, (h) => res.evicted[i * H + h]);
          expect(evicted.reduce((a, b) => a + b, 0)).toBe(targets[i]);
          expect(Array.from(greedy[i].keep)).toEqual(E.map((e, k) => e - evicted[k]));
          if (i % 7 === 0) {
            const exact = solveBudgetsExact(hulls, sumE - targets[i]);
            const exactLoss = hulls.reduce((a, h, k) => a + h[E[k] - exact[k]], 0);
            const ours = hulls.reduce((a, h, k) => a + h[evicted[k]], 0);
            expect(Math.abs(ours - exactLoss)).toBeLessThanOrEqual(1e-9 * Math.max(1, exactLoss));
          }
        }
      }
      // Targets: ΣT − round((1 − ρ) ΣT) (what compress keeps) over the budget's heads, capped at what they may lose.
      const total = Array.from(res.lengths).reduce((a, b) => a + b, 0);
      if (scope === "global") {
        const sumE = Array.from(res.evictable).reduce((a, b) => a + b, 0);
        for (let i = 0; i < cfg.grid; i++) {
          let got = 0;
          for (let h = 0; h < H; h++) got += res.evicted[i * H + h];
          expect(got).toBe(Math.min(sumE, total - decimalKeptTotal((i + 1) / 100, total)));
        }
      }
    }
  });

  test("evictions never decrease along the grid and respect each head's floor", () => {
    const r = rng(seed ^ 0x23);
    const s = flat(randomSample(r, 2, 3, false));
    const res = analyzeSample(s, config({ sink: 4, window: 32 }));
    for (let h = 0; h < 6; h++) {
      for (let i = 0; i < 99; i++) {
        const n = res.evicted[i * 6 + h];
        expect(n).toBeLessThanOrEqual(res.evictable[h]);
        if (i > 0) expect(n).toBeGreaterThanOrEqual(res.evicted[(i - 1) * 6 + h]);
      }
      expect(res.evictable[h]).toBe(res.lengths[h] - Math.min(res.lengths[h], 36));
      // At 99% every head is at its floor: the sink and window are all that is left.
      expect(res.evicted[98 * 6 + h]).toBe(res.evictable[h]);
    }
  });
});

describe("synthetic heads with known answers", () => {
  const T = 300;
  const options: ProfilerOptions = { layers: 1, kvHeads: 3, sink: 0, window: 0 };

  /**
   * Head 0: 270 near-empty tokens (oracle < 1e-4) and 30 heavy ones (2..3), a scorer that ranks by
   * the oracle. Head 1: the same kind of mass, a random scorer. Head 2: flat mass (1..1.1), ranked
   * by the oracle.
   */
  function heads(r: () => number): ProfilerSample {
    const concentrated = () => {
      const o = uniform(r, T).map((u) => 1e-4 * u);
      const pos = Array.from({ length: T }, (_, j) => j);
      for (let k = 0; k < 30; k++) {
        const j = k + Math.floor(r() * (T - k));
        [pos[k], pos[j]] = [pos[j], pos[k]];
        o[pos[k]] = 2 + r();
      }
      return o;
    };
    return sampleOf(1, 3, (_, h) => {
      if (h === 0) {
        const o = concentrated();
        return { scores: o.slice(), oracle: o };
      }
      if (h === 1) return { scores: uniform(r, T), oracle: concentrated() };
      const o = uniform(r, T).map((u) => 1 + 0.1 * u);
      return { scores: o.slice(), oracle: o };
    });
  }

  test("a scorer that ranks by the oracle has no hull or optimality gap; a random one has both", () => {
    const r = rng(seed ^ 0x31);
    const p = new Profiler(options);
    for (let k = 0; k < 4; k++) p.addSample(heads(r));
    const rep = p.report();
    for (const h of [0, 2]) {
      expect(rep.hullGap[h]).toBeLessThan(1e-12);
      expect(rep.optimalityGap[h]).toBeLessThan(1e-12);
    }
    expect(rep.hullGap[1]).toBeGreaterThan(1e-3);
    expect(rep.optimalityGap[1]).toBeGreaterThan(0.2);
  });

  test("cheap tokens go first: concentrated mass the scorer finds, then a random scorer's, then flat mass", () => {
    const r = rng(seed ^ 0x32);
    const p = new Profiler(options);
    for (let k = 0; k < 3; k++) p.addSample(heads(r));
    const { table } = p.build();
    const at = (ratio: number, h: number) => table[(Math.round(ratio * 100) - 1) * 3 + h];
    // Half of 900 tokens: head 0 drops exactly its 270 near-empty tokens, head 1 the other 180.
    expect(at(0.5, 0)).toBeCloseTo(0.9, 12);
    expect(at(0.5, 1)).toBeCloseTo(0.6, 12);
    expect(at(0.5, 2)).toBe(0);
    for (let i = 0; i < 99; i++) {
      if (i < 80) expect(table[i * 3]).toBeGreaterThanOrEqual(table[i * 3 + 2]);
      // The profile evicts the ratio: every head has T tokens, so the plain mean is the weighted one.
      expect(Math.abs((table[i * 3] + table[i * 3 + 1] + table[i * 3 + 2]) / 3 - (i + 1) / 100)).toBeLessThan(1 / (2 * 3 * T) + 1e-12);
    }
    // Near the top only dear tokens are left, and head 0's (2..3) cost more than flat ones (1..1.1).
    expect(at(0.95, 2)).toBeGreaterThan(at(0.95, 0));
    const rep = p.report();
    expect(rep.loss[49]).toBeLessThan(rep.uniformLoss[49] / 2);
  });
});

describe("Profiler", () => {
  const options: ProfilerOptions = { layers: 2, kvHeads: 3, sink: 4, window: 8, scorer: "snapkv", scorerOptions: { kernel: 5 }, model: "toy", dataset: "synthetic" };

  function samples(r: () => number, n: number, T = () => 60 + Math.floor(r() * 80)): ProfilerSample[] {
    return Array.from({ length: n }, (_, k) =>
      sampleOf(2, 3, () => {
        const t = T();
        const oracle = lognormal(r, t);
        // A scorer that half agrees with the oracle.
        const scores = oracle.map((o) => Math.log(o) + 2 * (r() - 0.5));
        return { scores, oracle };
      }, 10 + k),
    );
  }

  test("build averages each sample's prune ratios; report averages the gaps", () => {
    const r = rng(seed ^ 0x41);
    const [s1, s2, s3] = samples(r, 3);
    const all = new Profiler(options);
    const each = [s1, s2, s3].map((s) => {
      const p = new Profiler(options);
      p.addSample(s);
      all.addSample(s);
      return p;
    });
    const tables = each.map((p) => p.build().table);
    const built = all.build();
    expect(built.table).toEqual(tables[0].map((x, i) => (x + tables[1][i] + tables[2][i]) / 3));
    const reps = each.map((p) => p.report());
    const rep = all.report();
    expect(rep.samples).toBe(3);
    expect(rep.hullGap).toEqual(reps[0].hullGap.map((x, i) => (x + reps[1].hullGap[i] + reps[2].hullGap[i]) / 3));
    expect(rep.optimalityGap).toEqual(reps[0].optimalityGap.map((x, i) => (x + reps[1].optimalityGap[i] + reps[2].optimalityGap[i]) / 3));
    expect(rep.loss).toEqual(reps[0].loss.map((x, i) => (x + reps[1].loss[i] + reps[2].loss[i]) / 3));
    // Prune ratios of one sample are evicted / T of its own solution.
    const res = analyzeSample(flat(s1), { layers: 2, kvHeads: 3, sink: 4, window: 8, grid: 99, scope: "global" });
    expect(tables[0]).toEqual(Float64Array.from(res.evicted, (n, i) => n / res.lengths[i % 6]));
    expect(built.meta).toEqual({
      model: "toy",
      scorer: "snapkv",
      scorerOptions: { kernel: 5 },
      sink: 4,
      window: 8,
      grid: 99,
      scope: "global",
      calibration: {
        samples: 3,
        contextLengths: [s1, s2, s3].map((s) => Math.max(...s.scores.flat().map((x) => x.length))),
        decodeSteps: 11,
        dataset: "synthetic",
      },
    });
  });

  test("is deterministic: the same samples give the same bytes", () => {
    const r = rng(seed ^ 0x42);
    const ss = samples(r, 3);
    const build = () => {
      const p = new Profiler(options);
      ss.forEach((s) => p.addSample(s));
      return p.build();
    };
    const a = build();
    const b = build();
    expect(profileToJson(a)).toBe(profileToJson(b));
    expect(profileToNpy(a)).toEqual(profileToNpy(b));
  });

  test("number arrays and Float64Array are taken as float32; decode steps are optional", () => {
    const r = rng(seed ^ 0x43);
    const [s] = samples(r, 1);
    const a = new Profiler(options);
    a.addSample(s);
    const b = new Profiler(options);
    b.addSample({
      scores: s.scores.map((l) => l.map((x) => Array.from(x))),
      oracle: s.oracle.map((l) => l.map((x) => Float64Array.from(x))),
    });
    expect(b.build().table).toEqual(a.build().table);
    expect(b.build().meta.calibration?.decodeSteps).toBeUndefined();
  });

  test("round trip through saveProfile / loadProfile (.npy and JSON), then budgetsFromProfile", () => {
    const r = rng(seed ^ 0x44);
    const p = new Profiler(options);
    samples(r, 3).forEach((s) => p.addSample(s));
    const profile = p.build();
    const dir = mkdtempSync(join(tmpdir(), "lukv-profiler-"));
    try {
      const lengths = Int32Array.from({ length: 6 }, () => 500 + Math.floor(r() * 1000));
      const want = budgetsFromProfile(profile, { ratio: 0.8, lengths, minKeep: 12 });
      for (const name of ["p.npy", "p.json"]) {
        saveProfile(profile, join(dir, name));
        const back = loadProfile(join(dir, name));
        expect([back.grid, back.layers, back.kvHeads]).toEqual([99, 2, 3]);
        expect(back.table).toEqual(profile.table);
        expect(back.meta).toEqual(name.endsWith(".json") ? profile.meta : {});
        const keep = budgetsFromProfile(back, { ratio: 0.8, lengths, minKeep: 12 });
        expect(keep).toEqual(want);
        expect(keep.reduce((a, b) => a + b, 0)).toBe(Math.round(0.2 * lengths.reduce((a, b) => a + b, 0)));
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test.each(["global", "per-layer"] as const)("the .npy is the authors' [99, layers, kvHeads] table: row i prunes (i+1)%% (scope %s)", (scope) => {
    const r = rng(seed ^ 0x45);
    const p = new Profiler({ layers: 2, kvHeads: 3, sink: 0, window: 0, scope });
    // Heads of different lengths, all multiples of 100 so that 99% is reachable above the 1% floor.
    const lengths = [200, 300, 100, 400, 200, 100];
    for (let k = 0; k < 3; k++) {
      p.addSample(sampleOf(2, 3, (l, h) => {
        const oracle = lognormal(r, lengths[l * 3 + h]);
        return { scores: oracle.map((o) => o * (0.5 + r())), oracle };
      }));
    }
    const npy = decodeNpy(profileToNpy(p.build()));
    expect(npy.shape).toEqual([99, 2, 3]);
    expect(npy.descr).toBe("<f8");
    const groups = scope === "global" ? [[0, 1, 2, 3, 4, 5]] : [[0, 1, 2], [3, 4, 5]];
    for (let i = 0; i < 99; i++) {
      const row = npy.data.subarray(i * 6, i * 6 + 6);
      for (let h = 0; h < 6; h++) {
        expect(row[h]).toBeGreaterThanOrEqual(0);
        expect(row[h]).toBeLessThanOrEqual(0.99);
      }
      for (const g of groups) {
        const total = g.reduce((a, h) => a + lengths[h], 0);
        const mean = g.reduce((a, h) => a + row[h] * lengths[h], 0) / total;
        expect(Math.abs(mean - (i + 1) / 100)).toBeLessThanOrEqual(0.5 / total + 1e-12);
      }
    }
  });

  test("at a grid ratio whose product is a half, the profile keeps what compress keeps (the half kept)", () => {
    // 11 tokens at ratio 0.5: compress keeps round(5.5) = 6; the profiler evicted round(5.5) = 6 (kept 5).
    const T = 11;
    const prof = new Profiler({ layers: 1, kvHeads: 1, scorer: "knorm", sink: 0, window: 0, grid: 1 });
    prof.addSample({ scores: [[Float32Array.from({ length: T }, (_, j) => j)]], oracle: [[Float32Array.from({ length: T }, (_, j) => j + 1)]] });
    const profile = prof.build();
    expect(profile.table[0] * T).toBeCloseTo(5, 12);
    expect(budgetsFromProfile(profile, { ratio: 0.5, lengths: [T] })[0]).toBe(6);
    const cache = new KVCache({ layers: 1, kvHeads: 1, queryHeads: 1, headDim: 4, dtype: "f32", maxTokens: 64 });
    const seq = cache.createSequence();
    seq.append(0, new Float32Array(T * 4).fill(1), new Float32Array(T * 4).fill(1));
    expect(seq.compress({ ratio: 0.5, allocation: "lukv", profile, scorer: "knorm", sink: 0, window: 0 }).total).toBe(6);
    cache.dispose();
  });

  test("at high ratios the sink, window and 1% floor cap each head", () => {
    const r = rng(seed ^ 0x46);
    const p = new Profiler({ layers: 1, kvHeads: 2, sink: 4, window: 32 });
    p.addSample(sampleOf(1, 2, () => {
      const oracle = lognormal(r, 100);
      return { scores: uniform(r, 100), oracle };
    }));
    const { table } = p.build();
    // 100 tokens keep 36: from 64% on, both heads are at their cap.
    for (let i = 63; i < 99; i++) expect([table[i * 2], table[i * 2 + 1]]).toEqual([0.64, 0.64]);
    expect((table[62 * 2] + table[62 * 2 + 1]) / 2).toBeCloseTo(0.63, 12);
  });

  test("rejects bad options and samples with messages that name the problem", () => {
    expect(() => new Profiler({ layers: 0, kvHeads: 2 })).toThrow("Expected positive integer at most 65536 for layers but received 0 of type number");
    expect(() => new Profiler({ layers: 1, kvHeads: 2, scope: "layer" as never })).toThrow(
      'Expected one of "global", "per-layer" for scope but received "layer" of type string',
    );
    expect(() => new Profiler({ layers: 1, kvHeads: 2, scorer: "snap" as never })).toThrow('Expected one of "snapkv", "keydiff"');
    expect(() => new Profiler({ layers: 1, kvHeads: 2, scorerOptions: { window: 16 } as never })).toThrow(
      'Expected only pooling, kernel, groupReduce, seed, scale, valueNorm, expectedAttention in scorerOptions (window is the profiler\'s own option) but received "window"',
    );
    expect(() => new Profiler({ layers: 1, kvHeads: 2, scorerOptions: { kernel: 4 } })).toThrow("Expected odd integer between 1 and 1025 for kernel but received 4 of type number");
    expect(() => new Profiler({ layers: 1, kvHeads: 2, grid: 0 })).toThrow("Expected positive integer at most 100000 for grid but received 0 of type number");
    // Each size within its bound, the table too large: refused, not a RangeError of the allocation
    expect(() => new Profiler({ layers: 65536, kvHeads: 65536 })).toThrow(
      expect.objectContaining({ name: "InvalidArgumentError", message: "Expected layers × kvHeads × grid at most 134217728 (the profile's table) but received 65536 × 65536 × 99 = 425201762304" }),
    );
    expect(() => new Profiler({ layers: 1, kvHeads: 2, sink: -1 })).toThrow("for sink but received -1 of type number");

    const p = new Profiler({ layers: 2, kvHeads: 2 });
    const ok = new Float32Array(10);
    const grid2 = (x: unknown) => [[x, ok], [ok, ok]] as never;
    expect(() => p.build()).toThrow("build() needs at least one sample: call addSample() or addSequence() first");
    expect(() => p.report()).toThrow(InvalidArgumentError);
    expect(() => p.addSample({ scores: [[ok, ok]], oracle: grid2(ok) })).toThrow(
      "Expected an array of 2 layers, each an array of 2 heads ([2 layers][2 KV heads]) for scores but received Array(1)",
    );
    expect(() => p.addSample({ scores: grid2(ok), oracle: [[ok, ok], [ok]] })).toThrow("Expected an array of 2 heads for oracle[1] but received Array(1)");
    expect(() => p.addSample({ scores: grid2(new Float32Array(0)), oracle: grid2(new Float32Array(0)) })).toThrow(
      "Expected at least one context token for scores[0][0] but received Float32Array(0)",
    );
    expect(() => p.addSample({ scores: grid2(new Int32Array(10)), oracle: grid2(ok) })).toThrow(
      "Expected a Float32Array, Float64Array or array of numbers (one per context token) for scores[0][0] but received Int32Array(10)",
    );
    expect(() => p.addSample({ scores: grid2(ok), oracle: grid2(new Float32Array(9)) })).toThrow(
      "Expected 10 values (one per context token, as scores[0][0] has) for oracle[0][0] but received Float32Array(9)",
    );
    const negative = new Float32Array(10);
    negative[7] = -1;
    expect(() => p.addSample({ scores: grid2(ok), oracle: [[ok, ok], [ok, negative]] as never })).toThrow(
      "Expected a finite non-negative number for oracle[1][1][7] but received -1 of type number",
    );
    expect(() => p.addSample({ scores: grid2([1, 2, "3", 4, 5, 6, 7, 8, 9, 10]), oracle: grid2(ok) })).toThrow(
      'Expected a number for scores[0][0][2] but received "3" of type string',
    );
    expect(() => p.addSample({ scores: grid2(ok), oracle: grid2(ok), decodeSteps: 1.5 })).toThrow("for decodeSteps but received 1.5 of type number");
    expect(p.samples).toBe(0);
  });
});

describe("saved samples and `lukv profile build`", () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "lukv-profiler-"));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  async function run(argv: string[]) {
    const out: string[] = [];
    const err: string[] = [];
    const code = await profileBuildCommand(argv, { out: (s) => out.push(s), err: (s) => err.push(s) });
    return { code, out: out.join("\n"), err: err.join("\n") };
  }

  function filled(r: () => number, o: Partial<ProfilerOptions> = {}, n = 3): Profiler {
    const p = new Profiler({ layers: 2, kvHeads: 2, sink: 2, window: 4, scorer: "knorm", model: "toy", ...o });
    for (let k = 0; k < n; k++) {
      p.addSample(sampleOf(2, 2, () => {
        const t = 30 + Math.floor(r() * 40);
        return { scores: randn(r, t), oracle: lognormal(r, t) };
      }, k === 1 ? undefined : 5));
    }
    return p;
  }

  test("save / load gives back the same profiler; overrides change the analysis only", () => {
    const r = rng(seed ^ 0x51);
    const p = filled(r);
    p.save(dir);
    expect(JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"))).toMatchObject({
      format: "lukv-profiler-samples",
      version: 1,
      layers: 2,
      kvHeads: 2,
      scorer: "knorm",
      sink: 2,
      window: 4,
      grid: 99,
      scope: "global",
      model: "toy",
      samples: [{ file: "sample-000000.f32", decodeSteps: 5 }, { file: "sample-000001.f32" }, { file: "sample-000002.f32", decodeSteps: 5 }],
    });
    const back = Profiler.load(dir);
    expect(back.samples).toBe(3);
    expect(back.build()).toEqual(p.build());
    expect(back.report()).toEqual(p.report());

    const other = Profiler.load(dir, { scope: "per-layer", grid: 9 });
    const fresh = new Profiler({ layers: 2, kvHeads: 2, sink: 2, window: 4, scorer: "knorm", model: "toy", scope: "per-layer", grid: 9 });
    const again = filled(rng(seed ^ 0x51));
    again.save(join(dir, "again"));
    const re = Profiler.load(join(dir, "again"), { scope: "per-layer", grid: 9 });
    expect(other.build()).toEqual(re.build());
    expect(other.build().grid).toBe(9);
    expect(fresh.scope).toBe("per-layer");

    // A smaller save into the same directory removes the files it no longer lists.
    const small = filled(r, {}, 1);
    small.save(dir);
    expect(existsSync(join(dir, "sample-000000.f32"))).toBe(true);
    expect(existsSync(join(dir, "sample-000002.f32"))).toBe(false);
    expect(Profiler.load(dir).samples).toBe(1);
  });

  test("bad directories are BadProfileErrors naming the problem; keepSamples: false cannot save", () => {
    const r = rng(seed ^ 0x52);
    expect(() => Profiler.load(dir)).toThrow(`${dir} holds no manifest.json: expected a directory written by profiler.save()`);
    filled(r).save(dir);
    writeFileSync(join(dir, "sample-000001.f32"), new Uint8Array(12));
    expect(() => Profiler.load(dir)).toThrow(BadProfileError);
    expect(() => Profiler.load(dir)).toThrow(/sample-000001\.f32 has 12 bytes but its \d+ tokens need \d+ \(float32 scores, then float32 oracle\)/);
    const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
    writeFileSync(join(dir, "manifest.json"), JSON.stringify({ ...manifest, scope: "all" }));
    expect(() => Profiler.load(dir)).toThrow(`${dir}: manifest options: Expected one of "global", "per-layer" for scope but received "all" of type string`);
    writeFileSync(join(dir, "manifest.json"), JSON.stringify({ ...manifest, samples: [{ ...manifest.samples[0], file: "../x.f32" }] }));
    expect(() => Profiler.load(dir)).toThrow('samples[0].file must be a file name like "sample-000000.f32"');
    expect(() => Profiler.load(dir, { window: 3 } as never)).toThrow('Expected only grid, scope, model, dataset, keepSamples in overrides but received "window"');
    const lean = filled(r, { keepSamples: false }, 1);
    expect(lean.samples).toBe(1);
    expect(() => lean.save(dir)).toThrow("save() needs the samples, but this profiler was made with keepSamples: false");
  });

  test("lukv profile build writes the profile and prints the report", async () => {
    const r = rng(seed ^ 0x53);
    const p = filled(r);
    p.save(dir);
    const def = await run([dir]);
    expect(def.err).toBe("");
    expect(def.code).toBe(0);
    expect(def.out).toContain(`read 3 samples from ${dir}: 2 layers × 2 KV heads, scorer knorm, sink 2, window 4`);
    expect(def.out).toContain(`wrote ${join(dir, "profile.json")} (lukv JSON, grid 99 × layers 2 × kvHeads 2, scope global)`);
    expect(def.out).toMatch(/hull gap {8}mean \d\.\d{4}, max \d\.\d{4} \(layer \d, head \d\)/);
    expect(def.out).toContain("ratio 0.5     lu-kv ");
    expect(loadProfile(join(dir, "profile.json"))).toEqual(p.build());

    const npy = await run([dir, "--out", join(dir, "p.npy"), "--scope", "per-layer", "--grid", "19"]);
    expect(npy.code).toBe(0);
    const want = Profiler.load(dir, { scope: "per-layer", grid: 19 }).build();
    expect(loadProfile(join(dir, "p.npy")).table).toEqual(want.table);
    expect(npy.out).toContain("(.npy, table only, grid 19 × layers 2 × kvHeads 2, scope per-layer)");

    const help = await run(["--help"]);
    expect([help.code, help.out]).toEqual([0, expect.stringContaining("usage: lukv profile build DIR")]);
    const none = await run([]);
    expect([none.code, none.err]).toEqual([2, expect.stringContaining("lukv profile build: build needs a DIR")]);
    const scope = await run([dir, "--scope", "layer"]);
    expect([scope.code, scope.err]).toEqual([2, expect.stringContaining('--scope must be global or per-layer, got "layer"')]);
    const grid = await run([dir, "--grid", "0"]);
    expect([grid.code, grid.err]).toEqual([2, expect.stringContaining('--grid must be an integer between 1 and 100000, got "0"')]);
    const out = await run([dir, "--out", "p.txt"]);
    expect([out.code, out.err]).toEqual([2, expect.stringContaining('--out must end in .npy or .json, got "p.txt"')]);
    const missing = await run([join(dir, "nothing")]);
    expect([missing.code, missing.err]).toEqual([1, expect.stringContaining("holds no manifest.json")]);
  });
});
