// Text generation with the embedded model on a compressed KV cache:
//
//   npx tsc -p tsconfig.build.json
//   node dist/examples/tiny-lm/generate.js [--ratio 0.8] [--tokens 64] [--temperature 0.8] [--model DIR] [PROMPT_FILE]
//
// The forward pass (ts/model/tiny-lm.ts) computes embeddings, norms, projections, RoPE and the MLP
// in TypeScript; lukv does every attention and holds every key and value. Per layer it calls
//   seq.append(layer, keys, values)   keys after RoPE, [tokens, kvHeads, headDim]
//   seq.attend(layer, queries)        [tokens, queryHeads, headDim] -> same shape, causal by position
// so a compressed sequence changes what the model attends to and nothing else.
import * as fs from "fs";
import { backends } from "../../ts";
import { Sampler, defaultModelDir, loadTinyLM, modelProfile, modelTexts } from "../../ts/model";

const args = process.argv.slice(2);
const usage = (message: string): never => {
  console.error(`${message}\nusage: node dist/examples/tiny-lm/generate.js [--ratio 0.8] [--tokens 64] [--temperature 0.8] [--model DIR] [PROMPT_FILE]`);
  process.exit(2);
};
const option = (name: string, fallback: number, valid: (x: number) => boolean, expected: string): number => {
  const at = args.indexOf(`--${name}`);
  if (at < 0) return fallback;
  const raw = args.splice(at, 2)[1];
  if (raw === undefined || raw.trim() === "" || !valid(Number(raw))) usage(`--${name} expects ${expected}, got ${raw === undefined ? "nothing" : JSON.stringify(raw)}`);
  return Number(raw);
};
const ratio = option("ratio", 0.8, (x) => x >= 0 && x < 1, "a number in [0, 1)");
const steps = option("tokens", 64, (x) => Number.isInteger(x) && x >= 1, "a whole number of tokens to generate, at least 1");
const temperature = option("temperature", 0.8, (x) => x >= 0 && Number.isFinite(x), "a finite number >= 0");
const modelAt = args.indexOf("--model");
const dir = modelAt < 0 ? defaultModelDir() : args.splice(modelAt, 2)[1];
if (dir === undefined) usage("--model expects a directory");
if (args.length > 1 || args.some((a) => a.startsWith("--"))) usage(`unexpected argument ${JSON.stringify(args.find((a) => a.startsWith("--")) ?? args[1])}`);

const model = loadTinyLM(dir);
const tok = model.tokenizer!;
// The prompt keeps at least what compress keeps anyway (4 sink + 32 window tokens, its defaults) and
// one more, and the continuation must fit the model's positions after it.
const minPrompt = 4 + 32 + 1;
if (steps > model.config.maxPosition - minPrompt)
  usage(`--tokens expects at most ${model.config.maxPosition - minPrompt} (${model.config.maxPosition} positions, a prompt of at least ${minPrompt}), got ${steps}`);
const text = args[0] !== undefined ? fs.readFileSync(args[0], "utf8") : modelTexts(dir, "heldout")[0].text;
// [BOS] + the text, cut so that prompt and continuation fit the context the model was trained on.
const prompt = [tok.bos!, ...tok.encode(text)].slice(0, model.config.maxPosition - steps);
if (prompt.length < minPrompt) usage(`the prompt has ${prompt.length} tokens (BOS included); it needs at least ${minPrompt}`);

using cache = model.createCache({ dtype: "f16" });
using seq = cache.createSequence();

// 1. Prefill in chunks of 64 tokens; the sequence remembers the last 32 queries of each layer,
//    which is what SnapKV scores the prompt's tokens with.
let t0 = performance.now();
let logits = model.forward(seq, prompt, { chunk: 64 });
const before = cache.usage().bytesUsed;
console.log(`prefill: ${prompt.length} tokens in ${(performance.now() - t0).toFixed(0)} ms (CPU kernels ${backends().cpu.simd})`);

// 2. Compress: evict `ratio` of the prompt's KV. With the model's LU-KV profile each (layer, KV
//    head) keeps what the profile says it needs; inside a head SnapKV picks the tokens.
const found = modelProfile(dir, "snapkv");
const report = found
  ? seq.compress({ ratio, scorer: "snapkv", allocation: "lukv", profile: found.profile })
  : seq.compress({ ratio, scorer: "snapkv", allocation: "adakv" });
console.log(
  `compress (${found ? "LU-KV" : "Ada-KV, no profile found"}): kept ${report.total} of ${report.before} tokens over all heads, ` +
    `KV memory ${(before / 1024).toFixed(0)} KiB -> ${(cache.usage().bytesUsed / 1024).toFixed(0)} KiB`,
);

// 3. Decode one token at a time: sample from the last logits, run that token through the model.
const sampler = new Sampler({ temperature, topK: 40, seed: 1 });
const out: number[] = [];
t0 = performance.now();
for (let s = 0; s < steps; s++) {
  const next = sampler.next(logits);
  if (next === tok.eos) break;
  out.push(next);
  logits = model.forward(seq, [next]);
}
const ms = (performance.now() - t0) / Math.max(1, out.length);
console.log(`\n…${tok.decode(prompt.slice(-40))}\x1b[1m${tok.decode(out)}\x1b[0m\n`);
console.log(`${out.length} tokens at ${ms.toFixed(1)} ms/token`);
