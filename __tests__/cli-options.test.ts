// The command line's option checks: options without their value, flags given one, empty list items,
// --out paths, and malformed profiler manifests are refused up front with one line naming the option
// or field, before any work is done or any output printed.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { main } from "../ts/cli";
import { Profiler } from "../ts/profiler";
import { createProfile, saveProfile } from "../ts/profile";
import { rng, testSeed } from "./helpers/random";
import { makeModelDir } from "./tiny-lm-fixture";

const seed = testSeed("cli-options");

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "", err = "";
  const code = await main(argv, { out: (s) => (out += s.endsWith("\n") ? s : s + "\n"), err: (s) => (err += s.endsWith("\n") ? s : s + "\n") });
  return { code, out, err };
}

/** The first line of stderr; the usage follows it. */
const firstLine = (s: string) => s.split("\n")[0];

let dir: string;
let tmp: string;
beforeAll(() => {
  dir = makeModelDir(rng(seed));
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-cli-options-"));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(tmp, { recursive: true, force: true });
});

test("bare lukv prints the usage on stderr with exit code 2; lukv --help on stdout with 0", async () => {
  const bare = await run([]);
  expect([bare.code, bare.out]).toEqual([2, ""]);
  expect(bare.err).toMatch(/^usage: lukv <command> \[options\]/);
  const help = await run(["--help"]);
  expect([help.code, help.err]).toEqual([0, ""]);
  expect(help.out).toMatch(/^usage: lukv <command> \[options\]/);
});

test("an option without its value is a usage error, last or followed by another option", async () => {
  const cases: [string[], string][] = [
    [["demo", "--model", dir, "--text"], "lukv demo: --text expects a value"],
    [["demo", "--text", "--model", dir], "lukv demo: --text expects a value, got the option --model"],
    [["demo", "--model"], "lukv demo: --model expects a value"],
    [["demo", "--model", dir, "--dtype"], "lukv demo: --dtype expects a value"],
    [["demo", "--random", "--steps"], "lukv demo: --steps expects a value"],
    [["demo", "--model", dir, "--text="], 'lukv demo: --text expects a value, got ""'],
    [["eval", "--model", dir, "--out"], "lukv eval: --out expects a value"],
    [["eval", "--out", "--model", dir], "lukv eval: --out expects a value, got the option --model"],
    [["eval", "--model", dir, "--texts="], 'lukv eval: --texts expects a value, got ""'],
    [["eval", "--task", "niah", "--out"], "lukv eval: --out expects a value"],
  ];
  for (const [argv, message] of cases) {
    const r = await run(argv);
    expect([argv, r.code, r.out, firstLine(r.err)]).toEqual([argv, 2, "", message]);
  }
});

test("a flag takes no value: the next word is not swallowed, and --flag=value is refused", async () => {
  const cases: [string[], string][] = [
    [["eval", "--model", dir, "--calibrate", "foo"], 'lukv eval: unexpected argument "foo" (--calibrate takes no value)'],
    [["eval", "--model", dir, "--calibrate=no"], 'lukv eval: --calibrate takes no value, got "no"'],
    [["eval", "--task", "niah", "--save-profiles", "yes"], 'lukv eval: unexpected argument "yes" (--save-profiles takes no value)'],
    [["demo", "--random=false"], 'lukv demo: --random takes no value, got "false"'],
    [["demo", "--model", dir, "--steps", "4"], "lukv demo: --steps is an option of the --random demo (the model demo generates --tokens N)"],
  ];
  for (const [argv, message] of cases) {
    const r = await run(argv);
    expect([argv, r.code, r.out, firstLine(r.err)]).toEqual([argv, 2, "", message]);
  }
});

test("an empty item in --ratios or a list option is refused, not read as ratio 0", async () => {
  const cases: [string[], string][] = [
    [["--ratios", "0.5,"], 'lukv eval: --ratios expects comma-separated numbers in [0, 1), got "0.5," (an empty item)'],
    [["--ratios", "0.5,,0.8"], 'lukv eval: --ratios expects comma-separated numbers in [0, 1), got "0.5,,0.8" (an empty item)'],
    [["--ratios", " "], 'lukv eval: --ratios expects comma-separated numbers in [0, 1), got " " (an empty item)'],
    [["--ratios="], 'lukv eval: --ratios expects a value, got ""'],
    [["--ratios", "0.5,x"], 'lukv eval: --ratios expects comma-separated numbers in [0, 1), got "x"'],
    [["--scorers", "snapkv,"], 'lukv eval: --scorers expects a comma-separated list of snapkv, keydiff, knorm, tova, h2o, streaming, random, expected-attention, got "snapkv," (an empty item)'],
  ];
  for (const [argv, message] of cases) {
    const r = await run(["eval", "--model", dir, ...argv]);
    expect([argv, r.code, r.out, firstLine(r.err)]).toEqual([argv, 2, "", message]);
  }
  const recall = await run(["eval", "--task", "niah", "--ratios", "0.8,"]);
  expect([recall.code, firstLine(recall.err)]).toEqual([2, 'lukv eval: --ratios expects comma-separated numbers in [0, 1), got "0.8," (an empty item)']);
});

test("--out is checked before the run: its directory must exist (it is not created) and be a directory", async () => {
  const file = path.join(tmp, "a-file");
  fs.writeFileSync(file, "");
  const missing = path.join(tmp, "no-such-dir", "x.json");
  const cases: [string[], string][] = [
    [["eval", "--model", dir, "--out", missing], `lukv eval: --out expects a file in an existing, writable directory, got ${JSON.stringify(missing)} (${path.dirname(missing)} does not exist)`],
    [["eval", "--model", dir, "--out", path.join(file, "x.json")], `lukv eval: --out expects a file in an existing, writable directory, got ${JSON.stringify(path.join(file, "x.json"))} (${file} is not a directory)`],
    [["eval", "--model", dir, "--out", tmp], `lukv eval: --out expects a file in an existing, writable directory, got ${JSON.stringify(tmp)} (it is a directory)`],
    [["eval", "--task", "niah", "--out", missing], `lukv eval: --out expects a file in an existing, writable directory, got ${JSON.stringify(missing)} (${path.dirname(missing)} does not exist)`],
  ];
  for (const [argv, message] of cases) {
    const r = await run(argv);
    expect([argv, r.code, r.out, firstLine(r.err)]).toEqual([argv, 2, "", message]);
  }
  expect(fs.existsSync(path.dirname(missing))).toBe(false);
});

test("profile inspect --plot to a path that cannot be written fails before printing anything", async () => {
  const profile = path.join(tmp, "p.json");
  saveProfile(createProfile({ table: new Float64Array(99 * 4).fill(0.5), layers: 2, kvHeads: 2 }), profile);
  const plot = path.join(tmp, "no-such-dir", "x.svg");
  const r = await run(["profile", "inspect", profile, "--plot", plot]);
  expect(r.code).toBe(1);
  expect(r.out).toBe("");
  expect(r.err).toBe(`lukv profile inspect: cannot write ${plot}: ENOENT: no such file or directory (${path.dirname(plot)} does not exist)\n`);
  const ok = await run(["profile", "inspect", profile, "--plot", path.join(tmp, "x.svg")]);
  expect(ok.code).toBe(0);
  expect(ok.out).toMatch(/^wrote .*x\.svg \(heat map of 2 layers × 2 KV heads\)$/m);
});

describe("profile build on a malformed manifest", () => {
  let samples: string;
  const manifest = () => path.join(samples, "manifest.json");
  const edit = (f: (m: { samples: { lengths: number[]; decodeSteps?: number }[] }) => void) => {
    const m = JSON.parse(fs.readFileSync(manifest(), "utf8"));
    f(m);
    fs.writeFileSync(manifest(), JSON.stringify(m));
  };
  beforeEach(() => {
    samples = fs.mkdtempSync(path.join(tmp, "samples-"));
    const r = rng(seed ^ 0x9);
    const p = new Profiler({ layers: 1, kvHeads: 2, sink: 1, window: 2, scorer: "knorm" });
    const head = () => ({ scores: Float32Array.from({ length: 12 }, () => r()), oracle: Float32Array.from({ length: 12 }, () => r()) });
    p.addSample({ scores: [[head().scores, head().scores]], oracle: [[head().oracle, head().oracle]], decodeSteps: 3 });
    p.save(samples);
  });

  test("it builds as saved", async () => {
    const r = await run(["profile", "build", samples]);
    expect([r.code, r.err]).toEqual([0, ""]);
  });

  test('"samples": [] is malformed input: exit 1, not a usage error', async () => {
    edit((m) => (m.samples = []));
    const r = await run(["profile", "build", samples]);
    expect([r.code, r.out, r.err]).toEqual([1, "", `lukv profile build: ${manifest()}: "samples" is empty: there is nothing to build a profile from\n`]);
  });

  test.each([
    [2 ** 32 + 12, "4294967308"],
    [1e12, "1000000000000"],
    [2 ** 31, "2147483648"],
  ])("a head length of %d is refused, not wrapped to an int32", async (length, shown) => {
    edit((m) => (m.samples[0].lengths[1] = length));
    const r = await run(["profile", "build", samples]);
    expect([r.code, r.out, r.err]).toEqual([
      1,
      "",
      `lukv profile build: ${manifest()}: samples[0].lengths[1] must be a positive integer of at most 2147483647 (a head's length), got ${shown}\n`,
    ]);
  });

  test("a write that fails names the --out path given, not a temporary file beside it", async () => {
    const missing = path.join(tmp, "no-such-dir", "p.json");
    const r = await run(["profile", "build", samples, "--out", missing]);
    expect([r.code, r.out, r.err]).toEqual([1, "", `lukv profile build: cannot write ${missing}: ENOENT: no such file or directory (${path.dirname(missing)} does not exist)\n`]);
    expect(r.err).not.toMatch(/\.tmp/);
    expect(fs.existsSync(path.dirname(missing))).toBe(false);
  });

  test("decodeSteps beyond int32 is refused with the field named", async () => {
    edit((m) => (m.samples[0].decodeSteps = 2 ** 40));
    const r = await run(["profile", "build", samples]);
    expect([r.code, r.err]).toEqual([1, `lukv profile build: ${manifest()}: samples[0].decodeSteps must be a non-negative integer of at most 2147483647, got 1099511627776\n`]);
  });
});

test("a negative number after an option that takes a value gets the command's own range message", async () => {
  const curves = path.join(tmp, "curves.json");
  fs.writeFileSync(curves, JSON.stringify([[0, 1, 2], [0, 2, 5]]));
  const profile = path.join(tmp, "negative.json");
  saveProfile(createProfile({ table: new Float64Array(99 * 4).fill(0.5), layers: 2, kvHeads: 2 }), profile);
  const cases: [string[], string][] = [
    [["solve", curves, "--keep", "2", "--min-keep", "-1"], 'lukv solve: --min-keep must be a non-negative integer, got "-1"'],
    [["solve", curves, "--keep", "-1"], 'lukv solve: --keep must be a non-negative integer, got "-1"'],
    [["solve", curves, "--keep", "2", "--max-keep", "-3"], 'lukv solve: --max-keep must be a non-negative integer, got "-3"'],
    [["profile", "inspect", profile, "--ratio", "-0.1"], 'lukv profile inspect: --ratio must be a number between 0 and 1, got "-0.1"'],
    [["profile", "inspect", profile, "--ratio", "-.5"], 'lukv profile inspect: --ratio must be a number between 0 and 1, got "-.5"'],
    [["profile", "build", tmp, "--grid", "-2"], 'lukv profile build: --grid must be an integer between 1 and 100000, got "-2"'],
    // The same as written with "=".
    [["solve", curves, "--keep=-1"], 'lukv solve: --keep must be a non-negative integer, got "-1"'],
  ];
  for (const [argv, message] of cases) {
    const r = await run(argv);
    expect([argv, r.code, r.out, firstLine(r.err)]).toEqual([argv, 2, "", message]);
  }
  // A value that is a number within range still works after the option, and an option name is still no value.
  const ok = await run(["solve", curves, "--keep", "2", "--min-keep", "0"]);
  expect([ok.code, ok.err]).toEqual([0, ""]);
  for (const [argv, message] of [
    [["solve", curves, "--keep", "--json"], "lukv solve: --keep expects a value, got the option --json"],
    [["solve", curves, "--json", "--keep"], "lukv solve: --keep expects a value"],
    [["profile", "inspect", profile, "--ratio", "--plot", "x.svg"], "lukv profile inspect: --ratio expects a value, got the option --plot"],
  ] as [string[], string][]) {
    const r = await run(argv);
    expect([argv, r.code, r.out, firstLine(r.err)]).toEqual([argv, 2, "", message]);
  }
});

test("lukv profile build --help (or -h) prints the build help, not the general profile usage", async () => {
  for (const argv of [["profile", "build", "--help"], ["profile", "build", "some-dir", "-h"]]) {
    const r = await run(argv);
    expect([argv, r.code, r.err]).toEqual([argv, 0, ""]);
    expect(r.out).toMatch(/^usage: lukv profile build DIR \[--out FILE\]/);
    expect(r.out).toContain("default DIR/profile.json");
  }
  const general = await run(["profile", "inspect", "--help"]);
  expect(general.out).toMatch(/^usage: lukv profile <subcommand>/);
});

test("profile convert: a write that fails names OUT as given, not a temporary file beside it", async () => {
  const input = path.join(tmp, "convert-in.json");
  saveProfile(createProfile({ table: new Float64Array(99 * 4).fill(0.5), layers: 2, kvHeads: 2 }), input);
  const missing = path.join(tmp, "no-such-dir", "out.npy");
  const r = await run(["profile", "convert", input, missing]);
  expect([r.code, r.out, r.err]).toEqual([1, "", `lukv profile convert: cannot write ${missing}: ENOENT: no such file or directory (${path.dirname(missing)} does not exist)\n`]);
  const file = path.join(tmp, "convert-file");
  fs.writeFileSync(file, "");
  const under = path.join(file, "out.json");
  const r2 = await run(["profile", "convert", input, under]);
  expect([r2.code, r2.err]).toEqual([1, `lukv profile convert: cannot write ${under}: ENOTDIR: not a directory (${file} is not a directory)\n`]);
  const ok = await run(["profile", "convert", input, path.join(tmp, "out.npy")]);
  expect([ok.code, ok.out]).toEqual([0, `wrote ${path.join(tmp, "out.npy")} (.npy, grid 99 × layers 2 × kvHeads 2)\n`]);
});

test("numbers are read as written in decimal: hexadecimal, binary, exponents in integers, and blanks are refused (Number() read '0x3' as 3, '1e1' as 10, ' ' as 0)", async () => {
  const curves = path.join(tmp, "spelled.json");
  fs.writeFileSync(curves, JSON.stringify([[0, 1, 2], [0, 2, 5]]));
  const profile = path.join(tmp, "spelled-profile.json");
  saveProfile(createProfile({ table: new Float64Array(99 * 4).fill(0.5), layers: 2, kvHeads: 2 }), profile);
  for (const keep of ["0x3", "1e1", "0b11", " 3", "3 ", "", "Infinity", "3.0"]) {
    const r = await run(["solve", curves, "--keep", keep]);
    expect([keep, r.code, r.out, firstLine(r.err)]).toEqual([keep, 2, "", `lukv solve: --keep must be a non-negative integer, got ${JSON.stringify(keep)}`]);
  }
  for (const ratio of ["0x0", " 0.5", "0.5 ", "", ".", "1e", "+.5e"]) {
    const r = await run(["profile", "inspect", profile, "--ratio", ratio]);
    expect([ratio, r.code, r.out, firstLine(r.err)]).toEqual([ratio, 2, "", `lukv profile inspect: --ratio must be a number between 0 and 1, got ${JSON.stringify(ratio)}`]);
  }
  for (const grid of ["0x10", "1e2", " 8"]) {
    const r = await run(["profile", "build", tmp, "--grid", grid]);
    expect([grid, r.code, r.out, firstLine(r.err)]).toEqual([grid, 2, "", `lukv profile build: --grid must be an integer between 1 and 100000, got ${JSON.stringify(grid)}`]);
  }
  // Decimal spellings still work: a leading +, a point, an exponent in a ratio.
  for (const keep of ["+3", "03"]) expect([keep, (await run(["solve", curves, "--keep", keep])).code]).toEqual([keep, 0]);
  for (const ratio of ["5e-1", ".5", "+0.5", "1.", "1"]) expect([ratio, (await run(["profile", "inspect", profile, "--ratio", ratio])).code]).toEqual([ratio, 0]);
});

test("an item listed twice in a list option is refused (the same setting ran twice and was printed twice)", async () => {
  const cases: [string[], string][] = [
    [["eval", "--model", dir, "--scorers", "snapkv,keydiff,snapkv"], "lukv eval: --scorers lists snapkv twice"],
    [["eval", "--model", dir, "--allocations", "uniform, uniform"], "lukv eval: --allocations lists uniform twice"],
    [["eval", "--model", dir, "--ratios", "0.5,0.5"], "lukv eval: --ratios lists 0.5 twice"],
    [["eval", "--model", dir, "--ratios", "0.5,0.8,0.50"], "lukv eval: --ratios lists 0.5 twice"],
    [["eval", "--task", "niah,niah"], "lukv eval: --task lists niah twice"],
    [["eval", "--task", "niah", "--question", "after,after"], "lukv eval: --question lists after twice"],
    [["eval", "--task", "niah", "--ratios", "0.9,.9"], "lukv eval: --ratios lists 0.9 twice"],
  ];
  for (const [argv, message] of cases) {
    const r = await run(argv);
    expect([argv, r.code, r.out, firstLine(r.err)]).toEqual([argv, 2, "", message]);
  }
});

test("--ea-epsilon and --ea-future-positions past the scorer's range are usage errors, before the model is loaded", async () => {
  const missing = path.join(tmp, "no-such-model");
  const cases: [string[], string][] = [
    [["--ea-future-positions", "2000000"], "lukv eval: --ea-future-positions expects an integer between 1 and 1048576, got 2000000"],
    [["--ea-future-positions", "1048577"], "lukv eval: --ea-future-positions expects an integer between 1 and 1048576, got 1048577"],
    [["--ea-future-positions", "0"], "lukv eval: --ea-future-positions expects an integer between 1 and 1048576, got 0"],
    [["--ea-epsilon", "1e39"], "lukv eval: --ea-epsilon expects a number between 0 and 3.4028234663852886e+38 (the float32 range), got 1e39"],
    [["--ea-epsilon", "-0.5"], "lukv eval: --ea-epsilon expects a number between 0 and 3.4028234663852886e+38 (the float32 range), got -0.5"],
  ];
  for (const [argv, message] of cases) {
    const r = await run(["eval", "--task", "niah", "--model", missing, "--scorers", "expected-attention", ...argv]);
    expect([argv, r.code, r.out, firstLine(r.err)]).toEqual([argv, 2, "", message]);
  }
  // The ends of the range pass: the run goes on to load the model (which is missing here).
  for (const argv of [["--ea-future-positions", "1048576"], ["--ea-epsilon", "3.4e38"]])
    await expect(run(["eval", "--task", "niah", "--model", missing, "--scorers", "expected-attention", ...argv])).rejects.toThrow(/no such model directory/);
});

test("demo --tokens that make a cache too large to allocate: a usage error naming --tokens, before anything is printed", async () => {
  const random = await run(["demo", "--random", "--tokens", "9007199254740991", "--steps", "1"]);
  expect([random.code, random.out, firstLine(random.err)]).toEqual([
    2,
    "",
    "lukv demo: --tokens 9007199254740991 with --steps 1 needs a KV cache larger than can be allocated: give a smaller --tokens or --steps",
  ]);
  const modelDemo = await run(["demo", "--model", dir, "--tokens", "1000000000000"]);
  expect([modelDemo.code, modelDemo.out, firstLine(modelDemo.err)]).toEqual([
    2,
    "",
    "lukv demo: --tokens 1000000000000 needs a KV cache larger than can be allocated: give a smaller --tokens",
  ]);
});

test("eval sizes its cache for what runs: --error-steps clipped to --tokens - 1, --tokens not counted without a window", async () => {
  const out = path.join(tmp, "sizing.json");
  const quick = ["--scorers", "snapkv", "--allocations", "uniform", "--ratios", "0.5", "--out", out];
  const clipped = await run(["eval", "--model", dir, "--texts", "1", "--windows", "1", "--context", "36", "--tokens", "3", "--passkeys", "0", "--error-steps", "1000000000000", ...quick]);
  expect([clipped.code, clipped.err]).toEqual([0, ""]);
  const result = JSON.parse(fs.readFileSync(out, "utf8"));
  expect([result.settings.errorSteps, result.samples.length]).toEqual([2, 1]);
  expect(result.rows[0].outputError).toBeGreaterThanOrEqual(0);
  // No window has 3e9 tokens: passkeys only, and the cache is sized for the prompt.
  const passkeys = await run(["eval", "--model", dir, "--tokens", "3000000000", "--passkeys", "1", ...quick]);
  expect([passkeys.code, passkeys.err]).toEqual([0, ""]);
  expect(passkeys.out).toContain("passkeys only");
  expect(JSON.parse(fs.readFileSync(out, "utf8")).full.passkeyPrompts).toBe(1);
});
