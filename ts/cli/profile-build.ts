// `lukv profile build DIR`: an LU-KV profile from the samples a Profiler saved.
import { join } from "node:path";
import { BadProfileError, InvalidArgumentError, quoted } from "../errors";
import { saveProfile } from "../profile";
import { formatOfPath } from "../profile/io";
import { Profiler, type ProfileReport } from "../profiler";
import { gridRatio } from "./heatmap";
import { integerText, isSystemError, parseCommandArgs, UsageError, writingTo, type CommandIO } from "./io";

export const PROFILE_BUILD_USAGE = `usage: lukv profile build DIR [--out FILE] [--scope global|per-layer] [--grid N]

Builds an LU-KV profile from the samples that profiler.save(DIR) wrote.

--out FILE    .npy (the LU-KV / kvpress table) or .json (table and metadata);
              default DIR/profile.json
--scope S     "global" (one budget over every head) or "per-layer"; default: as saved
--grid N      rows of the table, row i = compression ratio (i+1)/(N+1); default: as saved`;

function fmt(x: number): string {
  return x.toFixed(4);
}

/** Mean and worst head of a per-head array, in words. */
function summary(values: Float64Array, kvHeads: number): string {
  let sum = 0;
  let worst = 0;
  for (let i = 0; i < values.length; i++) {
    sum += values[i];
    if (values[i] > values[worst]) worst = i;
  }
  return `mean ${fmt(sum / values.length)}, max ${fmt(values[worst])} (layer ${Math.floor(worst / kvHeads)}, head ${worst % kvHeads})`;
}

/** Evicted oracle mass, LU-KV against uniform, at a few compression ratios of the grid. */
function lossLines(report: ProfileReport): string[] {
  const lines = ["evicted oracle mass (share of all), per-sample LU-KV solution vs uniform:"];
  // On a coarse grid two of the ratios fall on the same row, printed once.
  const rows = new Set([0.5, 0.8, 0.9].map((ratio) => Math.min(report.grid - 1, Math.max(0, Math.round(ratio * (report.grid + 1)) - 1))));
  for (const row of rows)
    lines.push(`  ratio ${gridRatio(row, report.grid).padEnd(6)}  lu-kv ${fmt(report.loss[row])}  uniform ${fmt(report.uniformLoss[row])}`);
  return lines;
}

/**
 * `lukv profile build DIR [--out FILE] [--scope S] [--grid N]`.
 * @param argv the arguments after `build`.
 * @returns the exit code: 0 done, 1 unreadable or malformed samples, 2 bad usage.
 */
export async function profileBuildCommand(argv: string[], io: CommandIO): Promise<number> {
  try {
    if (argv.includes("--help") || argv.includes("-h")) {
      io.out(PROFILE_BUILD_USAGE);
      return 0;
    }
    const { strings, positionals } = parseCommandArgs(argv, ["out", "scope", "grid"]);
    if (positionals.length !== 1) {
      throw new UsageError(positionals.length === 0 ? "build needs a DIR" : `build takes one DIR, got ${positionals.length}`);
    }
    const dir = positionals[0];
    const out = strings.out ?? join(dir, "profile.json");
    const format = formatOfPath(out);
    if (!format) throw new UsageError(`--out must end in .npy or .json, got ${quoted(out)}`);
    const scope = strings.scope;
    if (scope !== undefined && scope !== "global" && scope !== "per-layer") {
      throw new UsageError(`--scope must be global or per-layer, got ${quoted(scope)}`);
    }
    let grid: number | undefined;
    if (strings.grid !== undefined) {
      grid = integerText(strings.grid);
      if (!Number.isSafeInteger(grid) || grid < 1 || grid > 100000) {
        throw new UsageError(`--grid must be an integer between 1 and 100000, got ${quoted(strings.grid)}`);
      }
    }
    const profiler = Profiler.load(dir, { scope, grid, keepSamples: false });
    // A manifest without samples is malformed input (exit 1), not a misuse of the API.
    if (profiler.samples === 0) throw new BadProfileError(`${join(dir, "manifest.json")}: "samples" is empty: there is nothing to build a profile from`);
    const profile = profiler.build();
    writingTo(out, () => saveProfile(profile, out, { format }));
    const report = profiler.report();
    const opts = Object.keys(profiler.scorerOptions).length > 0 ? ` ${JSON.stringify(profiler.scorerOptions)}` : "";
    io.out(
      [
        `read ${profiler.samples} sample${profiler.samples === 1 ? "" : "s"} from ${dir}: ${profiler.layers} layers × ${profiler.kvHeads} KV heads, ` +
          `scorer ${profiler.scorer}${opts}, sink ${profiler.sink}, window ${profiler.window}`,
        `wrote ${out} (${format === "npy" ? ".npy, table only" : "lukv JSON"}, grid ${profile.grid} × layers ${profile.layers} × kvHeads ${profile.kvHeads}, scope ${profiler.scope})`,
        `hull gap        ${summary(report.hullGap, profiler.kvHeads)}`,
        `optimality gap  ${summary(report.optimalityGap, profiler.kvHeads)}`,
        ...lossLines(report),
      ].join("\n"),
    );
    return 0;
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`lukv profile build: ${e.message}\n\n${PROFILE_BUILD_USAGE}`);
      return 2;
    }
    if (e instanceof InvalidArgumentError) {
      io.err(`lukv profile build: ${e.message}`);
      return 2;
    }
    if (e instanceof BadProfileError || isSystemError(e)) {
      io.err(`lukv profile build: ${(e as Error).message}`);
      return 1;
    }
    throw e;
  }
}
