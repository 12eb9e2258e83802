// Options of compress() and scores(), their defaults and validation, and what the addon receives.
import { invalid, InvalidArgumentError } from "./errors";
import { integerInRange, isFloat32Array, isInt32Array, nonNegativeInteger, oneOf, ownRows } from "./validate";
import { pruneRatiosAt, type Profile } from "./profile";
import { checkScale } from "./finite";
import { nativeExpectedAttention, type ExpectedAttentionOptions, type NativeExpectedAttention, type RopeOptions } from "./expected-attention";

/** How tokens are ranked inside a head (higher score = keep). */
export type ScorerName = "snapkv" | "keydiff" | "knorm" | "tova" | "h2o" | "streaming" | "random" | "expected-attention";
/** How many tokens each (layer, KV head) keeps. */
export type AllocationName = "uniform" | "pyramidkv" | "adakv" | "lukv";
export type PoolingName = "max" | "avg" | "none";

export const SCORERS: readonly ScorerName[] = ["snapkv", "keydiff", "knorm", "tova", "h2o", "streaming", "random", "expected-attention"];
export const ALLOCATIONS: readonly AllocationName[] = ["uniform", "pyramidkv", "adakv", "lukv"];
export const POOLINGS: readonly PoolingName[] = ["none", "max", "avg"];
/** Scorers whose scores are attention weights, which valueNorm can weight. */
const VALUE_NORM_SCORERS: readonly ScorerName[] = ["snapkv", "tova", "h2o"];
/** The scorers whose per-query-head scores `groupReduce` combines. */
const GROUP_SCORERS: readonly ScorerName[] = ["snapkv", "tova"];
/** The scorers `pooling` applies to: per query head for snapkv and tova, per token score for the others. */
export const POOLING_SCORERS: readonly ScorerName[] = ["snapkv", "tova", "keydiff", "knorm", "h2o", "expected-attention"];

/** The pooling `scorer` gets when its options name none: SnapKV's max over 7 tokens, none for the others. */
export function defaultPooling(scorer: ScorerName): { pooling: PoolingName; kernel: number } {
  return { pooling: scorer === "snapkv" ? "max" : "none", kernel: 7 };
}

/** The option names scores() accepts (with the scorer as its own argument, all but "scorer"). */
export const SCORE_OPTION_NAMES = ["scorer", "window", "pooling", "kernel", "groupReduce", "seed", "scale", "observationQueries", "valueNorm", "sink", "expectedAttention"] as const;
/** The option names compress() accepts. */
export const COMPRESS_OPTION_NAMES = [...SCORE_OPTION_NAMES, "ratio", "budget", "allocation", "profile", "budgets", "alpha", "beta"] as const;

/** Options of the scorers, shared by compress() and scores(). */
export interface ScoreOptions {
  /** Token scorer. Default: "snapkv". */
  scorer?: ScorerName;
  /**
   * Recent tokens always kept, and the number of last queries SnapKV observes. Default: 32.
   * Must not exceed the positions appended to any layer that holds tokens.
   */
  window?: number;
  /**
   * Pooling of the scores along the sequence, so that a token is kept with its neighbours: "max"
   * (the largest score within kernel / 2 tokens on either side) or "avg". Default: "max" for snapkv,
   * "none" otherwise.
   * - snapkv and tova pool each query head's attention over the tokens before the recent window
   *   (the last `window` tokens the head holds), before the GQA combination; "avg" is the mean over the full kernel, zero padded at
   *   the ends (torch's avg_pool1d, kvpress's SnapKVPress).
   * - keydiff, knorm, h2o and expected-attention pool their final scores (h2o's before the
   *   `valueNorm` weighting, expected-attention's after its own (score + ε)·‖v‖) over
   *   the tokens between the first `sink` and the last `window`, the ones eviction chooses among;
   *   "avg" is the mean over the neighbours in that range (these scores may be negative, so there
   *   is no zero padding).
   * - streaming and random refuse a pooling other than "none" (their scores are not about content).
   */
  pooling?: PoolingName;
  /** Pooling kernel size (odd). Default: 7. */
  kernel?: number;
  /**
   * Combination of the per-query-head scores of snapkv and tova: "mean" or "max" over the GQA group,
   * or "layer": the mean over every query head of the layer, the same score for all its KV heads
   * (TOVA's definition and kvpress's TOVAPress). Default: "mean". Any other scorer refuses "max" and "layer".
   */
  groupReduce?: "mean" | "max" | "layer";
  /** Seed of the "random" scorer. Default: 0. */
  seed?: number;
  /** Softmax scale of the attention-based scorers, a finite float32. Default: 1 / sqrt(headDim). */
  scale?: number;
  /**
   * Observation queries per layer ([rows, queryHeads, headDim] each, the last `rows` positions),
   * instead of the ones the sequence remembers. Default: the remembered ones.
   */
  observationQueries?: (Float32Array | undefined)[];
  /**
   * Multiply every score by its token's value norm ‖v‖: the attention a token draws times the size
   * of what it adds to the output. Only for the scorers whose scores are attention weights
   * ("snapkv", "tova", "h2o"). Default: false.
   */
  valueNorm?: boolean;
  /**
   * First tokens of every head always kept (attention sinks); "expected-attention" also leaves them
   * out of its softmax and gives them the head's highest score. Default: 4.
   */
  sink?: number;
  /** The "expected-attention" scorer's query statistics and settings (required by that scorer, refused by the others). */
  expectedAttention?: ExpectedAttentionOptions;
}

/** Options of compress(). */
export interface CompressOptions extends ScoreOptions {
  /**
   * Fraction of the sequence's current tokens (over all heads) to remove, in [0, 1). Default: 0.
   * Every head keeps its sink and window whatever the allocation, so a ratio that would keep fewer
   * tokens than those keeps exactly those.
   */
  ratio?: number;
  /**
   * Instead of `ratio`: tokens to keep per (layer, KV head) on average, a positive integer, i.e.
   * budget x layers x kvHeads in all, split by the allocation; no head keeps more than it has (what
   * a short head cannot use goes to the others), and every head keeps its sink and window. A budget
   * at or above the current average keeps everything. Default: none.
   */
  budget?: number;
  /** How the kept total is split over heads. Default: "uniform" ("lukv" needs `profile`). */
  allocation?: AllocationName;
  /** The LU-KV profile for allocation "lukv" (refused beside another allocation: LU-KV would be off). */
  profile?: Profile;
  /** Explicit keep counts per (layer, KV head), Int32Array [layers * kvHeads]; they replace ratio, budget and allocation (refused beside them). */
  budgets?: Int32Array;
  /** Ada-KV: floor of each head, as a fraction of its proportional share of the layer budget. Default: 0.2. */
  alpha?: number;
  /** PyramidKV: the top layer keeps 1/beta of the average budget, the bottom one 2 - 1/beta of it. Default: 20. */
  beta?: number;
}

/** What compress() did. */
export interface CompressReport {
  /** Tokens kept per (layer, KV head), Int32Array [layers * kvHeads]. */
  kept: Int32Array;
  /** Tokens in the sequence before. */
  before: number;
  /** The requested total: round((1 - ratio) * before), or with `budgets` their sum. */
  target: number;
  /** Tokens kept in all. Equals target unless the always-kept tokens (sink, window, 1 per head) exceed it. */
  total: number;
  /**
   * Pages returned to the pool by this call: negative when it took more than it gave back (pages
   * shared with forks are copied before the kept rows are gathered into them).
   */
  pagesFreed: number;
  /** Wall time of the native pass, milliseconds. */
  ms: number;
}

/** What the addon receives (numbers and typed arrays only). */
export interface NativeCompressOptions {
  scorer: ScorerName;
  window: number;
  pooling: PoolingName;
  kernel: number;
  groupMax: number;
  groupLayer: number;
  valueNorm: number;
  seed: number;
  scale: number;
  observation?: (Float32Array | undefined)[];
  allocation: AllocationName | "explicit";
  ratio: number;
  budgets?: Int32Array;
  /** lukv: the profile's prune ratio per (layer, KV head) at `ratio`; the addon fits the budgets. */
  pruneRatios?: Float64Array;
  sink: number;
  alpha: number;
  beta: number;
  expected?: NativeExpectedAttention;
}

interface Shape {
  layers: number;
  kvHeads: number;
  queryHeads: number;
  headDim: number;
}

/**
 * `scoredLayers`: the layers that will be scored (the expected-attention statistics must cover
 * them); without it the expectedAttention option is left to the caller to check.
 */
export function nativeScoreOptions(o: ScoreOptions, shape: Shape, scoredLayers?: () => number[]): NativeCompressOptions {
  if (o === null || typeof o !== "object") throw invalid("options", "an options object", o);
  const scorer = oneOf("scorer", o.scorer ?? "snapkv", SCORERS);
  const window = nonNegativeInteger("window", o.window ?? 32, 2 ** 31 - 1);
  const defaults = defaultPooling(scorer);
  const pooling = oneOf("pooling", o.pooling ?? defaults.pooling, POOLINGS);
  if (pooling !== "none" && !POOLING_SCORERS.includes(scorer))
    throw invalid("pooling", `"none" for scorer "${scorer}" (its scores rank by position or at random; pooling applies to ${POOLING_SCORERS.join(", ")})`, pooling);
  const kernel = o.kernel ?? defaults.kernel;
  if (typeof kernel !== "number" || !Number.isInteger(kernel) || kernel < 1 || kernel % 2 === 0 || kernel > 1025)
    throw invalid("kernel", "odd integer between 1 and 1025", kernel);
  const groupReduce = oneOf("groupReduce", o.groupReduce ?? "mean", ["mean", "max", "layer"] as const);
  if (groupReduce !== "mean" && !GROUP_SCORERS.includes(scorer))
    throw invalid("groupReduce", `"mean" for scorer "${scorer}" (it combines the query heads' attention scores: ${GROUP_SCORERS.join(", ")})`, groupReduce);
  const valueNorm = o.valueNorm ?? false;
  if (typeof valueNorm !== "boolean") throw invalid("valueNorm", "a boolean", valueNorm);
  if (valueNorm && !VALUE_NORM_SCORERS.includes(scorer))
    throw invalid("valueNorm", `false for scorer "${scorer}" (it weights attention scores: ${VALUE_NORM_SCORERS.join(", ")})`, valueNorm);
  const seed = o.seed ?? 0;
  if (typeof seed !== "number" || !Number.isInteger(seed) || seed < 0 || seed > 0xffffffff)
    throw invalid("seed", "integer between 0 and 4294967295", seed);
  const scale = o.scale == null ? 1 / Math.sqrt(shape.headDim) : checkScale(o.scale);
  let observation: (Float32Array | undefined)[] | undefined;
  const given = o.observationQueries;
  if (given != null) {
    if (!Array.isArray(given) || given.length !== shape.layers)
      throw invalid("observationQueries", `an array of ${shape.layers} Float32Array (one per layer, or undefined)`, given);
    // Each element read once: the addon gets the arrays that were checked (a getter could return another).
    const queries: unknown[] = Array.from(given, ownRows);
    const row = shape.queryHeads * shape.headDim;
    queries.forEach((q, l) => {
      if (q === undefined) return;
      if (!isFloat32Array(q) || q.length === 0 || q.length % row !== 0)
        throw invalid(`observationQueries[${l}]`, `a non-empty Float32Array whose length is a multiple of ${row} ([rows, queryHeads, headDim])`, q);
    });
    observation = queries as (Float32Array | undefined)[];
  }
  const sink = nonNegativeInteger("sink", o.sink ?? 4, 2 ** 31 - 1);
  if (scorer !== "expected-attention" && o.expectedAttention != null)
    throw invalid("expectedAttention", `no value with scorer ${JSON.stringify(scorer)} (it configures "expected-attention")`, o.expectedAttention);
  const expected = scorer === "expected-attention" && scoredLayers ? nativeExpectedAttention(o.expectedAttention, shape, scoredLayers()) : undefined;
  return {
    scorer,
    window,
    pooling,
    kernel,
    groupMax: groupReduce === "max" ? 1 : 0,
    groupLayer: groupReduce === "layer" ? 1 : 0,
    valueNorm: valueNorm ? 1 : 0,
    seed,
    scale,
    observation,
    allocation: "uniform",
    ratio: 0,
    sink,
    alpha: 0.2,
    beta: 20,
    expected,
  };
}

/**
 * Validates compress() options; `lengths` (the sequence's per-head lengths) bound explicit budgets,
 * turn `budget` into a ratio and name the layers that are scored. Without it (an async call checked
 * at the call, before its turn) only what does not depend on the sequence is checked, and the result
 * is not for the addon.
 */
export function nativeCompressOptions(o: CompressOptions, shape: Shape, lengths: (() => Int32Array) | undefined): NativeCompressOptions {
  const n = nativeScoreOptions(o, shape, () => {
    if (!lengths) return [];
    const len = lengths(), held: number[] = [];
    for (let l = 0; l < shape.layers; l++) if (len.subarray(l * shape.kvHeads, (l + 1) * shape.kvHeads).some((x) => x > 0)) held.push(l);
    return held;
  });
  const alpha = o.alpha ?? 0.2;
  if (typeof alpha !== "number" || !(alpha >= 0 && alpha <= 1)) throw invalid("alpha", "a number between 0 and 1", alpha);
  n.alpha = alpha;
  const beta = o.beta ?? 20;
  if (typeof beta !== "number" || !Number.isFinite(beta) || beta < 1) throw invalid("beta", "a finite number of at least 1", beta);
  n.beta = beta;
  const heads = shape.layers * shape.kvHeads;
  // ratio, budget, allocation and profile are checked even when budgets override them: an invalid
  // value is a mistake either way.
  let ratio = o.ratio ?? 0;
  if (typeof ratio !== "number" || !(ratio >= 0 && ratio < 1)) throw invalid("ratio", "a number in [0, 1)", ratio);
  if (o.budget != null) {
    if (o.ratio != null) throw invalid("budget", "no ratio beside it (give ratio or budget)", o.budget);
    const budget = integerInRange("budget", o.budget, 1, 2 ** 31 - 1);
    const total = lengths && o.budgets == null ? lengths().reduce((a, b) => a + b, 0) : 0;
    const keep = Math.min(total, budget * heads);
    ratio = total > 0 ? 1 - keep / total : 0;
  }
  const allocation = oneOf("allocation", o.allocation ?? "uniform", ALLOCATIONS);
  const profile = o.profile ?? undefined; // null: none, as for the other options
  // Only "lukv" reads a profile: one given with another allocation (or none, "uniform") is most
  // likely an allocation left out, which would quietly turn LU-KV off.
  if (profile !== undefined && allocation !== "lukv")
    throw invalid("profile", `no profile beside allocation "${allocation}" (only allocation "lukv" reads one)`, profile);
  if (allocation === "lukv") {
    if (profile === undefined || typeof profile !== "object")
      throw invalid("profile", 'a Profile (allocation "lukv" needs one; see loadProfile)', o.profile);
    if (profile.layers !== shape.layers || profile.kvHeads !== shape.kvHeads)
      throw new InvalidArgumentError(
        `Expected a profile for ${shape.layers} layers x ${shape.kvHeads} KV heads for profile but received one for ${profile.layers} x ${profile.kvHeads}`,
      );
  }
  const budgets = ownRows(o.budgets); // read once: the addon gets the array that was checked
  if (budgets != null) {
    if (!isInt32Array(budgets) || budgets.length !== heads)
      throw invalid("budgets", `Int32Array of length ${heads} (layers * kvHeads)`, budgets);
    // They replace the three: one given beside them would be dropped without a word.
    for (const name of ["ratio", "budget", "allocation"] as const)
      if (o[name] != null) throw invalid("budgets", `no ${name} beside them (explicit budgets replace ratio, budget and allocation)`, budgets);
    const len = lengths?.();
    for (let i = 0; i < heads; i++) {
      const head = `budgets[${i}] (layer ${Math.floor(i / shape.kvHeads)}, head ${i % shape.kvHeads})`;
      if (len && (budgets[i] < 0 || budgets[i] > len[i]))
        throw new InvalidArgumentError(`Expected ${head} between 0 and the head's length ${len[i]} but received ${budgets[i]}`);
      if (budgets[i] < 0) throw new InvalidArgumentError(`Expected ${head} of at least 0 but received ${budgets[i]}`);
    }
    n.allocation = "explicit";
    n.budgets = budgets;
    return n;
  }
  n.ratio = ratio;
  if (allocation === "lukv") {
    // The addon turns these into keep counts by the rule of budgetsFromProfile, with every head's
    // sink and window as its floor; a ratio that would keep fewer tokens than the floors keeps
    // exactly those, as with the other allocations.
    n.allocation = "lukv";
    n.pruneRatios = pruneRatiosAt(profile!, ratio);
    return n;
  }
  n.allocation = allocation;
  return n;
}

/**
 * The options of an async compress as they are at the call: copies of the arrays, the profile's
 * table and the query statistics it reads, so that changing them after the call changes nothing.
 * Call it after nativeCompressOptions() accepted `o`.
 */
export function snapshotCompressOptions(o: CompressOptions): CompressOptions {
  // Every option read once, from the spread copy (a getter could return something else each time).
  const c: CompressOptions = { ...o };
  if (isInt32Array(c.budgets)) c.budgets = new Int32Array(c.budgets);
  if (Array.isArray(c.observationQueries)) c.observationQueries = c.observationQueries.map((q) => (q === undefined ? q : new Float32Array(q)));
  if (c.profile != null) c.profile = { ...c.profile, table: c.profile.table.slice() };
  const ea = c.expectedAttention;
  if (ea != null) {
    const rope = ea.rope as { theta?: number; inverseFrequencies?: Float32Array | number[] };
    const frequencies = rope.inverseFrequencies;
    c.expectedAttention = {
      ...ea,
      statistics: ea.statistics.snapshot(),
      rope: (frequencies === undefined ? { ...rope } : { ...rope, inverseFrequencies: frequencies.slice() }) as RopeOptions,
    };
  }
  return c;
}
