// The output error (Σ‖O_c − O_f‖ / Σ‖O_f‖ over layers and decode steps): a case worked by hand,
// a float64 reference on random data, and on the trained tiny-lm: 0 for the full cache, growing
// with the compression ratio; LU-KV calibrated on the output-error oracle with a scorer's options.
import * as fs from "fs";
import { KVCache } from "../ts";
import { OutputErrorProbe, calibrateTinyLM, defaultModelDir, loadTinyLM, modelTexts, outputErrorOracle, outputErrorProbe } from "../ts/model";
import { InvalidArgumentError } from "../ts/errors";
import { caught } from "./helpers/caught";
import { rng, testSeed, randn } from "./helpers/random";
import { makeModelDir } from "./tiny-lm-fixture";

const seed = testSeed("output-error");

test("by hand: uniform attention over values 1, 2, 3, 6 and a new 0, o_proj = 2; evicting 3 and 6", () => {
  using cache = new KVCache({ layers: 1, kvHeads: 1, queryHeads: 1, headDim: 2, pageSize: 4, maxTokens: 64, dtype: "f32" });
  using seq = cache.createSequence();
  // Zero keys: every logit is 0, so attention is the plain mean of the visible values.
  seq.append(0, new Float32Array(8), Float32Array.from([1, 0, 2, 0, 3, 0, 6, 0]));
  const probe = new OutputErrorProbe({ layers: 1, queryHeads: 1, kvHeads: 1, headDim: 2, hidden: 1 }, [Float32Array.from([2, 0])], 1);
  probe.record(0, new Float32Array(2), new Float32Array(2), new Float32Array(2));
  const full = probe.outputs(seq);
  // Full: 2 · mean(1, 2, 3, 6, 0) = 4.8.
  expect(full[0][0]).toBeCloseTo(4.8, 6);
  expect(seq.lengths()[0]).toBe(4); // outputs() worked on a fork
  expect(probe.compare(full, probe.outputs(seq)).diff).toBe(0);
  using c = seq.fork();
  c.compress({ budgets: Int32Array.from([2]), scorer: "streaming", sink: 2, window: 0 });
  // Compressed: 2 · mean(1, 2, 0) = 2; error |2 − 4.8| / 4.8.
  const t = probe.compare(full, probe.outputs(c));
  expect(t.diff).toBeCloseTo(2.8, 5);
  expect(t.norm).toBeCloseTo(4.8, 5);
  expect(t.diff / t.norm).toBeCloseTo(2.8 / 4.8, 6);
});

test("a probe of no steps or with one output projection too few is an InvalidArgumentError", () => {
  const shape = { layers: 2, queryHeads: 1, kvHeads: 1, headDim: 2, hidden: 1 };
  const wo = [new Float32Array(2), new Float32Array(2)];
  for (const [make, message] of [
    [() => new OutputErrorProbe(shape, wo, 0), "Expected a positive integer for steps but received 0"],
    [() => new OutputErrorProbe(shape, wo, 1.5), "Expected a positive integer for steps but received 1.5"],
    [() => new OutputErrorProbe(shape, wo.slice(1), 1), "Expected 2 output projections but received 1"],
  ] as const) {
    const e = caught(make);
    expect([e.constructor, e.code, e.message]).toEqual([InvalidArgumentError, "ERR_LUKV_INVALID_ARGUMENT", message]);
  }
  expect(new OutputErrorProbe(shape, wo, 1).steps).toBe(1);
});

test("random data: equals a float64 reference of attention over the kept tokens, then o_proj", () => {
  const r = rng(seed);
  const layers = 2, kvHeads = 2, queryHeads = 4, headDim = 8, hidden = 6, context = 40, steps = 5;
  const G = queryHeads / kvHeads;
  using cache = new KVCache({ layers, kvHeads, queryHeads, headDim, pageSize: 8, maxTokens: 4096, dtype: "f32" });
  using seq = cache.createSequence();
  const ctx = Array.from({ length: layers }, () => ({ k: randn(r, context * kvHeads * headDim), v: randn(r, context * kvHeads * headDim) }));
  ctx.forEach((x, l) => seq.append(l, x.k, x.v));
  const wo = Array.from({ length: layers }, () => randn(r, hidden * queryHeads * headDim, 0.3));
  const probe = new OutputErrorProbe({ layers, queryHeads, kvHeads, headDim, hidden }, wo, steps);
  // Recorded in two chunks (3 + 4 rows; only the first 5 are kept).
  const step = Array.from({ length: layers }, () => ({ q: randn(r, 7 * queryHeads * headDim, 2), k: randn(r, 7 * kvHeads * headDim), v: randn(r, 7 * kvHeads * headDim) }));
  for (const [a, b] of [[0, 3], [3, 7]])
    step.forEach((x, l) =>
      probe.record(l, x.q.subarray(a * queryHeads * headDim, b * queryHeads * headDim), x.k.subarray(a * kvHeads * headDim, b * kvHeads * headDim), x.v.subarray(a * kvHeads * headDim, b * kvHeads * headDim)),
    );
  using c = seq.fork();
  c.compress({ ratio: 0.6, scorer: "knorm", sink: 2, window: 3 });
  // Reference: token j of head h is (position p, key, value); the kept context plus the steps so far.
  const outputs = (keptOf: (l: number, h: number) => ArrayLike<number>): number[][][] =>
    Array.from({ length: layers }, (_, l) =>
      Array.from({ length: steps }, (_, s) => {
        const heads: number[] = [];
        for (let qh = 0; qh < queryHeads; qh++) {
          const h = Math.floor(qh / G);
          const rows: { k: Float32Array; v: Float32Array }[] = [];
          for (const p of Array.from(keptOf(l, h))) {
            const o = (p * kvHeads + h) * headDim;
            rows.push({ k: ctx[l].k.subarray(o, o + headDim), v: ctx[l].v.subarray(o, o + headDim) });
          }
          for (let t = 0; t <= s; t++) {
            const o = (t * kvHeads + h) * headDim;
            rows.push({ k: step[l].k.subarray(o, o + headDim), v: step[l].v.subarray(o, o + headDim) });
          }
          const q = step[l].q.subarray((s * queryHeads + qh) * headDim, (s * queryHeads + qh + 1) * headDim);
          const logits = rows.map((x) => x.k.reduce((a: number, kv: number, d: number) => a + kv * q[d], 0) / Math.sqrt(headDim));
          const m = Math.max(...logits);
          const e = logits.map((x) => Math.exp(x - m));
          const z = e.reduce((a, b) => a + b, 0);
          for (let d = 0; d < headDim; d++) heads.push(rows.reduce((a, x, i) => a + (e[i] / z) * x.v[d], 0));
        }
        return Array.from({ length: hidden }, (_, o) => heads.reduce((a, x, i) => a + x * wo[l][o * queryHeads * headDim + i], 0));
      }),
    );
  const all = Array.from({ length: context }, (_, i) => i);
  const full = outputs(() => all), kept = outputs((l, h) => c.positions(l, h));
  let diff = 0, norm = 0;
  for (let l = 0; l < layers; l++)
    for (let s = 0; s < steps; s++) {
      diff += Math.hypot(...kept[l][s].map((x, i) => x - full[l][s][i]));
      norm += Math.hypot(...full[l][s]);
    }
  const t = probe.compare(probe.outputs(seq), probe.outputs(c));
  expect(t.norm).toBeCloseTo(norm, 3);
  expect(t.diff / t.norm).toBeCloseTo(diff / norm, 4);
  expect(t.layerDiff.length).toBe(layers);
  expect(t.layerDiff[0] + t.layerDiff[1]).toBeCloseTo(t.diff, 9);
});

test("tiny-lm: 0 for the full cache and ratio 0, growing with the ratio", () => {
  const model = loadTinyLM(defaultModelDir());
  const tok = model.tokenizer!;
  const ids = [tok.bos!, ...tok.encode(modelTexts(defaultModelDir(), "heldout")[0].text).slice(0, 300)];
  using cache = model.createCache({ contextTokens: 1024 });
  using seq = cache.createSequence();
  model.forward(seq, ids.slice(0, 256), { logits: "none" });
  const probe = outputErrorProbe(model, 32);
  {
    using f = seq.fork();
    model.forward(f, ids.slice(256, 256 + 40), { logits: "none", onAttention: probe.record });
  }
  expect(probe.collected).toBe(32);
  const full = probe.outputs(seq);
  const error = (ratio: number): number => {
    using c = seq.fork();
    c.compress({ ratio, scorer: "snapkv" });
    const t = probe.compare(full, probe.outputs(c));
    return t.diff / t.norm;
  };
  expect(error(0)).toBe(0);
  const e = [0.5, 0.8, 0.95].map(error);
  expect(e[0]).toBeGreaterThan(0);
  expect(e[1]).toBeGreaterThan(e[0]);
  expect(e[2]).toBeGreaterThan(e[1]);
});

test("output-error oracle: each token's value is the change of the outputs when it alone is evicted, to first order", () => {
  const r = rng(seed ^ 7);
  const layers = 1, kvHeads = 2, queryHeads = 4, headDim = 4, hidden = 3, C = 60, steps = 3;
  const G = queryHeads / kvHeads;
  const keys = [Array.from({ length: kvHeads }, () => randn(r, C * headDim, 0.5))];
  const values = [Array.from({ length: kvHeads }, () => randn(r, C * headDim))];
  const wo = [randn(r, hidden * queryHeads * headDim)];
  const probe = new OutputErrorProbe({ layers, queryHeads, kvHeads, headDim, hidden }, wo, steps);
  probe.record(0, randn(r, steps * queryHeads * headDim), randn(r, steps * kvHeads * headDim, 0.5), randn(r, steps * kvHeads * headDim));
  const oracle = outputErrorOracle(probe, keys, values, { queryHeads, kvHeads, headDim, hidden });
  const x = probe.inputs[0];
  // Query head q at step s, in float64: its attention weights over the rows it sees (the context,
  // then the steps so far) with token `drop` evicted (or none), and its rows' values projected by
  // its part of the output projection.
  const head = (s: number, q: number, drop: number): { a: number[]; vw: number[][] } => {
    const h = Math.floor(q / G);
    const rows: { k: Float32Array; v: Float32Array }[] = [];
    for (let j = 0; j < C; j++) if (j !== drop) rows.push({ k: keys[0][h].subarray(j * headDim, (j + 1) * headDim), v: values[0][h].subarray(j * headDim, (j + 1) * headDim) });
    for (let t = 0; t <= s; t++) rows.push({ k: x.k.subarray((t * kvHeads + h) * headDim, (t * kvHeads + h + 1) * headDim), v: x.v.subarray((t * kvHeads + h) * headDim, (t * kvHeads + h + 1) * headDim) });
    const qv = x.q.subarray((s * queryHeads + q) * headDim, (s * queryHeads + q + 1) * headDim);
    const e = rows.map((row) => Math.exp(row.k.reduce((acc, kv, d) => acc + kv * qv[d], 0) / Math.sqrt(headDim)));
    const z = e.reduce((acc, b) => acc + b, 0);
    const vw = rows.map((row) => Array.from({ length: hidden }, (_, o) => row.v.reduce((acc, vd, d) => acc + vd * wo[0][o * queryHeads * headDim + q * headDim + d], 0)));
    return { a: e.map((ei) => ei / z), vw };
  };
  const projected = (hq: { a: number[]; vw: number[][] }): number[] => Array.from({ length: hidden }, (_, o) => hq.a.reduce((acc, ai, i) => acc + ai * hq.vw[i][o], 0));
  // The layer's output row at step s from KV head h's query heads.
  const output = (s: number, h: number, drop: number): number[] => {
    const y = new Array<number>(hidden).fill(0);
    for (let q = h * G; q < (h + 1) * G; q++) projected(head(s, q, drop)).forEach((v, o) => (y[o] += v));
    return y;
  };
  let exactSum = 0, remainderSum = 0;
  for (let h = 0; h < kvHeads; h++) {
    const full = Array.from({ length: steps }, (_, s) => output(s, h, -1));
    for (const j of [0, 17, 59]) {
      let exact = 0, remainder = 0;
      for (let s = 0; s < steps; s++) {
        exact += Math.hypot(...output(s, h, j).map((v, o) => v - full[s][o]));
        // Evicting j changes head q's output by a/(1 - a) · (O_q - v_j W_q), a its weight on j;
        // the oracle keeps the first order, a · (...): the rest is at most a²/(1 - a) · ‖...‖.
        for (let q = h * G; q < (h + 1) * G; q++) {
          const hq = head(s, q, -1), O = projected(hq), a = hq.a[j];
          remainder += ((a * a) / (1 - a)) * Math.hypot(...O.map((v, o) => v - hq.vw[j][o]));
        }
      }
      expect(Math.abs(oracle[0][h][j] - exact)).toBeLessThanOrEqual(remainder * (1 + 1e-9) + 1e-12);
      exactSum += exact;
      remainderSum += remainder;
    }
  }
  // The bound is tight: with weights ~1/60 the second order is a few per cent of the change.
  expect(remainderSum).toBeLessThan(0.2 * exactSum);
});

test("calibrating on the output-error oracle ranks with the scorer options given (SnapKV avg pooling, kernel 3)", () => {
  const dir = makeModelDir(rng(seed ^ 11));
  const model = loadTinyLM(dir);
  const texts = modelTexts(dir, "calibration");
  const calibrate = (scorerOptions: object) =>
    calibrateTinyLM(model, texts, { oracle: "output", contexts: [96, 128], decodeSteps: 6, scorerOptions }).profiles.get("snapkv")!;
  const avg = calibrate({ pooling: "avg", kernel: 3 });
  const max = calibrate({});
  fs.rmSync(dir, { recursive: true, force: true });
  expect(avg.meta.scorerOptions).toEqual({ pooling: "avg", kernel: 3 });
  expect(max.meta.scorerOptions).toBeUndefined();
  expect(avg.meta.calibration?.decodeSteps).toBe(6);
  // The oracle is the same, the ranking is not: somewhere the budgets differ.
  let differ = 0;
  for (let i = 0; i < avg.table.length; i++) differ = Math.max(differ, Math.abs(avg.table[i] - max.table[i]));
  expect(differ).toBeGreaterThan(0.01);
});
