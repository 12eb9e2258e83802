// The benchmarks' option parser (bench/common.ts): unknown options, missing and invalid values are
// refused with one line naming the option, --help lists every option with its default; and the
// compiled scripts stop with that line (exit 2) or the usage (exit 0) before measuring anything.
// Also the results' folder (LUKV_BENCH_OUT), and the machine and CPU backend every script records.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { spawnSync } from "child_process";
import {
  BenchCommand, OptionError, OptionSpec, choiceListOption, choiceOption, flagOption, host, hostLine, intListOption, intOption, optionsUsage, parseOptions,
  writeResults,
} from "../bench/common";
import { caught } from "./helpers/caught";
import { backends } from "../ts";

const command = {
  script: "example",
  about: "An example benchmark.",
  options: {
    tokens: intListOption({ default: [1024, 8192], min: 16, multipleOf: 16, help: "context lengths" }),
    repeats: intOption({ default: 15, min: 1, help: "runs per median" }),
    "warmup-ms": intOption({ default: 5, min: 0, max: 1000, help: "untimed calls first" }),
    seed: intOption({ default: 7, min: 0, defaultText: "from the clock", help: "seed" }),
    dtype: choiceOption({ choices: ["f16", "bf16", "f32"] as const, default: "f16", help: "element type" }),
    prefetch: choiceListOption({ choices: ["auto", "t0", "nta"] as const, default: ["auto"], help: "prefetch hints" }),
    verbose: flagOption("print every run"),
  },
} satisfies BenchCommand<Record<string, OptionSpec>>;

/** The OptionError message parseOptions throws for `argv`. */
function refused(argv: string[], cmd: BenchCommand<Record<string, OptionSpec>> = command): string {
  const e = caught(() => parseOptions(cmd, argv));
  expect(e).toBeInstanceOf(OptionError);
  return e.message;
}

test("no arguments: every option's default, lists copied", () => {
  const v = parseOptions(command, []);
  expect(v).toEqual({ tokens: [1024, 8192], repeats: 15, "warmup-ms": 5, seed: 7, dtype: "f16", prefetch: ["auto"], verbose: false });
  if (v === "help") throw new Error("unreachable");
  v.tokens.push(1);
  expect(command.options.tokens.default).toEqual([1024, 8192]);
});

test("values given as --name value or --name=value", () => {
  expect(parseOptions(command, ["--tokens", "16,32", "--repeats=3", "--dtype", "bf16", "--prefetch=t0,nta", "--verbose", "--warmup-ms", "0"])).toEqual({
    tokens: [16, 32], repeats: 3, "warmup-ms": 0, seed: 7, dtype: "bf16", prefetch: ["t0", "nta"], verbose: true,
  });
});

test("an unknown or misspelt option is refused, naming it and the options there are", () => {
  expect(refused(["--token", "1024"])).toBe("unknown option --token; the options are --tokens, --repeats, --warmup-ms, --seed, --dtype, --prefetch, --verbose, --help");
  expect(refused(["--repeats", "3", "--constructor", "1"])).toMatch(/^unknown option --constructor;/);
  expect(refused(["1024"])).toBe('unexpected argument "1024"; options start with --');
  expect(refused(["-r", "3"])).toBe('unexpected argument "-r"; options start with --');
});

test("an option without its value is refused, last or followed by another option", () => {
  expect(refused(["--tokens"])).toBe("--tokens expects a value");
  expect(refused(["--repeats", "--tokens", "16"])).toBe("--repeats expects a value, got the option --tokens");
  expect(refused(["--repeats="])).toBe('--repeats must be an integer of at least 1, got ""');
});

test("a value that is not an integer, or out of range, is refused naming the option and the range", () => {
  for (const bad of ["abc", "1.5", "1e3", "0x10", " 3", "NaN", "9007199254740993"])
    expect(refused(["--repeats", bad])).toBe(`--repeats must be an integer of at least 1, got ${JSON.stringify(bad)}`);
  expect(refused(["--repeats", "0"])).toBe('--repeats must be an integer of at least 1, got "0"');
  expect(refused(["--repeats", "-2"])).toBe('--repeats must be an integer of at least 1, got "-2"');
  expect(refused(["--warmup-ms", "1001"])).toBe('--warmup-ms must be an integer from 0 to 1000, got "1001"');
  expect(parseOptions(command, ["--warmup-ms", "1000"])).toMatchObject({ "warmup-ms": 1000 });
});

test("a bad list item is refused, naming the item and the list", () => {
  const rule = "--tokens must be a comma-separated list of integers of at least 16, multiples of 16";
  expect(refused(["--tokens", "1024,abc"])).toBe(`${rule}, got "abc" in "1024,abc"`);
  expect(refused(["--tokens", "16,,32"])).toBe(`${rule}, got "" in "16,,32"`);
  expect(refused(["--tokens", "16,8"])).toBe(`${rule}, got "8" in "16,8"`);
  expect(refused(["--tokens", "1000"])).toBe(`${rule}, got "1000"`);
  expect(refused(["--dtype", "f8"])).toBe('--dtype must be one of f16, bf16, f32, got "f8"');
  expect(refused(["--prefetch", "auto,t2"])).toBe('--prefetch must be a comma-separated list of auto, t0, nta, got "t2" in "auto,t2"');
});

test("an option given twice, and a flag given a value, are refused", () => {
  expect(refused(["--repeats", "3", "--repeats=4"])).toBe("--repeats is given twice");
  expect(refused(["--verbose=yes"])).toBe('--verbose takes no value, got "yes"');
});

test("a check across options runs after each option's own check", () => {
  const cmd: BenchCommand<Record<string, OptionSpec>> = {
    ...command,
    check: (o) => ((o.repeats as number) % 2 ? `--repeats (${o.repeats}) must be even with --verbose` : undefined),
  };
  expect(refused(["--repeats", "3"], cmd)).toBe("--repeats (3) must be even with --verbose");
  expect(refused(["--repeats", "x"], cmd)).toMatch(/^--repeats must be an integer/);
  expect(parseOptions(cmd, ["--repeats", "4"])).toMatchObject({ repeats: 4 });
});

test("--help or -h anywhere asks for the usage, which lists every option with its default", () => {
  expect(parseOptions(command, ["--help"])).toBe("help");
  expect(parseOptions(command, ["--tokens", "abc", "-h"])).toBe("help");
  const text = optionsUsage(command);
  const lines = text.split("\n");
  expect(lines[0]).toBe("usage: node dist/bench/example.js [options]");
  expect(text).toContain("An example benchmark.");
  const defaults: Record<string, string> = {
    tokens: "1024,8192", repeats: "15", "warmup-ms": "5", seed: "from the clock", dtype: "f16", prefetch: "auto", verbose: "off",
  };
  for (const [name, shown] of Object.entries(defaults)) {
    const line = lines.find((l) => l.trimStart().startsWith(`--${name} `));
    expect([name, line]).toEqual([name, expect.stringContaining(`[default ${shown}`)]);
    expect(line).toContain(command.options[name as keyof typeof command.options].help);
  }
  expect(text).toMatch(/--help, -h +print this text and exit/);
  expect(text).toContain("--dtype f16|bf16|f32");
  expect(text).toContain("integers of at least 16, multiples of 16");
  expect(text).toContain("an integer from 0 to 1000");
});

test("writeResults: <name>.json in the folder LUKV_BENCH_OUT names, made if missing, replaced if there", () => {
  const top = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-bench-out-"));
  const dir = path.join(top, "a", "b");
  const before = process.env.LUKV_BENCH_OUT;
  process.env.LUKV_BENCH_OUT = dir;
  try {
    const file = path.join(dir, "example.json");
    expect(writeResults("example", { x: 1 })).toBe(file);
    expect(JSON.parse(fs.readFileSync(file, "utf8"))).toEqual({ x: 1 });
    writeResults("example", { x: 2 });
    expect(JSON.parse(fs.readFileSync(file, "utf8"))).toEqual({ x: 2 });
  } finally {
    if (before === undefined) delete process.env.LUKV_BENCH_OUT;
    else process.env.LUKV_BENCH_OUT = before;
    fs.rmSync(top, { recursive: true, force: true });
  }
});

test("host() and hostLine(): the processor, threads, kernel table and prefetch hint", () => {
  const h = host();
  expect(h).toEqual({
    machine: expect.objectContaining({ cpus: expect.any(Number), node: process.version }),
    threads: expect.any(Number), simd: expect.any(String), prefetch: expect.any(String),
  });
  expect(hostLine(h)).toMatch(new RegExp(`^CPU: .*; ${h.threads} threads, kernels ${h.simd}, prefetch ${h.prefetch}$`));
  expect(hostLine(h, "nta, auto=t2")).toMatch(/, prefetch nta, auto=t2$/);
});

describe("the compiled scripts", () => {
  const root = path.resolve(__dirname, "..");
  const SCRIPTS = ["attention", "batch", "batch-ab", "compress", "decode-shapes", "expected-attention", "model-batch", "save-load", "shapes", "solver"];
  let out: string;

  beforeAll(() => {
    // Built by `npm ci` (prepare) or `npx tsc -p tsconfig.build.json`; an older build would test old code.
    for (const name of [...SCRIPTS, "common"]) {
      const js = path.join(root, "dist", "bench", `${name}.js`), ts = path.join(root, "bench", `${name}.ts`);
      if (!fs.existsSync(js) || fs.statSync(js).mtimeMs < fs.statSync(ts).mtimeMs)
        throw new Error(`dist/bench/${name}.js is missing or older than bench/${name}.ts: run npx tsc -p tsconfig.build.json`);
    }
    out = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-bench-options-"));
  });
  afterAll(() => fs.rmSync(out, { recursive: true, force: true }));

  /** Runs a script with a time limit far below any benchmark's; results would go under `out`. */
  function run(name: string, args: string[]) {
    const results = path.join(out, name);
    const r = spawnSync(process.execPath, [path.join(root, "dist", "bench", `${name}.js`), ...args], {
      encoding: "utf8", timeout: 30_000, env: { ...process.env, LUKV_BENCH_OUT: results },
    });
    expect(fs.existsSync(results)).toBe(false);
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  test("a refused option: one line naming it on stderr, exit 2, nothing measured or written", () => {
    const cases: [string, string[], string][] = [
      ["attention", ["--token", "1024"], "attention.js: unknown option --token; the options are --tokens, --repeats, --prefetch, --step-mib, --warmup-ms, --help"],
      ["attention", ["--tokens", "1024", "--repeats", "abc"], 'attention.js: --repeats must be an integer of at least 1, got "abc"'],
      ["attention", ["--tokens", "1024", "--repeats", "0"], 'attention.js: --repeats must be an integer of at least 1, got "0"'],
      ["attention", ["--tokens", "abc"], 'attention.js: --tokens must be a comma-separated list of integers of at least 16, multiples of 16, got "abc"'],
      ["decode-shapes", ["--tokens", "16", "--calls", "0"], 'decode-shapes.js: --calls must be an integer of at least 1, got "0"'],
      ["solver", ["--tokens", "abc"], 'solver.js: --tokens must be an integer of at least 320, got "abc"'],
      ["save-load", ["--kv-heads", "3"], "save-load.js: --query-heads (8) must be a multiple of --kv-heads (3)"],
      ["compress", ["--layers"], "compress.js: --layers expects a value"],
      ["shapes", ["--compress-tokens", "1000"], 'shapes.js: --compress-tokens must be an integer of at least 0, a multiple of 512, got "1000"'],
      ["batch-ab", [], "batch-ab.js: --base DIR is required"],
      ["batch-ab", ["--base", root + "/nowhere"], `batch-ab.js: --base ${root}/nowhere holds no dist/ts/index.js (build it with npm ci)`],
      ["batch-ab", ["--base="], "batch-ab.js: --base must not be empty"],
    ];
    for (const [name, args, message] of cases) {
      const r = run(name, args);
      expect([name, args, r.status, r.stdout, r.stderr]).toEqual([name, args, 2, "", message + "\n"]);
    }
  });

  // On a CUDA machine the option is valid and the benchmark would run.
  const withoutCuda = backends().cuda.usable ? test.skip : test;
  withoutCuda("save-load --device cuda without a usable CUDA backend: one line with the reasons, exit 1 (it ended with a stack trace)", () => {
    const cuda = backends().cuda;
    const r = run("save-load", ["--device", "cuda", "--tokens", "64", "--repeats", "1"]);
    expect([r.status, r.stdout, r.stderr]).toEqual([1, "", `save-load.js: --device cuda: the CUDA backend cannot be used here: ${cuda.reasons.join("; ")}\n`]);
  });

  /** Runs an example with each command line; each must stop with exit 2 and `message` as stderr's first line, writing nothing. */
  function refusedBy(example: string, cases: [string[], string][]): void {
    const script = path.join(root, "dist", "examples", "tiny-lm", `${example}.js`);
    const results = path.join(out, example);
    for (const [args, message] of cases) {
      const r = spawnSync(process.execPath, [script, ...args], { encoding: "utf8", timeout: 30_000, cwd: out, env: { ...process.env, LUKV_BENCH_OUT: results } });
      expect([args, r.status, r.stdout, r.stderr.split("\n")[0]]).toEqual([args, 2, "", message]);
      expect(fs.existsSync(results)).toBe(false);
    }
  }

  test("examples/tiny-lm/build-profile refuses a bad command line before loading the model (a misspelt option was taken for MODEL_DIR, --sink abc became NaN)", () => {
    refusedBy("build-profile", [
      [["--windw", "1"], "build-profile.js: unknown option --windw"],
      [["--sink", "abc"], "build-profile.js: --sink expects an integer >= 0, got abc"],
      [["--scorer", "snap"], "build-profile.js: --scorer expects one of snapkv, keydiff, knorm, tova, h2o, streaming, random, expected-attention, got snap"],
      [["a", "b"], "build-profile.js: one MODEL_DIR expected, got 2 arguments"],
    ]);
  });

  test("examples/tiny-lm/beyond-paper refuses a bad command line the same way, before calibrating anything (it ignored unknown options and took ratios past 1)", () => {
    refusedBy("beyond-paper", [
      [["--ratios", "0.5,1.5"], 'beyond-paper.js: --ratios must be a comma-separated list of numbers in [0, 1), got "1.5" in "0.5,1.5"'],
      [["--ratios", "0x0"], 'beyond-paper.js: --ratios must be a comma-separated list of numbers in [0, 1), got "0x0" in "0x0"'],
      [["--variants", "0,9"], 'beyond-paper.js: --variants must be a comma-separated list of integers from 0 to 4, got "9" in "0,9"'],
      [["--ratio", "0.5"], "beyond-paper.js: unknown option --ratio; the options are --ratios, --windows, --variants, --help"],
    ]);
  });

  test("at a tiny size, every script's JSON records the machine, threads, kernel table and prefetch hint, and the counts it ran", () => {
    const h = host();
    const cases: [string, string[]][] = [
      ["compress", ["--tokens", "512", "--layers", "1", "--repeats", "3"]],
      ["decode-shapes", ["--tokens", "16", "--calls", "10"]],
      ["expected-attention", ["--tokens", "512", "--layers", "1", "--repeats", "2", "--prompt", "32"]],
      ["model-batch", ["--sequences", "1", "--context", "4", "--steps", "1"]],
      ["save-load", ["--tokens", "64", "--repeats", "1"]],
      ["batch", ["--sequences", "2", "--long", "16", "--short", "16", "--repeats", "1", "--warmup-ms", "0"]],
      ["shapes", ["--tokens", "16", "--skew-tokens", "1024", "--compress-tokens", "1024", "--rounds", "1"]],
      // Against itself: the same build loaded twice
      ["batch-ab", ["--base", root, "--sequences", "2", "--tokens", "16", "--rounds", "1", "--calls", "2"]],
    ];
    for (const [name, args] of cases) {
      const results = path.join(out, `${name}-json`);
      const r = spawnSync(process.execPath, [path.join(root, "dist", "bench", `${name}.js`), ...args], {
        encoding: "utf8", timeout: 60_000, env: { ...process.env, LUKV_BENCH_OUT: results },
      });
      expect([name, r.status, r.stderr]).toEqual([name, 0, ""]);
      expect(r.stdout).toContain(hostLine(h));
      const json = JSON.parse(fs.readFileSync(path.join(results, `${name}.json`), "utf8"));
      expect([name, json]).toEqual([name, expect.objectContaining({ machine: h.machine, threads: h.threads, simd: h.simd, prefetch: h.prefetch })]);
      if (name === "compress") expect(json.results[0].compressRunsMs).toHaveLength(3);
      if (name === "expected-attention") expect(json.llamaShaped.statisticsAddRunsUs).toHaveLength(2);
      if (name === "shapes") expect([json.decode.length, json.compress.length]).toEqual([backends().cpu.simdSupported[0] === "avx512" ? 12 : 10, 5]);
      if (name === "batch") {
        expect([json.repeatsLong, json.repeatsShort]).toEqual([5, 50]);
        expect([json.results.long.repeats, json.results.short.repeats, json.results.shortTiny.repeats]).toEqual([5, 50, 50]);
      }
    }
  });

  test("--help: the usage on stdout, exit 0, naming every option README's command line gives", () => {
    const readme = fs.readFileSync(path.join(root, "bench", "README.md"), "utf8");
    for (const name of SCRIPTS) {
      const r = run(name, [name === "attention" ? "--help" : "-h"]);
      expect([name, r.status, r.stderr]).toEqual([name, 0, ""]);
      expect(r.stdout.split("\n")[0]).toBe(`usage: node dist/bench/${name}.js [options]`);
      const row = readme.split("\n").find((l) => l.startsWith(`| \`node dist/bench/${name}.js`));
      expect([name, row]).toEqual([name, expect.any(String)]);
      const readmeOptions = [...row!.split("|")[1].matchAll(/[\s[](--[\w-]+)/g)].map((m) => m[1]);
      const helpOptions = [...r.stdout.matchAll(/^ {2}(--[\w-]+)/gm)].map((m) => m[1]).filter((o) => o !== "--help");
      expect([name, readmeOptions]).toEqual([name, helpOptions]);
    }
  });
});
