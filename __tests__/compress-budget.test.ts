// compress({ budget }): keep `budget` tokens per (layer, KV head) on average, split by the allocation.
import { KVCache } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";

const seed = testSeed("compress-budget");
const shape = { layers: 3, kvHeads: 2, queryHeads: 4, headDim: 16 };
const heads = shape.layers * shape.kvHeads;

function filled(tokens: number) {
  const r = rng(seed);
  const cache = new KVCache({ ...shape, dtype: "f32", maxTokens: 8192 });
  const seq = cache.createSequence();
  const row = shape.kvHeads * shape.headDim;
  for (let l = 0; l < shape.layers; l++) seq.append(l, randn(r, tokens * row), randn(r, tokens * row));
  return { cache, seq };
}

const sum = (a: Int32Array) => a.reduce((x, y) => x + y, 0);

test("every head long enough: each keeps the budget (uniform) and the total is budget x heads", () => {
  const { cache, seq } = filled(256);
  const rep = seq.compress({ budget: 64, scorer: "knorm" });
  expect(rep.total).toBe(64 * heads);
  expect(Array.from(seq.lengths())).toEqual(new Array(heads).fill(64));
  cache.dispose();
});

test("heads of different lengths: the total is exact and no head keeps more than it has", () => {
  for (const allocation of ["uniform", "adakv", "pyramidkv"] as const) {
    const { cache, seq } = filled(256);
    const shortened = new Int32Array(heads).fill(256);
    shortened[3] = 40;
    seq.compress({ budgets: shortened, scorer: "knorm" });
    const before = seq.lengths();
    const rep = seq.compress({ budget: 200, allocation, scorer: "knorm", sink: 4, window: 8 });
    const after = seq.lengths();
    expect(sum(after)).toBe(200 * heads);
    expect(rep.total).toBe(1200);
    for (let i = 0; i < heads; i++) expect(after[i]).toBeLessThanOrEqual(before[i]);
    cache.dispose();
  }
});

test("a budget at or above the average keeps everything; Ada-KV and PyramidKV keep the exact total", () => {
  const { cache, seq } = filled(128);
  expect(seq.compress({ budget: 128, scorer: "knorm" }).total).toBe(128 * heads);
  expect(seq.compress({ budget: 5000, scorer: "knorm" }).total).toBe(128 * heads);
  for (const allocation of ["adakv", "pyramidkv"] as const) {
    const f = filled(128);
    f.seq.compress({ budget: 50, allocation, scorer: "knorm", sink: 2, window: 4 });
    expect(sum(f.seq.lengths())).toBe(50 * heads);
    f.cache.dispose();
  }
  cache.dispose();
});

test("two queued compressAsync({ budget }) calls: each fits the lengths its turn finds", async () => {
  const { cache, seq } = filled(256);
  const [a, b] = await Promise.all([seq.compressAsync({ budget: 128, scorer: "knorm" }), seq.compressAsync({ budget: 40, scorer: "knorm" })]);
  expect([a.before, a.total, b.before, b.total]).toEqual([256 * heads, 128 * heads, 128 * heads, 40 * heads]);
  cache.dispose();
});

test.each([
  [{ budget: 0 }, "Expected integer between 1 and 2147483647 for budget but received 0 of type number"],
  [{ budget: 1.5 }, "Expected integer between 1 and 2147483647 for budget but received 1.5 of type number"],
  [{ budget: 10, ratio: 0.5 }, "Expected no ratio beside it (give ratio or budget) for budget but received 10 of type number"],
])("%j is refused and nothing changes", (opts, message) => {
  const { cache, seq } = filled(64);
  let caught: unknown;
  try {
    seq.compress({ ...opts, scorer: "knorm" });
  } catch (e) {
    caught = e;
  }
  expect(caught).toMatchObject({ name: "InvalidArgumentError", message });
  expect(Array.from(seq.lengths())).toEqual(new Array(heads).fill(64));
  cache.dispose();
});

test("explicit budgets: the other options are still checked, and the report's target is what the budgets ask", () => {
  const { cache, seq } = filled(40);
  const budgets = new Int32Array(heads).fill(3);
  for (const [extra, message] of [
    [{ ratio: 7 }, "Expected a number in [0, 1) for ratio but received 7 of type number"],
    [{ allocation: "bogus" }, /^Expected one of .* for allocation but received "bogus"/],
    [{ budget: -3 }, "Expected integer between 1 and 2147483647 for budget but received -3 of type number"],
    [{ ratio: 0.5, budget: 4 }, "Expected no ratio beside it (give ratio or budget) for budget but received 4 of type number"],
    [{ allocation: "lukv" }, 'Expected a Profile (allocation "lukv" needs one; see loadProfile) for profile but received undefined'],
    // Valid, but dropped if accepted: explicit budgets replace them.
    [{ ratio: 0.5 }, `Expected no ratio beside them (explicit budgets replace ratio, budget and allocation) for budgets but received Int32Array(${heads})`],
    [{ budget: 4 }, `Expected no budget beside them (explicit budgets replace ratio, budget and allocation) for budgets but received Int32Array(${heads})`],
    [{ allocation: "adakv" }, `Expected no allocation beside them (explicit budgets replace ratio, budget and allocation) for budgets but received Int32Array(${heads})`],
    [{ allocation: "uniform" }, `Expected no allocation beside them (explicit budgets replace ratio, budget and allocation) for budgets but received Int32Array(${heads})`],
  ] as const) {
    expect(() => seq.compress({ budgets, scorer: "knorm", ...(extra as object) })).toThrow(
      expect.objectContaining({ name: "InvalidArgumentError", message: typeof message === "string" ? message : expect.stringMatching(message) }),
    );
  }
  expect(sum(seq.lengths())).toBe(40 * heads); // nothing changed
  // Budgets under the floor (sink 4 + window 32): target is the budgets' sum, total what the floors keep.
  const report = seq.compress({ budgets, scorer: "knorm" });
  expect({ before: report.before, target: report.target, total: report.total }).toEqual({ before: 40 * heads, target: 3 * heads, total: 36 * heads });
  const exact = seq.compress({ budgets: new Int32Array(heads).fill(36).map((x, i) => x - (i % 2)), scorer: "knorm", sink: 0, window: 0 });
  expect(exact.target).toBe(exact.total);
  cache.dispose();
});

test("ratio totals round halves up with the ratio read as the decimal it prints as (sync and async)", async () => {
  // 0.67 x 150 = 100.5; with the double nearest 0.33 the product is 100.49999999999999 (100 kept before).
  const options = { ratio: 0.33, scorer: "knorm", sink: 0, window: 0 } as const;
  const a = filled(25);
  const rep = a.seq.compress(options);
  expect([rep.before, rep.target, rep.total, sum(a.seq.lengths())]).toEqual([150, 101, 101, 101]);
  a.cache.dispose();
  const b = filled(25);
  const repAsync = await b.seq.compressAsync(options);
  expect([repAsync.target, repAsync.total, sum(b.seq.lengths())]).toEqual([101, 101, 101]);
  b.cache.dispose();
});
