// Parity with NVIDIA kvpress: given a press's parameters, lukv keeps the same tokens. Every
// reference below is written from the press's definition (see docs/methods.md), in float64, on
// seeded random data; tokens whose reference score sits within a rounding error of the cut may
// differ (lukv scores in float32, and a tie can go either way).
import { KVCache, QueryStatistics, Sequence, createProfile, profileFromNpy, profileToNpy } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";

const seed = testSeed("kvpress-parity");

const shape = { layers: 3, kvHeads: 2, queryHeads: 8, headDim: 16 };
const G = shape.queryHeads / shape.kvHeads;
const D = shape.headDim;
const L = 320;

interface Data {
  keys: Float32Array[][]; // [layer][kvHead] -> [L, D]
  queries: Float32Array[]; // [layer] -> [L, queryHeads, D]
}

function makeData(r: () => number): Data {
  return {
    keys: Array.from({ length: shape.layers }, () =>
      Array.from({ length: shape.kvHeads }, () => {
        // Keys of varied norm, so that knorm and keydiff have something to rank.
        const k = randn(r, L * D);
        for (let t = 0; t < L; t++) {
          const s = 0.5 + r();
          for (let d = 0; d < D; d++) k[t * D + d] *= s;
        }
        return k;
      }),
    ),
    queries: Array.from({ length: shape.layers }, () => randn(r, L * shape.queryHeads * D, 1.5)),
  };
}

/** The cache of `data`, with random values ([layer] -> [L, kvHeads, D]) drawn from `r`. */
function build(data: Data, r: () => number): { cache: KVCache; seq: Sequence; values: Float32Array[] } {
  const cache = new KVCache({ ...shape, pageSize: 16, dtype: "f32", maxTokens: 4096, observationWindow: 64 });
  const seq = cache.createSequence();
  const values: Float32Array[] = [];
  for (let l = 0; l < shape.layers; l++) {
    const k = new Float32Array(L * shape.kvHeads * D);
    for (let t = 0; t < L; t++)
      for (let h = 0; h < shape.kvHeads; h++) k.set(data.keys[l][h].subarray(t * D, t * D + D), (t * shape.kvHeads + h) * D);
    values.push(randn(r, L * shape.kvHeads * D));
    seq.append(l, k, values[l]);
    seq.attend(l, data.queries[l]);
  }
  return { cache, seq, values };
}

// ---- kvpress's definitions, from its presses ----

const norm = (a: Float32Array, o: number): number => {
  let s = 0;
  for (let d = 0; d < D; d++) s += a[o + d] * a[o + d];
  return Math.sqrt(s);
};

/** KnormPress: −‖k‖. */
const knorm = (k: Float32Array): number[] => Array.from({ length: L }, (_, t) => -norm(k, t * D));

/** KeyDiffPress: −cos(k_t, mean over t of k_t/‖k_t‖). */
function keydiff(k: Float32Array): number[] {
  const anchor = new Array<number>(D).fill(0);
  for (let t = 0; t < L; t++) for (let d = 0; d < D; d++) anchor[d] += k[t * D + d] / norm(k, t * D) / L;
  const an = Math.sqrt(anchor.reduce((a, b) => a + b * b, 0));
  return Array.from({ length: L }, (_, t) => {
    let dot = 0;
    for (let d = 0; d < D; d++) dot += k[t * D + d] * anchor[d];
    return -dot / (norm(k, t * D) * an);
  });
}

/** Causal softmax attention of query row i (query head q) over keys 0..i, scale 1/√D. */
function attentionRow(data: Data, l: number, i: number, q: number): number[] {
  const kk = data.keys[l][Math.floor(q / G)];
  const qo = (i * shape.queryHeads + q) * D;
  const logits = Array.from({ length: i + 1 }, (_, j) => {
    let s = 0;
    for (let d = 0; d < D; d++) s += data.queries[l][qo + d] * kk[j * D + d];
    return s / Math.sqrt(D);
  });
  const m = Math.max(...logits);
  const e = logits.map((x) => Math.exp(x - m));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / z);
}

/**
 * SnapKVPress(window_size w, kernel_size k): the last w queries' softmax attention (over every key,
 * causal), mean over those queries, kept for the L − w keys before the window; avg_pool1d with
 * zero padding k//2 (the sum over the kernel divided by k); mean over the GQA group; the window
 * scores the maximum (always kept).
 */
const snapkvMemo = new Map<string, number[][]>();
function snapkv(data: Data, l: number, w: number, k: number): number[][] {
  const key = `${l} ${w} ${k}`;
  if (!snapkvMemo.has(key)) snapkvMemo.set(key, snapkvScores(data, l, w, k));
  return snapkvMemo.get(key)!;
}

function snapkvScores(data: Data, l: number, w: number, k: number): number[][] {
  const n = L - w;
  const perQ = Array.from({ length: shape.queryHeads }, (_, q) => {
    const s = new Array<number>(n).fill(0);
    for (let i = L - w; i < L; i++) {
      const a = attentionRow(data, l, i, q);
      for (let j = 0; j < n; j++) s[j] += a[j] / w;
    }
    const r = Math.floor(k / 2);
    return s.map((_, j) => {
      let sum = 0;
      for (let x = j - r; x <= j + r; x++) if (x >= 0 && x < n) sum += s[x];
      return sum / k;
    });
  });
  return Array.from({ length: shape.kvHeads }, (_, h) => {
    const out = Array.from({ length: n }, (_, j) => {
      let s = 0;
      for (let g = 0; g < G; g++) s += perQ[h * G + g][j] / G;
      return s;
    });
    return [...out, ...new Array<number>(w).fill(Infinity)];
  });
}

/** TOVAPress: the last query's attention, mean over every query head of the layer, the same for all KV heads; the last token kept. */
function tova(data: Data, l: number): number[][] {
  const s = new Array<number>(L - 1).fill(0);
  for (let q = 0; q < shape.queryHeads; q++) {
    const a = attentionRow(data, l, L - 1, q);
    for (let j = 0; j < L - 1; j++) s[j] += a[j] / shape.queryHeads;
  }
  return Array.from({ length: shape.kvHeads }, () => [...s, Infinity]);
}

/** StreamingLLMPress(n_sink): ones, except zeros for the n_pruned tokens after the sinks. */
function streaming(nSink: number, ratio: number): number[] {
  const nPruned = L - Math.trunc(L * (1 - ratio));
  return Array.from({ length: L }, (_, t) => (t >= nSink && t < nSink + nPruned ? 0 : 1));
}

/** The rotate-half RoPE rotation cos_p·I + sin_p·P (base θ) averaged over positions p = L .. L + F − 1. */
function meanRotation(theta: number, F: number): number[][] {
  const R = Array.from({ length: D }, () => new Array<number>(D).fill(0));
  const half = D / 2;
  for (let p = L; p < L + F; p++)
    for (let i = 0; i < half; i++) {
      const a = p / theta ** ((2 * i) / D);
      const c = Math.cos(a) / F, s = Math.sin(a) / F;
      R[i][i] += c;
      R[i + half][i + half] += c;
      R[i][i + half] -= s;
      R[i + half][i] += s;
    }
  return R;
}

/** Mean and covariance (divided by N) of query head q's rows after the first `skip` ([L, queryHeads, D] queries). */
function queryMoments(queries: Float32Array, q: number, skip: number): { mu: number[]; cov: number[][] } {
  const N = L - skip;
  const x = (t: number, d: number): number => queries[(t * shape.queryHeads + q) * D + d];
  const mu = Array.from({ length: D }, (_, d) => {
    let s = 0;
    for (let t = skip; t < L; t++) s += x(t, d);
    return s / N;
  });
  const cov = Array.from({ length: D }, (_, i) =>
    Array.from({ length: D }, (_, j) => {
      let s = 0;
      for (let t = skip; t < L; t++) s += (x(t, i) - mu[i]) * (x(t, j) - mu[j]);
      return s / N;
    }),
  );
  return { mu, cov };
}

/**
 * ExpectedAttentionPress(n_sink, epsilon, n_future_positions F), RoPE base θ: per query head of the
 * group, μ and Σ of the pre-RoPE queries after the first n_sink rows; μ' = R̄μ, Σ' = R̄ΣR̄ᵀ;
 * z = μ'·k/√D + kᵀΣ'k/(2D) for the keys after the sinks, their softmax; the mean over the GQA group;
 * (s + ε)·‖v‖; the sinks the maximum (always kept). `values` is the layer's [L, kvHeads, D].
 */
function expectedAttention(
  keys: Float32Array,
  values: Float32Array,
  queries: Float32Array,
  h: number,
  o: { nSink: number; epsilon: number; theta: number; futurePositions: number },
): number[] {
  const R = meanRotation(o.theta, o.futurePositions);
  const out = new Array<number>(L).fill(0);
  for (let g = 0; g < G; g++) {
    const { mu, cov } = queryMoments(queries, h * G + g, o.nSink);
    const m = R.map((row) => row.reduce((s, r, k) => s + r * mu[k], 0));
    const RS = R.map((row) => Array.from({ length: D }, (_, j) => row.reduce((s, r, k) => s + r * cov[k][j], 0)));
    const S = RS.map((row) => Array.from({ length: D }, (_, j) => row.reduce((s, r, k) => s + r * R[j][k], 0)));
    const z = Array.from({ length: L - o.nSink }, (_, j) => {
      const ko = (o.nSink + j) * D;
      let lin = 0, quad = 0;
      for (let a = 0; a < D; a++) {
        lin += m[a] * keys[ko + a];
        for (let b = 0; b < D; b++) quad += keys[ko + a] * S[a][b] * keys[ko + b];
      }
      return lin / Math.sqrt(D) + quad / (2 * D);
    });
    const mx = Math.max(...z);
    const e = z.map((x) => Math.exp(x - mx));
    const sum = e.reduce((a, b) => a + b, 0);
    e.forEach((x, j) => (out[o.nSink + j] += x / sum / G));
  }
  return out.map((s, t) => {
    if (t < o.nSink) return Infinity;
    let v = 0;
    for (let d = 0; d < D; d++) v += values[(t * shape.kvHeads + h) * D + d] ** 2;
    return (s + o.epsilon) * Math.sqrt(v);
  });
}

/** ScorerPress: every head keeps max(1, int(L · (1 − ratio))) tokens (Python's int truncates). */
const scorerKept = (ratio: number): number => Math.max(1, Math.trunc(L * (1 - ratio)));

/** Python's round(): half to even. */
function pyRound(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** PyramidKVPress.get_layer_budget. */
function pyramidLayerBudget(l: number, ratio: number, w: number, beta: number): number {
  const cap = w + L * (1 - ratio);
  let minNum = (cap - w) / beta;
  let maxNum = (cap - w) * 2 - minNum;
  if (maxNum >= L - w) {
    maxNum = L - w;
    minNum = (cap - w) * 2 - maxNum;
  }
  if (!(L >= maxNum && maxNum >= minNum && minNum >= w)) return pyRound(L * (1 - ratio));
  const steps = (maxNum - minNum) / (shape.layers - 1);
  return pyRound(maxNum - l * steps);
}

/** LUKVPress keep counts of one layer from row round(100·ratio) − 1 of the [99, layers, kvHeads] table (in float32, as torch). */
function lukvPressCounts(table: ArrayLike<number>, l: number, ratio: number): number[] {
  const row = Math.max(0, Math.min(98, Math.round(ratio * 100) - 1));
  const H = shape.kvHeads;
  const ideal = Array.from({ length: H }, (_, h) => Math.fround(Math.fround(1 - Math.fround(table[(row * shape.layers + l) * H + h])) * L));
  const target = Math.max(H, Math.min(H * L, pyRound(ideal.reduce((a, b) => a + b, 0))));
  const base = ideal.map(Math.floor);
  let rem = target - base.reduce((a, b) => a + b, 0);
  const order = ideal.map((_, h) => h).sort((a, b) => ideal[b] - base[b] - (ideal[a] - base[a]));
  for (const h of order) if (rem-- > 0) base[h]++;
  return base.map((b) => Math.min(L, Math.max(1, b)));
}

// ---- comparison ----

interface Pick {
  kept: Set<number>;
  /** The scores the cut was made on, and the cut: the score of the last kept token. */
  scores: number[];
  cut: number;
}

/** The `keep` best tokens by score (kvpress's topk). */
function topk(scores: number[], keep: number): Pick {
  const order = scores.map((_, t) => t).sort((a, b) => scores[b] - scores[a] || a - b);
  return { kept: new Set(order.slice(0, keep)), scores, cut: scores[order[keep - 1]] };
}

/** The tokens kept by one and not the other, except those whose reference score is within a float32 rounding of the cut. */
function offTokens(got: Int32Array, want: Pick): string[] {
  const gotSet = new Set(got);
  const off: string[] = [];
  const tol = Number.isFinite(want.cut) ? 1e-5 * Math.abs(want.cut) : 0;
  for (let t = 0; t < L; t++) {
    if (gotSet.has(t) === want.kept.has(t)) continue;
    if (Math.abs(want.scores[t] - want.cut) <= tol) continue;
    off.push(`${t} (${gotSet.has(t) ? "kept" : "evicted"}, score ${want.scores[t]}, cut ${want.cut})`);
  }
  return off;
}

/** Same tokens, except tokens whose reference score is within a float32 rounding of the cut. */
function expectSame(got: Int32Array, want: Pick, label: string): void {
  expect({ label, kept: got.length }).toEqual({ label, kept: want.kept.size });
  expect({ label, off: offTokens(got, want) }).toEqual({ label, off: [] });
}

const r0 = rng(seed);
const data = makeData(r0);

describe("scorer presses: the same tokens as kvpress", () => {
  // 0.75 keeps int(320 · 0.25) = 80 in kvpress, exactly the uniform share lukv keeps.
  const ratio = 0.75;
  type Case = [string, Parameters<Sequence["compress"]>[0], (l: number, h: number) => number[]];
  const cases: Case[] = [
    ["KnormPress", { scorer: "knorm", sink: 0, window: 0 }, (l, h) => knorm(data.keys[l][h])],
    ["KeyDiffPress", { scorer: "keydiff", sink: 0, window: 0 }, (l, h) => keydiff(data.keys[l][h])],
    ["SnapKVPress(window_size=64, kernel_size=5)", { scorer: "snapkv", pooling: "avg", kernel: 5, window: 64, sink: 0 }, (l, h) => snapkv(data, l, 64, 5)[h]],
    ["SnapKVPress(window_size=16, kernel_size=7)", { scorer: "snapkv", pooling: "avg", kernel: 7, window: 16, sink: 0 }, (l, h) => snapkv(data, l, 16, 7)[h]],
    ["TOVAPress", { scorer: "tova", groupReduce: "layer", window: 1, sink: 0 }, (l, h) => tova(data, l)[h]],
    ["StreamingLLMPress(n_sink=4)", { scorer: "streaming", sink: 4, window: 0 }, () => streaming(4, ratio)],
  ];
  test.each(cases)("%s", (name, options, ref) => {
    const { cache, seq } = build(data, rng(seed ^ 1));
    try {
      seq.compress({ ...options, ratio });
      for (let l = 0; l < shape.layers; l++)
        for (let h = 0; h < shape.kvHeads; h++) expectSame(seq.positions(l, h), topk(ref(l, h), scorerKept(ratio)), `${name} layer ${l} head ${h}`);
    } finally {
      cache.dispose();
    }
  });

  test("at ratio 0.8 kvpress keeps int(320 · (1 − 0.8)) = 63 (float rounding), lukv 64; with kvpress's counts as budgets the tokens agree", () => {
    expect(scorerKept(0.8)).toBe(63);
    const { cache, seq } = build(data, rng(seed ^ 2));
    try {
      const report = seq.compress({ ratio: 0.8, scorer: "knorm", sink: 0, window: 0 });
      expect(Array.from(report.kept)).toEqual(new Array(6).fill(64));
    } finally {
      cache.dispose();
    }
    const b = build(data, rng(seed ^ 2));
    try {
      b.seq.compress({ budgets: new Int32Array(6).fill(63), scorer: "snapkv", pooling: "avg", kernel: 5, window: 16, sink: 0 });
      for (let l = 0; l < shape.layers; l++) {
        const ref = snapkv(data, l, 16, 5);
        for (let h = 0; h < shape.kvHeads; h++) expectSame(b.seq.positions(l, h), topk(ref[h], 63), `snapkv 0.8 layer ${l} head ${h}`);
      }
    } finally {
      b.cache.dispose();
    }
    // The same selection from `budget: 63` (per head, uniform); the default window (32) would change it.
    const c = build(data, rng(seed ^ 2));
    const d = build(data, rng(seed ^ 2));
    try {
      c.seq.compress({ budget: 63, scorer: "snapkv", pooling: "avg", kernel: 5, window: 16, sink: 0 });
      d.seq.compress({ budget: 63, scorer: "snapkv", pooling: "avg", kernel: 5, sink: 0 });
      let offDefault = 0;
      for (let l = 0; l < shape.layers; l++) {
        const ref = snapkv(data, l, 16, 5);
        for (let h = 0; h < shape.kvHeads; h++) {
          const want = topk(ref[h], 63);
          expectSame(c.seq.positions(l, h), want, `snapkv budget 63 layer ${l} head ${h}`);
          offDefault += offTokens(d.seq.positions(l, h), want).length;
        }
      }
      expect(offDefault).toBeGreaterThan(0);
    } finally {
      c.cache.dispose();
      d.cache.dispose();
    }
  });
});

describe("ExpectedAttentionPress: the same tokens as kvpress", () => {
  // Pre-RoPE queries with a mean per (query head, dimension), so that μ'·k counts too.
  const er = rng(seed ^ 7);
  const queries = data.queries.map((q) => {
    const offset = randn(er, shape.queryHeads * D);
    return q.map((x, i) => x + offset[i % offset.length]);
  });
  const theta = 10000;

  test.each([
    [0.5, 512, 0.02],
    [0.75, 64, 0.02],
    [0.75, 512, 0],
  ])("at ratio %p, ExpectedAttentionPress(n_sink=4, n_future_positions=%p, epsilon=%p)", (ratio, futurePositions, epsilon) => {
    const stats = new QueryStatistics({ layers: shape.layers, queryHeads: shape.queryHeads, headDim: D, skip: 4 });
    for (let l = 0; l < shape.layers; l++) stats.add(l, queries[l]);
    const options = {
      scorer: "expected-attention",
      sink: 4,
      ratio,
      expectedAttention: { statistics: stats, rope: { theta }, futurePositions, epsilon, valueNorm: true },
    } as const;
    const a = build(data, rng(seed ^ 8));
    const b = build(data, rng(seed ^ 8));
    try {
      a.seq.compress({ ...options, window: 0 });
      b.seq.compress(options);
      let offDefault = 0;
      for (let l = 0; l < shape.layers; l++)
        for (let h = 0; h < shape.kvHeads; h++) {
          const ref = expectedAttention(data.keys[l][h], a.values[l], queries[l], h, { nSink: 4, epsilon, theta, futurePositions });
          const want = topk(ref, scorerKept(ratio));
          expectSame(a.seq.positions(l, h), want, `expected attention layer ${l} head ${h}`);
          offDefault += offTokens(b.seq.positions(l, h), want).length;
        }
      // With the default window (32) the last tokens are kept whatever their score: not the press's.
      expect(offDefault).toBeGreaterThan(0);
    } finally {
      a.cache.dispose();
      b.cache.dispose();
    }
  });
});

describe("allocation presses: the same tokens as kvpress", () => {
  test.each([0.2, 0.9])("AdaKVPress(SnapKVPress(64, 5), alpha_safeguard=%p) at ratio 0.75", (alpha) => {
    const ratio = 0.75;
    const { cache, seq } = build(data, rng(seed ^ 3));
    try {
      seq.compress({ ratio, allocation: "adakv", alpha, scorer: "snapkv", pooling: "avg", kernel: 5, window: 64, sink: 0 });
      for (let l = 0; l < shape.layers; l++) {
        // Each head's top int(n_kept · alpha) are protected; then the layer keeps its best H · n_kept scores.
        const nKept = scorerKept(ratio);
        const nSafe = Math.trunc(nKept * alpha);
        const heads = snapkv(data, l, 64, 5).map((s) => {
          const order = s.map((_, t) => t).sort((a, b) => s[b] - s[a] || a - b);
          const out = s.slice();
          for (const t of order.slice(0, nSafe)) out[t] = Infinity;
          return out;
        });
        const all = heads.flat();
        const layerPick = topk(all, shape.kvHeads * nKept);
        for (let h = 0; h < shape.kvHeads; h++) {
          const kept = new Set([...layerPick.kept].filter((i) => Math.floor(i / L) === h).map((i) => i % L));
          expectSame(seq.positions(l, h), { kept, scores: heads[h], cut: layerPick.cut }, `adakv layer ${l} head ${h}`);
        }
      }
    } finally {
      cache.dispose();
    }
  });

  test("PyramidKVPress(window_size=16, kernel_size=5, beta=2) at ratio 0.5: layer budgets 240, 160, 80", () => {
    const ratio = 0.5, w = 16, beta = 2;
    const budgets = Array.from({ length: shape.layers }, (_, l) => pyramidLayerBudget(l, ratio, w, beta));
    expect(budgets).toEqual([240, 160, 80]);
    const { cache, seq } = build(data, rng(seed ^ 4));
    try {
      seq.compress({ ratio, allocation: "pyramidkv", beta, scorer: "snapkv", pooling: "avg", kernel: 5, window: w, sink: 0 });
      for (let l = 0; l < shape.layers; l++) {
        const ref = snapkv(data, l, w, 5);
        for (let h = 0; h < shape.kvHeads; h++) expectSame(seq.positions(l, h), topk(ref[h], budgets[l]), `pyramidkv layer ${l} head ${h}`);
      }
    } finally {
      cache.dispose();
    }
  });

  test("PyramidKVPress with its defaults (window 64, beta 20) falls back to uniform SnapKV on a short prompt; lukv keeps the pyramid", () => {
    // min_num = 320 · 0.25 / 20 = 4 < window_size 64: kvpress keeps round(80) in every layer.
    expect(Array.from({ length: shape.layers }, (_, l) => pyramidLayerBudget(l, 0.75, 64, 20))).toEqual([80, 80, 80]);
    const { cache, seq } = build(data, rng(seed ^ 5));
    try {
      const rep = seq.compress({ ratio: 0.75, allocation: "pyramidkv", scorer: "snapkv", pooling: "avg", kernel: 5, window: 64, sink: 0 });
      expect(rep.kept[0]).toBeGreaterThan(rep.kept[4]);
    } finally {
      cache.dispose();
    }
  });

  // Row 74 (ratio 0.75) keeps these counts of 320 (multiples of 5, so 1 − count/320 is exact in
  // float32): 480 of 1,920 in all, a quarter, so lukv needs no shift; the other rows ramp to it.
  const keep75 = [95, 75, 90, 80, 70, 70];
  function table(): Float64Array {
    const H = keep75.length;
    const t = new Float64Array(99 * H);
    for (let i = 0; i < 99; i++)
      for (let h = 0; h < H; h++) {
        const p = 1 - keep75[h] / L;
        t[i * H + h] = i <= 74 ? (p * (i + 1)) / 75 : p + ((1 - p) * (i - 74)) / 25;
      }
    return t;
  }

  test.each([
    ["KeyDiffPress", { scorer: "keydiff" }, 1, (l: number, h: number) => keydiff(data.keys[l][h])],
    ["SnapKVPress(window_size=64, kernel_size=5)", { scorer: "snapkv", pooling: "avg", kernel: 5 }, 64, (l: number, h: number) => snapkv(data, l, 64, 5)[h]],
  ] as const)("LUKVPress(%s, sink=4, window=1) from a [99, 3, 2] .npy table at ratio 0.75", (name, scorer, window, ref) => {
    // The table goes through the .npy format as float32, as the authors' files.
    const profile = profileFromNpy(profileToNpy(createProfile({ table: table(), layers: shape.layers, kvHeads: shape.kvHeads }), { dtype: "<f4" }));
    const { cache, seq } = build(data, rng(seed ^ 6));
    try {
      const rep = seq.compress({ ...scorer, ratio: 0.75, allocation: "lukv", profile, sink: 4, window });
      for (let l = 0; l < shape.layers; l++) {
        const counts = lukvPressCounts(profile.table, l, 0.75);
        expect(Array.from(rep.kept.subarray(l * 2, l * 2 + 2))).toEqual(counts);
        for (let h = 0; h < shape.kvHeads; h++) {
          // LUKVPress protects the sink and the last `window` tokens by scoring them above the rest.
          const s = ref(l, h).map((v, t) => (t < 4 || t >= L - 1 ? Infinity : v));
          expectSame(seq.positions(l, h), topk(s, counts[h]), `${name} lukv layer ${l} head ${h}`);
        }
      }
    } finally {
      cache.dispose();
    }
  });
});
