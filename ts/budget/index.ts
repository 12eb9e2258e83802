/**
 * The LU-KV budget solver: per-head loss curves in, per-head keep counts out.
 * Curve convention everywhere: curves[h][n] = loss of head h after evicting n tokens,
 * n = 0..T_h, so keeping b tokens costs curves[h][T_h − b].
 */
export { lowerHull } from "./hull";
export { solveBudgets, solveBudgetsDetailed, solveBudgetsForTotals, budgetLoss, type BudgetSolution } from "./greedy";
export { solveBudgetsExact, type ExactBudgetOptions } from "./exact";
export type { BudgetOptions, LossCurve } from "./problem";
