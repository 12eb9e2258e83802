// `lukv demo`: on a random-weight model directory (the output's numbers are checked against the
// cache), on the embedded model with no arguments (fails while models/tiny-lm lacks the model), and
// the synthetic `--random` demo.
import * as fs from "fs";
import * as path from "path";
import { main } from "../ts/cli";
import { saveProfile } from "../ts";
import { calibrateTinyLM, defaultModelDir, loadTinyLM, modelTexts } from "../ts/model";
import { rng, testSeed } from "./helpers/random";
import { makeModelDir } from "./tiny-lm-fixture";

const seed = testSeed("demo");

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "", err = "";
  const code = await main(argv, { out: (s) => (out += s.endsWith("\n") ? s : s + "\n"), err: (s) => (err += s + "\n") });
  return { code, out, err };
}

/** The two byte counts of a line such as "prompt KV memory   52.0 KiB   12.0 KiB". */
function bytesOf(out: string, label: string): [number, number] {
  const line = out.split("\n").find((l) => l.startsWith(label));
  expect(line).toBeDefined();
  const m = [...line!.matchAll(/([\d.]+) (KiB|MiB)/g)].map((x) => Number(x[1]) * (x[2] === "KiB" ? 1024 : 2 ** 20));
  expect(m.length).toBe(2);
  return [m[0], m[1]];
}

describe("lukv demo on a random-weight model", () => {
  let dir: string;
  beforeAll(() => {
    dir = makeModelDir(rng(seed));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test("without a profile: Ada-KV, memory and agreement reported", async () => {
    const { code, out } = await run(["demo", "--model", dir, "--prompt-tokens", "200", "--tokens", "12", "--dtype", "f32"]);
    expect(code).toBe(0);
    expect(out).toMatch(/prompt: .*handbook-1\.txt, 200 tokens; then 12 tokens, greedy/);
    expect(out).toMatch(/compression: evict 80% of the prompt's KV, Ada-KV allocation, snapkv scorer \(no LU-KV profile for snapkv in /);
    // f32, 2 layers x 2 KV heads x 200 tokens x headDim 8 x (K + V) x 4 bytes, in whole pages of 16 tokens.
    const [full, compressed] = bytesOf(out, "prompt KV memory");
    expect(full).toBe(4 * Math.ceil(200 / 16) * 16 * 8 * 2 * 4);
    // 40 tokens per head in pages of 16.
    expect(compressed).toBe(4 * 3 * 16 * 8 * 2 * 4);
    expect(out).toMatch(/^ +full cache +Ada-KV 80%$/m);
    expect(out).toMatch(/KV tokens kept \(all heads\) +800 +160 \(20%\)/);
    // What was asked was evicted: no note about the sink and window floor.
    expect(out).not.toMatch(/^note:/m);
    expect(out).toMatch(/decode ms\/token \(median\) +[\d.]+ +[\d.]+/);
    expect(out).toMatch(/ {2}of which lukv attention +[\d.]+ +[\d.]+/);
    const agree = out.match(/agreement with the full cache: (\d+)\/12 greedy tokens identical/);
    expect(agree).not.toBeNull();
    expect(out).toMatch(/^full cache: +\S/m);
    expect(out).toMatch(/^compressed: +\S/m);
  });

  test("with the model's profile: LU-KV", async () => {
    const model = loadTinyLM(dir);
    const { profiles } = calibrateTinyLM(model, modelTexts(dir, "calibration"), { contexts: [128, 160], decodeSteps: 8 });
    saveProfile(profiles.get("snapkv")!, path.join(dir, "profile.json"));
    const { code, out } = await run(["demo", "--model", dir, "--prompt-tokens", "150", "--tokens", "6", "--ratio", "0.5"]);
    expect(code).toBe(0);
    expect(out).toMatch(/evict 50% of the prompt's KV, LU-KV allocation, snapkv scorer \(profile .*profile\.json\)/);
    // keydiff has no profile of its own: Ada-KV again.
    const kd = await run(["demo", "--model", dir, "--prompt-tokens", "100", "--tokens", "4", "--scorer", "keydiff"]);
    expect(kd.out).toMatch(/Ada-KV allocation, keydiff scorer \(no LU-KV profile for keydiff/);
  });

  test.each(["h2o", "expected-attention"])("--scorer %s runs: attention mass or query statistics are gathered during the prefill", async (scorer) => {
    const { code, out, err } = await run(["demo", "--model", dir, "--scorer", scorer, "--prompt-tokens", "200", "--tokens", "4", "--ratio", "0.5"]);
    expect([code, err]).toEqual([0, ""]);
    expect(out).toMatch(new RegExp(`evict 50% of the prompt's KV, Ada-KV allocation, ${scorer} scorer`));
    expect(out).toMatch(/KV tokens kept \(all heads\) +800 +400 \(50%\)/);
    expect(out).toMatch(/agreement with the full cache: \d\/4 greedy tokens identical/);
  });

  test("where the sink and window keep more than the ratio asks, the demo says what it evicted", async () => {
    const { code, out } = await run(["demo", "--model", dir, "--prompt-tokens", "100", "--tokens", "2", "--ratio", "0.99", "--allocation", "uniform"]);
    expect(code).toBe(0);
    expect(out).toMatch(/compression: evict 99% of the prompt's KV, uniform allocation/);
    // 2 layers x 2 KV heads x (4 sink + 32 window) = 144 of 400 kept: 64% evicted.
    expect(out).toMatch(/^ +full cache +uniform 64%$/m);
    expect(out).toMatch(/KV tokens kept \(all heads\) +400 +144 \(36%\)/);
    expect(out).toContain("note: 64% of the prompt's KV evicted, not the 99% asked: every head keeps its first 4 and last 32 tokens (144 tokens kept, 4 asked)\n");
  });

  test("--tokens 1: no decode step runs, and the decode rows show – with a note, not NaN", async () => {
    const { code, out } = await run(["demo", "--model", dir, "--prompt-tokens", "64", "--tokens", "1", "--dtype", "f32"]);
    expect(code).toBe(0);
    expect(out).not.toMatch(/NaN/);
    expect(out).toMatch(/^decode ms\/token \(median\) +– +–$/m);
    expect(out).toMatch(/^ {2}of which lukv attention +– +–$/m);
    expect(out).toMatch(/^note: no decode time with one token: it comes from the prompt's logits, and no decode step ran$/m);
    expect(out).toMatch(/agreement with the full cache: 1\/1 greedy tokens identical/);
  });

  test("a prompt shorter than the sink and window is refused before anything runs", async () => {
    const short = await run(["demo", "--model", dir, "--prompt-tokens", "35", "--tokens", "2"]);
    expect([short.code, short.out]).toEqual([2, ""]);
    expect(short.err.split("\n")[0]).toBe("lukv demo: --prompt-tokens expects an integer >= 36 (every head keeps its first 4 and last 32 tokens), got 35");
    const least = await run(["demo", "--model", dir, "--prompt-tokens", "36", "--tokens", "2"]);
    expect(least.code).toBe(0);
    expect(least.out).toMatch(/KV tokens kept \(all heads\) +144 +144 \(100%\)/);
    const file = path.join(dir, "short.txt");
    fs.writeFileSync(file, "hi");
    let out = "";
    await expect(main(["demo", "--model", dir, "--text", file], { out: (s) => (out += s), err: () => {} })).rejects.toThrow(
      `${file} gives a prompt of 2 tokens (BOS included); the demo needs at least 36: every head keeps its first 4 and last 32 tokens`,
    );
    expect(out).toBe("");
  });

  test("bad options: exit code 2 and the usage", async () => {
    for (const argv of [["--ratio", "1"], ["--tokens", "0"], ["--scorer", "nope"], ["--bogus"], ["extra"]]) {
      const { code, err } = await run(["demo", "--model", dir, ...argv]);
      expect(code).toBe(2);
      expect(err).toMatch(/usage: lukv demo/);
    }
  });
});

test("lukv demo --help: every scorer, and what --tokens and --steps mean with --random", async () => {
  const { code, out } = await run(["demo", "--help"]);
  expect(code).toBe(0);
  expect(out).toContain("--scorer S           snapkv | keydiff | knorm | tova | h2o | streaming | random | expected-attention [snapkv]");
  expect(out).toContain("--tokens N           tokens to generate [48]");
  expect(out).toMatch(/--random {13}the synthetic-data demo instead: .*\n.*it takes only these options:\n {4}--tokens N {9}tokens to prefill \[2048\]\n {4}--steps N {10}tokens to decode \[16\]/);
});

test("lukv demo --random still runs the synthetic demo", async () => {
  const { code, out } = await run(["demo", "--random", "--tokens", "64", "--steps", "2"]);
  expect(code).toBe(0);
  expect(out).toMatch(/prefill: 64 tokens/);
  expect(out).toMatch(/decode: [\d.]+ ms\/token/);
});

const weights = fs.existsSync(path.join(defaultModelDir(), "model.safetensors"));

(weights ? test.skip : test)("without the trained weights, lukv demo says so and runs the synthetic demo", async () => {
  const { code, out } = await run(["demo"]);
  expect(code).toBe(0);
  expect(out).toMatch(/The embedded model is not in this copy of lukv \(.+model\.safetensors is missing\); running the synthetic-data demo instead\./);
  expect(out).toMatch(/decode: [\d.]+ ms\/token/);
});

(weights ? test : test.skip)("lukv demo with no arguments runs the embedded model", async () => {
  const t0 = performance.now();
  const { code, out } = await run(["demo"]);
  // eslint-disable-next-line no-console
  console.log(`lukv demo took ${((performance.now() - t0) / 1000).toFixed(1)} s:\n${out}`);
  expect(code).toBe(0);
  expect(out).toMatch(/prompt: models\/tiny-lm\/heldout\/\S+\.txt, \d+ tokens; then 48 tokens, greedy/);
  const [full, compressed] = bytesOf(out, "prompt KV memory");
  expect(compressed).toBeLessThan(full * 0.3);
  expect(out).toMatch(/agreement with the full cache: \d+\/48 greedy tokens identical/);
});
