// Attention never returns a silently wrong number: NaN and infinity in keys, values and queries are
// refused naming the tensor and the first bad index, f16/bf16 overflow on append is refused, scores
// that float32 could not hold are refused, and every SIMD level gives the same answer.
import { KVCache, QueryStatistics, backends, roundTo } from "../ts";
import { headsOf, lastPositions } from "./helpers/cache";
import { randn, rng, testSeed } from "./helpers/random";
import { referenceAttention, relativeError } from "./helpers/reference";
import { caught } from "./helpers/caught";

const seed = testSeed("numbers");
const levels: string[] = backends().cpu.simdSupported;
const shape = { layers: 2, kvHeads: 2, queryHeads: 4, headDim: 4, pageSize: 4, maxTokens: 256, threads: 1 };
const row = shape.kvHeads * shape.headDim;
const qrow = shape.queryHeads * shape.headDim;

function expectInvalid(fn: () => unknown, message: string | RegExp): void {
  const e = caught(fn);
  expect(e.name).toBe("InvalidArgumentError");
  expect(e.code).toBe("ERR_LUKV_INVALID_ARGUMENT");
  if (typeof message === "string") expect(e.message).toBe(message);
  else expect(e.message).toMatch(message);
}

describe.each(levels)("simd %s", (simd) => {
  // Appends convert f32 rows to f16/bf16 with the kernel table's conversion (the hardware one on
  // x86): it must store the library's rounding (roundTo: nearest, ties to even) bit for bit, across
  // the exponent range, at ties, in the subnormals, near overflow, and in a row's last partial vector.
  test.each(["f16", "bf16"] as const)("appends store the %s rounding bit for bit (roundTo)", (dtype) => {
    const r = rng(seed + (dtype === "f16" ? 21 : 22));
    const headDim = 20, kvHeads = 2, tokens = 96;
    const cache = new KVCache({ layers: 1, kvHeads, queryHeads: kvHeads, headDim, pageSize: 16, maxTokens: 2 * kvHeads * tokens, dtype, simd: simd as never, checkFinite: false });
    try {
      const n = tokens * kvHeads * headDim;
      const x = new Float32Array(n);
      const edges = dtype === "f16"
        ? [65504, 65519.99, 65520, 1e5, 2 ** -24, 2 ** -25, 3 * 2 ** -26, 2 ** -14, 2 ** -14 - 2 ** -25, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 0, -0, Infinity]
        : [3.3895313892515355e38, 3.4e38, 2 ** -133, 2 ** -127, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 0, -0, Infinity];
      for (let i = 0; i < n; i++) {
        const u = r();
        const v = u < 0.15 ? edges[Math.floor(r() * edges.length)]
          : u < 0.3 ? (1 + Math.floor(r() * 1024) / 1024 + 2 ** -11) * 2 ** Math.floor(r() * 30 - 15) // f16 ties
          : (r() * 2 - 1) * 2 ** Math.floor(r() * (dtype === "f16" ? 48 : 200) - (dtype === "f16" ? 30 : 100));
        x[i] = r() < 0.5 ? -v : v;
      }
      const seq = cache.createSequence();
      seq.append(0, x, x.map((v) => -v));
      const expected = roundTo(x, dtype);
      for (let h = 0; h < kvHeads; h++) {
        const keys = seq.keys(0, h), values = seq.values(0, h);
        for (let t = 0; t < tokens; t++)
          for (let d = 0; d < headDim; d++) {
            const want = expected[(t * kvHeads + h) * headDim + d];
            const at = t * headDim + d;
            if (!Object.is(keys[at], want) || !Object.is(values[at], -want))
              throw new Error(`${dtype} ${simd}: token ${t}, head ${h}, element ${d}: stored ${keys[at]} / ${values[at]} for ${x[(t * kvHeads + h) * headDim + d]}, roundTo gives ${want}`);
          }
      }
    } finally {
      cache.dispose();
    }
  });

  test("NaN and infinity in keys, values and queries are refused with the first bad index; nothing changes", () => {
    const r = rng(seed);
    const cache = new KVCache({ ...shape, dtype: "f32", simd: simd as never });
    try {
      const seq = cache.createSequence();
      seq.append(0, randn(r, 3 * row), randn(r, 3 * row));
      const k = randn(r, 2 * row);
      const v = randn(r, 2 * row);
      k[13] = NaN;
      expectInvalid(() => seq.append(0, k, v), "Expected finite numbers for keys but received NaN at index 13 (token 1, head 1, element 1)");
      k[13] = 0;
      v[2] = -Infinity;
      expectInvalid(() => seq.append(0, k, v), "Expected finite numbers for values but received -Infinity at index 2 (token 0, head 0, element 2)");
      // Both bad (keys and values are scanned in one call): the keys are named
      k[13] = NaN;
      expectInvalid(() => seq.append(0, k, v), "Expected finite numbers for keys but received NaN at index 13 (token 1, head 1, element 1)");
      k[13] = 0;
      expect(Array.from(seq.lengths())).toEqual([3, 3, 0, 0]);
      const q = randn(r, qrow);
      const before = seq.attend(0, q);
      const bad = q.slice();
      bad[7] = NaN;
      expectInvalid(() => seq.attend(0, bad), "Expected finite numbers for queries but received NaN at index 7 (token 0, head 1, element 3)");
      bad[7] = Infinity;
      expectInvalid(() => seq.attend(0, bad), "Expected finite numbers for queries but received Infinity at index 7 (token 0, head 1, element 3)");
      expect(seq.attend(0, q)).toEqual(before);
    } finally {
      cache.dispose();
    }
  });

  test("a key of 1e19 and a query of 1e19 with scale 1: the score would overflow float32, so attend refuses", async () => {
    const cache = new KVCache({ ...shape, dtype: "f32", simd: simd as never });
    try {
      const seq = cache.createSequence();
      seq.append(0, new Float32Array(row).fill(1e19), new Float32Array(row).fill(1));
      const q = new Float32Array(qrow).fill(1e19);
      const message = /^Expected queries whose scores stay within float32 \(headDim × max\|q\| × max\|k\| × max\(1, \|scale\|\) at most 2\^120\) for queries but received max\|q\| 1e\+19 against keys of layer 0 up to 1e\+19 \(headDim 4, scale 1\)$/;
      expectInvalid(() => seq.attend(0, q, { scale: 1 }), message);
      await expect(seq.attendAsync(0, q, { scale: 1 })).rejects.toMatchObject({ name: "InvalidArgumentError", message: expect.stringMatching(message) });
      expectInvalid(() => seq.compress({ ratio: 0.5, scorer: "knorm" }), /^Expected keys whose squared norms stay within float32/);
    } finally {
      cache.dispose();
    }
  });

  test("queries that overflow once scaled are refused, however small the keys", () => {
    const cache = new KVCache({ ...shape, headDim: 2, queryHeads: 2, dtype: "f32", simd: simd as never });
    try {
      const seq = cache.createSequence();
      // Zero keys: every score is 0 whatever q is, but q × scale (the kernels' first step) is not finite.
      seq.append(0, new Float32Array(2 * 4), Float32Array.from([1, 2, 1, 2, 3, 4, 3, 4]));
      const q = new Float32Array(4).fill(1e38);
      const message = "Expected queries whose scaled values stay within float32 (max|q| × |scale| at most 3.4e38) for queries but received max|q| 1e+38 with scale 10";
      expectInvalid(() => seq.attend(0, q, { scale: 10 }), message);
      expectInvalid(() => cache.attendBatch(0, [{ sequence: seq, queries: q }], { scale: 10 }), message.replace(/queries/g, "items[0].queries"));
      expect(Array.from(seq.attend(0, q, { scale: 1e-30 }))).toEqual([2, 3, 2, 3]);
      // The remembered queries against the scale a scorer is given.
      expectInvalid(() => seq.scores(0, "snapkv", { window: 1, scale: 10 }), /whose scaled values stay within float32 \(max\|q\| × \|scale\| at most 3\.4e38\)/);
    } finally {
      cache.dispose();
    }
  });

  test("scores near 2^27 and values at the bound: the softmax reference's slack holds (no overflow)", () => {
    // With m in [2^27, 2^28) the float32 sum m + 8 can round to m + 16: a block 16 above the
    // reference then weighed e^16, and tokens × max|v| = 2^112 overflowed.
    const cache = new KVCache({ layers: 1, kvHeads: 1, queryHeads: 4, headDim: 16, pageSize: 16, dtype: "f32", threads: 1, simd: simd as never });
    try {
      const seq = cache.createSequence();
      const keys = new Float32Array(32 * 16);
      for (let t = 0; t < 32; t++) keys[t * 16] = t < 16 ? 2 ** 27 + 16 : 2 ** 27 + 32; // scores 2^27 + 16, then + 32
      seq.append(0, keys, new Float32Array(32 * 16).fill(2 ** 107));
      const q = new Float32Array(4 * 16);
      for (let h = 0; h < 4; h++) q[h * 16] = 1;
      // Every value is 2^107: any weighting gives it back.
      expect(Array.from(new Set(seq.attend(0, q, { scale: 1 })))).toEqual([2 ** 107]);
    } finally {
      cache.dispose();
    }
  });

  test("keydiff and knorm on keys too small to square in float32: scale-free and ordered", () => {
    for (const dtype of ["f32", "bf16"] as const) {
      const cache = new KVCache({ layers: 1, kvHeads: 1, headDim: 4, pageSize: 4, dtype, threads: 1, simd: simd as never });
      try {
        const keys = [1, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 0, -1, 0.5, 0, 0];
        const scored = (c: number) => {
          const seq = cache.createSequence();
          seq.append(0, Float32Array.from(keys, (x) => x * c), new Float32Array(16));
          const out = { keydiff: Array.from(seq.scores(0, "keydiff", { window: 0 })[0]), knorm: Array.from(seq.scores(0, "knorm", { window: 0 })[0]) };
          seq.dispose();
          return out;
        };
        const one = scored(1);
        for (const c of [2 ** -70, 2 ** -120]) {
          const tiny = scored(c);
          // keydiff: −cos, the same at any scale (bf16 rounds c·x exactly: c is a power of two).
          tiny.keydiff.forEach((x, i) => expect([dtype, c, i, Math.abs(x - one.keydiff[i]) < 1e-6]).toEqual([dtype, c, i, true]));
          // knorm: −‖k‖ scaled by c, so still ordered.
          tiny.knorm.forEach((x, i) => expect([dtype, c, i, Math.abs(x / c - one.knorm[i]) < 1e-5 * Math.abs(one.knorm[i])]).toEqual([dtype, c, i, true]));
        }
      } finally {
        cache.dispose();
      }
    }
  });

  test("value norms of values whose squares overflow float32, and expected attention at scale 1e20", () => {
    const D = 8, T = 10;
    const cache = new KVCache({ layers: 1, kvHeads: 1, headDim: D, pageSize: 4, dtype: "f32", threads: 1, simd: simd as never });
    try {
      const k = Float32Array.from({ length: T * D }, (_, i) => ((i * 7) % 5) / 5 - 0.4);
      const seq = cache.createSequence();
      seq.append(0, k, new Float32Array(T * D).fill(1e20)); // ‖v‖ = 2.8e20, its square 8e40
      seq.attend(0, new Float32Array(D).fill(0.5));
      const unit = cache.createSequence();
      unit.append(0, k, new Float32Array(T * D).fill(1));
      unit.attend(0, new Float32Array(D).fill(0.5));
      // Every value norm is 1e20 × √8: the scores are the unit values' × that.
      const big = seq.scores(0, "snapkv", { window: 1, valueNorm: true })[0], ref = unit.scores(0, "snapkv", { window: 1, valueNorm: true })[0];
      big.forEach((x, i) => expect([i, Math.abs(x / ref[i] - 1e20) < 1e14]).toEqual([i, true]));
      // (s/2)·(s·kᵀΣk): with s = 1e20 and tiny keys and queries every z is near 0, so the scores are near 1/T.
      const small = cache.createSequence();
      small.append(0, k.map((x) => x * 1e-12), new Float32Array(T * D).fill(1));
      const stats = new QueryStatistics({ layers: 1, queryHeads: 1, headDim: D, skip: 0, covariance: true });
      stats.add(0, Float32Array.from({ length: 4 * D }, (_, i) => (((i * 3) % 7) - 3) * 1e-12));
      const ea = small.scores(0, "expected-attention", { sink: 0, window: 1, scale: 1e20, expectedAttention: { statistics: stats, rope: { theta: 10000 }, valueNorm: false } })[0];
      ea.forEach((x, i) => expect([i, Math.abs(x - 1 / T) < 1e-2]).toEqual([i, true]));
    } finally {
      cache.dispose();
    }
  });

  test("large finite inputs within the bounds give the reference's answer on every level", () => {
    const r = rng(seed + 1);
    const cache = new KVCache({ ...shape, dtype: "f32", simd: simd as never });
    try {
      const seq = cache.createSequence();
      // Scores up to about 4 × 1e16 × 1e16 = 4e32: the softmax is one-hot on the largest score.
      const k = randn(r, 9 * row, 1e16);
      const v = randn(r, 9 * row, 1e30);
      seq.append(0, k, v);
      const q = randn(r, 2 * qrow, 1e16);
      const out = seq.attend(0, q, { scale: 1 });
      expect(out.every(Number.isFinite)).toBe(true);
      const ref = referenceAttention(headsOf(seq, 0), q, lastPositions(seq, 0, 2), shape.queryHeads, shape.headDim, 1);
      expect(relativeError(out, ref)).toBeLessThan(1e-5);
    } finally {
      cache.dispose();
    }
  });
});

test("every SIMD level gives the same output for the same random inputs", () => {
  const r = rng(seed + 2);
  const k = randn(r, 37 * row, 3);
  const v = randn(r, 37 * row);
  const q = randn(r, 5 * qrow, 3);
  const outs = levels.map((simd) => {
    const cache = new KVCache({ ...shape, dtype: "f32", simd: simd as never });
    try {
      const seq = cache.createSequence();
      seq.append(1, k, v);
      return seq.attend(1, q);
    } finally {
      cache.dispose();
    }
  });
  for (const out of outs.slice(1)) expect(relativeError(out, outs[0])).toBeLessThan(1e-5);
});

test("f16 and bf16 caches refuse Float32 values they would store as infinity; the largest that fit are kept", () => {
  const f16 = new KVCache({ ...shape, dtype: "f16" });
  const bf16 = new KVCache({ ...shape, dtype: "bf16" });
  try {
    const s = f16.createSequence();
    const k = new Float32Array(row);
    k[5] = 1e6;
    expectInvalid(
      () => s.append(0, k, new Float32Array(row)),
      "Expected numbers that f16 can hold (magnitude below 65520) for keys but received 1000000 at index 5 (token 0, head 1, element 1); scale the inputs down or use a wider dtype",
    );
    k[5] = -65520;
    expectInvalid(() => s.append(0, new Float32Array(row), k), /^Expected numbers that f16 can hold \(magnitude below 65520\) for values but received -65520 at index 5/);
    k[5] = 65519; // rounds to 65504, the largest f16
    s.append(0, k, k);
    expect(s.keys(0, 1)[1]).toBe(65504);
    // Raw f16 bits: exponent 31 is infinity or NaN.
    const raw = new Uint16Array(row);
    raw[3] = 0x7c00;
    expectInvalid(() => s.append(0, raw, new Uint16Array(row)), "Expected finite numbers for keys but received Infinity at index 3 (token 0, head 0, element 3)");
    raw[3] = 0xfe01;
    expectInvalid(() => s.append(0, new Uint16Array(row), raw), "Expected finite numbers for values but received NaN at index 3 (token 0, head 0, element 3)");
    expect(Array.from(s.lengths())).toEqual([1, 1, 0, 0]);

    const b = bf16.createSequence();
    const big = new Float32Array(row);
    big[0] = 3.4e38;
    expectInvalid(() => b.append(0, big, new Float32Array(row)), /^Expected numbers that bf16 can hold \(magnitude below 3\.396\d+e\+38\) for keys but received 3\.4e\+38 at index 0 /);
    big[0] = 3.39e38;
    b.append(0, new Float32Array(row), big);
    expect(Number.isFinite(b.values(0, 0)[0])).toBe(true);
  } finally {
    f16.dispose();
    bf16.dispose();
  }
});

test("scale must be a float32: 3.5e38 is refused by attend, scores and compress", () => {
  const cache = new KVCache({ ...shape, dtype: "f32" });
  try {
    const seq = cache.createSequence();
    seq.append(0, new Float32Array(row).fill(1), new Float32Array(row).fill(1));
    const message = "Expected finite number within the float32 range (magnitude at most 3.4028234663852886e+38) for scale but received 3.5e+38 of type number";
    expectInvalid(() => seq.attend(0, new Float32Array(qrow), { scale: 3.5e38 }), message);
    expectInvalid(() => seq.scores(0, "snapkv", { scale: -3.5e38 }), message.replace("received 3.5e+38", "received -3.5e+38"));
    expectInvalid(() => seq.compress({ ratio: 0.5, scale: 3.5e38 }), message);
  } finally {
    cache.dispose();
  }
});

test("values whose weighted sums could overflow float32 are refused at attend", () => {
  const cache = new KVCache({ ...shape, dtype: "f32" });
  try {
    const seq = cache.createSequence();
    seq.append(0, new Float32Array(4 * row), new Float32Array(4 * row).fill(1e36));
    expectInvalid(
      () => seq.attend(0, new Float32Array(qrow)),
      /^Expected values whose sums over the layer stay within float32 \(tokens × max\|v\| at most 2\^112\) for values but received values of layer 0 up to 1e\+36 over 4 tokens$/,
    );
  } finally {
    cache.dispose();
  }
});

test("snapkv scores with observation queries that would overflow are refused", () => {
  const cache = new KVCache({ ...shape, dtype: "f32" });
  try {
    const seq = cache.createSequence();
    seq.append(0, new Float32Array(4 * row).fill(1e19), new Float32Array(4 * row));
    const obs = [new Float32Array(qrow).fill(1e19), undefined];
    expectInvalid(() => seq.scores(0, "snapkv", { window: 1, scale: 1, observationQueries: obs }), /^Expected observationQueries\[0\] whose scores stay within float32/);
    obs[0]![5] = NaN;
    expectInvalid(() => seq.scores(0, "snapkv", { window: 1, observationQueries: obs }), "Expected finite numbers for observationQueries[0] but received NaN at index 5 (token 0, head 1, element 1)");
  } finally {
    cache.dispose();
  }
});

test("checkFinite: false skips the scans (documented opt-out): a NaN key is stored as given", () => {
  const cache = new KVCache({ ...shape, dtype: "f32", checkFinite: false });
  try {
    expect(cache.config.checkFinite).toBe(false);
    const seq = cache.createSequence();
    const k = new Float32Array(row);
    k[0] = NaN;
    seq.append(0, k, new Float32Array(row));
    expect(Number.isNaN(seq.keys(0, 0)[0])).toBe(true);
  } finally {
    cache.dispose();
  }
  expectInvalid(() => new KVCache({ ...shape, checkFinite: 1 as never }), "Expected boolean for checkFinite but received 1 of type number");
});

describe("input scan", () => {
  // The scan every call makes of its inputs works on bit patterns in blocks of 256: it must give what
  // the plain definition gives, for bad values anywhere (block edges included) and for every limit.
  test("matches a plain scan: first index with !(|x| < limit), largest |x| before it", () => {
    const { scanValues } = require("../ts/finite") as typeof import("../ts/finite");
    const r = rng(seed + 7);
    const specials = [0, -0, Infinity, -Infinity, NaN, 1e-45, -1e-45, 65504, 65520, -65520, 3.4e38, -3.4e38];
    const limits = [65520, 3.3895313892515355e38, Infinity, 1, 0, -1];
    for (let trial = 0; trial < 400; trial++) {
      const n = Math.floor(r() * 1100);
      const x = new Float32Array(n);
      for (let i = 0; i < n; i++) x[i] = (r() * 2 - 1) * 2 ** (Math.floor(r() * 40) - 20);
      const bad = Math.floor(r() * 4);
      for (let j = 0; j < bad && n > 0; j++) {
        // near a block edge half of the time
        const at = r() < 0.5 ? Math.min(n - 1, 256 * Math.floor(r() * 5) + Math.floor(r() * 3) - 1) : Math.floor(r() * n);
        x[Math.max(0, at)] = specials[Math.floor(r() * specials.length)];
      }
      const limit = limits[Math.floor(r() * limits.length)];
      let first = -1;
      let maxAbs = 0;
      for (let i = 0; i < n; i++) {
        const a = Math.abs(x[i]);
        if (!(a < Math.fround(limit))) {
          first = i;
          break;
        }
        maxAbs = Math.max(maxAbs, a);
      }
      expect(Array.from(scanValues(x, 0, limit))).toEqual([first, maxAbs]);
    }
  });

  // Raw f16/bf16 words are scanned in blocks of 512: a word whose exponent is all ones is bad.
  test("raw f16 and bf16 words: matches a plain scan, bad words anywhere (block edges included)", () => {
    const { scanValues } = require("../ts/finite") as typeof import("../ts/finite");
    const { f16BitsToF32, bf16BitsToF32 } = require("../ts/dtype") as typeof import("../ts/dtype");
    const r = rng(seed + 11);
    for (const [kind, decode, specials] of [
      [1, f16BitsToF32, [0x7c00, 0xfc00, 0x7e00, 0x7c01, 0x7bff, 0xfbff, 0x0001, 0x8000, 0x3c00]],
      [2, bf16BitsToF32, [0x7f80, 0xff80, 0x7fc0, 0x7f81, 0x7f7f, 0xff7f, 0x0001, 0x8000, 0x3f80]],
    ] as const) {
      for (let trial = 0; trial < 150; trial++) {
        const n = Math.floor(r() * 2100);
        const x = new Uint16Array(n);
        for (let i = 0; i < n; i++) {
          x[i] = Math.floor(r() * 65536);
          // Mostly finite words: an all-ones exponent redrawn
          if (r() < 0.97) while (!Number.isFinite(decode(x[i]))) x[i] = Math.floor(r() * 65536);
        }
        for (let j = 0; j < Math.floor(r() * 3) && n > 0; j++) {
          const at = r() < 0.5 ? Math.min(n - 1, 512 * Math.floor(r() * 5) + Math.floor(r() * 3) - 1) : Math.floor(r() * n);
          x[Math.max(0, at)] = specials[Math.floor(r() * specials.length)];
        }
        let first = -1;
        let maxAbs = 0;
        for (let i = 0; i < n; i++) {
          const a = Math.abs(decode(x[i]));
          if (!Number.isFinite(a)) {
            first = i;
            break;
          }
          maxAbs = Math.max(maxAbs, a);
        }
        expect(Array.from(scanValues(x, kind, Infinity))).toEqual([first, maxAbs]);
      }
    }
  });
});

// attendBatch checks its items' queries in the addon (one pass over all items) and attend in
// TypeScript: at the bounds, both must take and refuse the same queries, with the same message.
test("attend and attendBatch refuse the same queries at the score bounds", () => {
  const r = rng(seed + 13);
  const cache = new KVCache({ layers: 1, kvHeads: 1, queryHeads: 1, headDim: 4, pageSize: 4, maxTokens: 4096, dtype: "f32", threads: 1 });
  const F32_MAX = 3.4028234663852886e38;
  const f32Next = (x: number, dir: 1 | -1): number => {
    const b = new Float32Array([x]);
    const u = new Uint32Array(b.buffer);
    u[0] += dir;
    return b[0];
  };
  const thrown = (fn: () => unknown): Error | undefined => {
    try {
      fn();
    } catch (e) {
      return e as Error;
    }
    return undefined;
  };
  let refused = 0, taken = 0, nonFloatEdges = 0;
  try {
    for (let trial = 0; trial < 300; trial++) {
      const seq = cache.createSequence();
      // Every tenth trial: keys so small that the scaled bound decides, with a scale above 1 that is
      // not float32 (its rounding would decide otherwise near the edge)
      const forced = trial % 10 === 0;
      const k = Math.fround((1 + r()) * 2 ** (forced ? -20 : Math.floor(r() * 60 - 20)));
      seq.append(0, Float32Array.from([k, 0, 0, 0]), Float32Array.from([1, 1, 1, 1]));
      // A float32 scale, or (a third of the time) one that is not: the bounds hold for the value given.
      const drawn = forced ? (1 + r() * 3) * 2 ** Math.floor(r() * 10) + 2 ** -30 : (r() < 0.5 ? 1 + r() * 3 : r()) * 2 ** Math.floor(r() * 40 - 20);
      const scale = forced || r() < 0.33 ? drawn : Math.fround(drawn);
      // The largest |q| taken: the score bound, or the scaled one where it is lower.
      const byScores = 2 ** 120 / (4 * k * Math.max(1, scale));
      const edge = Math.fround(Math.min(byScores, F32_MAX / scale));
      // Near the scaled bound, a scale that is not float32 decides differently from its rounding
      if (scale > 1 && edge === Math.fround(F32_MAX / scale) && scale !== Math.fround(scale)) nonFloatEdges++;
      for (const q0 of [f32Next(edge, -1), edge, f32Next(edge, 1)]) {
        if (!Number.isFinite(q0)) continue;
        const q = Float32Array.from([q0 * (r() < 0.5 ? -1 : 1), 0.5, 0, 0]);
        const single = thrown(() => seq.attend(0, q, { scale }));
        const batch = thrown(() => cache.attendBatch(0, [{ sequence: seq, queries: q }], { scale }));
        if (single === undefined) {
          taken++;
          expect(batch).toBeUndefined();
        } else {
          refused++;
          expect(single.name).toBe("InvalidArgumentError");
          expect(batch?.message).toBe(single.message.replace(/queries/g, "items[0].queries"));
        }
      }
      seq.dispose();
    }
  } finally {
    cache.dispose();
  }
  // Both sides of the edge were met, also with scales that are not float32
  expect(refused).toBeGreaterThan(100);
  expect(taken).toBeGreaterThan(100);
  expect(nonFloatEdges).toBeGreaterThanOrEqual(25);
});
