// LU-KV calibration of the tiny model: run it on calibration texts with the full cache, record the
// oracle over a few dozen decode steps after each context, and build one profile per scorer.
import type { ScorerName } from "../compress";
import { QueryStatistics, type ExpectedAttentionSettings } from "../expected-attention";
import type { Profile } from "../profile";
import { Profiler, type ProfileReport, type ProfilerScorerOptions } from "../profiler";
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
  const { layers, kvHeads, heads, headDim, ropeTheta } = model.config;
  const expectedAttention = options.expectedAttention ?? { rope: { theta: ropeTheta } };
  const profilers = scorers.map(
    (scorer) =>
      new Profiler({
        layers,
        kvHeads,
        scorer,
        scorerOptions: scorer === "expected-attention" ? { ...options.scorerOptions, expectedAttention } : options.scorerOptions,
        sink,
        window,
        model: options.model ?? "lukv-tiny-lm",
        dataset: options.dataset ?? "models/tiny-lm/calibration",
        keepSamples: false,
      }),
  );
  const outputProjection = model.outputProjections();

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
  windows.forEach((w, i) => {
    using seq = cache.createSequence();
    const context = w.ids.length - steps;
    const queryStatistics = scorers.includes("expected-attention") ? new QueryStatistics({ layers, queryHeads: heads, headDim, skip: sink }) : undefined;
    model.forward(seq, w.ids.slice(0, context), { logits: "none", queryStatistics });
    if (options.oracle === "output") {
      const c = model.config;
      const scores = profilers.map((p) => Array.from({ length: layers }, (_, l) => seq.scores(l, p.scorer, p.scoreOptions(queryStatistics))));
      const heads = (read: (l: number, h: number) => Float32Array) => Array.from({ length: layers }, (_, l) => Array.from({ length: kvHeads }, (_, h) => read(l, h)));
      const keys = heads((l, h) => seq.keys(l, h)), values = heads((l, h) => seq.values(l, h));
      const probe = outputErrorProbe(model, steps);
      for (let s = context; s < w.ids.length; s++) model.forward(seq, [w.ids[s]], { logits: "none", onAttention: probe.record });
      const oracle = outputErrorOracle(probe, keys, values, { queryHeads: c.heads, kvHeads, headDim: c.headDim, hidden: c.hidden });
      profilers.forEach((p, k) => p.addSample({ scores: scores[k], oracle, decodeSteps: steps }));
      options.onProgress?.(i + 1, windows.length);
      return;
    }
    // Each profiler keeps its scorer's ranking of the context as of now (KeyDiff's moves once
    // decoding appends keys); recording restarts harmlessly for each.
    for (const p of profilers) p.recordOracle(seq, { outputProjection, normalize: options.normalize ?? true }, queryStatistics);
    for (let s = context; s < w.ids.length; s++) model.forward(seq, [w.ids[s]], { logits: "none" });
    for (const p of profilers) p.addSequence(seq);
    options.onProgress?.(i + 1, windows.length);
  });

  return {
    profiles: new Map(scorers.map((s, i) => [s, profilers[i].build()])),
    reports: new Map(scorers.map((s, i) => [s, profilers[i].report()])),
    contexts: windows.map((w) => ({ text: w.text, start: w.start, tokens: w.ids.length - steps })),
  };
}
