// `lukv demo`: a paged per-head cache on built-in random data — prefill, then decode — with the
// memory it holds and the time per decode step.
import { KVCache } from "../cache";
import { backends } from "../backends";
import { CliIO, parseArgs, progressBar } from "./io";

function randomRows(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 4294967296 - 0.5) * 2;
  }
  return out;
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

export async function demoCommand(argv: string[], io: CliIO): Promise<number> {
  const { options } = parseArgs(argv);
  const tokens = Number(options.get("tokens") ?? 2048);
  const steps = Number(options.get("steps") ?? 16);
  if (!Number.isInteger(tokens) || tokens < 1 || !Number.isInteger(steps) || steps < 1) {
    io.err("usage: lukv demo [--tokens N] [--steps N]");
    return 2;
  }
  const layers = 8, kvHeads = 8, queryHeads = 32, headDim = 128;
  const b = backends();
  io.out(`lukv demo: ${layers} layers x ${kvHeads} KV heads (${queryHeads} query heads), headDim ${headDim}, f16, random data`);
  io.out(`CPU kernels: ${b.cpu.simd}, ${b.cpu.threads} threads; CUDA: ${b.cuda.usable ? "usable" : b.cuda.error}`);
  using cache = new KVCache({ layers, kvHeads, queryHeads, headDim, dtype: "f16", maxTokens: layers * kvHeads * (tokens + steps) });
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
  times.sort((a, b) => a - b);
  const u = cache.usage();
  io.out(`prefill: ${tokens} tokens in ${prefillMs.toFixed(0)} ms`);
  io.out(`KV memory: ${mib(u.bytesUsed)} in ${u.pagesUsed} pages of ${cache.config.pageSize} tokens (pool ${mib(u.bytesTotal)})`);
  io.out(`decode: ${times[times.length >> 1].toFixed(2)} ms/token (median of ${steps}, attention over ${layers} layers)`);
  return 0;
}
