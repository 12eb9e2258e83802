// Plain references for scoring, allocation and selection, written for clarity.

export interface ScoreRefInput {
  keys: Float32Array; // [L, D] as stored
  positions: ArrayLike<number>;
  headDim: number;
  group: number;
  headIndex: number;
  layer: number;
  queries?: Float32Array; // [rows, queryHeads, D]
  queryPositions?: number[];
  queryHeads?: number;
  mass?: ArrayLike<number>;
  newest?: number; // streaming: the newest position appended to the layer
}

export interface ScoreRefOptions {
  scorer: string;
  pooling: "none" | "max" | "avg";
  kernel: number;
  groupReduce: "mean" | "max";
  seed: number;
  scale: number;
  /** Recent tokens left out of the pooling. Default 0. */
  window?: number;
  /** First tokens left out of the pooling of the per-token scorers (keydiff, knorm, h2o). Default 0. */
  sink?: number;
}

function dot(a: ArrayLike<number>, ao: number, b: ArrayLike<number>, bo: number, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += a[ao + i] * b[bo + i];
  return s;
}

/**
 * Pools the first `end` values with each other (SnapKV pools the tokens before its observation
 * window only); "avg" is the sum over the kernel divided by the kernel (zero padding), values from
 * `end` on pass through.
 */
export function pool1d(x: number[], kind: "max" | "avg", kernel: number, end = x.length): number[] {
  const r = Math.floor(kernel / 2);
  return x.map((v, j) => {
    if (j >= end) return v;
    const win = x.slice(Math.max(0, j - r), Math.min(end, j + r + 1));
    return kind === "max" ? Math.max(...win) : win.reduce((a, b) => a + b, 0) / kernel;
  });
}

/**
 * Pooling of a per-token scorer: each token from `sink` to `length - window` takes the max (or the
 * mean) of its scores within kernel / 2 tokens on either side that also lie in that range; the
 * first `sink` and last `window` tokens keep their scores.
 */
export function poolTokens(x: number[], kind: "max" | "avg", kernel: number, sink: number, window: number): number[] {
  const r = Math.floor(kernel / 2);
  const front = Math.min(sink, x.length);
  const end = x.length - Math.min(window, x.length - front);
  return x.map((v, j) => {
    if (j < front || j >= end) return v;
    const near = x.slice(Math.max(front, j - r), Math.min(end, j + r + 1));
    return kind === "max" ? Math.max(...near) : near.reduce((a, b) => a + b, 0) / near.length;
  });
}

function mix(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/** The seeded random scorer's hash, as documented. */
export function randomScore(seed: number, layer: number, head: number, position: number): number {
  let h = mix((seed ^ 0x9e3779b9) >>> 0);
  h = mix((h ^ layer) >>> 0);
  h = mix((h ^ Math.imul(head, 0x85ebca6b)) >>> 0);
  h = mix((h ^ position) >>> 0);
  return (h >>> 8) / 16777216;
}

/** Mean softmax attention of the query rows, per query head of the group: [g][j]. */
function attentionPerQueryHead(x: ScoreRefInput, scale: number): number[][] {
  const L = x.positions.length, D = x.headDim, G = x.group;
  const rows = x.queryPositions!.length;
  const out = Array.from({ length: G }, () => new Array<number>(L).fill(0));
  for (let i = 0; i < rows; i++) {
    for (let g = 0; g < G; g++) {
      const qo = (i * x.queryHeads! + x.headIndex * G + g) * D;
      const vis: number[] = [];
      for (let j = 0; j < L; j++) if (x.positions[j] <= x.queryPositions![i]) vis.push(j);
      if (vis.length === 0) continue;
      const logits = vis.map((j) => scale * dot(x.queries!, qo, x.keys, j * D, D));
      const m = Math.max(...logits);
      const e = logits.map((v) => Math.exp(v - m));
      const sum = e.reduce((a, b) => a + b, 0);
      vis.forEach((j, k) => (out[g][j] += e[k] / sum / rows));
    }
  }
  return out;
}

export function referenceScores(x: ScoreRefInput, o: ScoreRefOptions): number[] {
  const own = unpooledScores(x, o);
  if (o.scorer === "snapkv" || o.scorer === "tova" || o.pooling === "none" || o.kernel <= 1) return own;
  return poolTokens(own, o.pooling, o.kernel, o.sink ?? 0, o.window ?? 0);
}

function unpooledScores(x: ScoreRefInput, o: ScoreRefOptions): number[] {
  const L = x.positions.length, D = x.headDim;
  switch (o.scorer) {
    case "snapkv":
    case "tova": {
      let per = attentionPerQueryHead(x, o.scale);
      if (o.pooling !== "none" && o.kernel > 1) per = per.map((s) => pool1d(s, o.pooling as "max" | "avg", o.kernel, Math.max(0, L - (o.window ?? 0))));
      return Array.from({ length: L }, (_, j) => {
        const vals = per.map((s) => s[j]);
        return o.groupReduce === "max" ? Math.max(...vals) : vals.reduce((a, b) => a + b, 0) / vals.length;
      });
    }
    case "keydiff": {
      const unit = Array.from({ length: L }, (_, j) => {
        const n = Math.sqrt(dot(x.keys, j * D, x.keys, j * D, D));
        return Array.from({ length: D }, (_, d) => (n > 0 ? x.keys[j * D + d] / n : 0));
      });
      const mean = Array.from({ length: D }, (_, d) => unit.reduce((a, u) => a + u[d], 0) / L);
      const mn = Math.sqrt(dot(mean, 0, mean, 0, D));
      return unit.map((u) => -dot(u, 0, mean, 0, D) / mn);
    }
    case "knorm":
      return Array.from({ length: L }, (_, j) => -Math.sqrt(dot(x.keys, j * D, x.keys, j * D, D)));
    case "h2o":
      return Array.from(x.mass!);
    case "streaming": // the position counted back from the layer's newest
      return Array.from(x.positions, (p) => p - x.newest!);
    case "random":
      return Array.from(x.positions, (p) => randomScore(o.seed, x.layer, x.headIndex, p));
    default:
      throw new Error(`no reference for ${o.scorer}`);
  }
}

/** Keeps sink + window + the best `keep - sink - window` others (ties to the earlier token); ascending indices. */
export function referenceSelect(scores: ArrayLike<number>, sink: number, window: number, keep: number): number[] {
  const L = scores.length;
  if (keep >= L) return Array.from({ length: L }, (_, i) => i);
  const front = Math.min(sink, L), back = Math.min(window, L - front);
  const middle = Array.from({ length: L - front - back }, (_, i) => front + i);
  middle.sort((a, b) => scores[b] - scores[a] || a - b);
  const chosen = [
    ...Array.from({ length: front }, (_, i) => i),
    ...middle.slice(0, keep - front - back),
    ...Array.from({ length: back }, (_, i) => L - back + i),
  ];
  return chosen.sort((a, b) => a - b);
}

/** Per-head bounds: the forced tokens (at least 1) and the length. */
export function bounds(lengths: ArrayLike<number>, sink: number, window: number): { lo: number[]; hi: number[] } {
  const lo = Array.from(lengths, (l) => (l === 0 ? 0 : Math.max(1, Math.min(l, sink + window))));
  return { lo, hi: Array.from(lengths) };
}

/** Σ (b − ideal)²: how far integer budgets are from the ideal real ones. */
export function fitCost(b: ArrayLike<number>, ideal: ArrayLike<number>): number {
  let c = 0;
  for (let h = 0; h < ideal.length; h++) c += (b[h] - ideal[h]) ** 2;
  return c;
}

/**
 * The definition of fitting: integer budgets b with lo ≤ b ≤ hi and Σ b = total that minimise
 * Σ (b − ideal)². Built from lo one unit at a time, each unit to the head whose cost grows least
 * ((b + 1 − c)² − (b − c)² = 2(b − c) + 1; ties to the lower head): the cost is a sum of convex
 * functions of one head each, so this greedy reaches the minimum (checked against enumeration on
 * small cases in allocation-definition.test.ts). Different tie choices give the same cost.
 */
export function leastSquaresFit(ideal: number[], lo: number[], hi: number[], total: number): number[] {
  const b = lo.slice();
  let sum = b.reduce((x, y) => x + y, 0);
  while (sum < total) {
    let best = -1, bestGrowth = Infinity;
    for (let h = 0; h < b.length; h++) {
      if (b[h] >= hi[h]) continue;
      const growth = 2 * (b[h] - ideal[h]) + 1;
      if (growth < bestGrowth) [best, bestGrowth] = [h, growth];
    }
    if (best < 0) break;
    b[best]++;
    sum++;
  }
  return b;
}

/** Every b with lo ≤ b ≤ hi and Σ b = total (small cases only). */
export function* allFits(lo: number[], hi: number[], total: number): Generator<number[]> {
  const n = lo.length;
  const b = new Array<number>(n);
  function* at(h: number, left: number): Generator<number[]> {
    if (h === n) {
      if (left === 0) yield b.slice();
      return;
    }
    for (let v = lo[h]; v <= hi[h] && v <= left; v++) {
      b[h] = v;
      yield* at(h + 1, left - v);
    }
  }
  yield* at(0, total);
}

/** The ideal (real) budgets of the uniform and pyramidkv allocations, before fitting. */
export function idealBudgets(x: AllocationRefInput): number[] {
  const beta = x.beta ?? 20;
  return x.lengths.map((len, i) => {
    const l = Math.floor(i / x.kvHeads);
    const w = x.allocation === "pyramidkv" && x.layers > 1 ? 2 - 1 / beta - (2 - 2 / beta) * (l / (x.layers - 1)) : 1;
    return (1 - x.ratio) * len * w;
  });
}

/**
 * round((1 − ratio) · tokens), halves up, in exact integer arithmetic on the decimal that
 * String(ratio) prints (what a user wrote: 0.3 is 3/10, not the double nearest it).
 */
export function decimalKeptTotal(ratio: number, tokens: number): number {
  const m = /^(\d+)(?:\.(\d+))?(?:e([+-]\d+))?$/.exec(String(ratio));
  if (!m) throw new Error(`unexpected ratio ${ratio}`);
  const digits = m[1] + (m[2] ?? "");
  const scale = (m[2] ?? "").length - Number(m[3] ?? 0); // ratio = digits / 10^scale
  const num = scale >= 0 ? BigInt(digits) : BigInt(digits) * 10n ** BigInt(-scale);
  const den = 10n ** BigInt(Math.max(0, scale));
  // floor(tokens · (den − num) / den + 1/2) = floor((2 · tokens · (den − num) + den) / (2 · den))
  return Number((2n * BigInt(tokens) * (den - num) + den) / (2n * den));
}

/** The kept total compress aims at: round((1 − ratio) · tokens), raised to the forced tokens. */
export function keptTotal(x: Pick<AllocationRefInput, "lengths" | "ratio" | "sink" | "window">): number {
  const before = x.lengths.reduce((a, b) => a + b, 0);
  const sumLo = bounds(x.lengths, x.sink, x.window).lo.reduce((a, b) => a + b, 0);
  return Math.min(before, Math.max(sumLo, decimalKeptTotal(x.ratio, before)));
}

export interface AllocationRefInput {
  lengths: number[];
  layers: number;
  kvHeads: number;
  ratio: number;
  sink: number;
  window: number;
  scores: ArrayLike<number>[]; // per head
  allocation: "uniform" | "pyramidkv" | "adakv";
  alpha?: number;
  beta?: number;
}

/**
 * Ada-KV budgets from its definition: layer budgets fitted to (1 − ratio) of each layer's tokens;
 * inside a layer each head first gets its floor (alpha times its proportional share, at least its
 * forced tokens), then the layer's remaining budget goes to the best remaining scores of all its
 * heads. (uniform and pyramidkv are checked by their fitting cost: see idealBudgets.)
 */
export function referenceAdaKV(x: AllocationRefInput): number[] {
  const { lo } = bounds(x.lengths, x.sink, x.window);
  const before = x.lengths.reduce((a, b) => a + b, 0);
  const total = keptTotal(x);
  if (decimalKeptTotal(x.ratio, before) >= before) return [...x.lengths];
  const H = x.kvHeads, Ly = x.layers;
  const alpha = x.alpha ?? 0.2;
  const loL: number[] = [], hiL: number[] = [];
  for (let l = 0; l < Ly; l++) {
    loL.push(lo.slice(l * H, l * H + H).reduce((a, b) => a + b, 0));
    hiL.push(x.lengths.slice(l * H, l * H + H).reduce((a, b) => a + b, 0));
  }
  const layerBudget = leastSquaresFit(hiL.map((n) => (1 - x.ratio) * n), loL, hiL, total);
  const keep = new Array<number>(Ly * H).fill(0);
  for (let l = 0; l < Ly; l++) {
    let floors = Array.from({ length: H }, (_, h) => {
      const i = l * H + h;
      const share = hiL[l] > 0 ? (layerBudget[l] * x.lengths[i]) / hiL[l] : 0;
      return Math.min(x.lengths[i], Math.max(lo[i], Math.floor(alpha * share)));
    });
    if (floors.reduce((a, b) => a + b, 0) > layerBudget[l]) floors = lo.slice(l * H, l * H + H);
    // Remaining candidates of all heads of the layer, best first (ties: lower head, then earlier token).
    const cands: { s: number; h: number; t: number }[] = [];
    for (let h = 0; h < H; h++) {
      const i = l * H + h, L = x.lengths[i];
      const front = Math.min(x.sink, L), back = Math.min(x.window, L - front);
      const mid = Array.from({ length: L - front - back }, (_, k) => front + k).sort((a, b) => x.scores[i][b] - x.scores[i][a] || a - b);
      const skip = Math.max(0, floors[h] - front - back);
      for (const t of mid.slice(skip)) cands.push({ s: x.scores[i][t], h, t });
    }
    cands.sort((a, b) => b.s - a.s || a.h - b.h || a.t - b.t);
    let rest = layerBudget[l] - floors.reduce((a, b) => a + b, 0);
    for (let h = 0; h < H; h++) keep[l * H + h] = floors[h];
    for (const c of cands) {
      if (rest <= 0) break;
      keep[l * H + c.h]++;
      rest--;
    }
  }
  return keep;
}
