import { parseArgs as parseNodeArgs } from "node:util";
import type { DType } from "../dtype";

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

/** Reads `--name value` and `--flag` options; the rest are positional. */
export function parseArgs(argv: string[]): { positional: string[]; options: Map<string, string | true> } {
  const positional: string[] = [];
  const options = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith("--")) {
      const eq = a.indexOf("=");
      if (eq > 0) options.set(a.slice(2, eq), a.slice(eq + 1));
      else if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) options.set(a.slice(2), argv[++i]);
      else options.set(a.slice(2), true);
    } else positional.push(a);
  }
  return { positional, options };
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

/** --name a,b,c: names from `allowed` (fallback when absent). */
export function listOption<T extends string>(v: string | true | undefined, fallback: readonly T[], allowed: readonly T[], name: string): T[] {
  if (v === undefined) return [...fallback];
  const items = String(v).split(",").filter(Boolean) as T[];
  const bad = items.filter((x) => !allowed.includes(x));
  if (v === true || items.length === 0 || bad.length > 0) throw new UsageError(`--${name} expects a comma-separated list of ${allowed.join(", ")}`);
  return items;
}

/** --name N: an integer >= min (fallback when absent). */
export function countOption(options: Map<string, string | true>, name: string, fallback: number, min: number): number {
  const v = options.get(name);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (v === true || !Number.isInteger(n) || n < min) throw new UsageError(`--${name} expects an integer >= ${min}, got ${String(v)}`);
  return n;
}

/** --ratios a,b,c: eviction ratios in [0, 1) (fallback when absent). */
export function ratiosOption(options: Map<string, string | true>, fallback: number[]): number[] {
  const v = options.get("ratios");
  const ratios = v === undefined ? [...fallback] : String(v).split(",").map(Number);
  if (v === true || ratios.some((x) => !(x >= 0 && x < 1))) throw new UsageError("--ratios expects comma-separated numbers in [0, 1)");
  return ratios;
}

/** --dtype: a cache dtype (f32 when absent). */
export function dtypeOption(options: Map<string, string | true>): DType {
  const dtype = (options.get("dtype") ?? "f32") as DType;
  if (!["f32", "f16", "bf16"].includes(dtype)) throw new UsageError(`--dtype expects f32, f16 or bf16, got ${String(dtype)}`);
  return dtype;
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

/** Strict parsing (unknown options are usage errors) with Node's parseArgs. */
export function parseCommandArgs(argv: string[], strings: string[], flags: string[] = []): ParsedArgs {
  const options: Record<string, { type: "string" | "boolean" }> = {};
  for (const n of strings) options[n] = { type: "string" };
  for (const n of flags) options[n] = { type: "boolean" };
  try {
    const { values, positionals } = parseNodeArgs({ args: argv, options, allowPositionals: true, strict: true });
    const out: ParsedArgs = { strings: {}, flags: {}, positionals };
    for (const n of strings) out.strings[n] = values[n] as string | undefined;
    for (const n of flags) out.flags[n] = values[n] === true;
    return out;
  } catch (e) {
    throw new UsageError((e as Error).message.split("\n")[0]);
  }
}
