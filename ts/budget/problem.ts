import { invalid } from "../errors";
import { knownOptions } from "../validate";

/**
 * One head's cumulative eviction loss: `curve[n]` is the loss after evicting the
 * `n` lowest-ranked tokens of the head, for `n = 0..T` (so `curve.length = T + 1`
 * and keeping `b` tokens costs `curve[T - b]`). Usually `curve[0] = 0` and the
 * curve never decreases, but neither is required: only differences matter.
 */
export type LossCurve = ArrayLike<number>;

/** Bounds shared by every budget solver. */
export interface BudgetOptions {
  /**
   * Fewest tokens a head keeps: one integer for every head or one per head.
   * A head whose maxKeep (or length) is smaller keeps at most that, so a floor
   * such as the 4 sink tokens is safe on short heads. Default 0.
   */
  minKeep?: number | ArrayLike<number>;
  /**
   * Most tokens a head keeps: one integer (or Infinity) for every head or one
   * per head, clamped to the head's length T_h. Default: T_h (no cap).
   */
  maxKeep?: number | ArrayLike<number>;
}

/** Validated sizes and bounds of a budget problem. */
export interface BudgetProblem {
  heads: number;
  /** T_h, tokens in each head. */
  lengths: Int32Array;
  /** Effective lower bound min(minKeep_h, hi_h). */
  lo: Int32Array;
  /** Effective upper bound min(maxKeep_h, T_h). */
  hi: Int32Array;
  sumLo: number;
  sumHi: number;
}

const MAX_TOKENS = 0x7fffffff;

function isCount(x: unknown, allowInfinity: boolean): x is number {
  return typeof x === "number" && ((Number.isInteger(x) && x >= 0) || (allowInfinity && x === Infinity));
}

function boundAt(
  bound: number | ArrayLike<number> | undefined,
  name: string,
  heads: number,
  fallback: number,
  allowInfinity: boolean,
): (h: number) => number {
  if (bound === undefined) return () => fallback;
  const what = allowInfinity ? "a non-negative integer or Infinity" : "a non-negative integer";
  if (typeof bound === "number") {
    if (!isCount(bound, allowInfinity)) throw invalid(name, what, bound);
    return () => bound;
  }
  if (bound === null || typeof bound !== "object" || typeof (bound as ArrayLike<number>).length !== "number") {
    throw invalid(name, `${what} or an array of ${heads} of them (one per head)`, bound);
  }
  if (bound.length !== heads) throw invalid(name, `an array of ${heads} bounds (one per head)`, bound);
  for (let h = 0; h < heads; h++) {
    if (!isCount(bound[h], allowInfinity)) throw invalid(`${name}[${h}]`, what, bound[h]);
  }
  return (h) => bound[h];
}

/** Checks the curves container and the bounds; the curve values are checked where they are read. */
export function budgetProblem(
  curves: readonly LossCurve[],
  options: BudgetOptions | undefined,
  allowed: readonly string[] = ["minKeep", "maxKeep"],
): BudgetProblem {
  if (!Array.isArray(curves)) throw invalid("curves", "an array of loss curves (one per head)", curves);
  if (options !== undefined && (options === null || typeof options !== "object")) {
    throw invalid("options", "an object", options);
  }
  if (options !== undefined) knownOptions("options", options, allowed);
  const heads = curves.length;
  const lengths = new Int32Array(heads);
  for (let h = 0; h < heads; h++) {
    const c = curves[h] as unknown;
    const len = c !== null && typeof c === "object" ? (c as ArrayLike<number>).length : undefined;
    if (typeof len !== "number" || len < 1 || len - 1 > MAX_TOKENS || typeof c === "string") {
      throw invalid(`curves[${h}]`, "an array of at least 1 number (loss after evicting 0..T tokens)", c);
    }
    lengths[h] = len - 1;
  }
  const minAt = boundAt(options?.minKeep, "options.minKeep", heads, 0, false);
  const maxAt = boundAt(options?.maxKeep, "options.maxKeep", heads, Infinity, true);
  const lo = new Int32Array(heads);
  const hi = new Int32Array(heads);
  let sumLo = 0;
  let sumHi = 0;
  for (let h = 0; h < heads; h++) {
    hi[h] = Math.min(maxAt(h), lengths[h]);
    lo[h] = Math.min(minAt(h), hi[h]);
    sumLo += lo[h];
    sumHi += hi[h];
  }
  return { heads, lengths, lo, hi, sumLo, sumHi };
}

/** Rejects a total outside [Σ lo, Σ hi] with a message that gives both ends. */
export function checkTotal(problem: BudgetProblem, totalKeep: unknown, name = "totalKeep"): number {
  if (typeof totalKeep !== "number" || !Number.isSafeInteger(totalKeep) || totalKeep < 0) {
    throw invalid(name, "a non-negative integer", totalKeep);
  }
  if (totalKeep < problem.sumLo || totalKeep > problem.sumHi) {
    throw invalid(
      name,
      `an integer between ${problem.sumLo} (the sum of minKeep) and ${problem.sumHi} (the sum of maxKeep, capped by head lengths)`,
      totalKeep,
    );
  }
  return totalKeep;
}

/** Reads curve[n] and insists it is finite, naming the offending entry. */
export function finiteAt(curve: LossCurve, n: number, name: string): number {
  const y = curve[n];
  if (typeof y !== "number" || !Number.isFinite(y)) throw invalid(`${name}[${n}]`, "a finite number", y);
  return y;
}
