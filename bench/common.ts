// Shared helpers for benchmarks: timing, medians, table printing, JSON output.
import * as fs from "fs";
import * as path from "path";
import * as os from "os";

/** The value after `--name` on the command line, or `fallback`. */
export function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
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

/** Writes bench/results/<name>.json next to the sources (or under LUKV_BENCH_OUT). */
export function writeResults(name: string, data: unknown): string {
  const dir = process.env.LUKV_BENCH_OUT ?? path.resolve(__dirname, "..", "..", "bench", "results");
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${name}.json`);
  fs.writeFileSync(file, JSON.stringify(data, null, 2) + "\n");
  return file;
}
