// What the command line leaves behind when output goes wrong: a reader that closes the pipe early,
// a results or plot file whose write fails partway, the default --out folder of a run that fails,
// and text from a crafted file in an error message. Some run the built command (dist/ts/cli.js) in
// a child process, as a shell would.
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { main } from "../ts/cli";
import { formatComparison, type EvalRow } from "../ts/cli/eval";
import { createProfile, saveProfile } from "../ts/profile";
import { rng, testSeed } from "./helpers/random";
import { makeModelDir } from "./tiny-lm-fixture";

const CLI = path.join(__dirname, "..", "dist", "ts", "cli.js");
const seed = testSeed("cli-output");

/** `script` run by bash with $0 = node and $1 = the built command; its exit status, stdout and stderr. */
function shell(script: string, cwd?: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("bash", ["-c", script, process.execPath, CLI], { cwd, encoding: "utf8", timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "", err = "";
  const code = await main(argv, { out: (s) => (out += s.endsWith("\n") ? s : s + "\n"), err: (s) => (err += s.endsWith("\n") ? s : s + "\n") });
  return { code, out, err };
}

let tmp: string;
let model: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-cli-output-"));
  model = makeModelDir(rng(seed));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.rmSync(model, { recursive: true, force: true });
});

/** A quick evaluation of the random-weight model: one window, one setting. */
const QUICK_EVAL = ["eval", "--texts", "1", "--windows", "1", "--context", "36", "--tokens", "2", "--passkeys", "0", "--scorers", "snapkv", "--allocations", "uniform", "--ratios", "0.5"];

describe("a reader that closes the pipe early (lukv … | head)", () => {
  test("the rest of the output is dropped without a stack trace, and the command keeps its exit status", () => {
    const curves = path.join(tmp, "wide.json");
    // Far more output than a pipe holds, so that writes go on after head has gone.
    fs.writeFileSync(curves, JSON.stringify(Array.from({ length: 20000 }, (_, h) => [0, h + 1, 2 * h + 3])));
    const solve = shell(`"$0" "$1" solve ${JSON.stringify(curves)} --keep 1000 | head -1; exit "\${PIPESTATUS[0]}"`);
    expect([solve.status, solve.stderr, solve.stdout]).toEqual([0, "", "LU-KV greedy on convex hulls: keep 1000 of 40000 tokens over 20000 heads\n"]);
    // stderr closed early too: nothing left to report to.
    const both = shell(`"$0" "$1" solve ${JSON.stringify(curves)} --keep 1000 2>&1 | head -1; exit "\${PIPESTATUS[0]}"`);
    expect([both.status, both.stdout]).toEqual([0, "LU-KV greedy on convex hulls: keep 1000 of 40000 tokens over 20000 heads\n"]);
  });

  test("a stdout that cannot be written for another reason is one line on stderr and exit 1", () => {
    if (!fs.existsSync("/dev/full")) return;
    const r = shell(`"$0" "$1" --help > /dev/full`);
    expect([r.status, r.stderr]).toEqual([1, "lukv: cannot write to stdout: ENOSPC: no space left on device\n"]);
  });
});

describe("a write that fails partway leaves the earlier file as it was", () => {
  test("eval --out: the earlier results stay, and the message names the file", () => {
    const out = path.join(tmp, "results.json");
    fs.writeFileSync(out, '{"earlier": "results"}\n');
    // ulimit -f 1: no file may grow past 1024 bytes; the results of one window are larger.
    const r = shell(`ulimit -f 1 && exec "$0" "$1" ${QUICK_EVAL.join(" ")} --model ${JSON.stringify(model)} --out ${JSON.stringify(out)} > /dev/null`);
    expect([r.status, r.stderr]).toEqual([1, `lukv: cannot write ${out}: EFBIG: file too large\n`]);
    expect(fs.readFileSync(out, "utf8")).toBe('{"earlier": "results"}\n');
    expect(fs.readdirSync(tmp).filter((f) => f.includes("results"))).toEqual(["results.json"]);
  });

  test("profile inspect --plot: the earlier plot stays", async () => {
    const dir = fs.mkdtempSync(path.join(tmp, "plot-"));
    const profile = path.join(dir, "p.json");
    saveProfile(createProfile({ table: Float64Array.from({ length: 9 * 64 }, (_, i) => ((i % 7) + 1) / 10), layers: 8, kvHeads: 8 }), profile);
    const plot = path.join(dir, "p.svg");
    expect((await run(["profile", "inspect", profile, "--plot", plot])).code).toBe(0);
    const earlier = fs.readFileSync(plot, "utf8");
    expect(earlier.length).toBeGreaterThan(4096);
    const r = shell(`ulimit -f 2 && exec "$0" "$1" profile inspect ${JSON.stringify(profile)} --plot ${JSON.stringify(plot)}`);
    expect([r.status, r.stdout, r.stderr]).toEqual([1, "", `lukv profile inspect: cannot write ${plot}: EFBIG: file too large\n`]);
    expect(fs.readFileSync(plot, "utf8")).toBe(earlier);
    expect(fs.readdirSync(dir).sort()).toEqual(["p.json", "p.svg"]);
  });
});

describe("the default --out (bench/results/eval.json under the working directory)", () => {
  test("its folder is created when the results are written, not by a run that fails before", () => {
    const cwd = fs.mkdtempSync(path.join(tmp, "cwd-"));
    const failed = shell(`exec "$0" "$1" eval --model ${JSON.stringify(path.join(tmp, "no-such-model"))}`, cwd);
    expect(failed.status).toBe(1);
    expect(failed.stderr).toMatch(/no such model directory/);
    expect(fs.readdirSync(cwd)).toEqual([]);
    const ok = shell(`exec "$0" "$1" ${QUICK_EVAL.join(" ")} --model ${JSON.stringify(model)}`, cwd);
    expect([ok.status, ok.stderr]).toEqual([0, ""]);
    expect(ok.stdout).toContain(`results written to ${path.join("bench", "results", "eval.json")}\n`);
    expect(JSON.parse(fs.readFileSync(path.join(cwd, "bench", "results", "eval.json"), "utf8")).rows).toHaveLength(1);
  });

  test("a default that cannot be created there is a usage error before the run", () => {
    const cwd = fs.mkdtempSync(path.join(tmp, "cwd-"));
    fs.writeFileSync(path.join(cwd, "bench"), "");
    const r = shell(`exec "$0" "$1" eval --model ${JSON.stringify(model)}`, cwd);
    expect([r.status, r.stdout, r.stderr.split("\n")[0]]).toEqual([
      2,
      "",
      `lukv eval: --out defaults to "bench/results/eval.json", which cannot be written here (${fs.realpathSync(cwd)}/bench is not a directory): give --out FILE`,
    ]);
  });
});

test("a .npy header's strings are printed with their control characters escaped, as Python writes them", async () => {
  const npy = (header: string) => {
    const text = header + " ".repeat(63 - ((10 + header.length) % 64)) + "\n";
    const bytes = Buffer.alloc(10 + text.length);
    bytes.write("\x93NUMPY\x01\x00", 0, "latin1");
    bytes.writeUInt16LE(text.length, 8);
    bytes.write(text, 10, "latin1");
    const file = path.join(tmp, "crafted.npy");
    fs.writeFileSync(file, bytes);
    return file;
  };
  const cases: [string, string][] = [
    ["{'descr': '<f8', 'fortran_order': False, 'shape': ('\\x1b]0;pwned\\x07\\x1b[2J',), }", "npy header 'shape' must be a tuple of non-negative integers but is ('\\x1b]0;pwned\\x07\\x1b[2J',)"],
    ["{'descr': '<f8', 'fortran_order': 'a\\'b\\\\c\\rd\\x9b', 'shape': (1, 1, 1), }", "npy header 'fortran_order' must be True or False but is 'a\\'b\\\\c\\rd\\x9b'"],
  ];
  for (const [header, message] of cases) {
    const file = npy(header);
    const r = await run(["profile", "inspect", file]);
    expect([r.code, r.out, r.err]).toEqual([1, "", `lukv profile inspect: ${file}: ${message}\n`]);
    expect(r.err).not.toMatch(/[\x00-\x09\x0b-\x1f\x7f-\x9f]/);
  }
});

test("with no held-out window (passkeys only), LU-KV is not compared on perplexity: no 'NaN vs NaN, 0 of 0 windows'", () => {
  const row = (allocation: EvalRow["allocation"], perplexity: number, windowNll: number[]): EvalRow => ({
    scorer: "snapkv",
    allocation,
    ratio: 0.5,
    passkeyCorrect: 1,
    passkeyPrompts: 1,
    passkeyAccuracy: 1,
    passkeyAnswerNll: 0.5,
    perplexity,
    agreement: windowNll.length ? 0.9 : NaN,
    scoredTokens: windowNll.length,
    windowNll,
    windowAgreement: windowNll.map(() => 0.9),
    outputError: windowNll.length ? 0.1 : NaN,
    windowOutputError: windowNll.map(() => 0.1),
    evicted: 0.5,
  });
  expect(formatComparison({ rows: [row("uniform", NaN, []), row("adakv", NaN, []), row("lukv", NaN, [])] })).toBe("");
  expect(formatComparison({ rows: [row("uniform", 12, [2.5, 2.4]), row("adakv", 11, [2.4, 2.5]), row("lukv", 10, [2.3, 2.6])] })).toBe(
    "LU-KV against the best other allocation (by perplexity):\n  snapkv 0.50: perplexity 10.000 vs 11.000 (adakv), agreement 90.0% vs 90.0%; lower NLL in 1 of 2 windows",
  );
});
