// cache.onPressure: an append that runs out of pages compresses other sequences to make room, and
// every such compression is reported and counted.
import { KVCache, PressureEvent, Sequence } from "../ts";
import { rng, testSeed, randn } from "./helpers/random";

const seed = testSeed("pressure");
const shape = { layers: 2, kvHeads: 2, queryHeads: 4, headDim: 16, pageSize: 16 };
const heads = shape.layers * shape.kvHeads;
const row = shape.kvHeads * shape.headDim;

// A pool of 64 pages (16 per head-page of 16 tokens: 256 tokens of one KV head).
function setup() {
  const r = rng(seed);
  const cache = new KVCache({ ...shape, dtype: "f32", maxTokens: 64 * 16 });
  const grow = (seq: Sequence, tokens: number) => {
    for (let l = 0; l < shape.layers; l++) seq.append(l, randn(r, tokens * row), randn(r, tokens * row));
  };
  return { r, cache, grow };
}
const total = (seq: Sequence) => seq.lengths().reduce((a, b) => a + b, 0);

test("by default an append that does not fit throws OutOfPagesError and changes nothing", () => {
  const { cache, grow } = setup();
  const a = cache.createSequence();
  grow(a, 256); // 16 pages per head x 4 heads = 64 pages: full
  const b = cache.createSequence();
  expect(() => grow(b, 16)).toThrow(expect.objectContaining({ name: "OutOfPagesError" }));
  expect(total(b)).toBe(0);
  expect(cache.pressureStats).toEqual({ events: 0, tokensEvicted: 0, pagesFreed: 0 });
  cache.dispose();
});

test("evict largest: the biggest sequence is compressed, the append goes through, and it is all reported", () => {
  const { cache, grow } = setup();
  const big = cache.createSequence(), small = cache.createSequence();
  grow(big, 192); // 12 pages per head
  grow(small, 64); // 4 pages per head: the pool is full
  const events: PressureEvent[] = [];
  cache.onPressure({ evict: "largest", ratio: 0.5, scorer: "knorm", sink: 4, window: 8, listener: (e) => events.push(e) });
  const newcomer = cache.createSequence();
  grow(newcomer, 32);
  expect(total(newcomer)).toBe(32 * heads);
  expect(events.length).toBe(1);
  expect(events[0].sequence).toBe(big);
  expect(events[0].requestedBy).toBe(newcomer);
  expect(events[0].reason).toBe("largest");
  expect(events[0].report.before).toBe(192 * heads);
  expect(total(big)).toBe(96 * heads);
  expect(total(small)).toBe(64 * heads);
  const stats = cache.pressureStats;
  expect(stats).toEqual({ events: 1, tokensEvicted: 96 * heads, pagesFreed: events[0].report.pagesFreed });
  expect(stats.pagesFreed).toBe(6 * heads);
  cache.dispose();
});

// A prompt forked for each request: its pages are all shared, so compressing it would copy the
// pages it keeps and free none. The policy passes over it to sequences that hold pages alone.
test("a sequence all of whose pages forks share is passed over; one with pages of its own gives them", () => {
  const { r, cache, grow } = setup();
  const prompt = cache.createSequence();
  grow(prompt, 128); // 8 pages per head
  const forks = [prompt.fork(), prompt.fork()];
  const own = cache.createSequence();
  grow(own, 96); // 6 pages per head, all its own
  grow(forks[0], 32); // 2 pages per head of its own beside the shared 8: the pool is full
  const before = forks.map((f) => Array.from(f.lengths()));
  const events: PressureEvent[] = [];
  cache.onPressure({ evict: "largest", ratio: 0.5, scorer: "knorm", sink: 4, window: 8, listener: (e) => events.push(e) });
  const newcomer = cache.createSequence();
  grow(newcomer, 32);
  // The largest are the prompt and its forks (128+ tokens per head), but the prompt and the bare
  // fork free nothing; the grown fork frees its own pages, or the sequence that holds all its own.
  expect(events.map((e) => e.sequence)).not.toContain(prompt);
  expect(events.map((e) => e.sequence)).not.toContain(forks[1]);
  expect(events.every((e) => e.report.pagesFreed > 0)).toBe(true);
  expect(total(prompt)).toBe(128 * heads);
  expect(Array.from(forks[1].lengths())).toEqual(before[1]);
  expect(total(newcomer)).toBe(32 * heads);
  // With only the family left, nothing can give pages: the append throws and nothing was compressed.
  for (const s of [own, newcomer, forks[0]]) s.dispose();
  const lone = cache.createSequence();
  const stats = cache.pressureStats;
  // 17 pages per head of layer 0 (34) against the 32 the family leaves free
  expect(() => lone.append(0, randn(r, 16 * 17 * row), randn(r, 16 * 17 * row))).toThrow(expect.objectContaining({ name: "OutOfPagesError" }));
  expect(cache.pressureStats).toEqual(stats);
  expect(total(prompt)).toBe(128 * heads);
  cache.dispose();
});

// "largest" ranks by the pages a sequence holds alone, not by its tokens: a fork of a long prompt
// keeps the most tokens, but compressing it copies the shared rows it keeps into pages of its own
// (and then leaves the prompt the only holder of the rest), while a smaller unshared sequence frees
// what the append needs by itself.
test("evict largest ranks by pages held alone: an unshared sequence gives before a fork with more tokens", () => {
  const r = rng(seed ^ 0x77);
  const cache = new KVCache({ ...shape, dtype: "f32", maxTokens: 96 * 16 }); // 96 pages, 24 per head
  const grow = (seq: Sequence, tokens: number) => {
    for (let l = 0; l < shape.layers; l++) seq.append(l, randn(r, tokens * row), randn(r, tokens * row));
  };
  try {
    const prompt = cache.createSequence();
    grow(prompt, 128); // 8 pages per head, shared with the fork
    const fork = prompt.fork();
    grow(fork, 32); // 160 tokens per head, 2 pages per head of its own
    const own = cache.createSequence();
    grow(own, 80); // 80 tokens per head, 5 pages per head, all its own: 60 pages used, 36 free
    const before = [prompt, fork].map((s) => Array.from(s.lengths()));
    const events: PressureEvent[] = [];
    cache.onPressure({ evict: "largest", ratio: 0.5, scorer: "knorm", sink: 4, window: 8, listener: (e) => events.push(e) });
    // 19 pages for each of layer 0's two heads: 38 against 36 free. Compressing the fork first
    // would take 12 more (its 80 kept rows per head in pages of its own, 2 freed) and then need the
    // prompt too; `own` frees 8 by itself.
    const newcomer = cache.createSequence();
    newcomer.append(0, randn(r, 304 * row), randn(r, 304 * row));
    expect(newcomer.lengths()[0]).toBe(304);
    expect(events.map((e) => e.sequence)).toEqual([own]);
    expect(events[0].report.pagesFreed).toBe(2 * heads);
    expect([prompt, fork].map((s) => Array.from(s.lengths()))).toEqual(before);
  } finally {
    cache.dispose();
  }
});

// A policy whose compressions cannot run is refused when set where the cache alone decides it (the
// observation rows it remembers), and said in the append's error where each sequence decides it.
test("a policy that can never compress is refused when set; compressions refused at the append are named in its error", () => {
  const { r, cache, grow } = setup();
  try {
    const small = new KVCache({ ...shape, dtype: "f32", maxTokens: 64 * 16, observationWindow: 8 });
    expect(() => small.onPressure({ evict: "largest" })).toThrow(/^snapkv scores with the last 32 query rows of each layer but this cache remembers 8/);
    small.onPressure({ evict: "largest", window: 8 });
    small.dispose();
    const a = cache.createSequence(), b = cache.createSequence();
    grow(a, 128);
    grow(b, 128); // the pool is full
    cache.onPressure({ evict: "largest", scorer: "h2o", sink: 1, window: 1 }); // neither accumulates attention mass
    const before = [a, b].map(total);
    const newcomer = cache.createSequence();
    let error: Error | undefined;
    try {
      newcomer.append(0, randn(r, 16 * row), randn(r, 16 * row));
    } catch (e) {
      error = e as Error;
    }
    expect(error?.name).toBe("OutOfPagesError");
    expect(error?.message).toMatch(/\(the onPressure policy's compression was refused for 2 sequences; the first: scorer "h2o" needs attention mass/);
    expect([a, b].map(total)).toEqual(before);
    expect(cache.pressureStats.events).toBe(0);
  } finally {
    cache.dispose();
  }
});

// Whether a candidate holds pages alone is read at its turn: compressing a fork first leaves its
// prompt the only holder of the pages they shared, and the prompt can then give them.
test("a prompt that an earlier compression left the only holder of its pages gives them", () => {
  const r = rng(seed ^ 0x51);
  const cache = new KVCache({ layers: 1, kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 48, threads: 1, dtype: "f32" });
  try {
    const rows = (n: number) => randn(r, n * 4);
    const events: PressureEvent[] = [];
    cache.onPressure({ evict: "largest", ratio: 0.5, scorer: "knorm", window: 1, sink: 0, listener: (e) => events.push(e) });
    const prompt = cache.createSequence();
    prompt.append(0, rows(16), rows(16)); // 4 pages
    const fork = prompt.fork();
    fork.append(0, rows(2), rows(2)); // a private copy of nothing yet: a 5th page of its own
    fork.append(0, rows(31), rows(31)); // 8 more pages: 12 pages in the pool
    expect(fork.lengths()[0]).toBeGreaterThan(31);
    // The fork (largest) went first; the prompt, then its pages' only holder, gave pages too
    expect(events.map((e) => e.sequence)).toEqual([fork, prompt]);
    expect(events[1].report.pagesFreed).toBeGreaterThan(0);
  } finally {
    cache.dispose();
  }
});

test("evict oldest: the first sequence gives pages first, then the next, until the append fits", () => {
  const { cache, grow } = setup();
  const first = cache.createSequence(), second = cache.createSequence();
  grow(first, 64);
  grow(second, 192);
  const events: PressureEvent[] = [];
  cache.onPressure({ evict: "oldest", ratio: 0.5, scorer: "knorm", sink: 4, window: 8, listener: (e) => events.push(e) });
  grow(second, 96); // 6 pages per head: the oldest frees 2 per head, then the second must give too
  expect(events.map((e) => e.sequence)).toEqual([first, second]);
  expect(total(first)).toBe(32 * heads);
  expect(cache.usage().pagesUsed).toBeLessThanOrEqual(cache.usage().pagesTotal);
  expect(cache.pressureStats.events).toBe(2);
  expect(cache.pressureStats.tokensEvicted).toBe(events.reduce((a, e) => a + e.report.before - e.report.total, 0));
  cache.dispose();
});

test("when nothing can give pages the append still throws, and busy sequences are skipped", async () => {
  const { r, cache, grow } = setup();
  const a = cache.createSequence();
  grow(a, 256);
  cache.onPressure({ evict: "largest", scorer: "knorm", sink: 4, window: 8 });
  const pending = a.attendAsync(0, randn(r, shape.queryHeads * shape.headDim));
  const b = cache.createSequence();
  expect(() => grow(b, 16)).toThrow(expect.objectContaining({ name: "OutOfPagesError" }));
  expect(cache.pressureStats.events).toBe(0);
  await pending;
  grow(b, 16); // now a can give pages
  expect(cache.pressureStats.events).toBe(1);
  cache.onPressure("throw");
  expect(() => grow(b, 256)).toThrow(expect.objectContaining({ name: "OutOfPagesError" }));
  cache.dispose();
});

test("an appendBatchAsync's own sequences are busy for the policy, whether the batch waited or not", async () => {
  for (const waits of [false, true]) {
    const { r, cache, grow } = setup();
    const a = cache.createSequence();
    grow(a, 256); // the pool is full, and a is the only sequence that could give pages
    cache.onPressure({ evict: "largest", scorer: "knorm", sink: 4, window: 8 });
    const busy = waits ? a.attendAsync(0, randn(r, shape.queryHeads * shape.headDim)) : undefined;
    const batch = cache.appendBatchAsync(0, [{ sequence: a, keys: randn(r, 16 * row), values: randn(r, 16 * row) }]);
    await busy;
    await expect(batch).rejects.toMatchObject({ name: "OutOfPagesError" });
    expect({ waits, stats: cache.pressureStats, total: total(a) }).toEqual({ waits, stats: { events: 0, tokensEvicted: 0, pagesFreed: 0 }, total: 256 * heads });
    cache.dispose();
  }
});

test("a listener that disposes a later candidate or starts an async call on it: that one is skipped, and the append fits if it can", async () => {
  for (const action of ["dispose", "async"] as const) {
    const { r, cache, grow } = setup();
    const first = cache.createSequence(), second = cache.createSequence(), third = cache.createSequence();
    grow(first, 64); // 4 pages per head
    grow(second, 96); // 6
    grow(third, 96); // 6: the pool is full
    let pending: Promise<unknown> | undefined;
    const compressed: Sequence[] = [];
    cache.onPressure({
      evict: "oldest",
      ratio: 0.5,
      scorer: "knorm",
      sink: 4,
      window: 8,
      listener: (e) => {
        compressed.push(e.sequence);
        if (e.sequence !== first) return;
        if (action === "dispose") second.dispose();
        else pending = second.attendAsync(0, randn(r, shape.queryHeads * shape.headDim));
      },
    });
    const newcomer = cache.createSequence();
    // 6 pages per head (12 per layer): first gives 8 pages in all, not enough for layer 0, then
    // second is gone (its pages came back) or busy (it threw SequenceBusyError out of the append
    // before), and third gives the rest.
    grow(newcomer, 96);
    expect([action, total(newcomer)]).toEqual([action, 96 * heads]);
    // second is never compressed (it threw DisposedError or SequenceBusyError out of the append before).
    expect([action, compressed.includes(second), compressed[0] === first, cache.pressureStats.events]).toEqual([action, false, true, compressed.length]);
    await pending;
    cache.dispose();
  }
});

test("options are checked when onPressure is called", () => {
  const { cache } = setup();
  const message = (fn: () => void) => {
    try {
      fn();
    } catch (e) {
      return (e as Error).message;
    }
    return "";
  };
  expect(message(() => cache.onPressure({ evict: "newest" as never }))).toBe('Expected one of "largest", "oldest" for evict but received "newest" of type string');
  expect(message(() => cache.onPressure({ evict: "largest", ratio: 1 }))).toBe("Expected a number in [0, 1) for ratio but received 1 of type number");
  expect(message(() => cache.onPressure({ evict: "largest", budget: 3 } as never))).toMatch(/^Expected only .* in options but received "budget"/);
  cache.dispose();
});

test("a listener that starts an async call on the appending sequence: the sync append or batch throws SequenceBusyError and appends nothing", async () => {
  for (const batch of [false, true]) {
    const { r, cache, grow } = setup();
    const big = cache.createSequence(), seq = cache.createSequence();
    grow(big, 224);
    grow(seq, 16); // the pool is full
    let started: Promise<unknown> | undefined;
    cache.onPressure({ evict: "largest", ratio: 0.5, scorer: "knorm", sink: 4, window: 8, listener: () => void (started ??= seq.attendAsync(0, randn(r, 4 * 16))) });
    const keys = randn(r, 48 * row), values = randn(r, 48 * row); // 6 pages; 4 are free
    const append = () => (batch ? cache.appendBatch(0, [{ sequence: seq, keys, values }]) : seq.append(0, keys, values));
    // Without the check the append went ahead beside the attendAsync, which saw it or not by timing.
    expect(append).toThrow(expect.objectContaining({ name: "SequenceBusyError" }));
    expect(started).toBeDefined();
    await started;
    expect(seq.appended(0)).toBe(16);
    expect(cache.pressureStats.events).toBe(1);
    append(); // room was made: it goes in now
    expect(seq.appended(0)).toBe(64);
    cache.dispose();
  }
});
