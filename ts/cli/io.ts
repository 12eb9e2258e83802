import * as fs from "node:fs";
import * as path from "node:path";
import { parseArgs as parseNodeArgs } from "node:util";
import type { DType } from "../dtype";
import { quoted } from "../errors";
import { writeFileReplacing } from "../sequence-file";

/** Where a command writes; tests pass their own. */
export interface CliIO {
  out: (s: string) => void;
  err: (s: string) => void;
  /** Whether `out` is a terminal (colour output). Default false. */
  isTTY?: boolean;
}

/** The same, by the name the subcommands use. */
export type CommandIO = CliIO;

export const processIO: CliIO = {
  out: (s) => process.stdout.write(s.endsWith("\n") ? s : s + "\n"),
  err: (s) => process.stderr.write(s.endsWith("\n") ? s : s + "\n"),
  isTTY: process.stdout.isTTY === true,
};

/** The options a command knows: those that take a value (`--name V`, `--name=V`) and flags (`--name`). */
export interface OptionSpec {
  values: readonly string[];
  flags: readonly string[];
}

/** Parsed `--name value` and `--flag` options, and the positional arguments. */
export interface Args {
  positional: string[];
  options: Map<string, string | true>;
  /** For each positional argument, the flag written just before it, if any. */
  afterFlag: (string | undefined)[];
}

/**
 * Reads `--name value`, `--name=value` and `--flag` options; the rest are positional. A known
 * value option must have a non-empty value (the next argument unless that is another `--option`),
 * and a flag never takes one (the word after it is positional). Unknown names are kept, with the
 * next word as value when there is one, for the command to report.
 * @throws UsageError for a value option without its value or a flag given one.
 */
export function parseArgs(argv: string[], spec: OptionSpec): Args {
  const positional: string[] = [];
  const afterFlag: (string | undefined)[] = [];
  const options = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) {
      positional.push(a);
      const before = argv[i - 1];
      afterFlag.push(i > 0 && before.startsWith("--") && spec.flags.includes(before.slice(2)) ? before.slice(2) : undefined);
      continue;
    }
    const { name, inline } = splitOption(a);
    const next = argv[i + 1];
    if (spec.flags.includes(name)) options.set(name, flagValue(name, inline));
    else if (spec.values.includes(name)) {
      const { value, last } = optionValue(argv, i, name, inline);
      if (value === "") throw new UsageError(`--${name} expects a value, got ""`);
      options.set(name, value);
      i = last;
    } else if (inline !== undefined) options.set(name, inline);
    else if (next !== undefined && !next.startsWith("--")) options.set(name, argv[++i]);
    else options.set(name, true);
  }
  return { positional, options, afterFlag };
}

/** An argument `--name` or `--name=value`: the name, and the text after `=` when there is one. */
export function splitOption(a: string): { name: string; inline?: string } {
  const eq = a.indexOf("=");
  return eq > 0 ? { name: a.slice(2, eq), inline: a.slice(eq + 1) } : { name: a.slice(2) };
}

/** A flag's value: `true`. @throws UsageError when it was written `--name=value`. */
export function flagValue(name: string, inline: string | undefined): true {
  if (inline !== undefined) throw new UsageError(`--${name} takes no value, got ${quoted(inline)}`);
  return true;
}

/**
 * The value of the option `name` at argv[i]: the text after `=` (`inline`), or else the next
 * argument; `last` is the index of the last argument it used.
 * @throws UsageError when there is no next argument or it is another `--option`.
 */
export function optionValue(argv: readonly string[], i: number, name: string, inline: string | undefined): { value: string; last: number } {
  if (inline !== undefined) return { value: inline, last: i };
  const next = argv[i + 1];
  if (next === undefined) throw new UsageError(`--${name} expects a value`);
  if (next.startsWith("--")) throw new UsageError(`--${name} expects a value, got the option ${next}`);
  return { value: next, last: i + 1 };
}

/** `--help` or `-h` anywhere on the command line. */
export function wantsHelp(argv: string[]): boolean {
  return argv.includes("--help") || argv.includes("-h");
}

/** @throws UsageError naming the first positional argument, for commands that take none. */
export function noPositionals(args: Args): void {
  if (args.positional.length === 0) return;
  const flag = args.afterFlag[0];
  throw new UsageError(`unexpected argument ${quoted(args.positional[0])}${flag ? ` (--${flag} takes no value)` : ""}`);
}

/** A text progress bar on stderr when it is a terminal; silent otherwise. */
export function progressBar(label: string, total: number): { tick: (n?: number) => void; done: () => void } {
  const tty = process.stderr.isTTY === true;
  let value = 0;
  const draw = () => {
    if (!tty) return;
    const width = 30;
    const filled = Math.round((value / Math.max(total, 1)) * width);
    process.stderr.write(`\r${label} [${"#".repeat(filled)}${".".repeat(width - filled)}] ${value}/${total}`);
  };
  return {
    tick(n = 1) {
      value = Math.min(total, value + n);
      draw();
    },
    done() {
      if (tty) process.stderr.write("\n");
    },
  };
}

/** Bad command-line usage: reported with the usage text and exit code 2. */
export class UsageError extends Error {}

/**
 * The items of a comma-separated option value; an empty item (as in "a,,b" or "a,") is a typo, not
 * a default, and an item given twice would run and print the same work twice.
 */
function listItems(v: string | true, name: string, expects: string): string[] {
  const items = String(v).split(",").map((x) => x.trim());
  if (v === true || items.some((x) => x === "")) throw new UsageError(`--${name} expects ${expects}, got ${quoted(v === true ? "" : v)} (an empty item)`);
  const twice = items.find((x, i) => items.indexOf(x) !== i);
  if (twice !== undefined) throw new UsageError(`--${name} lists ${twice} twice`);
  return items;
}

/** --name a,b,c: names from `allowed` (fallback when absent). */
export function listOption<T extends string>(v: string | true | undefined, fallback: readonly T[], allowed: readonly T[], name: string): T[] {
  if (v === undefined) return [...fallback];
  const expects = `a comma-separated list of ${allowed.join(", ")}`;
  const items = listItems(v, name, expects) as T[];
  const bad = items.find((x) => !allowed.includes(x));
  if (bad !== undefined) throw new UsageError(`--${name} expects ${expects}, got ${quoted(bad)}`);
  return items;
}

/**
 * A whole number written in decimal digits (an optional leading +), or NaN. Number() alone also
 * reads "1e1", "0x3", "0b1" and " 3 " as integers, and "" as 0.
 */
export function integerText(text: string | true | undefined): number {
  return typeof text === "string" && /^\+?[0-9]+$/.test(text) ? Number(text) : NaN;
}

/** A number written in decimal (digits, an optional point and exponent), or NaN; see integerText. */
export function decimalText(text: string | true | undefined): number {
  return typeof text === "string" && /^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$/.test(text) ? Number(text) : NaN;
}

/** --name N: an integer in [min, max] (fallback when absent), refused as "--name expects <expects>". */
function integerOption(options: Map<string, string | true>, name: string, fallback: number, min: number, max: number, expects: string): number {
  const v = options.get(name);
  if (v === undefined) return fallback;
  const n = integerText(v);
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${name} expects ${expects}, got ${String(v)}`);
  return n;
}

/** --name N: an integer between min and max (fallback when absent). */
export function countBetween(options: Map<string, string | true>, name: string, fallback: number, min: number, max: number): number {
  return integerOption(options, name, fallback, min, max, `an integer between ${min} and ${max}`);
}

/** --name N: an integer >= min (fallback when absent); `why` explains the minimum. */
export function countOption(options: Map<string, string | true>, name: string, fallback: number, min: number, why?: string): number {
  return integerOption(options, name, fallback, min, Number.MAX_SAFE_INTEGER, `an integer >= ${min}${why ? ` (${why})` : ""}`);
}

/** A ratio in a table: two decimals, or as many as it was given with (0.501 is not 0.50). */
export function ratioLabel(ratio: number): string {
  const two = ratio.toFixed(2);
  return Number(two) === ratio ? two : String(ratio);
}

/** --ratios a,b,c: eviction ratios in [0, 1) (fallback when absent). */
export function ratiosOption(options: Map<string, string | true>, fallback: number[]): number[] {
  const v = options.get("ratios");
  if (v === undefined) return [...fallback];
  const expects = "comma-separated numbers in [0, 1)";
  const items = listItems(v, "ratios", expects);
  const ratios = items.map(decimalText);
  const bad = ratios.findIndex((x) => !(x >= 0 && x < 1));
  if (bad >= 0) throw new UsageError(`--ratios expects ${expects}, got ${quoted(items[bad])}`);
  // The same ratio written two ways ("0.5,0.50") is the same setting too.
  const twice = ratios.find((x, i) => ratios.indexOf(x) !== i);
  if (twice !== undefined) throw new UsageError(`--ratios lists ${twice} twice`);
  return ratios;
}

/**
 * --out FILE, checked before the work whose results it records: a given FILE must be in an existing,
 * writable directory (a mistyped path is not created); the default's directory must be one that
 * can be created, and is created only when the results are written (writeTextWhole).
 */
export function outputOption(v: string | true | undefined, fallback: string): string {
  const file = v === undefined ? fallback : String(v);
  const bad = (why: string) =>
    new UsageError(
      v === undefined
        ? `--out defaults to ${quoted(file)}, which cannot be written here (${why}): give --out FILE`
        : `--out expects a file in an existing, writable directory, got ${quoted(file)} (${why})`,
    );
  const statOf = (p: string): fs.Stats | undefined => {
    try {
      return fs.statSync(p);
    } catch {
      return undefined;
    }
  };
  let dir = path.dirname(path.resolve(file));
  // The default's missing folders are made when the results are written: the nearest existing one must take them.
  if (v === undefined) while (statOf(dir) === undefined && path.dirname(dir) !== dir) dir = path.dirname(dir);
  const stat = statOf(dir);
  if (stat === undefined) throw bad(`${dir} does not exist`);
  if (!stat.isDirectory()) throw bad(`${dir} is not a directory`);
  try {
    fs.accessSync(dir, fs.constants.W_OK);
  } catch {
    throw bad(`${dir} is not writable`);
  }
  if (statOf(file)?.isDirectory()) throw bad("it is a directory");
  return file;
}

/**
 * Writes `text` to `file` (results, a plot) whole or not at all (a temporary file renamed into
 * place: a failed write leaves an earlier file as it was), creating its directory when `create`
 * (a default --out path); an error names `file`.
 */
export function writeTextWhole(file: string, text: string, create: boolean): void {
  writingTo(file, () => {
    if (create) fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    writeFileReplacing(file, new TextEncoder().encode(text));
  });
}

/** --dtype: a cache dtype (f32 when absent). */
export function dtypeOption(options: Map<string, string | true>): DType {
  const dtype = (options.get("dtype") ?? "f32") as DType;
  if (!["f32", "f16", "bf16"].includes(dtype)) throw new UsageError(`--dtype expects f32, f16 or bf16, got ${String(dtype)}`);
  return dtype;
}

/**
 * Runs `write`, which writes `file` (perhaps through a temporary file beside it); a file-system
 * error it throws is replaced by one that names `file` and why it could not be written (a missing
 * or non-directory folder named), keeping the error's code.
 */
export function writingTo<T>(file: string, write: () => T): T {
  try {
    return write();
  } catch (e) {
    if (!isSystemError(e)) throw e;
    let why = systemWhy(e);
    const dir = path.dirname(path.resolve(file));
    let stat: fs.Stats | undefined;
    try {
      stat = fs.statSync(dir);
    } catch {
      stat = undefined;
    }
    if (stat === undefined) why += ` (${dir} does not exist)`;
    else if (!stat.isDirectory()) why += ` (${dir} is not a directory)`;
    throw Object.assign(new Error(`cannot write ${file}: ${why}`), { code: e.code, errno: e.errno, syscall: e.syscall, path: file });
  }
}

/**
 * Runs `read`, which reads `file`; a file-system error it throws is replaced by one that names
 * `file` (Node's EISDIR message names no path), keeping the error's code.
 */
export function readingFrom<T>(file: string, read: () => T): T {
  try {
    return read();
  } catch (e) {
    if (!isSystemError(e)) throw e;
    const why = systemWhy(e);
    throw Object.assign(new Error(`cannot read ${file}: ${why}`), { code: e.code, errno: e.errno, syscall: e.syscall, path: file });
  }
}

/** Node's message of a file-system error without the call and path it names ("ENOENT: no such file or directory, open '….tmp'", "EFBIG: file too large, write"). */
function systemWhy(e: NodeJS.ErrnoException): string {
  return e.message.replace(/, [a-z]+( '.*)?$/s, "");
}

/** A file-system error (ENOENT, EACCES, ...); checked by shape since it may come from another realm. */
export function isSystemError(e: unknown): e is NodeJS.ErrnoException {
  return typeof e === "object" && e !== null && typeof (e as { code?: unknown }).code === "string" && typeof (e as { syscall?: unknown }).syscall === "string";
}

/** Parsed command line: string options, boolean flags and positionals. */
export interface ParsedArgs {
  strings: Record<string, string | undefined>;
  flags: Record<string, boolean>;
  positionals: string[];
}

/**
 * Strict parsing (unknown options are usage errors) with Node's parseArgs. A negative number after
 * an option that takes a value (`--keep -1`, `--ratio -0.1`) is that option's value, for the
 * command to check its range (Node's parser would call it ambiguous); such an option last, or
 * followed by another `--option`, is refused as parseArgs refuses it.
 */
export function parseCommandArgs(argv: string[], strings: string[], flags: string[] = []): ParsedArgs {
  const options: Record<string, { type: "string" | "boolean" }> = {};
  for (const n of strings) options[n] = { type: "string" };
  for (const n of flags) options[n] = { type: "boolean" };
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], next = argv[i + 1];
    if (a === "--") {
      args.push(...argv.slice(i)); // the rest are positional
      break;
    }
    if (a.startsWith("--") && strings.includes(a.slice(2))) {
      // As parseArgs words it for the other commands.
      if (next === undefined) throw new UsageError(`${a} expects a value`);
      if (next.startsWith("--")) throw new UsageError(`${a} expects a value, got the option ${next}`);
      if (/^-[0-9.]/.test(next)) {
        args.push(`${a}=${next}`);
        i++;
        continue;
      }
    }
    args.push(a);
  }
  try {
    const { values, positionals } = parseNodeArgs({ args, options, allowPositionals: true, strict: true });
    const out: ParsedArgs = { strings: {}, flags: {}, positionals };
    for (const n of strings) out.strings[n] = values[n] as string | undefined;
    for (const n of flags) out.flags[n] = values[n] === true;
    return out;
  } catch (e) {
    throw new UsageError((e as Error).message.split("\n")[0]);
  }
}
