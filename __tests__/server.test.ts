// The example server under a small load test on loopback: every request streams its tokens, and
// with eviction the peak KV memory is lower than without.
import * as fs from "fs";
import * as path from "path";
import { defaultModelDir } from "../ts/model";
import { runLoad, loadPrompts } from "../examples/server/load-test";

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
  expect(on.server.autoCompressions).toBeGreaterThan(0);
  expect(off.server.autoCompressions).toBe(0);
  expect(on.peakKvBytes).toBeLessThan(off.peakKvBytes);
}, 240_000);
