import {
  budgetLoss,
  lowerHull,
  solveBudgets,
  solveBudgetsDetailed,
  solveBudgetsExact,
  solveBudgetsForTotals,
  type LossCurve,
} from "../ts/budget";
import { rng, testSeed } from "./helpers/random";

// Fresh random data each run; rerun a failure with LUKV_SEED=<seed>.
const SEED = testSeed("budget-solver");

const rand = rng(SEED);
const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));

/** Like a real head: heavy-tailed importances evicted in a noisy scorer's order. */
function nonConvexCurve(T: number): number[] {
  const imp = Array.from({ length: T }, () => Math.log(1 - rand()) ** 2);
  const noisy = imp.map((v, j) => ({ v, score: v + rand() * 1.5, j }));
  noisy.sort((a, b) => a.score - b.score || a.j - b.j);
  const y = [0];
  for (const t of noisy) y.push(y[y.length - 1] + t.v);
  return y;
}

function convexCurve(T: number): number[] {
  const inc = Array.from({ length: T }, () => rand() * 5).sort((a, b) => a - b);
  const y = [0];
  for (const m of inc) y.push(y[y.length - 1] + m);
  return y;
}

function sum(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i];
  return s;
}

/** Every allocation with the right total, by brute force (tiny problems only). */
function bruteForceOptimum(curves: number[][], total: number, lo: number[], hi: number[]): number {
  let best = Infinity;
  const rec = (h: number, left: number, acc: number) => {
    if (h === curves.length) {
      if (left === 0) best = Math.min(best, acc);
      return;
    }
    const T = curves[h].length - 1;
    for (let b = lo[h]; b <= Math.min(hi[h], left); b++) rec(h + 1, left - b, acc + curves[h][T - b]);
  };
  rec(0, total, 0);
  return best;
}

/** The textbook greedy, one unit at a time with a linear scan over heads, on lowerHull's marginals. */
function unitGreedy(curves: number[][], total: number, lo: number[], hi: number[]): number[] {
  const marg = curves.map((c) => lowerHull(c));
  const keep = lo.slice();
  for (let left = total - sum(lo); left > 0; left--) {
    let pick = -1;
    let bestGain = -Infinity;
    for (let h = 0; h < curves.length; h++) {
      if (keep[h] >= hi[h]) continue;
      const T = curves[h].length - 1;
      const gain = marg[h][T - keep[h] - 1]; // saving from keeping one more token
      if (gain > bestGain) {
        bestGain = gain;
        pick = h;
      }
    }
    keep[pick]++;
  }
  return keep;
}

describe(`greedy against exact optimum (seed ${SEED})`, () => {
  test("on convex curves the greedy loss equals the exact optimum", () => {
    for (let trial = 0; trial < 60; trial++) {
      const H = int(1, 6);
      const curves = Array.from({ length: H }, () => convexCurve(int(0, 25)));
      const T = curves.map((c) => c.length - 1);
      const total = int(0, sum(T));
      const greedy = solveBudgetsDetailed(curves, total);
      const exact = solveBudgetsExact(curves, total);
      expect(sum(greedy.keep)).toBe(total);
      expect(sum(exact)).toBe(total);
      const exactLoss = budgetLoss(curves, exact);
      expect(greedy.trueLoss).toBeCloseTo(exactLoss, 8);
      expect(greedy.gapBound).toBeLessThan(1e-9 * (1 + exactLoss));
    }
  });

  test("on non-convex curves the greedy is within the hull-gap bound of the exact optimum", () => {
    let sawGap = false;
    for (let trial = 0; trial < 80; trial++) {
      const H = int(1, 7);
      const curves = Array.from({ length: H }, () => nonConvexCurve(int(0, 30)));
      const T = curves.map((c) => c.length - 1);
      const minKeep = T.map((t) => Math.min(t, int(0, 3)));
      const lo = minKeep;
      const total = int(sum(lo), sum(T));
      const greedy = solveBudgetsDetailed(curves, total, { minKeep });
      const exact = solveBudgetsExact(curves, total, { minKeep });
      const exactLoss = budgetLoss(curves, exact);
      const eps = 1e-9 * (1 + Math.abs(exactLoss));
      expect(budgetLoss(curves, greedy.keep)).toBeCloseTo(greedy.trueLoss, 9);
      // The exact answer is optimal; the relaxation is below it; the gap bounds the rest.
      expect(greedy.trueLoss).toBeGreaterThanOrEqual(exactLoss - eps);
      expect(greedy.relaxedLoss).toBeLessThanOrEqual(exactLoss + eps);
      expect(greedy.trueLoss - exactLoss).toBeLessThanOrEqual(greedy.gapBound + eps);
      expect(greedy.trueLoss - greedy.relaxedLoss).toBeCloseTo(greedy.gapBound, 9);
      for (let h = 0; h < H; h++) {
        expect(greedy.keep[h]).toBeGreaterThanOrEqual(lo[h]);
        expect(greedy.keep[h]).toBeLessThanOrEqual(T[h]);
      }
      if (greedy.gapBound > 1e-6) sawGap = true;
    }
    // The data must actually exercise non-convexity, or the bound was never tested.
    expect(sawGap).toBe(true);
  });

  test("the exact solver agrees with brute force", () => {
    for (let trial = 0; trial < 60; trial++) {
      const H = int(1, 4);
      const curves = Array.from({ length: H }, () => nonConvexCurve(int(0, 6)));
      const T = curves.map((c) => c.length - 1);
      const lo = T.map((t) => Math.min(t, int(0, 2)));
      const hi = T.map((t, h) => Math.max(lo[h], Math.min(t, int(0, 6))));
      const total = int(sum(lo), sum(hi));
      const exact = solveBudgetsExact(curves, total, { minKeep: lo, maxKeep: hi });
      expect(sum(exact)).toBe(total);
      for (let h = 0; h < H; h++) {
        expect(exact[h]).toBeGreaterThanOrEqual(lo[h]);
        expect(exact[h]).toBeLessThanOrEqual(hi[h]);
      }
      expect(budgetLoss(curves, exact)).toBeCloseTo(bruteForceOptimum(curves, total, lo, hi), 9);
    }
  });

  test("segment-at-a-time greedy equals the unit-at-a-time greedy, ties to the lower head", () => {
    for (let trial = 0; trial < 60; trial++) {
      const H = int(1, 8);
      // Integer curves produce many equal marginals, so tie-breaking is exercised.
      const curves = Array.from({ length: H }, () => {
        const T = int(0, 20);
        const y = [0];
        for (let n = 1; n <= T; n++) y.push(y[n - 1] + int(0, 4));
        return y;
      });
      const T = curves.map((c) => c.length - 1);
      const lo = T.map((t) => Math.min(t, int(0, 2)));
      const hi = T.map((t, h) => Math.max(lo[h], t - int(0, 2)));
      const total = int(sum(lo), sum(hi));
      const keep = solveBudgets(curves, total, { minKeep: lo, maxKeep: hi });
      expect(Array.from(keep)).toEqual(unitGreedy(curves, total, lo, hi));
    }
  });
});

describe(`solver properties (seed ${SEED})`, () => {
  test("answers are nested: one more unit never takes a token from any head", () => {
    const curves = Array.from({ length: 6 }, () => nonConvexCurve(int(5, 40)));
    const T = sum(curves.map((c) => c.length - 1));
    let prev = solveBudgets(curves, 0);
    for (let total = 1; total <= T; total++) {
      const keep = solveBudgets(curves, total);
      let grew = 0;
      for (let h = 0; h < keep.length; h++) {
        expect(keep[h]).toBeGreaterThanOrEqual(prev[h]);
        grew += keep[h] - prev[h];
      }
      expect(grew).toBe(1);
      prev = keep;
    }
  });

  test("solveBudgetsForTotals matches one solve per total, in the order given", () => {
    const curves = Array.from({ length: 9 }, () => nonConvexCurve(int(0, 50)));
    const minKeep = 2;
    const T = curves.map((c) => c.length - 1);
    const lo = sum(T.map((t) => Math.min(t, minKeep)));
    const totals = Array.from({ length: 25 }, () => int(lo, sum(T)));
    const many = solveBudgetsForTotals(curves, totals, { minKeep });
    expect(many).toHaveLength(totals.length);
    totals.forEach((total, i) => {
      const one = solveBudgetsDetailed(curves, total, { minKeep });
      expect(Array.from(many[i].keep)).toEqual(Array.from(one.keep));
      expect(many[i].trueLoss).toBe(one.trueLoss);
      expect(many[i].relaxedLoss).toBe(one.relaxedLoss);
      expect(many[i].gapBound).toBe(one.gapBound);
    });
  });

  test("deterministic: the same input gives the same answer, equal heads split by index", () => {
    const curves = Array.from({ length: 5 }, () => nonConvexCurve(int(10, 30)));
    const total = Math.floor(sum(curves.map((c) => c.length - 1)) / 3);
    const a = solveBudgets(curves, total);
    const b = solveBudgets(curves.map((c) => Float64Array.from(c)), total);
    expect(Array.from(b)).toEqual(Array.from(a));
    // Float32 curves are the same problem as their values in doubles.
    const f32 = curves.map((c) => Float32Array.from(c));
    expect(Array.from(solveBudgets(f32, total))).toEqual(Array.from(solveBudgets(f32.map((c) => Array.from(c)), total)));
    // Identical linear heads: every unit is a tie, so head 0 fills first, then head 1.
    const line = [0, 1, 2, 3, 4];
    expect(Array.from(solveBudgets([line, line, line], 6))).toEqual([4, 2, 0]);
    expect(Array.from(solveBudgetsExact([line, line, line], 6))).toEqual([4, 2, 0]);
  });
});

describe("solver edge cases", () => {
  const curves: LossCurve[] = [
    [0, 1, 5, 6],
    [0, 2, 3],
    [0, 0, 4, 9, 10],
  ];

  test("total = Σ minKeep keeps exactly minKeep", () => {
    expect(Array.from(solveBudgets(curves, 3, { minKeep: 1 }))).toEqual([1, 1, 1]);
    expect(Array.from(solveBudgetsExact(curves, 3, { minKeep: 1 }))).toEqual([1, 1, 1]);
    expect(Array.from(solveBudgets(curves, 0))).toEqual([0, 0, 0]);
  });

  test("total = Σ maxKeep keeps exactly maxKeep (capped by head length)", () => {
    expect(Array.from(solveBudgets(curves, 9))).toEqual([3, 2, 4]);
    expect(Array.from(solveBudgets(curves, 7, { maxKeep: [2, 2, 3] }))).toEqual([2, 2, 3]);
    // maxKeep 3 caps head 2 (length 4); the hull savings then fill heads 2, 0, 1 in that order.
    expect(Array.from(solveBudgets(curves, 7, { maxKeep: 3 }))).toEqual([2, 2, 3]);
  });

  test("a single head keeps the total; empty heads keep nothing", () => {
    expect(Array.from(solveBudgets([[0, 3, 4, 8, 9]], 3))).toEqual([3]);
    expect(Array.from(solveBudgets([[7], [0, 1, 3], [2]], 2, { minKeep: 4 }))).toEqual([0, 2, 0]);
    expect(Array.from(solveBudgets([], 0))).toEqual([]);
  });

  test("the greedy picks the head whose hull saves most", () => {
    // Keeping b tokens costs curve[T - b]. Head 0's hull saves 2.5 per token for its
    // first two tokens and 1 for the third; head 1's saves 1.5 for each of its two.
    const two = solveBudgetsDetailed([[0, 1, 5, 6], [0, 2, 3]], 2);
    expect(Array.from(two.keep)).toEqual([2, 0]);
    expect([two.trueLoss, two.relaxedLoss, two.gapBound]).toEqual([1 + 3, 1 + 3, 0]);
    // The third token goes to head 1, which stops mid-segment: hull 1.5, true loss 2.
    const three = solveBudgetsDetailed([[0, 1, 5, 6], [0, 2, 3]], 3);
    expect(Array.from(three.keep)).toEqual([2, 1]);
    expect([three.trueLoss, three.relaxedLoss, three.gapBound]).toEqual([1 + 2, 1 + 1.5, 0.5]);
  });

  test("a scalar minKeep larger than a short head is clamped to its length", () => {
    expect(Array.from(solveBudgets([[0, 1], [0, 1, 2, 3, 4, 5]], 5, { minKeep: 4 }))).toEqual([1, 4]);
  });

  test("infeasible totals and bad bounds name the parameter", () => {
    expect(() => solveBudgets(curves, 10)).toThrow(
      "Expected an integer between 0 (the sum of minKeep) and 9 (the sum of maxKeep, capped by head lengths) for totalKeep but received 10 of type number",
    );
    expect(() => solveBudgets(curves, 2, { minKeep: 1 })).toThrow(
      "Expected an integer between 3 (the sum of minKeep) and 9 (the sum of maxKeep, capped by head lengths) for totalKeep but received 2 of type number",
    );
    expect(() => solveBudgetsExact(curves, 10)).toThrow("for totalKeep but received 10 of type number");
    expect(() => solveBudgets(curves, 2.5)).toThrow("Expected a non-negative integer for totalKeep but received 2.5 of type number");
    expect(() => solveBudgets(curves, 3, { minKeep: [1, 1] })).toThrow(
      "Expected an array of 3 bounds (one per head) for options.minKeep but received Array(2)",
    );
    expect(() => solveBudgets(curves, 3, { maxKeep: [1, -1, 1] })).toThrow(
      "Expected a non-negative integer or Infinity for options.maxKeep[1] but received -1 of type number",
    );
    expect(() => solveBudgets(curves, 3, { minKeep: Infinity })).toThrow(
      "Expected a non-negative integer for options.minKeep but received Infinity of type number",
    );
    expect(() => solveBudgets([[0, 1], [0, NaN, 2]], 1)).toThrow("Expected a finite number for curves[1][1] but received NaN of type number");
    expect(() => solveBudgets([[0, 1], [0, 1, 2, 3, 4, 5, 6, -Infinity]], 1)).toThrow(
      "Expected a finite number for curves[1][7] but received -Infinity of type number",
    );
    expect(() => solveBudgets([[0, 1], new Float32Array([0, 1, 2, 3, 4, NaN])], 1)).toThrow(
      "Expected a finite number for curves[1][5] but received NaN of type number",
    );
    expect(() => solveBudgets([[0, "1" as unknown as number]], 1)).toThrow('Expected a finite number for curves[0][1] but received "1" of type string');
    expect(() => solveBudgets([[0, 1], []], 1)).toThrow(
      "Expected an array of at least 1 number (loss after evicting 0..T tokens) for curves[1] but received Array(0)",
    );
    expect(() => solveBudgets("x" as unknown as number[][], 1)).toThrow("Expected an array of loss curves (one per head) for curves");
    expect(() => solveBudgetsForTotals(curves, [1, 99])).toThrow("for totals[1] but received 99 of type number");
  });

  test("the exact solver refuses problems over its step limit", () => {
    const big = Array.from({ length: 4 }, () => new Float64Array(2001));
    expect(() => solveBudgetsExact(big, 4000, { maxSteps: 1e6 })).toThrow(
      "solveBudgetsExact would need 32024004 steps, more than options.maxSteps = 1000000: use solveBudgets or a smaller problem",
    );
  });

  test("budgetLoss checks the allocation", () => {
    expect(budgetLoss(curves, [1, 1, 1])).toBe(5 + 2 + 9);
    expect(() => budgetLoss(curves, [1, 1])).toThrow("Expected an array of 3 keep counts (one per curve) for keep but received Array(2)");
    expect(() => budgetLoss(curves, [1, 3, 1])).toThrow("Expected an integer between 0 and 2 for keep[1] but received 3 of type number");
  });
});
