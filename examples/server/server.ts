// An HTTP server that streams text from the embedded model to many clients at once, all their
// sequences in one lukv cache. With eviction on, each sequence compresses itself back to a
// per-head limit as it grows (seq.autoCompress) and an append that finds the pool full compresses
// the largest sequence first (cache.onPressure), so memory stays bounded however many clients come.
// Requests take turns on the one JavaScript thread: a prompt runs 64 tokens at a time, and the
// streams waiting for their next token make one decode step together (model.forwardBatch: one
// cache.appendBatch and one cache.attendBatch per layer for all of them).
//
//   npx tsc -p tsconfig.build.json && node dist/examples/server/server.js [--port 8080] [--no-evict]
//   curl -N -d '{"prompt": "The river", "tokens": 32}' localhost:8080/generate
//
// POST /generate {prompt, tokens = 32 (at most 256), temperature = 0.8, seed = 1} streams NDJSON:
// one {"token", "text"} line per generated token (the text the token completes: a character whose
// UTF-8 bytes span several tokens comes with its last), then {"done": true, ...}. GET /stats reports the
// cache (pages, bytes, peak bytes, pressure events, automatic compressions).
import * as http from "http";
import type { AddressInfo } from "net";
import { KVCache, Sequence, PressureEvent } from "../../ts";
import { Sampler, TinyLM, defaultModelDir, loadTinyLM, modelProfile } from "../../ts/model";

export interface ServerOptions {
  /** Model directory. Default: the embedded tiny-lm. */
  modelDir?: string;
  /** Evict: autoCompress every sequence and compress under pool pressure. Default: true. */
  evict?: boolean;
  /** Tokens per (layer, KV head) a sequence is compressed back to (with evict). Default: 128. */
  keepTokens?: number;
  /** Pool capacity in tokens of one (layer, KV head) (KVCache maxTokens / (layers x kvHeads)). Default: 4096. */
  poolTokens?: number;
}

export interface ServerStats {
  requests: number;
  active: number;
  tokens: number;
  failed: number;
  pagesUsed: number;
  pagesTotal: number;
  bytesUsed: number;
  peakBytes: number;
  pressureEvents: number;
  autoCompressions: number;
  /** Decode steps run (each one model.forwardBatch over the streams waiting, or forward for a lone one). */
  decodeSteps: number;
  /** Stream steps in those decode steps (decodeRows / decodeSteps: the mean batch). */
  decodeRows: number;
}

export interface GenerationServer {
  readonly server: http.Server;
  readonly model: TinyLM;
  readonly cache: KVCache;
  stats(): ServerStats;
  /** Starts listening (port 0: any free port) and resolves with the port. */
  listen(port?: number, host?: string): Promise<number>;
  close(): Promise<void>;
}

const MAX_TOKENS = 256;
// Prompt tokens run per turn: between two such parts the other requests each make a decode step,
// so a long prompt does not hold every other stream back for its whole prefill.
const PREFILL_TURN = 64;

export function createGenerationServer(options: ServerOptions = {}): GenerationServer {
  const dir = options.modelDir ?? defaultModelDir();
  const model = loadTinyLM(dir);
  const tok = model.tokenizer!;
  const evict = options.evict ?? true;
  const keepTokens = options.keepTokens ?? 128;
  const cache = model.createCache({ dtype: "f16", contextTokens: options.poolTokens ?? 4096 });
  const found = modelProfile(dir, "snapkv");
  const compression = found
    ? { scorer: "snapkv" as const, allocation: "lukv" as const, profile: found.profile, sink: 4, window: 16 }
    : { scorer: "snapkv" as const, allocation: "adakv" as const, sink: 4, window: 16 };
  const stats: ServerStats = { requests: 0, active: 0, tokens: 0, failed: 0, pagesUsed: 0, pagesTotal: 0, bytesUsed: 0, peakBytes: 0, pressureEvents: 0, autoCompressions: 0, decodeSteps: 0, decodeRows: 0 };
  if (evict) cache.onPressure({ evict: "largest", ratio: 0.5, ...compression, listener: (_e: PressureEvent) => stats.pressureEvents++ });
  const note = () => {
    const u = cache.usage();
    stats.pagesUsed = u.pagesUsed;
    stats.pagesTotal = u.pagesTotal;
    stats.bytesUsed = u.bytesUsed;
    stats.peakBytes = Math.max(stats.peakBytes, u.bytesUsed);
  };

  // The streams waiting for a decode step run together, once per turn of the event loop. Without
  // eviction, a batch that might not find a page for every member's step (at most one new page per
  // layer and KV head each) runs its members one at a time instead: running out of pages then
  // fails one request, not all of the batch (a failed step leaves a sequence half-appended).
  type Waiting = { seq: Sequence; token: number; resolve: (logits: Float32Array) => void; reject: (e: unknown) => void };
  let waiting: Waiting[] = [];
  const pagesPerStep = model.config.layers * model.config.kvHeads;
  const decodeStep = (seq: Sequence, token: number) =>
    new Promise<Float32Array>((resolve, reject) => {
      waiting.push({ seq, token, resolve, reject });
      if (waiting.length === 1) setImmediate(runSteps);
    });
  const roomFor = (streams: number) => {
    const u = cache.usage();
    return u.pagesTotal - u.pagesUsed >= streams * pagesPerStep;
  };
  function runSteps(): void {
    const batch = waiting;
    waiting = [];
    if (batch.length > 1 && (evict || roomFor(batch.length))) {
      stats.decodeSteps++;
      stats.decodeRows += batch.length;
      try {
        const logits = model.forwardBatch(batch.map((w) => w.seq), batch.map((w) => w.token));
        batch.forEach((w, i) => w.resolve(logits[i]));
      } catch (e) {
        for (const w of batch) w.reject(e);
      }
      return;
    }
    for (const w of batch) {
      stats.decodeSteps++;
      stats.decodeRows++;
      try {
        w.resolve(model.forward(w.seq, [w.token]));
      } catch (e) {
        w.reject(e);
      }
    }
  }

  async function generate(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let body: { prompt?: unknown; tokens?: unknown; temperature?: unknown; seed?: unknown };
    try {
      let text = "";
      for await (const part of req) text += part;
      body = JSON.parse(text || "{}");
    } catch {
      return reply(res, 400, { error: "the body must be JSON" });
    }
    if (body === null || typeof body !== "object" || Array.isArray(body)) return reply(res, 400, { error: "the body must be a JSON object" });
    const prompt = typeof body.prompt === "string" ? body.prompt : "";
    const tokens = body.tokens ?? 32;
    const temperature = body.temperature ?? 0.8;
    if (!Number.isInteger(tokens) || (tokens as number) < 1 || (tokens as number) > MAX_TOKENS)
      return reply(res, 400, { error: `tokens must be an integer from 1 to ${MAX_TOKENS}` });
    if (typeof temperature !== "number" || !(temperature >= 0)) return reply(res, 400, { error: "temperature must be a number >= 0" });
    const seed = body.seed ?? 1;
    if (!Number.isInteger(seed) || (seed as number) < 0 || (seed as number) > 0xffffffff) return reply(res, 400, { error: "seed must be an integer from 0 to 4294967295" });
    // A prompt too long for the model's positions loses its start, never BOS (the model saw
    // every training text after BOS).
    const text = tok.encode(prompt);
    const ids = [tok.bos!, ...text.slice(Math.max(0, text.length - (model.config.maxPosition - (tokens as number) - 1)))];
    stats.requests++;
    stats.active++;
    let seq: Sequence | undefined;
    let closed = false;
    res.on("close", () => (closed = true));
    try {
      seq = cache.createSequence();
      if (evict) seq.autoCompress({ maxTokens: keepTokens, every: 32, ...compression });
      const t0 = performance.now();
      let logits: Float32Array = new Float32Array(0);
      for (let at = 0; at < ids.length && !closed; at += PREFILL_TURN) {
        const last = at + PREFILL_TURN >= ids.length;
        logits = model.forward(seq, ids.slice(at, at + PREFILL_TURN), { chunk: 64, logits: last ? "last" : "none" });
        note();
        if (!last) await new Promise((resolve) => setImmediate(resolve));
      }
      if (closed) return;
      res.writeHead(200, { "content-type": "application/x-ndjson" });
      const sampler = new Sampler({ temperature, topK: 40, seed: seed as number });
      // Tokens are bytes: a character whose UTF-8 bytes span several tokens streams with its last.
      const utf8 = new TextDecoder("utf-8");
      let made = 0;
      for (; made < (tokens as number) && !closed; made++) {
        const next = sampler.next(logits);
        if (next === tok.eos) break;
        res.write(JSON.stringify({ token: next, text: utf8.decode(tok.decodeBytes([next]), { stream: true }) }) + "\n");
        logits = await decodeStep(seq, next);
        stats.tokens++;
        note();
      }
      const lengths = seq.lengths();
      res.end(JSON.stringify({ done: true, tokens: made, promptTokens: ids.length, kept: lengths.reduce((a, b) => a + b, 0), ms: performance.now() - t0 }) + "\n");
    } catch (e) {
      stats.failed++;
      const error = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
      if (!res.headersSent) reply(res, 503, { error });
      else res.end(JSON.stringify({ error }) + "\n");
    } finally {
      if (seq) {
        stats.autoCompressions += seq.autoCompressions;
        seq.dispose();
      }
      stats.active--;
      note();
    }
  }

  function reply(res: http.ServerResponse, status: number, body: unknown): void {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body) + "\n");
  }

  const server = http.createServer((req, res) => {
    if (req.method === "POST" && req.url === "/generate")
      generate(req, res).catch((e) => {
        // Not reached by design (generate answers its own errors); if it is, fail this request only.
        const error = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
        if (!res.headersSent) reply(res, 500, { error });
        else res.end(JSON.stringify({ error }) + "\n");
      });
    else if (req.method === "GET" && req.url === "/stats") {
      note();
      reply(res, 200, stats);
    } else reply(res, 404, { error: "POST /generate or GET /stats" });
  });

  return {
    server,
    model,
    cache,
    stats: () => {
      note();
      return { ...stats };
    },
    listen: (port = 0, host = "127.0.0.1") =>
      new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, host, () => resolve((server.address() as AddressInfo).port));
      }),
    close: () =>
      new Promise((resolve) => {
        server.close(() => {
          cache.dispose();
          resolve();
        });
        server.closeAllConnections();
      }),
  };
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const at = args.indexOf("--port");
  const port = at >= 0 ? Number(args[at + 1]) : 8080;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`--port must be an integer from 0 to 65535 (0: any free port) but is ${at >= 0 && at + 1 < args.length ? JSON.stringify(args[at + 1]) : "missing"}`);
    process.exit(2);
  }
  const s = createGenerationServer({ evict: !args.includes("--no-evict") });
  s.listen(port, "127.0.0.1").then(
    (p) => console.log(`lukv example server on http://127.0.0.1:${p} (POST /generate, GET /stats)`),
    (e: NodeJS.ErrnoException) => {
      console.error(`cannot listen on 127.0.0.1:${port}: ${e.code === "EADDRINUSE" ? "the port is in use" : e.message}`);
      process.exit(1);
    },
  );
}
