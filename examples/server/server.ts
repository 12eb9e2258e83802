// An HTTP server that streams text from the embedded model to many clients at once, all their
// sequences in one lukv cache. With eviction on, each sequence compresses itself back to a
// per-head limit as it grows (seq.autoCompress) and an append that finds the pool full compresses
// the largest sequence first (cache.onPressure), so memory stays bounded however many clients come.
// Requests take turns on the one JavaScript thread: a prompt runs 64 tokens at a time, and the
// streams waiting for their next token make one decode step together (model.forwardBatch: one
// cache.appendBatch and one cache.attendBatch per layer for all of them).
//
//   npx tsc -p tsconfig.build.json && node dist/examples/server/server.js [--port 8080] [--no-evict] [--max-body-bytes 1048576]
//   curl -N -d '{"prompt": "The river", "tokens": 32}' localhost:8080/generate
//
// POST /generate {prompt = "", tokens = 32 (at most 256), temperature = 0.8, seed = 1} streams NDJSON:
// one {"token", "text"} line per generated token (the text the token completes: a character whose
// UTF-8 bytes span several tokens comes with its last), then {"done": true, ...}. The texts join to
// the decoded tokens: the last token's line flushes the bytes of a character left incomplete (as
// U+FFFD, as tok.decode gives them), and the done line carries them as its "text" when EOS ends the
// stream early. A field of another type, null, not finite or out of range gets 400 naming it; a body
// over maxBodyBytes (default 1 MiB) 413 as soon as its length shows it (nothing of it kept); another
// method on /generate or /stats 405 with Allow. GET /stats reports the cache (pages, bytes, peak bytes, pressure events,
// automatic compressions, those of the streams in flight too). close() (SIGINT or SIGTERM on the command line) stops accepting, ends
// the streams in flight with {"error": "the server is shutting down"} (503 for requests not yet
// streaming), releases their sequences and then disposes the cache.
import * as http from "http";
import type { AddressInfo } from "net";
import { KVCache, Sequence, PressureEvent, InvalidArgumentError } from "../../ts";
import { Sampler, TinyLM, defaultModelDir, loadTinyLM, modelProfile } from "../../ts/model";
import { BenchCommand, OptionSpec, OptionValues, benchOptions, flagOption, intOption } from "../../bench/common";

export interface ServerOptions {
  /** Model directory. Default: the embedded tiny-lm. */
  modelDir?: string;
  /** Evict: autoCompress every sequence and compress under pool pressure. Default: true. */
  evict?: boolean;
  /**
   * Tokens per (layer, KV head) a sequence is compressed back to (with evict): an integer from 1 to
   * MAX_KEEP_TOKENS (a compression keeps at least the sink and window, 20 tokens). Default: 128.
   */
  keepTokens?: number;
  /**
   * Pool capacity in tokens of one (layer, KV head) (KVCache maxTokens / (layers x kvHeads)): an
   * integer >= 16, a page for each layer and KV head (a smaller pool holds no sequence at all).
   * Default: 4096.
   */
  poolTokens?: number;
  /**
   * Largest request body in bytes: a larger one gets 413 as soon as its Content-Length (or, without
   * one, the bytes read so far) says so, and is not kept. Default: DEFAULT_MAX_BODY_BYTES (1 MiB).
   */
  maxBodyBytes?: number;
}

/** The default ServerOptions.maxBodyBytes: 1 MiB, far more than the embedded model keeps of a prompt (its last 1,022 tokens at most). */
export const DEFAULT_MAX_BODY_BYTES = 1 << 20;

/** The error of requests cut short by close(): the last line of a stream, or a 503's body. */
export const SHUTTING_DOWN = "the server is shutting down";

/** The largest ServerOptions.keepTokens: 2^31 - 1, the most seq.autoCompress takes as maxTokens. */
export const MAX_KEEP_TOKENS = 2 ** 31 - 1;

/** Tokens of a cache page (the cache's default pageSize): the smallest ServerOptions.poolTokens. */
export const MIN_POOL_TOKENS = 16;

export interface ServerStats {
  requests: number;
  active: number;
  /** Token lines streamed (those of requests that failed later included). */
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
  /** The figures now; after close(), those of the moment before the cache was disposed. */
  stats(): ServerStats;
  /** Starts listening (port 0: any free port) and resolves with the port. */
  listen(port?: number, host?: string): Promise<number>;
  /**
   * Stops accepting connections, ends every request in flight (a stream with the line
   * {"error": "the server is shutting down"} at its next token, a request not yet streaming with
   * 503), waits for their sequences to be disposed and their responses to be sent (at most a second
   * for clients that do not read), closes the connections and disposes the cache. Calling it again
   * returns the same promise.
   */
  close(): Promise<void>;
}

const MAX_TOKENS = 256;
// Prompt tokens run per turn: between two such parts the other requests each make a decode step,
// so a long prompt does not hold every other stream back for its whole prefill.
const PREFILL_TURN = 64;
// How long close() lets the responses it ended reach their clients before closing the connections.
const CLOSE_GRACE_MS = 1000;
// The methods of each path (405 with Allow for the others).
const ROUTES: Record<string, readonly string[]> = { "/generate": ["POST"], "/stats": ["GET", "HEAD"] };

// What the tokenizer's pre-split sees of a UTF-16 unit: the class of its UTF-8 bytes (every byte of
// a character beyond ASCII, and of the U+FFFD a lone surrogate becomes, is a letter's).
const LETTER = 0, DIGIT = 1, WHITE = 2, PUNCT = 3;
function unitClass(u: number): number {
  if (u >= 128 || (u >= 65 && u <= 90) || (u >= 97 && u <= 122)) return LETTER;
  if (u >= 48 && u <= 57) return DIGIT;
  if (u === 32 || (u >= 9 && u <= 13)) return WHITE;
  return PUNCT;
}
const isHighSurrogate = (u: number) => u >= 0xd800 && u <= 0xdbff;
const isLowSurrogate = (u: number) => u >= 0xdc00 && u <= 0xdfff;

/**
 * Whether one of the pre-tokens of the whole `text` starts at index i (0 < i < length), so that
 * text.slice(i) tokenizes to the whole text's tokens after i (the rules of the tokenizer's preSplit):
 * a digit always starts one; white space after anything else, and the last space of a run of white
 * space before a letter or punctuation (it joins them); a letter or punctuation after a unit of
 * another class that is not a space (a space before them joins them).
 */
export function preTokenStarts(text: string, i: number): boolean {
  if (i <= 0 || i >= text.length) return true;
  const u = text.charCodeAt(i), before = text.charCodeAt(i - 1);
  const c = unitClass(u), b = unitClass(before);
  if (c === DIGIT) return true;
  if (c === WHITE) {
    if (b !== WHITE) return true;
    const after = i + 1 < text.length ? unitClass(text.charCodeAt(i + 1)) : WHITE;
    return u === 32 && (after === LETTER || after === PUNCT);
  }
  return b !== c && before !== 32;
}

/** The path of a request target: without its query, also for the absolute form (http://host/path). */
function pathOf(url = "/"): string {
  const q = url.indexOf("?");
  const target = q >= 0 ? url.slice(0, q) : url;
  if (target.startsWith("/")) return target;
  try {
    return new URL(target).pathname;
  } catch {
    return target;
  }
}

/**
 * A server on the model of `options.modelDir`, not yet listening.
 * @throws RangeError naming the option, before the model is loaded, when maxBodyBytes is not an
 * integer >= 1, keepTokens (with eviction on) not an integer from 1 to MAX_KEEP_TOKENS or
 * poolTokens not an integer >= MIN_POOL_TOKENS; after it is loaded, when poolTokens passes the
 * cache's limits.
 */
export function createGenerationServer(options: ServerOptions = {}): GenerationServer {
  const maxBody = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  if (!Number.isSafeInteger(maxBody) || maxBody < 1) throw new RangeError(`maxBodyBytes must be an integer >= 1 but is ${maxBody}`);
  // Checked here: a value the cache refuses would otherwise fail every request with a 503.
  const keepTokens = options.keepTokens ?? 128;
  if ((options.evict ?? true) && (!Number.isSafeInteger(keepTokens) || keepTokens < 1 || keepTokens > MAX_KEEP_TOKENS))
    throw new RangeError(`keepTokens must be an integer from 1 to ${MAX_KEEP_TOKENS} but is ${keepTokens}`);
  const poolTokens = options.poolTokens ?? 4096;
  if (!Number.isSafeInteger(poolTokens) || poolTokens < MIN_POOL_TOKENS)
    throw new RangeError(`poolTokens must be an integer >= ${MIN_POOL_TOKENS} (a page for each layer and KV head: a smaller pool holds no sequence) but is ${poolTokens}`);
  const dir = options.modelDir ?? defaultModelDir();
  const model = loadTinyLM(dir);
  const tok = model.tokenizer!;
  // The most bytes one token stands for: a text of n bytes has at least n / longestToken tokens.
  let longestToken = 1;
  for (let id = 0; id < tok.vocabSize; id++) longestToken = Math.max(longestToken, tok.decodeBytes([id]).length);
  const evict = options.evict ?? true;
  let cache: KVCache;
  try {
    cache = model.createCache({ dtype: "f16", contextTokens: poolTokens });
  } catch (e) {
    // A pool past the cache's limits: named as the caller named it.
    if (e instanceof InvalidArgumentError) throw new RangeError(`poolTokens ${poolTokens} is too large for a cache of this model: ${e.message}`);
    throw e;
  }
  const found = modelProfile(dir, "snapkv");
  const compression = found
    ? { scorer: "snapkv" as const, allocation: "lukv" as const, profile: found.profile, sink: 4, window: 16 }
    : { scorer: "snapkv" as const, allocation: "adakv" as const, sink: 4, window: 16 };
  const stats: ServerStats = { requests: 0, active: 0, tokens: 0, failed: 0, pagesUsed: 0, pagesTotal: 0, bytesUsed: 0, peakBytes: 0, pressureEvents: 0, autoCompressions: 0, decodeSteps: 0, decodeRows: 0 };
  if (evict) cache.onPressure({ evict: "largest", ratio: 0.5, ...compression, listener: (_e: PressureEvent) => stats.pressureEvents++ });
  let disposed = false;
  // Automatic compressions: those of the sequences disposed, plus those the live ones made so far.
  let compressionsDone = 0;
  const live = new Set<Sequence>();
  const note = () => {
    if (disposed) return; // after close(): the last figures stay
    let compressions = compressionsDone;
    for (const seq of live) compressions += seq.autoCompressions;
    stats.autoCompressions = compressions;
    const u = cache.usage();
    stats.pagesUsed = u.pagesUsed;
    stats.pagesTotal = u.pagesTotal;
    stats.bytesUsed = u.bytesUsed;
    stats.peakBytes = Math.max(stats.peakBytes, u.bytesUsed);
  };

  // The streams waiting for a decode step run together, once per turn of the event loop. A batch
  // whose members' steps need more new pages than are free (a (layer, KV head) whose last page is
  // full takes one; no sequence here is forked, so none copies a shared page) runs its members one
  // at a time instead, with eviction on too (each lone forward then goes through the pressure
  // policy): running out of pages fails only the streams that get no page, not all of the batch
  // (cache.appendBatch is all or nothing, and a failed forwardBatch may leave every member
  // half-appended). With eviction on the pool runs nearly full, so the need is counted (an automatic
  // compression due in the step only frees pages): a bound of a page per (layer, head) and member
  // made nearly every step run one stream at a time.
  type Waiting = { seq: Sequence; token: number; resolve: (logits: Float32Array) => void; reject: (e: unknown) => void };
  let waiting: Waiting[] = [];
  const decodeStep = (seq: Sequence, token: number) =>
    new Promise<Float32Array>((resolve, reject) => {
      waiting.push({ seq, token, resolve, reject });
      if (waiting.length === 1) setImmediate(runSteps);
    });
  const pageSize = cache.config.pageSize;
  const roomFor = (members: Waiting[]) => {
    let need = 0;
    for (const w of members) for (const length of w.seq.lengths()) if (length % pageSize === 0) need++;
    const u = cache.usage();
    return u.pagesTotal - u.pagesUsed >= need;
  };
  function runSteps(): void {
    const batch = waiting;
    waiting = [];
    if (batch.length > 1 && roomFor(batch)) {
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

  // Shutting down (close()): requests still reading their bodies are told at once (readers), the
  // others notice `closing` at their next prefill turn or token.
  let closing = false;
  const readers = new Set<() => void>();
  // The /generate requests being answered, and the moment each response is gone (sent or cut off).
  const running = new Set<Promise<void>>();
  const gone = new Set<Promise<void>>();

  type Body = Buffer | "too large" | "gone" | "closing";
  /**
   * The request's body as bytes, all of it before any decoding (a character split between two
   * reads stays whole); "too large" as soon as Content-Length or the bytes read pass maxBody (what
   * came is dropped), "gone" when the client left first, "closing" when close() came first.
   */
  function readBody(req: http.IncomingMessage): Promise<Body> {
    if (Number(req.headers["content-length"]) > maxBody) return Promise.resolve("too large");
    return new Promise((resolve) => {
      let parts: Buffer[] = [];
      let size = 0;
      const done = (body: Body) => {
        parts = [];
        readers.delete(stop);
        req.off("data", onData);
        resolve(body);
      };
      const stop = () => done("closing");
      const onData = (part: Buffer) => {
        size += part.length;
        if (size > maxBody) done("too large");
        else parts.push(part);
      };
      readers.add(stop);
      req.on("data", onData);
      req.once("end", () => done(Buffer.concat(parts, size)));
      req.once("error", () => done("gone"));
      req.once("close", () => done("gone")); // after "end" this changes nothing
    });
  }

  /** Ends the response with one NDJSON line unless it has ended or its connection is gone. */
  function endWith(res: http.ServerResponse, line: unknown): void {
    if (!res.writableEnded && !res.destroyed) res.end(JSON.stringify(line) + "\n");
  }

  /** A JSON reply; `close` asks the client to close the connection (a body not read, shutting down). */
  function reply(res: http.ServerResponse, status: number, body: unknown, close = false): void {
    if (res.headersSent || res.writableEnded || res.destroyed) return;
    res.writeHead(status, { "content-type": "application/json", ...(close ? { connection: "close" } : {}) });
    res.end(JSON.stringify(body) + "\n");
  }

  const describe = (e: unknown) => (e instanceof Error ? `${e.name}: ${e.message}` : String(e));

  async function generate(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const read = await readBody(req);
    if (read === "gone") return;
    if (read === "closing") return reply(res, 503, { error: SHUTTING_DOWN }, true);
    if (read === "too large") return reply(res, 413, { error: `the body must be at most ${maxBody} bytes` }, true);
    let body: { prompt?: unknown; tokens?: unknown; temperature?: unknown; seed?: unknown };
    try {
      body = JSON.parse(read.toString("utf8") || "{}");
    } catch {
      return reply(res, 400, { error: "the body must be JSON" });
    }
    if (body === null || typeof body !== "object" || Array.isArray(body)) return reply(res, 400, { error: "the body must be a JSON object" });
    // An absent field takes its default; null or any other type is refused like a bad value.
    const prompt = body.prompt === undefined ? "" : body.prompt;
    if (typeof prompt !== "string") return reply(res, 400, { error: "prompt must be a string" });
    const tokens = body.tokens === undefined ? 32 : body.tokens;
    if (typeof tokens !== "number" || !Number.isInteger(tokens) || tokens < 1 || tokens > MAX_TOKENS)
      return reply(res, 400, { error: `tokens must be an integer from 1 to ${MAX_TOKENS}` });
    const temperature = body.temperature === undefined ? 0.8 : body.temperature;
    if (typeof temperature !== "number" || !Number.isFinite(temperature) || temperature < 0)
      return reply(res, 400, { error: "temperature must be a finite number >= 0" });
    const seed = body.seed === undefined ? 1 : body.seed;
    if (typeof seed !== "number" || !Number.isInteger(seed) || seed < 0 || seed > 0xffffffff)
      return reply(res, 400, { error: "seed must be an integer from 0 to 4294967295" });
    if (closing) return reply(res, 503, { error: SHUTTING_DOWN }, true);
    // A prompt too long for the model's positions loses its start, never BOS (the model saw
    // every training text after BOS). The text is cut before it is tokenized, so that a long one
    // costs no more than one the model can take: a token stands for at most longestToken bytes and
    // a UTF-16 unit for at least one, so the last keep * longestToken units (the limit) give at
    // least `keep` tokens. The cut then moves back, at most as far again, to where one of the whole
    // prompt's pre-tokens starts (the tokenizer splits there), so the tokens kept are the whole
    // prompt's last ones (BPE splits a long word differently once its start is cut). A pre-token
    // longer than that (one word, or one run of punctuation or white space) is cut at the limit
    // itself, outside a surrogate pair: at most twice the limit is ever tokenized.
    const keep = Math.max(0, model.config.maxPosition - tokens - 1);
    const limit = Math.max(0, prompt.length - keep * longestToken);
    let from = limit;
    const lowest = Math.max(0, limit - keep * longestToken);
    while (from > lowest && !preTokenStarts(prompt, from)) from--;
    if (!preTokenStarts(prompt, from)) from = limit > 0 && isLowSurrogate(prompt.charCodeAt(limit)) && isHighSurrogate(prompt.charCodeAt(limit - 1)) ? limit - 1 : limit;
    const text = tok.encode(from > 0 ? prompt.slice(from) : prompt);
    const ids = [tok.bos!, ...text.slice(Math.max(0, text.length - keep))];
    stats.requests++;
    stats.active++;
    let seq: Sequence | undefined;
    let closed = false;
    res.on("close", () => (closed = true));
    try {
      seq = cache.createSequence();
      live.add(seq);
      if (evict) seq.autoCompress({ maxTokens: keepTokens, every: 32, ...compression });
      const t0 = performance.now();
      let logits: Float32Array = new Float32Array(0);
      for (let at = 0; at < ids.length && !closed && !closing; at += PREFILL_TURN) {
        const last = at + PREFILL_TURN >= ids.length;
        logits = model.forward(seq, ids.slice(at, at + PREFILL_TURN), { chunk: 64, logits: last ? "last" : "none" });
        note();
        if (!last) await new Promise((resolve) => setImmediate(resolve));
      }
      if (closed) return;
      if (closing) return reply(res, 503, { error: SHUTTING_DOWN }, true);
      // Made before the 200: an option it refused would get a 503, not a 200 and an error line.
      const sampler = new Sampler({ temperature, topK: 40, seed });
      res.writeHead(200, { "content-type": "application/x-ndjson" });
      // Tokens are bytes: a character whose UTF-8 bytes span several tokens streams with its last.
      // The last token's line, or the done line when the stream ends early, flushes the decoder: the
      // bytes of a character left incomplete come as U+FFFD, as tok.decode gives them.
      const utf8 = new TextDecoder("utf-8");
      let made = 0;
      let eos = false;
      for (; made < tokens && !closed && !closing; made++) {
        const next = sampler.next(logits);
        if (next === tok.eos) {
          eos = true;
          break;
        }
        res.write(JSON.stringify({ token: next, text: utf8.decode(tok.decodeBytes([next]), { stream: made + 1 < tokens }) }) + "\n");
        stats.tokens++; // streamed, whether or not the step that feeds it back succeeds
        note();
        // The last token is not fed back: its logits would never be used.
        if (made + 1 < tokens) {
          logits = await decodeStep(seq, next);
          note(); // the step may have taken a page: the peak counts it even when the stream ends now
        }
      }
      if (closed) return;
      const rest = utf8.decode();
      if (closing && !eos && made < tokens) return endWith(res, { error: SHUTTING_DOWN });
      const lengths = seq.lengths();
      endWith(res, { done: true, ...(rest ? { text: rest } : {}), tokens: made, promptTokens: ids.length, kept: lengths.reduce((a, b) => a + b, 0), ms: performance.now() - t0 });
    } catch (e) {
      stats.failed++;
      const error = describe(e);
      if (!res.headersSent) reply(res, 503, { error });
      else endWith(res, { error });
    } finally {
      if (seq) {
        compressionsDone += seq.autoCompressions;
        live.delete(seq);
        seq.dispose();
      }
      stats.active--;
      note();
    }
  }

  function handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = pathOf(req.url);
    const methods = Object.prototype.hasOwnProperty.call(ROUTES, path) ? ROUTES[path] : undefined;
    if (!methods) return reply(res, 404, { error: "POST /generate or GET /stats" });
    if (!methods.includes(req.method ?? "")) {
      res.setHeader("allow", methods.join(", "));
      return reply(res, 405, { error: `${path} takes ${methods.join(" or ")}, not ${req.method}` });
    }
    if (path === "/stats") {
      note();
      return reply(res, 200, stats);
    }
    if (closing) return reply(res, 503, { error: SHUTTING_DOWN }, true);
    const ended: Promise<void> = new Promise<void>((resolve) => res.once("close", resolve)).then(() => void gone.delete(ended));
    gone.add(ended);
    const answered: Promise<void> = generate(req, res)
      .catch((e) => {
        // Not reached by design (generate answers its own errors); if it is, fail this request only.
        if (!res.headersSent) reply(res, 500, { error: describe(e) });
        else endWith(res, { error: describe(e) });
      })
      .finally(() => running.delete(answered));
    running.add(answered);
  }

  const server = http.createServer(handle);
  // "Expect: 100-continue": a body over the limit is refused before the client sends it.
  server.on("checkContinue", (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (!(Number(req.headers["content-length"]) > maxBody)) res.writeContinue();
    handle(req, res);
  });

  let shutdown: Promise<void> | undefined;
  async function close(): Promise<void> {
    closing = true;
    // Stop accepting; the connections end when their responses do (or below).
    const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    for (const stop of [...readers]) stop();
    // Every generate() stops at its next turn, ends its response and disposes its sequence.
    await Promise.all([...running]);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all([...gone]), new Promise((resolve) => (timer = setTimeout(resolve, CLOSE_GRACE_MS)))]);
    clearTimeout(timer);
    server.closeAllConnections();
    await stopped;
    note();
    disposed = true;
    cache.dispose();
  }

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
    close: () => (shutdown ??= close()),
  };
}

/** The command lines of the server and the load test: bench/common's options, usage and errors. */
export function exampleOptions<T extends Record<string, OptionSpec>>(command: BenchCommand<T>, argv: readonly string[] = process.argv.slice(2)): OptionValues<T> {
  return benchOptions({ folder: "dist/examples/server", ...command }, argv);
}

const SERVER_COMMAND = {
  script: "server",
  about: "Streams text from the embedded model: POST /generate {prompt, tokens, temperature, seed}, GET /stats (see examples/README.md).",
  options: {
    port: intOption({ default: 8080, min: 0, max: 65535, help: "port on 127.0.0.1 (0: any free port)" }),
    "max-body-bytes": intOption({ default: DEFAULT_MAX_BODY_BYTES, min: 1, help: "largest request body; a larger one gets 413" }),
    "no-evict": flagOption("no autoCompress and no compression under pool pressure"),
  },
} satisfies BenchCommand<Record<string, OptionSpec>>;

if (require.main === module) {
  const o = exampleOptions(SERVER_COMMAND);
  const s = createGenerationServer({ evict: !o["no-evict"], maxBodyBytes: o["max-body-bytes"] });
  s.listen(o.port, "127.0.0.1").then(
    (p) => console.log(`lukv example server on http://127.0.0.1:${p} (POST /generate, GET /stats)`),
    (e: NodeJS.ErrnoException) => {
      console.error(`cannot listen on 127.0.0.1:${o.port}: ${e.code === "EADDRINUSE" ? "the port is in use" : e.message}`);
      process.exit(1);
    },
  );
  // The first SIGINT or SIGTERM ends the streams in flight and exits once they are ended; a second exits at once.
  const shutdown = (signal: NodeJS.Signals) => {
    process.once(signal, () => process.exit(1));
    console.log(`${signal}: shutting down`);
    s.close().then(() => process.exit(0));
  };
  process.once("SIGINT", shutdown);
  process.once("SIGTERM", shutdown);
}
