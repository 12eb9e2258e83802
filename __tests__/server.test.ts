// The example server under a small load test on loopback: every request streams its tokens, the
// streams decode together, and with eviction the peak KV memory is lower than without.
import * as fs from "fs";
import * as path from "path";
import { defaultModelDir } from "../ts/model";
import { runLoad, loadPrompts, post } from "../examples/server/load-test";
import { createGenerationServer } from "../examples/server/server";

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
