// LU-KV calibration of the tiny model: run it on calibration texts with the full cache, record the
// oracle over a few dozen decode steps after each context, and build one profile per scorer.
import type { ScorerName } from "../compress";
import { QueryStatistics, type ExpectedAttentionSettings } from "../expected-attention";
import type { Profile } from "../profile";
import { Profiler, type ProfileReport, type ProfilerScorerOptions } from "../profiler";
import type { KVCache } from "../cache";
import type { NamedText } from "./files";
import type { TinyLM } from "./tiny-lm";
import { outputErrorOracle, outputErrorProbe } from "./output-error";

/** Options of {@link calibrateTinyLM}. */
export interface CalibrationOptions {
  /** Scorers to build a profile for; one decode pass serves them all. Default: ["snapkv"]. */
  scorers?: ScorerName[];
  /** Options of every scorer (pooling, kernel, groupReduce, valueNorm...), as for compress(). Default {}. */
  scorerOptions?: ProfilerScorerOptions;
  /** Context lengths (tokens, BOS included) cut one after another from each text. Default: [384, 640, 896]. */
  contexts?: number[];
  /** Decode steps per context whose attention makes the oracle (the text's own next tokens, one at a time). Default: 32. */
  decodeSteps?: number;
  /** Sink and window never evicted; must match what compress() will use. Defaults: 4 and 32. */
  sink?: number;
  window?: number;
  /** Divide ||v W_O|| by its sum over the layer's heads and context tokens, as the LU-KV authors did. Default: true. */
  normalize?: boolean;
  /**
   * The importance the budgets are solved for: "lukv", the authors' oracle (max over the decode
   * steps of attention x ||v W_O||, see `normalize`), or "output", each token's first-order share of
   * the output error summed over the steps (see outputErrorOracle). Default: "lukv".
   */
  oracle?: "lukv" | "output";
  /** Model name for the profile's metadata. Default: "lukv-tiny-lm". */
  model?: string;
  /** Data set name for the metadata. Default: "models/tiny-lm/calibration". */
  dataset?: string;
  /**
   * Settings of the "expected-attention" scorer; its statistics come from each context's own
   * prefill (pre-RoPE queries, skipping the first `sink` positions). Default: the model's RoPE
   * theta and the scorer's defaults (epsilon 0.02, 512 future positions, value norm on).
   */
  expectedAttention?: ExpectedAttentionSettings;
  /** Called after each context with the contexts done and in all. */
  onProgress?: (done: number, total: number) => void;
}

/** Profiles by scorer, the profiler's report for each, and the contexts used. */
export interface Calibration {
  profiles: Map<ScorerName, Profile>;
  reports: Map<ScorerName, ProfileReport>;
  contexts: { text: string; start: number; tokens: number }[];
}

/**
 * Calibrates LU-KV profiles for the model on `texts`. Each text gives windows of [BOS] + context
 * tokens followed by `decodeSteps` tokens of the same text; a window is prefilled with the full
 * cache, the oracle is recorded while the continuation is decoded one token at a time, and every
 * scorer's profiler gets the (scores, oracle) sample.
 */
export function calibrateTinyLM(model: TinyLM, texts: NamedText[], options: CalibrationOptions = {}): Calibration {
  const tok = model.tokenizer;
  if (!tok || tok.bos === undefined) throw new Error("calibrateTinyLM needs a model loaded with its tokenizer");
  const scorers = options.scorers ?? ["snapkv"];
  const contexts = options.contexts ?? [384, 640, 896];
  const steps = options.decodeSteps ?? 32;
  const sink = options.sink ?? 4, window = options.window ?? 32;
  const { layers, kvHeads, heads, headDim } = model.config;
  const profilers = calibrationProfilers(model, scorers, {
    sink,
    window,
    model: options.model ?? "lukv-tiny-lm",
    dataset: options.dataset ?? "models/tiny-lm/calibration",
    scorerOptions: options.scorerOptions,
    expectedAttention: options.expectedAttention,
  });

  const windows: { text: string; start: number; ids: number[] }[] = [];
  for (const t of texts) {
    const ids = tok.encode(t.text);
    let start = 0;
    for (const length of contexts) {
      const span = length - 1 + steps;
      if (start + span > ids.length) break;
      windows.push({ text: t.name, start, ids: [tok.bos, ...ids.slice(start, start + span)] });
      start += span;
    }
  }
  if (windows.length === 0) throw new Error(`no calibration text is long enough for a context of ${contexts[0]} + ${steps} tokens`);

  const longest = Math.max(...windows.map((w) => w.ids.length));
  using cache = model.createCache({ dtype: "f32", contextTokens: longest + 16 });
  const outputProjection = options.oracle === "output" ? [] : model.outputProjections();
  windows.forEach((w, i) => {
    const context = w.ids.length - steps;
    if (options.oracle !== "output") {
      profileContext(model, cache, profilers, w.ids.slice(0, context), w.ids.slice(context), {
        sink,
        normalize: options.normalize ?? true,
        outputProjection,
        accumulateAttention: scorers.includes("h2o"),
      });
      options.onProgress?.(i + 1, windows.length);
      return;
    }
    // oracle "output": the scores as of the prefill, and the output error over the decode steps.
    using seq = cache.createSequence();
    if (scorers.includes("h2o")) seq.accumulateAttention(true); // h2o ranks by the prefill's attention mass
    const queryStatistics = scorers.includes("expected-attention") ? new QueryStatistics({ layers, queryHeads: heads, headDim, skip: sink }) : undefined;
    model.forward(seq, w.ids.slice(0, context), { logits: "none", queryStatistics });
    const scores = profilers.map((p) => Array.from({ length: layers }, (_, l) => seq.scores(l, p.scorer, p.scoreOptions(queryStatistics))));
    const perHead = (read: (l: number, h: number) => Float32Array) => Array.from({ length: layers }, (_, l) => Array.from({ length: kvHeads }, (_, h) => read(l, h)));
    const keys = perHead((l, h) => seq.keys(l, h)), values = perHead((l, h) => seq.values(l, h));
    const probe = outputErrorProbe(model, steps);
    for (let s = context; s < w.ids.length; s++) model.forward(seq, [w.ids[s]], { logits: "none", onAttention: probe.record });
    const oracle = outputErrorOracle(probe, keys, values, { queryHeads: heads, kvHeads, headDim, hidden: model.config.hidden });
    profilers.forEach((p, k) => p.addSample({ scores: scores[k], oracle, decodeSteps: steps }));
    options.onProgress?.(i + 1, windows.length);
  });

  return {
    profiles: new Map(scorers.map((s, i) => [s, profilers[i].build()])),
    reports: new Map(scorers.map((s, i) => [s, profilers[i].report()])),
    contexts: windows.map((w) => ({ text: w.text, start: w.start, tokens: w.ids.length - steps })),
  };
}

/** Settings shared by the profilers of one calibration (see {@link calibrationProfilers}). */
export interface CalibrationProfilerSettings {
  sink: number;
  window: number;
  /** Model and data set names for the profiles' metadata. */
  model: string;
  dataset: string;
  /** Options of every scorer, or of each scorer by name. */
  scorerOptions?: ProfilerScorerOptions | ((scorer: ScorerName) => ProfilerScorerOptions);
  /** Settings of "expected-attention"; what is not given: the model's RoPE theta and the scorer's defaults. */
  expectedAttention?: Partial<ExpectedAttentionSettings>;
}

/** @internal One profiler per scorer, "expected-attention" with the model's RoPE unless given. */
export function calibrationProfilers(model: TinyLM, scorers: ScorerName[], settings: CalibrationProfilerSettings): Profiler[] {
  const { layers, kvHeads, ropeTheta } = model.config;
  const expectedAttention: ExpectedAttentionSettings = { rope: { theta: ropeTheta }, ...settings.expectedAttention };
  const optionsOf = (scorer: ScorerName) => (typeof settings.scorerOptions === "function" ? settings.scorerOptions(scorer) : settings.scorerOptions);
  return scorers.map(
    (scorer) =>
      new Profiler({
        layers,
        kvHeads,
        scorer,
        scorerOptions: scorer === "expected-attention" ? { ...optionsOf(scorer), expectedAttention } : optionsOf(scorer),
        sink: settings.sink,
        window: settings.window,
        model: settings.model,
        dataset: settings.dataset,
        keepSamples: false,
      }),
  );
}

/**
 * @internal One calibration sample for every profiler: `context` is prefilled with the full cache
 * (with query statistics for "expected-attention", skipping the first `sink` positions), each
 * profiler records its oracle (with the model's `outputProjection`, made once by the caller:
 * `model.outputProjections()`), `continuation` is decoded one token at a time, and the sequence's
 * sample is added. `accumulateAttention`: the sequence accumulates attention mass while the context
 * is attended (what H2O ranks by).
 */
export function profileContext(
  model: TinyLM,
  cache: KVCache,
  profilers: Profiler[],
  context: number[],
  continuation: number[],
  options: { sink: number; normalize: boolean; outputProjection: Float32Array[]; accumulateAttention?: boolean },
): void {
  const { layers, heads, headDim } = model.config;
  using seq = cache.createSequence();
  if (options.accumulateAttention) seq.accumulateAttention(true);
  const queryStatistics = profilers.some((p) => p.scorer === "expected-attention")
    ? new QueryStatistics({ layers, queryHeads: heads, headDim, skip: options.sink })
    : undefined;
  model.forward(seq, context, { logits: "none", queryStatistics });
  // Each profiler keeps its scorer's ranking of the context as of now (KeyDiff's moves once
  // decoding appends keys); recording restarts harmlessly for each.
  for (const p of profilers) p.recordOracle(seq, { outputProjection: options.outputProjection, normalize: options.normalize }, queryStatistics);
  for (const t of continuation) model.forward(seq, [t], { logits: "none" });
  for (const p of profilers) p.addSequence(seq);
}
