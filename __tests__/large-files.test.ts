// Saved sequences and profiler samples are read and written in pieces (Node refuses one read or write
// of 2 GiB or more, and whole-file reads over 2 GiB). A piece size of a few KiB stands in for the
// real 1 GiB: round trips through many pieces are bit for bit, a file truncated on disk or shrinking
// while read is a typed error with nothing allocated, and one larger than the largest Buffer is
// refused before anything is read.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { spawn } from "child_process";
import { KVCache, Sequence, BadSequenceFileError, BadProfileError, LukvError } from "../ts";
import { Profiler } from "../ts/profiler";
import { openSamples, writeSamples, type StoredOptions, type StoredSample } from "../ts/profiler/store";
import { setFileLimits } from "../ts/sequence-file";
import { rng, testSeed, randn } from "./helpers/random";
import { snapshot } from "./helpers/saved";

// The fs module the library calls (its import reads the properties of this object at each call).
const nodeFs: typeof fs = require("fs");

const seed = testSeed("large-files");
const CHUNK = 4096;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-large-"));
let fresh = 0;
const fileIn = (name: string) => path.join(tmp, `${fresh++}-${name}`);

/** Cuts `file` to `size` bytes once `reads` readSync calls have read from it (a file that shrinks while read). */
function truncateWhileRead(file: string, reads: number, size: number): void {
  const real = nodeFs.readSync;
  let calls = 0;
  jest.spyOn(nodeFs, "readSync").mockImplementation(((...args: Parameters<typeof fs.readSync>) => {
    if (calls++ === reads) fs.truncateSync(file, size);
    return real(...args);
  }) as typeof fs.readSync);
}

let cache: KVCache;
let seq: Sequence;
let bytes: Buffer;
beforeAll(() => {
  const r = rng(seed);
  cache = new KVCache({ layers: 2, kvHeads: 2, queryHeads: 4, headDim: 8, dtype: "f32", pageSize: 16, maxTokens: 4096, threads: 1, device: "cpu" });
  seq = cache.createSequence();
  for (let l = 0; l < 2; l++) seq.append(l, randn(r, 397 * 2 * 8), randn(r, 397 * 2 * 8));
  seq.attend(0, randn(r, 3 * 4 * 8));
  bytes = seq.save();
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
  cache?.dispose();
});
beforeEach(() => setFileLimits({ chunkBytes: CHUNK }));
afterEach(() => {
  setFileLimits();
  jest.restoreAllMocks();
});

/** The length argument of every call so far of a spy on fs.readSync / fs.writeSync (fd, buffer, offset, length, position). */
const lengths = (spy: jest.SpyInstance) => spy.mock.calls.map((c) => c[3] as number);
/** The same for FileHandle read / write (buffer, offset, length, position). */
const handleLengths = (spy: jest.SpyInstance) => spy.mock.calls.map((c) => c[2] as number);

/** Runs fn, which must throw (or reject with) `type` matching `message`, and checks the pool is as it was. */
async function rejects(fn: () => unknown, type: new (m: string) => LukvError, message: RegExp | string): Promise<void> {
  const before = cache.usage();
  let err: unknown;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(type);
  expect((err as Error).message).toMatch(message);
  expect(cache.usage()).toEqual(before);
}

/** The FileHandle class's prototype (its read and write are what the async calls use). */
async function fileHandleProto(): Promise<fs.promises.FileHandle> {
  const h = await fs.promises.open(__filename, "r");
  await h.close();
  return Object.getPrototypeOf(h);
}

describe("saved sequences", () => {
  test("the saved bytes span many pieces and are not a multiple of one", () => {
    expect(bytes.length).toBeGreaterThan(20 * CHUNK);
    expect(bytes.length % CHUNK).not.toBe(0);
  });

  test.each([CHUNK, CHUNK + 3, 1000, 7])("saveFile / loadSequence(path) in pieces of %i bytes, bit for bit", (chunk) => {
    setFileLimits({ chunkBytes: chunk });
    const file = fileIn("s.lukv");
    const writes = jest.spyOn(nodeFs, "writeSync");
    seq.saveFile(file);
    expect(Math.max(...lengths(writes))).toBe(chunk);
    expect(writes.mock.calls.length).toBe(Math.ceil(bytes.length / chunk));
    expect(fs.readFileSync(file).equals(bytes)).toBe(true);
    const reads = jest.spyOn(nodeFs, "readSync");
    const loaded = cache.loadSequence(file);
    expect(Math.max(...lengths(reads))).toBe(chunk);
    expect(reads.mock.calls.length).toBe(Math.ceil(bytes.length / chunk));
    expect(snapshot(loaded)).toEqual(snapshot(seq));
    expect(loaded.save().equals(bytes)).toBe(true);
    loaded.dispose();
    fs.rmSync(file);
  });

  test.each([CHUNK, CHUNK + 3, 1000])("saveFileAsync / loadSequenceAsync(path) in pieces of %i bytes, bit for bit", async (chunk) => {
    setFileLimits({ chunkBytes: chunk });
    const file = fileIn("a.lukv");
    const proto = await fileHandleProto();
    const writes = jest.spyOn(proto, "write");
    await seq.saveFileAsync(file);
    expect(Math.max(...handleLengths(writes))).toBe(chunk);
    expect(writes.mock.calls.length).toBe(Math.ceil(bytes.length / chunk));
    expect(fs.readFileSync(file).equals(bytes)).toBe(true);
    const reads = jest.spyOn(proto, "read");
    const loaded = await cache.loadSequenceAsync(file);
    expect(Math.max(...handleLengths(reads))).toBe(chunk);
    expect(reads.mock.calls.length).toBe(Math.ceil(bytes.length / chunk));
    expect(snapshot(loaded)).toEqual(snapshot(seq));
    loaded.dispose();
    // Read by the other call: the two forms write the same file.
    const again = cache.loadSequence(file);
    expect(again.save().equals(bytes)).toBe(true);
    again.dispose();
  });

  test("the default pieces are 1 GiB: a small file is one call", () => {
    setFileLimits();
    const file = fileIn("d.lukv");
    const writes = jest.spyOn(nodeFs, "writeSync");
    seq.saveFile(file);
    expect(lengths(writes)).toEqual([bytes.length]);
    const reads = jest.spyOn(nodeFs, "readSync");
    cache.loadSequence(file).dispose();
    expect(lengths(reads)).toEqual([bytes.length]);
  });

  test("a file truncated on disk, at a piece boundary or within a piece: BadSequenceFileError, nothing allocated", async () => {
    const file = fileIn("t.lukv");
    seq.saveFile(file);
    for (const size of [bytes.length - 1, 10 * CHUNK, 10 * CHUNK + 17, 100, 0]) {
      fs.truncateSync(file, size);
      const want = size === 0 ? /does not start with the lukv sequence magic bytes/ : size < 68 ? /truncated: \d+ bytes, shorter than the/ : new RegExp(`truncated: the header declares ${bytes.length} bytes but ${size} were given`);
      await rejects(() => cache.loadSequence(file), BadSequenceFileError, want);
      await rejects(() => cache.loadSequenceAsync(file), BadSequenceFileError, want);
    }
  });

  test("a file that shrinks while read gives the bytes read, found truncated (not the rest of the Buffer)", async () => {
    const file = fileIn("shrink.lukv");
    seq.saveFile(file);
    const cut = 5 * CHUNK + 9;
    truncateWhileRead(file, 3, cut);
    await rejects(() => cache.loadSequence(file), BadSequenceFileError, `truncated: the header declares ${bytes.length} bytes but ${cut} were given`);
    jest.restoreAllMocks();

    seq.saveFile(file);
    const proto = await fileHandleProto();
    const realRead = proto.read;
    let asyncCalls = 0;
    jest.spyOn(proto, "read").mockImplementation(function (this: fs.promises.FileHandle, ...args: unknown[]) {
      if (asyncCalls++ === 3) fs.truncateSync(file, cut);
      return (realRead as (...a: unknown[]) => Promise<fs.promises.FileReadResult<Uint8Array>>).apply(this, args);
    } as never);
    await rejects(() => cache.loadSequenceAsync(file), BadSequenceFileError, `truncated: the header declares ${bytes.length} bytes but ${cut} were given`);
  });

  test("a file larger than the largest Buffer is refused before it is read, naming the path and both sizes", async () => {
    const file = fileIn("big.lukv");
    seq.saveFile(file);
    setFileLimits({ chunkBytes: CHUNK, maxBytes: bytes.length - 1 });
    const reads = jest.spyOn(nodeFs, "readSync");
    const message = `"${file}" is ${bytes.length} bytes, more than the largest Buffer this Node.js makes (${bytes.length - 1} bytes): it cannot be loaded here`;
    await rejects(() => cache.loadSequence(file), BadSequenceFileError, message);
    await rejects(() => cache.loadSequenceAsync(file), BadSequenceFileError, message);
    expect(reads).not.toHaveBeenCalled();
    setFileLimits({ chunkBytes: CHUNK, maxBytes: bytes.length });
    const loaded = cache.loadSequence(file);
    expect(loaded.save().equals(bytes)).toBe(true);
    loaded.dispose();
  });

  test("missing files and directories give the file system's errors, as before", async () => {
    const missing = path.join(tmp, "no-such.lukv");
    const enoent = { code: "ENOENT", message: `ENOENT: no such file or directory, open '${missing}'` };
    expect(() => cache.loadSequence(missing)).toThrow(expect.objectContaining(enoent));
    await expect(cache.loadSequenceAsync(missing)).rejects.toMatchObject(enoent);
    expect(() => cache.loadSequence(tmp)).toThrow(expect.objectContaining({ code: "EISDIR" }));
    await expect(cache.loadSequenceAsync(tmp)).rejects.toMatchObject({ code: "EISDIR" });
    expect(fs.readdirSync(tmp).filter((f) => f.endsWith(".tmp"))).toEqual([]);
  });

  const posix = process.platform === "win32" ? test.skip : test;
  posix("a pipe (no size) is read to its end; past the largest Buffer it is refused", async () => {
    const file = fileIn("p.lukv");
    seq.saveFile(file);
    const fifo = fileIn("fifo");
    await new Promise<void>((ok, fail) => spawn("mkfifo", [fifo]).on("exit", (c) => (c === 0 ? ok() : fail(new Error(`mkfifo ${c}`)))));
    const feed = () => {
      const child = spawn("sh", ["-c", 'cat "$1" > "$2" 2>/dev/null', "sh", file, fifo], { stdio: "ignore" });
      return new Promise<void>((ok) => child.on("exit", () => ok()));
    };
    let fed = feed();
    const loaded = cache.loadSequence(fifo);
    await fed;
    expect(loaded.save().equals(bytes)).toBe(true);
    loaded.dispose();
    fed = feed();
    const viaAsync = await cache.loadSequenceAsync(fifo);
    await fed;
    expect(viaAsync.save().equals(bytes)).toBe(true);
    viaAsync.dispose();
    setFileLimits({ chunkBytes: CHUNK, maxBytes: bytes.length - 1 });
    fed = feed();
    await rejects(() => cache.loadSequence(fifo), BadSequenceFileError, `"${fifo}" holds more than the largest Buffer this Node.js makes (${bytes.length - 1} bytes)`);
    await fed;
  });

  test("a write that fails partway leaves the old file and no temporary file, sync and async", async () => {
    const file = fileIn("w.lukv");
    fs.writeFileSync(file, "old contents");
    const real = nodeFs.writeSync;
    let calls = 0;
    jest.spyOn(nodeFs, "writeSync").mockImplementation(((...args: Parameters<typeof fs.writeSync>) => {
      if (calls++ === 5) throw Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
      return (real as (...a: unknown[]) => number)(...args);
    }) as typeof fs.writeSync);
    expect(() => seq.saveFile(file)).toThrow(/ENOSPC/);
    jest.restoreAllMocks();
    const proto = await fileHandleProto();
    const realWrite = proto.write;
    let asyncCalls = 0;
    jest.spyOn(proto, "write").mockImplementation(function (this: fs.promises.FileHandle, ...args: unknown[]) {
      if (asyncCalls++ === 5) return Promise.reject(Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" }));
      return (realWrite as (...a: unknown[]) => Promise<unknown>).apply(this, args);
    } as never);
    await expect(seq.saveFileAsync(file)).rejects.toThrow(/ENOSPC/);
    expect(fs.readFileSync(file, "utf8")).toBe("old contents");
    expect(fs.readdirSync(tmp).filter((f) => f.endsWith(".tmp"))).toEqual([]);
  });
});

describe("profiler samples", () => {
  const options: StoredOptions = { layers: 2, kvHeads: 3, scorer: "knorm", scorerOptions: {}, sink: 0, window: 0, grid: 9, scope: "global" };

  /** A sample of random float32 bit patterns (NaN payloads included) with uneven head lengths. */
  function randomSample(r: () => number, lengths: number[]): StoredSample {
    const offsets = new Float64Array(lengths.length + 1);
    lengths.forEach((t, i) => (offsets[i + 1] = offsets[i] + t));
    const total = offsets[lengths.length];
    const bits = () => new Float32Array(Uint32Array.from({ length: total }, () => Math.floor(r() * 2 ** 32)).buffer);
    return { lengths: Int32Array.from(lengths), offsets, scores: bits(), oracle: bits(), decodeSteps: 3 };
  }

  const bitsOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

  test("writeSamples / openSamples in pieces, bit for bit, file sizes not multiples of a piece", () => {
    const r = rng(seed + 1);
    const samples = [randomSample(r, [700, 1, 513, 999, 2, 1024]), randomSample(r, [1, 1, 1, 1, 1, 3])];
    const dir = fileIn("samples");
    const writes = jest.spyOn(nodeFs, "writeSync");
    writeSamples(dir, options, samples);
    expect(Math.max(...lengths(writes))).toBe(CHUNK);
    const size = fs.statSync(path.join(dir, "sample-000000.f32")).size;
    expect(size).toBe(8 * 3239);
    expect(size % CHUNK).not.toBe(0);
    const reads = jest.spyOn(nodeFs, "readSync");
    const opened = openSamples(dir);
    samples.forEach((s, i) => {
      const back = opened.read(i);
      expect(bitsOf(back.scores).equals(bitsOf(s.scores))).toBe(true);
      expect(bitsOf(back.oracle).equals(bitsOf(s.oracle))).toBe(true);
      expect(Array.from(back.lengths)).toEqual(Array.from(s.lengths));
      expect(back.decodeSteps).toBe(3);
    });
    expect(Math.max(...lengths(reads))).toBe(CHUNK);
    expect(reads.mock.calls.length).toBeGreaterThanOrEqual(2 * Math.ceil((4 * 3239) / CHUNK));
  });

  test("Profiler.save / Profiler.load in pieces give the same profiler and the same files", () => {
    const r = rng(seed + 2);
    const p = new Profiler({ layers: 2, kvHeads: 2, sink: 2, window: 4, scorer: "knorm" });
    for (let k = 0; k < 3; k++) {
      const head = () => {
        const t = 1500 + Math.floor(r() * 900);
        return { scores: randn(r, t), oracle: Float32Array.from(randn(r, t), (x) => Math.exp(x)) };
      };
      const grid = () => [0, 1].map(() => [0, 1].map(head));
      const heads = grid();
      p.addSample({ scores: heads.map((l) => l.map((h) => h.scores)), oracle: heads.map((l) => l.map((h) => h.oracle)) });
    }
    const dir = fileIn("profiler");
    p.save(dir);
    const back = Profiler.load(dir);
    expect(back.build()).toEqual(p.build());
    const again = fileIn("profiler-again");
    back.save(again);
    for (const f of fs.readdirSync(dir)) expect(fs.readFileSync(path.join(again, f)).equals(fs.readFileSync(path.join(dir, f)))).toBe(true);
  });

  test("a sample file truncated on disk, or shrinking while read, is a BadProfileError", () => {
    const r = rng(seed + 3);
    const dir = fileIn("short");
    writeSamples(dir, options, [randomSample(r, [900, 800, 700, 600, 500, 400])]);
    const file = path.join(dir, "sample-000000.f32");
    const full = 8 * 3900;
    const message = (size: number) => `${file} has ${size} bytes but its 3900 tokens need ${full} (float32 scores, then float32 oracle)`;
    fs.truncateSync(file, full - 5);
    expect(() => openSamples(dir).read(0)).toThrow(new BadProfileError(message(full - 5)));
    writeSamples(dir, options, [randomSample(r, [900, 800, 700, 600, 500, 400])]);
    const cut = 3 * CHUNK + 1;
    truncateWhileRead(file, 2, cut);
    expect(() => openSamples(dir).read(0)).toThrow(new BadProfileError(message(cut)));
  });

  test("a sample of more values than the largest typed array is refused before it is read", () => {
    const r = rng(seed + 4);
    const dir = fileIn("big");
    const s = randomSample(r, [9, 9, 9, 9, 9, 9]);
    writeSamples(dir, options, [s]);
    setFileLimits({ chunkBytes: CHUNK, maxBytes: 53 });
    const reads = jest.spyOn(nodeFs, "readSync");
    const file = path.join(dir, "sample-000000.f32");
    expect(() => openSamples(dir).read(0)).toThrow(
      new BadProfileError(`${file} has 432 bytes: its 54 tokens are more float32 values than the largest typed array this Node.js makes (53)`),
    );
    expect(reads).not.toHaveBeenCalled();
    setFileLimits({ chunkBytes: CHUNK, maxBytes: 54 });
    expect(bitsOf(openSamples(dir).read(0).oracle).equals(bitsOf(s.oracle))).toBe(true);
  });

  test("a missing sample file gives the file system's error", () => {
    const r = rng(seed + 5);
    const dir = fileIn("gone");
    writeSamples(dir, options, [randomSample(r, [1, 2, 3, 4, 5, 6])]);
    const file = path.join(dir, "sample-000000.f32");
    fs.rmSync(file);
    expect(() => openSamples(dir).read(0)).toThrow(expect.objectContaining({ code: "ENOENT", message: `ENOENT: no such file or directory, open '${file}'` }));
  });
});
