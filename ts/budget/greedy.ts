import { invalid } from "../errors";
import { buildHull, hullValueAt, segmentAt, type Hull } from "./hull";
import { budgetProblem, checkTotal, type BudgetOptions, type BudgetProblem, type LossCurve } from "./problem";

/** A budget allocation with the numbers needed to judge it. */
export interface BudgetSolution {
  /** Tokens kept per head, in the order of the curves. */
  keep: Int32Array;
  /** Σ_h L_h(keep_h) on the original curves. */
  trueLoss: number;
  /**
   * Σ_h of the convex-hull loss at keep_h. For the greedy answer this is the optimum
   * of the relaxed problem, so no allocation of the same total does better on the
   * original curves: it is a lower bound on the true optimum.
   */
  relaxedLoss: number;
  /**
   * Σ_h max(0, L_h(keep_h) − hull_h(keep_h)): the hull gap where each head stopped.
   * Only heads that stop strictly inside a hull segment contribute. For the greedy
   * answer, trueLoss − optimum ≤ gapBound.
   */
  gapBound: number;
}

/**
 * The greedy's state: per head the current eviction count n (tokens not yet given
 * back) and the hull segment holding the next step n → n−1. Heads are in a max-heap
 * on that segment's slope (the loss saved per token kept), ties to the lower index.
 */
class Greedy {
  readonly n: Int32Array;
  private readonly seg: Int32Array;
  private readonly floor: Int32Array;
  private readonly heap: Int32Array;
  private size = 0;
  private readonly key: Float64Array;

  constructor(
    private readonly hulls: Hull[],
    problem: BudgetProblem,
  ) {
    const H = problem.heads;
    this.n = new Int32Array(H);
    this.seg = new Int32Array(H);
    this.floor = new Int32Array(H);
    this.heap = new Int32Array(H);
    this.key = new Float64Array(H);
    for (let h = 0; h < H; h++) {
      const T = problem.lengths[h];
      this.n[h] = T - problem.lo[h];
      this.floor[h] = T - problem.hi[h];
      if (this.n[h] > this.floor[h]) {
        // The step n → n−1 lies on the segment that starts strictly below n.
        this.seg[h] = segmentAt(hulls[h], this.n[h] - 1);
        this.key[h] = hulls[h].slopes[this.seg[h]];
        this.heap[this.size++] = h;
      }
    }
    for (let i = (this.size >> 1) - 1; i >= 0; i--) this.siftDown(i);
  }

  private before(a: number, b: number): boolean {
    const ka = this.key[a];
    const kb = this.key[b];
    return ka > kb || (ka === kb && a < b);
  }

  private siftDown(i: number): void {
    const heap = this.heap;
    const h = heap[i];
    for (;;) {
      let c = 2 * i + 1;
      if (c >= this.size) break;
      if (c + 1 < this.size && this.before(heap[c + 1], heap[c])) c++;
      if (!this.before(heap[c], h)) break;
      heap[i] = heap[c];
      i = c;
    }
    heap[i] = h;
  }

  /**
   * Gives `units` more kept tokens, a whole hull segment at a time: one head keeps
   * taking units while its slope stays on top, so this is exactly the unit-by-unit
   * greedy with ties broken by head index, in O(segments · log H).
   */
  advance(units: number): void {
    while (units > 0 && this.size > 0) {
      const h = this.heap[0];
      const hull = this.hulls[h];
      const j = this.seg[h];
      const stop = Math.max(hull.vertices[j], this.floor[h]);
      const take = Math.min(units, this.n[h] - stop);
      this.n[h] -= take;
      units -= take;
      if (this.n[h] > stop) break; // budget ran out inside the segment
      if (this.n[h] === this.floor[h]) {
        this.heap[0] = this.heap[--this.size];
      } else {
        this.seg[h] = j - 1;
        this.key[h] = hull.slopes[j - 1];
      }
      if (this.size > 0) this.siftDown(0);
    }
  }
}

function hullsOf(curves: readonly LossCurve[], problem: BudgetProblem): Hull[] {
  const hulls = new Array<Hull>(problem.heads);
  for (let h = 0; h < problem.heads; h++) hulls[h] = buildHull(curves[h], `curves[${h}]`);
  return hulls;
}

function solution(curves: readonly LossCurve[], hulls: Hull[], problem: BudgetProblem, n: Int32Array): BudgetSolution {
  const keep = new Int32Array(problem.heads);
  let trueLoss = 0;
  let relaxedLoss = 0;
  let gapBound = 0;
  for (let h = 0; h < problem.heads; h++) {
    keep[h] = problem.lengths[h] - n[h];
    const y = curves[h][n[h]] as number;
    const hv = hullValueAt(hulls[h], curves[h], n[h]);
    trueLoss += y;
    relaxedLoss += hv;
    if (y > hv) gapBound += y - hv;
  }
  return { keep, trueLoss, relaxedLoss, gapBound };
}

/**
 * LU-KV budget allocation: splits `totalKeep` kept tokens across heads to minimise the
 * summed convex-hull loss, by the marginal-utility greedy over a heap of heads.
 *
 * Curve convention: `curves[h][n]` is head h's loss after evicting n tokens,
 * n = 0..T_h (heads may differ in length); keeping b tokens costs `curves[h][T_h − b]`.
 * Each head starts at its minKeep and the greedy repeatedly gives one more kept token
 * to the head whose hull saves the most loss for it; equal savings go to the lower
 * head index, so the answer is deterministic. O(N log H) for N = total − Σ minKeep
 * budget units (in practice faster: whole hull segments are taken at once), plus
 * O(Σ T_h) to build the hulls.
 *
 * @param curves one cumulative-eviction-loss curve per head (finite numbers; the hull's change
 *   per token within the float64 range).
 * @param totalKeep tokens to keep in all, an integer in [Σ minKeep, Σ maxKeep].
 * @param options minKeep (default 0) and maxKeep (default each head's length).
 * @returns keep count per head.
 * @throws InvalidArgumentError for malformed curves, bounds or an infeasible total.
 */
export function solveBudgets(curves: readonly LossCurve[], totalKeep: number, options?: BudgetOptions): Int32Array {
  return solveBudgetsDetailed(curves, totalKeep, options).keep;
}

/**
 * {@link solveBudgets} that also reports the true loss, the relaxed loss (a lower
 * bound on the optimum) and the hull-gap bound on the distance to the optimum.
 */
export function solveBudgetsDetailed(curves: readonly LossCurve[], totalKeep: number, options?: BudgetOptions): BudgetSolution {
  const problem = budgetProblem(curves, options);
  const total = checkTotal(problem, totalKeep);
  const hulls = hullsOf(curves, problem);
  const greedy = new Greedy(hulls, problem);
  greedy.advance(total - problem.sumLo);
  return solution(curves, hulls, problem, greedy.n);
}

/**
 * Solves one problem for several totals at once, as a profiler does for its grid of
 * compression ratios. Greedy answers are nested (a larger total extends a smaller
 * one), so the hulls are built once and one greedy pass serves every total.
 * Each answer equals `solveBudgetsDetailed(curves, totals[i], options)`.
 *
 * @param totals integers in [Σ minKeep, Σ maxKeep], in any order.
 * @returns one solution per total, in the order given.
 */
export function solveBudgetsForTotals(
  curves: readonly LossCurve[],
  totals: ArrayLike<number>,
  options?: BudgetOptions,
): BudgetSolution[] {
  const problem = budgetProblem(curves, options);
  if (totals === null || typeof totals !== "object" || typeof totals.length !== "number") {
    throw invalid("totals", "an array of integers", totals);
  }
  const order = Array.from({ length: totals.length }, (_, i) => i);
  for (let i = 0; i < totals.length; i++) checkTotal(problem, totals[i], `totals[${i}]`);
  order.sort((a, b) => totals[a] - totals[b]);
  const hulls = hullsOf(curves, problem);
  const greedy = new Greedy(hulls, problem);
  const out = new Array<BudgetSolution>(totals.length);
  let given = problem.sumLo;
  for (const i of order) {
    greedy.advance(totals[i] - given);
    given = totals[i];
    out[i] = solution(curves, hulls, problem, greedy.n);
  }
  return out;
}

/**
 * The true loss of an allocation: Σ_h curves[h][T_h − keep[h]].
 *
 * @param keep tokens kept per head, each in [0, T_h].
 * @throws InvalidArgumentError when keep does not match the curves.
 */
export function budgetLoss(curves: readonly LossCurve[], keep: ArrayLike<number>): number {
  const problem = budgetProblem(curves, undefined);
  if (keep === null || typeof keep !== "object" || keep.length !== problem.heads) {
    throw invalid("keep", `an array of ${problem.heads} keep counts (one per curve)`, keep);
  }
  let loss = 0;
  for (let h = 0; h < problem.heads; h++) {
    const b = keep[h];
    if (!Number.isInteger(b) || b < 0 || b > problem.lengths[h]) {
      throw invalid(`keep[${h}]`, `an integer between 0 and ${problem.lengths[h]}`, b);
    }
    const y = curves[h][problem.lengths[h] - b];
    if (typeof y !== "number" || !Number.isFinite(y)) {
      throw invalid(`curves[${h}][${problem.lengths[h] - b}]`, "a finite number", y);
    }
    loss += y;
  }
  return loss;
}
