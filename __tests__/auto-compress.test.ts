// seq.autoCompress: a long generation stays within its per-head limit, compressed back to it.
import { KVCache, CompressReport, Sequence, DisposedError, SequenceBusyError } from "../ts";
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

// A model's forward pass: per layer, append the step's rows, then attend with its queries.
function step(seq: Sequence, r: () => number, tokens: number): void {
  const row = shape.kvHeads * shape.headDim, qrow = shape.queryHeads * shape.headDim;
  for (let l = 0; l < shape.layers; l++) {
    seq.append(l, randn(r, tokens * row), randn(r, tokens * row));
    seq.attend(l, randn(r, tokens * qrow));
  }
}
/** A cache with two sequences holding `tokens` attended positions in every layer. */
function twoSequences(r: () => number, tokens = 40): { cache: KVCache; a: Sequence; b: Sequence } {
  const cache = new KVCache({ ...shape, dtype: "f32" });
  const a = cache.createSequence(), b = cache.createSequence();
  step(a, r, tokens);
  step(b, r, tokens);
  return { cache, a, b };
}
/** One new row for each sequence, as appendBatch items. */
const rowItems = (r: () => number, ...seqs: Sequence[]) => {
  const row = shape.kvHeads * shape.headDim;
  return seqs.map((sequence) => ({ sequence, keys: randn(r, row), values: randn(r, row) }));
};
const headPositions = (seq: Sequence) =>
  Array.from({ length: heads }, (_, i) => Array.from(seq.positions(Math.floor(i / shape.kvHeads), i % shape.kvHeads)));
const state = (seq: Sequence) => ({
  lengths: Array.from(seq.lengths()),
  appended: Array.from({ length: shape.layers }, (_, l) => seq.appended(l)),
  positions: headPositions(seq),
  keys: Array.from({ length: heads }, (_, i) => Array.from(seq.keys(Math.floor(i / shape.kvHeads), i % shape.kvHeads))),
});

test("a prefill past the limit with the default scorer: compressed before the next step's first append, as compress({ budget }) there", () => {
  const cache = new KVCache({ ...shape, dtype: "f16", maxTokens: 4 * 1024 });
  const seq = cache.createSequence(), twin = cache.createSequence();
  const reports: CompressReport[] = [];
  seq.autoCompress({ maxTokens: 64, every: 16, onCompress: (rep) => reports.push(rep) }); // snapkv, window 32
  // The same rows and queries into both: the twin is compressed by hand where autoCompress should.
  step(seq, rng(seed + 1), 100);
  step(twin, rng(seed + 1), 100);
  expect(seq.autoCompressions).toBe(0); // due, not run: the prompt's last layer had just been appended
  expect(Array.from(seq.lengths())).toEqual(new Array(heads).fill(100));
  const manual = twin.compress({ budget: 64 });
  step(seq, rng(seed + 2), 1);
  step(twin, rng(seed + 2), 1);
  expect(seq.autoCompressions).toBe(1);
  expect(reports).toHaveLength(1);
  expect(Array.from(reports[0].kept)).toEqual(Array.from(manual.kept));
  expect(reports[0].total).toBe(64 * heads);
  expect(state(seq)).toEqual(state(twin));
  cache.dispose();
});

test("an automatic compression that fails throws before the append, changes nothing and stays due", () => {
  const r = rng(seed + 3);
  const cache = new KVCache({ ...shape, dtype: "f32" });
  const a = cache.createSequence(), b = cache.createSequence();
  step(a, r, 40);
  step(b, r, 40);
  // While the oracle is recorded, the compression is refused when it runs.
  a.autoCompress({ maxTokens: 8, every: 1, scorer: "knorm", sink: 1, window: 1 });
  a.recordOracle();
  const row = shape.kvHeads * shape.headDim;
  const last = shape.layers - 1;
  // The batch that makes it due goes in (the compression runs before the next append).
  cache.appendBatch(last, [{ sequence: a, keys: randn(r, 4 * row), values: randn(r, 4 * row) }, { sequence: b, keys: randn(r, 4 * row), values: randn(r, 4 * row) }]);
  const before = { a: state(a), b: state(b), pages: cache.usage().pagesUsed };
  const message = /^The automatic compression \(autoCompress\) due before this append failed, and nothing was appended: compress is not allowed while the oracle is being recorded/;
  for (let attempt = 0; attempt < 2; attempt++) {
    expect(() => a.append(0, randn(r, row), randn(r, row))).toThrow(expect.objectContaining({ name: "InvalidArgumentError", message: expect.stringMatching(message) }));
    // In a batch too, whichever item it is: nothing of the batch goes in, and the error names the item.
    const inBatch = new RegExp("^items\\[1\\]\\.sequence: " + message.source.slice(1));
    expect(() => cache.appendBatch(0, [{ sequence: b, keys: randn(r, row), values: randn(r, row) }, { sequence: a, keys: randn(r, row), values: randn(r, row) }])).toThrow(
      expect.objectContaining({ name: "InvalidArgumentError", message: expect.stringMatching(inBatch) }),
    );
  }
  expect({ a: state(a), b: state(b), pages: cache.usage().pagesUsed }).toEqual(before);
  expect(a.autoCompressions).toBe(0);
  // Stopped, the append goes in.
  a.autoCompress(false);
  a.append(0, randn(r, row), randn(r, row));
  expect(a.appended(0)).toBe(before.a.appended[0] + 1);
  cache.dispose();
});

// Options that would fail every time the compression is due (and, since a failed one appends
// nothing, for good) are refused when autoCompress is called; a limit below the window is not such
// an option: the compression waits until every layer holds the window's positions.
test("autoCompress refuses a SnapKV window longer than the cache remembers, for any layer scored with remembered rows", () => {
  const cache = new KVCache({ ...shape, dtype: "f32", observationWindow: 8 });
  const a = cache.createSequence();
  try {
    const refuse = (o: object, message: RegExp) => expect(() => a.autoCompress(o as never)).toThrow(expect.objectContaining({ name: "InvalidArgumentError", message: expect.stringMatching(message) }));
    refuse({ maxTokens: 128 }, /^snapkv scores with the last 32 query rows of each layer but this cache remembers 8 \(its observationWindow\)/);
    refuse({ maxTokens: 128, scorer: "snapkv", window: 9 }, /last 9 query rows/);
    // Rows given for one layer only: the other layer still scores with the remembered ones.
    const rows = randn(rng(seed), 9 * shape.queryHeads * shape.headDim);
    refuse({ maxTokens: 128, window: 9, observationQueries: [rows, undefined] }, /last 9 query rows/);
    a.autoCompress({ maxTokens: 128, window: 9, observationQueries: Array.from({ length: shape.layers }, () => rows) });
    a.autoCompress({ maxTokens: 128, scorer: "snapkv", window: 8 });
    const none = new KVCache({ ...shape, dtype: "f32", observationWindow: 0 });
    expect(() => none.createSequence().autoCompress({ maxTokens: 128, scorer: "tova" })).toThrow(/^tova scores with the last 1 query row of each layer but this cache remembers 0/);
    none.dispose();
  } finally {
    cache.dispose();
  }
});

test("a limit below the window: the compression waits for the window's positions, and no append fails", () => {
  const r = rng(seed + 13);
  const cache = new KVCache({ ...shape, dtype: "f32" });
  try {
    const a = cache.createSequence();
    a.autoCompress({ maxTokens: 8, every: 1, scorer: "knorm", sink: 2, window: 24 });
    for (let i = 0; i < 60; i++) step(a, r, 1);
    expect(a.autoCompressions).toBeGreaterThan(0);
    // Every compression keeps the sink and the window: 26 tokens a head, and one step more.
    expect(Math.max(...a.lengths())).toBeLessThanOrEqual(26 + 1);
    expect(a.appended(0)).toBe(60);
  } finally {
    cache.dispose();
  }
});

// An onCompress may start an async call on the appending sequence or on a later item of a batch:
// the synchronous append then throws SequenceBusyError, after the compressions and before any row
// goes in.
test("an onCompress that starts an async call: the sync append or batch throws SequenceBusyError and appends nothing", async () => {
  const r = rng(seed + 15);
  const { cache, a, b } = twoSequences(r);
  try {
    const started: Promise<unknown>[] = [];
    let target: Sequence = b;
    a.autoCompress({ maxTokens: 8, every: 1, scorer: "knorm", sink: 1, window: 1, onCompress: () => void started.push(target.saveAsync()) });
    const row = shape.kvHeads * shape.headDim;
    cache.appendBatch(shape.layers - 1, rowItems(r, a, b)); // makes a's compression due
    const before = [a.appended(0), b.appended(0)];
    expect(() => cache.appendBatch(0, rowItems(r, a, b))).toThrow(SequenceBusyError);
    await Promise.all(started.splice(0));
    expect([a.autoCompressions, a.appended(0), b.appended(0)]).toEqual([1, ...before]);
    // The single append: its own sequence
    target = a;
    a.append(shape.layers - 1, randn(r, row), randn(r, row));
    expect(() => a.append(0, randn(r, row), randn(r, row))).toThrow(SequenceBusyError);
    await Promise.all(started.splice(0));
    expect([a.autoCompressions, a.appended(0)]).toEqual([2, before[0]]);
  } finally {
    cache.dispose();
  }
});

// Sync calls are allowed inside onCompress only until it starts an async call on the sequence: that
// call runs later, so a sync call after it would take effect before it.
test("inside onCompress, a sync call after the callback's own async call on the sequence throws SequenceBusyError", async () => {
  const r = rng(seed + 16);
  const { cache, a, b } = twoSequences(r);
  try {
    const row = shape.kvHeads * shape.headDim, qrow = shape.queryHeads * shape.headDim;
    const seen: string[] = [];
    let started: Promise<Float32Array> | undefined;
    a.autoCompress({
      maxTokens: 8, every: 1, scorer: "knorm", sink: 1, window: 1,
      onCompress: () => {
        a.lengths(); // allowed: nothing pending of its own
        started = a.attendAsync(0, randn(r, qrow));
        try {
          a.append(0, randn(r, row), randn(r, row));
          seen.push("appended");
        } catch (e) {
          seen.push((e as Error).name);
        }
      },
    });
    a.append(shape.layers - 1, randn(r, row), randn(r, row)); // makes it due
    const before = a.appended(0);
    expect(() => a.append(0, randn(r, row), randn(r, row))).toThrow(SequenceBusyError);
    expect(seen).toEqual(["SequenceBusyError"]);
    await started;
    expect([a.autoCompressions, a.appended(0)]).toEqual([1, before]);
    // In an async call's turn (appendBatchAsync) too, and only after the callback's own call.
    seen.length = 0;
    a.append(shape.layers - 1, randn(r, row), randn(r, row));
    await cache.appendBatchAsync(0, rowItems(r, a, b));
    await started;
    expect(seen).toEqual(["SequenceBusyError"]);
    expect(a.autoCompressions).toBe(2);
  } finally {
    cache.dispose();
  }
});

// An earlier item's onCompress may start an async call on a later item's sequence: that item's
// compression must not run beside it (the async call was made first).
test("a batch whose earlier item's onCompress starts an async call on a later item: SequenceBusyError naming it, before its compression", async () => {
  const r = rng(seed + 17);
  const { cache, a, b } = twoSequences(r, 200);
  try {
    let saved: Promise<Buffer> | undefined;
    a.autoCompress({ maxTokens: 8, every: 1, scorer: "knorm", sink: 1, window: 1, onCompress: () => void (saved = b.saveAsync()) });
    b.autoCompress({ maxTokens: 8, every: 1, scorer: "knorm", sink: 1, window: 1 });
    cache.appendBatch(shape.layers - 1, rowItems(r, a, b)); // both due
    const bBefore = Array.from(b.lengths());
    expect(() => cache.appendBatch(0, rowItems(r, a, b))).toThrow(
      expect.objectContaining({ name: "SequenceBusyError", message: expect.stringMatching(/^items\[1\]\.sequence: Sequence has 1 async call/) }),
    );
    expect([a.autoCompressions, b.autoCompressions]).toEqual([1, 0]);
    // The save, called before b's compression would have run, holds b as it was.
    const loaded = cache.loadSequence(await saved!);
    expect(Array.from(loaded.lengths())).toEqual(bBefore);
  } finally {
    cache.dispose();
  }
});

// In an async call's turn the calls queued behind it are not "pending before" the callbacks: one
// that an earlier callback of the turn started is, and a later callback's sync call must not pass it.
test("in an appendBatchAsync turn, a sync call in b's onCompress after a's onCompress started b.saveAsync() throws SequenceBusyError", async () => {
  const r = rng(seed + 18);
  const { cache, a, b } = twoSequences(r, 100);
  try {
    const row = shape.kvHeads * shape.headDim;
    let saved: Promise<Buffer> | undefined;
    let inner = "";
    a.autoCompress({ maxTokens: 8, every: 1, scorer: "knorm", sink: 1, window: 1, onCompress: () => void (saved = b.saveAsync()) });
    b.autoCompress({
      maxTokens: 8, every: 1, scorer: "knorm", sink: 1, window: 1,
      onCompress: () => {
        try {
          b.append(0, randn(r, 50 * row), randn(r, 50 * row));
          inner = "appended";
        } catch (e) {
          inner = (e as Error).name;
        }
      },
    });
    cache.appendBatch(shape.layers - 1, rowItems(r, a, b)); // both due
    const before = b.appended(0);
    await cache.appendBatchAsync(0, rowItems(r, a, b));
    expect(inner).toBe("SequenceBusyError");
    // The save runs after the turn: it holds the batch's row, not the 50 rows of the refused append.
    expect(cache.loadSequence(await saved!).appended(0)).toBe(before + 1);
  } finally {
    cache.dispose();
  }
});

// onCompress may dispose another sequence (dispose is always allowed): a later item of the same
// batch then fails as a disposed sequence does, with the library's error naming the item.
test("an onCompress that disposes a later item's sequence: the batch throws DisposedError naming it", () => {
  const r = rng(seed + 9);
  const { cache, a, b } = twoSequences(r);
  try {
    a.autoCompress({ maxTokens: 8, every: 1, scorer: "knorm", sink: 1, window: 1, onCompress: () => b.dispose() });
    b.autoCompress({ maxTokens: 8, every: 1, scorer: "knorm", sink: 1, window: 1 });
    cache.appendBatch(shape.layers - 1, rowItems(r, a, b)); // makes both due
    let error: unknown;
    try {
      cache.appendBatch(0, rowItems(r, a, b));
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(DisposedError);
    expect((error as Error).message).toMatch(/^items\[1\]\.sequence: /);
    expect(b.disposed).toBe(true);
  } finally {
    cache.dispose();
  }
});

test("a fork keeps the autoCompress setting: a prompt forked per request stays bounded", () => {
  const r = rng(seed + 11);
  const cache = new KVCache({ ...shape, dtype: "f32" });
  try {
    const prompt = cache.createSequence();
    step(prompt, r, 40);
    const seen: number[] = [];
    prompt.autoCompress({ maxTokens: 16, every: 4, scorer: "knorm", sink: 1, window: 2, onCompress: (rep) => seen.push(rep.total) });
    const fork = prompt.fork();
    for (let i = 0; i < 40; i++) step(fork, r, 1);
    expect(fork.autoCompressions).toBeGreaterThan(0);
    expect(prompt.autoCompressions).toBe(0);
    expect(seen.length).toBe(fork.autoCompressions);
    const lengths = Array.from(fork.lengths());
    expect(lengths.reduce((a, b) => a + b, 0) / lengths.length).toBeLessThanOrEqual(16 + 4);
    // Stopped on the fork, the prompt keeps its own.
    fork.autoCompress(false);
    step(prompt, r, 8);
    step(prompt, r, 1);
    expect(prompt.autoCompressions).toBe(1);
  } finally {
    cache.dispose();
  }
});

test("in a batch, the due compressions of the items before one whose compression fails stay done", async () => {
  const r = rng(seed + 5);
  for (const async of [false, true]) {
    const cache = new KVCache({ ...shape, dtype: "f32" });
    const a = cache.createSequence(), b = cache.createSequence();
    step(a, r, 40);
    step(b, r, 40);
    const reports: number[] = [];
    a.autoCompress({ maxTokens: 8, every: 1, scorer: "knorm", sink: 1, window: 1, onCompress: (rep) => reports.push(rep.total) });
    b.autoCompress({ maxTokens: 8, every: 1, scorer: "knorm", sink: 1, window: 1 });
    b.recordOracle(); // the compression is refused when it runs
    const row = shape.kvHeads * shape.headDim;
    const last = shape.layers - 1;
    cache.appendBatch(last, [{ sequence: a, keys: randn(r, row), values: randn(r, row) }, { sequence: b, keys: randn(r, row), values: randn(r, row) }]);
    const bBefore = state(b);
    const items = [{ sequence: a, keys: randn(r, row), values: randn(r, row) }, { sequence: b, keys: randn(r, row), values: randn(r, row) }];
    const failed = async ? cache.appendBatchAsync(0, items) : Promise.resolve().then(() => cache.appendBatch(0, items));
    await expect(failed).rejects.toMatchObject({ name: "InvalidArgumentError", message: expect.stringMatching(/^items\[1\]\.sequence: The automatic compression/) });
    // a's compression ran, complete, as a's own append would have run it; nothing was appended.
    expect([a.autoCompressions, reports]).toEqual([1, [8 * shape.layers * shape.kvHeads]]);
    expect(Array.from(a.lengths())).toEqual(new Array(shape.layers * shape.kvHeads).fill(8));
    expect([a.appended(0), state(b)]).toEqual([40, bBefore]);
    cache.dispose();
  }
});

test("appendBatchAsync runs the due compression in its turn, whether it waited or not", async () => {
  const results: unknown[] = [];
  for (const waits of [false, true]) {
    const r = rng(seed + 4);
    const cache = new KVCache({ ...shape, dtype: "f32" });
    const a = cache.createSequence(), b = cache.createSequence();
    step(a, r, 20);
    step(b, r, 20);
    a.autoCompress({ maxTokens: 8, every: 4, scorer: "streaming", sink: 1, window: 2 });
    const row = shape.kvHeads * shape.headDim, qrow = shape.queryHeads * shape.headDim;
    const queries = randn(r, qrow); // drawn either way: both runs get the same rows
    const busy = waits ? a.attendAsync(0, queries) : undefined;
    // Four positions into every layer of a (due after the last layer's batch), then eight more into
    // layer 0 of a and b: the compression runs at the start of that batch's turn.
    const calls = Array.from({ length: shape.layers }, (_, l) => cache.appendBatchAsync(l, [{ sequence: a, keys: randn(r, 4 * row), values: randn(r, 4 * row) }]));
    const items = [{ sequence: a, keys: randn(r, 8 * row), values: randn(r, 8 * row) }, { sequence: b, keys: randn(r, 8 * row), values: randn(r, 8 * row) }];
    calls.push(cache.appendBatchAsync(0, items));
    await Promise.all([busy, ...calls]);
    expect(a.autoCompressions).toBe(1);
    // a: compressed to 8 per head, then 8 more rows in layer 0; b: 8 more rows, attended over all.
    expect(Array.from(a.lengths())).toEqual([16, 16, 8, 8]);
    expect(Array.from(b.lengths())).toEqual([28, 28, 20, 20]);
    expect(b.attend(0, randn(r, 28 * qrow)).every(Number.isFinite)).toBe(true);
    results.push(state(a), state(b));
    cache.dispose();
  }
  expect(results[2]).toEqual(results[0]);
  expect(results[3]).toEqual(results[1]);
});

test("a due compression short of free pages goes through the pressure policy, and the append is not blocked", () => {
  const r = rng(seed + 6);
  const small = { layers: 2, kvHeads: 2, queryHeads: 2, headDim: 8 };
  const row = small.kvHeads * small.headDim;
  const stepSmall = (s: Sequence, tokens: number) => {
    for (let l = 0; l < small.layers; l++) {
      s.append(l, randn(r, tokens * row), randn(r, tokens * row));
      s.attend(l, randn(r, tokens * row));
    }
  };
  for (const policy of [true, false]) {
    const cache = new KVCache({ ...small, dtype: "f32", pageSize: 4, maxTokens: 160 }); // 40 pages
    const a = cache.createSequence();
    stepSmall(a, 18); // 5 pages per head: 20
    const fork = a.fork(); // shares them: compressing a copies its pages first
    const b = cache.createSequence();
    stepSmall(b, 14); // 4 pages per head: 36
    if (policy) cache.onPressure({ evict: "largest", ratio: 0.9, scorer: "knorm", window: 0, sink: 0 });
    a.autoCompress({ maxTokens: 6, every: 1, scorer: "knorm", window: 0, sink: 0 });
    stepSmall(a, 1); // the shared last pages copied (40 pages: full); the compression is due
    expect(cache.usage().pagesUsed).toBe(40);
    const before = a.appended(0);
    a.append(0, randn(r, row), randn(r, row)); // fits in the last page: no new page needed
    expect(a.appended(0)).toBe(before + 1);
    if (policy) {
      // The policy tried a (the largest: it cannot give pages either), then took b's, then a compressed.
      expect(cache.pressureStats.events).toBeGreaterThan(0);
      expect(a.autoCompressions).toBe(1);
      expect(Math.max(...Array.from(a.lengths()))).toBeLessThanOrEqual(7);
    } else {
      // No room anywhere: the append went in; the compression is still due.
      expect(a.autoCompressions).toBe(0);
      fork.dispose(); // its pages come back; the next append compresses
      a.append(1, randn(r, row), randn(r, row));
      expect(a.autoCompressions).toBe(1);
    }
    cache.dispose();
  }
});

test("onCompress runs inside the append: it may read the sequence, and async calls it makes keep their place in the queue", async () => {
  const r = rng(seed + 7);
  const cache = new KVCache({ ...shape, dtype: "f32" });
  const a = cache.createSequence();
  step(a, r, 40);
  const seen: number[][] = [];
  const order: string[] = [];
  let inner: Promise<Float32Array> | undefined;
  const qrow = shape.queryHeads * shape.headDim, row = shape.kvHeads * shape.headDim;
  a.autoCompress({
    maxTokens: 8,
    every: 1,
    scorer: "knorm",
    sink: 1,
    window: 1,
    onCompress: () => {
      seen.push(Array.from(a.lengths())); // a synchronous call, even during an async call's turn
      inner = a.attendAsync(0, randn(r, qrow)).then((out) => (order.push("attendAsync made inside"), out));
    },
  });
  step(a, r, 1); // due
  const batch = cache.appendBatchAsync(0, [{ sequence: a, keys: randn(r, row), values: randn(r, row) }]);
  const later = a.compressAsync({ scorer: "knorm", budget: 4, sink: 1, window: 1 }).then(() => order.push("compressAsync made after"));
  await Promise.all([batch, later]);
  await inner;
  expect(seen).toEqual([new Array(heads).fill(8)]);
  expect(order).toEqual(["attendAsync made inside", "compressAsync made after"]);
  expect(a.pending).toBe(0);
  cache.dispose();
});

test("h2o: refused at the call while accumulateAttention() is off, and accumulation cannot be turned off under it", () => {
  const r = rng(seed + 41);
  const cache = new KVCache({ ...shape, dtype: "f32" });
  const seq = cache.createSequence();
  step(seq, r, 40);
  // Once due, every append would fail on the missing attention mass.
  expect(() => seq.autoCompress({ maxTokens: 8, every: 1, scorer: "h2o", sink: 1, window: 1 })).toThrow(
    expect.objectContaining({ name: "InvalidArgumentError", message: expect.stringMatching(/^Expected "h2o" only while accumulateAttention\(\) is on/) }),
  );
  seq.accumulateAttention();
  const reports: number[] = [];
  seq.autoCompress({ maxTokens: 8, every: 1, scorer: "h2o", sink: 1, window: 1, onCompress: (rep) => reports.push(rep.total) });
  expect(() => seq.accumulateAttention(false)).toThrow(/autoCompress compresses with scorer "h2o", which needs accumulateAttention\(\) on/);
  step(seq, r, 2); // makes it due
  step(seq, r, 1); // compresses first
  expect(reports).toEqual([8 * heads]);
  // Another scorer, or autoCompress off, frees accumulation again.
  seq.autoCompress({ maxTokens: 8, every: 1, scorer: "knorm", sink: 1, window: 1 });
  seq.accumulateAttention(false);
  expect(() => seq.autoCompress({ maxTokens: 8, scorer: "h2o" })).toThrow(/accumulateAttention/);
  // A fork keeps both settings.
  seq.accumulateAttention(true);
  seq.autoCompress({ maxTokens: 8, every: 1, scorer: "h2o", sink: 1, window: 1 });
  const fork = seq.fork();
  expect(() => fork.accumulateAttention(false)).toThrow(/autoCompress compresses with scorer "h2o"/);
  cache.dispose();
});
