// The profiler on real sequences: oracle recorded by the addon over a decode loop, scores from
// seq.scores(), a profile that compress() then uses.
import { KVCache, Profiler, Sequence } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";

const seed = testSeed("profiler-native");
const shape = { layers: 2, kvHeads: 2, queryHeads: 4, headDim: 16 };
const { layers, kvHeads: H, queryHeads: Q, headDim: D } = shape;
const hidden = 24;

function newCache(): KVCache {
  return new KVCache({ ...shape, dtype: "f32", pageSize: 8, maxTokens: 8192, observationWindow: 16 });
}

/** Appends `tokens` random positions to every layer, attending each chunk so the observation window is remembered. */
function run(seq: Sequence, r: () => number, tokens: number, chunk: number): void {
  for (let done = 0; done < tokens; done += chunk) {
    const t = Math.min(chunk, tokens - done);
    for (let l = 0; l < layers; l++) {
      seq.append(l, randn(r, t * H * D), randn(r, t * H * D));
      seq.attend(l, randn(r, t * Q * D, 1.5));
    }
  }
}

/** What addSequence should read: the scores of the context tokens and the oracle, per layer and head. */
function readSample(seq: Sequence, scorer: "snapkv" | "keydiff", window: number) {
  const oracle = Array.from({ length: layers }, (_, l) => seq.oracle(l));
  const scores = Array.from({ length: layers }, (_, l) => seq.scores(l, scorer, { window }).map((s, h) => s.subarray(0, oracle[l][h].length)));
  return { scores, oracle };
}

test("addSequence after a decode loop: a [99][layers][kvHeads] profile of monotone ratios in [0, 1]", () => {
  const r = rng(seed ^ 1);
  using cache = newCache();
  const opts = { layers, kvHeads: H, sink: 4, window: 16 };
  const profiler = new Profiler(opts);
  const manual = new Profiler(opts);
  const contexts = [100, 130, 150];
  for (const ctx of contexts) {
    using seq = cache.createSequence();
    run(seq, r, ctx, 40);
    seq.recordOracle({ outputProjection: Array.from({ length: layers }, () => randn(r, Q * D * hidden, 0.3)), normalize: true });
    run(seq, r, 6, 1);
    manual.addSample({ ...readSample(seq, "snapkv", 16), decodeSteps: 6 });
    profiler.addSequence(seq);
  }
  const profile = profiler.build();
  expect(profile.table).toEqual(manual.build().table);
  expect([profile.grid, profile.layers, profile.kvHeads]).toEqual([99, layers, H]);
  expect(profile.table.length).toBe(99 * layers * H);
  expect(profile.meta.calibration).toEqual({ samples: 3, contextLengths: contexts, decodeSteps: 6 });
  for (let h = 0; h < layers * H; h++) {
    for (let i = 0; i < 99; i++) {
      const p = profile.table[i * layers * H + h];
      expect(p).toBeGreaterThanOrEqual(0);
      expect(p).toBeLessThanOrEqual(1);
      if (i > 0) expect(p).toBeGreaterThanOrEqual(profile.table[(i - 1) * layers * H + h]);
    }
  }
  // Every head holds the same context, so the mean prune is the ratio until the sink and window bind.
  for (let i = 0; i < 50; i++) {
    const row = profile.table.subarray(i * layers * H, (i + 1) * layers * H);
    expect(Math.abs(row.reduce((a, b) => a + b, 0) / row.length - (i + 1) / 100)).toBeLessThan(0.01);
  }
  const rep = profiler.report();
  expect(rep.optimalityGap.every((g) => g >= 0 && g < 1)).toBe(true);
  expect(rep.hullGap.every((g) => g >= 0 && g < 1)).toBe(true);

  // The profile drives compress() on a fresh sequence.
  using seq = cache.createSequence();
  run(seq, r, 200, 50);
  const report = seq.compress({ ratio: 0.6, allocation: "lukv", profile, window: 16 });
  expect(report.total).toBe(Math.round(0.4 * layers * H * 200));
});

test("profiler.recordOracle keeps the scores of the moment, which drifting scorers need", () => {
  const r = rng(seed ^ 2);
  using cache = newCache();
  const opts = { layers, kvHeads: H, sink: 2, window: 8, scorer: "keydiff" as const };
  const profiler = new Profiler(opts);
  const manual = new Profiler(opts);

  using plain = cache.createSequence();
  run(plain, r, 60, 30);
  plain.recordOracle();
  run(plain, r, 3, 1);
  expect(() => profiler.addSequence(plain)).toThrow(
    'scorer "keydiff" ranks the context differently once decoding appends tokens: start recording with profiler.recordOracle(seq, options) instead of seq.recordOracle(options), so the profiler keeps the scores of that moment',
  );
  // knorm and tova alone do not drift; pooled, they do (the pooling stops at the moving window).
  for (const scorer of ["knorm", "tova"] as const) {
    expect(() => new Profiler({ ...opts, scorer }).addSequence(plain)).not.toThrow();
    for (const pooling of ["max", "avg"] as const)
      expect(() => new Profiler({ ...opts, scorer, scorerOptions: { pooling, kernel: 3 } }).addSequence(plain)).toThrow(
        `scorer "${scorer}" with pooling ranks the context differently once decoding appends tokens: start recording with profiler.recordOracle(seq, options) instead of seq.recordOracle(options), so the profiler keeps the scores of that moment`,
      );
  }

  using seq = cache.createSequence();
  run(seq, r, 80, 40);
  const before = Array.from({ length: layers }, (_, l) => seq.scores(l, "keydiff", { window: 8 }));
  profiler.recordOracle(seq, { outputProjection: Array.from({ length: layers }, () => randn(r, Q * D * hidden, 0.3)) });
  run(seq, r, 5, 1);
  const after = readSample(seq, "keydiff", 8);
  // Decoding moved KeyDiff's mean key, so reading the scores now would rank differently.
  expect(after.scores).not.toEqual(before);
  manual.addSample({ scores: before, oracle: after.oracle, decodeSteps: 5 });
  profiler.addSequence(seq);
  expect(profiler.build()).toEqual(manual.build());
});

test("sequences that do not fit the profiler are refused", () => {
  const r = rng(seed ^ 3);
  using cache = newCache();
  using seq = cache.createSequence();
  run(seq, r, 40, 40);
  expect(() => new Profiler({ layers: 3, kvHeads: H, window: 8 }).addSequence(seq)).toThrow(
    "Expected a sequence of 3 layers × 2 KV heads (the profiler's) for seq but received one of 2 × 2",
  );
  const profiler = new Profiler({ layers, kvHeads: H, window: 8 });
  expect(() => profiler.addSequence(seq)).toThrow("the sequence has no oracle: call seq.recordOracle() before decoding");
  expect(() => profiler.addSequence({} as Sequence)).toThrow("Expected a Sequence for seq but received object");
  expect(() => new Profiler({ layers, kvHeads: H, window: 32 }).recordOracle(seq)).toThrow("snapkv needs 32 observation queries");
  expect(profiler.samples).toBe(0);
});

test("addSequence's decode steps count from where the context ended, even when its last tokens were evicted", () => {
  const r = rng(seed + 5);
  const cache = newCache();
  const seq = cache.createSequence();
  for (let l = 0; l < layers; l++) {
    // Head 0's last three keys have the largest norms: knorm (which keeps low norms) evicts them.
    const keys = randn(r, 40 * H * D, 0.1);
    for (let t = 37; t < 40; t++) keys.fill(10, (t * H) * D, (t * H + 1) * D);
    seq.append(l, keys, randn(r, 40 * H * D));
    seq.attend(l, randn(r, 40 * Q * D));
  }
  // No window: the context's last positions are evicted from head 0 before recording starts.
  seq.compress({ ratio: 0.5, scorer: "knorm", sink: 0, window: 0 });
  expect(seq.positions(0, 0).at(-1)).toBeLessThan(37);
  seq.recordOracle();
  run(seq, r, 3, 1);
  const profiler = new Profiler({ layers, kvHeads: H, scorer: "knorm", sink: 0, window: 0, grid: 9 });
  profiler.addSequence(seq);
  expect(profiler.build().meta.calibration?.decodeSteps).toBe(3);
  cache.dispose();
});
