// Saved sequences: seq.save() / cache.loadSequence() round trips bit for bit (rows in the cache
// dtype, positions, lengths, appended counts), a restored sequence attends, grows and compresses
// exactly as the original, into caches of another pageSize too; every corrupt or foreign input is
// rejected with BadSequenceFileError (or OutOfPagesError) and leaves the pool as it was.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { KVCache, KVCacheOptions, Sequence, DType, BadSequenceFileError, OutOfPagesError, SequenceBusyError, InvalidArgumentError, LukvError } from "../ts";
import { loadTinyLM, MODEL_FILES, argmax, modelTexts } from "../ts/model";
import { rng, testSeed, randn } from "./helpers/random";
import { relativeError } from "./helpers/reference";
import { crc32c, withChecksum, layoutOf, snapshot, bytesOf, HEADER_FIELDS, HEADER_BYTES } from "./helpers/saved";

const seed = testSeed("save-load");
const shape = { layers: 3, kvHeads: 2, queryHeads: 4, headDim: 8 };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-save-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function cacheOf(dtype: DType, extra: Partial<KVCacheOptions> = {}): KVCache {
  return new KVCache({ ...shape, dtype, pageSize: 16, maxTokens: 4096, threads: 1, device: "cpu", observationWindow: 8, ...extra });
}

/** The same random appends to every layer of every sequence given. */
function appendAll(seqs: Sequence[], tokens: number, r: () => number): void {
  const { layers, kvHeads, headDim } = seqs[0].cache.config;
  for (let l = 0; l < layers; l++) {
    const k = randn(r, tokens * kvHeads * headDim), v = randn(r, tokens * kvHeads * headDim);
    for (const s of seqs) s.append(l, k, v);
  }
}

/** The same random queries to every layer of every sequence; the outputs, per sequence. */
function attendAll(seqs: Sequence[], rows: number, r: () => number): Buffer[] {
  const { layers, queryHeads, headDim } = seqs[0].cache.config;
  const outs = seqs.map(() => [] as Buffer[]);
  for (let l = 0; l < layers; l++) {
    const q = randn(r, rows * queryHeads * headDim);
    seqs.forEach((s, i) => outs[i].push(Buffer.from(bytesOf(s.attend(l, q)))));
  }
  return outs.map((o) => Buffer.concat(o));
}

/** A sequence with uneven per-head lengths and partly filled pages: appends, queries, Ada-KV eviction, more appends. */
function buildSequence(cache: KVCache, r: () => number, opts: { mass?: boolean; tokens?: number } = {}): Sequence {
  const seq = cache.createSequence();
  if (opts.mass) seq.accumulateAttention(true);
  appendAll([seq], opts.tokens ?? 90, r);
  attendAll([seq], 10, r);
  seq.compress({ ratio: 0.6, scorer: opts.mass ? "h2o" : "snapkv", allocation: "adakv", window: 8 });
  appendAll([seq], 7, r);
  attendAll([seq], 1, r);
  return seq;
}

const asF32 = (b: Buffer) => new Float32Array(b.buffer, b.byteOffset, b.length / 4);

function expectSame(a: Sequence, b: Sequence): void {
  expect(snapshot(b)).toEqual(snapshot(a));
}

/** Runs fn, which must throw `type`, and checks the pool is as it was. */
function rejects(cache: KVCache, fn: () => unknown, type: new (m: string) => LukvError, message?: RegExp): LukvError {
  const before = cache.usage();
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(type);
  if (message) expect((err as Error).message).toMatch(message);
  expect(cache.usage()).toEqual(before);
  return err as LukvError;
}

describe.each(["f32", "f16", "bf16"] as DType[])("round trip, %s", (dtype) => {
  test("bit for bit, then attention, appends and compress continue exactly as on the original, at pageSize 16, 5 and 1", () => {
    const r = rng(seed + dtype.length);
    const cache = cacheOf(dtype);
    const seq = buildSequence(cache, r, { mass: dtype === "bf16" });
    const lengths = Array.from(seq.lengths());
    expect(new Set(lengths).size).toBeGreaterThan(1); // heads of uneven lengths
    expect(lengths.some((n) => n % 16 !== 0)).toBe(true); // partly filled last pages
    const bytes = seq.save();
    expect(crc32c(bytes, bytes.length - 4)).toBe(bytes.readUInt32LE(bytes.length - 4));
    expect(layoutOf(bytes).boundaries.at(-1)).toBe(bytes.length - 4);

    for (const pageSize of [16, 5, 1]) {
      const target = pageSize === 16 ? cache : cacheOf(dtype, { pageSize });
      const before = target.usage().pagesUsed;
      const copy = target.loadSequence(bytes);
      expect(target.usage().pagesUsed - before).toBe(lengths.reduce((a, n) => a + Math.ceil(n / pageSize), 0));
      expectSame(seq, copy);
      expect(copy.save().equals(bytes)).toBe(true); // observation rows, mass and bounds came back too
      // The original keeps going beside the copy (forked, so the original itself is untouched).
      const orig = seq.fork();
      const r2 = rng(seed + 7 * pageSize);
      // At the same pageSize the kernels see the same pages: bit for bit. At another, the online
      // softmax is rescaled at other page boundaries: float32 rounding apart.
      const sameOut = (a: Buffer, b: Buffer) => {
        if (pageSize === 16) expect(b.equals(a)).toBe(true);
        else expect(relativeError(asF32(b), asF32(a))).toBeLessThan(1e-6);
      };
      const [a1, b1] = attendAll([orig, copy], 3, r2);
      sameOut(a1, b1);
      appendAll([orig, copy], 20, r2);
      const [a2, b2] = attendAll([orig, copy], 2, r2);
      sameOut(a2, b2);
      const scorer = dtype === "bf16" ? "h2o" : "snapkv";
      const ra = orig.compress({ ratio: 0.5, scorer, allocation: "adakv", window: 8 });
      const rb = copy.compress({ ratio: 0.5, scorer, allocation: "adakv", window: 8 });
      expect(Array.from(rb.kept)).toEqual(Array.from(ra.kept));
      expectSame(orig, copy);
      const [a3, b3] = attendAll([orig, copy], 1, r2);
      sameOut(a3, b3);
      orig.dispose();
      copy.dispose();
      expect(target.usage().pagesUsed).toBe(before);
      if (target !== cache) target.dispose();
    }
    cache.dispose();
  });
});

test("a cache with a smaller observationWindow keeps the last observation rows of the file", () => {
  const r = rng(seed ^ 0x0b5);
  const cache = cacheOf("f32");
  const small = cacheOf("f32", { observationWindow: 3 });
  try {
    const seq = buildSequence(cache, r); // its window of 8 has wrapped (10 rows, then 1)
    attendAll([seq], 1, r);
    const copy = small.loadSequence(seq.save());
    for (let l = 0; l < shape.layers; l++) {
      const want = seq.scores(l, "snapkv", { window: 3 });
      const got = copy.scores(l, "snapkv", { window: 3 });
      for (let h = 0; h < shape.kvHeads; h++) expect(Array.from(got[h])).toEqual(Array.from(want[h]));
    }
    expect(() => copy.scores(0, "snapkv", { window: 4 })).toThrow("the sequence remembers 3 (");
    expect(copy.save().length).toBeLessThan(seq.save().length);
  } finally {
    cache.dispose();
    small.dispose();
  }
});

test("the test's CRC-32C is the Castagnoli one (check value of \"123456789\")", () => {
  expect(crc32c(Buffer.from("123456789"))).toBe(0xe3069283);
});

test("an empty sequence and one with a single token round trip", () => {
  const cache = cacheOf("f16");
  const empty = cache.createSequence();
  const e2 = cache.loadSequence(empty.save());
  expectSame(empty, e2);
  expect(e2.lengths().every((n) => n === 0)).toBe(true);
  const one = cache.createSequence();
  appendAll([one], 1, rng(seed));
  expectSame(one, cache.loadSequence(one.save()));
  cache.dispose();
});

test("files, async variants and call order: saveAsync sees the calls queued before it, not those after", async () => {
  const r = rng(seed + 11);
  const cache = cacheOf("f16");
  const seq = buildSequence(cache, r);
  const file = path.join(tmp, "seq.lukv");
  seq.saveFile(file);
  expectSame(seq, cache.loadSequence(file));
  expectSame(seq, await cache.loadSequenceAsync(file));
  expectSame(seq, await cache.loadSequenceAsync(fs.readFileSync(file)));
  await seq.saveFileAsync(file + "2");
  expect(fs.readFileSync(file + "2").equals(fs.readFileSync(file))).toBe(true);

  // compressAsync queued, then saveAsync: the save holds the compressed sequence. A sync save in
  // between is refused; an append after the saves does not show in them.
  const reference = seq.fork();
  reference.compress({ ratio: 0.5, window: 8 });
  const compressed = seq.compressAsync({ ratio: 0.5, window: 8 });
  const saved = seq.saveAsync();
  expect(() => seq.save()).toThrow(SequenceBusyError);
  expect(() => seq.saveFile(file)).toThrow(SequenceBusyError);
  await compressed;
  const bytes = await saved;
  expect(bytes.equals(reference.save())).toBe(true);
  appendAll([seq], 1, r);
  expect(seq.save().equals(bytes)).toBe(false);

  expect(() => cache.loadSequence(path.join(tmp, "missing"))).toThrow(/ENOENT/);
  expect(() => cache.loadSequence(new Uint16Array(4) as unknown as Uint8Array)).toThrow(InvalidArgumentError);
  expect(() => cache.loadSequence("")).toThrow(InvalidArgumentError);
  expect(() => seq.saveFile(42 as unknown as string)).toThrow(InvalidArgumentError);

  // Files are replaced whole (a temporary file renamed over them); a write that fails leaves the
  // old file as it was and no temporary file behind.
  const dir = path.join(tmp, "replace");
  fs.mkdirSync(dir);
  const target = path.join(dir, "seq.lukv");
  fs.writeFileSync(target, "old contents");
  seq.saveFile(target);
  expect(fs.readFileSync(target).equals(seq.save())).toBe(true);
  await seq.saveFileAsync(target);
  expect(fs.readFileSync(target).equals(seq.save())).toBe(true);
  fs.mkdirSync(path.join(dir, "a-directory"));
  expect(() => seq.saveFile(path.join(dir, "a-directory"))).toThrow(/EISDIR|EEXIST|ENOTEMPTY|EPERM/);
  await expect(seq.saveFileAsync(path.join(dir, "a-directory"))).rejects.toThrow(/EISDIR|EEXIST|ENOTEMPTY|EPERM/);
  expect(() => seq.saveFile(path.join(dir, "missing-folder", "seq.lukv"))).toThrow(/ENOENT/);
  expect(fs.readdirSync(dir).sort()).toEqual(["a-directory", "seq.lukv"]);
  expect(fs.readFileSync(target).equals(seq.save())).toBe(true);
  seq.dispose();
  expect(() => seq.save()).toThrow(/used after dispose/);
  await expect(seq.saveAsync()).rejects.toThrow(/used after dispose/);
  cache.dispose();
  expect(() => cache.loadSequence(bytes)).toThrow(/used after dispose/);
});

test("saving and loading run beside other sequences' calls: no other sequence is busy meanwhile", async () => {
  const r = rng(seed + 17);
  const cache = cacheOf("bf16");
  const a = buildSequence(cache, r), b = buildSequence(cache, r);
  const bytes = a.save();
  const saving = a.saveAsync();
  const loading = cache.loadSequenceAsync(bytes);
  expect(a.pending).toBe(1);
  appendAll([b], 3, r); // b is not held up by a's queue or by the load
  expect(b.lengths().length).toBe(shape.layers * shape.kvHeads);
  const [saved, loaded] = await Promise.all([saving, loading]);
  expect(saved.equals(bytes)).toBe(true);
  expectSame(a, loaded);
  expect(loaded.save().equals(bytes)).toBe(true);
  cache.dispose();
});

test("loadSequenceAsync copies the bytes at the call; a cache disposed before it finishes rejects", async () => {
  const r = rng(seed + 19);
  const cache = cacheOf("f16");
  const seq = buildSequence(cache, r);
  const bytes = seq.save();
  // The caller reuses its buffer right after the call (zeroed here): the load has its own copy.
  const reused = Buffer.from(bytes);
  const loading = cache.loadSequenceAsync(reused);
  reused.fill(0);
  expectSame(seq, await loading);
  cache.dispose();
  // Disposed while a long load runs (100 MB of rows): a DisposedError, or a sequence that says it
  // is disposed if the load settled first; never a live-looking sequence of a disposed cache.
  const big = new KVCache({ layers: 2, kvHeads: 2, headDim: 64, maxTokens: 1 << 19, dtype: "f32" });
  const long = big.createSequence();
  const rows = new Float32Array(50_000 * 2 * 64).fill(0.25);
  for (let l = 0; l < 2; l++) long.append(l, rows, rows);
  const late = big.loadSequenceAsync(long.save());
  await new Promise((resolve) => setImmediate(resolve)); // the load is queued or running
  big.dispose();
  const settled = await late.then(
    (s) => ({ disposed: s.disposed }),
    (e: Error) => ({ error: e.name }),
  );
  expect([{ disposed: true }, { error: "DisposedError" }]).toContainEqual(settled);
});

// A cache without checkFinite measures no bounds and saves 0 for them; a cache with it takes the
// bounds of the loaded rows themselves, so its checks refuse on the loaded sequence what they refuse
// on one whose rows were appended there.
describe.each([
  ["f32", 1e20],
  ["f16", 1e4],
  ["bf16", 1e30],
] as [DType, number][])("bounds of a sequence saved without checkFinite, %s", (dtype, big) => {
  test("a cache with checkFinite measures the loaded rows: its overflow checks still refuse", () => {
    const r = rng(seed + 41);
    const unchecked = cacheOf(dtype, { checkFinite: false }), checked = cacheOf(dtype);
    try {
      const { layers, kvHeads, queryHeads, headDim } = shape;
      const saved = unchecked.createSequence(), direct = checked.createSequence();
      for (let l = 0; l < layers; l++) {
        const k = randn(r, 6 * kvHeads * headDim).map((x) => x * big), v = randn(r, 6 * kvHeads * headDim).map((x) => x * big);
        for (const s of [saved, direct]) s.append(l, k, v);
      }
      // Queries whose scores overflow float32 against these keys (headDim x |q| x |k| above 2^120).
      const q = randn(r, queryHeads * headDim).map((x) => x * (2 ** 124 / big));
      const loaded = checked.loadSequence(saved.save());
      for (const s of [direct, loaded]) {
        expect(() => s.attend(1, q)).toThrow(InvalidArgumentError);
        expect(() => s.attend(1, q)).toThrow(/scores stay within float32/);
      }
      // Loaded into a cache without checkFinite, nothing is measured or refused, and no bounds are
      // kept: the file they save says 0 (bounds kept from a file understated rows appended later).
      const again = unchecked.loadSequence(loaded.save());
      expect(again.attend(1, q).length).toBe(q.length);
      const boundsOf = (b: Buffer) => layoutOf(b).layers.flatMap((at) => [b.readDoubleLE(at + 8), b.readDoubleLE(at + 16), b.readDoubleLE(at + 24)]);
      const keyAndValue = (x: number[]) => x.filter((_, i) => i % 3 !== 2);
      expect(keyAndValue(boundsOf(loaded.save())).every((x) => x > 0)).toBe(true);
      expect(boundsOf(again.save()).every((x) => x === 0)).toBe(true);
      // Modest queries attend the same on the loaded sequence as on the directly appended one.
      const small = randn(r, queryHeads * headDim).map((x) => x / big);
      expect(bytesOf(loaded.attend(2, small))).toEqual(bytesOf(direct.attend(2, small)));
    } finally {
      unchecked.dispose();
      checked.dispose();
    }
  });
});

test("a file whose rows hold a non-finite key loads into a cache without checkFinite, not into one with it", () => {
  const r = rng(seed + 43);
  const unchecked = cacheOf("f16", { checkFinite: false }), checked = cacheOf("f16");
  try {
    const seq = unchecked.createSequence();
    const k = randn(r, 4 * shape.kvHeads * shape.headDim);
    k[shape.headDim + 3] = 1e6; // KV head 1, stored as f16 infinity without checkFinite
    for (let l = 0; l < shape.layers; l++) seq.append(l, k, k.map((x) => Math.min(x, 1)));
    const bytes = seq.save();
    expect(unchecked.loadSequence(bytes).lengths()).toEqual(seq.lengths());
    rejects(checked, () => checked.loadSequence(bytes), BadSequenceFileError, /\(layer 0, KV head 1\) has a key that is not finite/);
  } finally {
    unchecked.dispose();
    checked.dispose();
  }
});

// Node makes Buffers of at most buffer.constants.MAX_LENGTH bytes (4 GiB on Node 20): a larger save
// is refused with a typed error (an external Buffer past it was freed twice and aborted the
// process). The limit is what the library passes; here a small one stands in for it.
test("a save larger than the largest Buffer is refused, sync and async, and the process goes on", async () => {
  const r = rng(seed + 47);
  const cache = cacheOf("f16");
  try {
    const seq = cache.createSequence();
    appendAll([seq], 8, r);
    const size = seq.save().length;
    const handle = (cache as unknown as { handle: { saveSequence(id: number, b: Float64Array, max: number): Buffer; saveSequenceAsync(id: number, b: Float64Array, max: number): Promise<Buffer> } }).handle;
    const bounds = new Float64Array(shape.layers * 3);
    const message = `The saved sequence would be ${size} bytes, more than the largest Buffer this Node.js makes (${size - 1} bytes): compress the sequence first`;
    expect(() => handle.saveSequence(seq.nativeId(), bounds, size - 1)).toThrow(expect.objectContaining({ code: "ERR_LUKV_INVALID_ARGUMENT", message }));
    await expect(handle.saveSequenceAsync(seq.nativeId(), bounds, size - 1)).rejects.toMatchObject({ code: "ERR_LUKV_INVALID_ARGUMENT", message });
    expect(handle.saveSequence(seq.nativeId(), bounds, size).length).toBe(size);
    expect((await handle.saveSequenceAsync(seq.nativeId(), bounds, size)).length).toBe(size);
  } finally {
    cache.dispose();
  }
});

describe("rejected inputs change nothing", () => {
  const r = rng(seed + 23);
  const cache = cacheOf("f16");
  const seq = buildSequence(cache, r, { mass: true });
  const bytes = seq.save();
  const layout = layoutOf(bytes);
  afterAll(() => cache.dispose());

  test("every header field mutated, with the checksum left stale and recomputed", () => {
    for (const f of HEADER_FIELDS) {
      for (let i = 0; i < f.bytes; i++) {
        const b = Buffer.from(bytes);
        b[f.offset + i] ^= 1 << (i % 8);
        rejects(cache, () => cache.loadSequence(b), BadSequenceFileError);
        const fixed = withChecksum(b);
        const want: Record<string, RegExp> = {
          magic: /magic/, version: /format version/, headerBytes: /header size/, fileBytes: /declares/,
          layers: /layers \d+ does not match/, kvHeads: /kvHeads \d+ does not match/, queryHeads: /queryHeads/,
          headDim: /headDim/, dtype: /dtype/, reserved: /reserved/,
          // Flag bit 0 (mass) flipped: the head sections no longer add up.
          flags: /flags|declares|runs past|bytes after/,
        };
        rejects(cache, () => cache.loadSequence(fixed), BadSequenceFileError, want[f.name]);
      }
    }
  });

  test("flipped payload bytes fail the checksum", () => {
    const rr = rng(seed + 29);
    for (let i = 0; i < 200; i++) {
      const b = Buffer.from(bytes);
      const at = HEADER_BYTES + Math.floor(rr() * (b.length - HEADER_BYTES));
      b[at] ^= 1 << Math.floor(rr() * 8);
      rejects(cache, () => cache.loadSequence(b), BadSequenceFileError, at >= b.length - 4 ? /checksum/ : /checksum/);
    }
  });

  test("truncated at every section boundary and at random lengths, also with the declared size and checksum made consistent", () => {
    const rr = rng(seed + 31);
    const cuts = [...new Set([0, 1, 7, 8, 12, 63, ...layout.boundaries, bytes.length - 4, bytes.length - 1])];
    for (let i = 0; i < 100; i++) cuts.push(Math.floor(rr() * bytes.length));
    for (const cut of cuts) {
      rejects(cache, () => cache.loadSequence(bytes.subarray(0, cut)), BadSequenceFileError);
      if (cut < HEADER_BYTES || cut >= bytes.length - 4) continue;
      // A shorter file that claims to be whole: the sections no longer add up.
      const b = Buffer.concat([bytes.subarray(0, cut), Buffer.alloc(4)]);
      b.writeBigUInt64LE(BigInt(b.length), 16);
      rejects(cache, () => cache.loadSequence(withChecksum(b)), BadSequenceFileError, /runs past the end|declares|bytes after/);
    }
    // Longer than declared.
    rejects(cache, () => cache.loadSequence(Buffer.concat([bytes, Buffer.alloc(1)])), BadSequenceFileError, /trailing/);
  });

  test("sections that do not add up, with a valid checksum: absurd counts, positions out of order or range, non-finite values", () => {
    const h0 = layout.heads[0], l0 = layout.layers[0];
    const edits: [string, (b: Buffer) => void, RegExp][] = [
      ["head length 2^32-1", (b) => b.writeUInt32LE(0xffffffff, h0), /declares 4294967295 entries/],
      ["head length + 1", (b) => b.writeUInt32LE(b.readUInt32LE(h0) + 1, h0), /position|runs past|declares|bytes after/],
      ["observation rows 2^32-1", (b) => b.writeUInt32LE(0xffffffff, l0 + 4), /declares 4294967295 entries/],
      ["negative appended", (b) => b.writeInt32LE(-1, l0), /negative appended/],
      ["appended below the positions", (b) => b.writeInt32LE(1, l0), /outside \[0, 1\)/],
      ["positions out of order", (b) => { const a = b.readInt32LE(h0 + 4), c = b.readInt32LE(h0 + 8); b.writeInt32LE(c, h0 + 4); b.writeInt32LE(a, h0 + 8); }, /out of order/],
      ["negative position", (b) => b.writeInt32LE(-5, h0 + 4), /position -5/],
      ["NaN bound", (b) => b.writeDoubleLE(NaN, l0 + 8), /bound/],
      ["negative bound", (b) => b.writeDoubleLE(-1, l0 + 16), /bound/],
      ["infinite observation value", (b) => b.writeFloatLE(Infinity, l0 + 32 + 4 * b.readUInt32LE(l0 + 4)), /observation row value/],
      ["NaN mass", (b) => b.writeFloatLE(NaN, h0 + 4 + 4 * b.readUInt32LE(h0)), /mass/],
      ["negative mass", (b) => b.writeFloatLE(-0.5, h0 + 4 + 4 * b.readUInt32LE(h0)), /has an attention mass that is negative or not finite/],
      // This cache checks its inputs (checkFinite): rows are checked as an append would check them.
      ["infinite key", (b) => b.writeUInt16LE(0xfc00, h0 + 4 + 8 * b.readUInt32LE(h0)), /\(layer 0, KV head 0\) has a key that is not finite/],
      ["NaN value", (b) => b.writeUInt16LE(0x7e01, h0 + 4 + 8 * b.readUInt32LE(h0) + (b.readUInt32LE(h0) + 1) * shape.headDim * 2 - 2), /has a value that is not finite/],
    ];
    for (const [name, edit, message] of edits) {
      const b = Buffer.from(bytes);
      edit(b);
      const err = rejects(cache, () => cache.loadSequence(withChecksum(b)), BadSequenceFileError, message);
      expect([name, err.code]).toEqual([name, "ERR_LUKV_BAD_SEQUENCE_FILE"]);
    }
  });

  test("another shape or dtype is named in the error", () => {
    const cases: [Partial<KVCacheOptions>, RegExp][] = [
      [{ layers: 2 }, /layers 3 does not match this cache's 2/],
      [{ kvHeads: 1, queryHeads: 4 }, /kvHeads 2 does not match this cache's 1/],
      [{ queryHeads: 8 }, /queryHeads 4 does not match this cache's 8/],
      [{ headDim: 16 }, /headDim 8 does not match this cache's 16/],
      [{ dtype: "bf16" }, /dtype f16 does not match this cache's bf16/],
      [{ dtype: "f32" }, /dtype f16 does not match this cache's f32/],
    ];
    for (const [opts, message] of cases) {
      const other = new KVCache({ ...shape, dtype: "f16", pageSize: 16, maxTokens: 4096, threads: 1, device: "cpu", ...opts });
      rejects(other, () => other.loadSequence(bytes), BadSequenceFileError, message);
      other.dispose();
    }
  });

  test("a pool without the pages throws OutOfPagesError and takes none", () => {
    const pages = Array.from(seq.lengths()).reduce((a, n) => a + Math.ceil(n / 4), 0);
    const small = cacheOf("f16", { pageSize: 4, maxTokens: (pages - 1) * 4 });
    rejects(small, () => small.loadSequence(bytes), OutOfPagesError, /loading the sequence needs \d+ free pages.*nothing was loaded/);
    const fits = cacheOf("f16", { pageSize: 4, maxTokens: pages * 4 });
    expectSame(seq, fits.loadSequence(bytes));
    expect(fits.usage().pagesUsed).toBe(fits.usage().pagesTotal);
    small.dispose();
    fits.dispose();
  });

  test("seeded mutation fuzz: 3000 inputs, only typed errors, pages unchanged", () => {
    const fr = rng(seed + 37);
    const int = (n: number) => Math.floor(fr() * n);
    // A small file keeps the fuzz fast.
    const small = cacheOf("f16", { layers: 3 });
    const sq = small.createSequence();
    appendAll([sq], 5, fr);
    attendAll([sq], 2, fr);
    sq.compress({ ratio: 0.4, allocation: "adakv", window: 2, sink: 1 });
    const base = sq.save();
    const { boundaries } = layoutOf(base);
    const nasty = [0, 1, 0x7f, 0x80, 0xff];
    let loaded = 0;
    const pagesBefore = small.usage().pagesUsed;
    for (let i = 0; i < 3000; i++) {
      let b: Buffer = Buffer.from(base);
      const ops = 1 + int(3);
      for (let o = 0; o < ops; o++) {
        const kind = int(7);
        if (kind === 0) b[int(b.length)] ^= 1 << int(8);
        else if (kind === 1) b[int(b.length)] = nasty[int(nasty.length)];
        else if (kind === 2) b = b.subarray(0, int(b.length + 1));
        else if (kind === 3) b = Buffer.concat([b.subarray(0, int(b.length)), Buffer.alloc(1 + int(8), nasty[int(5)]), b.subarray(int(b.length))]);
        else if (kind === 4) {
          // A 32-bit field at a section boundary set to a nasty value.
          const at = boundaries[int(boundaries.length)] - 4 * int(2);
          if (at >= 0 && at + 4 <= b.length) b.writeUInt32LE([0, 1, 0x7fffffff, 0x80000000, 0xffffffff][int(5)], at);
        } else if (kind === 5 && b.length >= 24) b.writeBigUInt64LE(BigInt(int(2) ? b.length : int(1 << 20)), 16);
        else b = Buffer.from(b.subarray(int(b.length)));
      }
      if (int(2) && b.length >= 4) b = withChecksum(b);
      try {
        const got = small.loadSequence(b);
        loaded++;
        got.dispose();
      } catch (e) {
        if (!(e instanceof BadSequenceFileError)) throw new Error(`input ${i} (seed ${seed}): ${String(e)}`);
      }
      if (small.usage().pagesUsed !== pagesBefore) throw new Error(`input ${i} (seed ${seed}) changed the pages in use`);
    }
    // Mutated rows under a recomputed checksum load (the format does not judge the numbers).
    expect(loaded).toBeGreaterThan(0);
    expect(small.usage().sequences).toBe(1);
    small.dispose();
  });
});

// The use case: a long document compressed once, saved, and loaded for each question.
const modelDir = path.join(__dirname, "..", "models", "tiny-lm");
const modelPresent = MODEL_FILES.every((f) => fs.existsSync(path.join(modelDir, f)));
(modelPresent ? test : test.skip)("tiny-lm: a compressed prompt saved once answers the same from two loaded copies as the original", () => {
  const model = loadTinyLM(modelDir);
  const tok = model.tokenizer!;
  const doc = modelTexts(modelDir, "heldout").find((t) => t.name.includes("handbook"))!.text;
  const prompt = [tok.bos!, ...tok.encode(doc)].slice(0, 320);
  const cache = model.createCache({ dtype: "f16", contextTokens: 1024, pageSize: 16 });
  const original = cache.createSequence();
  model.forward(original, prompt, { logits: "none", chunk: 64 });
  const report = original.compress({ ratio: 0.7, scorer: "snapkv", allocation: "adakv" });
  expect(report.total).toBeLessThan(report.before * 0.4);
  const file = path.join(tmp, "prompt.lukv");
  original.saveFile(file);
  const other = model.createCache({ dtype: "f16", contextTokens: 1024, pageSize: 8 });
  const copies = [cache.loadSequence(file), other.loadSequence(file)];
  const question = tok.encode("\n\nQuestion: what does the package manager install?\nAnswer:");
  const answer = (seq: Sequence) => {
    const logits = model.forward(seq, question);
    const gen = model.generate(seq, logits, 8);
    return { first: Buffer.from(bytesOf(logits)), tokens: gen.tokens };
  };
  const want = answer(original);
  expect(want.tokens.length).toBe(8);
  expect(want.tokens[0]).toBe(argmax(new Float32Array(want.first.buffer, want.first.byteOffset, want.first.length / 4)));
  for (const c of copies) {
    const got = answer(c);
    expect(got.first.equals(want.first)).toBe(true);
    expect(got.tokens).toEqual(want.tokens);
  }
  cache.dispose();
  other.dispose();
});
