// A bounded load test of the example server on loopback: `clients` concurrent clients send
// `requests` generation requests in all (each client one after another), with and without
// eviction, and the table reports throughput, latency per token (p50, p99), peak KV memory and
// how many streams a decode step served on average. The clients run in a worker thread, with an
// event loop of their own: they time each line as it reaches them, as clients in another process
// would, not when the server's thread is next free.
//
//   npx tsc -p tsconfig.build.json
//   node dist/examples/server/load-test.js [--clients 8] [--requests 32] [--tokens 32] [--prompt-tokens 384] [--pool-tokens 4096] [--keep-tokens 96]
//   node dist/examples/server/load-test.js --help
//
// Writes bench/results/server.json (or under LUKV_BENCH_OUT).
import * as http from "http";
import { Worker } from "worker_threads";
import { MAX_KEEP_TOKENS, MIN_POOL_TOKENS, createGenerationServer, exampleOptions, ServerStats } from "./server";
import { defaultModelDir, loadTinyLM, modelTexts } from "../../ts/model";
import { BenchCommand, OptionSpec, intOption, median, printTable, machine, writeResults } from "../../bench/common";

export interface LoadOptions {
  clients: number;
  requests: number;
  tokens: number;
  promptTokens: number;
  /** Pool capacity in tokens of one (layer, KV head). */
  poolTokens: number;
  /** Tokens per head each sequence is compressed back to, with eviction. */
  keepTokens: number;
}

export interface LoadResult {
  evict: boolean;
  requests: number;
  failed: number;
  /** Tokens of the requests that succeeded: tokensPerSecond counts these alone. */
  tokens: number;
  /** Tokens streamed by requests that then failed (an error line, a status other than 200, a broken or cut stream, no done line). */
  failedTokens: number;
  seconds: number;
  tokensPerSecond: number;
  /** Time to the first token (prompt prefill and waiting for other requests included), as the clients saw it. */
  p50FirstTokenMs: number;
  /** Gaps between the following tokens of a request (of every token line, failed requests' too), as the clients saw them. */
  p50MsPerToken: number;
  p99MsPerToken: number;
  peakKvBytes: number;
  server: ServerStats;
  /** The error of the first request that failed (its status, 0 when none came, and its error), when one did. */
  firstError?: string;
}

// post() as JavaScript source, which the worker's clients (below) run as it is written here: a
// function's compiled text would carry what a coverage tool adds to it.
const POST_SOURCE = `function post(port, body, onLine, idleMs = 120000) {
  return new Promise((resolve, reject) => {
    let failed = false;
    const fail = (e) => {
      if (failed) return;
      failed = true;
      reject(e);
      req.destroy();
    };
    // A connection per request: a pooled one the server closed while idle would reset.
    const req = http.request({ host: "127.0.0.1", port, path: "/generate", method: "POST", agent: false, headers: { "content-type": "application/json" } }, (res) => {
      let buffered = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => {
        buffered += chunk;
        let nl;
        while ((nl = buffered.indexOf("\\n")) >= 0) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          if (!line) continue;
          let parsed;
          try {
            parsed = JSON.parse(line);
          } catch {
            return fail(new Error("a line that is not JSON (status " + res.statusCode + "): " + JSON.stringify(line.slice(0, 80))));
          }
          onLine(parsed);
        }
      });
      res.on("end", () => (buffered ? fail(new Error("the response (status " + res.statusCode + ") ended inside a line")) : failed || resolve(res.statusCode || 0)));
      res.on("error", fail);
    });
    req.setTimeout(idleMs, () => fail(new Error("no data for " + idleMs + " ms")));
    req.on("error", fail);
    req.end(JSON.stringify(body));
  });
}`;

/**
 * POSTs one generation request; calls onLine with each NDJSON line and resolves with the status.
 * Rejects when the connection fails, a line is not JSON, the response ends inside a line, or no
 * data comes for `idleMs` (default 120 s).
 */
export const post = new Function("http", `${POST_SOURCE}\nreturn post;`)(http) as (
  port: number,
  body: unknown,
  onLine: (line: Record<string, unknown>) => void,
  idleMs?: number,
) => Promise<number>;

/** The nearest-rank percentile: the smallest value with at least p% of the values at or below it (NaN for none). */
export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p * s.length) / 100) - 1))];
}

export interface ClientsData {
  port: number;
  clients: number;
  requests: number;
  tokens: number;
  prompts: string[];
}

export interface Measured {
  seconds: number;
  firsts: number[];
  gaps: number[];
  tokens: number;
  failedTokens: number;
  failed: number;
  firstError?: string;
}

// The clients, run in a worker thread (plain JavaScript, so that it runs from dist/ and under ts-jest
// alike): a client on the server's own thread would read a line only once the server's synchronous
// work after writing it (the next decode step, another prefill turn) is done.
const CLIENTS = `
"use strict";
const http = require("http");
const { parentPort, workerData } = require("worker_threads");
const { port, clients, requests, tokens, prompts } = workerData;
${POST_SOURCE}
(async () => {
  const gaps = [], firsts = [];
  let next = 0, okTokens = 0, failedTokens = 0, failed = 0, firstError;
  const t0 = performance.now();
  const client = async (c) => {
    for (let i = next++; i < requests; i = next++) {
      let last = performance.now(), first = true, streamed = 0, done = false, status = 0, error;
      try {
        status = await post(port, { prompt: prompts[(c + i) % prompts.length], tokens, temperature: 0.8, seed: i }, (line) => {
          if (typeof line.token === "number") {
            const now = performance.now();
            (first ? firsts : gaps).push(now - last);
            first = false;
            last = now;
            streamed++;
          }
          if (line.done === true) done = true;
          if (line.error) error = String(line.error);
        });
      } catch (e) {
        error = e && e.message ? e.message : String(e);
      }
      // A request is done when its stream ends with the done line; anything else failed.
      if (status === 200 && error === undefined && !done) error = "the stream ended without a done line";
      if (status !== 200 || error !== undefined) {
        failed++;
        failedTokens += streamed;
        firstError ??= status + (error === undefined ? "" : " " + error);
      } else okTokens += streamed;
    }
  };
  await Promise.all(Array.from({ length: clients }, (_, c) => client(c)));
  const seconds = (performance.now() - t0) / 1000;
  parentPort.postMessage({ seconds, firsts, gaps, tokens: okTokens, failedTokens, failed, ...(firstError === undefined ? {} : { firstError }) });
})();
`;

/** Runs the clients in a worker thread until they are done; resolves with what they measured (exported for the tests). */
export async function runClients(data: ClientsData): Promise<Measured> {
  const worker = new Worker(CLIENTS, { eval: true, workerData: data });
  try {
    return await new Promise<Measured>((resolve, reject) => {
      worker.once("message", resolve);
      worker.once("error", reject);
      worker.once("exit", (code) => reject(new Error(`the load test's clients stopped (exit code ${code}) before reporting`)));
    });
  } finally {
    await worker.terminate();
  }
}

/** Runs one load test against a fresh server (eviction on or off) and returns what it measured. */
export async function runLoad(evict: boolean, o: LoadOptions, prompts: string[]): Promise<LoadResult> {
  const s = createGenerationServer({ evict, poolTokens: o.poolTokens, keepTokens: o.keepTokens });
  try {
    const port = await s.listen(0);
    const m = await runClients({ port, clients: o.clients, requests: o.requests, tokens: o.tokens, prompts });
    const server = s.stats();
    return {
      evict, requests: o.requests, failed: m.failed, tokens: m.tokens, failedTokens: m.failedTokens, seconds: m.seconds, tokensPerSecond: m.tokens / m.seconds,
      p50FirstTokenMs: m.firsts.length > 0 ? median(m.firsts) : NaN, p50MsPerToken: m.gaps.length > 0 ? median(m.gaps) : NaN, p99MsPerToken: percentile(m.gaps, 99), peakKvBytes: server.peakBytes, server,
      ...(m.firstError === undefined ? {} : { firstError: m.firstError }),
    };
  } finally {
    await s.close();
  }
}

/**
 * Prompts of `promptTokens` tokens cut from the model's held-out texts; throws when no text is
 * that long (a load test would otherwise send empty prompts).
 */
export function loadPrompts(promptTokens: number): string[] {
  const dir = defaultModelDir();
  const tok = loadTinyLM(dir).tokenizer!;
  const prompts: string[] = [];
  let longest = 0;
  for (const { text } of modelTexts(dir, "heldout")) {
    const ids = tok.encode(text);
    longest = Math.max(longest, ids.length);
    for (let at = 0; at + promptTokens <= ids.length && prompts.length < 64; at += promptTokens) prompts.push(tok.decode(ids.slice(at, at + promptTokens)));
  }
  if (prompts.length === 0) throw new Error(`no held-out text has ${promptTokens} tokens (the longest has ${longest}); ask for shorter prompts`);
  return prompts;
}

/**
 * The most positions one request of these prompts holds in each (layer, KV head) without eviction:
 * BOS, its prompt's tokens (at most the model's positions less the reply and BOS, as the server
 * cuts them) and the tokens fed back (all but the last).
 */
export function requestPositions(prompts: string[], tokens: number): number {
  const model = loadTinyLM(defaultModelDir());
  const keep = Math.max(0, model.config.maxPosition - tokens - 1);
  let longest = 0;
  for (const p of prompts) longest = Math.max(longest, model.tokenizer!.encode(p).length);
  return 1 + Math.min(longest, keep) + tokens - 1;
}

/** The smallest --pool-tokens that holds one request of `positions` (whole pages of MIN_POOL_TOKENS). */
export function minPoolTokens(positions: number): number {
  return MIN_POOL_TOKENS * Math.ceil(positions / MIN_POOL_TOKENS);
}

/** A figure of the table: "–" where nothing was measured (a reply of one token has no gap between tokens). */
const figure = (x: number, digits: number) => (Number.isFinite(x) ? x.toFixed(digits) : "–");

const LOAD_COMMAND = {
  script: "load-test",
  about: "Starts the example server on a free loopback port twice (eviction off, then on) and runs concurrent clients against it; writes bench/results/server.json (or under LUKV_BENCH_OUT).",
  options: {
    clients: intOption({ default: 8, min: 1, help: "concurrent clients" }),
    requests: intOption({ default: 32, min: 1, help: "generation requests in all" }),
    tokens: intOption({ default: 32, min: 1, max: 256, help: "tokens each request asks for" }),
    "prompt-tokens": intOption({ default: 384, min: 1, help: "tokens of each prompt" }),
    "pool-tokens": intOption({ default: 4096, min: MIN_POOL_TOKENS, help: "pool capacity in tokens of one (layer, KV head); at least one whole request (checked)" }),
    "keep-tokens": intOption({ default: 96, min: 1, max: MAX_KEEP_TOKENS, help: "tokens per head each sequence is compressed back to, with eviction" }),
  },
} satisfies BenchCommand<Record<string, OptionSpec>>;

async function main(): Promise<void> {
  // Checked before anything runs: --help prints the options, a refused one exits 2 naming it.
  const v = exampleOptions(LOAD_COMMAND);
  const o: LoadOptions = {
    clients: v.clients, requests: v.requests, tokens: v.tokens, promptTokens: v["prompt-tokens"], poolTokens: v["pool-tokens"], keepTokens: v["keep-tokens"],
  };
  let prompts: string[];
  try {
    prompts = loadPrompts(o.promptTokens);
  } catch (e) {
    console.error((e as Error).message);
    process.exit(2);
  }
  // Without eviction a request keeps all its positions: a pool that cannot hold one would fail them all.
  const positions = requestPositions(prompts, o.tokens);
  if (o.poolTokens < minPoolTokens(positions)) {
    console.error(
      `load-test.js: --pool-tokens must be at least ${minPoolTokens(positions)} for these requests (one whole request: ${positions} positions per head ` +
        `in pages of ${MIN_POOL_TOKENS} tokens), got "${o.poolTokens}"`,
    );
    process.exit(2);
  }
  // The server refuses a pool past the cache's limits once it has loaded the model: named, exit 2.
  try {
    await createGenerationServer({ poolTokens: o.poolTokens, keepTokens: o.keepTokens }).close();
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    console.error(`load-test.js: --pool-tokens: ${(e as Error).message}`);
    process.exit(2);
  }
  console.log(`load test: ${o.clients} clients, ${o.requests} requests of ${o.tokens} tokens after ~${o.promptTokens}-token prompts; pool ${o.poolTokens} tokens per head\n`);
  const results = [await runLoad(false, o, prompts), await runLoad(true, o, prompts)];
  printTable(
    ["eviction", "requests ok", "tokens", "tokens/s", "p50 first token ms", "p50 ms/token", "p99 ms/token", "peak KV KiB", "pressure events", "auto compressions", "mean decode batch"],
    results.map((r) => [r.evict ? "on" : "off", `${r.requests - r.failed}/${r.requests}`, r.tokens, r.tokensPerSecond.toFixed(1), figure(r.p50FirstTokenMs, 0), figure(r.p50MsPerToken, 2), figure(r.p99MsPerToken, 2), (r.peakKvBytes / 1024).toFixed(0), r.server.pressureEvents, r.server.autoCompressions, figure(r.server.decodeSteps > 0 ? r.server.decodeRows / r.server.decodeSteps : NaN, 2)]),
  );
  if (o.tokens === 1) console.log("\nms/token and decode batch: – (a reply of one token has no gap between two tokens, and no decode step)");
  for (const r of results)
    if (r.failed > 0)
      console.error(
        `eviction ${r.evict ? "on" : "off"}: ${r.failed} of ${r.requests} requests failed, after streaming ${r.failedTokens} tokens (not in tokens or tokens/s); the first: ${r.firstError}`,
      );
  // A run in which no request succeeded measured nothing: no results are written.
  if (results.some((r) => r.failed === r.requests)) {
    console.error("load-test.js: every request of a run failed; no results written");
    process.exit(1);
  }
  const file = writeResults("server", { benchmark: "example server load test", options: o, machine: machine(), results });
  console.log(`\nwritten ${file}`);
}

if (require.main === module)
  main().catch((e: unknown) => {
    // A run that could not finish (its clients stopped, the server failed): one line, no stack trace.
    process.stderr.write(`load-test.js: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
