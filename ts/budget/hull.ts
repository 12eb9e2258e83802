import { invalid } from "../errors";
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

/**
 * Builds the hull with the monotone chain. Slopes are compared as the very doubles
 * that are returned, so the marginals never decrease even under rounding.
 * `scratchV`/`scratchS` (at least T+1 long) let a caller reuse memory across heads.
 */
export function buildHull(
  curve: LossCurve,
  name: string,
  scratchV?: Int32Array,
  scratchS?: Float64Array,
): Hull {
  const T = curve.length - 1;
  const verts = scratchV && scratchV.length > T ? scratchV : new Int32Array(T + 1);
  const slopes = scratchS && scratchS.length > T ? scratchS : new Float64Array(T + 1);
  verts[0] = 0;
  let top = 0;
  let yTop = finiteAt(curve, 0, name);
  for (let n = 1; n <= T; n++) {
    const y = curve[n];
    if (typeof y !== "number" || !Number.isFinite(y)) throw invalid(`${name}[${n}]`, "a finite number", y);
    let s = (y - yTop) / (n - verts[top]);
    // Pop while the last segment is at least as steep: the new point sees under it.
    while (top > 0 && slopes[top - 1] >= s) {
      top--;
      const v = verts[top];
      s = (y - (curve[v] as number)) / (n - v);
    }
    slopes[top] = s;
    verts[++top] = n;
    yTop = y;
  }
  return { vertices: verts.slice(0, top + 1), slopes: slopes.slice(0, top) };
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
 * @returns Float64Array of T non-decreasing marginal costs.
 * @throws InvalidArgumentError when the input is empty or holds a non-finite number.
 */
export function lowerHull(cumulativeLoss: ArrayLike<number>): Float64Array {
  const c = cumulativeLoss as unknown;
  if (c === null || typeof c !== "object" || typeof (c as ArrayLike<number>).length !== "number" || (c as ArrayLike<number>).length < 1) {
    throw invalid("cumulativeLoss", "an array of at least 1 finite number", c);
  }
  const hull = buildHull(cumulativeLoss, "cumulativeLoss");
  const T = cumulativeLoss.length - 1;
  const out = new Float64Array(T);
  const { vertices, slopes } = hull;
  for (let j = 0; j < slopes.length; j++) out.fill(slopes[j], vertices[j], vertices[j + 1]);
  return out;
}
