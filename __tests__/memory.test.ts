// Host memory: page bookkeeping grows with use (a pool of 2^27 one-token pages costs nothing up
// front), and the addon reports its memory to V8, so caches dropped without dispose() are collected
// as their memory grows instead of piling up until some later GC.
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as path from "path";
import { KVCache } from "../ts";

const entry = path.resolve(__dirname, "..", "dist", "ts", "index.js");

test("pageSize 1 and maxTokens 2**27: construction writes no per-page bookkeeping", () => {
  const rss0 = process.memoryUsage().rss;
  const t0 = Date.now();
  const cache = new KVCache({ layers: 1, kvHeads: 1, headDim: 8, pageSize: 1, maxTokens: 2 ** 27, dtype: "f16", threads: 1 });
  try {
    const ms = Date.now() - t0;
    const grownMiB = (process.memoryUsage().rss - rss0) / 2 ** 20;
    // Eager bookkeeping wrote 8 bytes per page: 1 GiB and about a second.
    expect(grownMiB).toBeLessThan(64);
    expect(ms).toBeLessThan(500);
    expect(cache.usage().pagesTotal).toBe(2 ** 27);
    const seq = cache.createSequence();
    seq.append(0, new Float32Array(3 * 8).fill(1), new Float32Array(3 * 8).fill(2));
    const fork = seq.fork();
    fork.append(0, new Float32Array(8), new Float32Array(8));
    expect(cache.usage().pagesUsed).toBe(4);
    expect(Array.from(fork.keys(0, 0).subarray(0, 8))).toEqual(Array(8).fill(1));
    seq.dispose();
    fork.dispose();
    expect(cache.usage().pagesUsed).toBe(0);
  } finally {
    cache.dispose();
  }
});

// Runs in a child process so that its RSS and thread count are its own; no explicit gc().
const dropped = `
const fs = require("fs");
const { KVCache } = require(process.argv[1]);
const threads = () => Number(/Threads:\\s+(\\d+)/.exec(fs.readFileSync("/proc/self/status", "utf8"))[1]);
(async () => {
  const k = new Float32Array(1024 * 8 * 128).fill(0.5);
  const rss0 = process.memoryUsage().rss, t0 = threads();
  let peak = rss0, peakThreads = t0;
  for (let i = 0; i < 100; i++) {
    // 8 MiB of pages written per cache (none with "unwritten"), then the cache is dropped without dispose().
    const c = new KVCache({ layers: 1, kvHeads: 8, headDim: 128, pageSize: 16, maxTokens: 8192, dtype: "f32", threads: 2 });
    if (process.argv[2] !== "unwritten") c.createSequence().append(0, k, k);
    await new Promise(setImmediate);
    peak = Math.max(peak, process.memoryUsage().rss);
    peakThreads = Math.max(peakThreads, threads());
  }
  console.log(JSON.stringify({ peakMiB: (peak - rss0) / 2 ** 20, peakThreads: peakThreads - t0 }));
})();
`;

test("100 caches of 8 MiB dropped without dispose(): memory and threads do not pile up", () => {
  expect(fs.existsSync(entry)).toBe(true); // built by `npm ci` (prepare) or `npm run build:ts`
  const out = execFileSync(process.execPath, ["-e", dropped, entry], { encoding: "utf8" });
  const { peakMiB, peakThreads } = JSON.parse(out.trim().split("\n").pop()!);
  // eslint-disable-next-line no-console
  console.log(`memory: 100 dropped caches of 8 MiB peaked at +${Math.round(peakMiB)} MiB RSS and +${peakThreads} threads`);
  // Without the report to V8 they all stay until a GC: +800 MiB and +100 threads.
  expect(peakMiB).toBeLessThan(300);
  expect(peakThreads).toBeLessThan(40);
});

// save() writes into a Buffer of V8's own: the collector frees it. An external Buffer's memory
// waited for its finalizer, which runs only after the current turn of the event loop, so
// synchronous saves in a loop piled up (24 saves of 32 MiB: +770 MiB).
const saves = `
const { KVCache } = require(process.argv[1]);
const c = new KVCache({ layers: 2, kvHeads: 8, queryHeads: 8, headDim: 128, dtype: "f16", maxTokens: 2 * 8 * 4200, checkFinite: false });
const s = c.createSequence();
const rows = new Float32Array(1024 * 8 * 128).map((_, i) => Math.sin(i));
for (let l = 0; l < 2; l++) for (let d = 0; d < 4096; d += 1024) s.append(l, rows, rows);
const base = process.memoryUsage().rss;
let peak = base, bytes = 0;
for (let i = 0; i < 24; i++) { bytes = s.save().length; peak = Math.max(peak, process.memoryUsage().rss); }
console.log(JSON.stringify({ growthMiB: (peak - base) / 2 ** 20, sizeMiB: bytes / 2 ** 20 }));
`;

test("24 synchronous saves of 32 MiB in a loop: their Buffers do not pile up", () => {
  const out = execFileSync(process.execPath, ["-e", saves, entry], { encoding: "utf8" });
  const { growthMiB, sizeMiB } = JSON.parse(out.trim().split("\n").pop()!);
  // eslint-disable-next-line no-console
  console.log(`memory: 24 saves of ${sizeMiB.toFixed(1)} MiB grew RSS by ${Math.round(growthMiB)} MiB`);
  expect(sizeMiB).toBeGreaterThan(30);
  expect(growthMiB).toBeLessThan(8 * sizeMiB);
});

test("100 caches dropped before they wrote a page: their threads do not pile up either", () => {
  // They hold almost no memory, but a kernel thread each; the addon counts each such thread as the
  // 8 MiB stack it reserves, so V8 collects them (100 piled up, with 1.5 GiB of stacks, before).
  const out = execFileSync(process.execPath, ["-e", dropped, entry, "unwritten"], { encoding: "utf8" });
  const { peakThreads } = JSON.parse(out.trim().split("\n").pop()!);
  expect(peakThreads).toBeLessThan(40);
});

test("dispose() gives a pool's memory back to the system, also once the C heap would keep such a block", () => {
  // The pool was a C heap block: once a larger freed block had raised glibc's threshold for mapping
  // blocks of their own, a pool below it came from the heap and stayed resident after dispose().
  const script = `
const fs = require("fs");
const { KVCache } = require(process.argv[1]);
const rss = () => Number(/VmRSS:\\s+(\\d+)/.exec(fs.readFileSync("/proc/self/status", "utf8"))[1]) * 1024;
const k = new Float32Array(256 * 8 * 128).fill(0.5);
const fillAndDispose = () => {
  const before = rss();
  // 16 MiB: glibc maps blocks of their own only up to a threshold that rises to 32 MiB.
  const c = new KVCache({ layers: 1, kvHeads: 8, headDim: 128, pageSize: 16, maxTokens: 2048 * 8, dtype: "f32", threads: 1 });
  const s = c.createSequence();
  for (let t = 0; t < 2048; t += 256) s.append(0, k, k);
  const filled = rss();
  c.dispose();
  return { filled: (filled - before) / 2 ** 20, after: (rss() - before) / 2 ** 20 };
};
(async () => {
  const rounds = [fillAndDispose()];
  // A large buffer freed (the keys of a long prompt, say): V8 frees it after a collection.
  let big = new Float32Array(6 * 2 ** 20);
  big.fill(1);
  big = null;
  for (let i = 0; i < 3; i++) {
    global.gc();
    await new Promise((done) => setTimeout(done, 30));
  }
  rounds.push(fillAndDispose(), fillAndDispose());
  console.log(JSON.stringify(rounds));
})();
`;
  const out = execFileSync(process.execPath, ["--expose-gc", "-e", script, entry], { encoding: "utf8" });
  const rounds = JSON.parse(out.trim().split("\n").pop()!) as { filled: number; after: number }[];
  // MiB: 16 written each time, then given back each time.
  expect(rounds.map((r) => [r.filled > 12, r.after < 6])).toEqual([[true, true], [true, true], [true, true]]);
});

test("trim() gives wholly free 2 MiB regions back; sequences keep theirs, forks too, and the pages are taken again", () => {
  if (process.platform !== "linux") return; // the pool's memory is advised away on Linux only
  const script = `
const fs = require("fs");
const { KVCache } = require(process.argv[1]);
const rss = () => Number(/VmRSS:\\s+(\\d+)/.exec(fs.readFileSync("/proc/self/status", "utf8"))[1]) * 1024;
const MiB = 2 ** 20;
const shape = { layers: 1, kvHeads: 8, queryHeads: 16, headDim: 128, pageSize: 16, maxTokens: 8 * 8192, dtype: "f16", threads: 1 };
const noise = Float32Array.from({ length: 256 * 8 * 128 + 4096 }, (_, i) => Math.sin(i * 0.37) * Math.cos(i * 0.011) * 0.5);
const rows = (seed, n) => noise.subarray(seed % 4096, (seed % 4096) + n);
const q = rows(99, 16 * 128);
// Two caches fed the same rows; only the first is trimmed.
const [a, b] = [new KVCache(shape), new KVCache(shape)];
const fill = (c) => Array.from({ length: 8 }, (_, s) => {
  const seq = c.createSequence();
  for (let t = 0; t < 1024; t += 256) seq.append(0, rows(s * 10 + t, 256 * 8 * 128), rows(s * 10 + t + 5, 256 * 8 * 128));
  return seq;
});
const [sa, sb] = [fill(a), fill(b)];
const r0 = rss();
const out = {};
for (const s of [0, 1, 2, 3, 4, 5]) { sa[s].dispose(); sb[s].dispose(); }
// A fork shares sequence 7's pages: its eviction frees pages of its own only.
const [fa, fb] = [sa[7].fork(), sb[7].fork()];
for (const f of [fa, fb]) { f.append(0, rows(70, 8 * 128), rows(71, 8 * 128)); f.compress({ ratio: 0.5, scorer: "knorm" }); }
out.trimmedMiB = a.trim() / MiB;
out.rssDropMiB = (r0 - rss()) / MiB;
out.again = a.trim();
const same = (x, y) => Buffer.from(x.buffer).equals(Buffer.from(y.buffer));
out.keptSame = [6, 7].every((s) => same(sa[s].attend(0, q), sb[s].attend(0, q))) && same(fa.attend(0, q), fb.attend(0, q));
// The freed pages are taken again (zeroed by the system, then written): the same results.
const [na, nb] = [a.createSequence(), b.createSequence()];
for (const [c, n] of [[a, na], [b, nb]]) for (let t = 0; t < 4096; t += 256) n.append(0, rows(500 + t, 256 * 8 * 128), rows(600 + t, 256 * 8 * 128));
out.newSame = same(na.attend(0, q), nb.attend(0, q)) && a.usage().pagesUsed === b.usage().pagesUsed;
// Pages of two sequences taken in turns: one disposed, its free pages sit among the other's, in
// no free 2 MiB region, so nothing is given back (the kernel would merge such a run back).
const mixed = new KVCache(shape);
const [m0, m1] = [mixed.createSequence(), mixed.createSequence()];
for (let t = 0; t < 2048; t += 16) for (const m of [m0, m1]) m.append(0, rows(t, 16 * 8 * 128), rows(t + 1, 16 * 8 * 128));
m0.dispose();
out.interleaved = mixed.trim();
m1.dispose();
out.allFreeMiB = mixed.trim() / MiB;
mixed.dispose();
const small = new KVCache({ ...shape, maxTokens: 8 * 16 * 2 });
const s1 = small.createSequence();
s1.append(0, rows(1, 8 * 128), rows(2, 8 * 128));
s1.dispose();
out.small = small.trim();
a.dispose();
try { a.trim(); } catch (e) { out.disposed = e.name; }
console.log(JSON.stringify(out));
`;
  const out = JSON.parse(execFileSync(process.execPath, ["-e", script, entry], { encoding: "utf8" }).trim().split("\n").pop()!);
  // 6 of 8 sequences of 4 MiB each disposed (24 MiB), less the 2 MiB regions holding pages the fork
  // then took (its append's and its compaction's copies); the 8 MiB of sequences 6 and 7 are kept.
  expect(out.trimmedMiB).toBeGreaterThanOrEqual(20);
  expect(out.trimmedMiB).toBeLessThanOrEqual(24);
  expect(out.rssDropMiB).toBeGreaterThan(16);
  expect(out).toMatchObject({ again: 0, keptSame: true, newSame: true, small: 0, disposed: "DisposedError", interleaved: 0 });
  // Both sequences' 8 MiB (2048 tokens x 8 heads x 128 x 2 bytes x 2) once the second is gone too
  expect(out.allFreeMiB).toBe(16);
});

test("an append of 2^31 tokens is refused with nothing appended (the count turned negative as an int: it appended nothing and said nothing)", () => {
  // 4 GiB of zeros, never written: the pages stay unmapped until read, and nothing reads them.
  const big = new Uint16Array(2 ** 31);
  using cache = new KVCache({ layers: 1, kvHeads: 1, queryHeads: 1, headDim: 1, dtype: "f16", maxTokens: 64 });
  const seq = cache.createSequence();
  const message = "Expected at most 2147483647 tokens ([tokens, kvHeads, headDim]; a sequence holds at most that many positions) for keys but received Uint16Array(2147483648)";
  expect(() => seq.append(0, big, big)).toThrow(message);
  expect(() => cache.appendBatch(0, [{ sequence: seq, keys: big, values: big }])).toThrow(`${message.replace("for keys", "for items[0].keys")}`);
  expect(() => cache.handle.append(seq.nativeId(), 0, big, big)).toThrow("Expected at most 2147483647 tokens of keys (a sequence holds at most that many positions)");
  expect(seq.appended(0)).toBe(0);
  expect(cache.usage().pagesUsed).toBe(0);
});
