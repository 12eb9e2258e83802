// One calibration sample through the LU-KV protocol: rank each head's context by the scorer,
// form its cumulative eviction loss of the oracle, take the lower hull, and solve the budget
// problem at every compression ratio of the grid in one ordered pass over the hull segments.
import { buildHull, type Hull } from "../budget/hull";
import { native } from "../native";

/** Which heads share one budget: every head of the model, or the heads of one layer. */
export type ProfilerScope = "global" | "per-layer";

/** What the per-sample analysis needs to know besides the data. */
export interface SampleConfig {
  layers: number;
  kvHeads: number;
  /** First tokens of each head never evicted. */
  sink: number;
  /** Last tokens of each head's context never evicted. */
  window: number;
  /** Rows of the table; row i is compression ratio (i + 1) / (grid + 1). */
  grid: number;
  scope: ProfilerScope;
}

/**
 * One (context, query) pair, flattened: head i (layer-major, i = layer × kvHeads + head) owns
 * `scores` and `oracle` entries offsets[i] .. offsets[i + 1] − 1, one per context token in
 * position order.
 */
export interface FlatSample {
  lengths: Int32Array;
  offsets: Float64Array;
  scores: Float32Array;
  oracle: Float32Array;
}

/** Everything one sample contributes to a profile and its report. */
export interface SampleResult {
  /** Tokens of each head's context, T_h. */
  lengths: Int32Array;
  /** Tokens each head may lose, E_h = T_h − minKeep_h (see {@link minKeepOf}). */
  evictable: Int32Array;
  /** Tokens evicted per grid row and head, [grid][heads]; prune ratio = evicted / T_h. */
  evicted: Int32Array;
  /** Total oracle mass of each head's context (forced tokens included). */
  mass: Float64Array;
  /** max over n of (C(n) − hull(n)) / mass, per head. */
  hullGap: Float64Array;
  /** mean over n = 1..E of (C_π(n) − C_oracle(n)) / mass, per head. */
  optimalityGap: Float64Array;
  /** Per grid row: Σ_h C_h(evicted_h) / Σ_h mass_h, the oracle mass the solution throws away. */
  loss: Float64Array;
  /** Per grid row: the same for every head evicting min(E_h, round(ρ T_h)) tokens. */
  uniformLoss: Float64Array;
}

/**
 * The fewest tokens a head keeps: its sink and window, and at least 1% of its tokens, never
 * more than it has. The 1% floor keeps a head from being emptied at the top of the grid.
 */
export function minKeepOf(T: number, sink: number, window: number): number {
  return Math.min(T, Math.max(Math.ceil(T / 100), sink + window));
}

/**
 * The middle tokens of a head (positions sink' .. T − window' − 1, where sink' and window' are
 * the forced tokens that fit) in eviction order: the reverse of the order in which compress()
 * keeps them, computed by the same native ranking (lowest score first, NaN lowest, and among
 * equal scores the LATER position first, since compress() keeps the earlier of two).
 *
 * @param scores one score per context token (position order), higher = keep.
 * @returns positions, Int32Array of length T − sink' − window'.
 */
export function evictionOrder(scores: Float32Array, sink: number, window: number): Int32Array {
  return native().keepOrder(scores, sink, window).reverse();
}

/** A min-heap of heads on their next hull segment's slope; equal slopes put the higher head index first. */
class SegmentHeap {
  private readonly heap: Int32Array;
  private size = 0;
  constructor(
    private readonly key: Float64Array,
    private readonly id: Int32Array,
    capacity: number,
  ) {
    this.heap = new Int32Array(capacity);
  }
  get length(): number {
    return this.size;
  }
  get top(): number {
    return this.heap[0];
  }
  // Higher index first on ties: the complement of solveBudgets' "lower index keeps first" rule.
  private before(a: number, b: number): boolean {
    return this.key[a] < this.key[b] || (this.key[a] === this.key[b] && this.id[a] > this.id[b]);
  }
  push(m: number): void {
    let i = this.size++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(m, this.heap[p])) break;
      this.heap[i] = this.heap[p];
      i = p;
    }
    this.heap[i] = m;
  }
  /** Re-sorts after the top's key changed (replace = true) or removes the top. */
  fixTop(replace: boolean): void {
    const heap = this.heap;
    const m = replace ? heap[0] : heap[--this.size];
    let i = 0;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= this.size) break;
      if (c + 1 < this.size && this.before(heap[c + 1], heap[c])) c++;
      if (!this.before(heap[c], m)) break;
      heap[i] = heap[c];
      i = c;
    }
    if (this.size > 0) heap[i] = m;
  }
}

/**
 * Evictions of a group of heads (one budget) at every target total, by walking all their hull
 * segments in increasing slope. On convex curves the greedy is nested, so the answer for a larger
 * total extends the one for a smaller: one pass serves every row. Each answer equals
 * solveBudgets(curves, ΣE − target) on the group, ties included.
 *
 * @param group head indices (ascending) sharing the budget.
 * @param targets tokens to evict per row, non-decreasing, each in [0, Σ_group E_h].
 * @param out [rows][heads] evictions; only the group's columns are written.
 */
export function evictAtTargets(hulls: readonly Hull[], group: Int32Array, targets: ArrayLike<number>, out: Int32Array, heads: number): void {
  const G = group.length;
  const n = new Int32Array(G);
  const seg = new Int32Array(G);
  const key = new Float64Array(G);
  const heap = new SegmentHeap(key, group, G);
  for (let k = 0; k < G; k++) {
    const slopes = hulls[group[k]].slopes;
    if (slopes.length > 0) {
      key[k] = slopes[0];
      heap.push(k);
    }
  }
  const rows = targets.length;
  const snapshot = (row: number, member: number, extra: number) => {
    const at = row * heads;
    for (let k = 0; k < G; k++) out[at + group[k]] = n[k];
    if (member >= 0) out[at + group[member]] += extra;
  };
  let row = 0;
  let done = 0;
  while (row < rows && targets[row] <= 0) snapshot(row++, -1, 0);
  while (row < rows && heap.length > 0) {
    const k = heap.top;
    const hull = hulls[group[k]];
    const j = seg[k];
    const len = hull.vertices[j + 1] - hull.vertices[j];
    while (row < rows && targets[row] <= done + len) {
      snapshot(row, k, targets[row] - done);
      row++;
    }
    n[k] += len;
    done += len;
    seg[k] = j + 1;
    if (j + 1 < hull.slopes.length) {
      key[k] = hull.slopes[j + 1];
      heap.fixTop(true);
    } else {
      heap.fixTop(false);
    }
  }
  while (row < rows) snapshot(row++, -1, 0);
}

/** Heads sharing each budget: one group of all heads, or one per layer. */
export function budgetGroups(layers: number, kvHeads: number, scope: ProfilerScope): Int32Array[] {
  const all = Int32Array.from({ length: layers * kvHeads }, (_, i) => i);
  if (scope === "global") return [all];
  return Array.from({ length: layers }, (_, l) => all.subarray(l * kvHeads, (l + 1) * kvHeads));
}

/** Compression ratio of row i: (i + 1) / (grid + 1). */
export function gridRatio(i: number, grid: number): number {
  return (i + 1) / (grid + 1);
}

/** A head's cumulative eviction loss C(n), n = 0..E, in the scorer's eviction order. */
export function evictionCurve(scores: Float32Array, oracle: Float32Array, sink: number, window: number): Float64Array {
  const T = scores.length;
  const E = T - minKeepOf(T, sink, window);
  const order = evictionOrder(scores, sink, window);
  const c = new Float64Array(E + 1);
  for (let k = 0; k < E; k++) c[k + 1] = c[k] + oracle[order[k]];
  return c;
}

/** The curves of every head of a sample (layer-major). */
export function sampleCurves(sample: FlatSample, config: SampleConfig): Float64Array[] {
  const H = sample.lengths.length;
  const curves = new Array<Float64Array>(H);
  for (let h = 0; h < H; h++) {
    const at = sample.offsets[h];
    const T = sample.lengths[h];
    curves[h] = evictionCurve(sample.scores.subarray(at, at + T), sample.oracle.subarray(at, at + T), config.sink, config.window);
  }
  return curves;
}

/**
 * Tokens to evict per row for a group of heads: ΣT minus what compress() keeps at ρ_i
 * (round((1 − ρ_i) × ΣT), halves kept), capped at what the group may evict.
 */
export function groupTargets(lengths: Int32Array, evictable: Int32Array, group: Int32Array, grid: number): Float64Array {
  let total = 0;
  let most = 0;
  for (const h of group) {
    total += lengths[h];
    most += evictable[h];
  }
  const targets = new Float64Array(grid);
  for (let i = 0; i < grid; i++) targets[i] = Math.min(most, total - native().keptTotal(gridRatio(i, grid), total));
  return targets;
}

/** Solves one sample at every grid ratio and measures its heads; see {@link SampleResult}. */
export function analyzeSample(sample: FlatSample, config: SampleConfig): SampleResult {
  const { grid, sink, window } = config;
  const H = sample.lengths.length;
  const lengths = sample.lengths;
  const evictable = new Int32Array(H);
  const mass = new Float64Array(H);
  const hullGap = new Float64Array(H);
  const optimalityGap = new Float64Array(H);
  const curves = sampleCurves(sample, config);
  const hulls = new Array<Hull>(H);
  for (let h = 0; h < H; h++) {
    const T = lengths[h];
    const at = sample.offsets[h];
    const oracle = sample.oracle.subarray(at, at + T);
    const c = curves[h];
    const E = c.length - 1;
    evictable[h] = E;
    let m = 0;
    for (let j = 0; j < T; j++) m += oracle[j];
    mass[h] = m;
    const hull = buildHull(c, `curves[${h}]`);
    hulls[h] = hull;
    if (m <= 0 || E === 0) continue;
    let gap = 0;
    for (let j = 0; j < hull.slopes.length; j++) {
      const v = hull.vertices[j];
      for (let x = v + 1; x < hull.vertices[j + 1]; x++) gap = Math.max(gap, c[x] - (c[v] + hull.slopes[j] * (x - v)));
    }
    hullGap[h] = gap / m;
    // The oracle's own order: the E smallest oracle values of the evictable middle, smallest first.
    const front = Math.min(sink, T);
    const back = Math.min(window, T - front);
    const best = oracle.slice(front, T - back).sort();
    let cBest = 0;
    let excess = 0;
    for (let k = 0; k < E; k++) {
      cBest += best[k];
      excess += c[k + 1] - cBest;
    }
    optimalityGap[h] = Math.max(0, excess / E / m);
  }

  const evicted = new Int32Array(grid * H);
  for (const group of budgetGroups(config.layers, config.kvHeads, config.scope)) {
    evictAtTargets(hulls, group, groupTargets(lengths, evictable, group, grid), evicted, H);
  }

  let totalMass = 0;
  for (let h = 0; h < H; h++) totalMass += mass[h];
  const loss = new Float64Array(grid);
  const uniformLoss = new Float64Array(grid);
  if (totalMass > 0) {
    for (let i = 0; i < grid; i++) {
      const rho = gridRatio(i, grid);
      let a = 0;
      let u = 0;
      for (let h = 0; h < H; h++) {
        a += curves[h][evicted[i * H + h]];
        u += curves[h][Math.min(evictable[h], Math.round(rho * lengths[h]))];
      }
      loss[i] = a / totalMass;
      uniformLoss[i] = u / totalMass;
    }
  }
  return { lengths, evictable, evicted, mass, hullGap, optimalityGap, loss, uniformLoss };
}
