// `lukv profile …`: look inside LU-KV profiles and convert them between .npy and JSON.
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { BadProfileError, InvalidArgumentError, quoted } from "../errors";
import { decodeNpy, decodeProfile, loadProfile, saveProfile, type Profile } from "../profile";
import { formatOfPath } from "../profile/io";
import { decimalText, isSystemError, parseCommandArgs, readingFrom, UsageError, writeTextWhole, writingTo, type CommandIO } from "./io";
import { PROFILE_BUILD_USAGE, profileBuildCommand } from "./profile-build";
import { colourMode, gridRatio, heatMapSvg, keepGrid, printable, terminalGrid } from "./heatmap";


const USAGE = `usage: lukv profile <subcommand> ...

subcommands:
  inspect FILE [--ratio R]       shape, metadata, and a heat map of each KV head's keep
        [--plot OUT.svg]         share at compression ratio R (default 0.8), coloured on a
                                 terminal (digits otherwise, or with NO_COLOR), and with
                                 --plot also as an SVG file; FILE is a .npy (LU-KV /
                                 kvpress) or lukv JSON profile
  convert IN OUT [--dtype f4|f8] convert between .npy and lukv JSON, by extension
                                 (.npy holds only the table; --dtype default f8)
  build DIR [--out FILE]         build a profile from samples saved by profiler.save(DIR)
        [--scope global|per-layer] [--grid N]`;

function describeMeta(profile: Profile, format: string): string[] {
  const m = profile.meta;
  const lines = [
    `  format       ${format}`,
    `  shape        grid ${profile.grid} × layers ${profile.layers} × kvHeads ${profile.kvHeads}` +
      ` (rows: compression ratio ${gridRatio(0, profile.grid)} … ${gridRatio(profile.grid - 1, profile.grid)})`,
  ];
  // Text from the file is printed with its control characters escaped (no terminal sequences, one line each).
  const dash = (v: unknown) => (v === undefined ? "-" : printable(String(v)));
  lines.push(`  model        ${dash(m.model)}`);
  lines.push(`  scorer       ${dash(m.scorer)}${m.scorerOptions ? " " + printable(JSON.stringify(m.scorerOptions)) : ""}`);
  lines.push(`  sink/window  ${dash(m.sink)} / ${dash(m.window)}`);
  const c = m.calibration;
  if (c) {
    const parts: string[] = [];
    if (c.samples !== undefined) parts.push(`${c.samples} samples`);
    if (c.queriesPerSample !== undefined) parts.push(`${c.queriesPerSample} queries each`);
    if (c.contextLengths && c.contextLengths.length > 0) {
      // A loop, not Math.min(...): the profiler writes one length per sample, and a spread of
      // ~150k arguments overflows the stack.
      let lo = Infinity;
      let hi = -Infinity;
      for (const n of c.contextLengths) {
        lo = Math.min(lo, n);
        hi = Math.max(hi, n);
      }
      parts.push(lo === hi ? `${lo}-token contexts` : `contexts of ${lo}–${hi} tokens`);
    }
    if (c.decodeSteps !== undefined) parts.push(`${c.decodeSteps} decode steps`);
    if (c.dataset !== undefined) parts.push(`data: ${printable(String(c.dataset))}`);
    lines.push(`  calibration  ${parts.join(", ") || "-"}`);
  } else {
    lines.push(`  calibration  -`);
  }
  if (m.createdAt !== undefined) lines.push(`  created      ${printable(String(m.createdAt))}`);
  return lines;
}

async function inspect(argv: string[], io: CommandIO): Promise<number> {
  const { strings: values, positionals } = parseCommandArgs(argv, ["ratio", "plot"]);
  if (positionals.length !== 1) throw new UsageError(positionals.length === 0 ? "inspect needs a FILE" : `inspect takes one FILE, got ${positionals.length}`);
  if (values.plot !== undefined && !values.plot.toLowerCase().endsWith(".svg"))
    throw new UsageError(`--plot must name an .svg file, got ${quoted(values.plot)}`);
  const ratio = values.ratio === undefined ? 0.8 : decimalText(values.ratio);
  if (!(ratio >= 0 && ratio <= 1)) {
    throw new UsageError(`--ratio must be a number between 0 and 1, got ${quoted(values.ratio ?? "")}`);
  }
  const file = positionals[0];
  const bytes = readingFrom(file, () => readFileSync(file));
  let profile: Profile;
  let format: string;
  try {
    profile = decodeProfile(bytes);
    const npy = bytes[0] === 0x93 ? decodeNpy(bytes) : undefined;
    format = npy ? `.npy (${npy.descr}, format ${npy.version}, ${npy.fortranOrder ? "Fortran" : "C"} order; no metadata)` : "lukv JSON";
  } catch (e) {
    throw e instanceof BadProfileError ? new BadProfileError(`${file}: ${e.message}`) : e;
  }
  const grid = keepGrid(profile, ratio);
  // The plot first, so that a path it cannot be written to fails before anything is printed.
  if (values.plot !== undefined) {
    const plot = values.plot;
    const svg = heatMapSvg(grid, profile.meta.model ? `LU-KV profile of ${profile.meta.model}` : `LU-KV profile ${basename(file)}`);
    writeTextWhole(plot, svg, false);
  }
  io.out([file, ...describeMeta(profile, format), "", ...terminalGrid(grid, colourMode(io.isTTY === true))].join("\n"));
  if (values.plot !== undefined) io.out(`wrote ${values.plot} (heat map of ${profile.layers} layers × ${profile.kvHeads} KV heads)`);
  return 0;
}

async function convert(argv: string[], io: CommandIO): Promise<number> {
  const { strings: values, positionals } = parseCommandArgs(argv, ["dtype"]);
  if (positionals.length !== 2) throw new UsageError(`convert needs IN and OUT, got ${positionals.length} path${positionals.length === 1 ? "" : "s"}`);
  const [input, output] = positionals;
  const format = formatOfPath(output);
  if (!format) throw new UsageError(`OUT must end in .npy or .json, got ${quoted(output)}`);
  if (values.dtype !== undefined && values.dtype !== "f4" && values.dtype !== "f8") {
    throw new UsageError(`--dtype must be f4 or f8, got ${quoted(values.dtype)}`);
  }
  if (values.dtype !== undefined && format === "json") throw new UsageError("--dtype is for .npy output; lukv JSON writes the table as it is");
  const profile = readingFrom(input, () => loadProfile(input));
  writingTo(output, () => saveProfile(profile, output, format === "npy" ? { format, dtype: values.dtype === "f4" ? "<f4" : "<f8" } : { format }));
  io.out(`wrote ${output} (${format === "npy" ? ".npy" : "lukv JSON"}, grid ${profile.grid} × layers ${profile.layers} × kvHeads ${profile.kvHeads})`);
  if (format === "npy" && Object.keys(profile.meta).length > 0) {
    io.err(`note: a .npy file holds only the table; the metadata (${Object.keys(profile.meta).join(", ")}) was not written`);
  }
  return 0;
}

/** Subcommands of `lukv profile`; `build` (the offline profiler) plugs in here. */
const SUBCOMMANDS: Record<string, (argv: string[], io: CommandIO) => Promise<number>> = { inspect, convert, build: profileBuildCommand };

/**
 * `lukv profile <subcommand> …`.
 * @param argv the arguments after `profile`, e.g. ["inspect", "llama.npy", "--ratio", "0.5"].
 * @returns the exit code: 0 done, 1 the file could not be read or is malformed, 2 bad usage.
 */
export async function profileCommand(argv: string[], io: CommandIO): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === "help" || sub === "--help" || sub === "-h") {
    (sub === undefined ? io.err : io.out)(USAGE);
    return sub === undefined ? 2 : 0;
  }
  const run = SUBCOMMANDS[sub];
  if (!Object.hasOwn(SUBCOMMANDS, sub)) {
    io.err(`lukv profile: unknown subcommand ${quoted(sub)}\n\n${USAGE}`);
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    io.out(sub === "build" ? PROFILE_BUILD_USAGE : USAGE);
    return 0;
  }
  try {
    return await run(rest, io);
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`lukv profile ${sub}: ${e.message}\n\n${USAGE}`);
      return 2;
    }
    if (e instanceof InvalidArgumentError) {
      io.err(`lukv profile ${sub}: ${e.message}`);
      return 2;
    }
    if (e instanceof BadProfileError || isSystemError(e)) {
      io.err(`lukv profile ${sub}: ${(e as Error).message}`);
      return 1;
    }
    throw e;
  }
}
