import { invalid } from "../errors";
import { knownOptions } from "../validate";
import { checkProfile, type Profile } from "./profile";

/** Options of {@link budgetsFromProfile}. */
export interface BudgetsFromProfileOptions {
  /** Fraction of all tokens to evict, in [0, 1] (kvpress convention: 0.8 keeps 20%). */
  ratio: number;
  /** Tokens now in each (layer, KV head), layer-major: length layers × kvHeads. */
  lengths: ArrayLike<number>;
  /** Fewest tokens a head keeps, clamped to its length: one integer or one per head. Default 0. */
  minKeep?: number | ArrayLike<number>;
}

/** Ratios closer than this to a grid row use the row as is, so 0.07 reads row 6 exactly. */
const SNAP = 1e-9;

function checkRatio(ratio: unknown): number {
  if (typeof ratio !== "number" || !(ratio >= 0 && ratio <= 1)) throw invalid("ratio", "a number between 0 and 1", ratio);
  return ratio;
}

/**
 * The profile's prune ratio for every (layer, KV head) at compression ratio `ratio`,
 * interpolated linearly between grid rows (row i sits at (i + 1) / (grid + 1)).
 * Outside the rows it interpolates towards the natural end points, prune 0 at ratio 0
 * and prune 1 at ratio 1, rather than clamping: a profile says nothing about ratios
 * below its first row, and keeping the ends fixed makes the result continuous and
 * monotone whenever the rows are.
 *
 * @param ratio in [0, 1].
 * @param out optional Float64Array(layers × kvHeads) to fill.
 * @returns prune ratios, layer-major.
 */
export function pruneRatiosAt(profile: Profile, ratio: number, out?: Float64Array): Float64Array {
  checkProfile(profile);
  checkRatio(ratio);
  const { grid, table } = profile;
  const H = profile.layers * profile.kvHeads;
  const p = out && out.length === H ? out : new Float64Array(H);
  let x = ratio * (grid + 1) - 1; // fractional row index
  const near = Math.round(x);
  if (Math.abs(x - near) < SNAP) x = near;
  if (x <= -1) {
    p.fill(0);
  } else if (x < 0) {
    const w = x + 1;
    for (let h = 0; h < H; h++) p[h] = w * table[h];
  } else if (x >= grid - 1) {
    const w = x - (grid - 1);
    const last = (grid - 1) * H;
    for (let h = 0; h < H; h++) p[h] = (1 - w) * table[last + h] + w;
  } else {
    const i = Math.floor(x);
    const f = x - i;
    const a = i * H;
    const b = a + H;
    if (f === 0) for (let h = 0; h < H; h++) p[h] = table[a + h];
    else for (let h = 0; h < H; h++) p[h] = (1 - f) * table[a + h] + f * table[b + h];
  }
  return p;
}

/**
 * Per-head keep counts for a compression ratio, from an LU-KV profile.
 *
 * Each head's share is (1 − Φ_h(ratio)) × length_h, Φ interpolated as in
 * {@link pruneRatiosAt}. The total is exactly round((1 − ratio) × Σ lengths), each head
 * keeps between min(minKeep, length) and its length, and rounding is by largest
 * remainder (ties to the lower head index). When the shares do not add up to the
 * total (heads of unequal length, or the bounds clip some heads), every head's prune
 * ratio is shifted by the same amount t, clamped to the bounds, with t chosen so that
 * they do: the profile's differences between heads are kept.
 *
 * Runs in O(layers × kvHeads) and allocates only the result and a few scratch arrays.
 *
 * @returns keep counts, layer-major, Int32Array(layers × kvHeads).
 * @throws InvalidArgumentError when lengths do not match the profile's shape, ratio is
 *   outside [0, 1], or minKeep asks for more than the ratio keeps.
 */
export function budgetsFromProfile(profile: Profile, options: BudgetsFromProfileOptions): Int32Array {
  if (options === null || typeof options !== "object") throw invalid("options", "an object with ratio and lengths", options);
  knownOptions("options", options, ["ratio", "lengths", "minKeep"]);
  const ratio = checkRatio(options.ratio);
  checkProfile(profile);
  const H = profile.layers * profile.kvHeads;
  const lengths = options.lengths;
  if (lengths === null || typeof lengths !== "object" || lengths.length !== H) {
    throw invalid(
      "lengths",
      `an array of ${H} lengths (layers ${profile.layers} × kvHeads ${profile.kvHeads} of the profile)`,
      lengths,
    );
  }
  const minKeep = options.minKeep ?? 0;
  const scalarMin = typeof minKeep === "number";
  if (scalarMin) {
    if (!Number.isSafeInteger(minKeep) || minKeep < 0) throw invalid("minKeep", "a non-negative integer", minKeep);
  } else if (minKeep === null || typeof minKeep !== "object" || minKeep.length !== H) {
    throw invalid("minKeep", `a non-negative integer or an array of ${H} of them (one per head)`, minKeep);
  }

  const p = pruneRatiosAt(profile, ratio);
  const T = new Float64Array(H);
  const lo = new Float64Array(H);
  const x = p; // reused: the share (1 − Φ_h) × T_h
  let total = 0;
  let sumLo = 0;
  for (let h = 0; h < H; h++) {
    const t = lengths[h];
    if (!Number.isSafeInteger(t) || t < 0) throw invalid(`lengths[${h}]`, "a non-negative integer", t);
    const m = scalarMin ? minKeep : (minKeep as ArrayLike<number>)[h];
    if (!scalarMin && (!Number.isSafeInteger(m) || m < 0)) throw invalid(`minKeep[${h}]`, "a non-negative integer", m);
    T[h] = t;
    lo[h] = Math.min(m, t);
    x[h] = (1 - p[h]) * t;
    total += t;
    sumLo += lo[h];
  }
  const K = Math.round((1 - ratio) * total);
  if (K < sumLo) {
    throw invalid("ratio", `a ratio that keeps at least ${sumLo} of ${total} tokens (the sum of minKeep over heads)`, ratio);
  }

  const shift = solveShift(x, T, lo, K, total);
  const keep = new Int32Array(H);
  const frac = new Float64Array(H);
  let left = K;
  for (let h = 0; h < H; h++) {
    const v = Math.min(T[h], Math.max(lo[h], x[h] + shift * T[h]));
    const f = Math.floor(v);
    keep[h] = f;
    frac[h] = v - f;
    left -= f;
  }
  if (left !== 0) distribute(keep, frac, T, lo, left);
  return keep;
}

/** Σ_h clamp(x_h + t·T_h, lo_h, T_h) and its slope at t. */
function shareSum(x: Float64Array, T: Float64Array, lo: Float64Array, t: number): [number, number] {
  let g = 0;
  let slope = 0;
  for (let h = 0; h < x.length; h++) {
    const v = x[h] + t * T[h];
    if (v <= lo[h]) g += lo[h];
    else if (v >= T[h]) g += T[h];
    else {
      g += v;
      slope += T[h];
    }
  }
  return [g, slope];
}

/**
 * The shift t with Σ clamp(x_h + t·T_h, lo_h, T_h) = K. The sum is continuous, piecewise
 * linear and non-decreasing in t, equal to Σ lo at t = −1 and Σ T at t = 1: Newton
 * steps on the current linear piece (exact once the clamped set settles, usually after
 * one step), guarded by bisection.
 */
function solveShift(x: Float64Array, T: Float64Array, lo: Float64Array, K: number, total: number): number {
  let a = -1;
  let b = 1;
  let t = 0;
  const tol = 1e-9 * Math.max(1, total);
  for (let iter = 0; iter < 200; iter++) {
    const [g, slope] = shareSum(x, T, lo, t);
    if (Math.abs(g - K) <= tol) return t;
    if (g < K) a = t;
    else b = t;
    const newton = slope > 0 ? t + (K - g) / slope : NaN;
    t = newton > a && newton < b ? newton : (a + b) / 2;
    if (b - a < 1e-15) break;
  }
  return t;
}

/** Largest remainder: hands out (or takes back) `left` units by fractional part, ties to the lower index. */
function distribute(keep: Int32Array, frac: Float64Array, T: Float64Array, lo: Float64Array, left: number): void {
  const H = keep.length;
  if (left > 0 && left <= H) {
    // The left-th largest remainder is the threshold: everything above it gets a unit,
    // then heads exactly at it in index order. Selecting it is O(H); sorting costs more.
    const threshold = selectNth(Float64Array.from(frac), H - left);
    for (let h = 0; h < H && left > 0; h++) {
      if (frac[h] > threshold && keep[h] < T[h]) {
        keep[h]++;
        left--;
      }
    }
    for (let h = 0; h < H && left > 0; h++) {
      if (frac[h] === threshold && keep[h] < T[h]) {
        keep[h]++;
        left--;
      }
    }
  }
  // Only reached through rounding error in the shift: whole passes in remainder order.
  if (left === 0) return;
  const order = Array.from({ length: H }, (_, h) => h);
  const step = left > 0 ? 1 : -1;
  if (step > 0) order.sort((i, j) => frac[j] - frac[i] || i - j);
  else order.sort((i, j) => frac[i] - frac[j] || j - i);
  for (let before = NaN; left !== 0 && left !== before; ) {
    before = left;
    for (let k = 0; k < H && left !== 0; k++) {
      const h = order[k];
      if (step > 0 ? keep[h] < T[h] : keep[h] > lo[h]) {
        keep[h] += step;
        left -= step;
      }
    }
  }
}

/** The k-th smallest value of `a` (0-based), by quickselect; reorders `a`. */
function selectNth(a: Float64Array, k: number): number {
  let lo = 0;
  let hi = a.length - 1;
  while (lo < hi) {
    // Median of three as the pivot keeps sorted and constant inputs linear.
    const mid = (lo + hi) >> 1;
    const pivot = Math.max(Math.min(a[lo], a[mid]), Math.min(Math.max(a[lo], a[mid]), a[hi]));
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return a[k];
  }
  return a[k];
}
