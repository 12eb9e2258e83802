// The time of one seq.attend decode call, everything included (argument checks, input scan, the
// kernels, the reduce), for several model shapes and context lengths: what a decode loop pays per
// layer. Short contexts show the fixed cost of a call; head sizes other than 64 and 128 show
// the kernels' handling of their columns.
// Usage: node dist/bench/decode-shapes.js [--tokens 16,1024] [--calls 3000]
import { KVCache } from "../ts";
import { benchOptions, intOption, intListOption, median, printTable, host, hostLine, writeResults } from "./common";

const options = benchOptions({
  script: "decode-shapes",
  about: "The time of one seq.attend decode call, everything included, for three model shapes (8 x 32 x 128, 8 x 32 x 96, tiny-lm's 2 x 8 x 32).",
  options: {
    // The pool holds exactly the rows, in whole pages.
    tokens: intListOption({ default: [16, 1024], min: 16, multipleOf: 16, help: "context lengths, one row per shape each" }),
    calls: intOption({ default: 3000, min: 1, help: "timed calls per median, after 100 untimed" }),
  },
});
const { tokens: tokenList, calls } = options;
const shapes = [
  { name: "8 x 32 x 128 (Llama-3-8B)", kvHeads: 8, queryHeads: 32, headDim: 128 },
  { name: "8 x 32 x 96", kvHeads: 8, queryHeads: 32, headDim: 96 },
  { name: "2 x 8 x 32 (embedded tiny-lm)", kvHeads: 2, queryHeads: 8, headDim: 32 },
];
const h = host();
console.log(`seq.attend, one decode row, f16, pageSize 16; median of ${calls} calls after 100 untimed`);
console.log(`${hostLine(h)}\n`);

const rows: (string | number)[][] = [];
const results: unknown[] = [];
for (const shape of shapes) {
  for (const tokens of tokenList) {
    const { kvHeads, queryHeads, headDim } = shape;
    const cache = new KVCache({ layers: 1, kvHeads, queryHeads, headDim, dtype: "f16", pageSize: 16, maxTokens: kvHeads * tokens });
    try {
      const seq = cache.createSequence();
      const kv = new Uint16Array(tokens * kvHeads * headDim).map((_, i) => 0x3000 + ((i * 2654435761) >>> 22)); // small f16 values
      seq.append(0, kv, kv);
      const q = new Float32Array(queryHeads * headDim).map((_, i) => Math.sin(i) * 0.1);
      const out = new Float32Array(q.length);
      for (let i = 0; i < 100; i++) seq.attend(0, q, { out });
      const us: number[] = [];
      for (let i = 0; i < calls; i++) {
        const t = process.hrtime.bigint();
        seq.attend(0, q, { out });
        us.push(Number(process.hrtime.bigint() - t) / 1e3);
      }
      const m = median(us);
      const bytes = tokens * kvHeads * headDim * 2 * 2;
      const gbps = bytes / (m / 1e6) / 1e9;
      rows.push([shape.name, tokens, m.toFixed(1), gbps.toFixed(2)]);
      results.push({ shape, tokens, medianMicros: m, bytes, kvGBps: gbps });
    } finally {
      cache.dispose();
    }
  }
}
printTable(["shape (KV x query heads x headDim)", "tokens", "µs / call", "K+V GB/s"], rows);
const file = writeResults("decode-shapes", { benchmark: "decode call time by shape", calls, ...h, results });
console.log(`\nwritten ${file}`);
