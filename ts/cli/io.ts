/** Where a command writes; tests pass their own. */
export interface CliIO {
  out: (s: string) => void;
  err: (s: string) => void;
}

export const processIO: CliIO = {
  out: (s) => process.stdout.write(s.endsWith("\n") ? s : s + "\n"),
  err: (s) => process.stderr.write(s.endsWith("\n") ? s : s + "\n"),
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
