// The fused oracle equals a plain reference: max over decode steps and the GQA group of
// softmax weight x ||v_j W_O(q)||, with and without W_O, normalised or not.
import { KVCache } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";
import { relativeError } from "./helpers/reference";

const seed = testSeed("oracle");
const shape = { layers: 2, kvHeads: 2, queryHeads: 8, headDim: 16 };
const G = 4;

function softmaxWeights(q: Float32Array, qo: number, keys: Float32Array, positions: ArrayLike<number>, qpos: number, D: number): number[] {
  const logits: number[] = [];
  for (let j = 0; j < positions.length; j++) {
    if (positions[j] > qpos) { logits.push(-Infinity); continue; }
    let s = 0;
    for (let d = 0; d < D; d++) s += q[qo + d] * keys[j * D + d];
    logits.push(s / Math.sqrt(D));
  }
  const m = Math.max(...logits);
  const e = logits.map((v) => (v === -Infinity ? 0 : Math.exp(v - m)));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

describe.each([
  { withWo: false, normalize: false },
  { withWo: true, normalize: false },
  { withWo: true, normalize: true },
])("oracle with W_O $withWo, normalize $normalize", ({ withWo, normalize }) => {
  test("matches the reference on random data", () => {
    const r = rng(seed ^ (withWo ? 1 : 0) ^ (normalize ? 2 : 0));
    const { layers, kvHeads: H, queryHeads: Q, headDim: D } = shape;
    const hidden = 24;
    const cache = new KVCache({ ...shape, dtype: "f32", pageSize: 6, maxTokens: 4096 });
    const seq = cache.createSequence();
    const ctx = 70;
    for (let l = 0; l < layers; l++) {
      seq.append(l, randn(r, ctx * H * D), randn(r, ctx * H * D));
      seq.attend(l, randn(r, 8 * Q * D));
    }
    const wo = withWo ? Array.from({ length: layers }, () => randn(r, Q * D * hidden, 0.3)) : undefined;
    const keysBefore = Array.from({ length: layers }, (_, l) => Array.from({ length: H }, (_, h) => seq.keys(l, h)));
    const scoresBefore = seq.scores(1, "snapkv", { window: 8 });
    seq.recordOracle({ outputProjection: wo, normalize });
    // Reference weights ||v_j W_O(q)|| per (layer, query head, context token).
    const weight = Array.from({ length: layers }, (_, l) =>
      Array.from({ length: Q }, (_, q) => {
        const v = seq.values(l, Math.floor(q / G));
        return Array.from({ length: ctx }, (_, j) => {
          if (!wo) { let s = 0; for (let d = 0; d < D; d++) s += v[j * D + d] ** 2; return Math.sqrt(s); }
          let s = 0;
          for (let c = 0; c < hidden; c++) {
            let y = 0;
            for (let d = 0; d < D; d++) y += v[j * D + d] * wo[l][(q * D + d) * hidden + c];
            s += y * y;
          }
          return Math.sqrt(s);
        });
      }),
    );
    if (normalize)
      for (let l = 0; l < layers; l++) {
        const sum = weight[l].flat().reduce((a, b) => a + b, 0);
        weight[l] = weight[l].map((w) => w.map((x) => x / sum));
      }
    const want = Array.from({ length: layers }, () => Array.from({ length: H }, () => new Float64Array(ctx)));
    // Decode steps, including one multi-row chunk: every query row counts as a step.
    for (const rows of [1, 1, 3, 1]) {
      for (let l = 0; l < layers; l++) {
        seq.append(l, randn(r, rows * H * D), randn(r, rows * H * D));
        const q = randn(r, rows * Q * D, 2);
        seq.attend(l, q);
        const app = seq.appended(l);
        for (let h = 0; h < H; h++) {
          const keys = seq.keys(l, h), pos = seq.positions(l, h);
          for (let t = 0; t < rows; t++)
            for (let g = 0; g < G; g++) {
              const qh = h * G + g;
              const p = softmaxWeights(q, (t * Q + qh) * D, keys, pos, app - rows + t, D);
              for (let j = 0; j < ctx; j++) want[l][h][j] = Math.max(want[l][h][j], p[j] * weight[l][qh][j]);
            }
        }
      }
    }
    for (let l = 0; l < layers; l++) {
      const got = seq.oracle(l);
      for (let h = 0; h < H; h++) {
        expect(got[h].length).toBe(ctx); // only the context tokens count
        expect(relativeError(got[h], want[l][h])).toBeLessThan(1e-5);
        expect(seq.keys(l, h).subarray(0, ctx * D)).toEqual(keysBefore[l][h]);
      }
    }
    // The observation window is frozen: scores rank the context as at the start of recording.
    const scoresNow = seq.scores(1, "snapkv", { window: 8 });
    for (let h = 0; h < H; h++) expect(relativeError(scoresNow[h].subarray(0, ctx), scoresBefore[h])).toBeLessThan(1e-5);
    expect(() => seq.compress({ ratio: 0.5 })).toThrow("compress is not allowed while the oracle is being recorded");
    seq.stopOracle();
    expect(seq.oracle(0)[1].length).toBe(ctx);
    expect(seq.compress({ ratio: 0.5, window: 8 }).total).toBe(Math.round(0.5 * layers * H * (ctx + 6)));
    cache.dispose();
  });
});

test("recordOracle validates its options", () => {
  const cache = new KVCache({ ...shape, dtype: "f32", maxTokens: 1024 });
  const seq = cache.createSequence();
  expect(() => seq.oracle(0)).toThrow("the sequence has no oracle: call seq.recordOracle() before decoding");
  expect(() => seq.recordOracle({ outputProjection: [new Float32Array(128)] })).toThrow(
    "Expected an array of 2 Float32Array (one W_O per layer) for outputProjection but received Array(1)",
  );
  expect(() => seq.recordOracle({ outputProjection: [new Float32Array(128), new Float32Array(100)] })).toThrow(
    "Expected a Float32Array of [queryHeads*headDim = 128, hidden] (length a multiple of 128) for outputProjection[1] but received Float32Array(100)",
  );
  cache.dispose();
});
