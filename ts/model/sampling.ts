// Choosing the next token from logits: greedy, or temperature / top-k sampling with a seeded RNG.
import { rng } from "../random";

/** How the next token is chosen. */
export interface SamplingOptions {
  /** Softmax temperature; 0 means greedy (argmax). Default: 0. */
  temperature?: number;
  /** Sample among the k most likely tokens only; 0 means all. Default: 0. */
  topK?: number;
  /** Seed of the sampling RNG (unused when greedy). Default: 0. */
  seed?: number;
}

/** Index of the largest of `n` values from `offset` (the first one on ties). */
export function argmax(logits: ArrayLike<number>, offset = 0, n = logits.length - offset): number {
  let best = 0;
  let value = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = logits[offset + i];
    if (v > value) {
      value = v;
      best = i;
    }
  }
  return best;
}

/** A small seeded generator of uniform numbers in [0, 1) (the library's one, see ../random). */
export const seededRandom: (seed: number) => () => number = rng;

/** Picks tokens from logits rows; the same seed and logits give the same tokens. */
export class Sampler {
  readonly temperature: number;
  readonly topK: number;
  readonly #random: () => number;

  constructor(options: SamplingOptions = {}) {
    this.temperature = options.temperature ?? 0;
    this.topK = options.topK ?? 0;
    if (!(this.temperature >= 0) || !Number.isFinite(this.temperature))
      throw new RangeError(`Expected a finite number >= 0 for temperature but received ${options.temperature}`);
    if (!Number.isInteger(this.topK) || this.topK < 0)
      throw new RangeError(`Expected a non-negative integer for topK but received ${options.topK}`);
    this.#random = seededRandom(options.seed ?? 0);
  }

  /** The next token from a row of logits (`vocab` values from `offset`). */
  next(logits: ArrayLike<number>, offset = 0, vocab = logits.length - offset): number {
    if (this.temperature === 0) return argmax(logits, offset, vocab);
    let ids = Array.from({ length: vocab }, (_, i) => i);
    if (this.topK > 0 && this.topK < vocab) {
      ids.sort((a, b) => logits[offset + b] - logits[offset + a] || a - b);
      ids = ids.slice(0, this.topK);
    }
    let max = -Infinity;
    for (const i of ids) max = Math.max(max, logits[offset + i]);
    const weights = ids.map((i) => Math.exp((logits[offset + i] - max) / this.temperature));
    let u = this.#random() * weights.reduce((a, b) => a + b, 0);
    for (let k = 0; k < ids.length; k++) {
      u -= weights[k];
      if (u < 0) return ids[k];
    }
    return ids[ids.length - 1];
  }
}
