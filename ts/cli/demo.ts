// `lukv demo`: the embedded tiny language model end to end on lukv — prefill a held-out text,
// compress its KV cache with LU-KV, generate, and compare with the full cache: memory, decode time,
// the text and how many greedy tokens agree. `--random` keeps the synthetic-data demo.
import * as fs from "fs";
import * as path from "path";
import { KVCache } from "../cache";
import { backends } from "../backends";
import { ALLOCATIONS, AllocationName, SCORERS, ScorerName } from "../compress";
import type { DType } from "../dtype";
import { defaultModelDir, loadTinyLM, modelProfile, modelTexts } from "../model";
import type { Profile } from "../profile";
import { QueryStatistics } from "../expected-attention";
import { InvalidArgumentError, OutOfMemoryError, OutOfPagesError } from "../errors";
import { CliIO, countOption, decimalText, noPositionals, parseArgs, progressBar, readingFrom, UsageError, wantsHelp } from "./io";

/** compress()'s defaults, passed explicitly: every head keeps its first SINK and last WINDOW tokens. */
const SINK = 4;
const WINDOW = 32;

const USAGE = `usage: lukv demo [options]

Runs the embedded model (models/tiny-lm) on a held-out text: prefill, compress the KV cache,
generate greedily, and compare with the full cache.

options (defaults in brackets):
  --ratio R            fraction of the prompt's KV to evict [0.8]; every head keeps at least its
                       first ${SINK} and last ${WINDOW} tokens, so a short prompt may keep more (the demo says so)
  --allocation A       uniform | pyramidkv | adakv | lukv [lukv with the model's profile; adakv without one]
  --scorer S           ${SCORERS.join(" | ")} [snapkv]
  --tokens N           tokens to generate [48]
  --prompt-tokens N    prompt length, BOS included, at least ${SINK + WINDOW} [the model's context minus --tokens]
  --text FILE          the prompt text, at least ${SINK + WINDOW} tokens with BOS
                       [models/tiny-lm/heldout/handbook-1.txt, else the first held-out text]
  --dtype D            cache dtype f32 | f16 | bf16 [f16]
  --model DIR          model directory [the package's models/tiny-lm]

  --random             the synthetic-data demo instead: prefill and decode on random tensors
                       (8 layers x 8 KV heads, head dim 128, f16); it takes only these options:
    --tokens N         tokens to prefill [2048]
    --steps N          tokens to decode [16]`;

function mib(bytes: number): string {
  return bytes < 2 ** 20 ? `${(bytes / 1024).toFixed(1)} KiB` : `${(bytes / 2 ** 20).toFixed(2)} MiB`;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/**
 * make(), which creates the demo's cache; a cache over KVCache's size limit or larger than the
 * memory there is becomes a usage error naming the options that sized it (`asked`, `options`).
 */
function cacheSizedBy(asked: string, options: string, make: () => KVCache): KVCache {
  try {
    return make();
  } catch (e) {
    if (e instanceof InvalidArgumentError || e instanceof OutOfPagesError || e instanceof OutOfMemoryError)
      throw new UsageError(`${asked} needs a KV cache larger than can be allocated: give a smaller ${options}`);
    throw e;
  }
}

/** The text as one line, control characters shown, cut to `max` characters from the end or start. */
function oneLine(text: string, max: number, from: "start" | "end"): string {
  const flat = text.replace(/\n/g, "⏎").replace(/\t/g, "→");
  if (flat.length <= max) return flat;
  return from === "end" ? "…" + flat.slice(flat.length - max) : flat.slice(0, max) + "…";
}

const SPEC = { values: ["ratio", "allocation", "scorer", "tokens", "prompt-tokens", "text", "dtype", "model", "steps"], flags: ["random"] };

export async function demoCommand(argv: string[], io: CliIO): Promise<number> {
  if (wantsHelp(argv)) {
    io.out(USAGE);
    return 0;
  }
  try {
    const args = parseArgs(argv, SPEC);
    const { options } = args;
    noPositionals(args);
    if (options.has("random")) return randomDemo(options, io);
    if (!options.has("model") && !fs.existsSync(path.join(defaultModelDir(), "model.safetensors"))) {
      // A checkout or package without the trained weights still has a demo to run.
      io.out(`The embedded model is not in this copy of lukv (${path.join(defaultModelDir(), "model.safetensors")} is missing); running the synthetic-data demo instead.`);
      return randomDemo(new Map(), io);
    }
    return modelDemo(options, io);
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`lukv demo: ${e.message}\n\n${USAGE}`);
      return 2;
    }
    throw e;
  }
}

function modelDemo(options: Map<string, string | true>, io: CliIO): number {
  const known = ["ratio", "allocation", "scorer", "tokens", "prompt-tokens", "text", "dtype", "model"];
  if (options.has("steps")) throw new UsageError("--steps is an option of the --random demo (the model demo generates --tokens N)");
  for (const k of options.keys()) if (!known.includes(k)) throw new UsageError(`unknown option --${k}`);
  const dir = (options.get("model") as string | undefined) ?? defaultModelDir();
  const ratioText = options.get("ratio");
  const ratio = ratioText === undefined ? 0.8 : decimalText(ratioText);
  if (!(ratio >= 0 && ratio < 1)) throw new UsageError(`--ratio expects a number in [0, 1), got ${String(options.get("ratio"))}`);
  const scorer = (options.get("scorer") ?? "snapkv") as ScorerName;
  if (!SCORERS.includes(scorer)) throw new UsageError(`--scorer expects one of ${SCORERS.join(", ")}, got ${String(scorer)}`);
  const requested = options.get("allocation") as AllocationName | undefined;
  if (requested !== undefined && !ALLOCATIONS.includes(requested))
    throw new UsageError(`--allocation expects one of ${ALLOCATIONS.join(", ")}, got ${String(requested)}`);
  const dtype = (options.get("dtype") ?? "f16") as DType;
  if (!["f32", "f16", "bf16"].includes(dtype)) throw new UsageError(`--dtype expects f32, f16 or bf16, got ${String(dtype)}`);
  const steps = countOption(options, "tokens", 48, 1);
  const floor = `every head keeps its first ${SINK} and last ${WINDOW} tokens`;
  const promptOption = options.has("prompt-tokens") ? countOption(options, "prompt-tokens", 0, SINK + WINDOW, floor) : undefined;

  const t0 = performance.now();
  const model = loadTinyLM(dir);
  const tok = model.tokenizer!;
  const c = model.config;
  const promptTokens = promptOption ?? Math.max(64, c.maxPosition - steps);

  // The prompt: a held-out text the model never trained on.
  let textName: string, text: string;
  const file = options.get("text") as string | undefined;
  if (file !== undefined) {
    textName = file;
    text = readingFrom(file, () => fs.readFileSync(file, "utf8"));
  } else {
    const texts = modelTexts(dir, "heldout");
    if (texts.length === 0) throw new Error(`${path.join(dir, "heldout")} has no .txt files; pass --text FILE`);
    const pick = texts.find((t) => t.name === "heldout/handbook-1.txt") ?? texts[0];
    textName = path.resolve(dir) === path.resolve(defaultModelDir()) ? path.join("models", "tiny-lm", pick.name) : path.join(dir, pick.name);
    text = pick.text;
  }
  const prompt = [tok.bos!, ...tok.encode(text)].slice(0, promptTokens);
  if (prompt.length < SINK + WINDOW)
    throw new Error(`${textName} gives a prompt of ${prompt.length} tokens (BOS included); the demo needs at least ${SINK + WINDOW}: ${floor}`);

  // LU-KV needs the model's profile; without one, Ada-KV is the closest head-wise allocation.
  const found = modelProfile(dir, scorer);
  let allocation: AllocationName = requested ?? "lukv";
  let profile: Profile | undefined;
  let note = "";
  if (allocation === "lukv") {
    if (found) {
      profile = found.profile;
      note = `profile ${path.resolve(dir) === path.resolve(defaultModelDir()) ? path.join("models", "tiny-lm", path.basename(found.file)) : found.file}`;
    } else {
      allocation = "adakv";
      note = `no LU-KV profile for ${scorer} in ${dir} (profile-${scorer}.json / .npy, or profile.json / .npy calibrated with ${scorer}), so Ada-KV allocation instead`;
    }
  }
  const allocationLabel = { uniform: "uniform", pyramidkv: "PyramidKV", adakv: "Ada-KV", lukv: "LU-KV" }[allocation];

  using cache = cacheSizedBy(`--tokens ${steps}`, "--tokens", () => model.createCache({ dtype, contextTokens: prompt.length + steps + 64 }));
  const params = model.weights.embed.length + model.weights.norm.length +
    model.weights.layers.reduce((s, w) => s + Object.values(w).reduce((a, t) => a + t.length, 0), 0);
  const b = backends();
  io.out(
    `lukv demo: tiny-lm, ${c.layers} layers, ${c.heads} query heads over ${c.kvHeads} KV heads, head dim ${c.headDim}, ` +
      `${(params / 1e6).toFixed(1)}M parameters (loaded in ${(performance.now() - t0).toFixed(0)} ms)`,
  );
  io.out(`CPU kernels: ${b.cpu.simd}; cache dtype ${dtype}; forward pass in TypeScript, all attention and KV storage in lukv`);
  io.out(`prompt: ${textName}, ${prompt.length} tokens; then ${steps} tokens, greedy`);
  io.out(`compression: evict ${Math.round(ratio * 100)}% of the prompt's KV, ${allocationLabel} allocation, ${scorer} scorer${note ? ` (${note})` : ""}`);
  io.out("");

  using seq = cache.createSequence();
  // H2O ranks by the attention mass accumulated while the prompt is attended (the fork keeps it).
  if (scorer === "h2o") seq.accumulateAttention(true);
  // Expected Attention predicts from the statistics of the prompt's own pre-RoPE queries.
  const statistics = scorer === "expected-attention" ? new QueryStatistics({ layers: c.layers, queryHeads: c.heads, headDim: c.headDim, skip: SINK }) : undefined;
  const bar = progressBar("prefill", prompt.length);
  const tp = performance.now();
  let shown = 0;
  const logits = model.forward(seq, prompt, {
    queryStatistics: statistics,
    onProgress: (done) => {
      bar.tick(done - shown);
      shown = done;
    },
  });
  bar.done();
  const prefillMs = performance.now() - tp;
  const fullBytes = cache.usage().bytesUsed;

  // The full-cache run is a fork of the prefilled sequence: same prompt KV, nothing evicted.
  const full = seq.fork();
  const decodeBar = progressBar("decode", 2 * steps);
  const fullRun = model.generate(full, logits, steps, { stopToken: -1, onToken: () => decodeBar.tick() });
  full.dispose();

  const expectedAttention = statistics && { statistics, rope: { theta: c.ropeTheta } };
  const report = seq.compress({ ratio, allocation, profile, scorer, sink: SINK, window: WINDOW, expectedAttention });
  const compressedBytes = cache.usage().bytesUsed;
  const run = model.generate(seq, logits, steps, { stopToken: -1, onToken: () => decodeBar.tick() });
  decodeBar.done();

  const same = run.tokens.filter((t, i) => t === fullRun.tokens[i]).length;
  const prefix = run.tokens.findIndex((t, i) => t !== fullRun.tokens[i]);
  const kept = report.kept;
  const perLayer = Array.from({ length: c.layers }, (_, l) => Array.from(kept.subarray(l * c.kvHeads, (l + 1) * c.kvHeads)).join("/"));

  const row = (label: string, a: string, b2: string) => io.out(`${label.padEnd(26)}${a.padStart(12)}${b2.padStart(16)}`);
  // What was evicted, which the sink and window floor can make less than the ratio asked.
  const evicted = Math.round(100 * (1 - report.total / report.before));
  row("", "full cache", `${allocationLabel} ${evicted}%`);
  row("prompt KV memory", mib(fullBytes), mib(compressedBytes));
  row("KV tokens kept (all heads)", String(report.before), `${report.total} (${((100 * report.total) / report.before).toFixed(0)}%)`);
  // "–" where no decode step ran: one token comes from the prompt's logits and is not fed back.
  const ms = (xs: number[], digits: number) => (xs.length > 0 ? median(xs).toFixed(digits) : "–");
  row("decode ms/token (median)", ms(fullRun.stepMs, 2), ms(run.stepMs, 2));
  row("  of which lukv attention", ms(fullRun.attentionMs, 3), ms(run.attentionMs, 3));
  io.out(`prefill ${(prefillMs / 1000).toFixed(1)} s (${(prefillMs / prompt.length).toFixed(2)} ms/token); compress ${report.ms.toFixed(1)} ms, ${report.pagesFreed} pages freed`);
  io.out(`tokens kept per layer (KV head 0/1/...): ${perLayer.join(", ")}`);
  if (fullRun.stepMs.length === 0) io.out("note: no decode time with one token: it comes from the prompt's logits, and no decode step ran");
  if (report.total > report.target)
    io.out(`note: ${evicted}% of the prompt's KV evicted, not the ${Math.round(ratio * 100)}% asked: ${floor} (${report.total} tokens kept, ${report.target} asked)`);
  io.out("");
  io.out(`prompt (end):  ${oneLine(tok.decode(prompt), 240, "end")}`);
  io.out(`full cache:    ${oneLine(tok.decode(fullRun.tokens), 400, "start")}`);
  io.out(`compressed:    ${oneLine(tok.decode(run.tokens), 400, "start")}`);
  io.out("");
  io.out(
    `agreement with the full cache: ${same}/${steps} greedy tokens identical (${((100 * same) / steps).toFixed(0)}%)` +
      (prefix < 0 ? ", all of them" : `, the first ${prefix} in a row`) +
      ` (${((performance.now() - t0) / 1000).toFixed(1)} s in all)`,
  );
  return 0;
}

function randomRows(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 4294967296 - 0.5) * 2;
  }
  return out;
}

function randomDemo(options: Map<string, string | true>, io: CliIO): number {
  for (const k of options.keys()) if (!["random", "tokens", "steps"].includes(k)) throw new UsageError(`unknown option --${k} with --random`);
  const tokens = countOption(options, "tokens", 2048, 1);
  const steps = countOption(options, "steps", 16, 1);
  const layers = 8, kvHeads = 8, queryHeads = 32, headDim = 128;
  using cache = cacheSizedBy(`--tokens ${tokens} with --steps ${steps}`, "--tokens or --steps", () =>
    new KVCache({ layers, kvHeads, queryHeads, headDim, dtype: "f16", maxTokens: layers * kvHeads * Math.ceil((tokens + steps) / 16) * 16 }),
  );
  const b = backends();
  io.out(`lukv demo --random: ${layers} layers x ${kvHeads} KV heads (${queryHeads} query heads), headDim ${headDim}, f16, random data`);
  io.out(`CPU kernels: ${b.cpu.simd}, ${b.cpu.threads} threads; CUDA: ${b.cuda.usable ? "usable" : b.cuda.error}`);
  using seq = cache.createSequence();
  const chunk = 512;
  const bar = progressBar("prefill", tokens);
  const t0 = performance.now();
  for (let done = 0; done < tokens; done += chunk) {
    const n = Math.min(chunk, tokens - done);
    for (let l = 0; l < layers; l++) {
      seq.append(l, randomRows(n * kvHeads * headDim, done + l), randomRows(n * kvHeads * headDim, done + l + 7));
      seq.attend(l, randomRows(n * queryHeads * headDim, done + l + 13));
    }
    bar.tick(n);
  }
  bar.done();
  const prefillMs = performance.now() - t0;
  const times: number[] = [];
  for (let s = 0; s < steps; s++) {
    const t = performance.now();
    for (let l = 0; l < layers; l++) {
      seq.append(l, randomRows(kvHeads * headDim, s + l), randomRows(kvHeads * headDim, s + l + 1));
      seq.attend(l, randomRows(queryHeads * headDim, s + l + 2));
    }
    times.push(performance.now() - t);
  }
  const u = cache.usage();
  io.out(`prefill: ${tokens} tokens in ${prefillMs.toFixed(0)} ms`);
  io.out(`KV memory: ${mib(u.bytesUsed)} in ${u.pagesUsed} pages of ${cache.config.pageSize} tokens (pool ${mib(u.bytesTotal)})`);
  io.out(`decode: ${median(times).toFixed(2)} ms/token (median of ${steps}, attention over ${layers} layers)`);
  return 0;
}
