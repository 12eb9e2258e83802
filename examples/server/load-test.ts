// A bounded load test of the example server on loopback: `clients` concurrent clients send
// `requests` generation requests in all (each client one after another), with and without
// eviction, and the table reports throughput, latency per token (p50, p99), peak KV memory and
// how many streams a decode step served on average.
//
//   npx tsc -p tsconfig.build.json
//   node dist/examples/server/load-test.js [--clients 8] [--requests 32] [--tokens 32] [--prompt-tokens 384] [--pool-tokens 4096] [--keep-tokens 96]
//   node dist/examples/server/load-test.js --help
//
// Writes bench/results/server.json (or under LUKV_BENCH_OUT).
import * as http from "http";
import { createGenerationServer, exampleOptions, ServerStats } from "./server";
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
  tokens: number;
  seconds: number;
  tokensPerSecond: number;
  /** Time to the first token (prompt prefill and waiting for other requests included). */
  p50FirstTokenMs: number;
  /** Gaps between the following tokens of a request. */
  p50MsPerToken: number;
  p99MsPerToken: number;
  peakKvBytes: number;
  server: ServerStats;
}

/** POSTs one generation request; calls onLine with each NDJSON line and resolves with the status. */
export function post(port: number, body: unknown, onLine: (line: Record<string, unknown>) => void): Promise<number> {
  return new Promise((resolve, reject) => {
    // A connection per request: a pooled one the server closed while idle would reset.
    const req = http.request({ host: "127.0.0.1", port, path: "/generate", method: "POST", agent: false, headers: { "content-type": "application/json" } }, (res) => {
      let buffered = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        buffered += chunk;
        let nl;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          if (line) onLine(JSON.parse(line));
        }
      });
      res.on("end", () => resolve(res.statusCode ?? 0));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

/** Runs one load test against a fresh server (eviction on or off) and returns what it measured. */
export async function runLoad(evict: boolean, o: LoadOptions, prompts: string[]): Promise<LoadResult> {
  const s = createGenerationServer({ evict, poolTokens: o.poolTokens, keepTokens: o.keepTokens });
  const port = await s.listen(0);
  const gaps: number[] = [], firsts: number[] = [];
  let next = 0, tokens = 0, failed = 0;
  const t0 = performance.now();
  const client = async (c: number) => {
    for (let i = next++; i < o.requests; i = next++) {
      let last = performance.now();
      let first = true;
      let error = false;
      const status = await post(port, { prompt: prompts[(c + i) % prompts.length], tokens: o.tokens, temperature: 0.8, seed: i }, (line) => {
        if (typeof line.token === "number") {
          const now = performance.now();
          (first ? firsts : gaps).push(now - last);
          first = false;
          last = now;
          tokens++;
        }
        if (line.error) error = true;
      });
      if (status !== 200 || error) failed++;
    }
  };
  await Promise.all(Array.from({ length: o.clients }, (_, c) => client(c)));
  const seconds = (performance.now() - t0) / 1000;
  const server = s.stats();
  await s.close();
  return {
    evict, requests: o.requests, failed, tokens, seconds, tokensPerSecond: tokens / seconds,
    p50FirstTokenMs: median(firsts), p50MsPerToken: median(gaps), p99MsPerToken: percentile(gaps, 99), peakKvBytes: server.peakBytes, server,
  };
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

const LOAD_COMMAND = {
  script: "load-test",
  about: "Starts the example server on a free loopback port twice (eviction off, then on) and runs concurrent clients against it; writes bench/results/server.json (or under LUKV_BENCH_OUT).",
  options: {
    clients: intOption({ default: 8, min: 1, help: "concurrent clients" }),
    requests: intOption({ default: 32, min: 1, help: "generation requests in all" }),
    tokens: intOption({ default: 32, min: 1, max: 256, help: "tokens each request asks for" }),
    "prompt-tokens": intOption({ default: 384, min: 1, help: "tokens of each prompt" }),
    "pool-tokens": intOption({ default: 4096, min: 1, help: "pool capacity in tokens of one (layer, KV head)" }),
    "keep-tokens": intOption({ default: 96, min: 1, help: "tokens per head each sequence is compressed back to, with eviction" }),
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
  console.log(`load test: ${o.clients} clients, ${o.requests} requests of ${o.tokens} tokens after ~${o.promptTokens}-token prompts; pool ${o.poolTokens} tokens per head\n`);
  const results = [await runLoad(false, o, prompts), await runLoad(true, o, prompts)];
  printTable(
    ["eviction", "requests ok", "tokens", "tokens/s", "p50 first token ms", "p50 ms/token", "p99 ms/token", "peak KV KiB", "pressure events", "auto compressions", "mean decode batch"],
    results.map((r) => [r.evict ? "on" : "off", `${r.requests - r.failed}/${r.requests}`, r.tokens, r.tokensPerSecond.toFixed(1), r.p50FirstTokenMs.toFixed(0), r.p50MsPerToken.toFixed(2), r.p99MsPerToken.toFixed(2), (r.peakKvBytes / 1024).toFixed(0), r.server.pressureEvents, r.server.autoCompressions, (r.server.decodeRows / Math.max(1, r.server.decodeSteps)).toFixed(2)]),
  );
  const file = writeResults("server", { benchmark: "example server load test", options: o, machine: machine(), results });
  console.log(`\nwritten ${file}`);
}

if (require.main === module) void main();
