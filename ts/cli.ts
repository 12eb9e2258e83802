#!/usr/bin/env node
// The `lukv` command.
import { CliIO, processIO } from "./cli/io";
import { demoCommand } from "./cli/demo";
import { evalCommand } from "./cli/eval";
import { profileCommand } from "./cli/profile";
import { solveCommand } from "./cli/solve";

const USAGE = `usage: lukv <command> [options]

commands:
  demo                         the embedded model on lukv: prefill, compress, generate, compare with the full cache
  eval                         quality table: scorers x allocations x ratios on the embedded model
  profile inspect FILE         shape, metadata and a heat map of an LU-KV profile (.npy or JSON; --plot OUT.svg)
  profile convert IN OUT       convert a profile between .npy and JSON
  profile build DIR            build a profile from samples saved by profiler.save(DIR)
  solve CURVES.json --keep N   LU-KV head budgets for per-head loss curves
`;

export async function main(argv: string[], io: CliIO = processIO): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "demo":
      return demoCommand(rest, io);
    case "eval":
      return evalCommand(rest, io);
    case "profile":
      return profileCommand(rest, io);
    case "solve":
      return solveCommand(rest, io);
    case undefined:
      io.err(USAGE);
      return 2;
    case "help":
    case "--help":
    case "-h":
      io.out(USAGE);
      return 0;
    default:
      io.err(`lukv: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

if (require.main === module) {
  let outputLost = false;
  process.stdout.on("error", (e: NodeJS.ErrnoException) => {
    // A reader that stopped reading (`lukv … | head`) wants no more: the rest is dropped, the command finishes.
    if (e.code === "EPIPE") return;
    if (!outputLost) process.stderr.write(`lukv: cannot write to stdout: ${e.message.replace(/, write$/, "")}\n`);
    outputLost = true;
    if (!process.exitCode) process.exitCode = 1;
  });
  // Nowhere is left to report a failed write to stderr.
  process.stderr.on("error", () => {});
  main(process.argv.slice(2)).then(
    (code) => {
      // exitCode rather than exit(): output still queued on a pipe must not be cut off.
      process.exitCode = outputLost && code === 0 ? 1 : code;
    },
    (e) => {
      process.stderr.write(`lukv: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
