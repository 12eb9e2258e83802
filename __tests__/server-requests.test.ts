// The example server facing bad, large, split or unlucky requests, and close() with streams in
// flight: each answer comes before any work is done where the request is refused, the body is
// decoded whole, a stream's texts join to its decoded tokens, and shutting down ends every stream
// cleanly before the cache is disposed.
import * as fs from "fs";
import * as http from "http";
import * as net from "net";
import * as path from "path";
import { defaultModelDir } from "../ts/model";
import type { Sequence } from "../ts";
import { createGenerationServer, GenerationServer, preTokenStarts } from "../examples/server/server";
import { preSplit } from "../ts/model";

const haveModel = fs.existsSync(path.join(defaultModelDir(), "model.safetensors"));
const maybe = haveModel ? describe : describe.skip;

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  lines: Record<string, unknown>[];
}

/** Fails after `ms` instead of waiting for the test's own timeout (a server that never answers). */
function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms: ${what}`)), ms)))]).finally(() => clearTimeout(timer));
}

/** One request: one part is sent with a Content-Length, several are chunked and written 50 ms apart. */
function request(port: number, method: string, url: string, parts: (string | Buffer)[] = []): Promise<Answer> {
  return within(10_000, `${method} ${url}`, new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, path: url, method, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (body += c));
      res.on("end", () => {
        const lines = body.split("\n").filter((l) => l).map((l) => JSON.parse(l));
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, lines });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    if (parts.length <= 1) return void req.end(parts[0]); // with a Content-Length
    (async () => {
      for (let i = 0; i < parts.length; i++) {
        if (i > 0) await new Promise((r) => setTimeout(r, 50));
        req.write(parts[i]);
      }
      req.end();
    })();
  }));
}

const post = (port: number, body: string | Buffer) => request(port, "POST", "/generate", [body]);

/** Writes `text` on a raw connection and resolves with what comes back once the head of a response has (the connection stays open). */
function rawHead(port: number, text: string | Buffer): Promise<{ head: string; socket: net.Socket }> {
  return within(10_000, "a response head", new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    let got = "";
    socket.on("error", reject);
    socket.on("data", (d) => {
      got += d;
      if (got.includes("\r\n\r\n")) resolve({ head: got, socket });
    });
    socket.write(text);
  }));
}

/** Reads one response to its end. */
function answer(req: http.ClientRequest): Promise<Answer> {
  return new Promise((resolve, reject) => {
    req.on("response", (res: http.IncomingMessage) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, lines: body.split("\n").filter((l) => l).map((l) => JSON.parse(l)) }));
      res.on("error", reject);
    });
    req.on("error", reject);
  });
}

/**
 * POSTs each body to /generate holding back its last byte until the server has every request's
 * head, then sends those bytes at once: the server reads them in one turn, so the streams start
 * together and share every decode step (the test runs on the server's thread, which cannot read
 * between two of these writes).
 */
async function together(s: GenerationServer, port: number, bodies: unknown[]): Promise<Answer[]> {
  let heads = 0;
  let all!: () => void;
  const headsIn = new Promise<void>((resolve) => (all = resolve));
  const onRequest = () => void (++heads === bodies.length && all());
  s.server.on("request", onRequest);
  const sent = bodies.map((b) => {
    const bytes = Buffer.from(JSON.stringify(b));
    const req = http.request({ host: "127.0.0.1", port, path: "/generate", method: "POST", agent: false, headers: { "content-length": bytes.length } });
    const answered = answer(req);
    req.write(bytes.subarray(0, bytes.length - 1));
    return { req, last: bytes.subarray(bytes.length - 1), answered };
  });
  try {
    await within(10_000, "the requests' heads", headsIn);
  } finally {
    s.server.off("request", onRequest);
  }
  for (const { req, last } of sent) req.end(last);
  return within(20_000, "the streams", Promise.all(sent.map((x) => x.answered)));
}

const UNICODE_PROMPT = "Ünïcödé wörds: naïve, façade, résumé, über, señor, Zürich, São Paulo, Malmö,";

maybe("the example server's requests", () => {
  let s: GenerationServer;
  let port: number;
  // Every sequence's tokens, in the order forward() saw them; and every text the tokenizer encoded.
  let prefilled: number[][];
  let encoded: string[];
  beforeAll(async () => {
    s = createGenerationServer({ evict: true });
    port = await s.listen(0);
    const seqs = new Map<unknown, number[]>();
    const forward = s.model.forward.bind(s.model);
    s.model.forward = ((seq, tokens, options) => {
      if (!seqs.has(seq)) prefilled.push(seqs.set(seq, []).get(seq)!);
      seqs.get(seq)!.push(...Array.from(tokens));
      return forward(seq, tokens, options);
    }) as typeof s.model.forward;
    const tok = s.model.tokenizer!;
    const encode = tok.encode.bind(tok);
    tok.encode = (text: string) => {
      encoded.push(text);
      return encode(text);
    };
  });
  beforeEach(() => {
    prefilled = [];
    encoded = [];
  });
  afterAll(() => s.close());

  /** Posts each body and expects 400 with its error, nothing prefilled and no request counted. */
  async function refused(cases: [string, string][]): Promise<void> {
    const before = s.stats();
    for (const [body, error] of cases) {
      const a = await post(port, body);
      expect([body, a.status, a.headers["content-type"], a.lines]).toEqual([body, 400, "application/json", [{ error }]]);
    }
    expect(prefilled).toEqual([]);
    expect(s.stats()).toMatchObject({ requests: before.requests, failed: before.failed, active: 0 });
  }

  test("a non-finite or out-of-range number gets 400 naming its field, before anything is prefilled", async () => {
    // 1e400 is JSON for a number that parses to Infinity.
    await refused([
      ['{"prompt":"The river","tokens":2,"temperature":1e400}', "temperature must be a finite number >= 0"],
      ['{"prompt":"The river","tokens":2,"temperature":-1e400}', "temperature must be a finite number >= 0"],
      ['{"prompt":"The river","tokens":2,"temperature":-1}', "temperature must be a finite number >= 0"],
      ['{"prompt":"The river","tokens":2,"temperature":"1"}', "temperature must be a finite number >= 0"],
      ['{"prompt":"The river","tokens":1e400}', "tokens must be an integer from 1 to 256"],
      ['{"prompt":"The river","tokens":257}', "tokens must be an integer from 1 to 256"],
      ['{"prompt":"The river","tokens":2,"seed":1e400}', "seed must be an integer from 0 to 4294967295"],
    ]);
    // A large finite temperature is a temperature.
    const a = await post(port, '{"prompt":"The river","tokens":1,"temperature":1e300}');
    expect([a.status, a.lines.at(-1)]).toEqual([200, expect.objectContaining({ done: true, tokens: 1 })]);
  });

  test("a prompt that is not a string, or null for any field, gets 400 naming the field", async () => {
    await refused([
      ['{"prompt":null,"tokens":2}', "prompt must be a string"],
      ['{"prompt":123,"tokens":2}', "prompt must be a string"],
      ['{"prompt":["The river"],"tokens":2}', "prompt must be a string"],
      ['{"prompt":{"text":"The river"},"tokens":2}', "prompt must be a string"],
      ['{"prompt":true,"tokens":2}', "prompt must be a string"],
      ['{"prompt":"The river","tokens":null}', "tokens must be an integer from 1 to 256"],
      ['{"prompt":"The river","tokens":2,"temperature":null}', "temperature must be a finite number >= 0"],
      ['{"prompt":"The river","tokens":2,"seed":null}', "seed must be an integer from 0 to 4294967295"],
    ]);
    // Absent fields still take their defaults (an empty prompt: BOS alone).
    const a = await post(port, '{"tokens":1}');
    expect([a.status, a.lines.at(-1)]).toEqual([200, expect.objectContaining({ done: true, tokens: 1, promptTokens: 1 })]);
  });

  test("a body whose bytes arrive split inside a UTF-8 character reads as the same prompt", async () => {
    const body = Buffer.from(JSON.stringify({ prompt: "Café €5 🙂", tokens: 1, temperature: 0 }));
    const whole = await request(port, "POST", "/generate", [body]);
    // Cuts between the bytes of é, of € (3 bytes) and of the emoji (4 bytes), each part written on its own.
    const at = (c: string, k: number) => body.indexOf(Buffer.from(c)) + k;
    const cuts = [at("é", 1), at("€", 1), at("€", 2), at("🙂", 1), at("🙂", 3)];
    const parts = [0, ...cuts].map((from, i) => body.subarray(from, i < cuts.length ? cuts[i] : body.length));
    const split = await request(port, "POST", "/generate", parts);
    expect(encoded).toEqual(["Café €5 🙂", "Café €5 🙂"]);
    expect(split.status).toBe(200);
    expect(split.lines).toEqual(whole.lines.map((l) => ("ms" in l ? { ...l, ms: expect.any(Number) } : l)));
  });

  test("a cut that falls inside a long word moves back to where the word starts", async () => {
    // BPE splits a long run of one letter by its length: tokenizing the run from a cut in its middle
    // gave other last tokens than the whole prompt's ([..., 3747, 3747, 3747] for [..., 3747, 3747, 120]).
    const prompt = "y ".repeat(5000) + "x".repeat(20079);
    const tokens = 256;
    const keep = s.model.config.maxPosition - tokens - 1;
    // Once the prefill is done the client leaves (the tokens after it would take seconds).
    const req = http.request({ host: "127.0.0.1", port, path: "/generate", method: "POST", agent: false });
    req.on("error", () => {});
    req.end(JSON.stringify({ prompt, tokens }));
    await within(20_000, "the prefill", (async () => {
      while ((prefilled[0]?.length ?? 0) <= keep) await new Promise((r) => setTimeout(r, 2));
    })());
    req.destroy();
    while (s.stats().active > 0) await new Promise((r) => setTimeout(r, 2));
    expect(encoded).toEqual([prompt.slice(prompt.lastIndexOf(" "))]);
    const tok = s.model.tokenizer!;
    const all = tok.encode(prompt);
    expect(prefilled[0].slice(0, keep + 1)).toEqual([tok.bos, ...all.slice(all.length - keep)]);
  }, 30_000);

  test("a long prompt is cut before it is tokenized, to the same last tokens", async () => {
    // ~200 KiB: under the 1 MiB body limit, about 10,000 times what the model can take.
    const piece = "Ünïcödé 🙂 the river ran past façade and Zürich, 42 times; ";
    const prompt = piece.repeat(Math.ceil((200 * 1024) / piece.length));
    const tokens = 256;
    // The first prefill turn shows where the cut fell; the client then leaves (the rest would take a second).
    const req = http.request({ host: "127.0.0.1", port, path: "/generate", method: "POST", agent: false });
    req.on("error", () => {});
    req.end(JSON.stringify({ prompt, tokens }));
    await within(10_000, "the first prefill turn", (async () => {
      while (prefilled.length === 0) await new Promise((r) => setTimeout(r, 2));
    })());
    req.destroy();
    while (s.stats().active > 0) await new Promise((r) => setTimeout(r, 2));
    // What was tokenized is a short tail (the model's positions times the longest token's 20 bytes, and a margin)...
    expect(encoded).toHaveLength(1);
    expect(encoded[0].length).toBeLessThan(32 * 1024);
    expect(prompt.endsWith(encoded[0])).toBe(true);
    // ... whose tokens are those the whole prompt would give: BOS, then the last `keep` of its tokens.
    const tok = s.model.tokenizer!;
    const keep = s.model.config.maxPosition - tokens - 1;
    const all = tok.encode(prompt);
    const turn = prefilled[0];
    expect(turn).toEqual([tok.bos, ...all.slice(all.length - keep)].slice(0, turn.length));
    expect(turn.length).toBeGreaterThanOrEqual(64);
  });

  test("a huge prompt with no pre-token start near the cut is still cut: at most twice the limit is tokenized", async () => {
    const tok = s.model.tokenizer!;
    let longestToken = 1;
    for (let id = 0; id < tok.vocabSize; id++) longestToken = Math.max(longestToken, tok.decodeBytes([id]).length);
    const tokens = 256;
    const keep = s.model.config.maxPosition - tokens - 1;
    const limit = keep * longestToken; // the characters that certainly hold `keep` tokens
    const n = 200_000;
    // [prompt, whether the tokens kept are the whole prompt's last ones]: digits, and letters after
    // punctuation, start pre-tokens everywhere; the others are one pre-token over the cut.
    const cases: [string, string, boolean][] = [
      ["digits", "7".repeat(n), true],
      ["words and commas", "a,".repeat(n / 2), true],
      ["spaces", " ".repeat(n) + "x", false],
      ["commas", ",".repeat(n), false],
      ["one word", "a".repeat(n), false],
      ["one word of emoji", "🙂".repeat(n / 2), false],
    ];
    for (const [name, prompt, same] of cases) {
      prefilled = [];
      encoded = [];
      const req = http.request({ host: "127.0.0.1", port, path: "/generate", method: "POST", agent: false });
      req.on("error", () => {});
      req.end(JSON.stringify({ prompt, tokens }));
      await within(10_000, `the first prefill turn of ${name}`, (async () => {
        while (prefilled.length === 0) await new Promise((r) => setTimeout(r, 2));
      })());
      req.destroy();
      while (s.stats().active > 0) await new Promise((r) => setTimeout(r, 2));
      expect([name, encoded.length]).toEqual([name, 1]);
      expect([name, encoded[0].length <= 2 * limit, prompt.endsWith(encoded[0])]).toEqual([name, true, true]);
      expect([name, encoded[0].length >= limit]).toEqual([name, true]);
      expect(encoded[0]).not.toMatch(/^[\udc00-\udfff]/); // not cut inside a surrogate pair
      const turn = prefilled[0];
      expect([name, turn[0], turn.length >= 64]).toEqual([name, tok.bos, true]);
      if (same) {
        const all = tok.encode(prompt);
        expect([name, turn]).toEqual([name, [tok.bos, ...all.slice(all.length - keep)].slice(0, turn.length)]);
      }
    }
  }, 60_000);

  test("the texts of a stream join to its decoded tokens, also when it ends inside a character", async () => {
    const tok = s.model.tokenizer!;
    // Seeds until a stream's last token leaves a character incomplete (seed 1 does on x86 CPUs).
    let cut = 0;
    for (let seed = 1; seed <= 20 && cut === 0; seed++) {
      const a = await post(port, JSON.stringify({ prompt: UNICODE_PROMPT, tokens: 5, temperature: 1.2, seed }));
      expect(a.status).toBe(200);
      const streamed = a.lines.filter((l) => "token" in l);
      const decoded = tok.decode(streamed.map((l) => l.token as number));
      // Every line's text joined (the done line has one when EOS came after part of a character)...
      expect([seed, a.lines.map((l) => l.text ?? "").join("")]).toEqual([seed, decoded]);
      // ... and when all 5 tokens came, the token lines alone: the last one flushes the decoder.
      if (streamed.length === 5) {
        expect([seed, streamed.map((l) => l.text).join("")]).toEqual([seed, decoded]);
        expect(a.lines.at(-1)).not.toHaveProperty("text");
        if (decoded.endsWith("\uFFFD")) cut++;
      }
    }
    expect(cut).toBeGreaterThan(0); // the case is exercised
  });

  test("a known path with another method gets 405 and Allow; a query string reaches its path", async () => {
    for (const [method, url, allow] of [["GET", "/generate", "POST"], ["PUT", "/generate", "POST"], ["DELETE", "/generate?x=1", "POST"], ["POST", "/stats", "GET, HEAD"], ["PUT", "/stats?x", "GET, HEAD"]]) {
      const a = await request(port, method, url, method === "GET" ? [] : ['{"tokens":1}']);
      const p = url.split("?")[0];
      expect([method, url, a.status, a.headers.allow, a.lines]).toEqual([method, url, 405, allow, [{ error: `${p} takes ${allow.replace(", ", " or ")}, not ${method}` }]]);
    }
    const stats = await request(port, "GET", "/stats?verbose=1");
    expect([stats.status, stats.lines[0]]).toEqual([200, expect.objectContaining({ active: 0 })]);
    const head = await request(port, "HEAD", "/stats");
    expect([head.status, head.headers["content-type"], head.body]).toEqual([200, "application/json", ""]);
    const gen = await request(port, "POST", "/generate?stream=1", ['{"tokens":1}']);
    expect([gen.status, gen.lines.at(-1)]).toEqual([200, expect.objectContaining({ done: true })]);
    for (const url of ["/", "/generate/", "/stat", "/generate%3F"]) {
      const a = await request(port, "GET", url);
      expect([url, a.status, a.lines]).toEqual([url, 404, [{ error: "POST /generate or GET /stats" }]]);
    }
  });

  test("by default a body over 1 MiB gets 413 from its Content-Length alone", async () => {
    const before = s.stats().requests;
    const { head, socket } = await rawHead(port, "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n{");
    socket.destroy();
    expect(head).toMatch(/^HTTP\/1\.1 413 /);
    expect(head).toContain('{"error":"the body must be at most 1048576 bytes"}');
    expect(s.stats().requests).toBe(before);
  });
});

maybe("the example server's body limit (maxBodyBytes)", () => {
  let s: GenerationServer;
  let port: number;
  beforeAll(async () => {
    s = createGenerationServer({ maxBodyBytes: 1000 });
    port = await s.listen(0);
  });
  afterAll(() => s.close());

  test("a body over the limit gets 413 before it is all sent; one at the limit is served", async () => {
    const error = { error: "the body must be at most 1000 bytes" };
    // A declared length over the limit: answered before any of the body comes (with "connection: close").
    const declared = await rawHead(port, "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n");
    declared.socket.destroy();
    expect(declared.head).toMatch(/^HTTP\/1\.1 413 /);
    expect(declared.head.toLowerCase()).toContain("connection: close");
    expect(declared.head).toContain(JSON.stringify(error));
    // Chunked, no length: answered once 1001 bytes have come, while the client still sends.
    const chunk = (s: string) => `${Buffer.byteLength(s).toString(16)}\r\n${s}\r\n`;
    const chunked = await rawHead(port, "POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(`{"prompt":"${"a".repeat(600)}`) + chunk("b".repeat(400)));
    chunked.socket.destroy();
    expect(chunked.head).toMatch(/^HTTP\/1\.1 413 /);
    expect(chunked.head).toContain(JSON.stringify(error));
    // Through an ordinary client, with and without a length.
    const over = JSON.stringify({ prompt: "x".repeat(1000), tokens: 1 });
    expect((await post(port, over)).lines).toEqual([error]);
    expect((await request(port, "POST", "/generate", [over.slice(0, 500), over.slice(500)])).lines).toEqual([error]);
    // "Expect: 100-continue": refused without asking for the body.
    const expecting = await rawHead(port, "POST /generate HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n");
    expecting.socket.destroy();
    expect(expecting.head).toMatch(/^HTTP\/1\.1 413 /);
    // 1000 bytes exactly (spaces after the JSON) are served.
    const json = JSON.stringify({ prompt: "The river", tokens: 1 });
    const atLimit = await post(port, json.padEnd(1000));
    expect([atLimit.status, atLimit.lines.at(-1)]).toEqual([200, expect.objectContaining({ done: true, tokens: 1 })]);
    expect(s.stats()).toMatchObject({ requests: 1, failed: 0, active: 0 });
  });
});

maybe("the example server's close()", () => {
  test("close() with streams in flight ends each cleanly, releases their sequences, then disposes the cache", async () => {
    const s = createGenerationServer();
    const port = await s.listen(0);
    const streams = [1, 2, 3].map((seed) => request(port, "POST", "/generate", [JSON.stringify({ prompt: "The river", tokens: 256, seed })]));
    // A request still sending its body, and an idle connection.
    const reading = net.connect(port, "127.0.0.1");
    let readingGot = "";
    reading.on("data", (d) => (readingGot += d));
    reading.on("error", () => {});
    reading.write('POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"prompt":');
    const idle = net.connect(port, "127.0.0.1");
    idle.on("error", () => {});
    while (s.stats().tokens < 12) await new Promise((r) => setTimeout(r, 5));
    const readingClosed = new Promise((r) => reading.on("close", r));
    const idleClosed = new Promise((r) => idle.on("close", r));
    const before = s.stats();
    expect(before.active).toBe(3); // the fourth is still reading its body
    await within(5000, "close()", s.close());
    const after = s.stats(); // the figures of the moment before the cache was disposed
    expect(after).toMatchObject({ active: 0, pagesUsed: 0, bytesUsed: 0, failed: 0 });
    expect(after.tokens).toBeLessThan(3 * 256);
    expect(() => s.cache.usage()).toThrow(/dispose/);
    for (const a of await Promise.all(streams)) {
      expect(a.status).toBe(200);
      expect(a.lines.length).toBeGreaterThan(1);
      expect(a.lines.slice(0, -1).every((l) => typeof l.token === "number")).toBe(true);
      expect(a.lines.at(-1)).toEqual({ error: "the server is shutting down" });
    }
    await within(5000, "the other connections to close", Promise.all([readingClosed, idleClosed]));
    expect(readingGot).toMatch(/^HTTP\/1\.1 503 /);
    expect(readingGot).toContain('{"error":"the server is shutting down"}');
    await s.close(); // a second close() is the first one's
    await new Promise((r) => setTimeout(r, 50)); // an error after close() would surface here
  });
});

maybe("the example server short of pages, and its counts", () => {
  // A pool of 2 pages per (layer, KV head). "The river" (3 tokens after BOS) fills one page at its
  // 16th position and needs a second at its 17th, in the decode step where the empty prompt's stream
  // is at its 14th and needs no page; no page is free and neither sequence is long enough to
  // compress (the sink and window, 20 tokens). Only the stream that gets no page may fail: the
  // other goes on, with eviction on as with it off (a batch whose appendBatch failed ended both).
  test("a decode batch short of pages fails only the stream that gets no page, with eviction on or off", async () => {
    for (const evict of [false, true]) {
      const s = createGenerationServer({ evict, poolTokens: 32 });
      const port = await s.listen(0);
      try {
        const [a, b] = await together(s, port, [
          { prompt: "The river", tokens: 30, temperature: 0 },
          { prompt: "", tokens: 30, temperature: 0 },
        ]);
        expect([evict, a.status, a.lines.at(-1)]).toEqual([evict, 200, { error: expect.stringMatching(/^OutOfPagesError: /) }]);
        expect([evict, a.lines.filter((l) => "token" in l).length]).toEqual([evict, 13]); // its 13th token, fed back as its 17th position, found no page
        expect([evict, b.status, b.lines.at(-1)]).toEqual([evict, 200, expect.objectContaining({ done: true, tokens: 30 })]);
        expect([evict, s.stats()]).toEqual([evict, expect.objectContaining({ requests: 2, failed: 1, active: 0, pagesUsed: 0 })]);
      } finally {
        await s.close();
      }
    }
  });

  test("/stats counts the automatic compressions of the streams in flight, not only of those that ended", async () => {
    const s = createGenerationServer({ keepTokens: 8 });
    const port = await s.listen(0);
    try {
      const seqs: Sequence[] = [];
      const create = s.cache.createSequence.bind(s.cache);
      s.cache.createSequence = ((...args: Parameters<typeof create>) => {
        const seq = create(...args);
        seqs.push(seq);
        return seq;
      }) as typeof s.cache.createSequence;
      const req = http.request({ host: "127.0.0.1", port, path: "/generate", method: "POST", agent: false });
      req.on("error", () => {});
      req.end(JSON.stringify({ prompt: "The river", tokens: 256, temperature: 0 }));
      // 256 tokens compressed back to 8 every 32: the first compression comes long before the stream ends.
      await within(10_000, "the stream's first automatic compression", (async () => {
        while ((seqs[0]?.autoCompressions ?? 0) === 0) await new Promise((r) => setTimeout(r, 2));
      })());
      const during = s.stats();
      expect(during.active).toBe(1);
      expect(during.autoCompressions).toBe(seqs[0].autoCompressions);
      const stats = (await request(port, "GET", "/stats")).lines[0];
      expect(stats.active).toBe(1);
      expect(stats.autoCompressions).toBeGreaterThanOrEqual(during.autoCompressions);
      req.destroy();
      while (s.stats().active > 0) await new Promise((r) => setTimeout(r, 2));
      expect(s.stats().autoCompressions).toBeGreaterThanOrEqual(stats.autoCompressions as number);
    } finally {
      await s.close();
    }
  });
});

test("preTokenStarts: a cut there tokenizes as the whole text does after it (the tokenizer's pre-split, on random text)", () => {
  const alphabet = ["a", "b", "Z", "7", "0", " ", " ", " ", "\t", "\n", "\r", ",", ".", "!", "-", "_", "é", "€", "🙂", "\ud800"];
  let state = 12345;
  const next = (n: number) => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return (state >>> 8) % n;
  };
  const encoder = new TextEncoder();
  let checked = 0;
  for (let t = 0; t < 3000; t++) {
    let text = "";
    for (let k = 1 + next(14); k > 0; k--) text += alphabet[next(alphabet.length)];
    const starts = new Set(preSplit(encoder.encode(text)).map(([from]) => from));
    for (let i = 1; i < text.length; i++) {
      const u = text.charCodeAt(i);
      // Inside a surrogate pair no cut is a start; elsewhere, the unit's first byte starts a pre-token or not.
      const inPair = u >= 0xdc00 && u <= 0xdfff && /[\ud800-\udbff]/.test(text[i - 1]) && encoder.encode(text.slice(i - 1, i + 1)).length === 4;
      const want = !inPair && starts.has(encoder.encode(text.slice(0, i)).length);
      expect([text, i, preTokenStarts(text, i)]).toEqual([text, i, want]);
      checked++;
    }
  }
  expect(checked).toBeGreaterThan(10_000);
  expect([preTokenStarts("ab", 0), preTokenStarts("ab", 2)]).toEqual([true, true]);
});
