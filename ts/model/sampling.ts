// Choosing the next token from logits: greedy, or temperature / top-k sampling with a seeded RNG.
import { InvalidArgumentError, invalid, shown } from "../errors";
import { rng } from "../random";
import { integerInRange, knownOptions } from "../validate";

/** How the next token is chosen. */
export interface SamplingOptions {
  /** Softmax temperature; 0 means greedy (argmax). Default: 0. */
  temperature?: number;
  /** Sample among the k most likely tokens only; 0 means all. Default: 0. */
  topK?: number;
  /** Seed of the sampling RNG (unused when greedy), an integer from 0 to 2^32-1. Default: 0. */
  seed?: number;
}

/** The option names Sampler takes. */
export const SAMPLING_OPTION_NAMES = ["temperature", "topK", "seed"] as const;

/** Index of the largest of `n` values from `offset` (the first one on ties; NaN never wins). */
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

/**
 * Picks tokens from logits rows; the same seed and logits give the same tokens.
 *
 * Non-finite logits: a row holding NaN (or a value that is not a number) is refused with
 * InvalidArgumentError naming its index, greedy or not. A +Infinity logit outweighs every finite
 * one: greedy takes the first +Infinity, sampling draws uniformly among the +Infinity candidates
 * (after top-k, which keeps the lowest ids among equal logits). A -Infinity logit is never chosen
 * unless every candidate is -Infinity, when they count as tied (greedy: the first; sampling:
 * uniformly among them).
 */
export class Sampler {
  readonly temperature: number;
  readonly topK: number;
  readonly #random: () => number;

  /**
   * @throws InvalidArgumentError for an unknown option name, a temperature that is not a finite
   * number >= 0, a topK that is not a non-negative integer, or a seed that is not an integer from 0
   * to 2^32-1.
   */
  constructor(options: SamplingOptions = {}) {
    if (options === null || typeof options !== "object") throw invalid("options", "an options object", options);
    knownOptions("options", options, SAMPLING_OPTION_NAMES);
    this.temperature = options.temperature ?? 0;
    this.topK = options.topK ?? 0;
    if (!(this.temperature >= 0) || !Number.isFinite(this.temperature))
      throw new InvalidArgumentError(`Expected a finite number >= 0 for temperature but received ${shown(options.temperature)}`);
    if (!Number.isInteger(this.topK) || this.topK < 0)
      throw new InvalidArgumentError(`Expected a non-negative integer for topK but received ${shown(options.topK)}`);
    // The RNG keeps 32 bits of the seed: anything else would silently alias another seed.
    this.#random = seededRandom(integerInRange("seed", options.seed ?? 0, 0, 0xffffffff));
  }

  /**
   * The next token from a row of logits (`vocab` values from `offset`), as an index into the row.
   * @throws InvalidArgumentError when the row does not fit in `logits` or holds NaN.
   */
  next(logits: ArrayLike<number>, offset = 0, vocab = logits?.length - offset): number {
    if (logits === null || typeof logits !== "object" || typeof logits.length !== "number" || logits.length === 0)
      throw invalid("logits", "a non-empty array or typed array of logits", logits);
    integerInRange("offset", offset, 0, logits.length - 1);
    integerInRange("vocab", vocab, 1, logits.length - offset);
    for (let i = 0; i < vocab; i++) {
      const v = logits[offset + i];
      if (typeof v !== "number" || Number.isNaN(v)) throw invalid(`logits[${offset + i}]`, "a number that is not NaN", v);
    }
    if (this.temperature === 0) return argmax(logits, offset, vocab);
    let ids = Array.from({ length: vocab }, (_, i) => i);
    if (this.topK > 0 && this.topK < vocab) {
      // Equal logits (two infinities included, whose difference is NaN) keep the lower id first.
      ids.sort((a, b) => logits[offset + b] - logits[offset + a] || a - b);
      ids = ids.slice(0, this.topK);
    }
    let max = -Infinity;
    for (const i of ids) max = Math.max(max, logits[offset + i]);
    if (!Number.isFinite(max)) {
      // The softmax of +Infinity (or of nothing but -Infinity) is NaN: draw among the tied maxima.
      const tied = ids.filter((i) => logits[offset + i] === max);
      return tied[Math.floor(this.#random() * tied.length)];
    }
    const weights = ids.map((i) => Math.exp((logits[offset + i] - max) / this.temperature));
    let u = this.#random() * weights.reduce((a, b) => a + b, 0);
    let last = ids[0];
    for (let k = 0; k < ids.length; k++) {
      if (weights[k] === 0) continue;
      last = ids[k];
      u -= weights[k];
      if (u < 0) return ids[k];
    }
    // Rounding can leave u at or above 0 after the last weight: that is the last possible token.
    return last;
  }
}
