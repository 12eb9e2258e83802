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
}

export interface ScoreRefOptions {
  scorer: string;
  pooling: "none" | "max" | "avg";
  kernel: number;
  groupReduce: "mean" | "max";
  seed: number;
  scale: number;
}

function dot(a: ArrayLike<number>, ao: number, b: ArrayLike<number>, bo: number, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += a[ao + i] * b[bo + i];
  return s;
}

export function pool1d(x: number[], kind: "max" | "avg", kernel: number): number[] {
  const r = Math.floor(kernel / 2);
  return x.map((_, j) => {
    const win = x.slice(Math.max(0, j - r), Math.min(x.length, j + r + 1));
    return kind === "max" ? Math.max(...win) : win.reduce((a, b) => a + b, 0) / win.length;
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
  const L = x.positions.length, D = x.headDim;
  switch (o.scorer) {
    case "snapkv":
    case "tova": {
      let per = attentionPerQueryHead(x, o.scale);
      if (o.pooling !== "none" && o.kernel > 1) per = per.map((s) => pool1d(s, o.pooling as "max" | "avg", o.kernel));
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
    case "streaming":
      return Array.from(x.positions);
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

/** Integer budgets in [lo, hi] with an exact total, closest to ideal by an additive shift + largest remainders. */
export function referenceFit(ideal: number[], lo: number[], hi: number[], total: number): number[] {
  const n = ideal.length;
  const at = (h: number, lambda: number) => Math.min(hi[h], Math.max(lo[h], ideal[h] + lambda));
  const sum = (lambda: number) => {
    let s = 0;
    for (let h = 0; h < n; h++) s += at(h, lambda);
    return s;
  };
  let a = 0, b = 0;
  for (let h = 0; h < n; h++) {
    a = Math.min(a, lo[h] - ideal[h] - 1);
    b = Math.max(b, hi[h] - ideal[h] + 1);
  }
  for (let it = 0; it < 200 && b - a > 1e-9; it++) {
    const mid = 0.5 * (a + b);
    if (sum(mid) >= total) b = mid;
    else a = mid;
  }
  const x = ideal.map((_, h) => at(h, b));
  const out = x.map((v) => Math.floor(v));
  let s = out.reduce((p, q) => p + q, 0);
  const order = Array.from({ length: n }, (_, i) => i).sort((p, q) => x[q] - out[q] - (x[p] - out[p]) || p - q);
  while (s < total) for (let i = 0; i < n && s < total; i++) if (out[order[i]] < hi[order[i]]) (out[order[i]]++, s++);
  while (s > total) for (let i = n - 1; i >= 0 && s > total; i--) if (out[order[i]] > lo[order[i]]) (out[order[i]]--, s--);
  return out;
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

export function referenceBudgets(x: AllocationRefInput): number[] {
  const { lo, hi } = bounds(x.lengths, x.sink, x.window);
  const before = x.lengths.reduce((a, b) => a + b, 0);
  const sumLo = lo.reduce((a, b) => a + b, 0);
  const target = Math.floor((1 - x.ratio) * before + 0.5);
  const total = Math.min(before, Math.max(sumLo, target));
  if (target >= before) return [...x.lengths];
  const H = x.kvHeads, Ly = x.layers;
  if (x.allocation !== "adakv") {
    const beta = x.beta ?? 20;
    const ideal = x.lengths.map((len, i) => {
      const l = Math.floor(i / H);
      const w = x.allocation === "pyramidkv" && Ly > 1 ? 2 - 1 / beta - (2 - 2 / beta) * (l / (Ly - 1)) : 1;
      return (1 - x.ratio) * len * w;
    });
    return referenceFit(ideal, lo, hi, total);
  }
  const alpha = x.alpha ?? 0.2;
  const loL: number[] = [], hiL: number[] = [];
  for (let l = 0; l < Ly; l++) {
    loL.push(lo.slice(l * H, l * H + H).reduce((a, b) => a + b, 0));
    hiL.push(x.lengths.slice(l * H, l * H + H).reduce((a, b) => a + b, 0));
  }
  const layerBudget = referenceFit(hiL.map((n) => (1 - x.ratio) * n), loL, hiL, total);
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
