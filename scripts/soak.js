#!/usr/bin/env node
// Soak test: random mixed sync and async calls on many sequences of one cache for a while, checking
// the invariants after every batch, then that pages and memory return to where they started.
//
//   node --expose-gc scripts/soak.js [--seconds 600] [--seed N] [--sequences 16]
//
// Exits 1 on the first broken invariant (printed with the seed and the operation count).
"use strict";
const path = require("path");
const lukv = require(path.resolve(__dirname, "..", "dist", "ts"));

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const seconds = Number(arg("seconds", "600"));
const seed = Number(arg("seed", String((Date.now() ^ (Math.random() * 0x7fffffff)) >>> 0)));
const maxSequences = Number(arg("sequences", "16"));
const random = lukv.rng ? lukv.rng(seed) : require(path.resolve(__dirname, "..", "dist", "ts", "random")).rng(seed);
const gc = global.gc ?? (() => {});
const shape = { layers: 2, kvHeads: 2, queryHeads: 8, headDim: 64 };
const maxTokens = 4 * 1024; // tokens of one KV head: 256 pages of 16, so appends do run out

function fail(message) {
  console.error(`soak: FAILED after ${ops} operations (seed ${seed}): ${message}`);
  process.exit(1);
}
function check(ok, message) {
  if (!ok) fail(message);
}
const pick = (n) => Math.floor(random() * n);
function randn(n, scale = 1) {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (random() * 2 - 1) * scale;
  return a;
}

let ops = 0;
const counts = {};
const errors = {};
const count = (name) => (counts[name] = (counts[name] ?? 0) + 1);
const expectedError = (e, ...names) => {
  if (!e || !names.includes(e.name)) fail(`unexpected error ${e && e.name}: ${e && e.message}`);
  errors[e.name] = (errors[e.name] ?? 0) + 1;
};

// Invariants of one idle sequence: lengths match positions, positions ascend and stay below what
// was appended.
function checkSequence(seq) {
  const lengths = seq.lengths();
  for (let l = 0; l < shape.layers; l++) {
    const appended = seq.appended(l);
    for (let h = 0; h < shape.kvHeads; h++) {
      const pos = seq.positions(l, h);
      check(pos.length === lengths[l * shape.kvHeads + h], `lengths and positions disagree (layer ${l}, head ${h})`);
      for (let i = 0; i < pos.length; i++) {
        check(pos[i] >= 0 && pos[i] < appended, `position ${pos[i]} outside [0, ${appended})`);
        check(i === 0 || pos[i] > pos[i - 1], "positions do not ascend");
      }
    }
  }
}

async function run() {
  const cache = new lukv.KVCache({ ...shape, dtype: "f16", maxTokens, threads: 2 });
  const live = new Set();
  const row = shape.kvHeads * shape.headDim;
  const qrow = shape.queryHeads * shape.headDim;
  let pending = [];
  const started = Date.now();
  let baselineRss = 0;
  let baselineOutside = 0; // RSS outside V8's committed heap: native memory, code, stacks
  let peakRss = 0;
  let batches = 0;
  while ((Date.now() - started) / 1000 < seconds) {
    for (let k = 0; k < 50; k++, ops++) {
      const all = [...live];
      const seq = all.length ? all[pick(all.length)] : undefined;
      const op = !seq ? "create" : ["create", "append", "append", "attend", "attendAsync", "compressAsync", "compress", "fork", "dispose", "busy"][pick(10)];
      count(op);
      try {
        if (op === "create") {
          if (live.size < maxSequences) live.add(cache.createSequence());
        } else if (op === "busy") {
          if (seq.pending > 0) {
            try {
              seq.lengths();
              fail("a synchronous call on a busy sequence did not throw");
            } catch (e) {
              expectedError(e, "SequenceBusyError");
            }
          }
        } else if (op === "attendAsync") {
          if (seq.pending === 0 && seq.appended(0) === 0) continue;
          const tokens = 1 + pick(4);
          pending.push(seq.attendAsync(pick(shape.layers), randn(tokens * qrow)).catch((e) => expectedError(e, "DisposedError", "InvalidArgumentError")));
        } else if (op === "compressAsync") {
          // Too short for its sink and window (the queue may still hold the appends' effects): refused.
          const options = { ratio: random() * 0.9, scorer: ["knorm", "keydiff", "streaming"][pick(3)], sink: 2, window: 8 };
          pending.push(seq.compressAsync(options).catch((e) => expectedError(e, "DisposedError", "InvalidArgumentError", "OutOfPagesError")));
        } else if (op === "dispose") {
          seq.dispose();
          live.delete(seq);
        } else if (seq.pending > 0) {
          continue; // synchronous calls wait for a quiet sequence (the busy case is its own operation)
        } else if (op === "append") {
          const tokens = 1 + pick(96);
          for (let l = 0; l < shape.layers; l++) {
            const before = seq.lengths();
            try {
              seq.append(l, randn(tokens * row), randn(tokens * row));
            } catch (e) {
              expectedError(e, "OutOfPagesError");
              const after = seq.lengths();
              check(after.every((x, i) => x === before[i]), "a failed append changed the lengths");
            }
          }
        } else if (op === "attend") {
          const l = pick(shape.layers);
          const tokens = Math.min(seq.appended(l), 1 + pick(8));
          if (tokens === 0) continue;
          const out = seq.attend(l, randn(tokens * qrow));
          check(out.every(Number.isFinite), "attention returned a value that is not finite");
        } else if (op === "compress") {
          if (seq.appended(0) < 10 || seq.appended(1) < 10) continue;
          const before = seq.lengths();
          let rep;
          try {
            rep = seq.compress({ ratio: random() * 0.9, scorer: "knorm", sink: 2, window: 8 });
          } catch (e) {
            expectedError(e, "OutOfPagesError"); // pages shared with forks must be copied first
            check(seq.lengths().every((x, i) => x === before[i]), "a failed compress changed the lengths");
            continue;
          }
          const after = seq.lengths();
          check(after.every((x, i) => x <= before[i]), "compress made a head longer");
          check(Array.from(after).reduce((a, b) => a + b, 0) === rep.total, "the report's total is not what was kept");
        } else if (op === "fork") {
          if (live.size < maxSequences) live.add(seq.fork());
        }
      } catch (e) {
        expectedError(e, "OutOfPagesError");
      }
    }
    await Promise.all(pending);
    pending = [];
    for (const s of live) checkSequence(s);
    const u = cache.usage();
    check(u.pagesUsed >= 0 && u.pagesUsed <= u.pagesTotal, `pages used ${u.pagesUsed} of ${u.pagesTotal}`);
    check(u.sequences === live.size, `usage() counts ${u.sequences} sequences, ${live.size} live`);
    if (++batches === 20) {
      gc();
      const m = process.memoryUsage();
      baselineRss = m.rss;
      baselineOutside = m.rss - m.heapTotal;
    }
    peakRss = Math.max(peakRss, process.memoryUsage().rss);
  }
  for (const s of live) s.dispose();
  const end = cache.usage();
  check(end.pagesUsed === 0 && end.sequences === 0, `after disposing every sequence ${end.pagesUsed} pages and ${end.sequences} sequences remain`);
  cache.dispose();
  gc();
  const finalMem = process.memoryUsage();
  const finalRss = finalMem.rss;
  const mib = (b) => (b / 2 ** 20).toFixed(0);
  console.log(`soak: ${ops} operations in ${((Date.now() - started) / 1000).toFixed(0)} s (seed ${seed})`);
  console.log(`  operations: ${JSON.stringify(counts)}`);
  console.log(`  expected errors: ${JSON.stringify(errors)}`);
  console.log(`  RSS: baseline ${mib(baselineRss)} MiB (after 20 batches), peak ${mib(peakRss)} MiB, after dispose ${mib(finalRss)} MiB (JS heap ${mib(finalMem.heapUsed)} MiB used of ${mib(finalMem.heapTotal)} committed, external ${mib(finalMem.external)} MiB)`);
  // V8 keeps heap pages it grew into committed after a GC (heapTotal), which is most of the RSS left
  // after dispose; what lukv could leak is outside that heap.
  const outside = finalRss - finalMem.heapTotal;
  console.log(`  outside the JS heap: baseline ${mib(baselineOutside)} MiB, after dispose ${mib(outside)} MiB`);
  if (baselineRss > 0) {
    check(finalRss < baselineRss + 64 * 2 ** 20, "RSS after dispose is more than 64 MiB above the baseline");
    check(outside < baselineOutside + 32 * 2 ** 20, "RSS outside the JS heap is more than 32 MiB above its baseline after dispose");
  }
  console.log("soak: passed");
}

run().catch((e) => fail(e && e.stack));
