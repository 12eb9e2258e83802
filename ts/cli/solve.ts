// `lukv solve`: the LU-KV budget solver on loss curves from a JSON file.
import { readFileSync } from "node:fs";
import { solveBudgetsDetailed, solveBudgetsExact, budgetLoss, type BudgetOptions } from "../budget";
import { budgetProblem, checkTotal } from "../budget/problem";
import { EXACT_MAX_STEPS, exactSteps } from "../budget/exact";
import { InvalidArgumentError, jsonPreview, quoted } from "../errors";
import { integerText, isSystemError, parseCommandArgs, readingFrom, UsageError, type CommandIO } from "./io";

const USAGE = `usage: lukv solve CURVES.json --keep N [--exact] [--min-keep N] [--max-keep N] [--json]

Splits N kept tokens across heads to minimise the summed loss (LU-KV greedy on
convex hulls; --exact: the optimum of the original curves by dynamic programming).

CURVES.json  an array with one curve per head, curve[n] = loss after evicting n
             tokens (n = 0..T), or { "curves": [...], "minKeep": n | [...],
             "maxKeep": n | [...] }
--keep N     tokens to keep over all heads
--min-keep N fewest tokens per head (overrides the file; default 0)
--max-keep N most tokens per head (overrides the file; default the head's length)
--json       print the result as JSON`;

class FileError extends Error {}

function readCurves(path: string): { curves: number[][]; minKeep?: number | number[]; maxKeep?: number | number[] } {
  let doc: unknown;
  try {
    doc = JSON.parse(readingFrom(path, () => readFileSync(path, "utf8")));
  } catch (e) {
    if (isSystemError(e)) throw e;
    throw new FileError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
  const obj = doc !== null && typeof doc === "object" && !Array.isArray(doc) ? (doc as Record<string, unknown>) : undefined;
  const curves = obj ? obj.curves : doc;
  if (!Array.isArray(curves)) {
    throw new FileError(`${path} must hold an array of curves or { "curves": [...] }`);
  }
  curves.forEach((c, h) => {
    if (!Array.isArray(c) || c.length === 0 || !c.every((y) => typeof y === "number" && Number.isFinite(y))) {
      throw new FileError(`${path}: curves[${h}] must be a non-empty array of finite numbers (loss after evicting 0..T tokens)`);
    }
  });
  const count = (x: unknown) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
  const bound = (name: "minKeep" | "maxKeep") => {
    const v = obj?.[name];
    if (v === undefined || count(v) || (Array.isArray(v) && v.length === curves.length && v.every(count))) return v as number | number[] | undefined;
    throw new FileError(`${path}: "${name}" must be a non-negative integer or an array of ${curves.length} of them (one per head), got ${jsonPreview(v)}`);
  };
  return { curves: curves as number[][], minKeep: bound("minKeep"), maxKeep: bound("maxKeep") };
}

function count(flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = integerText(text);
  if (!Number.isSafeInteger(n) || n < 0) throw new UsageError(`${flag} must be a non-negative integer, got ${quoted(text)}`);
  return n;
}

function num(x: number): string {
  return Number.isInteger(x) ? String(x) : x.toPrecision(6);
}

async function solve(argv: string[], io: CommandIO): Promise<number> {
  const { strings, flags, positionals } = parseCommandArgs(argv, ["keep", "min-keep", "max-keep"], ["exact", "json"]);
  if (positionals.length !== 1) throw new UsageError(positionals.length === 0 ? "CURVES.json is missing" : `one CURVES.json expected, got ${positionals.length}`);
  const total = count("--keep", strings.keep);
  if (total === undefined) throw new UsageError("--keep N is required");
  const file = readCurves(positionals[0]);
  const options: BudgetOptions = {
    minKeep: count("--min-keep", strings["min-keep"]) ?? file.minKeep,
    maxKeep: count("--max-keep", strings["max-keep"]) ?? file.maxKeep,
  };
  const { curves } = file;
  // What the solvers find wrong with the curves themselves (a slope past the float64 range) is the file's.
  const fromFile = <T>(run: () => T): T => {
    try {
      return run();
    } catch (e) {
      throw e instanceof InvalidArgumentError ? new FileError(`${positionals[0]}: ${e.message}`) : e;
    }
  };
  const problem = fromFile(() => budgetProblem(curves, options));
  // The solver's own check, naming the option (it says totalKeep): an infeasible --keep is exit 2.
  checkTotal(problem, total, "--keep");
  if (flags.exact) {
    // solveBudgetsExact's own limit, in the command's words (it names options.maxSteps and solveBudgets).
    const steps = exactSteps(problem, total);
    if (steps > EXACT_MAX_STEPS)
      throw new InvalidArgumentError(`--exact would take ${steps} steps, more than its limit of ${EXACT_MAX_STEPS}: leave out --exact for the greedy's solution`);
  }
  const greedy = fromFile(() => solveBudgetsDetailed(curves, total, options));
  const exact = flags.exact ? fromFile(() => solveBudgetsExact(curves, total, { ...options, maxSteps: EXACT_MAX_STEPS })) : undefined;
  const keep = exact ?? greedy.keep;
  const exactLoss = exact ? fromFile(() => budgetLoss(curves, exact)) : undefined;
  const lossOf = (h: number) => curves[h][curves[h].length - 1 - keep[h]];
  // Finite losses whose sums pass the float64 range would print as null (JSON) or Infinity.
  if (![greedy.trueLoss, greedy.relaxedLoss, greedy.gapBound, exactLoss ?? 0].every(Number.isFinite))
    throw new FileError(`${positionals[0]}: the losses are too large to sum in float64; scale the curves down`);

  if (flags.json) {
    const result: Record<string, unknown> = {
      solver: exact ? "exact" : "greedy",
      keep: Array.from(keep),
      loss: exact ? exactLoss : greedy.trueLoss,
      headLoss: curves.map((_, h) => lossOf(h)),
      greedy: { keep: Array.from(greedy.keep), trueLoss: greedy.trueLoss, relaxedLoss: greedy.relaxedLoss, gapBound: greedy.gapBound },
    };
    io.out(JSON.stringify(result, null, 2));
    return 0;
  }
  const tokens = curves.reduce((s, c) => s + c.length - 1, 0);
  const lines = [`${exact ? "exact optimum (dynamic programming)" : "LU-KV greedy on convex hulls"}: keep ${total} of ${tokens} tokens over ${curves.length} heads`];
  lines.push(`  head  length    keep  loss`);
  curves.forEach((c, h) => lines.push(`  ${String(h).padStart(4)}  ${String(c.length - 1).padStart(6)}  ${String(keep[h]).padStart(6)}  ${num(lossOf(h))}`));
  lines.push(
    `greedy loss ${num(greedy.trueLoss)} (hull loss ${num(greedy.relaxedLoss)}, hull-gap bound ${num(greedy.gapBound)}:` +
      ` the optimum lies in [${num(greedy.trueLoss - greedy.gapBound)}, ${num(greedy.trueLoss)}])`,
  );
  if (exactLoss !== undefined) lines.push(`exact loss ${num(exactLoss)} (greedy − exact = ${num(greedy.trueLoss - exactLoss)})`);
  io.out(lines.join("\n"));
  return 0;
}

/**
 * `lukv solve CURVES.json --keep N [--exact] [--min-keep N] [--max-keep N] [--json]`.
 * @param argv the arguments after `solve`.
 * @returns the exit code: 0 done, 1 the file could not be read or is malformed, 2 bad usage, an infeasible --keep or an --exact too large to run.
 */
export async function solveCommand(argv: string[], io: CommandIO): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h") || argv[0] === "help") {
    io.out(USAGE);
    return 0;
  }
  try {
    return await solve(argv, io);
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`lukv solve: ${e.message}\n\n${USAGE}`);
      return 2;
    }
    if (e instanceof InvalidArgumentError) {
      io.err(`lukv solve: ${e.message}`);
      return 2;
    }
    if (e instanceof FileError || isSystemError(e)) {
      io.err(`lukv solve: ${(e as Error).message}`);
      return 1;
    }
    throw e;
  }
}
