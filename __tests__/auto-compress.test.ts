// seq.autoCompress: a long generation stays within its per-head limit, compressed back to it.
import { KVCache, CompressReport } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";

const seed = testSeed("auto-compress");
const shape = { layers: 2, kvHeads: 2, queryHeads: 4, headDim: 16 };
const heads = shape.layers * shape.kvHeads;

test("2,048 generated tokens stay under maxTokens + every per head; pages come back each time", () => {
  const r = rng(seed);
  const cache = new KVCache({ ...shape, dtype: "f16", maxTokens: 4 * 1024 });
  const seq = cache.createSequence();
  const row = shape.kvHeads * shape.headDim, qrow = shape.queryHeads * shape.headDim;
  const reports: CompressReport[] = [];
  // A 200-token prompt, then generation with attention every step.
  for (let l = 0; l < shape.layers; l++) seq.append(l, randn(r, 200 * row), randn(r, 200 * row));
  seq.autoCompress({ maxTokens: 128, every: 32, scorer: "knorm", sink: 4, window: 8, onCompress: (rep) => reports.push(rep) });
  let peak = 0;
  for (let step = 0; step < 2048; step++) {
    for (let l = 0; l < shape.layers; l++) {
      seq.append(l, randn(r, row), randn(r, row));
      const out = seq.attend(l, randn(r, qrow));
      expect(out.every(Number.isFinite)).toBe(true);
    }
    const lengths = seq.lengths();
    for (const x of lengths) peak = Math.max(peak, x);
    expect(Math.max(...lengths)).toBeLessThanOrEqual(128 + 32 + 200);
  }
  const finalLengths = seq.lengths();
  expect(finalLengths.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual((128 + 32) * heads);
  expect(peak).toBeLessThanOrEqual(200 + 32); // the prompt, until the first check
  expect(seq.autoCompressions).toBe(reports.length);
  expect(reports.length).toBeGreaterThanOrEqual(Math.floor(2048 / 32) - 1);
  for (const rep of reports) expect(rep.total).toBe(128 * heads);
  expect(reports.some((rep) => rep.pagesFreed > 0)).toBe(true);
  // Off: the sequence grows again.
  seq.autoCompress(false);
  for (let step = 0; step < 64; step++) for (let l = 0; l < shape.layers; l++) seq.append(l, randn(r, row), randn(r, row));
  expect(Math.min(...seq.lengths())).toBeGreaterThan(160);
  cache.dispose();
});

test("options are checked when autoCompress is called", () => {
  const cache = new KVCache({ ...shape, dtype: "f32" });
  const seq = cache.createSequence();
  const expectInvalid = (fn: () => void, message: string | RegExp) => {
    let caught: unknown;
    try {
      fn();
    } catch (e) {
      caught = e;
    }
    expect(caught).toMatchObject({ name: "InvalidArgumentError", message: typeof message === "string" ? message : expect.stringMatching(message) });
  };
  expectInvalid(() => seq.autoCompress({ maxTokens: 0 }), "Expected integer between 1 and 2147483647 for maxTokens but received 0 of type number");
  expectInvalid(() => seq.autoCompress({ maxTokens: 64, every: -1 }), "Expected integer between 1 and 2147483647 for every but received -1 of type number");
  expectInvalid(() => seq.autoCompress({ maxTokens: 64, ratio: 0.5 } as never), /^Expected only .* in options but received "ratio"/);
  expectInvalid(() => seq.autoCompress({ maxTokens: 64, allocation: "lukv" }), 'Expected a Profile (allocation "lukv" needs one; see loadProfile) for profile but received undefined');
  cache.dispose();
});
