// Allocation checked against its definition, not a port of the code: the integer budgets of uniform
// and pyramidkv minimise Σ (b − ideal)² within [forced tokens, length] with an exact total
// (enumerating every candidate on small caches), and kept totals are exact and monotone in the ratio.
import { KVCache } from "../ts";
import { allFits, bounds, fitCost, idealBudgets, keptTotal, leastSquaresFit } from "./helpers/evict-reference";
import { randn, rng, testSeed } from "./helpers/random";

const seed = testSeed("allocation-definition");

function bruteMin(ideal: number[], lo: number[], hi: number[], total: number): number {
  let best = Infinity;
  for (const b of allFits(lo, hi, total)) best = Math.min(best, fitCost(b, ideal));
  return best;
}

test("the greedy least-squares reference reaches the enumerated minimum", () => {
  const r = rng(seed);
  for (let k = 0; k < 300; k++) {
    const n = 1 + Math.floor(r() * 4);
    const lo = Array.from({ length: n }, () => Math.floor(r() * 3));
    const hi = lo.map((l) => l + Math.floor(r() * 5));
    const ideal = hi.map(() => r() * 8 - 1);
    const sumLo = lo.reduce((a, b) => a + b, 0), sumHi = hi.reduce((a, b) => a + b, 0);
    const total = sumLo + Math.floor(r() * (sumHi - sumLo + 1));
    const b = leastSquaresFit(ideal, lo, hi, total);
    expect(b.reduce((a, c) => a + c, 0)).toBe(total);
    expect(fitCost(b, ideal)).toBeCloseTo(bruteMin(ideal, lo, hi, total), 9);
  }
});

test.each(["uniform", "pyramidkv"] as const)("%s: compress keeps the least-squares integer budgets (enumerated) with the exact total", (allocation) => {
  const r = rng(seed ^ allocation.length);
  const shape = { layers: 2, kvHeads: 2, queryHeads: 2, headDim: 4, pageSize: 2, maxTokens: 1024, dtype: "f32" as const, threads: 1 };
  const sink = 1, window = 1;
  for (let trial = 0; trial < 40; trial++) {
    const cache = new KVCache(shape);
    try {
      const seq = cache.createSequence();
      for (let l = 0; l < shape.layers; l++) {
        const t = 3 + Math.floor(r() * 8);
        seq.append(l, randn(r, t * 8), randn(r, t * 8));
      }
      // Explicit budgets first, so that the heads of a layer differ in length.
      const lens0 = seq.lengths();
      seq.compress({ budgets: Int32Array.from(lens0, (n) => 1 + Math.floor(r() * n)), scorer: "knorm", sink, window });
      const lengths = Array.from(seq.lengths());
      const ratio = Math.floor(r() * 95) / 100;
      const input = { lengths, layers: shape.layers, kvHeads: shape.kvHeads, ratio, sink, window, scores: [], allocation };
      const report = seq.compress({ ratio, allocation, scorer: "knorm", sink, window });
      const kept = Array.from(report.kept);
      const { lo, hi } = bounds(lengths, sink, window);
      const total = keptTotal(input);
      expect(report.total).toBe(total);
      expect(kept.reduce((a, c) => a + c, 0)).toBe(total);
      kept.forEach((k, i) => expect(k >= lo[i] && k <= hi[i]).toBe(true));
      const ideal = idealBudgets(input);
      expect(fitCost(kept, ideal)).toBeCloseTo(bruteMin(ideal, lo, hi, total), 6);
    } finally {
      cache.dispose();
    }
  }
});

// Equal remainders (equal in exact arithmetic; 3.6 + b and 2.6 + b differ in their last bits) go
// to the lower head, as docs/methods.md says and as the lukv allocation does.
test.each([
  ["uniform, budget 5", [15, 16, 15, 17, 15, 14, 14, 14], 2, 4, { budget: 5, sink: 1 }, [5, 5, 5, 6, 5, 5, 5, 4]],
  ["uniform, budget 7", [12, 8, 5, 15, 9], 5, 1, { budget: 7, sink: 1 }, [9, 6, 3, 11, 6]],
  ["pyramidkv, beta 2", [40, 40, 40, 40, 40, 40], 3, 2, { budget: 13, sink: 0, allocation: "pyramidkv", beta: 2 }, [20, 20, 13, 13, 6, 6]],
  ["uniform, ratio 0.1", [17, 17, 37, 7, 20], 5, 1, { ratio: 0.1, sink: 1 }, [16, 15, 33, 6, 18]],
] as const)("largest remainders that tie go to the lower head: %s", (_name, lengths, layers, kvHeads, options, want) => {
  const cache = new KVCache({ layers, kvHeads, queryHeads: kvHeads, headDim: 4, pageSize: 4, maxTokens: 4096, dtype: "f32", threads: 1 });
  try {
    const seq = cache.createSequence();
    const longest = Math.max(...lengths);
    for (let l = 0; l < layers; l++) {
      const rows = new Float32Array(longest * kvHeads * 4).map((_, i) => Math.sin(i + l));
      seq.append(l, rows, rows);
    }
    seq.compress({ budgets: Int32Array.from(lengths), scorer: "streaming", sink: 0, window: 0 });
    expect(Array.from(seq.lengths())).toEqual(lengths);
    const report = seq.compress({ scorer: "knorm", window: 0, ...options });
    expect(Array.from(report.kept)).toEqual(want);
  } finally {
    cache.dispose();
  }
});

// Only remainders equal but for rounding are ties: 2.5 − 2.5e-12 beats 1.5 − 1.5e-12's remainder.
test("remainders that differ by more than rounding are not ties", () => {
  const cache = new KVCache({ layers: 1, kvHeads: 2, queryHeads: 2, headDim: 4, pageSize: 4, maxTokens: 64, dtype: "f32", threads: 1 });
  try {
    const seq = cache.createSequence();
    const rows = new Float32Array(5 * 2 * 4).map((_, i) => Math.sin(i));
    seq.append(0, rows, rows);
    seq.compress({ budgets: Int32Array.from([5, 3]), scorer: "streaming", sink: 0, window: 0 });
    const report = seq.compress({ ratio: 0.5 + 1e-12, scorer: "knorm", sink: 0, window: 0 });
    expect(Array.from(report.kept)).toEqual([2, 2]);
  } finally {
    cache.dispose();
  }
});

test.each(["uniform", "pyramidkv", "adakv"] as const)("%s: the kept total is round((1 − ratio) · tokens) and falls as the ratio rises", (allocation) => {
  const r = rng(seed ^ (allocation.length * 7));
  const shape = { layers: 3, kvHeads: 2, queryHeads: 4, headDim: 4, pageSize: 4, maxTokens: 4096, dtype: "f32" as const, threads: 1 };
  const k = randn(r, 200 * 8), v = randn(r, 200 * 8);
  let previous = Infinity;
  for (const ratio of [0, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 0.95]) {
    const cache = new KVCache(shape);
    try {
      const seq = cache.createSequence();
      for (let l = 0; l < shape.layers; l++) seq.append(l, k.subarray(0, (100 + 40 * l) * 8), v.subarray(0, (100 + 40 * l) * 8));
      const before = seq.lengths().reduce((a, c) => a + c, 0);
      const report = seq.compress({ ratio, allocation, scorer: "knorm", sink: 2, window: 4 });
      const forced = shape.layers * shape.kvHeads * 6;
      expect(report.total).toBe(Math.max(forced, Math.round((1 - ratio) * before)));
      expect(seq.lengths().reduce((a, c) => a + c, 0)).toBe(report.total);
      expect(report.total).toBeLessThanOrEqual(previous);
      previous = report.total;
    } finally {
      cache.dispose();
    }
  }
});
