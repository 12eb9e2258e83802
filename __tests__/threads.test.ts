// The addon is context-aware: it loads and works in worker_threads next to the main thread.
import * as path from "path";
import * as fs from "fs";
import * as os from "os";
import { spawnSync } from "child_process";
import { Worker } from "worker_threads";
import { KVCache, backends } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";

const seed = testSeed("threads");
const entry = path.resolve(__dirname, "..", "dist", "ts", "index.js");

const workerSource = `
const { parentPort, workerData } = require("worker_threads");
const { KVCache } = require(workerData.entry);
const { keys, values, queries, opts } = workerData;
const cache = new KVCache(opts);
const seq = cache.createSequence();
seq.append(0, keys, values);
const out = seq.attend(0, queries);
parentPort.postMessage({ out, usage: cache.usage() });
cache.dispose();
`;

const opts = { layers: 1, kvHeads: 2, queryHeads: 8, headDim: 64, dtype: "f16" as const, maxTokens: 4096 };

interface WorkerResult {
  out: Float32Array;
  usage: { pagesUsed: number };
}

/** Runs workerSource in `count` workers at once; each is terminated as soon as its result arrives. */
function runWorkers(count: number, data: { keys: Float32Array; values: Float32Array; queries: Float32Array }): Promise<WorkerResult[]> {
  return Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<WorkerResult>((resolve, reject) => {
          const w = new Worker(workerSource, { eval: true, workerData: { entry, opts, ...data } });
          w.once("message", (m: WorkerResult) => {
            resolve(m);
            void w.terminate();
          });
          w.once("error", reject);
        }),
    ),
  );
}

test("attention in several worker_threads equals the main thread's", async () => {
  expect(fs.existsSync(entry)).toBe(true); // built by `npm ci` (prepare) or `npm run build:ts`
  const r = rng(seed);
  const n = 500;
  const keys = randn(r, n * 2 * 64), values = randn(r, n * 2 * 64), queries = randn(r, 2 * 8 * 64);
  const cache = new KVCache(opts);
  const seq = cache.createSequence();
  seq.append(0, keys, values);
  const expected = seq.attend(0, queries);
  const results = await runWorkers(3, { keys, values, queries });
  for (const res of results) {
    expect(Array.from(res.out)).toEqual(Array.from(expected));
    expect(res.usage.pagesUsed).toBe(cache.usage().pagesUsed);
  }
  cache.dispose();
});

test("workers terminated while they dispose their cache leave the process running", async () => {
  // The main thread terminates each worker as soon as it has its result, so the termination often
  // lands inside cache.dispose(): an error the addon then throws to JavaScript cannot be thrown
  // (the worker's env no longer runs JavaScript) and once aborted the whole process. The abort
  // came about once in 40 rounds of 3 workers on a 2-core machine.
  const r = rng(seed ^ 0x5a);
  const n = 500;
  const keys = randn(r, n * 2 * 64), values = randn(r, n * 2 * 64), queries = randn(r, 2 * 8 * 64);
  let received = 0;
  for (let round = 0; round < 100; round++) {
    const results = await runWorkers(3, { keys, values, queries });
    received += results.filter((m) => m.out.length === 2 * 8 * 64).length;
  }
  expect(received).toBe(300);
}, 120_000);

test("LUKV_THREADS: decimal digits from 1 to 1024, as the threads option, blanks around them ignored", () => {
  const saved = process.env.LUKV_THREADS;
  try {
    process.env.LUKV_THREADS = "3";
    const cache = new KVCache({ layers: 1, kvHeads: 1, headDim: 8, maxTokens: 64 });
    expect(cache.config.threads).toBe(3);
    expect(backends().cpu.threads).toBe(3);
    expect(backends().cpu.threadsError).toBeUndefined();
    cache.dispose();
    // Blanks around the number are ignored, as in the other LUKV_ variables; blank alone is unset.
    for (const [given, threads] of [[" 4", 4], ["2 \n", 2], ["  ", Math.min(os.availableParallelism(), 1024)]] as const) {
      process.env.LUKV_THREADS = given;
      const c = new KVCache({ layers: 1, kvHeads: 1, headDim: 8, maxTokens: 64 });
      expect([given, c.config.threads]).toEqual([given, threads]);
      c.dispose();
    }
    for (const bad of ["0", "1025", "0x10", "1e1", "2.5", "-2", "4 4", "four"]) {
      process.env.LUKV_THREADS = bad;
      const error = { name: "InvalidArgumentError", message: `Expected integer between 1 and 1024 for LUKV_THREADS but received ${JSON.stringify(bad)} of type string` };
      expect(() => new KVCache({ layers: 1, kvHeads: 1, headDim: 8, maxTokens: 64 })).toThrow(expect.objectContaining(error));
      // backends() diagnoses the setup: it reports the problem instead of throwing it.
      expect(backends().cpu.threadsError).toBe(error.message);
    }
  } finally {
    if (saved === undefined) delete process.env.LUKV_THREADS;
    else process.env.LUKV_THREADS = saved;
  }
});

// An address-space limit cannot hold AddressSanitizer's shadow memory (scripts/sanitize.sh preloads it).
const underAsan = /libasan/.test(process.env.LD_PRELOAD ?? "");

(underAsan ? test.skip : test)("threads the system cannot start: BackendUnavailableError, the ones started are stopped, the process goes on", () => {
  // Under a 3 GB address-space limit, 8 MiB thread stacks run out after a few hundred threads.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-threads-"));
  const script = path.join(dir, "many.js");
  fs.writeFileSync(
    script,
    `const { KVCache } = require(${JSON.stringify(entry)});
const shape = { layers: 1, kvHeads: 1, headDim: 8, maxTokens: 64 };
try { new KVCache({ ...shape, threads: 1000 }); console.log("created"); } catch (e) { console.log(JSON.stringify({ name: e.name, message: e.message })); }
const c = new KVCache({ ...shape, threads: 2 }); c.createSequence(); c.dispose(); console.log("after");\n`,
  );
  try {
    const r = spawnSync("bash", ["-c", `ulimit -s 8192 && ulimit -v 3000000 && exec "$0" "$1"`, process.execPath, script], { encoding: "utf8", timeout: 60_000 });
    expect({ status: r.status, signal: r.signal, stderr: r.stderr }).toEqual({ status: 0, signal: null, stderr: "" });
    const [first, second] = r.stdout.trim().split("\n");
    expect(JSON.parse(first)).toEqual({
      name: "BackendUnavailableError",
      message: expect.stringMatching(/^Cannot start 999 kernel threads for the CPU backend \(\d+ started, then: .+\); give fewer threads \(the threads option or LUKV_THREADS\)$/),
    });
    expect(second).toBe("after");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

(underAsan ? test.skip : test)("a worker terminated while it saves a sequence leaves no saved bytes behind", () => {
  // Creating the Buffer fails in a worker being terminated; the 31 MiB saved then stayed allocated
  // for good, once per worker. Measured in a child process: resident memory per round.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-save-exit-"));
  const script = path.join(dir, "save.js");
  fs.writeFileSync(
    script,
    `const { Worker, isMainThread, parentPort, workerData } = require("worker_threads");
const shape = { layers: 1, kvHeads: 8, queryHeads: 8, headDim: 128, dtype: "f16", maxTokens: 1 << 16, threads: 1, device: "cpu" };
if (isMainThread) {
  const rss = () => process.memoryUsage().rss / 2 ** 20;
  const rounds = async (how, n) => {
    for (let i = 0; i < n; i++) {
      const w = new Worker(__filename, { workerData: { how } });
      w.on("error", () => {});
      const exited = new Promise((res) => w.once("exit", res));
      await new Promise((res) => w.once("message", res));
      await new Promise((res) => setTimeout(res, 30));
      if (how === "stop") w.postMessage("stop");
      else await w.terminate();
      await exited;
    }
    for (let i = 0; i < 3; i++) { global.gc(); await new Promise((res) => setTimeout(res, 30)); }
  };
  (async () => {
    await rounds("stop", 2);
    await rounds("save", 2);
    let at = rss(); await rounds("stop", 6); const stopped = (rss() - at) / 6;
    at = rss(); await rounds("save", 6); const terminated = (rss() - at) / 6;
    console.log(JSON.stringify({ stopped, terminated }));
  })();
} else {
  const { KVCache } = require(${JSON.stringify(entry)});
  const cache = new KVCache(shape);
  const seq = cache.createSequence();
  const rows = new Float32Array(8000 * 8 * 128).fill(0.25); // 31 MiB saved
  seq.append(0, rows, rows);
  let stop = false;
  parentPort.on("message", () => { stop = true; });
  parentPort.postMessage("saving");
  if (workerData.how === "save") for (;;) seq.save();
  (function loop() { seq.save(); if (stop) { cache.dispose(); parentPort.close(); } else setImmediate(loop); })();
}
`,
  );
  try {
    const r = spawnSync(process.execPath, ["--expose-gc", script], { encoding: "utf8", timeout: 60_000 });
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: "" });
    const { stopped, terminated } = JSON.parse(r.stdout) as { stopped: number; terminated: number };
    // MiB per worker: a leak is one saved sequence (31 MiB) each.
    expect([stopped, terminated, terminated - stopped < 12]).toEqual([stopped, terminated, true]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}, 90_000);
