// `lukv eval`: the quality table of KV-cache compression on the embedded model. For every scorer x
// allocation x ratio: passkey retrieval accuracy, perplexity of held-out continuations with the
// compressed cache, greedy next-token agreement with the full cache, and the output error of the
// attention over the next decode steps (docs/methods.md).
import * as fs from "fs";
import * as path from "path";
import { ALLOCATIONS, AllocationName, SCORERS, ScorerName, type ScoreOptions } from "../compress";
import type { DType } from "../dtype";
import { argmax, calibrateTinyLM, defaultModelDir, loadTinyLM, modelProfile, modelTexts, outputErrorProbe, passkeyPrompts, TinyLM, type Tokenizer } from "../model";
import type { Profile } from "../profile";
import type { Sequence } from "../cache";
import { QueryStatistics } from "../expected-attention";
import { CliIO, countOption as count, dtypeOption, listOption as list, noPositionals, outputOption, parseArgs, progressBar, ratioLabel, ratiosOption, UsageError, wantsHelp, writeTextWhole } from "./io";
import { RECALL_USAGE, recallEvalCommand } from "./eval-recall";
import { packageRoot } from "../native";

const USAGE = `usage: lukv eval [options]

The quality table on the embedded model (models/tiny-lm): for each scorer x allocation x ratio,
passkey retrieval accuracy (heldout/passkey.json), perplexity of held-out continuations after the
context was compressed, greedy next-token agreement with the full cache, and the output error:
Σ‖O_c − O_f‖ / Σ‖O_f‖ over layers and the first --error-steps continuation steps, O the attention
output after o_proj with the compressed (O_c) or full (O_f) cache, fed the full run's q, k, v.

options (defaults in brackets):
  --scorers LIST       comma-separated, of ${SCORERS.join(", ")}
                       [snapkv,keydiff]
  --allocations LIST   comma-separated [uniform,pyramidkv,adakv,lukv] (lukv needs models/tiny-lm/profile.*)
  --ratios LIST        fractions of the context's KV evicted [0.5,0.8,0.9]
  --texts N            held-out texts for perplexity and agreement [all]
  --windows N          windows per text, as many as fit up to N [3]
  --context N          context tokens per window, BOS included, at least 36 [768]
  --tokens N           teacher-forced continuation tokens per window [128]
  --error-steps N      decode steps of the output error (clipped to tokens - 1) [64]
  --passkeys N         passkey prompts [all]
  --question Q         passkey question compressed "with" the text (the scorer sees it; its last
                       token is fed after compressing) or fed "after" the text was compressed
                       (kvpress protocol) [after]
  --dtype D            cache dtype f32 | f16 | bf16 [f32]
  --calibrate          calibrate every scorer's LU-KV profile now from models/tiny-lm/calibration
                       [only scorers without a profile file (profile.json, profile-<scorer>.json)]
  --out FILE           JSON results, in an existing directory [bench/results/eval.json]
  --model DIR|NAME     model directory, or the name of one in the package's models/ [tiny-lm]

With --task niah|mk-niah|mq-niah|vt the retrieval evaluation runs instead (lukv eval --task
--help): RULER-style needle tasks on a model trained for them, e.g. --model recall-lm.`;

/** --model: a directory, or the name of a model shipped in the package's models/ folder. */
export function resolveModelDir(v: string | true | undefined): string {
  if (typeof v !== "string") return defaultModelDir();
  const shipped = path.join(packageRoot(), "models", v);
  return !fs.existsSync(v) && /^[\w.-]+$/.test(v) && fs.existsSync(shipped) ? shipped : v;
}

/** What one evaluation covers. */
export interface EvalSettings {
  scorers: ScorerName[];
  allocations: AllocationName[];
  ratios: number[];
  texts: number;
  windows: number;
  context: number;
  tokens: number;
  passkeys: number;
  /** Passkey prompts: the question is compressed "with" the text (all but its last token, fed after), or appended "after" compressing it. */
  question: "with" | "after";
  dtype: DType;
  /** Continuation steps the output error covers (clipped to tokens - 1). */
  errorSteps: number;
  /** Extra compress() options per scorer (valueNorm, pooling, ...). Default none. */
  scoreOptions?: Partial<Record<ScorerName, ScoreOptions>>;
}

/** The scores of one setting (or of the full cache). */
export interface EvalScores {
  /** Passkey prompts answered exactly (greedy). */
  passkeyCorrect: number;
  passkeyPrompts: number;
  passkeyAccuracy: number;
  /** Mean negative log-likelihood of the answer's tokens, teacher-forced (ln 10 = 2.30 is a guess per digit). */
  passkeyAnswerNll: number;
  /** exp(mean negative log-likelihood) of the scored continuation tokens. */
  perplexity: number;
  /** Scored continuation tokens whose greedy prediction equals the full cache's. */
  agreement: number;
  scoredTokens: number;
  /** Per held-out window (in `samples` order): mean NLL of its scored tokens, and their agreement. */
  windowNll: number[];
  windowAgreement: number[];
  /** Σ‖O_c − O_f‖ / Σ‖O_f‖ over layers, steps and windows (0 for the full cache), and per window. */
  outputError: number;
  windowOutputError: number[];
  /** The fraction of the tokens the compressions evicted (0 for the full cache): below the ratio where the sink and window floors kept more. */
  evicted: number;
}

export interface EvalRow extends EvalScores {
  scorer: ScorerName;
  allocation: AllocationName;
  ratio: number;
}

export interface EvalResult {
  model: string;
  settings: EvalSettings;
  /** Windows evaluated and their source texts. */
  samples: { text: string; start: number }[];
  full: EvalScores;
  rows: EvalRow[];
  notes: string[];
  seconds: number;
}

function oneOfOption<T extends string>(v: string | true | undefined, allowed: readonly T[], name: string): T {
  if (v === undefined) return allowed[0];
  if (!allowed.includes(v as T)) throw new UsageError(`--${name} expects one of ${allowed.join(", ")}, got ${String(v)}`);
  return v as T;
}

/** The question that ends every passkey prompt (tools/tiny-lm/tasks.py). */
export const QUESTION = "\n\nWhat is the pass key? The pass key is ";

/** Index in `ids` where the trailing `question` tokens start, or ids.length when the prompt does not end with them. */
export function questionStart(ids: number[], question: number[]): number {
  const at = ids.length - question.length;
  return at > 0 && question.every((t, i) => ids[at + i] === t) ? at : ids.length;
}

function logSumExp(row: Float32Array, offset: number, n: number): number {
  let m = -Infinity;
  for (let i = 0; i < n; i++) m = Math.max(m, row[offset + i]);
  let s = 0;
  for (let i = 0; i < n; i++) s += Math.exp(row[offset + i] - m);
  return m + Math.log(s);
}

interface Accumulator {
  correct: number;
  prompts: number;
  answerNll: number;
  answerTokens: number;
  nll: number;
  agree: number;
  scored: number;
  /** Per window: mean NLL and agreement of its scored tokens. */
  windowNll: number[];
  windowAgreement: number[];
  errDiff: number;
  errNorm: number;
  windowOutputError: number[];
  /** Tokens before the compressions and kept by them, over all of them. */
  before: number;
  kept: number;
}

const empty = (): Accumulator => ({
  correct: 0, prompts: 0, answerNll: 0, answerTokens: 0, nll: 0, agree: 0, scored: 0, windowNll: [], windowAgreement: [], errDiff: 0, errNorm: 0, windowOutputError: [],
  before: 0, kept: 0,
});

function scores(a: Accumulator): EvalScores {
  return {
    passkeyCorrect: a.correct,
    passkeyPrompts: a.prompts,
    passkeyAccuracy: a.prompts ? a.correct / a.prompts : NaN,
    passkeyAnswerNll: a.answerTokens ? a.answerNll / a.answerTokens : NaN,
    perplexity: a.scored ? Math.exp(a.nll / a.scored) : NaN,
    agreement: a.scored ? a.agree / a.scored : NaN,
    scoredTokens: a.scored,
    windowNll: a.windowNll,
    windowAgreement: a.windowAgreement,
    outputError: a.errNorm > 0 ? a.errDiff / a.errNorm : NaN,
    windowOutputError: a.windowOutputError,
    evicted: a.before > 0 ? 1 - a.kept / a.before : 0,
  };
}

/** compress()'s defaults: every head keeps its first SINK and last WINDOW tokens, so a context holds at least both. */
const SINK = 4;
const WINDOW = 32;

/** The held-out windows of an evaluation: [BOS] + context - 1 text tokens, then the continuation. */
function heldoutWindows(tok: Tokenizer, dir: string, s: Pick<EvalSettings, "texts" | "windows" | "context" | "tokens">): { text: string; start: number; ids: number[] }[] {
  const samples: { text: string; start: number; ids: number[] }[] = [];
  for (const t of modelTexts(dir, "heldout").slice(0, s.texts)) {
    const ids = tok.encode(t.text);
    const span = s.context - 1 + s.tokens;
    for (let w = 0; w < s.windows && (w + 1) * span <= ids.length; w++)
      samples.push({ text: t.name, start: w * span, ids: [tok.bos!, ...ids.slice(w * span, (w + 1) * span)] });
  }
  return samples;
}

/** Runs the evaluation; `progress` is called after each (sample, setting) pair with the pairs done and in all. */
export function runEval(
  model: TinyLM,
  dir: string,
  s: EvalSettings,
  profiles: Map<ScorerName, Profile>,
  progress: (done: number, total: number) => void = () => {},
): Omit<EvalResult, "seconds" | "model" | "notes"> {
  const tok = model.tokenizer!;
  const V = model.config.vocabSize;
  const settings = s.scorers.flatMap((scorer) =>
    s.ratios.flatMap((ratio) => s.allocations.filter((a) => a !== "lukv" || profiles.has(scorer)).map((allocation) => ({ scorer, allocation, ratio }))),
  );
  const acc = settings.map(empty);
  const full = empty();

  const samples = heldoutWindows(tok, dir, s);
  const prompts = s.passkeys > 0 ? passkeyPrompts(dir).slice(0, s.passkeys) : [];
  const total = (samples.length + prompts.length) * (settings.length + 1);
  let done = 0;
  const tick = () => progress(++done, total);
  // Sized for the windows and prompts that run: --tokens and --error-steps count only with a window.
  const longest = Math.max(samples.length > 0 ? s.context + s.tokens : 0, ...prompts.map((p) => (p.prompt_tokens ?? 4 * p.prompt.length) + 16));
  const errorSteps = samples.length > 0 ? Math.min(s.errorSteps, s.tokens - 1) : 0;
  // Room for the full sequence and one compressed fork with its continuation.
  using cache = model.createCache({ dtype: s.dtype, contextTokens: 2 * longest + errorSteps + 128 });

  // expected-attention predicts from the statistics of each prompt's own pre-RoPE queries.
  const { layers, heads, headDim, ropeTheta } = model.config;
  const statistics = () => (s.scorers.includes("expected-attention") ? new QueryStatistics({ layers, queryHeads: heads, headDim }) : undefined);
  const compressed = (seq: Sequence, i: number, stats?: QueryStatistics): Sequence => {
    const fork = seq.fork();
    const { scorer, allocation, ratio } = settings[i];
    const expectedAttention = scorer === "expected-attention" && stats ? { statistics: stats, rope: { theta: ropeTheta } } : undefined;
    const report = fork.compress({ sink: SINK, window: WINDOW, ...s.scoreOptions?.[scorer], ratio, scorer, allocation, profile: allocation === "lukv" ? profiles.get(scorer) : undefined, expectedAttention });
    acc[i].before += report.before;
    acc[i].kept += report.total;
    return fork;
  };

  // H2O ranks by the attention mass accumulated while the context is attended (forks keep it).
  const h2o = s.scorers.includes("h2o");
  for (const sample of samples) {
    const context = sample.ids.slice(0, s.context);
    // Continuation tokens 0..K-2 are fed; the rows they produce predict tokens 1..K-1.
    const fed = sample.ids.slice(s.context, s.context + s.tokens - 1);
    const targets = sample.ids.slice(s.context + 1, s.context + s.tokens);
    using seq = cache.createSequence();
    if (h2o) seq.accumulateAttention(true);
    const stats = statistics();
    model.forward(seq, context, { logits: "none", queryStatistics: stats });
    const probe = outputErrorProbe(model, Math.min(errorSteps, fed.length));
    let fullOutputs: Float32Array[] = [];
    const outputError = (fork: Sequence, a: Accumulator): void => {
      const t = probe.compare(fullOutputs, probe.outputs(fork));
      a.errDiff += t.diff;
      a.errNorm += t.norm;
      a.windowOutputError.push(t.diff / t.norm);
    };
    const score = (fork: Sequence, a: Accumulator, reference?: Int32Array): Int32Array => {
      const rows = model.forward(fork, fed, { logits: "all", onAttention: reference === undefined ? probe.record : undefined });
      const greedy = new Int32Array(targets.length);
      let nll = 0, agree = 0;
      targets.forEach((target, t) => {
        nll += logSumExp(rows, t * V, V) - rows[t * V + target];
        greedy[t] = argmax(rows, t * V, V);
        if (reference === undefined || greedy[t] === reference[t]) agree++;
      });
      a.nll += nll;
      a.agree += agree;
      a.scored += targets.length;
      a.windowNll.push(nll / targets.length);
      a.windowAgreement.push(agree / targets.length);
      return greedy;
    };
    let reference: Int32Array;
    {
      using f = seq.fork();
      reference = score(f, full);
      fullOutputs = probe.outputs(seq);
      outputError(seq, full);
    }
    tick();
    settings.forEach((_, i) => {
      using f = compressed(seq, i, stats);
      outputError(f, acc[i]);
      score(f, acc[i], reference);
      tick();
    });
  }

  for (const p of prompts) {
    const ids = [tok.bos!, ...tok.encode(p.prompt)];
    // Where the question starts: compress sees only the text before it ("after"), or all of it but
    // its last token ("with", and a prompt without the question), which is fed after compressing, so
    // that the first answer token too is predicted from the compressed cache (as eval --task's "before").
    const split = Math.min(s.question === "after" ? questionStart(ids, tok.encode(QUESTION)) : ids.length, ids.length - 1);
    const expected = tok.encode(p.answer);
    using seq = cache.createSequence();
    if (h2o) seq.accumulateAttention(true);
    const stats = statistics();
    model.forward(seq, ids.slice(0, split), { queryStatistics: stats, logits: "none" });
    const answer = (fork: Sequence, a: Accumulator) => {
      const last = model.forward(fork, ids.slice(split));
      // The answer teacher-forced (its likelihood), then greedily (exact match), on a second fork.
      {
        using forced = fork.fork();
        const rows = model.forward(forced, expected.slice(0, -1), { logits: "all" });
        expected.forEach((t, i) => {
          const row = i === 0 ? last : rows.subarray((i - 1) * V, i * V);
          a.answerNll += logSumExp(row, 0, V) - row[t];
        });
        a.answerTokens += expected.length;
      }
      const { tokens } = model.generate(fork, last, expected.length, { stopToken: -1 });
      a.prompts++;
      if (tok.decode(tokens) === p.answer) a.correct++;
    };
    {
      using f = seq.fork();
      answer(f, full);
    }
    tick();
    settings.forEach((_, i) => {
      using f = compressed(seq, i, stats);
      answer(f, acc[i]);
      tick();
    });
  }

  return {
    settings: s,
    samples: samples.map(({ text, start }) => ({ text, start })),
    full: scores(full),
    rows: settings.map((x, i) => ({ ...x, ...scores(acc[i]) })),
  };
}

function pct(x: number): string {
  return Number.isNaN(x) ? "-" : `${(100 * x).toFixed(1)}%`;
}

/** The table, one row per setting, grouped by scorer and ratio. */
export function formatTable(r: Pick<EvalResult, "full" | "rows">): string {
  const head = ["scorer", "ratio", "allocation", "passkey", "passkey NLL", "perplexity", "Δppl", "next-token agreement", "output error"];
  const nll = (x: number) => (Number.isNaN(x) ? "-" : x.toFixed(3));
  // Without held-out windows (--texts 0) there is no perplexity, agreement or output error.
  const lines: string[][] = [["full cache", "-", "-", pct(r.full.passkeyAccuracy), nll(r.full.passkeyAnswerNll), nll(r.full.perplexity), "-", Number.isNaN(r.full.agreement) ? "-" : "100%", nll(r.full.outputError)]];
  for (const x of r.rows)
    lines.push([
      x.scorer,
      ratioLabel(x.ratio),
      x.allocation,
      pct(x.passkeyAccuracy),
      nll(x.passkeyAnswerNll),
      nll(x.perplexity),
      Number.isNaN(x.perplexity) ? "-" : `${x.perplexity >= r.full.perplexity ? "+" : ""}${(100 * (x.perplexity / r.full.perplexity - 1)).toFixed(1)}%`,
      pct(x.agreement),
      nll(x.outputError),
    ]);
  const widths = head.map((h, c) => Math.max(h.length, ...lines.map((l) => l[c].length)));
  const fmt = (l: string[]) => "| " + l.map((v, c) => (c < 3 ? v.padEnd(widths[c]) : v.padStart(widths[c]))).join(" | ") + " |";
  return [fmt(head), "|" + widths.map((w, c) => (c < 3 ? "-".repeat(w + 2) : "-".repeat(w + 1) + ":")).join("|") + "|", ...lines.map(fmt)].join("\n");
}

/**
 * Per scorer and ratio, LU-KV against the best other allocation (lowest perplexity): perplexity,
 * agreement, and the windows in which LU-KV's NLL is the lower. Empty when there is no lukv row,
 * or no held-out window to compare on (no perplexity: passkeys only).
 */
export function formatComparison(r: Pick<EvalResult, "rows">): string {
  const lines: string[] = [];
  const scored = (row: EvalRow) => !Number.isNaN(row.perplexity);
  for (const x of r.rows.filter((row) => row.allocation === "lukv" && scored(row))) {
    const others = r.rows.filter((o) => o.scorer === x.scorer && o.ratio === x.ratio && o.allocation !== "lukv" && scored(o));
    if (others.length === 0) continue;
    const best = others.reduce((a, b) => (b.perplexity < a.perplexity ? b : a));
    const wins = x.windowNll.filter((v, i) => v < best.windowNll[i]).length;
    lines.push(
      `  ${x.scorer} ${ratioLabel(x.ratio)}: perplexity ${x.perplexity.toFixed(3)} vs ${best.perplexity.toFixed(3)} (${best.allocation}), ` +
        `agreement ${pct(x.agreement)} vs ${pct(best.agreement)}; lower NLL in ${wins} of ${x.windowNll.length} windows`,
    );
  }
  return lines.length ? ["LU-KV against the best other allocation (by perplexity):", ...lines].join("\n") : "";
}

const SPEC = {
  values: ["scorers", "allocations", "ratios", "texts", "windows", "context", "tokens", "passkeys", "question", "dtype", "out", "model", "error-steps"],
  flags: ["calibrate"],
};

export async function evalCommand(argv: string[], io: CliIO): Promise<number> {
  if (argv.some((a) => a === "--task" || a.startsWith("--task="))) {
    if (wantsHelp(argv)) {
      io.out(RECALL_USAGE);
      return 0;
    }
    return recallEvalCommand(argv, io, resolveModelDir);
  }
  if (wantsHelp(argv)) {
    io.out(USAGE);
    return 0;
  }
  const usageError = (e: UsageError) => {
    io.err(`lukv eval: ${e.message}\n\n${USAGE}`);
    return 2;
  };
  let settings: EvalSettings, dir: string, out: string, outGiven: boolean, calibrate: boolean;
  try {
    const args = parseArgs(argv, SPEC);
    const { options } = args;
    noPositionals(args);
    for (const k of options.keys()) if (![...SPEC.values, ...SPEC.flags].includes(k)) throw new UsageError(`unknown option --${k}`);
    const ratios = ratiosOption(options, [0.5, 0.8, 0.9]);
    const dtype = dtypeOption(options);
    settings = {
      scorers: list(options.get("scorers"), ["snapkv", "keydiff"], SCORERS, "scorers"),
      allocations: list(options.get("allocations"), ALLOCATIONS, ALLOCATIONS, "allocations"),
      ratios,
      texts: count(options, "texts", Number.MAX_SAFE_INTEGER, 0),
      windows: count(options, "windows", 3, 1),
      context: count(options, "context", 768, SINK + WINDOW, `compression keeps the first ${SINK} and last ${WINDOW} tokens of every head`),
      tokens: count(options, "tokens", 128, 2),
      passkeys: count(options, "passkeys", Number.MAX_SAFE_INTEGER, 0),
      question: oneOfOption(options.get("question"), ["after", "with"] as const, "question"),
      dtype,
      errorSteps: count(options, "error-steps", 64, 1),
    };
    // As the help says: a window has tokens - 1 continuation steps to compare.
    settings.errorSteps = Math.min(settings.errorSteps, settings.tokens - 1);
    calibrate = options.get("calibrate") === true;
    dir = resolveModelDir(options.get("model"));
    // Checked now rather than when the results are written, after all the work.
    out = outputOption(options.get("out"), path.join("bench", "results", "eval.json"));
    outGiven = options.has("out");
  } catch (e) {
    if (e instanceof UsageError) return usageError(e);
    throw e;
  }

  const t0 = performance.now();
  const model = loadTinyLM(dir);
  const texts = Math.min(settings.texts, modelTexts(dir, "heldout").length);
  const prompts = settings.passkeys > 0 ? Math.min(settings.passkeys, passkeyPrompts(dir).length) : 0;
  const windows = heldoutWindows(model.tokenizer!, dir, settings).length;
  try {
    // Known before the work, rather than a table of NaN after it.
    if (prompts === 0 && windows === 0) {
      const why =
        settings.texts === 0
          ? "--texts 0"
          : texts === 0
            ? `no held-out texts in ${path.join(dir, "heldout")}`
            : `no held-out text has the --context ${settings.context} + --tokens ${settings.tokens} tokens of a window`;
      const passkeys = settings.passkeys === 0 ? "--passkeys 0" : `no prompts in ${path.join(dir, "heldout", "passkey.json")}`;
      throw new UsageError(`nothing to evaluate: ${why}, and ${passkeys}`);
    }
  } catch (e) {
    if (e instanceof UsageError) return usageError(e);
    throw e;
  }
  io.out(
    `lukv eval: ${settings.scorers.join(", ")} x ${settings.allocations.join(", ")} x ratios ${settings.ratios.join(", ")}; ` +
      `${texts} held-out texts x up to ${settings.windows} windows of ${settings.context} + ${settings.tokens} tokens; ${prompts} passkey prompts (question ${settings.question} compression); cache ${settings.dtype}`,
  );
  const notes: string[] = [];
  const note = (n: string) => {
    notes.push(n);
    io.out(`note: ${n}`);
  };
  if (windows === 0 && texts > 0)
    note(`no held-out text has the --context ${settings.context} + --tokens ${settings.tokens} tokens of a window: passkeys only, no perplexity, agreement or output error`);
  // LU-KV's table is calibrated for one scorer: each scorer gets its own profile.
  const profiles = new Map<ScorerName, Profile>();
  if (settings.allocations.includes("lukv")) {
    const missing: ScorerName[] = [];
    for (const scorer of settings.scorers) {
      const found = calibrate ? undefined : modelProfile(dir, scorer);
      if (found) {
        profiles.set(scorer, found.profile);
        // A profile ranks heads as its calibration's compress did: other floors than this run's are worth saying.
        const { sink, window } = found.profile.meta ?? {};
        const other = (sink !== undefined && sink !== SINK) || (window !== undefined && window !== WINDOW);
        note(
          `lukv with ${scorer} uses ${found.file}` +
            (other ? `, calibrated with sink ${sink ?? "?"} and window ${window ?? "?"} (this evaluation compresses with sink ${SINK} and window ${WINDOW})` : ""),
        );
      } else missing.push(scorer);
    }
    const calibration = modelTexts(dir, "calibration");
    if (missing.length > 0 && calibration.length > 0) {
      const tc = performance.now();
      let bar: ReturnType<typeof progressBar> | undefined;
      const made = calibrateTinyLM(model, calibration, { scorers: missing, onProgress: (_d, total) => (bar ??= progressBar("calibrate", total)).tick() });
      bar?.done();
      for (const [scorer, p] of made.profiles) profiles.set(scorer, p);
      const contexts = made.contexts.length;
      note(
        `lukv with ${missing.join(", ")} uses a profile calibrated now on ${calibration.length} calibration texts ` +
          `(${contexts} contexts, ${((performance.now() - tc) / 1000).toFixed(0)} s)`,
      );
    } else if (missing.length > 0) note(`no LU-KV profile for ${missing.join(", ")} and no calibration texts: lukv is left out for it`);
  }
  let bar: ReturnType<typeof progressBar> | undefined;
  const result = runEval(model, dir, settings, profiles, (_done, total) => (bar ??= progressBar("eval", total)).tick());
  bar?.done();
  const seconds = (performance.now() - t0) / 1000;
  // The floors keep sink + window tokens of every head: a short context loses less than the ratio.
  for (const r of result.rows)
    if (r.evicted < r.ratio - 0.005)
      note(
        `${r.scorer} ${r.allocation} at ratio ${ratioLabel(r.ratio)} evicted ${(100 * r.evicted).toFixed(1)}% of the tokens: ` +
          `every head keeps its first ${SINK} and last ${WINDOW}`,
      );
  const full: EvalResult = { model: dir, ...result, notes, seconds };
  io.out("");
  io.out(formatTable(full));
  io.out("");
  const comparison = formatComparison(full);
  if (comparison) io.out(comparison + "\n");
  io.out(
    `${result.samples.length} windows, ${result.full.scoredTokens} scored continuation tokens; ${result.full.passkeyPrompts} passkey prompts; ` +
      `${seconds.toFixed(0)} s`,
  );
  writeTextWhole(out, JSON.stringify({ command: ["lukv", "eval", ...argv].join(" "), ...full }, null, 1) + "\n", !outGiven);
  io.out(`results written to ${out}`);
  return 0;
}
