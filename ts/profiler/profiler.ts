// The offline profiler: LU-KV's calibration protocol, from (scores, oracle) samples to a Profile.
import { types } from "node:util";
import { Sequence, type OracleOptions } from "../cache";
import { nativeScoreOptions, SCORERS, type ScoreOptions, type ScorerName } from "../compress";
import { BadProfileError, InvalidArgumentError, invalid, quoted } from "../errors";
import { createProfile, type Profile, type ProfileMeta } from "../profile/profile";
import { knownOptions, nonNegativeInteger, oneOf, positiveInteger } from "../validate";
import { lengthOf } from "../typed";
import { expectedSettings, settingsForJson, withStatistics, type ExpectedAttentionSettings, type QueryStatistics } from "../expected-attention";
import { analyzeSample, type ProfilerScope, type SampleConfig } from "./sample";
import { MAX_PROFILE_CELLS, openSamples, writeSamples, type StoredOptions, type StoredSample } from "./store";

/**
 * Scorer options the profiler passes to seq.scores(); `window` and `sink` are the profiler's own
 * options. For "expected-attention", `expectedAttention` holds its settings without the statistics
 * (each calibration prompt brings its own, see {@link Profiler.recordOracle}).
 */
export type ProfilerScorerOptions = Pick<ScoreOptions, "pooling" | "kernel" | "groupReduce" | "seed" | "scale" | "valueNorm"> & {
  expectedAttention?: ExpectedAttentionSettings;
};

const SCORER_OPTION_KEYS = ["pooling", "kernel", "groupReduce", "seed", "scale", "valueNorm", "expectedAttention"] as const;
const SCOPES: readonly ProfilerScope[] = ["global", "per-layer"];
/** Scorers whose ranking of the context moves once decoding appends tokens (KeyDiff's mean key, H2O's mass). */
const DRIFTING: readonly ScorerName[] = ["keydiff", "h2o", "expected-attention"];

/** Options of {@link Profiler}. */
export interface ProfilerOptions {
  /** Transformer layers of the model. Required. */
  layers: number;
  /** KV heads per layer. Required. */
  kvHeads: number;
  /** In-head scorer π whose ranking the profile is calibrated for (the one compress() will use). Default "snapkv". */
  scorer?: ScorerName;
  /** The scorer's options, as for compress(): pooling, kernel, groupReduce, seed, scale, valueNorm. Default {} (compress()'s defaults). */
  scorerOptions?: ProfilerScorerOptions;
  /** First tokens of every head that are never evicted (attention sinks). Default 4. */
  sink?: number;
  /** Last context tokens of every head that are never evicted, and SnapKV's observation queries. Default 32. */
  window?: number;
  /** Rows of the profile; row i is compression ratio (i + 1) / (grid + 1). Default 99 (1%..99%, the LU-KV / kvpress table). */
  grid?: number;
  /** "global": one budget over every head (LU-KV); "per-layer": each layer evicts the ratio on its own. Default "global". */
  scope?: ProfilerScope;
  /** Model name written to the profile's meta.model. Default none. */
  model?: string;
  /** Where the calibration contexts came from, written to meta.calibration.dataset. Default none. */
  dataset?: string;
  /** Keep every sample's scores and oracle so that save() can write them; false keeps only running sums. Default true. */
  keepSamples?: boolean;
}

/** Per-head values over the context tokens of one head, in position order. */
export type HeadValues = Float32Array | Float64Array | readonly number[];

/** One (context, query) pair; `x[layer][head]` holds one value per context token of that head. */
export interface ProfilerSample {
  /** The scorer's scores (higher = keep), as seq.scores() returns them. NaN ranks lowest, as in compress(). */
  scores: readonly (readonly HeadValues[])[];
  /** The oracle importance of the same tokens (finite, non-negative), as seq.oracle() returns it. */
  oracle: readonly (readonly HeadValues[])[];
  /** Decode steps whose attention made the oracle, for the profile's metadata. Default unknown. */
  decodeSteps?: number;
}

/** Options of {@link Profiler.addSequence}. */
export interface AddSequenceOptions {
  /**
   * Decode steps whose attention made the oracle, for the metadata. Default: the positions appended
   * to layer 0 since the context (each decode step appends one).
   */
  decodeSteps?: number;
}

/** Profiler options that {@link Profiler.load} may change: they do not change what a sample holds. */
export type ProfilerLoadOverrides = Pick<ProfilerOptions, "grid" | "scope" | "model" | "dataset" | "keepSamples">;

/**
 * How well LU-KV's assumptions held on the calibration data. Per-head arrays are layer-major
 * (index layer × kvHeads + head); every number is a mean over the samples.
 *
 * Notation, per sample and head: T tokens, mass M = Σ of the oracle over all T; E = tokens the head
 * may lose (T minus its sink, window and 1% floor); C_π(n) = oracle mass of the n tokens the scorer
 * evicts first (lowest score first), n = 0..E; hull(n) = the lower convex hull of C_π on 0..E;
 * C_oracle(n) = mass of the n smallest oracle values among the same evictable tokens.
 */
export interface ProfileReport {
  /** Samples the means are over. */
  samples: number;
  layers: number;
  kvHeads: number;
  /** Rows of `loss` and `uniformLoss`; row i is compression ratio (i + 1) / (grid + 1). */
  grid: number;
  scope: ProfilerScope;
  /**
   * max over n = 0..E of (C_π(n) − hull(n)) / M: how far the head's true loss rises above the
   * convex relaxation the solver optimises (0 when C_π is convex, e.g. when π ranks as the oracle).
   * The solver's answer is within this of the optimum for the head.
   */
  hullGap: Float64Array;
  /**
   * mean over n = 1..E of (C_π(n) − C_oracle(n)) / M: the share of the head's oracle mass the
   * scorer's order loses against evicting by the oracle itself, averaged over eviction counts
   * (0 for a perfect scorer; 0 when E = 0 or M = 0).
   */
  optimalityGap: Float64Array;
  /** Per grid row: Σ_h C_π,h(n_h) / Σ_h M_h for each sample's own solution n — the oracle mass LU-KV evicts. */
  loss: Float64Array;
  /** Per grid row: the same when every head evicts min(E_h, round(ρ × T_h)) tokens (uniform allocation). */
  uniformLoss: Float64Array;
}

interface Captured {
  scores: Float32Array[][];
  appended: number;
}

function plainObject(x: unknown): x is Record<string, unknown> {
  return x !== null && typeof x === "object" && !Array.isArray(x) && !ArrayBuffer.isView(x);
}

/**
 * LU-KV's offline profiler. Feed it (scores, oracle) samples — one per calibration (context,
 * query) pair, straight from a sequence with {@link addSequence} or as arrays with
 * {@link addSample} — then {@link build} a {@link Profile} for compress({ allocation: "lukv" }).
 *
 * Per sample and head, tokens are evicted in the scorer's order (lowest score first; among equal
 * scores the later position first, as compress() keeps the earlier), never the first `sink` or
 * last `window` context tokens, and never below ceil(1%) of the head. The head's cumulative
 * eviction loss of the oracle is replaced by its lower convex hull, and the budget problem is
 * solved at every grid ratio ρ_i = (i + 1) / (grid + 1): evict Σ T − round((1 − ρ_i) × Σ T) tokens,
 * the complement of what compress() keeps at that ratio (capped at what the heads may lose), over all heads, or per layer, at least total hull loss. The profile is
 * each head's evicted / T, averaged over samples.
 */
export class Profiler {
  /** The resolved options, defaults filled in (see {@link ProfilerOptions}). */
  readonly layers: number;
  /** KV heads per layer. */
  readonly kvHeads: number;
  /** The in-head scorer π. */
  readonly scorer: ScorerName;
  /** The scorer's options as given. */
  readonly scorerOptions: Readonly<ProfilerScorerOptions>;
  /** Sink tokens never evicted. */
  readonly sink: number;
  /** Window tokens never evicted, and SnapKV's observation queries. */
  readonly window: number;
  /** Rows of the profile. */
  readonly grid: number;
  /** One budget over every head ("global") or one per layer. */
  readonly scope: ProfilerScope;
  /** Model name for the metadata, if given. */
  readonly model: string | undefined;
  /** Calibration data set for the metadata, if given. */
  readonly dataset: string | undefined;
  /** Whether samples are kept for save(). */
  readonly keepSamples: boolean;

  readonly #config: SampleConfig;
  readonly #samples: StoredSample[] = [];
  readonly #captured = new WeakMap<Sequence, Captured>();
  #count = 0;
  readonly #prune: Float64Array;
  readonly #hullGap: Float64Array;
  readonly #optimalityGap: Float64Array;
  readonly #loss: Float64Array;
  readonly #uniformLoss: Float64Array;
  readonly #contextLengths: number[] = [];
  readonly #decodeSteps: (number | undefined)[] = [];

  constructor(options: ProfilerOptions) {
    if (!plainObject(options)) throw invalid("options", "an options object", options);
    knownOptions("options", options, ["layers", "kvHeads", "scorer", "scorerOptions", "sink", "window", "grid", "scope", "model", "dataset", "keepSamples"]);
    this.layers = positiveInteger("layers", options.layers, 65536);
    this.kvHeads = positiveInteger("kvHeads", options.kvHeads, 65536);
    this.scorer = oneOf("scorer", options.scorer ?? "snapkv", SCORERS);
    const so = options.scorerOptions ?? {};
    if (!plainObject(so)) throw invalid("scorerOptions", "an object", so);
    for (const key of Object.keys(so)) {
      if (!(SCORER_OPTION_KEYS as readonly string[]).includes(key)) {
        const hint = key === "window" ? " (window is the profiler's own option)" : "";
        throw new InvalidArgumentError(
          `Expected only ${SCORER_OPTION_KEYS.join(", ")} in scorerOptions${hint} but received ${quoted(key)}`,
        );
      }
    }
    this.sink = nonNegativeInteger("sink", options.sink ?? 4, 2 ** 31 - 1);
    this.window = nonNegativeInteger("window", options.window ?? 32, 2 ** 31 - 1);
    // Same checks and messages as compress(); the shape only feeds defaults that are not kept.
    const { expectedAttention, ...generic } = so as ProfilerScorerOptions;
    nativeScoreOptions({ ...generic, scorer: this.scorer, window: this.window, sink: this.sink }, { layers: this.layers, kvHeads: this.kvHeads, queryHeads: this.kvHeads, headDim: 1 });
    if (this.scorer === "expected-attention") {
      const name = "scorerOptions.expectedAttention";
      if (expectedAttention === undefined) throw invalid(name, '{ rope, ... } (scorer "expected-attention" needs the model\'s RoPE)', expectedAttention);
      // Stored with the defaults filled in, so a profile's metadata says every setting it was built with.
      const { futurePositions, epsilon, valueNorm } = expectedSettings(expectedAttention, name, undefined, ["rope", "futurePositions", "epsilon", "valueNorm"]);
      const settings = settingsForJson({ rope: expectedAttention.rope, futurePositions, epsilon, valueNorm });
      this.scorerOptions = Object.freeze({ ...generic, expectedAttention: settings });
    } else {
      if (expectedAttention !== undefined) throw invalid("scorerOptions.expectedAttention", `no value with scorer ${JSON.stringify(this.scorer)}`, expectedAttention);
      this.scorerOptions = Object.freeze({ ...so });
    }
    this.grid = positiveInteger("grid", options.grid ?? 99, 100000);
    const cells = this.grid * this.layers * this.kvHeads;
    if (cells > MAX_PROFILE_CELLS)
      throw new InvalidArgumentError(
        `Expected layers × kvHeads × grid at most ${MAX_PROFILE_CELLS} (the profile's table) but received ${this.layers} × ${this.kvHeads} × ${this.grid} = ${cells}`,
      );
    this.scope = oneOf("scope", options.scope ?? "global", SCOPES);
    if (options.model !== undefined && typeof options.model !== "string") throw invalid("model", "a string", options.model);
    if (options.dataset !== undefined && typeof options.dataset !== "string") throw invalid("dataset", "a string", options.dataset);
    this.model = options.model;
    this.dataset = options.dataset;
    const keep = options.keepSamples ?? true;
    if (typeof keep !== "boolean") throw invalid("keepSamples", "a boolean", keep);
    this.keepSamples = keep;
    const H = this.layers * this.kvHeads;
    this.#config = { layers: this.layers, kvHeads: this.kvHeads, sink: this.sink, window: this.window, grid: this.grid, scope: this.scope };
    this.#prune = new Float64Array(this.grid * H);
    this.#hullGap = new Float64Array(H);
    this.#optimalityGap = new Float64Array(H);
    this.#loss = new Float64Array(this.grid);
    this.#uniformLoss = new Float64Array(this.grid);
  }

  /** Samples added so far. */
  get samples(): number {
    return this.#count;
  }

  /**
   * Adds one (context, query) pair. Values are copied (as float32); shapes and the oracle's values
   * are checked before anything is recorded.
   * @throws InvalidArgumentError naming the first bad entry.
   */
  addSample(sample: ProfilerSample): void {
    if (!plainObject(sample)) throw invalid("sample", "an object with scores and oracle", sample);
    const steps = sample.decodeSteps;
    const decodeSteps = steps === undefined ? undefined : nonNegativeInteger("decodeSteps", steps);
    this.#add(this.#flatten(sample.scores, sample.oracle), decodeSteps);
  }

  /**
   * Starts recording the oracle on `seq` — seq.recordOracle(options) — after keeping the scores
   * the scorer gives its context right now, which addSequence() then uses. Needed for scorers whose
   * ranking moves as decoding appends tokens ("keydiff", "h2o", "expected-attention", and "knorm" or
   * "tova" with pooling, which stops before the moving recent window); harmless for the others. `statistics`: the prompt's pre-RoPE query statistics, required by
   * "expected-attention" (e.g. collected by TinyLM.forward's `queryStatistics`).
   */
  recordOracle(seq: Sequence, options?: OracleOptions, statistics?: QueryStatistics): void {
    this.#checkSequence(seq);
    if (this.scorer === "expected-attention" && statistics === undefined)
      throw invalid("statistics", 'the prompt\'s QueryStatistics (scorer "expected-attention" ranks the context with them)', statistics);
    const scoreOptions = this.scoreOptions(statistics);
    const scores = Array.from({ length: this.layers }, (_, l) => seq.scores(l, this.scorer, scoreOptions));
    const appended = seq.appended(0);
    seq.recordOracle(options);
    this.#captured.set(seq, { scores, appended });
  }

  /**
   * Adds the sample a sequence recorded: call it after decoding the query with the oracle on
   * (seq.recordOracle() or {@link recordOracle}). The oracle covers the context as it was when
   * recording began; the scores are those seq.scores(layer, scorer, { window, ...scorerOptions })
   * gives those tokens — with the observation window frozen at recordOracle they rank the context
   * as compress() would have then. The sequence is left as it is (still recording).
   * @throws InvalidArgumentError when the sequence does not match the profiler or has no oracle.
   */
  addSequence(seq: Sequence, options: AddSequenceOptions = {}): void {
    this.#checkSequence(seq);
    if (!plainObject(options)) throw invalid("options", "an options object", options);
    knownOptions("options", options, ["decodeSteps"]);
    const given = options.decodeSteps === undefined ? undefined : nonNegativeInteger("decodeSteps", options.decodeSteps);
    const captured = this.#captured.get(seq);
    // knorm and tova pooled: their pooling stops at the last `window` tokens, which move as decoding appends.
    const pooledPerToken = (this.scorer === "knorm" || this.scorer === "tova") && (this.scorerOptions.pooling ?? "none") !== "none";
    if (captured === undefined && (DRIFTING.includes(this.scorer) || pooledPerToken)) {
      throw new InvalidArgumentError(
        `scorer "${this.scorer}"${pooledPerToken ? " with pooling" : ""} ranks the context differently once decoding appends tokens: start recording with profiler.recordOracle(seq, options) instead of seq.recordOracle(options), so the profiler keeps the scores of that moment`,
      );
    }
    const scores: Float32Array[][] = [];
    const oracle: Float32Array[][] = [];
    for (let l = 0; l < this.layers; l++) {
      const o = seq.oracle(l);
      const s = captured ? captured.scores[l] : seq.scores(l, this.scorer, this.scoreOptions());
      for (let h = 0; h < this.kvHeads; h++) {
        if (captured && s[h].length !== o[h].length) {
          throw new InvalidArgumentError(
            `Expected the oracle of layer ${l}, head ${h} to cover the ${s[h].length} tokens held at profiler.recordOracle() but it covers ${o[h].length}: recording was restarted since`,
          );
        }
        if (s[h].length < o[h].length) {
          throw new InvalidArgumentError(
            `Expected layer ${l}, head ${h} to still hold its ${o[h].length} context tokens but it holds ${s[h].length}: add the sequence before compressing it`,
          );
        }
        s[h] = s[h].subarray(0, o[h].length);
      }
      scores.push(s);
      oracle.push(o);
    }
    let decodeSteps = given;
    if (decodeSteps === undefined) {
      // The context ends where recording started (not at its last kept token: eviction before
      // recording may have removed the last ones).
      const from = captured ? captured.appended : seq.oracleFrom;
      if (from !== undefined) decodeSteps = seq.appended(0) - from;
    }
    this.#add(this.#flatten(scores, oracle), decodeSteps);
    this.#captured.delete(seq);
  }

  /**
   * The profile: table[i][layer][head] = the head's evicted / T at compression ratio
   * (i + 1) / (grid + 1), averaged over samples. meta holds the scorer and its options, sink,
   * window, grid, scope, the model and calibration facts (samples, each sample's context length —
   * its longest head — and the mean decode steps when every sample has them). No timestamp, so the
   * same samples give the same bytes.
   * @throws InvalidArgumentError when no sample was added.
   */
  build(): Profile {
    this.#needSamples("build");
    const n = this.#count;
    const table = this.#prune.map((x) => Math.min(1, x / n));
    const calibration: ProfileMeta["calibration"] = { samples: n, contextLengths: [...this.#contextLengths] };
    if (this.#decodeSteps.every((d) => d !== undefined)) {
      calibration.decodeSteps = Math.round(this.#decodeSteps.reduce((a: number, d) => a + (d as number), 0) / n);
    }
    if (this.dataset !== undefined) calibration.dataset = this.dataset;
    const meta: ProfileMeta = {};
    if (this.model !== undefined) meta.model = this.model;
    meta.scorer = this.scorer;
    if (Object.keys(this.scorerOptions).length > 0) meta.scorerOptions = { ...this.scorerOptions };
    meta.sink = this.sink;
    meta.window = this.window;
    meta.grid = this.grid;
    meta.scope = this.scope;
    meta.calibration = calibration;
    return createProfile({ table, grid: this.grid, layers: this.layers, kvHeads: this.kvHeads, meta });
  }

  /** The report on the samples so far; see {@link ProfileReport}. @throws InvalidArgumentError when no sample was added. */
  report(): ProfileReport {
    this.#needSamples("report");
    const n = this.#count;
    return {
      samples: n,
      layers: this.layers,
      kvHeads: this.kvHeads,
      grid: this.grid,
      scope: this.scope,
      hullGap: this.#hullGap.map((x) => x / n),
      optimalityGap: this.#optimalityGap.map((x) => x / n),
      loss: this.#loss.map((x) => x / n),
      uniformLoss: this.#uniformLoss.map((x) => x / n),
    };
  }

  /**
   * Writes the samples to directory `dir` (created if needed): `manifest.json` (the options and,
   * per sample, its file, per-head lengths and decode steps) and one `sample-NNNNNN.f32` per sample
   * — little-endian float32, every head's scores (layer-major, each head's tokens in position
   * order), then every head's oracle in the same order. Files of an earlier save into the same
   * directory that are no longer listed are removed. {@link Profiler.load} reads it back.
   * @throws InvalidArgumentError when the profiler was made with keepSamples: false.
   */
  save(dir: string): void {
    if (typeof dir !== "string" || dir.length === 0) throw invalid("dir", "a directory path", dir);
    if (!this.keepSamples) throw new InvalidArgumentError("save() needs the samples, but this profiler was made with keepSamples: false");
    const options: StoredOptions = {
      layers: this.layers,
      kvHeads: this.kvHeads,
      scorer: this.scorer,
      scorerOptions: { ...this.scorerOptions },
      sink: this.sink,
      window: this.window,
      grid: this.grid,
      scope: this.scope,
    };
    if (this.model !== undefined) options.model = this.model;
    if (this.dataset !== undefined) options.dataset = this.dataset;
    writeSamples(dir, options, this.#samples);
  }

  /**
   * A profiler holding the samples {@link save} wrote to `dir`, with its options, except those in
   * `overrides` (grid, scope, model, dataset, keepSamples).
   * @throws BadProfileError when the directory's content is malformed.
   */
  static load(dir: string, overrides: ProfilerLoadOverrides = {}): Profiler {
    if (typeof dir !== "string" || dir.length === 0) throw invalid("dir", "a directory path", dir);
    if (!plainObject(overrides)) throw invalid("overrides", "an object", overrides);
    for (const key of Object.keys(overrides)) {
      if (!["grid", "scope", "model", "dataset", "keepSamples"].includes(key)) {
        throw new InvalidArgumentError(`Expected only grid, scope, model, dataset, keepSamples in overrides but received ${quoted(key)}`);
      }
    }
    const saved = openSamples(dir);
    const options = saved.options;
    try {
      new Profiler(options);
    } catch (e) {
      if (e instanceof InvalidArgumentError) throw new BadProfileError(`${dir}: manifest options: ${e.message}`);
      throw e;
    }
    const given = Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined));
    const profiler = new Profiler({ ...options, ...given });
    for (let i = 0; i < saved.count; i++) {
      const s = saved.read(i);
      try {
        profiler.#checkFlat(s);
      } catch (e) {
        if (e instanceof InvalidArgumentError) throw new BadProfileError(`${dir}: sample ${i}: ${e.message}`);
        throw e;
      }
      profiler.#add(s, s.decodeSteps);
    }
    return profiler;
  }

  #needSamples(what: string): void {
    if (this.#count === 0) {
      throw new InvalidArgumentError(`${what}() needs at least one sample: call addSample() or addSequence() first`);
    }
  }

  /** What seq.scores() is given when this profiler ranks a context: the scorer's options, window and sink, and the prompt's statistics for expected-attention. */
  scoreOptions(statistics?: QueryStatistics): Omit<ScoreOptions, "scorer"> {
    const { expectedAttention, ...generic } = this.scorerOptions;
    const o: Omit<ScoreOptions, "scorer"> = { ...generic, window: this.window, sink: this.sink };
    if (expectedAttention && statistics) o.expectedAttention = withStatistics(expectedAttention, statistics);
    return o;
  }

  #checkSequence(seq: Sequence): void {
    if (!(seq instanceof Sequence)) throw invalid("seq", "a Sequence", seq);
    const { layers, kvHeads } = seq.cache.config;
    if (layers !== this.layers || kvHeads !== this.kvHeads) {
      throw new InvalidArgumentError(
        `Expected a sequence of ${this.layers} layers × ${this.kvHeads} KV heads (the profiler's) for seq but received one of ${layers} × ${kvHeads}`,
      );
    }
  }

  /**
   * Checks the nested per-layer, per-head arrays and copies them into one flat sample. Each row, head
   * and value is read once (a getter or a resize could change it between two reads).
   */
  #flatten(scores: unknown, oracle: unknown): StoredSample {
    const { layers, kvHeads } = this;
    const H = layers * kvHeads;
    const shape = `[${layers} layers][${kvHeads} KV heads]`;
    const rowsOf = (name: string, x: unknown): unknown[][] => {
      if (!Array.isArray(x) || x.length !== layers) throw invalid(name, `an array of ${layers} layers, each an array of ${kvHeads} heads (${shape})`, x);
      const rows: unknown[][] = [];
      for (let l = 0; l < layers; l++) {
        const row: unknown = x[l];
        if (!Array.isArray(row) || row.length !== kvHeads) throw invalid(`${name}[${l}]`, `an array of ${kvHeads} heads`, row);
        rows.push(row);
      }
      return rows;
    };
    const s = rowsOf("scores", scores);
    const o = rowsOf("oracle", oracle);
    const lengths = new Int32Array(H);
    const offsets = new Float64Array(H + 1);
    const sc: Float32Array[] = [], oc: Float32Array[] = [];
    for (let l = 0; l < layers; l++) {
      for (let h = 0; h < kvHeads; h++) {
        const i = l * kvHeads + h;
        const at = `[${l}][${h}]`;
        const sv = s[l][h];
        if (!isHeadValues(sv)) throw invalid(`scores${at}`, "a Float32Array, Float64Array or array of numbers (one per context token)", sv);
        const sCopy = copyValues(sv, `scores${at}`);
        if (sCopy.length === 0) throw invalid(`scores${at}`, "at least one context token", sv);
        const ov = o[l][h];
        const oCopy = isHeadValues(ov) ? copyValues(ov, `oracle${at}`) : undefined;
        if (oCopy === undefined || oCopy.length !== sCopy.length) {
          throw invalid(`oracle${at}`, `${sCopy.length} values (one per context token, as scores${at} has)`, ov);
        }
        sc.push(sCopy);
        oc.push(oCopy);
        lengths[i] = sCopy.length;
        offsets[i + 1] = offsets[i] + sCopy.length;
      }
    }
    const total = offsets[H];
    const flat: StoredSample = { lengths, offsets, scores: new Float32Array(total), oracle: new Float32Array(total) };
    for (let i = 0; i < H; i++) {
      flat.scores.set(sc[i], offsets[i]);
      flat.oracle.set(oc[i], offsets[i]);
    }
    return this.#checkFlat(flat);
  }

  /** The oracle must be finite and non-negative: it is an attention weight times a norm. */
  #checkFlat(sample: StoredSample): StoredSample {
    const { oracle, offsets, lengths } = sample;
    for (let i = 0; i < lengths.length; i++) {
      for (let j = offsets[i]; j < offsets[i + 1]; j++) {
        const v = oracle[j];
        if (!(v >= 0 && v < Infinity)) {
          const l = Math.floor(i / this.kvHeads);
          throw invalid(`oracle[${l}][${i % this.kvHeads}][${j - offsets[i]}]`, "a finite non-negative number", v);
        }
      }
    }
    return sample;
  }

  #add(sample: StoredSample, decodeSteps: number | undefined): void {
    const r = analyzeSample(sample, this.#config);
    const H = this.layers * this.kvHeads;
    for (let i = 0; i < this.grid; i++) {
      for (let h = 0; h < H; h++) this.#prune[i * H + h] += r.evicted[i * H + h] / r.lengths[h];
      this.#loss[i] += r.loss[i];
      this.#uniformLoss[i] += r.uniformLoss[i];
    }
    for (let h = 0; h < H; h++) {
      this.#hullGap[h] += r.hullGap[h];
      this.#optimalityGap[h] += r.optimalityGap[h];
    }
    let longest = 0;
    for (let h = 0; h < H; h++) longest = Math.max(longest, sample.lengths[h]);
    this.#contextLengths.push(longest);
    this.#decodeSteps.push(decodeSteps);
    if (this.keepSamples) this.#samples.push(decodeSteps === undefined ? sample : { ...sample, decodeSteps });
    this.#count++;
  }
}

function isHeadValues(x: unknown): x is HeadValues {
  return types.isFloat32Array(x) || types.isFloat64Array(x) || Array.isArray(x);
}

/** The values of one head as float32, each read once (an array's length once too). */
function copyValues(src: HeadValues, name: string): Float32Array {
  if (!Array.isArray(src)) {
    // A detached or out-of-bounds view copies as empty (the constructor would throw a bare TypeError).
    return lengthOf(src as ArrayBufferView) === 0 ? new Float32Array(0) : new Float32Array(src as Float32Array | Float64Array);
  }
  // Collected before allocating: a sparse array's length alone could ask for gigabytes.
  const values: number[] = [];
  for (let j = 0, n = src.length; j < n; j++) {
    const v: unknown = src[j];
    if (typeof v !== "number") throw invalid(`${name}[${j}]`, "a number", v);
    values.push(v);
  }
  return new Float32Array(values);
}
