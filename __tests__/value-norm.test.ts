// valueNorm: every attention score times its token's ‖v‖, for snapkv, tova and h2o; refused for
// scorers whose scores are not attention weights.
import { KVCache } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";

const seed = testSeed("value-norm");
const shape = { layers: 2, kvHeads: 2, queryHeads: 4, headDim: 8 };

function build() {
  const r = rng(seed);
  const cache = new KVCache({ ...shape, pageSize: 8, maxTokens: 4096, dtype: "f32" });
  const seq = cache.createSequence();
  seq.accumulateAttention();
  for (let l = 0; l < shape.layers; l++) {
    // Values of varied size, so that the weighting reorders tokens.
    const v = randn(r, 100 * shape.kvHeads * shape.headDim);
    for (let t = 0; t < 100 * shape.kvHeads; t++) {
      const s = 0.1 + 3 * r();
      for (let d = 0; d < shape.headDim; d++) v[t * shape.headDim + d] *= s;
    }
    seq.append(l, randn(r, 100 * shape.kvHeads * shape.headDim), v);
    seq.attend(l, randn(r, 100 * shape.queryHeads * shape.headDim, 1.5));
  }
  return { cache, seq };
}

const norms = (v: Float32Array, D: number): number[] =>
  Array.from({ length: v.length / D }, (_, t) => Math.hypot(...v.subarray(t * D, t * D + D)));

test.each([
  ["snapkv", {}],
  ["tova", { groupReduce: "layer" as const }],
  ["h2o", {}],
] as const)("%s: scores x ||v||, and compress keeps the best of those", (scorer, extra) => {
  const { cache, seq } = build();
  try {
    for (let l = 0; l < shape.layers; l++) {
      const plain = seq.scores(l, scorer, { window: 8, ...extra });
      const weighted = seq.scores(l, scorer, { window: 8, valueNorm: true, ...extra });
      for (let h = 0; h < shape.kvHeads; h++) {
        const n = norms(seq.values(l, h), shape.headDim);
        const want = Array.from(plain[h], (s, t) => s * n[t]);
        want.forEach((w, t) => expect(Math.abs(weighted[h][t] - w)).toBeLessThanOrEqual(1e-6 * Math.max(1e-3, Math.abs(w))));
      }
    }
    const want = Array.from({ length: shape.layers * shape.kvHeads }, (_, i) => {
      const l = Math.floor(i / shape.kvHeads), h = i % shape.kvHeads;
      const s = seq.scores(l, scorer, { window: 8, valueNorm: true, ...extra })[h];
      // 4 sink + 8 window + the best 38 of the middle.
      const mid = Array.from({ length: 88 }, (_, k) => 4 + k).sort((a, b) => s[b] - s[a] || a - b).slice(0, 38);
      return [0, 1, 2, 3, ...mid, ...Array.from({ length: 8 }, (_, k) => 92 + k)].sort((a, b) => a - b);
    });
    seq.compress({ ratio: 0.5, scorer, window: 8, valueNorm: true, ...extra });
    for (let i = 0; i < want.length; i++) expect(Array.from(seq.positions(Math.floor(i / shape.kvHeads), i % shape.kvHeads))).toEqual(want[i]);
  } finally {
    cache.dispose();
  }
});

test("refused for scorers whose scores are not attention weights, before anything changes", () => {
  const { cache, seq } = build();
  try {
    const before = seq.lengths();
    expect(() => seq.compress({ ratio: 0.5, scorer: "knorm", valueNorm: true })).toThrow(
      'Expected false for scorer "knorm" (it weights attention scores: snapkv, tova, h2o) for valueNorm but received true of type boolean',
    );
    expect(() => seq.compress({ ratio: 0.5, valueNorm: 1 as never })).toThrow("Expected a boolean for valueNorm but received 1 of type number");
    expect(seq.lengths()).toEqual(before);
  } finally {
    cache.dispose();
  }
});
