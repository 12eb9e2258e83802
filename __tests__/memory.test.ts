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
