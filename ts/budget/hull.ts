import { types } from "node:util";
import { InvalidArgumentError, invalid } from "../errors";
import { finiteAt, type LossCurve } from "./problem";

/**
 * The lower convex hull of one curve, as its vertices and the slopes between them.
 * Vertex j is at eviction count `vertices[j]` (0 = vertices[0] < ... < vertices[k] = T),
 * where the hull equals the curve; `slopes[j]` is the marginal loss of every step on
 * the segment from vertices[j] to vertices[j+1], strictly increasing in j.
 */
export interface Hull {
  vertices: Int32Array;
  slopes: Float64Array;
}

/** Reusable working memory for {@link buildHull}; grows as needed. */
export class HullScratch {
  // Annotated: inferred, these would be Int32Array<ArrayBuffer> in the declarations, which
  // TypeScript before 5.7 cannot read.
  candidates: Int32Array = new Int32Array(0);
  vertices: Int32Array = new Int32Array(0);
  slopes: Float64Array = new Float64Array(0);
  values: Float64Array = new Float64Array(0);

  reserve(points: number): void {
    if (this.candidates.length >= points) return;
    this.candidates = new Int32Array(points);
    this.vertices = new Int32Array(points);
    this.slopes = new Float64Array(points);
  }
}

/** Shared by calls on this thread: hull building never re-enters itself. */
const sharedScratch = new HullScratch();

/** The curve as a Float64Array, so the hot loops see one array type; checks plain arrays' entries. */
function asFloat64(curve: LossCurve, name: string, scratch: HullScratch): Float64Array {
  if (types.isFloat64Array(curve)) return curve;
  if (scratch.values.length < curve.length) scratch.values = new Float64Array(curve.length);
  const y = scratch.values.subarray(0, curve.length);
  if (types.isFloat32Array(curve)) {
    y.set(curve);
  } else {
    for (let n = 0; n < curve.length; n++) {
      const v = curve[n];
      if (typeof v !== "number") throw invalid(`${name}[${n}]`, "a finite number", v);
      y[n] = v;
    }
  }
  return y;
}

/**
 * Drops points that cannot be hull vertices, without data-dependent branches (a
 * monotone chain on noisy curves mispredicts about once per point, which costs more
 * than everything else). A point strictly above the chord of any two other points is
 * not on the lower hull: the first pass tests the chords to neighbours 1 and 2 away,
 * later passes the chord between the surviving neighbours, while that still removes
 * at least 1/8 of the points (so the work stays O(T)). Writes the survivors, always
 * including 0 and T, to `out` and returns their count, or −1 if a value is not finite.
 */
function hullCandidates(y: Float64Array, out: Int32Array): number {
  const T = y.length - 1;
  let k = 0;
  out[k++] = 0;
  let notFinite = y[0] * 0 + y[T] * 0;
  if (T < 4) {
    for (let n = 1; n <= T; n++) {
      notFinite += y[n] * 0;
      out[k++] = n;
    }
    return notFinite === 0 ? k : -1;
  }
  out[k] = 1;
  k += +(y[1] - y[0] <= y[2] - y[1]);
  let ym2 = y[0];
  let ym1 = y[1];
  let y0 = y[2];
  let y1 = y[3];
  for (let b = 2; b < T - 1; b++) {
    const y2 = y[b + 2];
    notFinite += y2 * 0;
    // Not above the chords (b−1, b+1), (b−2, b+2), (b−1, b+2) and (b−2, b+1).
    const keep =
      +(y0 - ym1 <= y1 - y0) & +(y0 - ym2 <= y2 - y0) & +((y0 - ym1) * 2 <= y2 - y0) & +(y0 - ym2 <= (y1 - y0) * 2);
    out[k] = b;
    k += keep;
    ym2 = ym1;
    ym1 = y0;
    y0 = y1;
    y1 = y2;
  }
  notFinite += y[1] * 0 + y[2] * 0 + y[3] * 0;
  if (notFinite !== 0) return -1;
  out[k] = T - 1;
  k += +(y[T - 1] - y[T - 2] <= y[T] - y[T - 1]);
  out[k++] = T;

  for (let pass = 0; pass < 16 && k > 64; pass++) {
    const before = k;
    let a = out[0];
    let ya = y[a];
    let b = out[1];
    let yb = y[b];
    k = 1;
    for (let i = 1; i < before - 1; i++) {
      const c = out[i + 1];
      const yc = y[c];
      out[k] = b;
      k += +((yb - ya) * (c - b) <= (yc - yb) * (b - a));
      a = b;
      ya = yb;
      b = c;
      yb = yc;
    }
    out[k++] = out[before - 1];
    if (k > before - (before >> 3)) break;
  }
  return k;
}

/**
 * Builds the lower hull: a branch-free filter keeps the points that may be vertices,
 * then the monotone chain runs on those. The chain compares slopes as the very doubles
 * that are returned, so the marginals never decrease even under rounding.
 * @throws InvalidArgumentError naming the first entry that is not a finite number, or the two
 *   points of a slope past the float64 range.
 */
export function buildHull(curve: LossCurve, name: string, scratch = sharedScratch): Hull {
  const T = curve.length - 1;
  scratch.reserve(T + 1);
  const y = asFloat64(curve, name, scratch);
  const cand = scratch.candidates;
  const m = hullCandidates(y, cand);
  if (m < 0) {
    for (let n = 0; n <= T; n++) finiteAt(y, n, name);
  }
  const verts = scratch.vertices;
  const slopes = scratch.slopes;
  verts[0] = 0;
  let top = 0;
  let yTop = y[0];
  for (let i = 1; i < m; i++) {
    const n = cand[i];
    const yn = y[n];
    let s = slope(yn, yTop, n - verts[top]);
    // Pop while the last segment is at least as steep: the new point sees under it.
    while (top > 0 && slopes[top - 1] >= s) {
      top--;
      const v = verts[top];
      s = slope(yn, y[v], n - v);
    }
    slopes[top] = s;
    verts[++top] = n;
    yTop = yn;
  }
  // A slope past the float64 range would tie with every other such slope (the filter above only
  // keeps extra points when its differences overflow). An infinite one met on the way is popped
  // like any other when a later point sees under it.
  for (let j = 0; j < top; j++)
    if (slopes[j] === Infinity || slopes[j] === -Infinity)
      throw new InvalidArgumentError(
        `Expected ${name} to change by less than the float64 range per token between hull points but it goes from ${y[verts[j]]} at ${verts[j]} to ${y[verts[j + 1]]} at ${verts[j + 1]}`,
      );
  return { vertices: verts.slice(0, top + 1), slopes: slopes.slice(0, top) };
}

/**
 * (b − a) / steps; where b − a passes the float64 range but the slope does not (steps ≥ 2), as
 * b / steps − a / steps.
 */
function slope(b: number, a: number, steps: number): number {
  const s = (b - a) / steps;
  return Number.isFinite(s) ? s : b / steps - a / steps;
}

/** Segment j with vertices[j] <= n <= vertices[j+1] (the last one when n = T). */
export function segmentAt(hull: Hull, n: number): number {
  const v = hull.vertices;
  let lo = 0;
  let hi = v.length - 2;
  if (hi < 0) return 0;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (v[mid] <= n) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** The hull's value at eviction count n: exact at vertices, linear in between. */
export function hullValueAt(hull: Hull, curve: LossCurve, n: number): number {
  if (hull.slopes.length === 0) return curve[0] as number;
  const j = segmentAt(hull, n);
  const v = hull.vertices[j];
  if (n === v) return curve[v] as number;
  if (n === hull.vertices[j + 1]) return curve[n] as number;
  return (curve[v] as number) + hull.slopes[j] * (n - v);
}

/**
 * The lower convex hull of a head's cumulative eviction loss, as marginal costs.
 *
 * `cumulativeLoss[n]` is the loss after evicting n tokens, n = 0..T. The result has
 * length T: entry i is the hull's increase from i to i+1 evicted tokens. It never
 * decreases (convexity), equals the curve's own increments where the curve is already
 * convex, and `cumulativeLoss[0] + sum(result[0..n))` is the hull at n, which is at most
 * `cumulativeLoss[n]` and equal to it at the hull's vertices (always at 0 and T).
 * Equivalently, it is the isotonic regression of the marginal losses.
 *
 * @param cumulativeLoss finite numbers, at least one (T = 0 gives an empty result).
 * @param out optional Float64Array of length T to write into (saves an allocation per call); default a new one.
 * @returns Float64Array of T non-decreasing marginal costs (`out` when given).
 * @throws InvalidArgumentError when the input is empty or holds a non-finite number, its hull
 *   changes by more than the float64 range per token, or `out` has the wrong length.
 */
export function lowerHull(cumulativeLoss: ArrayLike<number>, out?: Float64Array): Float64Array {
  const c = cumulativeLoss as unknown;
  if (c === null || typeof c !== "object" || typeof (c as ArrayLike<number>).length !== "number" || (c as ArrayLike<number>).length < 1) {
    throw invalid("cumulativeLoss", "an array of at least 1 finite number", c);
  }
  const T = cumulativeLoss.length - 1;
  if (out !== undefined && !(types.isFloat64Array(out) && out.length === T)) {
    throw invalid("out", `a Float64Array of length ${T} (one less than cumulativeLoss)`, out);
  }
  const { vertices, slopes } = buildHull(cumulativeLoss, "cumulativeLoss");
  const marginals = out ?? new Float64Array(T);
  for (let j = 0; j < slopes.length; j++) marginals.fill(slopes[j], vertices[j], vertices[j + 1]);
  return marginals;
}
