// attend() against a float64 reference on fresh random data, across GQA ratios, head sizes,
// page sizes, storage types, SIMD levels, decode and prefill chunks.
import { KVCache, backends, DType, roundTo } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";
import { referenceAttention, relativeError, RefHead } from "./helpers/reference";
import { appendRandom, headsOf, lastPositions } from "./helpers/cache";

const seed = testSeed("attention");
const tolerance: Record<DType, number> = { f32: 1e-5, f16: 2e-3, bf16: 2e-3 };

/** Independent record of what was appended (dtype-rounded), to check the cache's own read-back too. */
class Shadow {
  heads: { keys: number[]; values: number[]; positions: number[] }[];
  constructor(kvHeads: number, readonly headDim: number) {
    this.heads = Array.from({ length: kvHeads }, () => ({ keys: [], values: [], positions: [] }));
  }
  add(keys: Float32Array, values: Float32Array, pos0: number): void {
    const H = this.heads.length;
    const D = this.headDim;
    const tokens = keys.length / (H * D);
    for (let t = 0; t < tokens; t++)
      for (let h = 0; h < H; h++) {
        const off = (t * H + h) * D;
        this.heads[h].keys.push(...keys.subarray(off, off + D));
        this.heads[h].values.push(...values.subarray(off, off + D));
        this.heads[h].positions.push(pos0 + t);
      }
  }
  refHeads(): RefHead[] {
    return this.heads.map((h) => ({
      keys: Float32Array.from(h.keys),
      values: Float32Array.from(h.values),
      positions: h.positions,
    }));
  }
}

/** Reference heads from token-major keys/values [n, kvHeads, headDim], rounded to the dtype, positions 0..n-1. */
function splitHeads(keys: Float32Array, values: Float32Array, kvHeads: number, headDim: number, dtype: DType): RefHead[] {
  const n = keys.length / (kvHeads * headDim);
  const kr = roundTo(keys, dtype), vr = roundTo(values, dtype);
  return Array.from({ length: kvHeads }, (_, h) => {
    const hk = new Float32Array(n * headDim), hv = new Float32Array(n * headDim);
    for (let t = 0; t < n; t++) {
      hk.set(kr.subarray((t * kvHeads + h) * headDim, (t * kvHeads + h + 1) * headDim), t * headDim);
      hv.set(vr.subarray((t * kvHeads + h) * headDim, (t * kvHeads + h + 1) * headDim), t * headDim);
    }
    return { keys: hk, values: hv, positions: Array.from({ length: n }, (_, i) => i) };
  });
}

describe("attend matches the float64 reference", () => {
  const cases: { group: number; kvHeads: number; headDim: number; pageSize: number; dtype: DType }[] = [];
  for (const group of [1, 4, 8])
    for (const headDim of [64, 128])
      for (const pageSize of [1, 16, 64])
        for (const dtype of ["f32", "f16", "bf16"] as DType[])
          cases.push({ group, kvHeads: group === 8 ? 1 : 2, headDim, pageSize, dtype });

  test.each(cases)("GQA $group, headDim $headDim, pageSize $pageSize, $dtype: prefill chunks then decode", (c) => {
    const r = rng(seed ^ (c.group * 7919 + c.headDim * 31 + c.pageSize * 17 + c.dtype.length));
    const queryHeads = c.kvHeads * c.group;
    const cache = new KVCache({
      layers: 2,
      kvHeads: c.kvHeads,
      queryHeads,
      headDim: c.headDim,
      pageSize: c.pageSize,
      dtype: c.dtype,
      maxTokens: 2 * c.kvHeads * 1024,
    });
    try {
      const seq = cache.createSequence();
      const shadow = new Shadow(c.kvHeads, c.headDim);
      const layer = 1;
      // Prefill in uneven chunks: 1..97 tokens each, a query for every position of the chunk.
      for (let chunk = 0; chunk < 3; chunk++) {
        const tokens = 1 + Math.floor(r() * 97);
        const pos0 = seq.appended(layer);
        const { keys, values } = appendRandom(seq, layer, tokens, r);
        shadow.add(keys, values, pos0);
        const q = randn(r, tokens * queryHeads * c.headDim);
        const out = seq.attend(layer, q);
        const ref = referenceAttention(shadow.refHeads(), q, lastPositions(seq, layer, tokens), queryHeads, c.headDim);
        expect(relativeError(out, ref)).toBeLessThan(tolerance[c.dtype]);
      }
      // The cache's read-back equals what was appended.
      const back = headsOf(seq, layer);
      const want = shadow.refHeads();
      for (let h = 0; h < c.kvHeads; h++) {
        expect(back[h].keys).toEqual(want[h].keys);
        expect(back[h].values).toEqual(want[h].values);
        expect(Array.from(back[h].positions)).toEqual(want[h].positions);
      }
      // Decode steps.
      for (let step = 0; step < 4; step++) {
        const pos0 = seq.appended(layer);
        const { keys, values } = appendRandom(seq, layer, 1, r);
        shadow.add(keys, values, pos0);
        const q = randn(r, queryHeads * c.headDim);
        const out = seq.attend(layer, q);
        const ref = referenceAttention(shadow.refHeads(), q, [pos0], queryHeads, c.headDim);
        expect(relativeError(out, ref)).toBeLessThan(tolerance[c.dtype]);
      }
      // The other layer was never touched.
      expect(Array.from(seq.lengths()).slice(0, c.kvHeads)).toEqual(new Array(c.kvHeads).fill(0));
    } finally {
      cache.dispose();
    }
  });
});

describe("long sequences and every SIMD level", () => {
  const levels = backends().cpu.simdSupported;
  // Every storage type on the best level; f16 on the others (they share the code, not the instructions).
  const longCases = levels.flatMap((simd, i) => (i === 0 ? (["f32", "f16", "bf16"] as DType[]) : (["f16"] as DType[])).map((dtype) => ({ simd, dtype })));
  test.each(longCases)(
    "8,192 tokens, decode, GQA 4, headDim 128, $simd, $dtype",
    ({ simd, dtype }) => {
      const r = rng(seed + simd.length * 101 + dtype.length);
      const kvHeads = 2, queryHeads = 8, headDim = 128, n = 8192;
      const cache = new KVCache({ layers: 1, kvHeads, queryHeads, headDim, dtype, simd: simd as "generic", maxTokens: kvHeads * n + 64 });
      try {
        const seq = cache.createSequence();
        // Larger keys make the softmax peaky, which stresses the running max.
        const keys = randn(r, n * kvHeads * headDim, 2);
        const values = randn(r, n * kvHeads * headDim);
        seq.append(0, keys, values);
        const q = randn(r, queryHeads * headDim);
        const out = seq.attend(0, q);
        const heads = splitHeads(keys, values, kvHeads, headDim, dtype);
        const ref = referenceAttention(heads, q, [n - 1], queryHeads, headDim);
        expect(relativeError(out, ref)).toBeLessThan(tolerance[dtype]);
      } finally {
        cache.dispose();
      }
    },
  );

  // Head sizes that are a multiple of the vector width but not of the register tile (80, 96: a
  // whole tile then narrower ones; 16, 32, 48: narrower tiles only) take the vector path too, on
  // every level; a size that is not a multiple of any vector (20) takes the per-head path.
  const sizeCases = levels.flatMap((simd, i) =>
    [16, 20, 32, 48, 80, 96].flatMap((headDim) =>
      (i === 0 ? (["f32", "f16", "bf16"] as DType[]) : (["f16"] as DType[])).map((dtype) => ({ simd, dtype, headDim })),
    ),
  );
  test.each(sizeCases)("headDim $headDim, GQA 4 and 8, $simd, $dtype: decode and a prefill chunk", ({ simd, dtype, headDim }) => {
    const r = rng(seed + simd.length * 13 + headDim * 7 + dtype.length);
    for (const [kvHeads, queryHeads] of [[2, 8], [1, 8]]) {
      const n = 301, rows = 7;
      const cache = new KVCache({ layers: 1, kvHeads, queryHeads, headDim, dtype, simd: simd as "generic", maxTokens: kvHeads * n + 64 });
      try {
        const seq = cache.createSequence();
        const keys = randn(r, n * kvHeads * headDim, 1.5), values = randn(r, n * kvHeads * headDim);
        seq.append(0, keys, values);
        const heads = splitHeads(keys, values, kvHeads, headDim, dtype);
        const q = randn(r, rows * queryHeads * headDim);
        const one = q.subarray(0, queryHeads * headDim);
        expect(relativeError(seq.attend(0, one), referenceAttention(heads, one, [n - 1], queryHeads, headDim))).toBeLessThan(tolerance[dtype]);
        const positions = Array.from({ length: rows }, (_, i) => n - rows + i);
        expect(relativeError(seq.attend(0, q), referenceAttention(heads, q, positions, queryHeads, headDim))).toBeLessThan(tolerance[dtype]);
      } finally {
        cache.dispose();
      }
    }
  });

  // Prefetch hints only change how rows are requested, never what is computed: every hint gives
  // the same bits, and those match the reference.
  test("every prefetch hint, 3,000 tokens over pages of 16, decode and a prefill chunk", () => {
    const r = rng(seed + 77);
    const kvHeads = 2, queryHeads = 8, headDim = 128, n = 3000, rows = 5;
    const keys = randn(r, n * kvHeads * headDim), values = randn(r, n * kvHeads * headDim);
    const q = randn(r, rows * queryHeads * headDim);
    const outs: Float32Array[] = [];
    for (const prefetch of ["auto", "t0", "t2", "nta", "none"] as const) {
      const cache = new KVCache({ layers: 1, kvHeads, queryHeads, headDim, dtype: "f16", prefetch, maxTokens: kvHeads * n + 64 });
      try {
        expect(cache.config.prefetch).toBe(prefetch === "auto" ? backends().cpu.prefetch : prefetch);
        const seq = cache.createSequence();
        seq.append(0, keys, values);
        outs.push(seq.attend(0, q.subarray(0, queryHeads * headDim)));
        outs.push(seq.attend(0, q));
      } finally {
        cache.dispose();
      }
    }
    for (let i = 2; i < outs.length; i++) expect(outs[i]).toEqual(outs[i % 2]);
    const heads = splitHeads(keys, values, kvHeads, headDim, "f16");
    expect(relativeError(outs[0], referenceAttention(heads, q.subarray(0, queryHeads * headDim), [n - 1], queryHeads, headDim))).toBeLessThan(tolerance.f16);
    const positions = Array.from({ length: rows }, (_, i) => n - rows + i);
    expect(relativeError(outs[1], referenceAttention(heads, q, positions, queryHeads, headDim))).toBeLessThan(tolerance.f16);
  });

  // The online softmax keeps a reference maximum that moves only when a block's scores pass it by
  // a margin; these score profiles force that path (and its absence) many times over.
  const profiles: { name: string; gain: (t: number, n: number) => number }[] = [
    { name: "rising scores (the reference moves at many blocks)", gain: (t, n) => 0.2 + (30 * t) / n },
    { name: "one dominant early token, the rest far below", gain: (t) => (t === 3 ? 8 : 0.05) },
    { name: "falling scores", gain: (t, n) => 6 - (5.5 * t) / n },
  ];
  // 1,000 tokens end on a whole vector step on every level; with 1,001 the last block's scores take
  // the per-head layout, after blocks in the interleaved one (the raises must carry across).
  const profileCases = levels.flatMap((simd) => profiles.flatMap((p) => [1000, 1001].map((n) => ({ simd, n, ...p }))));
  test.each(profileCases)("$simd: $name, $n tokens", ({ simd, gain, n }) => {
    const r = rng(seed + simd.length * 13 + gain(0, 1) * 1000 + n);
    const kvHeads = 1, queryHeads = 4, headDim = 64;
    const q = randn(r, queryHeads * headDim);
    // Keys along the mean query direction, scaled per token, so every head's score follows gain(t).
    const dir = new Float32Array(headDim);
    for (let g = 0; g < queryHeads; g++) for (let d = 0; d < headDim; d++) dir[d] += q[g * headDim + d] / queryHeads;
    const keys = new Float32Array(n * headDim);
    for (let t = 0; t < n; t++) {
      const noise = randn(r, headDim, 0.1);
      for (let d = 0; d < headDim; d++) keys[t * headDim + d] = gain(t, n) * dir[d] + noise[d];
    }
    const values = randn(r, n * headDim);
    const cache = new KVCache({ layers: 1, kvHeads, queryHeads, headDim, dtype: "f32", simd: simd as "generic", pageSize: 16, maxTokens: n, threads: 1 }); // one token range: every raise happens inside it
    try {
      const seq = cache.createSequence();
      seq.append(0, keys, values);
      const heads = [{ keys, values, positions: Array.from({ length: n }, (_, i) => i) }];
      const out = seq.attend(0, q);
      expect(relativeError(out, referenceAttention(heads, q, [n - 1], queryHeads, headDim))).toBeLessThan(1e-5);
      // A prefill chunk of 9 rows: one work item serves 8 rows block by block (each with its own
      // reference maxima and sums, and its own last block), the ninth is another item.
      const rows = 9;
      const q9 = new Float32Array(rows * queryHeads * headDim);
      for (let i = 0; i < rows; i++) q9.set(q, i * queryHeads * headDim);
      const positions = Array.from({ length: rows }, (_, i) => n - rows + i);
      expect(relativeError(seq.attend(0, q9), referenceAttention(heads, q9, positions, queryHeads, headDim))).toBeLessThan(1e-5);
    } finally {
      cache.dispose();
    }
  });

  test("SIMD levels and thread counts agree with each other on a prefill chunk", () => {
    const r = rng(seed + 5);
    const kvHeads = 2, queryHeads = 8, headDim = 80, n = 300, chunk = 40;
    const keys = randn(r, n * kvHeads * headDim);
    const values = randn(r, n * kvHeads * headDim);
    const q = randn(r, chunk * queryHeads * headDim);
    const outs: Float32Array[] = [];
    for (const simd of levels)
      for (const threads of [1, 3]) {
        const cache = new KVCache({ layers: 1, kvHeads, queryHeads, headDim, dtype: "f32", simd: simd as "generic", threads, pageSize: 7, maxTokens: 4096 });
        const seq = cache.createSequence();
        seq.append(0, keys, values);
        outs.push(seq.attend(0, q));
        cache.dispose();
      }
    for (const o of outs.slice(1)) expect(relativeError(o, outs[0])).toBeLessThan(1e-6);
  });
});

describe("inputs and options", () => {
  test("Uint16Array raw f16/bf16 inputs equal the Float32Array path", () => {
    const r = rng(seed + 11);
    for (const dtype of ["f16", "bf16"] as const) {
      const kvHeads = 2, queryHeads = 4, headDim = 64, n = 50;
      const keys = randn(r, n * kvHeads * headDim), values = randn(r, n * kvHeads * headDim);
      const q = randn(r, queryHeads * headDim);
      const { toBits } = require("../ts");
      const a = new KVCache({ layers: 1, kvHeads, queryHeads, headDim, dtype, maxTokens: 1024 });
      const sa = a.createSequence();
      sa.append(0, keys, values);
      const sb = a.createSequence();
      sb.append(0, toBits(keys, dtype), toBits(values, dtype));
      expect(sb.keys(0, 1)).toEqual(sa.keys(0, 1));
      const qRounded = roundTo(q, dtype);
      expect(sb.attend(0, toBits(q, dtype))).toEqual(sa.attend(0, qRounded));
      const out = new Float32Array(q.length); // raw 16-bit queries with a caller's output array
      expect(sb.attend(0, toBits(q, dtype), { out })).toBe(out);
      expect(out).toEqual(sa.attend(0, qRounded));
      a.dispose();
    }
  });

  test("scale option changes the softmax temperature", () => {
    const r = rng(seed + 12);
    const kvHeads = 1, queryHeads = 2, headDim = 64, n = 30;
    const cache = new KVCache({ layers: 1, kvHeads, queryHeads, headDim, dtype: "f32", maxTokens: 256 });
    const seq = cache.createSequence();
    const { keys, values } = appendRandom(seq, 0, n, r);
    const q = randn(r, queryHeads * headDim);
    const heads = [{ keys, values, positions: Array.from({ length: n }, (_, i) => i) }];
    const out = seq.attend(0, q, { scale: 0.5 });
    expect(relativeError(out, referenceAttention(heads, q, [n - 1], queryHeads, headDim, 0.5))).toBeLessThan(1e-5);
    cache.dispose();
  });

  test("out: the result is written into the caller's array, same values as a new array", async () => {
    const r = rng(seed + 15);
    const kvHeads = 2, queryHeads = 8, headDim = 64, n = 333;
    const cache = new KVCache({ layers: 1, kvHeads, queryHeads, headDim, dtype: "f16", maxTokens: kvHeads * n });
    try {
      const seq = cache.createSequence();
      appendRandom(seq, 0, n, r);
      const q = randn(r, 3 * queryHeads * headDim);
      const fresh = seq.attend(0, q);
      const out = new Float32Array(q.length).fill(Number.NaN);
      expect(seq.attend(0, q, { out })).toBe(out);
      expect(out).toEqual(fresh);
      // A view into a larger buffer works too, and nothing outside it is written.
      const big = new Float32Array(q.length + 32).fill(7);
      const view = big.subarray(16, 16 + q.length);
      expect(seq.attend(0, q, { out: view })).toBe(view);
      expect(view).toEqual(fresh);
      expect(Array.from(big.subarray(0, 16))).toEqual(new Array(16).fill(7));
      expect(Array.from(big.subarray(16 + q.length))).toEqual(new Array(16).fill(7));
      const outAsync = new Float32Array(q.length);
      expect(await seq.attendAsync(0, q, { out: outAsync })).toBe(outAsync);
      expect(outAsync).toEqual(fresh);
    } finally {
      cache.dispose();
    }
  });

  test("several sequences share one pool and stay independent", () => {
    const r = rng(seed + 13);
    const kvHeads = 2, queryHeads = 8, headDim = 64;
    const cache = new KVCache({ layers: 2, kvHeads, queryHeads, headDim, dtype: "f16", pageSize: 16, maxTokens: 8192 });
    const seqs = [0, 1, 2, 3].map(() => cache.createSequence());
    const shadows = seqs.map(() => new Shadow(kvHeads, headDim));
    // Interleave appends so the sequences' pages are mixed in the pool.
    for (let round = 0; round < 5; round++)
      seqs.forEach((s, i) => {
        const tokens = 1 + Math.floor(r() * 60);
        const pos0 = s.appended(0);
        const { keys, values } = appendRandom(s, 0, tokens, r);
        shadows[i].add(keys, values, pos0);
      });
    seqs.forEach((s, i) => {
      const q = randn(r, 3 * queryHeads * headDim);
      const ref = referenceAttention(shadows[i].refHeads(), q, lastPositions(s, 0, 3), queryHeads, headDim);
      expect(relativeError(s.attend(0, q), ref)).toBeLessThan(2e-3);
    });
    expect(cache.usage().sequences).toBe(4);
    const used = cache.usage().pagesUsed;
    const expectedPages = seqs.reduce((acc, s) => acc + Array.from(s.lengths()).reduce((a, l) => a + Math.ceil(l / 16), 0), 0);
    expect(used).toBe(expectedPages);
    const pagesOf1 = Array.from(seqs[1].lengths()).reduce((a, l) => a + Math.ceil(l / 16), 0);
    seqs[1].dispose();
    expect(cache.usage().sequences).toBe(3);
    expect(cache.usage().pagesUsed).toBe(expectedPages - pagesOf1);
    cache.dispose();
  });

  test("attendAsync equals attend and keeps the event loop turning", async () => {
    const r = rng(seed + 14);
    const kvHeads = 2, queryHeads = 8, headDim = 128, n = 2048;
    const cache = new KVCache({ layers: 1, kvHeads, queryHeads, headDim, maxTokens: kvHeads * n });
    const seq = cache.createSequence();
    appendRandom(seq, 0, n, r);
    const q = randn(r, 16 * queryHeads * headDim);
    const sync = seq.attend(0, q);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    const pending = Array.from({ length: 8 }, () => seq.attendAsync(0, q));
    const results = await Promise.all(pending);
    clearInterval(timer);
    for (const a of results) expect(a).toEqual(sync);
    expect(ticks).toBeGreaterThan(0);
    cache.dispose();
  });
});
