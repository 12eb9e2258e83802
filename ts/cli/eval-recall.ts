// `lukv eval --task niah|mk-niah|mq-niah|vt`: retrieval accuracy under KV-cache compression on a
// model trained for it (models/recall-lm). For every instance the context is prefilled once;
// each scorer x allocation x ratio then compresses its own fork of it. With the question "after"
// compression the fork is compressed first and the question appended to it, so the cache must
// serve a question it has not seen; "before" prefills the question too (all but its last token,
// which is fed after compressing, so the first answer token is computed from the compressed cache).
import * as fs from "fs";
import * as path from "path";
import { ALLOCATIONS, AllocationName, defaultPooling, POOLING_SCORERS, POOLINGS, PoolingName, SCORERS, ScorerName } from "../compress";
import type { DType } from "../dtype";
import { loadTinyLM, modelProfile, TinyLM } from "../model";
import { loadProfile, saveProfile, type Profile } from "../profile";
import { calibrationProfilers, profileContext } from "../model/calibrate";
import { MOST_FUTURE_POSITIONS, QueryStatistics } from "../expected-attention";
import type { KVCache, Sequence } from "../cache";
import { FLOAT32_MAX } from "../finite";
import { CliIO, countBetween, countOption, decimalText, dtypeOption, listOption as list, noPositionals, outputOption, parseArgs, progressBar, ratioLabel, ratiosOption, UsageError, writeTextWhole, writingTo } from "./io";

export const RECALL_TASKS = ["niah", "mk-niah", "mq-niah", "vt"] as const;
export type RecallTask = (typeof RECALL_TASKS)[number];
export const QUESTION_MODES = ["after", "before"] as const;
export type QuestionMode = (typeof QUESTION_MODES)[number];

export const RECALL_USAGE = `usage: lukv eval --task LIST [options]

Retrieval under KV-cache compression (RULER-style needle tasks) on a model trained for them
(--model recall-lm): for each task, scorer, allocation and ratio, the greedy exact-match
accuracy on the model's held-out instances (heldout/<task>.json), the KV memory kept and the
decode latency. Each instance's context is prefilled once and every setting compresses a fork.

options (defaults in brackets):
  --task LIST          comma-separated niah, mk-niah, mq-niah, vt, or all
  --scorers LIST       comma-separated [every scorer: ${SCORERS.join(",")}]
  --allocations LIST   comma-separated [uniform,pyramidkv,adakv,lukv]
  --ratios LIST        fractions of the context's KV evicted [0.5,0.8,0.9,0.95]
  --question LIST      "after" (question appended after compressing), "before" (compressed
                       with the context), or both [after,before]
  --instances N        held-out instances per task [all]
  --dtype D            cache dtype f32 | f16 | bf16 [f32]
  --calibrate          calibrate LU-KV profiles now on calibration/<task>.json even where the
                       model directory has profile-<scorer>.json [only where it has none]
  --save-profiles      write the profiles calibrated now to the model directory
  --out FILE           JSON results, in an existing directory [bench/results/eval-recall.json]
  --model DIR|NAME     model directory, or the name of one in the package's models/ [recall-lm]
  --pooling P          none | max | avg: every scorer that pools (${POOLING_SCORERS.join(", ")})
                       pools its scores with the neighbours' (max or mean over --kernel tokens), so
                       that a token is kept with them [each scorer's default: max for snapkv, none
                       for the others]; lukv then uses profile-<scorer>-<P>-<K>.json where these
                       options are not the scorer's default (calibrated now when missing)
  --kernel K           pooling width, an odd number of tokens [7]
  --ea-epsilon X       expected-attention: added to each score before the value norm [0.02]
  --ea-future-positions N
                       expected-attention: future positions the RoPE rotation is averaged over
                       [512]; with either --ea option, lukv with expected-attention uses a profile
                       calibrated now with the same settings (never written by --save-profiles)`;

/** One instance of heldout/<task>.json or calibration/<task>.json (tools/recall-lm/export.py). */
export interface RecallInstance {
  /** Tokenize as [BOS] + encode(context). */
  context: string;
  /** Appended after the context. */
  question: string;
  /** What follows the question, e.g. " 48193". */
  answer: string;
  /**
   * Further parts of the same question (mq-niah asks two keys): after the answer before it, each
   * `question` is given (e.g. " . the special magic number for K2 is") and its `answer` must be
   * produced. The instance is right only when every part is.
   */
  followups?: { question: string; answer: string }[];
}

/** The whole expected continuation of the question: the answer, then each follow-up's prompt and answer. */
export function fullAnswer(x: RecallInstance): string {
  return x.answer + (x.followups ?? []).map((f) => f.question + f.answer).join("");
}

/** The instances of `sub`/<task>.json in the model directory. @throws Error when the file is missing or malformed. */
export function recallInstances(dir: string, sub: "heldout" | "calibration", task: RecallTask): RecallInstance[] {
  const file = path.join(dir, sub, `${task}.json`);
  if (!fs.existsSync(file)) throw new Error(`${file} is missing: the model directory has no ${sub} instances of ${task}`);
  const j = JSON.parse(fs.readFileSync(file, "utf8")) as { instances?: unknown };
  const strings = (x: unknown, keys: string[]) => typeof x === "object" && x !== null && keys.every((k) => typeof (x as Record<string, unknown>)[k] === "string");
  const ok = (x: unknown): x is RecallInstance => {
    if (!strings(x, ["context", "question", "answer"])) return false;
    const f = (x as { followups?: unknown }).followups;
    return f === undefined || (Array.isArray(f) && f.every((p) => strings(p, ["question", "answer"])));
  };
  if (!Array.isArray(j.instances) || !j.instances.every(ok))
    throw new Error(`${file}: "instances" must be an array of {context, question, answer} strings, with optional followups [{question, answer}]`);
  return j.instances;
}

export interface RecallSettings {
  tasks: RecallTask[];
  scorers: ScorerName[];
  allocations: AllocationName[];
  ratios: number[];
  questions: QuestionMode[];
  instances: number;
  dtype: DType;
  /** Options of the "expected-attention" scorer besides its statistics and RoPE (its defaults when absent). */
  expectedAttention?: { epsilon?: number; futurePositions?: number };
  /** Pooling of every scorer that pools (see compress's `pooling`); absent: each scorer's default. */
  pooling?: { pooling: PoolingName; kernel: number };
}

/** The pooling options `scorer` gets in an evaluation with settings `s` ({} = the scorer's defaults). */
export function recallScorerOptions(s: Pick<RecallSettings, "pooling">, scorer: ScorerName): { pooling?: PoolingName; kernel?: number } {
  return s.pooling && POOLING_SCORERS.includes(scorer) ? { ...s.pooling } : {};
}

/** The pooling a scorer gets with `options` (compress's defaults filled in), as "max 7" or "none". */
function poolingLabel(scorer: ScorerName, options: { pooling?: unknown; kernel?: unknown } | undefined): string {
  const defaults = defaultPooling(scorer);
  const pooling = options?.pooling ?? defaults.pooling;
  return pooling === "none" ? "none" : `${String(pooling)} ${String(options?.kernel ?? defaults.kernel)}`;
}

/**
 * The name of the model directory's LU-KV profile for `scorer` in an evaluation with settings `s`:
 * profile-<scorer>.json for the scorer's default pooling, profile-<scorer>-<pooling>-<kernel>.json
 * (profile-<scorer>-none.json) otherwise.
 */
export function recallProfileName(s: Pick<RecallSettings, "pooling">, scorer: ScorerName): string {
  const mine = poolingLabel(scorer, recallScorerOptions(s, scorer));
  if (mine === poolingLabel(scorer, {})) return `profile-${scorer}.json`;
  return `profile-${scorer}-${mine.replace(" ", "-")}.json`;
}

/** Scores of one setting on one task and question mode. */
export interface RecallScores {
  /** Instances whose greedy answer equals the expected one, token for token. */
  correct: number;
  instances: number;
  accuracy: number;
  /** Mean bytes of K and V kept for the context (all layers and KV heads). */
  kvBytes: number;
  /** Mean tokens kept per (layer, KV head). */
  keptPerHead: number;
  /** Median wall time of one decode step (the model's forward of one token), ms. */
  decodeMs: number;
  /** Median wall time of compress(), ms (0 for the full cache). */
  compressMs: number;
}

export interface RecallRow extends RecallScores {
  task: RecallTask;
  question: QuestionMode;
  /** "full" for the uncompressed cache. */
  scorer: ScorerName | "full";
  /** The scorer's pooling when the evaluation set one (`--pooling`), e.g. "max 7" or "none". */
  pooling?: string;
  allocation: AllocationName | "full";
  ratio: number;
  /** The greedy answer of each instance, decoded (with follow-ups: their given prompts between the answers). */
  answers: string[];
}

export interface RecallResult {
  model: string;
  settings: RecallSettings;
  /** Context tokens (BOS included) of the instances, per task: min and max. */
  contextTokens: Record<string, [number, number]>;
  rows: RecallRow[];
  notes: string[];
  seconds: number;
}

const BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2 };

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * LU-KV profiles for `scorers` calibrated on the model's calibration instances: each context is
 * prefilled with the full cache, the oracle is recorded while its question and answer are fed one
 * token at a time, and every scorer's profiler gets the sample.
 */
export function calibrateRecall(
  model: TinyLM,
  instances: RecallInstance[],
  scorers: ScorerName[],
  dataset: string,
  onProgress?: () => void,
  expectedAttention?: RecallSettings["expectedAttention"],
  pooling?: RecallSettings["pooling"],
): Map<ScorerName, Profile> {
  const tok = model.tokenizer!;
  const sink = 4;
  const profilers = calibrationProfilers(model, scorers, {
    sink,
    window: 32,
    model: "lukv-recall-lm",
    dataset,
    expectedAttention,
    scorerOptions: (scorer) => recallScorerOptions({ pooling }, scorer),
  });
  const encoded = instances.map((x) => ({ context: [tok.bos!, ...tok.encode(x.context)], rest: tok.encode(x.question + fullAnswer(x)) }));
  const longest = Math.max(...encoded.map((e) => e.context.length + e.rest.length));
  using cache = model.createCache({ dtype: "f32", contextTokens: longest + 16 });
  const outputProjection = model.outputProjections();
  for (const e of encoded) {
    // The decode steps are the question and its answer; H2O ranks by the mass of the context.
    profileContext(model, cache, profilers, e.context, e.rest, { sink, normalize: true, outputProjection, accumulateAttention: scorers.includes("h2o") });
    onProgress?.();
  }
  return new Map(scorers.map((s, i) => [s, profilers[i].build()]));
}

interface Acc {
  answers: string[];
  correct: number;
  n: number;
  kvBytes: number;
  kept: number;
  decodeMs: number[];
  compressMs: number[];
}

/** Runs the evaluation; `progress` is called after each (instance, setting) pair. */
export function runRecallEval(
  model: TinyLM,
  dir: string,
  s: RecallSettings,
  profiles: Map<ScorerName, Profile>,
  progress: () => void = () => {},
): Pick<RecallResult, "rows" | "contextTokens"> {
  const tok = model.tokenizer!;
  const { layers, kvHeads, heads, headDim, ropeTheta } = model.config;
  const settings = s.scorers.flatMap((scorer) =>
    s.ratios.flatMap((ratio) => s.allocations.filter((a) => a !== "lukv" || profiles.has(scorer)).map((allocation) => ({ scorer, allocation, ratio }))),
  );
  const rows: RecallRow[] = [];
  const contextTokens: Record<string, [number, number]> = {};
  const perToken = 2 * headDim * BYTES[s.dtype];
  for (const task of s.tasks) {
    const items = recallInstances(dir, "heldout", task).slice(0, s.instances);
    const encoded = items.map((x) => ({
      context: [tok.bos!, ...tok.encode(x.context)],
      question: tok.encode(x.question),
      answer: tok.encode(x.answer),
      followups: (x.followups ?? []).map((f) => ({ question: tok.encode(f.question), answer: tok.encode(f.answer) })),
    }));
    const lens = encoded.map((e) => e.context.length);
    contextTokens[task] = [Math.min(...lens), Math.max(...lens)];
    const longest = Math.max(
      ...encoded.map((e) => e.context.length + e.question.length + e.answer.length + e.followups.reduce((n, f) => n + f.question.length + f.answer.length, 0)),
    );
    for (const mode of s.questions) {
      const full: Acc = { answers: [], correct: 0, n: 0, kvBytes: 0, kept: 0, decodeMs: [], compressMs: [] };
      const acc: Acc[] = settings.map(() => ({ answers: [], correct: 0, n: 0, kvBytes: 0, kept: 0, decodeMs: [], compressMs: [] }));
      // Room for the prefilled sequence and one fork at a time.
      using cache: KVCache = model.createCache({ dtype: s.dtype, contextTokens: 2 * longest + 64 });
      for (const e of encoded) {
        // "after": the context is compressed, then the whole question fed. "before": all but the
        // question's last token is prefilled and compressed, then that token is fed.
        const prefix = mode === "after" ? e.context : [...e.context, ...e.question.slice(0, -1)];
        const suffix = mode === "after" ? e.question : e.question.slice(-1);
        using seq = cache.createSequence();
        // H2O ranks by the attention mass accumulated while the context was attended (forks keep it)
        if (s.scorers.includes("h2o")) seq.accumulateAttention(true);
        // expected-attention predicts from the statistics of this prefix's own queries (as `lukv eval`)
        const stats = s.scorers.includes("expected-attention") ? new QueryStatistics({ layers, queryHeads: heads, headDim }) : undefined;
        model.forward(seq, prefix, { logits: "none", queryStatistics: stats });
        // Greedy answers to the question, then to each follow-up after its given prompt (the last
        // token generate() chose is fed with that prompt); right only when every part is.
        const answer = (fork: Sequence, a: Acc) => {
          let right = true;
          let text = "";
          let row = model.forward(fork, suffix);
          let pending: number[] = [];
          for (const [i, part] of [{ question: [], answer: e.answer }, ...e.followups].entries()) {
            if (i > 0) {
              row = model.forward(fork, [...pending, ...part.question]);
              text += tok.decode(part.question);
            }
            const gen = model.generate(fork, row, part.answer.length, { stopToken: -1 });
            right &&= gen.tokens.length === part.answer.length && gen.tokens.every((t, j) => t === part.answer[j]);
            a.decodeMs.push(...gen.stepMs);
            text += tok.decode(gen.tokens);
            pending = gen.tokens.slice(-1);
          }
          a.n++;
          if (right) a.correct++;
          a.answers.push(text);
        };
        {
          using f = seq.fork();
          const kept = f.lengths().reduce((x, y) => x + y, 0);
          full.kept += kept;
          full.kvBytes += kept * perToken;
          answer(f, full);
        }
        progress();
        settings.forEach(({ scorer, allocation, ratio }, i) => {
          using f = seq.fork();
          const expectedAttention =
            scorer === "expected-attention" && stats ? { statistics: stats, rope: { theta: ropeTheta }, ...s.expectedAttention } : undefined;
          const report = f.compress({
            ratio,
            scorer,
            allocation,
            profile: allocation === "lukv" ? profiles.get(scorer) : undefined,
            expectedAttention,
            ...recallScorerOptions(s, scorer),
          });
          acc[i].compressMs.push(report.ms);
          acc[i].kept += report.total;
          acc[i].kvBytes += report.total * perToken;
          answer(f, acc[i]);
          progress();
        });
      }
      const scores = (a: Acc): RecallScores => ({
        correct: a.correct,
        instances: a.n,
        accuracy: a.n ? a.correct / a.n : NaN,
        kvBytes: a.n ? a.kvBytes / a.n : NaN,
        keptPerHead: a.n ? a.kept / a.n / (layers * kvHeads) : NaN,
        decodeMs: median(a.decodeMs),
        compressMs: a.compressMs.length ? median(a.compressMs) : 0,
      });
      rows.push({ task, question: mode, scorer: "full", allocation: "full", ratio: 0, ...scores(full), answers: full.answers });
      const pooling = (scorer: ScorerName) => (s.pooling ? { pooling: poolingLabel(scorer, recallScorerOptions(s, scorer)) } : {});
      settings.forEach((x, i) => rows.push({ task, question: mode, ...x, ...pooling(x.scorer), ...scores(acc[i]), answers: acc[i].answers }));
    }
  }
  return { rows, contextTokens };
}

function pct(x: number): string {
  return Number.isNaN(x) ? "-" : `${(100 * x).toFixed(1)}%`;
}

/**
 * The table for one question mode: a row per setting (full cache first), a column of accuracy
 * per task (with the instances behind it), then KV memory and decode latency (mean over tasks).
 */
export function formatRecallTable(rows: RecallRow[], mode: QuestionMode): string {
  const mine = rows.filter((r) => r.question === mode);
  const tasks = [...new Set(mine.map((r) => r.task))];
  const keys = [...new Set(mine.map((r) => `${r.scorer}|${r.allocation}|${r.ratio}`))];
  const head = ["scorer", "ratio", "allocation", ...tasks.map((t) => `${t} (n=${mine.find((r) => r.task === t)!.instances})`), "KV memory", "decode ms"];
  const lines = keys.map((k) => {
    const group = mine.filter((r) => `${r.scorer}|${r.allocation}|${r.ratio}` === k);
    const r0 = group[0];
    const mean = (f: (r: RecallRow) => number) => group.reduce((a, r) => a + f(r), 0) / group.length;
    return [
      r0.scorer === "full" ? "full cache" : r0.pooling ? `${r0.scorer} (pooling ${r0.pooling})` : r0.scorer,
      r0.scorer === "full" ? "-" : ratioLabel(r0.ratio),
      r0.scorer === "full" ? "-" : r0.allocation,
      ...tasks.map((t) => pct(group.find((r) => r.task === t)?.accuracy ?? NaN)),
      `${(mean((r) => r.kvBytes) / 1024).toFixed(0)} KiB`,
      mean((r) => r.decodeMs).toFixed(2),
    ];
  });
  const widths = head.map((h, c) => Math.max(h.length, ...lines.map((l) => l[c].length)));
  const fmt = (l: string[]) => "| " + l.map((v, c) => (c < 3 ? v.padEnd(widths[c]) : v.padStart(widths[c]))).join(" | ") + " |";
  return [fmt(head), "|" + widths.map((w, c) => (c < 3 ? "-".repeat(w + 2) : "-".repeat(w + 1) + ":")).join("|") + "|", ...lines.map(fmt)].join("\n");
}

/**
 * Per task at `ratio`: the full-cache accuracy, the best setting's accuracy (and its share of the
 * full cache's), and lukv against uniform and adakv for each scorer.
 */
export function formatRecallSummary(rows: RecallRow[], mode: QuestionMode, ratio: number): string {
  const mine = rows.filter((r) => r.question === mode);
  const out: string[] = [`question ${mode}, ratio ${ratio}:`];
  for (const task of [...new Set(mine.map((r) => r.task))]) {
    const full = mine.find((r) => r.task === task && r.scorer === "full")!;
    const at = mine.filter((r) => r.task === task && r.scorer !== "full" && Math.abs(r.ratio - ratio) < 1e-9);
    if (at.length === 0) continue;
    const best = at.reduce((a, b) => (b.accuracy > a.accuracy ? b : a));
    const vs = [...new Set(at.map((r) => r.scorer))]
      .map((sc) => {
        const get = (al: string) => at.find((r) => r.scorer === sc && r.allocation === al);
        const parts = ["lukv", "uniform", "adakv"].map((al) => (get(al) ? `${al} ${pct(get(al)!.accuracy)}` : "")).filter(Boolean);
        return `${sc}: ${parts.join(", ")}`;
      })
      .join("; ");
    out.push(
      `  ${task} (n=${full.instances}): full ${pct(full.accuracy)}; best ${best.scorer}/${best.allocation} ${pct(best.accuracy)} ` +
        `(${full.accuracy > 0 ? pct(best.accuracy / full.accuracy) : "-"} of full); ${vs}`,
    );
  }
  return out.join("\n");
}

/** The model directory's profile for `scorer` with the settings' pooling (see recallProfileName). */
function recallProfile(dir: string, s: RecallSettings, scorer: ScorerName): { profile: Profile; file: string } | undefined {
  const name = recallProfileName(s, scorer);
  if (name === `profile-${scorer}.json`) return modelProfile(dir, scorer);
  const file = path.join(dir, name);
  return fs.existsSync(file) ? { profile: loadProfile(file), file } : undefined;
}

export async function recallEvalCommand(argv: string[], io: CliIO, resolveModel: (v: string | true | undefined) => string): Promise<number> {
  let s: RecallSettings, dir: string, out: string, outGiven: boolean, options: Map<string, string | true>;
  try {
    const spec = {
      values: ["task", "scorers", "allocations", "ratios", "question", "instances", "dtype", "out", "model", "ea-epsilon", "ea-future-positions", "pooling", "kernel"],
      flags: ["calibrate", "save-profiles"],
    };
    const args = parseArgs(argv, spec);
    options = args.options;
    noPositionals(args);
    for (const k of options.keys()) if (![...spec.values, ...spec.flags].includes(k)) throw new UsageError(`unknown option --${k} (with --task)`);
    const taskArg = options.get("task");
    const tasks = taskArg === "all" ? [...RECALL_TASKS] : list(taskArg, RECALL_TASKS, RECALL_TASKS, "task");
    const ratios = ratiosOption(options, [0.5, 0.8, 0.9, 0.95]);
    const dtype = dtypeOption(options);
    const instances = countOption(options, "instances", Number.MAX_SAFE_INTEGER, 1);
    const expectedAttention: NonNullable<RecallSettings["expectedAttention"]> = {};
    const eps = options.get("ea-epsilon");
    if (eps !== undefined) {
      const x = decimalText(eps);
      // The scorer's own bounds, checked before the model loads.
      if (!(x >= 0 && x <= FLOAT32_MAX)) throw new UsageError(`--ea-epsilon expects a number between 0 and ${FLOAT32_MAX} (the float32 range), got ${String(eps)}`);
      expectedAttention.epsilon = x;
    }
    if (options.has("ea-future-positions")) expectedAttention.futurePositions = countBetween(options, "ea-future-positions", 512, 1, MOST_FUTURE_POSITIONS);
    let pooling: RecallSettings["pooling"];
    const p = options.get("pooling");
    if (p !== undefined) {
      if (typeof p !== "string" || !(POOLINGS as readonly string[]).includes(p)) throw new UsageError(`--pooling expects one of ${POOLINGS.join(", ")}, got ${String(p)}`);
      pooling = { pooling: p as PoolingName, kernel: countOption(options, "kernel", 7, 1) };
      if (pooling.kernel % 2 === 0 || pooling.kernel > 1025) throw new UsageError(`--kernel expects an odd number between 1 and 1025, got ${pooling.kernel}`);
    } else if (options.has("kernel")) throw new UsageError("--kernel needs --pooling");
    s = {
      tasks,
      scorers: list(options.get("scorers"), SCORERS, SCORERS, "scorers"),
      allocations: list(options.get("allocations"), ALLOCATIONS, ALLOCATIONS, "allocations"),
      ratios,
      questions: list(options.get("question"), QUESTION_MODES, QUESTION_MODES, "question"),
      instances,
      dtype,
      ...(Object.keys(expectedAttention).length > 0 ? { expectedAttention } : {}),
      ...(pooling ? { pooling } : {}),
    };
    dir = resolveModel(options.get("model") ?? "recall-lm");
    out = outputOption(options.get("out"), path.join("bench", "results", "eval-recall.json"));
    outGiven = options.has("out");
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`lukv eval: ${e.message}\n\n${RECALL_USAGE}`);
      return 2;
    }
    throw e;
  }
  const t0 = performance.now();
  const model = loadTinyLM(dir);
  const notes: string[] = [];
  const note = (x: string) => {
    notes.push(x);
    io.out(`note: ${x}`);
  };
  io.out(
    `lukv eval: ${s.tasks.join(", ")}; ${s.scorers.join(", ")} x ${s.allocations.join(", ")} x ratios ${s.ratios.join(", ")}; ` +
      `question ${s.questions.join(" and ")} compression; cache ${s.dtype}`,
  );
  const profiles = new Map<ScorerName, Profile>();
  if (s.allocations.includes("lukv")) {
    const missing: ScorerName[] = [];
    // A profile of the model directory was calibrated with expected-attention's defaults.
    const ownSettings = (scorer: ScorerName) => scorer === "expected-attention" && s.expectedAttention !== undefined;
    for (const scorer of s.scorers) {
      const found = options.get("calibrate") === true || ownSettings(scorer) ? undefined : recallProfile(dir, s, scorer);
      const want = poolingLabel(scorer, recallScorerOptions(s, scorer));
      const has = found && poolingLabel(scorer, found.profile.meta.scorerOptions);
      if (found && has !== want) {
        note(`${found.file} was calibrated with pooling ${has}, not ${want}: not used`);
        missing.push(scorer);
      } else if (found) {
        profiles.set(scorer, found.profile);
        note(`lukv with ${scorer} uses ${found.file}`);
      } else missing.push(scorer);
    }
    if (missing.length > 0) {
      const calibration = RECALL_TASKS.flatMap((t) => recallInstances(dir, "calibration", t));
      const tc = performance.now();
      const bar = progressBar("calibrate", calibration.length);
      const made = calibrateRecall(model, calibration, missing, "recall-lm calibration/*.json", () => bar.tick(), s.expectedAttention, s.pooling);
      bar.done();
      for (const [scorer, p] of made) {
        profiles.set(scorer, p);
        if (options.get("save-profiles") === true && ownSettings(scorer)) note(`not writing the ${scorer} profile: it is for the --ea settings`);
        else if (options.get("save-profiles") === true) {
          const file = path.join(dir, recallProfileName(s, scorer));
          writingTo(file, () => saveProfile(p, file, { format: "json" }));
          note(`wrote ${file}`);
        }
      }
      note(
        `lukv with ${missing.join(", ")} uses a profile calibrated now on ${calibration.length} calibration instances ` +
          `(all tasks, disjoint from the held-out ones; ${((performance.now() - tc) / 1000).toFixed(0)} s)`,
      );
    }
  }
  let bar: ReturnType<typeof progressBar> | undefined;
  const perSetting = s.scorers.reduce((a, sc) => a + s.ratios.length * s.allocations.filter((al) => al !== "lukv" || profiles.has(sc)).length, 0) + 1;
  const counts = s.tasks.map((t) => Math.min(s.instances, recallInstances(dir, "heldout", t).length));
  const total = counts.reduce((a, b) => a + b, 0) * s.questions.length * perSetting;
  const r = runRecallEval(model, dir, s, profiles, () => (bar ??= progressBar("eval", total)).tick());
  bar?.done();
  const seconds = (performance.now() - t0) / 1000;
  const result: RecallResult = { model: dir, settings: s, ...r, notes, seconds };
  for (const mode of s.questions) {
    io.out(`\nquestion ${mode} compression:\n`);
    io.out(formatRecallTable(result.rows, mode));
  }
  io.out("");
  for (const mode of s.questions) for (const ratio of s.ratios.filter((x) => Math.abs(x - 0.8) < 1e-9)) io.out(formatRecallSummary(result.rows, mode, ratio));
  io.out(`\n${seconds.toFixed(0)} s`);
  writeTextWhole(out, JSON.stringify({ command: ["lukv", "eval", ...argv].join(" "), ...result }, null, 1) + "\n", !outGiven);
  io.out(`results written to ${out}`);
  return 0;
}
