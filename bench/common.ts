// Shared helpers for benchmarks: command-line options, timing, medians, table printing, JSON output.
import * as fs from "fs";
import * as path from "path";
import * as os from "os";
import { UsageError as OptionError, flagValue, optionValue, splitOption } from "../ts/cli/io";
import { backends } from "../ts/backends";

/** A whole number of at least `min` (and at most `max`, a multiple of `multipleOf` where given). */
export interface IntOption {
  kind: "int";
  default: number;
  min: number;
  max?: number;
  multipleOf?: number;
  /** Shown in --help instead of the default's value (for a default computed at run time). */
  defaultText?: string;
  help: string;
}
/** Comma-separated whole numbers, each as an IntOption's value. */
export interface IntListOption {
  kind: "ints";
  default: readonly number[];
  min: number;
  max?: number;
  multipleOf?: number;
  help: string;
}
/** One of `choices`. */
export interface ChoiceOption<C extends string = string> {
  kind: "choice";
  choices: readonly C[];
  default: C;
  help: string;
}
/** Comma-separated items, each one of `choices`. */
export interface ChoiceListOption<C extends string = string> {
  kind: "choices";
  choices: readonly C[];
  default: readonly C[];
  help: string;
}
/** Present or not; takes no value. */
export interface FlagOption {
  kind: "flag";
  help: string;
}
/** Any non-empty text (a path, for instance); "" as the default means none given. */
export interface TextOption {
  kind: "text";
  /** What the value names, in the usage line (`--base DIR`). */
  meta: string;
  default: string;
  help: string;
}
export type OptionSpec = IntOption | IntListOption | ChoiceOption | ChoiceListOption | FlagOption | TextOption;

// Builders for the declarations; NoInfer keeps a choice's literal types when the call sits in an options object.
export const intOption = (o: Omit<IntOption, "kind">): IntOption => ({ kind: "int", ...o });
export const intListOption = (o: Omit<IntListOption, "kind">): IntListOption => ({ kind: "ints", ...o });
export const choiceOption = <C extends string>(o: Omit<ChoiceOption<C>, "kind">): ChoiceOption<NoInfer<C>> => ({ kind: "choice", ...o });
export const choiceListOption = <C extends string>(o: Omit<ChoiceListOption<C>, "kind">): ChoiceListOption<NoInfer<C>> => ({ kind: "choices", ...o });
export const flagOption = (help: string): FlagOption => ({ kind: "flag", help });
export const textOption = (o: Omit<TextOption, "kind">): TextOption => ({ kind: "text", ...o });

type ValueOf<S> = S extends { kind: "int" } ? number
  : S extends { kind: "ints" } ? number[]
  : S extends ChoiceOption<infer C> ? C
  : S extends ChoiceListOption<infer C> ? C[]
  : S extends { kind: "flag" } ? boolean
  : S extends { kind: "text" } ? string
  : never;
export type OptionValues<T extends Record<string, OptionSpec>> = { [K in keyof T]: ValueOf<T[K]> };

/** What a benchmark script accepts: its file name, what it measures, and its options by name (without `--`). */
export interface BenchCommand<T extends Record<string, OptionSpec>> {
  script: string;
  /** The folder of the built script, for the usage line. Default: "dist/bench". */
  folder?: string;
  about: string;
  options: T;
  /** A check across options, after each has been checked alone: a message naming them, or undefined. */
  check?: (values: OptionValues<T>) => string | undefined;
}

/** A command line the declared options refuse; the message names the option. The CLI's error type. */
export { OptionError };

/** "of at least 1", "from 0 to 9", with ", a multiple of 512" (or "multiples" for a list) where required. */
function intRange(o: IntOption | IntListOption, plural: boolean): string {
  const range = o.max === undefined ? `of at least ${o.min}` : `from ${o.min} to ${o.max}`;
  return o.multipleOf ? `${range}, ${plural ? "multiples" : "a multiple"} of ${o.multipleOf}` : range;
}

/** Where a refused list item sits, when the list has more than that item. */
const inList = (item: string, list: string) => (item === list ? "" : ` in ${JSON.stringify(list)}`);

/** `text` as a value of option `name`; `list` is the whole value when `text` is one of its items. */
function intValue(name: string, o: IntOption | IntListOption, text: string, list?: string): number {
  const v = Number(text);
  if (/^-?\d+$/.test(text) && Number.isSafeInteger(v) && v >= o.min && (o.max === undefined || v <= o.max) && (!o.multipleOf || v % o.multipleOf === 0)) return v;
  if (list === undefined) throw new OptionError(`--${name} must be an integer ${intRange(o, false)}, got ${JSON.stringify(text)}`);
  throw new OptionError(`--${name} must be a comma-separated list of integers ${intRange(o, true)}, got ${JSON.stringify(text)}${inList(text, list)}`);
}

function choiceValue(name: string, choices: readonly string[], text: string, list?: string): string {
  if (choices.includes(text)) return text;
  if (list === undefined) throw new OptionError(`--${name} must be one of ${choices.join(", ")}, got ${JSON.stringify(text)}`);
  throw new OptionError(`--${name} must be a comma-separated list of ${choices.join(", ")}, got ${JSON.stringify(text)}${inList(text, list)}`);
}

/**
 * The option values of `argv` (`--name value` or `--name=value`; defaults for the rest), or "help" for
 * --help or -h. Throws OptionError for an unknown option, a missing or invalid value, an option given
 * twice, or an argument that is not an option.
 */
export function parseOptions<T extends Record<string, OptionSpec>>(command: BenchCommand<T>, argv: readonly string[]): OptionValues<T> | "help" {
  if (argv.some((a) => a === "--help" || a === "-h")) return "help";
  const specs: Record<string, OptionSpec> = command.options;
  const values: Record<string, unknown> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) throw new OptionError(`unexpected argument ${JSON.stringify(a)}; options start with --`);
    const { name, inline } = splitOption(a);
    const spec = Object.prototype.hasOwnProperty.call(specs, name) ? specs[name] : undefined;
    if (!spec) throw new OptionError(`unknown option --${name}; the options are ${[...Object.keys(specs).map((n) => `--${n}`), "--help"].join(", ")}`);
    if (name in values) throw new OptionError(`--${name} is given twice`);
    if (spec.kind === "flag") {
      values[name] = flagValue(name, inline);
      continue;
    }
    const { value: text, last } = optionValue(argv, i, name, inline);
    i = last;
    switch (spec.kind) {
      case "int":
        values[name] = intValue(name, spec, text);
        break;
      case "ints":
        values[name] = text.split(",").map((item) => intValue(name, spec, item, text));
        break;
      case "choice":
        values[name] = choiceValue(name, spec.choices, text);
        break;
      case "choices":
        values[name] = text.split(",").map((item) => choiceValue(name, spec.choices, item, text));
        break;
      case "text":
        if (text === "") throw new OptionError(`--${name} must not be empty`);
        values[name] = text;
        break;
    }
  }
  for (const [name, spec] of Object.entries(specs))
    if (!(name in values)) values[name] = spec.kind === "flag" ? false : Array.isArray(spec.default) ? [...spec.default] : spec.default;
  const result = values as OptionValues<T>;
  const problem = command.check?.(result);
  if (problem) throw new OptionError(problem);
  return result;
}

/** The --help text: the command line, what the script measures, and each option with its values and default. */
export function optionsUsage<T extends Record<string, OptionSpec>>(command: BenchCommand<T>): string {
  const rows = Object.entries(command.options as Record<string, OptionSpec>).map(([name, o]) => {
    let left = `--${name}`, values: string;
    switch (o.kind) {
      case "int":
        left += " N";
        values = `default ${o.defaultText ?? o.default}; an integer ${intRange(o, false)}`;
        break;
      case "ints":
        left += " N,N,...";
        values = `default ${o.default.join(",")}; integers ${intRange(o, true)}`;
        break;
      case "choice":
        left += " " + o.choices.join("|");
        values = `default ${o.default}`;
        break;
      case "choices":
        left += " X,X,...";
        values = `default ${o.default.join(",")}; each one of ${o.choices.join(", ")}`;
        break;
      case "flag":
        values = "default off";
        break;
      case "text":
        left += ` ${o.meta}`;
        values = o.default === "" ? "no default" : `default ${o.default}`;
        break;
    }
    return [left, `${o.help} [${values}]`];
  });
  rows.push(["--help, -h", "print this text and exit"]);
  const width = Math.max(...rows.map((r) => r[0].length));
  return [
    `usage: node ${command.folder ?? "dist/bench"}/${command.script}.js [options]`,
    "",
    command.about,
    "",
    "options:",
    ...rows.map(([left, right]) => `  ${left.padEnd(width)}  ${right}`),
    "",
  ].join("\n");
}

/**
 * The options of process.argv, parsed before any work is done: --help prints the usage and exits 0;
 * a refused command line prints one line naming the option and exits 2.
 */
export function benchOptions<T extends Record<string, OptionSpec>>(command: BenchCommand<T>, argv: readonly string[] = process.argv.slice(2)): OptionValues<T> {
  let parsed: OptionValues<T> | "help";
  try {
    parsed = parseOptions(command, argv);
  } catch (e) {
    if (!(e instanceof OptionError)) throw e;
    process.stderr.write(`${command.script}.js: ${e.message}\n`);
    process.exit(2);
  }
  if (parsed === "help") {
    process.stdout.write(optionsUsage(command));
    process.exit(0);
  }
  return parsed;
}

/** n raw f16 values of magnitude about 0.06..1 with random signs, the same for the same salt. */
export function pseudoRandomF16(n: number, salt: number): Uint16Array {
  const out = new Uint16Array(n);
  let s = (salt * 2654435761) >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = ((s >>> 31) << 15) | (0x2c00 + ((s >>> 12) & 0xfff));
  }
  return out;
}

/** n float32 values in [-0.25, 0.25), the same for the same salt (query rows). */
export function pseudoRandomF32(n: number, salt: number): Float32Array {
  const q = new Float32Array(n);
  let s = (salt * 40503) >>> 0;
  for (let i = 0; i < q.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    q[i] = (s / 4294967296 - 0.5) * 0.5;
  }
  return q;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * Runs fn `warmup` times and then again until `warmupMs` milliseconds have passed, then `repeats`
 * times; returns milliseconds of each timed run. Kernel threads sleep after a pause, and one woken
 * on a virtual machine can take a millisecond or more to join: the calls before that run on fewer
 * threads than a decode loop's calls do.
 */
export function timeRuns(fn: () => void, repeats: number, warmup = 1, warmupMs = 0): number[] {
  for (let i = 0; i < warmup; i++) fn();
  for (const start = performance.now(); performance.now() - start < warmupMs; ) fn();
  const out: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t = performance.now();
    fn();
    out.push(performance.now() - t);
  }
  return out;
}

/** timeRuns() for a function that returns a promise: each run is awaited before the next starts. */
export async function timeRunsAsync(fn: () => Promise<unknown>, repeats: number, warmup = 1, warmupMs = 0): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await fn();
  for (const start = performance.now(); performance.now() - start < warmupMs; ) await fn();
  const out: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t = performance.now();
    await fn();
    out.push(performance.now() - t);
  }
  return out;
}

/**
 * Blocks for `ms` milliseconds. Kernel threads spin for up to 2 ms after each call before they
 * sleep: a pause lets them sleep before something else is timed beside them.
 */
export function pause(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export function printTable(headers: string[], rows: (string | number)[][]): void {
  const cells = [headers, ...rows.map((r) => r.map(String))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => c.padStart(widths[i])).join("  ");
  console.log(line(headers));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const r of cells.slice(1)) console.log(line(r));
}

/** The processor as Linux names it: vendor, family and model tell apart parts that share a model name. */
function cpuId(): { vendor?: string; family?: number; model?: number } {
  try {
    const text = fs.readFileSync("/proc/cpuinfo", "utf8");
    const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.*)$`, "m").exec(text)?.[1]?.trim();
    const family = field("cpu family"), model = field("model");
    return { vendor: field("vendor_id"), family: family ? Number(family) : undefined, model: model ? Number(model) : undefined };
  } catch {
    return {};
  }
}

export function machine(): Record<string, unknown> {
  return { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, ...cpuId(), memoryGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version };
}

/** One line naming the processor, for benchmark headers. */
export function cpuLine(): string {
  const m = machine();
  const id = m.family !== undefined ? ` (${m.vendor}, family ${m.family} model ${m.model})` : "";
  return `${m.cpuModel}${id}, ${m.cpus} CPUs`;
}

/** What every result depends on: the machine, and the CPU backend's threads, kernel table and prefetch hint. */
export interface Host {
  machine: Record<string, unknown>;
  threads: number;
  simd: string;
  prefetch: string;
}

/** The machine and the CPU backend as a cache made without threads or prefetch options gets them; spread into the JSON. */
export function host(): Host {
  const cpu = backends().cpu;
  return { machine: machine(), threads: cpu.threads, simd: cpu.simd, prefetch: cpu.prefetch };
}

/** The header line naming the processor, the threads, the kernel table and the prefetch hint (`prefetch` in place of the automatic one's name). */
export function hostLine(h: Host = host(), prefetch: string = h.prefetch): string {
  return `CPU: ${cpuLine()}; ${h.threads} threads, kernels ${h.simd}, prefetch ${prefetch}`;
}

/**
 * Writes <name>.json into bench/results next to the sources, or into the folder the environment
 * variable LUKV_BENCH_OUT names (made if missing); a file of that name is replaced.
 */
export function writeResults(name: string, data: unknown): string {
  const dir = process.env.LUKV_BENCH_OUT ?? path.resolve(__dirname, "..", "..", "bench", "results");
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${name}.json`);
  fs.writeFileSync(file, JSON.stringify(data, null, 2) + "\n");
  return file;
}
