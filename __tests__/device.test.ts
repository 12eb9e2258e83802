// device: "cuda" through the public API, against the CPU backend and the float64 reference.
// In CI the CUDA kernels run in the CPU emulator: `npm run build:emu` makes build-emu/, and this file
// loads it (LUKV_BINARY=emu). On a GPU machine scripts/gpu-check.sh runs it against the real CUDA
// build with LUKV_DEVICE_BINARY=build. Without the emulated build the suite is skipped, unless
// LUKV_REQUIRE_DEVICE_SUITE=1 (set by .ci/run) makes that a failure.
import * as fs from "fs";
import * as path from "path";
import { KVCache, Sequence, DType, backends, createProfile, CompressOptions, QueryStatistics, InternalError, LukvError, OutOfMemoryError } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";
import { referenceAttention, relativeError } from "./helpers/reference";
import { headsOf, lastPositions } from "./helpers/cache";
import { native } from "../ts/native";

const binary = process.env.LUKV_DEVICE_BINARY ?? "emu";
const emuFile = path.resolve(__dirname, "..", "build-emu", "Release", "lukv.node");
const available = binary !== "emu" || fs.existsSync(emuFile);
const required = process.env.LUKV_REQUIRE_DEVICE_SUITE === "1";
const previousBinary = process.env.LUKV_BINARY;
process.env.LUKV_BINARY = binary;
afterAll(() => {
  if (previousBinary === undefined) delete process.env.LUKV_BINARY;
  else process.env.LUKV_BINARY = previousBinary;
});

const seed = testSeed("device");
const tolerance: Record<DType, number> = { f32: 1e-5, f16: 2e-3, bf16: 2e-3 };

type Shape = { layers: number; kvHeads: number; queryHeads: number; headDim: number; pageSize?: number; dtype: DType; maxTokens?: number };

/** The same cache on both devices; every call goes to both. */
class Pair {
  readonly cpu: KVCache;
  readonly cuda: KVCache;
  constructor(shape: Shape) {
    const opts = { pageSize: 16, maxTokens: 8192, threads: 1, ...shape };
    this.cpu = new KVCache({ ...opts, device: "cpu" });
    this.cuda = new KVCache({ ...opts, device: "cuda" });
  }
  dispose(): void {
    this.cpu.dispose();
    this.cuda.dispose();
  }
}

function appendBoth(a: Sequence, b: Sequence, layer: number, tokens: number, r: () => number): void {
  const { kvHeads, headDim } = a.cache.config;
  const k = randn(r, tokens * kvHeads * headDim);
  const v = randn(r, tokens * kvHeads * headDim);
  a.append(layer, k, v);
  b.append(layer, k, v);
}

/** Attends both, checks both against the reference over their own stored rows, and against each other. */
function attendBoth(a: Sequence, b: Sequence, layer: number, rows: number, r: () => number, label: string): void {
  const { queryHeads, headDim, dtype } = a.cache.config;
  const q = randn(r, rows * queryHeads * headDim);
  const outA = a.attend(layer, q);
  const outB = b.attend(layer, q);
  const qpos = lastPositions(b, layer, rows);
  const refB = referenceAttention(headsOf(b, layer), q, qpos, queryHeads, headDim);
  const refA = referenceAttention(headsOf(a, layer), q, qpos, queryHeads, headDim);
  const tol = tolerance[dtype];
  expect({ label, cudaVsReference: relativeError(outB, refB) < tol }).toEqual({ label, cudaVsReference: true });
  expect({ label, cpuVsReference: relativeError(outA, refA) < tol }).toEqual({ label, cpuVsReference: true });
  expect({ label, cudaVsCpu: relativeError(outB, outA) < tol }).toEqual({ label, cudaVsCpu: true });
}

function samePositions(a: Sequence, b: Sequence): boolean {
  const { layers, kvHeads } = a.cache.config;
  for (let l = 0; l < layers; l++)
    for (let h = 0; h < kvHeads; h++) if (Array.from(a.positions(l, h)).join() !== Array.from(b.positions(l, h)).join()) return false;
  return true;
}

/**
 * The kept positions of both devices agree, or differ only among tokens whose CPU scores are equal
 * to within `eps` of each other (a near tie the two devices' float sums may order differently).
 */
function keptAgree(before: { positions: Int32Array; scores: Float32Array }[], a: Sequence, b: Sequence): boolean {
  const { kvHeads } = a.cache.config;
  return before.every(({ positions, scores }, i) => {
    const l = Math.floor(i / kvHeads), h = i % kvHeads;
    const pa = new Set(a.positions(l, h)), pb = new Set(b.positions(l, h));
    const only = [...pa].filter((p) => !pb.has(p)).concat([...pb].filter((p) => !pa.has(p)));
    if (only.length === 0) return true;
    const s = only.map((p) => scores[positions.indexOf(p)]);
    const scale = Math.max(...Array.from(scores, Math.abs), 1e-30);
    return Math.max(...s) - Math.min(...s) <= 1e-4 * scale;
  });
}

(available ? describe : describe.skip)(`device "cuda" (${binary === "emu" ? "emulated on the CPU" : `binary ${binary}`}) against the CPU`, () => {
  test("backends() reports the device and auto picks it", () => {
    const b = backends();
    expect(b.binary.kind).toBe(binary);
    expect(b.cuda.usable).toBe(true);
    expect(b.cuda.reasons).toEqual([]);
    if (binary === "emu") expect(b.cuda.emulated).toBe(true);
    expect(b.auto.device).toBe("cuda");
    const c = new KVCache({ layers: 1, kvHeads: 1, headDim: 64, maxTokens: 64 });
    expect(c.config.device).toBe("cuda");
    const cpu = new KVCache({ layers: 1, kvHeads: 1, headDim: 64, maxTokens: 64, device: "cpu" });
    expect(cpu.config.device).toBe("cpu");
    c.dispose();
    cpu.dispose();
  });

  test("auto takes the CPU where the device refuses the cache; cuda keeps refusing it", () => {
    const r = rng(seed ^ 0x100);
    const auto = new KVCache({ layers: 1, kvHeads: 1, headDim: 100, maxTokens: 64, dtype: "f32" });
    try {
      expect(auto.config.device).toBe("cpu");
      const seq = auto.createSequence();
      seq.append(0, randn(r, 4 * 100), randn(r, 4 * 100));
      expect(seq.attend(0, randn(r, 100)).length).toBe(100);
    } finally {
      auto.dispose();
    }
    expect(() => new KVCache({ layers: 1, kvHeads: 1, headDim: 100, maxTokens: 64, device: "cuda" })).toThrow(
      expect.objectContaining({ name: "InvalidArgumentError", message: expect.stringMatching(/^Expected headDim a multiple of 8/) }),
    );
    // Refused by both: the CPU's error, saying why the device refused first (32 PiB of f32 rows).
    expect(() => new KVCache({ layers: 1, kvHeads: 1, headDim: 4096, dtype: "f32", pageSize: 65536, maxTokens: 2 ** 40 })).toThrow(
      expect.objectContaining({ name: "OutOfPagesError", message: expect.stringMatching(/^could not allocate the page pool .* \(device "auto" tried CUDA first, which refused: Expected headDim/) }),
    );
  });

  const cases: { dtype: DType; group: number; headDim: number }[] = [];
  for (const dtype of ["f32", "f16", "bf16"] as DType[])
    for (const group of [1, 4, 8]) for (const headDim of [64, 128]) cases.push({ dtype, group, headDim });

  test.each(cases)("attention $dtype, GQA $group, headDim $headDim: prefill chunks, decode, after eviction", ({ dtype, group, headDim }) => {
    const r = rng(seed ^ (group * 131 + headDim * 7 + dtype.length));
    const kvHeads = group === 8 ? 1 : 2;
    const pair = new Pair({ layers: 1, kvHeads, queryHeads: kvHeads * group, headDim, dtype });
    try {
      const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
      appendBoth(a, b, 0, 40, r);
      attendBoth(a, b, 0, 8, r, "prefill chunk 1");
      appendBoth(a, b, 0, 30, r);
      attendBoth(a, b, 0, 9, r, "prefill chunk 2");
      for (let i = 0; i < 2; i++) {
        appendBoth(a, b, 0, 1, r);
        attendBoth(a, b, 0, 1, r, `decode ${i}`);
      }
      // Evict with a scorer that is exact on both devices, then prefill again: causal by position.
      const opts: CompressOptions = { ratio: 0.6, scorer: "random", seed: 5, sink: 2, window: 4 };
      expect(Array.from(b.compress(opts).kept)).toEqual(Array.from(a.compress(opts).kept));
      expect(samePositions(a, b)).toBe(true);
      appendBoth(a, b, 0, 6, r);
      attendBoth(a, b, 0, 6, r, "prefill after eviction");
      appendBoth(a, b, 0, 1, r);
      attendBoth(a, b, 0, 1, r, "decode after eviction");
      expect(pair.cuda.usage()).toEqual(pair.cpu.usage());
    } finally {
      pair.dispose();
    }
  });

  const scorers = ["snapkv", "keydiff", "knorm", "tova", "h2o", "streaming", "random"] as const;
  const allocations = ["uniform", "pyramidkv", "adakv", "lukv", "budgets"] as const;
  const shape: Shape = { layers: 2, kvHeads: 2, queryHeads: 4, headDim: 64, dtype: "f16" };
  const heads = shape.layers * shape.kvHeads;
  const table = new Float64Array(99 * heads);
  for (let g = 0; g < 99; g++) for (let i = 0; i < heads; i++) table[g * heads + i] = Math.min(1, ((g + 1) / 100) * (0.5 + i / heads));
  const profile = createProfile({ table, layers: shape.layers, kvHeads: shape.kvHeads });
  // Pooling of the per-token scorers runs on the host after the device's scores: the same there.
  const combos = [
    ...scorers.flatMap((scorer) => allocations.map((allocation) => ({ scorer, allocation, pooling: "default" as const }))),
    { scorer: "keydiff" as const, allocation: "uniform" as const, pooling: "max" as const },
    { scorer: "knorm" as const, allocation: "lukv" as const, pooling: "avg" as const },
    // TOVA observes one query: its pooling stops before the recent window, not before that query.
    { scorer: "tova" as const, allocation: "uniform" as const, pooling: "max" as const },
    { scorer: "tova" as const, allocation: "adakv" as const, pooling: "avg" as const },
  ];

  test.each(combos)("compress $scorer x $allocation, pooling $pooling", ({ scorer, allocation, pooling }) => {
    const r = rng(seed ^ (scorers.indexOf(scorer) * 17 + allocations.indexOf(allocation) * 1009 + (pooling === "default" ? 0 : pooling.length)));
    const pool = pooling === "default" ? {} : { pooling, kernel: 5 };
    const pair = new Pair(shape);
    try {
      const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
      if (scorer === "h2o") {
        a.accumulateAttention();
        b.accumulateAttention();
      }
      for (let l = 0; l < shape.layers; l++) {
        appendBoth(a, b, l, 90 + 10 * l, r);
        attendBoth(a, b, l, 16, r, `observation layer ${l}`);
        appendBoth(a, b, l, 1, r);
        attendBoth(a, b, l, 1, r, `decode layer ${l}`);
      }
      const options: CompressOptions = { scorer, window: 8, sink: 4, seed: 11, ...pool };
      if (allocation === "budgets") {
        const len = a.lengths();
        options.budgets = Int32Array.from(len, (n, i) => Math.max(0, n - 10 - 7 * i));
      } else {
        options.ratio = 0.55;
        options.allocation = allocation;
        if (allocation === "lukv") options.profile = profile;
      }
      const before = [];
      for (let l = 0; l < shape.layers; l++) {
        const sa = a.scores(l, scorer, { window: 8, seed: 11, ...pool }), sb = b.scores(l, scorer, { window: 8, seed: 11, ...pool });
        for (let h = 0; h < shape.kvHeads; h++) {
          expect(relativeError(sb[h], sa[h])).toBeLessThan(1e-3);
          before.push({ positions: a.positions(l, h), scores: sa[h] });
        }
      }
      const ra = a.compress(options);
      const rb = b.compress(options);
      expect(rb.total).toBe(ra.total);
      expect(rb.target).toBe(ra.target);
      expect(keptAgree(before, a, b)).toBe(true);
      if (samePositions(a, b)) {
        expect(Array.from(rb.kept)).toEqual(Array.from(ra.kept));
        expect(rb.pagesFreed).toBe(ra.pagesFreed);
        expect(pair.cuda.usage()).toEqual(pair.cpu.usage());
      }
      for (let l = 0; l < shape.layers; l++) {
        appendBoth(a, b, l, 1, r);
        attendBoth(a, b, l, 1, r, `decode after compress, layer ${l}`);
      }
    } finally {
      pair.dispose();
    }
  });

  const expectedCases: { dtype: DType; group: number; covariance: boolean; valueNorm: boolean }[] = [
    { dtype: "f32", group: 4, covariance: true, valueNorm: true },
    { dtype: "f16", group: 1, covariance: false, valueNorm: true },
    { dtype: "bf16", group: 4, covariance: true, valueNorm: false },
  ];
  test.each(expectedCases)("expected-attention $dtype, GQA $group, covariance $covariance, value norm $valueNorm", ({ dtype, group, covariance, valueNorm }) => {
    const r = rng(seed ^ (group * 7919 + dtype.length * 31 + (covariance ? 1 : 0) + (valueNorm ? 2 : 0)));
    const s: Shape = { layers: 2, kvHeads: 2, queryHeads: 2 * group, headDim: 64, dtype };
    const pair = new Pair(s);
    try {
      const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
      const statistics = new QueryStatistics({ layers: 2, queryHeads: s.queryHeads, headDim: 64, skip: 4, covariance });
      for (let l = 0; l < s.layers; l++) {
        appendBoth(a, b, l, 70 + 20 * l, r);
        statistics.add(l, randn(r, (70 + 20 * l) * s.queryHeads * 64).map((v, i) => v + Math.sin(i)));
      }
      const expectedAttention = { statistics, rope: { theta: 10000 }, futurePositions: 100, valueNorm };
      const before = [];
      for (let l = 0; l < s.layers; l++) {
        const sa = a.scores(l, "expected-attention", { sink: 4, expectedAttention }), sb = b.scores(l, "expected-attention", { sink: 4, expectedAttention });
        for (let h = 0; h < s.kvHeads; h++) {
          expect(relativeError(sb[h], sa[h])).toBeLessThan(1e-4);
          before.push({ positions: a.positions(l, h), scores: sa[h] });
        }
      }
      const options: CompressOptions = { ratio: 0.6, allocation: "adakv", scorer: "expected-attention", sink: 4, window: 1, expectedAttention };
      const ra = a.compress(options), rb = b.compress(options);
      expect(rb.total).toBe(ra.total);
      expect(keptAgree(before, a, b)).toBe(true);
    } finally {
      pair.dispose();
    }
  });

  test("snapkv with window 0 (no observation queries): zero scores and the CPU's eviction", () => {
    const r = rng(seed ^ 0x30);
    const pair = new Pair({ layers: 2, kvHeads: 2, queryHeads: 4, headDim: 16, dtype: "f32" });
    try {
      const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
      for (let l = 0; l < 2; l++) {
        appendBoth(a, b, l, 40, r);
        attendBoth(a, b, l, 8, r, `observation layer ${l}`);
      }
      for (const extra of [{}, { pooling: "max" as const, kernel: 5, groupReduce: "max" as const }])
        for (let l = 0; l < 2; l++) {
          const sa = a.scores(l, "snapkv", { window: 0, ...extra }), sb = b.scores(l, "snapkv", { window: 0, ...extra });
          for (let h = 0; h < 2; h++) {
            expect(Array.from(sa[h])).toEqual(new Array(40).fill(0));
            expect(Array.from(sb[h])).toEqual(Array.from(sa[h]));
          }
        }
      const opts: CompressOptions = { ratio: 0.5, scorer: "snapkv", window: 0, sink: 2 };
      expect(Array.from(b.compress(opts).kept)).toEqual(Array.from(a.compress(opts).kept));
      expect(samePositions(a, b)).toBe(true);
      expect(pair.cuda.usage()).toEqual(pair.cpu.usage());
      appendBoth(a, b, 1, 1, r);
      attendBoth(a, b, 1, 1, r, "decode after compress");
    } finally {
      pair.dispose();
    }
  });

  test("streaming scores count back from the layer's newest position on both backends, heads of unequal newest tokens included", () => {
    const r = rng(seed ^ 0x77);
    const pair = new Pair({ layers: 2, kvHeads: 2, queryHeads: 2, headDim: 8, dtype: "f32" });
    try {
      const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
      for (let l = 0; l < 2; l++) appendBoth(a, b, l, 40, r);
      // knorm keeps other tokens in each head: the heads' newest kept positions differ.
      for (const s of [a, b]) s.compress({ budgets: Int32Array.of(10, 30, 20, 5), scorer: "knorm", sink: 0, window: 0 });
      for (let l = 0; l < 2; l++)
        for (const [device, s] of [["cpu", a], ["cuda", b]] as const) {
          const scores = s.scores(l, "streaming", { window: 0 });
          for (let h = 0; h < 2; h++) expect([device, l, h, Array.from(scores[h])]).toEqual([device, l, h, Array.from(s.positions(l, h), (p) => p - 39)]);
        }
    } finally {
      pair.dispose();
    }
  });

  test("keydiff and knorm over keys too small to square in float32: the CPU's scores, at any scale", () => {
    const r = rng(seed ^ 0x32);
    for (const dtype of ["f32", "bf16"] as const) {
      const pair = new Pair({ layers: 1, kvHeads: 2, queryHeads: 4, headDim: 16, dtype });
      try {
        // Magnitudes from 0.25 to 2.25: scaled by 2^-120 they stay normal float32 (subnormals would
        // round the stored keys themselves, and no scorer could be scale-free then).
        const keys = randn(r, 24 * 2 * 16).map((x) => (x < 0 ? -1 : 1) * (0.25 + Math.min(Math.abs(x), 2)));
        const scored = (seq: Sequence, scorer: "keydiff" | "knorm") => seq.scores(0, scorer, { window: 0 }).map((h) => Array.from(h));
        const base = pair.cpu.createSequence();
        base.append(0, keys, new Float32Array(keys.length));
        // And f32 keys of 2^-133, subnormal (16 bits left), whose norms are subnormal too:
        // keydiff's unit keys come through norms in double (within 1e-5 nonetheless).
        for (const c of dtype === "f32" ? [2 ** -70, 2 ** -120, 2 ** -133] : [2 ** -70, 2 ** -120]) {
          const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
          const tiny = keys.map((x) => x * c); // exact in f32 and bf16 down to 2^-120: c is a power of two
          a.append(0, tiny, new Float32Array(keys.length));
          b.append(0, tiny, new Float32Array(keys.length));
          for (const scorer of c < 2 ** -126 ? (["keydiff"] as const) : (["keydiff", "knorm"] as const)) {
            const unit = scorer === "knorm" ? c : 1; // knorm is −‖k‖, keydiff does not see the scale
            const want = scored(base, scorer);
            for (const [device, got] of [["cpu", scored(a, scorer)], ["cuda", scored(b, scorer)]] as const)
              got.forEach((head, h) =>
                head.forEach((x, t) => expect([dtype, c, scorer, device, h, t, Math.abs(x / unit - want[h][t]) <= 1e-5 * Math.max(1, Math.abs(want[h][t]))]).toEqual([dtype, c, scorer, device, h, t, true])),
              );
          }
          a.dispose();
          b.dispose();
        }
        if (dtype === "f32") {
          // At 2^-143 (6 bits left) the stored keys themselves are far from the unscaled ones: the
          // two backends' scores of them agree.
          const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
          const tiny = keys.map((x) => x * 2 ** -143);
          a.append(0, tiny, new Float32Array(keys.length));
          b.append(0, tiny, new Float32Array(keys.length));
          const cpu = scored(a, "keydiff"), cuda = scored(b, "keydiff");
          cpu.forEach((head, h) => head.forEach((x, t) => expect([h, t, Math.abs(x - cuda[h][t]) <= 1e-5]).toEqual([h, t, true])));
          a.dispose();
          b.dispose();
        }
      } finally {
        pair.dispose();
      }
    }
  });

  test("snapkv and tova with scale 0: uniform attention scores and the CPU's eviction", () => {
    const r = rng(seed ^ 0x31);
    const pair = new Pair({ layers: 1, kvHeads: 2, queryHeads: 4, headDim: 16, dtype: "f32" });
    try {
      const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
      appendBoth(a, b, 0, 40, r);
      attendBoth(a, b, 0, 8, r, "observation");
      for (const scorer of ["snapkv", "tova"] as const) {
        const sa = a.scores(0, scorer, { window: 4, scale: 0 }), sb = b.scores(0, scorer, { window: 4, scale: 0 });
        const before = [];
        for (let h = 0; h < 2; h++) {
          expect(sa[h][0]).toBeGreaterThan(0);
          expect(relativeError(sb[h], sa[h])).toBeLessThan(1e-5);
          before.push({ positions: a.positions(0, h), scores: sa[h] });
        }
        const fa = a.fork(), fb = b.fork();
        const opts: CompressOptions = { ratio: 0.5, scorer, window: 4, scale: 0 };
        const ra = fa.compress(opts), rb = fb.compress(opts);
        expect(rb.total).toBe(ra.total);
        expect(keptAgree(before, fa, fb)).toBe(true);
        fa.dispose();
        fb.dispose();
      }
    } finally {
      pair.dispose();
    }
  });

  // |scale| x log2 e above FLOAT32_MAX, or |q| x |scale| x log2 e above it with keys small enough
  // that every score is moderate: the inputs checkFinite accepts.
  const bigScaleCases = [
    { label: "scale 2.4e38", scale: 2.4e38, q: [5e-20, 5e-20], k: [5e-20, 5e-20] },
    { label: "scale FLOAT32_MAX", scale: 3.4028234663852886e38, q: [5e-20, 5e-20], k: [5e-20, 5e-20] },
    { label: "scale 1e29, |q| 2.4e9 to 3.3e9", scale: 1e29, q: [2.4e9, 3.3e9], k: [1.2e-38, 1.6e-38] },
    // Scores near 1e30: the max's rounding error, left in the exponent, once gave NaN outputs.
    // (Magnitudes drawn from a band, so that the largest score stands out by far more than rounding.)
    { label: "scale 3e38, scores up to 2.4e30", scale: 3e38, q: [5e-4, 1e-3], k: [5e-7, 1e-6] },
    { label: "scale -3.4e38, scores up to 2.7e30", scale: -3.4e38, q: [5e-4, 1e-3], k: [5e-7, 1e-6] },
  ];
  test.each(bigScaleCases)("attention and snapkv scores at $label, where q x scale x log2 e overflows float32", ({ scale, q, k }) => {
    const r = rng(seed ^ 0x32);
    // Magnitudes in [lo, hi], random signs.
    const band = (n: number, [lo, hi]: number[]) => Float32Array.from({ length: n }, () => (r() < 0.5 ? -1 : 1) * (lo + (hi - lo) * r()));
    const s: Shape = { layers: 1, kvHeads: 1, queryHeads: 2, headDim: 8, dtype: "f32" };
    const pair = new Pair(s);
    try {
      const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
      const keys = band(20 * 8, k), values = randn(r, 20 * 8);
      a.append(0, keys, values);
      b.append(0, keys, values);
      const queries = band(6 * 2 * 8, q);
      const outA = a.attend(0, queries, { scale }), outB = b.attend(0, queries, { scale });
      const ref = referenceAttention(headsOf(b, 0), queries, lastPositions(b, 0, 6), 2, 8, scale);
      expect(relativeError(outB, ref)).toBeLessThan(1e-5);
      expect(relativeError(outB, outA)).toBeLessThan(1e-5);
      const sa = a.scores(0, "snapkv", { window: 4, scale }), sb = b.scores(0, "snapkv", { window: 4, scale });
      expect(Math.max(...sa[0])).toBeGreaterThan(0);
      expect(relativeError(sb[0], sa[0])).toBeLessThan(1e-5);
    } finally {
      pair.dispose();
    }
  });

  test("value norms of values near 1e20 and expected attention at scale 1e20: finite, as on the CPU", () => {
    // Squares of 1e20 overflow float32 (the norms are summed again in double), and so does s² of
    // scale 1e20 (the quadratic term is taken as (s/2)·(s·kᵀΣk)).
    const D = 8, T = 10;
    const pair = new Pair({ layers: 1, kvHeads: 1, queryHeads: 1, headDim: D, dtype: "f32" });
    try {
      const k = Float32Array.from({ length: T * D }, (_, i) => ((i * 7) % 5) / 5 - 0.4);
      const results = [pair.cpu, pair.cuda].map((cache) => {
        const big = cache.createSequence(), small = cache.createSequence();
        big.append(0, k, new Float32Array(T * D).fill(1e20));
        big.attend(0, new Float32Array(D).fill(0.5));
        small.append(0, k.map((x) => x * 1e-12), new Float32Array(T * D).fill(1));
        const stats = (covariance: boolean, scaleQ: number) => {
          const st = new QueryStatistics({ layers: 1, queryHeads: 1, headDim: D, skip: 0, covariance });
          st.add(0, Float32Array.from({ length: 4 * D }, (_, i) => (((i * 3) % 7) - 3) * scaleQ));
          return st;
        };
        const ea = (seq: Sequence, covariance: boolean, scaleQ: number, scale: number | undefined, valueNorm: boolean) =>
          Array.from(seq.scores(0, "expected-attention", { sink: 0, window: 1, scale, expectedAttention: { statistics: stats(covariance, scaleQ), rope: { theta: 10000 }, valueNorm } })[0]);
        const out = {
          snapkv: Array.from(big.scores(0, "snapkv", { window: 1, pooling: "none", valueNorm: true })[0]),
          eaValueNorm: ea(big, false, 0.1, undefined, true),
          eaScale: [false, true].map((covariance) => ea(small, covariance, 1e-12, 1e20, false)),
          oracle: [] as number[],
        };
        big.recordOracle();
        big.append(0, new Float32Array(D).fill(0.1), new Float32Array(D).fill(1));
        big.attend(0, new Float32Array(D).fill(0.5));
        out.oracle = Array.from(big.oracle(0)[0]);
        return out;
      });
      for (const [device, r] of [["cpu", results[0]], ["cuda", results[1]]] as const) {
        for (const [name, xs] of [["snapkv", r.snapkv], ["eaValueNorm", r.eaValueNorm], ["oracle", r.oracle]] as const)
          expect([device, name, xs.every((x) => Number.isFinite(x) && x > 1e18)]).toEqual([device, name, true]);
        // |z| stays below 1e-2 here: the softmax is close to uniform.
        for (const xs of r.eaScale) expect([device, xs.every((x) => Math.abs(x - 1 / T) < 1e-2)]).toEqual([device, true]);
      }
      for (const key of ["snapkv", "eaValueNorm", "oracle"] as const) expect([key, relativeError(Float32Array.from(results[1][key]), Float32Array.from(results[0][key])) < 1e-4]).toEqual([key, true]);
    } finally {
      pair.dispose();
    }
  });

  test("compress over more (layer, KV head) pairs than one scoring launch takes (65535)", () => {
    const r = rng(seed ^ 0x33);
    // 2 layers x 33000 heads of 2 tokens, scored in one call: two launches; knorm keeps one token per head.
    const H = 33000, D = 8;
    const s: Shape = { layers: 2, kvHeads: H, queryHeads: H, headDim: D, pageSize: 2, dtype: "f32", maxTokens: 4 * 2 * H };
    const pair = new Pair(s);
    try {
      const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
      // Random rows repeating every 997 heads (a million normal samples take seconds under jest).
      const block = randn(r, 2 * 997 * D), rows = new Float32Array(2 * 2 * H * D);
      for (let i = 0; i < rows.length; i++) rows[i] = block[i % block.length];
      for (let l = 0; l < 2; l++) {
        const k = rows.subarray(l * 2 * H * D, (l + 1) * 2 * H * D);
        a.append(l, k, k);
        b.append(l, k, k);
      }
      const before = [0, 1].flatMap((l) => a.scores(l, "knorm", { window: 0 }).map((scores, h) => ({ positions: a.positions(l, h), scores })));
      const opts: CompressOptions = { ratio: 0.5, scorer: "knorm", sink: 0, window: 0 };
      const ra = a.compress(opts), rb = b.compress(opts);
      expect(ra.total).toBe(2 * H);
      expect(rb.total).toBe(ra.total);
      expect(keptAgree(before, a, b)).toBe(true);
      expect(pair.cuda.usage()).toEqual(pair.cpu.usage());
    } finally {
      pair.dispose();
    }
  });

  test("compressAsync, attendAsync and out on the device", async () => {
    const r = rng(seed ^ 0xa5);
    const pair = new Pair({ layers: 1, kvHeads: 2, queryHeads: 8, headDim: 64, dtype: "bf16" });
    try {
      const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
      appendBoth(a, b, 0, 70, r);
      const q = randn(r, 12 * 8 * 64);
      const outA = a.attend(0, q);
      const out = new Float32Array(q.length);
      expect(await b.attendAsync(0, q, { out })).toBe(out);
      expect(relativeError(out, outA)).toBeLessThan(2e-3);
      const out2 = new Float32Array(q.length);
      expect(b.attend(0, q, { out: out2 })).toBe(out2);
      expect(relativeError(out2, outA)).toBeLessThan(2e-3);
      const opts: CompressOptions = { ratio: 0.5, scorer: "knorm", window: 8 };
      const [ra, rb] = [a.compress(opts), await b.compressAsync(opts)];
      expect(Array.from(rb.kept)).toEqual(Array.from(ra.kept));
      expect(samePositions(a, b)).toBe(true);
    } finally {
      pair.dispose();
    }
  });

  test("a compress that compacts in rounds and a loadSequence of another sequence at the same time", async () => {
    // The device compacts into fresh pages, in rounds sized by the free pages planned up front; a load
    // that took a page between two rounds made the next one fail half done (an untyped error, layer 0
    // evicted, the round's pages leaked).
    const r = rng(seed ^ 0x10ad);
    const D = 256, P = 16;
    const T = [2048, 64, 2048], keep = [2040, 32, 2032];
    const used = T.reduce((a, t) => a + Math.ceil(t / P), 0);
    const spare = Math.ceil(keep[0] / P) + 1; // round 1: layer 0 alone; round 2 needs what it gives back
    const rows = T.map((t) => randn(r, t * D));
    for (let trial = 0; trial < 12; trial++) {
      const cache = new KVCache({ layers: 3, kvHeads: 1, queryHeads: 1, headDim: D, pageSize: P, dtype: "f32", device: "cuda", maxTokens: (used + spare) * P, threads: 1 });
      try {
        const a = cache.createSequence();
        T.forEach((_, l) => a.append(l, rows[l], rows[l]));
        const one = cache.createSequence();
        one.append(0, randn(r, D), randn(r, D));
        const bytes = one.save();
        one.dispose();
        const before = Array.from(a.lengths());
        const compressed = a.compressAsync({ budgets: Int32Array.from(keep), scorer: "streaming", sink: 4, window: 4 }).then(
          (report) => ({ report, error: undefined }),
          (error: Error) => ({ report: undefined, error }),
        );
        await new Promise((done) => setTimeout(done, trial % 3));
        let loaded: Sequence | undefined;
        try {
          loaded = cache.loadSequence(bytes);
        } catch (e) {
          expect((e as Error).name).toBe("OutOfPagesError");
        }
        const { report, error } = await compressed;
        if (error) {
          // Refused as a whole, or not at all.
          expect([trial, error.name]).toEqual([trial, "OutOfPagesError"]);
          expect(Array.from(a.lengths())).toEqual(before);
        } else expect(Array.from(report!.kept)).toEqual(keep);
        a.dispose();
        loaded?.dispose();
        expect([trial, cache.usage().pagesUsed]).toEqual([trial, 0]);
      } finally {
        cache.dispose();
      }
    }
  });

  test("fork and copy-on-write: the parent is unchanged by the fork's appends and eviction", () => {
    const r = rng(seed ^ 0xf0);
    const pair = new Pair({ layers: 1, kvHeads: 2, queryHeads: 4, headDim: 64, dtype: "f16", maxTokens: 2 * 16 * 12 });
    try {
      const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
      appendBoth(a, b, 0, 50, r); // a partly filled last page, shared after the fork
      const fa = a.fork(), fb = b.fork();
      expect(pair.cuda.usage()).toEqual(pair.cpu.usage());
      const parentKeys = Array.from({ length: 2 }, (_, h) => b.keys(0, h));
      appendBoth(fa, fb, 0, 3, r);
      appendBoth(a, b, 0, 2, r);
      expect(pair.cuda.usage()).toEqual(pair.cpu.usage());
      const opts: CompressOptions = { ratio: 0.5, scorer: "streaming", window: 4 };
      expect(Array.from(fb.compress(opts).kept)).toEqual(Array.from(fa.compress(opts).kept));
      expect(pair.cuda.usage()).toEqual(pair.cpu.usage());
      for (let h = 0; h < 2; h++) expect(Array.from(b.keys(0, h).subarray(0, 50 * 64))).toEqual(Array.from(parentKeys[h]));
      attendBoth(a, b, 0, 1, r, "parent after the fork's eviction");
      attendBoth(fa, fb, 0, 1, r, "fork after its eviction");
      // A pool too small for what the fork asks: OutOfPagesError, and nothing changed.
      const lengths = Array.from(fb.lengths());
      expect(() => appendBoth(fa, fb, 0, 400, r)).toThrow(expect.objectContaining({ name: "OutOfPagesError" }));
      expect(Array.from(fb.lengths())).toEqual(lengths);
      fb.dispose();
      fa.dispose();
      expect(pair.cuda.usage()).toEqual(pair.cpu.usage());
      // Device memory is not given back page by page: trim() gives back nothing and changes nothing.
      expect(pair.cuda.trim()).toBe(0);
      expect(pair.cuda.usage()).toEqual(pair.cpu.usage());
      attendBoth(a, b, 0, 1, r, "parent after trim()");
    } finally {
      pair.dispose();
    }
  });

  test("oracle and H2O mass accumulate on the device as on the CPU", () => {
    const r = rng(seed ^ 0x0c);
    const s: Shape = { layers: 2, kvHeads: 2, queryHeads: 8, headDim: 64, dtype: "f32" };
    const pair = new Pair(s);
    try {
      const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
      for (let l = 0; l < 2; l++) {
        appendBoth(a, b, l, 60, r);
        attendBoth(a, b, l, 8, r, "context");
      }
      const wo = Array.from({ length: 2 }, () => randn(r, 8 * 64 * 24, 0.1));
      a.recordOracle({ outputProjection: wo, normalize: true });
      b.recordOracle({ outputProjection: wo, normalize: true });
      a.accumulateAttention();
      b.accumulateAttention();
      for (let step = 0; step < 3; step++)
        for (let l = 0; l < 2; l++) {
          appendBoth(a, b, l, 1, r);
          attendBoth(a, b, l, 1, r, `decode ${step}`);
        }
      for (let l = 0; l < 2; l++) {
        const oa = a.oracle(l), ob = b.oracle(l);
        const ma = a.scores(l, "h2o"), mb = b.scores(l, "h2o");
        for (let h = 0; h < 2; h++) {
          expect(ob[h].length).toBe(60);
          expect(relativeError(ob[h], oa[h])).toBeLessThan(1e-4);
          expect(relativeError(mb[h], ma[h])).toBeLessThan(1e-4);
          expect(Math.max(...ob[h])).toBeGreaterThan(0);
        }
      }
    } finally {
      pair.dispose();
    }
  });

  test.each(["f32", "f16", "bf16"] as DType[])("saved sequences (%s): the same bytes from both devices, loaded across devices and page sizes bit for bit", (dtype) => {
    const r = rng(seed ^ 0x5a ^ dtype.length);
    const s: Shape = { layers: 2, kvHeads: 2, queryHeads: 8, headDim: 64, dtype };
    const pair = new Pair(s);
    const others: KVCache[] = [];
    try {
      const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
      for (let l = 0; l < 2; l++) {
        appendBoth(a, b, l, 45, r);
        attendBoth(a, b, l, 4, r, "context");
      }
      // Streaming eviction keeps the same tokens on both devices; PyramidKV makes the layers uneven.
      const opts: CompressOptions = { ratio: 0.5, scorer: "streaming", allocation: "pyramidkv", window: 4 };
      expect(Array.from(b.compress(opts).kept)).toEqual(Array.from(a.compress(opts).kept));
      for (let l = 0; l < 2; l++) appendBoth(a, b, l, 3, r);
      const sa = a.save(), sb = b.save();
      expect(sb.equals(sa)).toBe(true);
      // Into the other device, at other page sizes, and back out: the same bytes.
      const cuda8 = new KVCache({ ...s, pageSize: 8, maxTokens: 4096, threads: 1, device: "cuda" });
      const cpu32 = new KVCache({ ...s, pageSize: 32, maxTokens: 4096, threads: 1, device: "cpu" });
      others.push(cuda8, cpu32);
      const onCuda = cuda8.loadSequence(sa), onCpu = cpu32.loadSequence(sb);
      expect(onCuda.save().equals(sa)).toBe(true);
      expect(onCpu.save().equals(sa)).toBe(true);
      expect(samePositions(onCuda, a)).toBe(true);
      // At the same page size the device attends over the restored copy exactly as over the original.
      const copy = pair.cuda.loadSequence(sa);
      for (let l = 0; l < 2; l++) {
        const q = randn(r, 2 * 8 * 64);
        expect(Buffer.from(copy.attend(l, q).buffer).equals(Buffer.from(b.attend(l, q).buffer))).toBe(true);
        attendBoth(a, onCuda, l, 2, r, `restored on the device, layer ${l}`);
      }
      // Rejected input and a full pool leave the device pool as it was.
      const before = pair.cuda.usage();
      expect(() => pair.cuda.loadSequence(sa.subarray(0, sa.length - 9))).toThrow(expect.objectContaining({ name: "BadSequenceFileError" }));
      const full = new KVCache({ ...s, pageSize: 16, maxTokens: 16 * 4, threads: 1, device: "cuda" });
      others.push(full);
      expect(() => full.loadSequence(sa)).toThrow(expect.objectContaining({ name: "OutOfPagesError" }));
      expect(full.usage().pagesUsed).toBe(0);
      expect(pair.cuda.usage()).toEqual(before);
    } finally {
      pair.dispose();
      for (const c of others) c.dispose();
    }
  });

  const batchCases: { dtype: DType; group: number }[] = [];
  for (const dtype of ["f32", "f16", "bf16"] as DType[]) for (const group of [1, 4]) batchCases.push({ dtype, group });

  test.each(batchCases)("batched steps $dtype, GQA $group: appendBatch, then attendBatch of decode rows and prefill chunks over mixed lengths, a fork, evicted heads", ({ dtype, group }) => {
    const r = rng(seed ^ (0xba7c + group * 17 + dtype.length));
    const kvHeads = 2, headDim = 64;
    const pair = new Pair({ layers: 1, kvHeads, queryHeads: kvHeads * group, headDim, dtype });
    try {
      const both = [pair.cpu, pair.cuda].map((cache) => {
        const seqs = [1, 9, 70, 300].map(() => cache.createSequence());
        return { cache, seqs };
      });
      const lengths = [1, 9, 70, 300];
      const kv = lengths.map((n) => [randn(r, n * kvHeads * headDim), randn(r, n * kvHeads * headDim)]);
      for (const { cache, seqs } of both) {
        cache.appendBatch(0, seqs.map((sequence, i) => ({ sequence, keys: kv[i][0], values: kv[i][1] })));
        seqs.push(seqs[3].fork());
      }
      const tokens = [1, 5, 1, 5, 1];
      const more = tokens.map((n) => [randn(r, n * kvHeads * headDim), randn(r, n * kvHeads * headDim)]);
      const queries = tokens.map((n) => randn(r, n * kvHeads * group * headDim));
      const outs = both.map(({ cache, seqs }) => {
        cache.appendBatch(0, seqs.map((sequence, i) => ({ sequence, keys: more[i][0], values: more[i][1] })));
        // Head 0 keeps only the newest token: the earlier rows of the chunk see nothing there.
        seqs[1].compress({ budgets: Int32Array.from([1, 3]), scorer: "knorm", sink: 0, window: 1 });
        expect(Array.from(seqs[1].lengths())).toEqual([1, 3]);
        return cache.attendBatch(0, seqs.map((sequence, i) => ({ sequence, queries: queries[i] })));
      });
      const [cpuSeqs, cudaSeqs] = both.map((x) => x.seqs);
      const tol = tolerance[dtype];
      cudaSeqs.forEach((b, i) => {
        const single = b.attend(0, queries[i]);
        const ref = referenceAttention(headsOf(b, 0), queries[i], lastPositions(b, 0, tokens[i]), kvHeads * group, headDim);
        // One launch splits its heads by the size of the whole batch, so the token ranges (and the
        // float rounding of their merge) can differ from a launch of one sequence.
        expect({ item: i, vsSingle: relativeError(outs[1][i], single) < 1e-5 }).toEqual({ item: i, vsSingle: true });
        expect({ item: i, vsReference: relativeError(outs[1][i], ref) < tol }).toEqual({ item: i, vsReference: true });
        expect({ item: i, vsCpu: relativeError(outs[1][i], outs[0][i]) < tol }).toEqual({ item: i, vsCpu: true });
        expect(Array.from(b.keys(0, 1))).toEqual(Array.from(cpuSeqs[i].keys(0, 1)));
      });
      expect(pair.cuda.usage()).toEqual(pair.cpu.usage());
    } finally {
      pair.dispose();
    }
  });

  // The emulated device fails on request (the emulated build's emulatedFailure): a GPU's failed allocation or launch.
  const emulated = binary === "emu" ? test : test.skip;
  function failing<T>(what: string, fn: () => T): T {
    const addon = native();
    if (!addon.emulatedFailure) throw new Error("the loaded binary is not the emulated build");
    addon.emulatedFailure(what);
    try {
      return fn();
    } finally {
      addon.emulatedFailure("");
    }
  }
  /** Everything a failed call must leave as it was: counts, positions and stored rows of every head. */
  function stateOf(seq: Sequence): unknown {
    const { layers, kvHeads } = seq.cache.config;
    const heads = [];
    for (let l = 0; l < layers; l++)
      for (let h = 0; h < kvHeads; h++) heads.push([Array.from(seq.positions(l, h)), Array.from(seq.keys(l, h)), Array.from(seq.values(l, h))]);
    return { lengths: Array.from(seq.lengths()), appended: Array.from({ length: layers }, (_, l) => seq.appended(l)), heads };
  }

  emulated("a device failure in append or appendBatch appends nothing: counts, pages and rows as before, the shared page of a fork kept", () => {
    const r = rng(seed ^ 0xfa);
    const pair = new Pair({ layers: 2, kvHeads: 2, queryHeads: 4, headDim: 16, dtype: "f16", maxTokens: 2 * 2 * 16 * 40 });
    try {
      const a = pair.cpu.createSequence(), b = pair.cuda.createSequence();
      // With the H2O mass accumulated: an undone append shortens it with the rows.
      a.accumulateAttention(true);
      b.accumulateAttention(true);
      for (const l of [0, 1]) appendBoth(a, b, l, 50, r); // a partly filled last page, shared after the fork
      attendBoth(a, b, 0, 4, r, "before the fork");
      const fa = a.fork(), fb = b.fork();
      const other = pair.cuda.createSequence();
      const states = () => [stateOf(b), stateOf(fb), stateOf(other), pair.cuda.usage()];
      const before = states();
      const rows = (n: number) => [randn(r, n * 2 * 16), randn(r, n * 2 * 16)] as const;
      // The fork's append copies the shared last page first (copyPages), then writes its rows (append);
      // 400 rows grow the device's staging buffers (alloc).
      for (const [op, n] of [["copyPages", 3], ["append", 3], ["alloc", 400]] as const) {
        const [k, v] = rows(n);
        let err: unknown;
        failing(op, () => {
          try {
            fb.append(0, k, v);
          } catch (e) {
            err = e;
          }
        });
        expect([op, (err as Error)?.message]).toEqual([op, expect.stringContaining(`the emulated device failed ${op} (${op})`)]);
        expect([op, states()]).toEqual([op, before]);
      }
      // A batch of a fork, its parent and a new sequence: all or nothing.
      for (const [op, n] of [["copyPages", 5], ["append", 5], ["alloc", 200]] as const) {
        const batch = [fb, b, other].map((seq) => {
          const [keys, values] = rows(n);
          return { sequence: seq, keys, values };
        });
        expect(() => failing(op, () => pair.cuda.appendBatch(1, batch))).toThrow(`the emulated device failed ${op}`);
        expect([op, states()]).toEqual([op, before]);
      }
      // The same appends then succeed, on both devices alike: nothing of the failed ones is left.
      other.dispose();
      appendBoth(fa, fb, 0, 3, r);
      appendBoth(a, b, 0, 2, r);
      expect(pair.cuda.usage()).toEqual(pair.cpu.usage());
      attendBoth(fa, fb, 0, 1, r, "fork after failed appends");
      attendBoth(a, b, 0, 1, r, "parent after the fork's failed appends");
      // The mass kept in step with the rows: H2O evicts the same tokens on both devices.
      const h2o: CompressOptions = { ratio: 0.5, scorer: "h2o", sink: 2, window: 4 };
      expect(Array.from(fb.compress(h2o).kept)).toEqual(Array.from(fa.compress(h2o).kept));
      expect(samePositions(fa, fb)).toBe(true);
      fb.dispose();
      b.dispose();
      expect(pair.cuda.usage().pagesUsed).toBe(0);
    } finally {
      pair.dispose();
    }
  });

  emulated("a device failure in compress: nothing changes in one round; in rounds, the pages of the failed round go back and the error says how many heads were compacted", () => {
    const cache = new KVCache({ layers: 1, kvHeads: 2, headDim: 8, pageSize: 16, maxTokens: 16384, dtype: "f16", device: "cuda", threads: 1 });
    try {
      const x = Float32Array.from({ length: 6000 * 2 * 8 }, (_, i) => Math.sin(i * 0.37));
      const opts: CompressOptions = { ratio: 0.5, scorer: "knorm", sink: 4, window: 8 };
      const run = (seq: Sequence, what: string) => {
        let err: unknown;
        failing(what, () => {
          try {
            seq.compress(opts);
          } catch (e) {
            err = e;
          }
        });
        return err as Error | undefined;
      };
      // One round (the pool holds both heads' kept rows beside the old ones): nothing changes.
      const one = cache.createSequence();
      one.append(0, x.subarray(0, 100 * 16), x.subarray(0, 100 * 16));
      const before = [stateOf(one), cache.usage()];
      expect(run(one, "compact")?.message).toContain("the emulated device failed compact");
      expect([stateOf(one), cache.usage()]).toEqual(before);
      one.dispose();
      // 6000 tokens in each of two heads fill 750 of the 1024 pages: the kept rows of one head at a time.
      const seq = cache.createSequence();
      seq.append(0, x, x);
      const first = [stateOf(seq), cache.usage()];
      expect(run(seq, "compact")?.message).toContain("the emulated device failed compact");
      expect([stateOf(seq), cache.usage()]).toEqual(first);
      // The second round fails (out of device memory, as a GPU's workspace allocation would): the
      // first head stays compressed, the second as it was, no page lost. Not an OutOfPagesError, which
      // autoCompress and the pressure policy take for "nothing changed".
      const err = run(seq, "compact:2/oom");
      expect([err?.name, (err as { code?: string })?.code, err?.message]).toEqual([
        "InternalError",
        "ERR_LUKV_INTERNAL",
        "compress failed after compacting 1 of the 2 heads it evicts from, in rounds (the pool could not hold them all at once): " +
          "those heads keep their compressed tokens (seq.lengths() shows which), the others are unchanged: the emulated device failed compact (compact:2/oom)",
      ]);
      expect(Array.from(seq.lengths())).toEqual([3000, 6000]);
      expect(cache.usage().pagesUsed).toBe(Math.ceil(3000 / 16) + Math.ceil(6000 / 16));
      // The sequence stays usable, and disposing it gives every page back.
      expect(seq.compress(opts).total).toBe(4500); // half of the 9,000 it holds now
      seq.dispose();
      expect(cache.usage().pagesUsed).toBe(0);
      // The same through autoCompress: the append says so and appends nothing (an OutOfPagesError let it go ahead in silence).
      const auto = cache.createSequence();
      auto.append(0, x, x);
      auto.autoCompress({ scorer: "knorm", sink: 4, window: 8, maxTokens: 3000, every: 1 });
      const row = Float32Array.from({ length: 2 * 8 }, (_, i) => Math.cos(i));
      auto.append(0, row, row); // due at the next append
      let autoErr: Error | undefined;
      failing("compact:2/oom", () => {
        try {
          auto.append(0, row, row);
        } catch (e) {
          autoErr = e as Error;
        }
      });
      expect(autoErr?.message).toContain("compress failed after compacting 1 of the 2 heads");
      expect([Array.from(auto.lengths()), auto.appended(0), auto.autoCompressions]).toEqual([[3000, 6001], 6001, 0]);
      auto.dispose();
      expect(cache.usage().pagesUsed).toBe(0);
    } finally {
      cache.dispose();
    }
  });

  emulated("device failures are typed: out of device memory is OutOfMemoryError, which the pressure policy leaves alone (it evicted other sequences for it), a failed launch InternalError", async () => {
    const rows = (n: number, s: number) => Float32Array.from({ length: n * 16 }, (_, i) => Math.sin(i * 0.37 * s));
    const cache = new KVCache({ layers: 1, kvHeads: 2, queryHeads: 2, headDim: 8, pageSize: 4, maxTokens: 4096, dtype: "f32", device: "cuda" });
    try {
      const other = cache.createSequence();
      other.append(0, rows(64, 1), rows(64, 2));
      other.scores(0, "knorm", { window: 2 }); // its scoring buffers allocated now, not inside the pressure policy
      cache.onPressure({ evict: "largest", scorer: "knorm", window: 2, ratio: 0.5 });
      const seq = cache.createSequence();
      // 200 rows grow the device's staging buffers: that allocation fails, with every page free that the append needs.
      let err: unknown;
      failing("alloc", () => {
        try {
          seq.append(0, rows(200, 3), rows(200, 4));
        } catch (e) {
          err = e;
        }
      });
      expect(err).toBeInstanceOf(OutOfMemoryError);
      expect(err).toMatchObject({ name: "OutOfMemoryError", code: "ERR_LUKV_OUT_OF_MEMORY" });
      expect([Array.from(other.lengths()), Array.from(seq.lengths()), cache.pressureStats.events]).toEqual([[64, 64], [0, 0], 0]);
      // A failed launch, sync and async.
      const q = new Float32Array(2 * 8).fill(0.5);
      let launch: unknown;
      failing("attend", () => {
        try {
          other.attend(0, q);
        } catch (e) {
          launch = e;
        }
      });
      expect(launch).toBeInstanceOf(InternalError);
      expect(launch).toBeInstanceOf(LukvError);
      expect((launch as Error).message).toBe("the emulated device failed attend (attend)");
      native().emulatedFailure!("attend");
      try {
        await expect(other.attendAsync(0, q)).rejects.toThrow(InternalError);
      } finally {
        native().emulatedFailure!("");
      }
      expect(other.attend(0, q).every(Number.isFinite)).toBe(true);
      // A misspelt request is refused rather than failing nothing.
      for (const what of ["compact/OOM", "compacts", "attend:x", "alloc:2/oom2"])
        expect(() => native().emulatedFailure!(what)).toThrow(expect.objectContaining({ code: "ERR_LUKV_INVALID_ARGUMENT", message: expect.stringContaining(`but received "${what}"`) }));
    } finally {
      cache.dispose();
    }
  });

  emulated("a pressure compression of another sequence that fails after earlier rounds: the append says it was the pressure policy's", () => {
    const rows = (n: number, s: number) => Float32Array.from({ length: n * 16 }, (_, i) => Math.sin(i * 0.37 * s));
    const cache = new KVCache({ layers: 2, kvHeads: 2, queryHeads: 2, headDim: 8, pageSize: 4, maxTokens: 4 * 4 * 30, dtype: "f32", device: "cuda" });
    try {
      const victim = cache.createSequence();
      for (let l = 0; l < 2; l++) victim.append(l, rows(40, 1), rows(40, 2)); // 40 pages
      const filler = cache.createSequence();
      filler.append(0, rows(134, 3), rows(134, 4)); // 68 pages: 12 of the 120 left
      cache.onPressure({ evict: "largest", scorer: "knorm", window: 2, ratio: 0.5 });
      const requester = cache.createSequence();
      let err: Error | undefined;
      failing("compact:2", () => {
        try {
          requester.append(1, rows(28, 5), rows(28, 6)); // 14 pages: the victim is compressed, a head or two per round
        } catch (e) {
          err = e as Error;
        }
      });
      expect(err).toBeInstanceOf(InternalError);
      // What the failed compression evicted before it failed is counted and said.
      const evicted = 160 - victim.lengths().reduce((a, b) => a + b, 0);
      expect(evicted).toBeGreaterThan(0);
      expect(err?.message).toMatch(
        new RegExp(`^The pressure policy's compression of another sequence failed after evicting ${evicted} of its 160 tokens \\(counted in pressureStats; the listener is not called\\): compress failed after compacting \\d+ of the \\d+ heads`),
      );
      expect(cache.pressureStats).toEqual({ events: 1, tokensEvicted: evicted, pagesFreed: 108 - cache.usage().pagesUsed });
      expect(Array.from(requester.lengths())).toEqual([0, 0, 0, 0]);
    } finally {
      cache.dispose();
    }
  });

  test("autoCompress and onPressure refuse a SnapKV or TOVA pooling kernel wider than the device's 129 when given (every due compression failed, and with it every append)", () => {
    const pair = new Pair({ layers: 1, kvHeads: 1, queryHeads: 1, headDim: 8, dtype: "f32" });
    try {
      const message = (scorer: string) =>
        `Expected an odd number between 1 and 129 for ${scorer}'s pooling on device "cuda" (the CPU takes up to 1025) for kernel but received 131 of type number`;
      for (const scorer of ["snapkv", "tova"] as const) {
        const seq = pair.cuda.createSequence();
        expect(() => seq.autoCompress({ maxTokens: 16, every: 1, scorer, window: 1, kernel: 131, pooling: "max" })).toThrow(message(scorer));
        expect(() => pair.cuda.onPressure({ evict: "largest", scorer, window: 1, kernel: 131, pooling: "max" })).toThrow(message(scorer));
        // Within the device's limit, without pooling, another scorer's pooling (pooled on the host), or on the CPU: taken.
        seq.autoCompress({ maxTokens: 16, every: 1, scorer, window: 1, kernel: 129, pooling: "max" });
        seq.autoCompress({ maxTokens: 16, every: 1, scorer, window: 1, kernel: 131, pooling: "none" });
        pair.cuda.onPressure({ evict: "largest", scorer, window: 1, kernel: 129, pooling: "max" });
        pair.cpu.createSequence().autoCompress({ maxTokens: 16, every: 1, scorer, window: 1, kernel: 131, pooling: "max" });
        pair.cpu.onPressure({ evict: "largest", scorer, window: 1, kernel: 131, pooling: "max" });
      }
      pair.cuda.createSequence().autoCompress({ maxTokens: 16, every: 1, scorer: "knorm", kernel: 131, pooling: "max" });
    } finally {
      pair.dispose();
    }
  });

  test("errors: a pool larger than the device, a head dim the kernels cannot take, use after dispose", () => {
    let err: unknown;
    try {
      new KVCache({ layers: 1, kvHeads: 1, headDim: 64, pageSize: 65536, maxTokens: 2 ** 40, dtype: "f32", device: "cuda" });
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ name: "OutOfPagesError" });
    expect((err as Error).message).toMatch(/^the device page pool needs 562949953421312 bytes but the device has \d+ bytes free/);
    expect(() => new KVCache({ layers: 1, kvHeads: 1, headDim: 12, device: "cuda" })).toThrow(
      "Expected headDim a multiple of 8 between 8 and 256 for the CUDA backend (rows are read as 16-byte vectors) but received 12",
    );
    const c = new KVCache({ layers: 1, kvHeads: 1, headDim: 64, maxTokens: 64, device: "cuda" });
    const seq = c.createSequence();
    c.dispose();
    expect(() => seq.attend(0, new Float32Array(64))).toThrow(expect.objectContaining({ name: "DisposedError" }));
    expect(() => c.usage()).toThrow(expect.objectContaining({ name: "DisposedError" }));
  });
});

(available ? describe.skip : describe)("device suite prerequisites", () => {
  test("the emulated build exists (npm run build:emu)", () => {
    // eslint-disable-next-line no-console
    console.log(`device suite skipped: ${emuFile} is missing; build it with npm run build:emu`);
    expect(required ? "missing" : "optional").toBe("optional");
  });
});
