// Expected Attention (Devoto et al., "Expected Attention", 2025; kvpress ExpectedAttentionPress):
// the statistics of the prompt's pre-RoPE queries, and the scorer's options.
import { invalid, InvalidArgumentError } from "./errors";
import { native } from "./native";
import { FLOAT32_MAX, scanValues } from "./finite";
import { isFloat32Array, knownOptions, positiveInteger, nonNegativeInteger } from "./validate";

/** Options of `new QueryStatistics`. */
export interface QueryStatisticsOptions {
  /** Layers of the model (as the cache's `layers`). */
  layers: number;
  /** Query heads per layer (as the cache's `queryHeads`). */
  queryHeads: number;
  /** Dimension of a head (as the cache's `headDim`). */
  headDim: number;
  /**
   * Leading positions of every layer left out of the statistics (their queries are often outliers;
   * kvpress skips its `n_sink` first positions). Default: 4.
   */
  skip?: number;
  /** Accumulate the covariance of the queries besides their mean (kvpress `use_covariance`). Default: true. */
  covariance?: boolean;
}

/**
 * Mean and covariance of the pre-RoPE queries of every (layer, query head), accumulated over the
 * prompt's positions: what the "expected-attention" scorer predicts future queries from. Feed it
 * each layer's queries before RoPE is applied, in position order, during prefill; positions are
 * counted per layer across add() calls, and the first `skip` of them are left out. The mean and the
 * centred sums of products are kept in float64 and updated a block of 256 rows at a time (each
 * block centred on its own mean, its products in the native SIMD kernels in float32, merged by
 * Chan, Golub and LeVeque's update), so neither a large common offset nor an outlying row (a BOS
 * query with skip 0) makes the covariance cancel.
 */
export class QueryStatistics {
  readonly layers: number;
  readonly queryHeads: number;
  readonly headDim: number;
  readonly skip: number;
  readonly covariance: boolean;
  #positions: number[];
  #rows: number[];
  // Every head's running mean, [queryHeads, headDim].
  #mean: Float64Array[];
  // Every head's sum of (q - mean)(q - mean)^T, [queryHeads, headDim, headDim].
  #m2: Float64Array[];

  constructor(options: QueryStatisticsOptions) {
    if (options === null || typeof options !== "object") throw invalid("options", "an options object", options);
    knownOptions("options", options, ["layers", "queryHeads", "headDim", "skip", "covariance"]);
    this.layers = positiveInteger("layers", options.layers, 4096);
    this.queryHeads = positiveInteger("queryHeads", options.queryHeads, 4096);
    this.headDim = positiveInteger("headDim", options.headDim, 4096);
    if (this.headDim % 2 !== 0) throw invalid("headDim", "an even integer (rotate-half RoPE pairs dimensions)", this.headDim);
    this.skip = nonNegativeInteger("skip", options.skip ?? 4, 2 ** 31 - 1);
    const covariance = options.covariance ?? true;
    if (typeof covariance !== "boolean") throw invalid("covariance", "boolean", covariance);
    this.covariance = covariance;
    const row = this.queryHeads * this.headDim;
    this.#positions = new Array<number>(this.layers).fill(0);
    this.#rows = new Array<number>(this.layers).fill(0);
    this.#mean = Array.from({ length: this.layers }, () => new Float64Array(row));
    this.#m2 = Array.from({ length: this.layers }, () => new Float64Array(covariance ? row * this.headDim : 0));
  }

  /** @internal A copy with the statistics added so far (compressAsync reads its options at the call). */
  snapshot(): QueryStatistics {
    const copy = new QueryStatistics({ layers: this.layers, queryHeads: this.queryHeads, headDim: this.headDim, skip: this.skip, covariance: this.covariance });
    copy.#positions = this.#positions.slice();
    copy.#rows = this.#rows.slice();
    copy.#mean = this.#mean.map((a) => a.slice());
    copy.#m2 = this.#m2.map((a) => a.slice());
    return copy;
  }

  /**
   * Adds the next positions of `layer`: `queries` is [tokens, queryHeads, headDim] Float32Array,
   * before RoPE. Positions below `skip` (counted over every add() of the layer) are not
   * accumulated. Non-finite values are refused and change nothing. Returns this.
   */
  add(layer: number, queries: Float32Array): this {
    if (typeof layer !== "number" || !Number.isInteger(layer) || layer < 0 || layer >= this.layers)
      throw invalid("layer", `integer between 0 and ${this.layers - 1}`, layer);
    const Q = this.queryHeads, D = this.headDim, row = Q * D;
    if (!isFloat32Array(queries) || queries.length % row !== 0)
      throw invalid("queries", `a Float32Array whose length is a multiple of ${row} ([tokens, queryHeads, headDim])`, queries);
    const i = scanValues(queries, 0, Infinity)[0];
    if (i >= 0)
      throw new InvalidArgumentError(
        `Expected finite values in queries but queries[${i}] (token ${Math.floor(i / row)}, query head ${Math.floor(i / D) % Q}) is ${queries[i]}`,
      );
    const tokens = queries.length / row;
    const first = Math.min(tokens, Math.max(0, this.skip - this.#positions[layer]));
    // The counts move once the sums have (the addon checks its arguments before it adds anything).
    if (first < tokens)
      native().accumulateQueryStatistics(queries, first, tokens, Q, D, this.#rows[layer], this.#mean[layer], this.covariance ? this.#m2[layer] : null);
    this.#positions[layer] += tokens;
    this.#rows[layer] += tokens - first;
    return this;
  }

  /** Positions of `layer` given to add() so far, skipped ones included. */
  positions(layer: number): number {
    return this.#positions[this.#layer(layer)];
  }

  /** Positions of `layer` accumulated (those after `skip`). */
  rows(layer: number): number {
    return this.#rows[this.#layer(layer)];
  }

  /** Mean of the accumulated queries of `layer`, [queryHeads, headDim] (zeros before any row). */
  mean(layer: number): Float64Array {
    return this.#mean[this.#layer(layer)].slice();
  }

  /**
   * Covariance of the accumulated queries of `layer` per query head, divided by the number of rows
   * (as kvpress), [queryHeads, headDim, headDim]. Throws when the statistics were made without it.
   */
  covarianceOf(layer: number): Float64Array {
    const l = this.#layer(layer);
    if (!this.covariance) throw invalid("covariance", "statistics made with covariance: true", this.covariance);
    const Q = this.queryHeads, D = this.headDim, n = this.#rows[l], m2 = this.#m2[l];
    const out = new Float64Array(Q * D * D);
    if (n === 0) return out;
    // m2 is symmetric to the bit (each product is added to both of its cells).
    for (let i = 0; i < out.length; i++) out[i] = m2[i] / n;
    return out;
  }

  /** Forgets every accumulated position (to collect the statistics of a new prompt). */
  clear(): void {
    this.#positions.fill(0);
    this.#rows.fill(0);
    for (const a of [...this.#mean, ...this.#m2]) a.fill(0);
  }

  #layer(layer: number): number {
    if (typeof layer !== "number" || !Number.isInteger(layer) || layer < 0 || layer >= this.layers)
      throw invalid("layer", `integer between 0 and ${this.layers - 1}`, layer);
    return layer;
  }
}

/** RoPE of the model: its base, or its inverse frequencies (for scaled variants such as Llama 3's). */
export type RopeOptions = { theta: number } | { inverseFrequencies: Float32Array };

/** Options of the "expected-attention" scorer (kvpress ExpectedAttentionPress). */
export interface ExpectedAttentionOptions {
  /** The prompt's pre-RoPE query statistics, for the cache's layers, query heads and head dimension. */
  statistics: QueryStatistics;
  /**
   * The model's rotate-half RoPE: `{ theta }` (inverse frequency i = theta^(-2i/headDim)) or
   * `{ inverseFrequencies }` (Float32Array of headDim / 2, e.g. Llama 3's scaled ones).
   */
  rope: RopeOptions;
  /** The rotation is averaged over this many positions after the prompt (kvpress `n_future_positions`). Default: 512. */
  futurePositions?: number;
  /** Added to every score before the value norm multiplies it (kvpress `epsilon`). Default: 0.02. */
  epsilon?: number;
  /** Multiply the scores by the norm of each token's value, (score + epsilon) * ||v|| (kvpress `use_vnorm`). Default: true. */
  valueNorm?: boolean;
}

/** What the addon receives for the expected-attention scorer. */
export interface NativeExpectedAttention {
  mean: (Float64Array | undefined)[];
  covariance: (Float64Array | undefined)[];
  /** Per layer, the largest |value| of mean and covariance (0 where not given): checkFinite's bounds. */
  meanMax: number[];
  covarianceMax: number[];
  inverseFrequencies: Float64Array;
  futurePositions: number;
  useCovariance: boolean;
  valueNorm: boolean;
  epsilon: number;
}

const OPTION_NAMES = ["statistics", "rope", "futurePositions", "epsilon", "valueNorm"];

/**
 * The RoPE inverse frequencies of `rope` in float64: theta^(-2i/headDim), or the given ones
 * (a Float32Array, or a plain array as stored in JSON). `headDim` checks their count when known.
 */
export function inverseFrequencies(rope: unknown, headDim: number | undefined, name = "expectedAttention.rope"): Float64Array {
  if (rope === null || typeof rope !== "object") throw invalid(name, "{ theta } or { inverseFrequencies }", rope);
  knownOptions(name, rope, ["theta", "inverseFrequencies"]);
  const r = rope as { theta?: unknown; inverseFrequencies?: unknown };
  if ((r.theta === undefined) === (r.inverseFrequencies === undefined))
    throw invalid(name, "exactly one of theta and inverseFrequencies", rope);
  if (r.theta !== undefined) {
    if (typeof r.theta !== "number" || !Number.isFinite(r.theta) || r.theta <= 1)
      throw invalid(`${name}.theta`, "a finite number above 1", r.theta);
    const theta = r.theta;
    if (headDim === undefined) return new Float64Array(0);
    return Float64Array.from({ length: headDim / 2 }, (_, i) => 1 / theta ** ((2 * i) / headDim));
  }
  const f = r.inverseFrequencies;
  const want = headDim === undefined ? "a Float32Array" : `a Float32Array of ${headDim / 2} values (headDim / 2)`;
  if (!(isFloat32Array(f) || (Array.isArray(f) && f.every((x) => typeof x === "number"))) || f.length === 0 || (headDim !== undefined && f.length !== headDim / 2))
    throw invalid(`${name}.inverseFrequencies`, want, f);
  const out = Float64Array.from(f, (x) => Math.fround(x));
  out.forEach((x, i) => {
    if (!Number.isFinite(x) || x < 0) throw invalid(`${name}.inverseFrequencies[${i}]`, "a finite, non-negative number", x);
  });
  return out;
}

/** The scorer's settings without the statistics: what a profile records (JSON-safe). */
export type ExpectedAttentionSettings = Omit<ExpectedAttentionOptions, "statistics" | "rope"> & {
  rope: { theta: number } | { inverseFrequencies: Float32Array | number[] };
};

/** @internal The most future positions Expected Attention averages over (`futurePositions`). */
export const MOST_FUTURE_POSITIONS = 1 << 20;

/**
 * Checks the settings (everything but the statistics) of `o`, named `name`; `headDim` checks the
 * length of rope.inverseFrequencies when known. Returns them with the defaults filled in.
 */
export function expectedSettings(
  o: unknown,
  name: string,
  headDim: number | undefined,
  allowed = OPTION_NAMES,
): { inverseFrequencies: Float64Array; futurePositions: number; epsilon: number; valueNorm: boolean } {
  if (o === null || typeof o !== "object") throw invalid(name, "an options object", o);
  knownOptions(name, o, allowed);
  const e = o as Partial<ExpectedAttentionOptions>;
  const frequencies = inverseFrequencies(e.rope, headDim, `${name}.rope`);
  const futurePositions = e.futurePositions ?? 512;
  if (typeof futurePositions !== "number" || !Number.isInteger(futurePositions) || futurePositions < 1 || futurePositions > MOST_FUTURE_POSITIONS)
    throw invalid(`${name}.futurePositions`, `integer between 1 and ${MOST_FUTURE_POSITIONS}`, futurePositions);
  const epsilon = e.epsilon ?? 0.02;
  // The scorer adds it in float32: past that range it would make every score infinite.
  if (typeof epsilon !== "number" || !(epsilon >= 0 && epsilon <= FLOAT32_MAX))
    throw invalid(`${name}.epsilon`, "a non-negative number within the float32 range", epsilon);
  const valueNorm = e.valueNorm ?? true;
  if (typeof valueNorm !== "boolean") throw invalid(`${name}.valueNorm`, "boolean", valueNorm);
  return { inverseFrequencies: frequencies, futurePositions, epsilon, valueNorm };
}

/** `settings` (from a profile or the profiler's options) made JSON-safe: inverse frequencies as a plain array. */
export function settingsForJson(settings: ExpectedAttentionSettings): ExpectedAttentionSettings {
  const rope = "inverseFrequencies" in settings.rope ? { inverseFrequencies: Array.from(settings.rope.inverseFrequencies) } : { ...settings.rope };
  return { ...settings, rope };
}

/** The scorer's options from stored settings and a prompt's statistics. */
export function withStatistics(settings: ExpectedAttentionSettings, statistics: QueryStatistics): ExpectedAttentionOptions {
  const rope = "inverseFrequencies" in settings.rope ? { inverseFrequencies: Float32Array.from(settings.rope.inverseFrequencies) } : { ...settings.rope };
  return { ...settings, rope, statistics };
}

/**
 * Validates the scorer's options against the cache's shape and turns them into what the addon
 * reads; `layers` are the layers that will be scored (each needs accumulated rows).
 */
export function nativeExpectedAttention(
  o: unknown,
  shape: { layers: number; queryHeads: number; headDim: number },
  layers: readonly number[],
): NativeExpectedAttention {
  const name = "expectedAttention";
  if (o === undefined)
    throw invalid(name, '{ statistics, rope } (scorer "expected-attention" needs the prompt\'s query statistics)', o);
  const settings = expectedSettings(o, name, shape.headDim);
  const stats = (o as ExpectedAttentionOptions).statistics;
  if (!(stats instanceof QueryStatistics)) throw invalid(`${name}.statistics`, "a QueryStatistics", stats);
  if (stats.layers !== shape.layers || stats.queryHeads !== shape.queryHeads || stats.headDim !== shape.headDim)
    throw new InvalidArgumentError(
      `Expected ${name}.statistics for ${shape.layers} layers x ${shape.queryHeads} query heads x headDim ${shape.headDim} ` +
        `but received statistics for ${stats.layers} x ${stats.queryHeads} x ${stats.headDim}`,
    );
  const mean: (Float64Array | undefined)[] = new Array(shape.layers).fill(undefined);
  const covariance: (Float64Array | undefined)[] = new Array(shape.layers).fill(undefined);
  const meanMax = new Array<number>(shape.layers).fill(0), covarianceMax = new Array<number>(shape.layers).fill(0);
  for (const l of layers) {
    if (stats.rows(l) === 0)
      throw new InvalidArgumentError(
        `Expected rows for layer ${l} in ${name}.statistics but it has none (${stats.positions(l)} positions added, skip ${stats.skip}): ` +
          "add the layer's pre-RoPE prompt queries",
      );
    mean[l] = stats.mean(l);
    if (stats.covariance) covariance[l] = stats.covarianceOf(l);
    // The scorer works in float32 on the statistics rotated to the future positions, which the
    // rotation can grow by up to √2 (a mean pair) and 2 (a covariance block): past that they
    // would turn into infinities.
    [meanMax[l], covarianceMax[l]] = [mean[l], covariance[l]].map((a, i) => {
      let m = 0;
      if (a) for (const v of a) m = Math.max(m, Math.abs(v));
      if (!(m * (i === 0 ? Math.SQRT2 : 2) <= FLOAT32_MAX))
        throw new InvalidArgumentError(
          `Expected query statistics within the float32 range once rotated (|mean| × √2 and |covariance| × 2 at most 3.4e38) for layer ${l} in ${name}.statistics but they overflow it`,
        );
      return m;
    });
  }
  return { mean, covariance, meanMax, covarianceMax, useCovariance: stats.covariance, ...settings };
}
