// Builds random sequences in a cache together with what a reference needs to check them.
import { KVCache, Sequence, roundTo, DType } from "../../ts";
import { randn } from "./random";
import { RefHead } from "./reference";

export type { RefHead };

/** Appends `tokens` random rows to every KV head of `layer`; returns the rows as the cache stores them. */
export function appendRandom(
  seq: Sequence,
  layer: number,
  tokens: number,
  r: () => number,
): { keys: Float32Array; values: Float32Array } {
  const { kvHeads, headDim, dtype } = seq.cache.config;
  const keys = randn(r, tokens * kvHeads * headDim);
  const values = randn(r, tokens * kvHeads * headDim);
  seq.append(layer, keys, values);
  return { keys: roundTo(keys, dtype as DType), values: roundTo(values, dtype as DType) };
}

/** A new sequence of `cache` with `tokens` random rows appended to every layer (appendRandom, layer by layer). */
export function filledSequence(cache: KVCache, tokens: number, r: () => number): Sequence {
  const seq = cache.createSequence();
  for (let l = 0; l < cache.config.layers; l++) appendRandom(seq, l, tokens, r);
  return seq;
}

/** The kept rows of every KV head of `layer`, read back through the public API. */
export function headsOf(seq: Sequence, layer: number): RefHead[] {
  const heads: RefHead[] = [];
  for (let h = 0; h < seq.cache.config.kvHeads; h++)
    heads.push({ keys: seq.keys(layer, h), values: seq.values(layer, h), positions: seq.positions(layer, h) });
  return heads;
}

export function lastPositions(seq: Sequence, layer: number, tokens: number): number[] {
  const end = seq.appended(layer);
  return Array.from({ length: tokens }, (_, i) => end - tokens + i);
}

export function withCache<T>(opts: ConstructorParameters<typeof KVCache>[0], fn: (c: KVCache) => T): T {
  const cache = new KVCache(opts);
  try {
    return fn(cache);
  } finally {
    cache.dispose();
  }
}
