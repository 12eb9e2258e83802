// The example server under a small load test on loopback: every request streams its tokens, the
// streams decode together, and with eviction the peak KV memory is lower than without.
import * as fs from "fs";
import * as path from "path";
import * as http from "http";
import type { AddressInfo } from "net";
import { TinyLM, defaultModelDir } from "../ts/model";
import { runClients, runLoad, loadPrompts, percentile, post } from "../examples/server/load-test";
import { createGenerationServer, MAX_KEEP_TOKENS, MIN_POOL_TOKENS } from "../examples/server/server";

const haveModel = fs.existsSync(path.join(defaultModelDir(), "model.safetensors"));

(haveModel ? test : test.skip)("2 clients, 4 requests of 8 tokens, with and without eviction", async () => {
  const o = { clients: 2, requests: 4, tokens: 8, promptTokens: 160, poolTokens: 2048, keepTokens: 64 };
  const prompts = loadPrompts(o.promptTokens);
  expect(prompts.length).toBeGreaterThan(0);
  const off = await runLoad(false, o, prompts);
  const on = await runLoad(true, o, prompts);
  for (const r of [off, on]) {
    expect(r.failed).toBe(0);
    expect(r.server.requests).toBe(4);
    expect(r.server.active).toBe(0);
    expect(r.server.pagesUsed).toBe(0); // every sequence gave its pages back
    expect(r.tokens).toBeGreaterThan(0);
  }
  // The two clients' streams decode at the same time: some steps serve both (model.forwardBatch).
  for (const r of [off, on]) expect(r.server.decodeRows).toBeGreaterThan(r.server.decodeSteps);
  expect(on.server.autoCompressions).toBeGreaterThan(0);
  expect(off.server.autoCompressions).toBe(0);
  expect(on.peakKvBytes).toBeLessThan(off.peakKvBytes);
}, 240_000);

// Requests take turns on the one JavaScript thread. A prompt runs 64 tokens per turn, so a short
// request sent while a long prompt is being read streams its first token before the long one's.
// (Were the prompt run in one go, the short request could only start after it.)
(haveModel ? test : test.skip)("a short request overtakes a long prompt's prefill", async () => {
  const s = createGenerationServer({ evict: false });
  const port = await s.listen(0);
  try {
    const [long] = loadPrompts(900); // 14 turns of 64 tokens
    const short = loadPrompts(16)[0];
    const firsts: string[] = [];
    const onLine = (who: string) => (line: Record<string, unknown>) => {
      if ("token" in line && !firsts.includes(who)) firsts.push(who);
      if ("error" in line) throw new Error(String(line.error));
    };
    const a = post(port, { prompt: long, tokens: 4 }, onLine("long"));
    // Wait until the long prompt is being read (its request counted), then send the short one.
    while (s.stats().requests === 0) await new Promise((resolve) => setTimeout(resolve, 1));
    const b = post(port, { prompt: short, tokens: 4 }, onLine("short"));
    expect(await Promise.all([a, b])).toEqual([200, 200]);
    expect(firsts).toEqual(["short", "long"]);
  } finally {
    await s.close();
  }
}, 120_000);

(haveModel ? test : test.skip)("bad bodies get 400 and the server goes on; a long prompt keeps BOS; streamed text joins to the decoded tokens", async () => {
  const s = createGenerationServer({ evict: true });
  const port = await s.listen(0);
  try {
    // Bodies that are JSON but not an object.
    for (const body of [null, [1, 2], 7, "text"]) {
      const lines: Record<string, unknown>[] = [];
      expect(await post(port, body, (l) => lines.push(l))).toBe(400);
      expect(lines).toEqual([{ error: "the body must be a JSON object" }]);
    }
    for (const seed of [-1, 1.5, "7", 2 ** 32]) {
      const lines: Record<string, unknown>[] = [];
      expect(await post(port, { prompt: "The river", tokens: 2, seed }, (l) => lines.push(l))).toBe(400);
      expect(lines).toEqual([{ error: "seed must be an integer from 0 to 4294967295" }]);
    }
    // Every sequence the server prefills starts with BOS, however long the prompt.
    const tok = s.model.tokenizer!;
    const firstTokens: number[] = [];
    const forward = s.model.forward.bind(s.model);
    const seen = new Set<unknown>();
    s.model.forward = ((seq, tokens, options) => {
      if (!seen.has(seq)) firstTokens.push(tokens[0]);
      seen.add(seq);
      return forward(seq, tokens, options);
    }) as typeof s.model.forward;
    const [long] = loadPrompts(1500);
    let done: Record<string, unknown> = {};
    expect(await post(port, { prompt: long.repeat(3), tokens: 4 }, (l) => (done = "done" in l ? l : done))).toBe(200);
    expect(firstTokens).toEqual([tok.bos]);
    expect(done.promptTokens).toBe(s.model.config.maxPosition - 4);
    // Characters whose UTF-8 bytes span several byte tokens: the stream's texts join to the
    // decoded tokens (each token decoded alone would give U+FFFD for the parts).
    const lines: Record<string, unknown>[] = [];
    const prompt = "Ünïcödé wörds: naïve, façade, résumé, über, señor, Zürich, São Paulo, Malmö,";
    expect(await post(port, { prompt, tokens: 24, temperature: 1.2, seed: 1 }, (l) => lines.push(l))).toBe(200);
    const streamed = lines.filter((l) => "token" in l);
    const decoded = tok.decode(streamed.map((l) => l.token as number));
    expect(decoded).toMatch(/[^\x00-\x7f]/); // the case is exercised: some character is multi-byte
    expect(streamed.map((l) => l.text).join("")).toBe(decoded);
    expect(s.stats().active).toBe(0);
  } finally {
    await s.close();
  }
}, 120_000);

test("keepTokens and poolTokens that would fail every request are refused when the server is made, naming them", () => {
  // Past 2^31 - 1 seq.autoCompress refuses maxTokens: every request would get a 503.
  for (const keepTokens of [-5, 0, 1.5, NaN, Infinity, 2 ** 31, 3_000_000_000, Number.MAX_SAFE_INTEGER])
    expect(() => createGenerationServer({ keepTokens })).toThrow(new RangeError(`keepTokens must be an integer from 1 to 2147483647 but is ${keepTokens}`));
  expect(MAX_KEEP_TOKENS).toBe(2 ** 31 - 1);
  for (const poolTokens of [-1, 0, 1, 15, 16.5, NaN])
    expect(() => createGenerationServer({ poolTokens })).toThrow(
      new RangeError(`poolTokens must be an integer >= ${MIN_POOL_TOKENS} (a page for each layer and KV head: a smaller pool holds no sequence) but is ${poolTokens}`),
    );
  expect(MIN_POOL_TOKENS).toBe(16);
});

(haveModel ? test : test.skip)("a pool past the cache's limits is a RangeError naming poolTokens; keepTokens is not checked without eviction", async () => {
  expect(() => createGenerationServer({ poolTokens: 2 ** 40 })).toThrow(expect.objectContaining({ name: "RangeError", message: expect.stringMatching(/^poolTokens 1099511627776 is too large for a cache of this model: /) }));
  const s = createGenerationServer({ evict: false, keepTokens: 0, poolTokens: MIN_POOL_TOKENS });
  await s.close();
  // The largest keepTokens is served.
  const most = createGenerationServer({ keepTokens: MAX_KEEP_TOKENS });
  try {
    const lines: Record<string, unknown>[] = [];
    expect(await post(await most.listen(0), { prompt: "The river", tokens: 4 }, (l) => lines.push(l))).toBe(200);
    expect(lines.at(-1)).toEqual(expect.objectContaining({ done: true, tokens: 4 }));
  } finally {
    await most.close();
  }
});

(haveModel ? test : test.skip)("a keepTokens below the sink and window, and the smallest pool, still serve requests", async () => {
  const prompt = loadPrompts(64)[0];
  for (const [options, body] of [
    [{ keepTokens: 8 }, { prompt, tokens: 40 }],
    [{ keepTokens: 1 }, { prompt, tokens: 8 }],
    [{ poolTokens: MIN_POOL_TOKENS }, { prompt: "The river", tokens: 4 }],
  ] as const) {
    const s = createGenerationServer(options);
    const port = await s.listen(0);
    try {
      const lines: Record<string, unknown>[] = [];
      expect([options, await post(port, { ...body, temperature: 0 }, (l) => lines.push(l))]).toEqual([options, 200]);
      expect([options, lines.at(-1)]).toEqual([options, expect.objectContaining({ done: true, tokens: body.tokens })]);
      expect(s.stats()).toMatchObject({ failed: 0, active: 0, pagesUsed: 0 });
      if ("keepTokens" in options) expect(s.stats().autoCompressions).toBeGreaterThan(0);
    } finally {
      await s.close();
    }
  }
}, 60_000);

(haveModel ? test : test.skip)("a reply of n tokens takes n - 1 decode steps (the last token is not fed back), with the tokens model.generate gives", async () => {
  const s = createGenerationServer({ evict: false });
  const port = await s.listen(0);
  try {
    const { model } = s;
    const tok = model.tokenizer!;
    const perPosition = model.config.layers * model.config.kvHeads;
    for (const [tokens, seed] of [[5, 1], [1, 2], [12, 3]]) {
      const before = s.stats().decodeSteps;
      const lines: Record<string, unknown>[] = [];
      expect(await post(port, { prompt: "The river", tokens, temperature: 0.8, seed }, (l) => lines.push(l))).toBe(200);
      const done = lines.at(-1)!;
      const streamed = lines.filter((l) => "token" in l).map((l) => l.token as number);
      expect([tokens, done.done, done.tokens, streamed.length]).toEqual([tokens, true, tokens, tokens]);
      expect([tokens, s.stats().decodeSteps - before]).toEqual([tokens, tokens - 1]);
      // The cache held the prompt (BOS included) and every token but the last.
      expect(done.kept).toBe(((done.promptTokens as number) + tokens - 1) * perPosition);
      // The same tokens as the model's own generate() (which feeds back all but the last) with the server's sampler.
      using cache = model.createCache({ dtype: "f16" });
      using seq = cache.createSequence();
      const logits = model.forward(seq, [tok.bos!, ...tok.encode("The river")], { chunk: 64 });
      expect(model.generate(seq, logits, tokens, { temperature: 0.8, topK: 40, seed, stopToken: tok.eos }).tokens).toEqual(streamed);
      expect(seq.appended(0)).toBe((done.promptTokens as number) + tokens - 1);
    }
  } finally {
    await s.close();
  }
}, 60_000);

(haveModel ? test : test.skip)("runLoad reports the first failed request's error; a reply of one token has no gap to time", async () => {
  const prompts = loadPrompts(64);
  // A pool of one page per head cannot take a 65-token prompt: every request fails with OutOfPagesError.
  const full = await runLoad(false, { clients: 1, requests: 2, tokens: 1, promptTokens: 64, poolTokens: MIN_POOL_TOKENS, keepTokens: 64 }, prompts);
  expect(full.failed).toBe(2);
  expect(full.firstError).toMatch(/^503 OutOfPagesError: /);
  const one = await runLoad(false, { clients: 1, requests: 2, tokens: 1, promptTokens: 64, poolTokens: 4096, keepTokens: 64 }, prompts);
  expect([one.failed, one.firstError, one.tokens, one.server.decodeSteps]).toEqual([0, undefined, 2, 0]);
  expect(one.p50FirstTokenMs).toBeGreaterThan(0);
  expect([one.p50MsPerToken, one.p99MsPerToken]).toEqual([NaN, NaN]);
}, 60_000);

(haveModel ? test : test.skip)("runLoad's clients time each line as it reaches them: a decode step after a token line shows in the gap after it", async () => {
  // Each decode step (a lone forward of one token) holds the server's thread STEP_MS longer, after
  // the line of the token it feeds back was written. A client on that thread read the line only
  // after the step, together with the next one (a gap of ~0 ms, the step counted in the first token).
  const STEP_MS = 150;
  const forward = TinyLM.prototype.forward;
  const spy = jest.spyOn(TinyLM.prototype, "forward").mockImplementation(function (this: TinyLM, seq, tokens, options) {
    if (options === undefined && tokens.length === 1) for (const until = performance.now() + STEP_MS; performance.now() < until; );
    return forward.call(this, seq, tokens, options);
  });
  try {
    const r = await runLoad(false, { clients: 1, requests: 2, tokens: 2, promptTokens: 16, poolTokens: 4096, keepTokens: 64 }, loadPrompts(16));
    expect([r.failed, r.tokens, r.server.decodeSteps]).toEqual([0, 4, 2]);
    // The second line cannot come before the step is done (a margin for the clients' thread being scheduled late).
    expect(r.p50MsPerToken).toBeGreaterThan(STEP_MS / 2);
    expect(r.p99MsPerToken).toBeGreaterThan(STEP_MS / 2);
  } finally {
    spy.mockRestore();
  }
}, 60_000);

(haveModel ? test : test.skip)("runLoad: the tokens of failed requests are counted apart, not in tokens or tokens/s", async () => {
  // A pool of one page per head: BOS and a prompt of about 4 tokens, then a token fed back finds no page.
  const r = await runLoad(false, { clients: 1, requests: 2, tokens: 40, promptTokens: 4, poolTokens: MIN_POOL_TOKENS, keepTokens: 64 }, loadPrompts(4));
  expect(r.failed).toBe(2);
  expect(r.firstError).toMatch(/^200 OutOfPagesError: /);
  expect(r.failedTokens).toBeGreaterThan(0);
  expect([r.tokens, r.tokensPerSecond]).toEqual([0, 0]);
  // The server counts every token line it streamed, those of the failed requests too.
  expect(r.server.tokens).toBe(r.tokens + r.failedTokens);
}, 60_000);

(haveModel ? test : test.skip)("with eviction keeping the pool nearly full, decode steps still run together: only a step that needs more new pages than are free runs one stream at a time", async () => {
  // A bound of a page per (layer, head) and stream made nearly every step run alone here (mean batch 1.02).
  const r = await runLoad(true, { clients: 6, requests: 12, tokens: 64, promptTokens: 32, poolTokens: 256, keepTokens: 40 }, loadPrompts(32));
  expect(r.failed).toBe(0);
  expect(r.server.pressureEvents).toBeGreaterThan(0); // the pool did fill
  expect(r.server.decodeRows / r.server.decodeSteps).toBeGreaterThan(2);
}, 120_000);

test("the load test's clients count a request as done only when its stream ends with the done line", async () => {
  // One request each: done; no done line; a 503; cut inside a line; a line that is not JSON; a token and an error line.
  const replies = [
    [200, '{"token": 1}\n{"done": true}\n'],
    [200, '{"token": 1}\n{"token": 2}\n'],
    [503, '{"error": "OutOfPagesError: no pages"}\n'],
    [200, '{"token": 1}\n{"done": tr'],
    [200, '{"token": 1}\nnot json\n'],
    [200, '{"token": 1}\n{"error": "InternalError: x"}\n{"done": true}\n'],
  ] as const;
  let next = 0;
  const server = http.createServer((req, res) => {
    const [status, body] = replies[next++];
    req.on("data", () => {}).on("end", () => res.writeHead(status).end(body));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const m = await runClients({ port: (server.address() as AddressInfo).port, clients: 1, requests: replies.length, tokens: 2, prompts: ["x"] });
    expect([m.failed, m.tokens, m.failedTokens, m.firstError]).toEqual([5, 1, 5, "200 the stream ended without a done line"]);
  } finally {
    server.close();
  }
});

describe("post: a response that is not a whole NDJSON stream is an error, not a short success", () => {
  const serve = (handler: http.RequestListener) =>
    new Promise<{ port: number; close: () => void }>((resolve) => {
      const server = http.createServer(handler).listen(0, "127.0.0.1", () => resolve({ port: (server.address() as AddressInfo).port, close: () => server.close() }));
    });
  test("a line that is not JSON, a response that ends inside a line, and one that stops sending", async () => {
    const lines: unknown[] = [];
    for (const [body, message] of [
      ['{"token": 1}\nnot json\n', 'a line that is not JSON (status 200): "not json"'],
      ['{"token": 1}\n{"done": tr', "the response (status 200) ended inside a line"],
    ]) {
      const s = await serve((req, res) => req.on("data", () => {}).on("end", () => res.end(body)));
      try {
        await expect(post(s.port, {}, (l) => lines.push(l))).rejects.toThrow(message);
      } finally {
        s.close();
      }
    }
    const hung = await serve((req, res) => req.on("data", () => {}).on("end", () => res.write('{"token": 1}\n')));
    try {
      await expect(post(hung.port, {}, (l) => lines.push(l), 300)).rejects.toThrow("no data for 300 ms");
    } finally {
      hung.close();
    }
    expect(lines).toEqual([{ token: 1 }, { token: 1 }, { token: 1 }]);
  });
});

test("percentile is the nearest rank: the smallest value with at least p% of the values at or below it", () => {
  const hundred = Array.from({ length: 100 }, (_, i) => 100 - i); // 100 .. 1, unsorted
  expect([percentile(hundred, 99), percentile(hundred, 100), percentile(hundred, 50), percentile(hundred, 1)]).toEqual([99, 100, 50, 1]);
  const twoHundred = Array.from({ length: 200 }, (_, i) => i + 1);
  expect(percentile(twoHundred, 99)).toBe(198);
  expect([percentile([3, 1, 2], 99), percentile([3, 1, 2], 50), percentile([7], 99), percentile([4, 9], 50)]).toEqual([3, 2, 7, 4]);
  expect(percentile([], 99)).toBeNaN();
});
