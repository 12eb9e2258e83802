import { InvalidArgumentError, invalid } from "../errors";
import { budgetProblem, checkTotal, finiteAt, type BudgetOptions, type BudgetProblem, type LossCurve } from "./problem";

/** Options of {@link solveBudgetsExact}. */
export interface ExactBudgetOptions extends BudgetOptions {
  /**
   * Refuse problems needing more dynamic-programming steps than this, since time grows
   * as Σ_h range_h × units and memory as heads × units. Default 5e7 (well under a second).
   */
  maxSteps?: number;
}

/** solveBudgetsExact's default limit on its dynamic programme's steps. */
export const EXACT_MAX_STEPS = 5e7;

/** @internal The steps solveBudgetsExact's dynamic programme takes for `problem` at `total` (checked). */
export function exactSteps(problem: Pick<BudgetProblem, "heads" | "lo" | "hi" | "sumLo">, total: number): number {
  const extra = total - problem.sumLo;
  let steps = 0;
  for (let h = 0; h < problem.heads; h++) steps += (Math.min(problem.hi[h] - problem.lo[h], extra) + 1) * (extra + 1);
  return steps;
}

/**
 * Exact optimum of the ORIGINAL (non-convex) budget problem by dynamic programming:
 * minimises Σ_h curves[h][T_h − keep_h] subject to Σ keep = totalKeep and the bounds.
 * Same curve convention and options as {@link solveBudgets}. Meant for checking the
 * greedy and for small problems: O(Σ_h (maxKeep_h − minKeep_h) × U) time and
 * O(H × U) memory, U = totalKeep − Σ minKeep. Among equal optima, each head (from
 * the last to the first) takes the fewest extra tokens, so the answer is deterministic.
 *
 * @returns keep count per head.
 * @throws InvalidArgumentError for malformed input, an infeasible total or a problem over maxSteps.
 */
export function solveBudgetsExact(curves: readonly LossCurve[], totalKeep: number, options?: ExactBudgetOptions): Int32Array {
  const problem = budgetProblem(curves, options, ["minKeep", "maxKeep", "maxSteps"]);
  const total = checkTotal(problem, totalKeep);
  const maxSteps = options?.maxSteps ?? EXACT_MAX_STEPS;
  if (typeof maxSteps !== "number" || !(maxSteps > 0)) throw invalid("options.maxSteps", "a positive number", maxSteps);
  const { heads, lengths, lo, hi } = problem;
  const U = total - problem.sumLo;

  const steps = exactSteps(problem, total);
  if (steps > maxSteps) {
    throw new InvalidArgumentError(
      `solveBudgetsExact would need ${steps} steps, more than options.maxSteps = ${maxSteps}: use solveBudgets or a smaller problem`,
    );
  }

  // best[s]: least loss of the heads so far with s extra units beyond their minKeep.
  let best = new Float64Array(U + 1).fill(Infinity);
  let next = new Float64Array(U + 1);
  best[0] = 0;
  const choice = new Int32Array(heads * (U + 1));
  const cost = new Float64Array(U + 1);
  for (let h = 0; h < heads; h++) {
    const T = lengths[h];
    const range = Math.min(hi[h] - lo[h], U);
    for (let u = 0; u <= range; u++) cost[u] = finiteAt(curves[h], T - lo[h] - u, `curves[${h}]`);
    const row = h * (U + 1);
    for (let s = 0; s <= U; s++) {
      let v = Infinity;
      let arg = 0;
      const top = Math.min(range, s);
      for (let u = 0; u <= top; u++) {
        const c = best[s - u] + cost[u];
        if (c < v) {
          v = c;
          arg = u;
        }
      }
      next[s] = v;
      choice[row + s] = arg;
    }
    [best, next] = [next, best];
  }

  const keep = new Int32Array(heads);
  let s = U;
  for (let h = heads - 1; h >= 0; h--) {
    const u = choice[h * (U + 1) + s];
    keep[h] = lo[h] + u;
    s -= u;
  }
  return keep;
}
