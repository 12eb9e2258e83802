#!/usr/bin/env node
// The `lukv` command.
import { CliIO, processIO } from "./cli/io";
import { demoCommand } from "./cli/demo";

const USAGE = `usage: lukv <command> [options]

commands:
  demo                         run the demo (prefill, decode, memory and timing)
`;

export async function main(argv: string[], io: CliIO = processIO): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "demo":
      return demoCommand(rest, io);
    case undefined:
    case "help":
    case "--help":
    case "-h":
      io.out(USAGE);
      return command === undefined ? 2 : 0;
    default:
      io.err(`lukv: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e) => {
      process.stderr.write(`lukv: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(1);
    },
  );
}
