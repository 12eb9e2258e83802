// Throughput of saving and loading a sequence (seq.save / cache.loadSequence, from memory and through
// a file), against a plain copy of the same number of bytes measured in the same run.
// Usage: node dist/bench/save-load.js [--tokens 32768] [--layers 4] [--kv-heads 2] [--query-heads 8]
//          [--head-dim 32] [--dtype f16] [--page-size 16] [--repeats 9] [--device cpu]
// The defaults are the embedded model's shape (models/tiny-lm).
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { backends, KVCache, DType } from "../ts";
import { rng } from "../ts/random";
import { benchOptions, intOption, choiceOption, host, hostLine, median, printTable, timeRuns, writeResults } from "./common";

const DTYPES: readonly DType[] = ["f16", "bf16", "f32"];
const options = benchOptions({
  script: "save-load",
  about: "seq.save(), cache.loadSequence(bytes) and the file variants in MB/s, against Buffer.from of the same bytes in the same run; the defaults are the embedded model's shape.",
  options: {
    // The observation window attended before saving is 32 query rows at the end of the sequence.
    tokens: intOption({ default: 32768, min: 32, help: "tokens per layer and KV head" }),
    layers: intOption({ default: 4, min: 1, max: 65536, help: "layers" }),
    "kv-heads": intOption({ default: 2, min: 1, max: 65536, help: "KV heads" }),
    "query-heads": intOption({ default: 8, min: 1, max: 65536, help: "query heads, a multiple of --kv-heads" }),
    "head-dim": intOption({ default: 32, min: 1, max: 4096, help: "head dimension" }),
    dtype: choiceOption({ choices: DTYPES, default: "f16", help: "the cache's element type" }),
    "page-size": intOption({ default: 16, min: 1, max: 65536, help: "tokens per page" }),
    repeats: intOption({ default: 9, min: 1, help: "runs per median" }),
    device: choiceOption({ choices: ["cpu", "cuda"] as const, default: "cpu", help: "where the cache lives" }),
  },
  check: (o) => (o["query-heads"] % o["kv-heads"] === 0 ? undefined : `--query-heads (${o["query-heads"]}) must be a multiple of --kv-heads (${o["kv-heads"]})`),
});
const { tokens, layers, "kv-heads": kvHeads, "query-heads": queryHeads, "head-dim": headDim, dtype, "page-size": pageSize, repeats, device } = options;

if (device === "cuda" && !backends().cuda.usable) {
  process.stderr.write(`save-load.js: --device cuda: the CUDA backend cannot be used here: ${backends().cuda.reasons.join("; ")}\n`);
  process.exit(1);
}

// Room for the original and one loaded copy.
const cache = new KVCache({ layers, kvHeads, queryHeads, headDim, dtype, pageSize, device, maxTokens: 2 * layers * kvHeads * (tokens + pageSize), checkFinite: false });
const seq = cache.createSequence();
const r = rng(12345);
const chunk = 1024;
for (let l = 0; l < layers; l++)
  for (let done = 0; done < tokens; done += chunk) {
    const n = Math.min(chunk, tokens - done) * kvHeads * headDim;
    // Finite random values in the cache dtype (raw words for f16/bf16: no conversion cost here).
    const k = dtype === "f32" ? Float32Array.from({ length: n }, () => r() - 0.5) : Uint16Array.from({ length: n }, () => 0x3000 + Math.floor(r() * 0x1000));
    const v = dtype === "f32" ? Float32Array.from({ length: n }, () => r() - 0.5) : Uint16Array.from({ length: n }, () => 0x3000 + Math.floor(r() * 0x1000));
    seq.append(l, k, v);
  }
for (let l = 0; l < layers; l++) seq.attend(l, Float32Array.from({ length: 32 * queryHeads * headDim }, () => r() - 0.5));

const bytes = seq.save();
const MB = bytes.length / 1e6;
const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "lukv-bench-")), "seq.lukv");
const rows: (string | number)[][] = [];
const results: Record<string, { medianMs: number; mbPerS: number; vsCopy: number }> = {};
let copyMs = 0;
const measure = (name: string, fn: () => void) => {
  const ms = median(timeRuns(fn, repeats));
  if (name === "plain copy") copyMs = ms;
  const mbPerS = MB / (ms / 1000);
  results[name] = { medianMs: ms, mbPerS, vsCopy: copyMs / ms };
  rows.push([name, ms.toFixed(2), mbPerS.toFixed(0), (copyMs / ms).toFixed(2)]);
};
let sink = 0;
measure("plain copy", () => {
  sink += Buffer.from(bytes).length;
});
measure("save()", () => {
  sink += seq.save().length;
});
measure("loadSequence(bytes)", () => {
  const s = cache.loadSequence(bytes);
  s.dispose();
});
// A cache with checkFinite (the default) also measures the rows it loads (their largest |k|, |v|).
const checked = new KVCache({ layers, kvHeads, queryHeads, headDim, dtype, pageSize, device, maxTokens: layers * kvHeads * (tokens + pageSize), checkFinite: true });
measure("loadSequence(bytes), checkFinite", () => checked.loadSequence(bytes).dispose());
checked.dispose();
measure("saveFile(path)", () => seq.saveFile(file));
measure("loadSequence(path)", () => cache.loadSequence(file).dispose());
fs.rmSync(path.dirname(file), { recursive: true, force: true });

const h = host();
console.log(hostLine(h));
console.log(`${device}, ${tokens} tokens, ${layers} layers x ${kvHeads} KV heads, headDim ${headDim}, ${dtype}, pageSize ${pageSize}: ${MB.toFixed(1)} MB saved; median of ${repeats}`);
printTable(["operation", "ms", "MB/s", "vs plain copy"], rows);
console.log(`results: ${writeResults("save-load", { ...h, tokens, layers, kvHeads, queryHeads, headDim, dtype, pageSize, device, bytes: bytes.length, repeats, results, sink })}`);
seq.dispose();
cache.dispose();
