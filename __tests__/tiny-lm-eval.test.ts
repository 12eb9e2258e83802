// `lukv eval` on a random-weight model directory: the table and JSON cover every setting, ratio 0
// reproduces the full cache exactly, and the full-cache perplexity equals one computed directly.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { main } from "../ts/cli";
import { loadTinyLM, modelTexts, passkeyPrompts } from "../ts/model";
import { QUESTION, questionStart, type EvalResult } from "../ts/cli/eval";
import { rng, testSeed } from "./helpers/random";
import { Sequence, createProfile, saveProfile } from "../ts";

const compress = Sequence.prototype.compress;
import { makeModelDir } from "./tiny-lm-fixture";

const seed = testSeed("tiny-lm-eval");

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "", err = "";
  const code = await main(argv, { out: (s) => (out += s.endsWith("\n") ? s : s + "\n"), err: (s) => (err += s + "\n") });
  return { code, out, err };
}

let dir: string;
let outDir: string;
beforeAll(() => {
  dir = makeModelDir(rng(seed));
  outDir = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-eval-"));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(outDir, { recursive: true, force: true });
});

const small = ["--texts", "1", "--windows", "2", "--context", "96", "--tokens", "16"];

test("every scorer x allocation x ratio gets a row; lukv is calibrated on the spot without a profile file", async () => {
  const out = path.join(outDir, "eval.json");
  const r = await run(["eval", "--model", dir, ...small, "--ratios", "0.5,0.9", "--out", out]);
  expect(r.code).toBe(0);
  expect(r.out).toMatch(/2 passkey prompts \(question after compression\)/);
  expect(r.out).toMatch(/note: lukv with snapkv, keydiff uses a profile calibrated now on 1 calibration texts/);
  const j = JSON.parse(fs.readFileSync(out, "utf8")) as EvalResult & { command: string };
  expect(j.command).toBe(["lukv", "eval", "--model", dir, ...small, "--ratios", "0.5,0.9", "--out", out].join(" "));
  expect(j.rows.map((x) => `${x.scorer} ${x.ratio} ${x.allocation}`)).toEqual(
    ["snapkv", "keydiff"].flatMap((s) => [0.5, 0.9].flatMap((q) => ["uniform", "pyramidkv", "adakv", "lukv"].map((a) => `${s} ${q} ${a}`))),
  );
  expect(j.samples.length).toBe(2);
  expect(j.full.scoredTokens).toBe(2 * 15);
  expect(j.full.agreement).toBe(1);
  expect(j.full.passkeyPrompts).toBe(2);
  for (const x of j.rows) {
    expect(x.scoredTokens).toBe(30);
    expect(x.perplexity).toBeGreaterThan(1);
    expect(x.agreement).toBeGreaterThanOrEqual(0);
    expect(x.agreement).toBeLessThanOrEqual(1);
    expect(x.passkeyPrompts).toBe(2);
  }
  // The table: a header, a rule, the full cache and one line per row.
  const table = r.out.split("\n").filter((l) => l.startsWith("|"));
  expect(table.length).toBe(3 + j.rows.length);
  expect(table[2]).toMatch(/^\| full cache +\| - +\| - +\| +[\d.]+% \| +[\d.]+ \| +[\d.]+ \| +- \| +100% \| +0\.000 \|$/);
  // The output error: 0 for the full cache, one value per window, larger at the higher ratio.
  expect(j.full.outputError).toBe(0);
  for (const x of j.rows) {
    expect(x.windowOutputError.length).toBe(2);
    expect(x.outputError).toBeGreaterThan(0);
  }
  const err = (q: number) => j.rows.filter((x) => x.ratio === q && x.allocation === "uniform").map((x) => x.outputError);
  err(0.5).forEach((e, i) => expect(e).toBeLessThan(err(0.9)[i]));
  expect(j.full.passkeyAnswerNll).toBeGreaterThan(0);
  expect(j.full.windowNll.length).toBe(2);
  expect(j.rows[0].windowAgreement.length).toBe(2);
  expect(r.out).toMatch(/LU-KV against the best other allocation \(by perplexity\):\n {2}snapkv 0\.50: perplexity [\d.]+ vs [\d.]+ \(\w+\), agreement [\d.]+% vs [\d.]+%; lower NLL in [0-2] of 2 windows/);
});

test.each(["after", "with"])("at ratio 0 every setting reproduces the full cache (question %s), whose perplexity matches a direct computation", async (question) => {
  const out = path.join(outDir, "zero.json");
  const r = await run(["eval", "--model", dir, ...small, "--ratios", "0", "--allocations", "uniform,adakv", "--passkeys", "2", "--question", question, "--out", out]);
  expect(r.code).toBe(0);
  const j = JSON.parse(fs.readFileSync(out, "utf8")) as EvalResult;
  for (const x of j.rows) {
    expect(x.agreement).toBe(1);
    expect(x.perplexity).toBeCloseTo(j.full.perplexity, 10);
    expect(x.passkeyCorrect).toBe(j.full.passkeyCorrect);
    expect(x.passkeyAnswerNll).toBeCloseTo(j.full.passkeyAnswerNll, 10);
    expect(x.outputError).toBe(0);
  }
  // Directly: each window in one forward pass, the continuation's tokens 1..15 scored.
  const model = loadTinyLM(dir);
  const tok = model.tokenizer!;
  const ids = tok.encode(modelTexts(dir, "heldout")[0].text);
  const V = model.config.vocabSize;
  let nll = 0, n = 0;
  for (const w of [0, 1]) {
    const window = [tok.bos!, ...ids.slice(w * 111, (w + 1) * 111)];
    using cache = model.createCache({ contextTokens: 128 });
    using seq = cache.createSequence();
    const logits = model.forward(seq, window, { logits: "all" });
    for (let t = 96; t < 111; t++) {
      const row = logits.subarray(t * V, (t + 1) * V);
      const m = Math.max(...row);
      nll += m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0)) - row[window[t + 1]];
      n++;
    }
  }
  // relative: a seeded random model can have perplexities of 1e10 and more, where a fixed number
  // of decimals asks for agreement below the last bit of a double
  expect(Math.abs(j.full.perplexity / Math.exp(nll / n) - 1)).toBeLessThan(1e-9);
});

test("bad options: exit code 2 and the usage", async () => {
  for (const argv of [["--ratios", "1"], ["--scorers", "snapkv,nope"], ["--texts", "-1"], ["--question", "before"], ["--bogus"], ["extra"], ["--error-steps", "0"]]) {
    const { code, err } = await run(["eval", "--model", dir, ...argv]);
    expect(code).toBe(2);
    expect(err).toMatch(/usage: lukv eval/);
  }
});

test("every passkey prompt ends with the question, so it can be fed after compressing the text", () => {
  const tok = loadTinyLM(dir).tokenizer!;
  const question = tok.encode(QUESTION);
  for (const p of passkeyPrompts(dir)) {
    const ids = [tok.bos!, ...tok.encode(p.prompt)];
    const at = questionStart(ids, question);
    expect(at).toBe(ids.length - question.length);
    expect(tok.decode(ids.slice(0, at)) + QUESTION).toBe(p.prompt);
  }
  expect(questionStart([1, 2, 3], question)).toBe(3);
});

test("--scorers h2o: the attention mass is accumulated during the prefill, and lukv gets an h2o profile calibrated now", async () => {
  const out = path.join(outDir, "h2o.json");
  const r = await run(["eval", "--model", dir, "--texts", "1", "--windows", "1", "--context", "96", "--tokens", "8", "--passkeys", "1", "--scorers", "h2o", "--allocations", "uniform,lukv", "--ratios", "0.5", "--out", out]);
  expect([r.code, r.err]).toEqual([0, ""]);
  expect(r.out).toMatch(/note: lukv with h2o uses a profile calibrated now on 1 calibration texts \([1-9]\d* contexts/);
  const j = JSON.parse(fs.readFileSync(out, "utf8")) as EvalResult;
  expect(j.rows.map((x) => `${x.scorer} ${x.allocation}`)).toEqual(["h2o uniform", "h2o lukv"]);
  for (const x of j.rows) {
    expect(x.scoredTokens).toBe(7);
    expect(x.passkeyPrompts).toBe(1);
    expect(x.outputError).toBeGreaterThan(0);
  }
});

test("a context shorter than the sink and window, or nothing to evaluate, is refused before the run", async () => {
  const out = path.join(outDir, "nothing.json");
  const cases: [string[], string][] = [
    [["--context", "35"], "lukv eval: --context expects an integer >= 36 (compression keeps the first 4 and last 32 tokens of every head), got 35"],
    [["--texts", "0", "--passkeys", "0"], "lukv eval: nothing to evaluate: --texts 0, and --passkeys 0"],
    [["--context", "100000", "--passkeys", "0"], "lukv eval: nothing to evaluate: no held-out text has the --context 100000 + --tokens 128 tokens of a window, and --passkeys 0"],
  ];
  for (const [argv, message] of cases) {
    const r = await run(["eval", "--model", dir, ...argv, "--out", out]);
    expect([argv, r.code, r.out, r.err.split("\n")[0]]).toEqual([argv, 2, "", message]);
  }
  expect(fs.existsSync(out)).toBe(false);
});

test("passkeys only (no window fits): a note, and '-' rather than NaN in the table", async () => {
  const out = path.join(outDir, "passkeys-only.json");
  const r = await run(["eval", "--model", dir, "--context", "100000", "--passkeys", "1", "--scorers", "snapkv", "--allocations", "uniform", "--ratios", "0.5", "--out", out]);
  expect([r.code, r.err]).toEqual([0, ""]);
  expect(r.out).toContain("note: no held-out text has the --context 100000 + --tokens 128 tokens of a window: passkeys only, no perplexity, agreement or output error\n");
  expect(r.out).not.toMatch(/NaN/);
  const table = r.out.split("\n").filter((l) => l.startsWith("|"));
  expect(table[2]).toMatch(/^\| full cache +\| - +\| - +\| +[\d.]+% \| +[\d.]+ \| +- \| +- \| +- \| +- \|$/);
  expect(table[3]).toMatch(/^\| snapkv +\| 0\.50 +\| uniform +\| +[\d.]+% \| +[\d.]+ \| +- \| +- \| +- \| +- \|$/);
});

test("--question with: compress sees the prompt but its last token, fed after it (the first answer token was predicted from the full cache's prefill)", async () => {
  const tok = loadTinyLM(dir).tokenizer!;
  const lengths = passkeyPrompts(dir).map((p) => 1 + tok.encode(p.prompt).length);
  for (const [mode, want] of [
    ["with", lengths.map((n) => n - 1)],
    ["after", lengths.map((n) => n - tok.encode(QUESTION).length)],
  ] as const) {
    const seen: number[] = [];
    const spy = jest.spyOn(Sequence.prototype, "compress").mockImplementation(function (this: Sequence, options) {
      seen.push(this.appended(0));
      return compress.call(this, options);
    });
    try {
      const r = await run(["eval", "--model", dir, "--texts", "0", "--scorers", "knorm", "--allocations", "uniform", "--ratios", "0.5", "--question", mode, "--out", path.join(outDir, `question-${mode}.json`)]);
      expect([mode, r.code, r.err]).toEqual([mode, 0, ""]);
    } finally {
      spy.mockRestore();
    }
    expect([mode, seen]).toEqual([mode, want]);
  }
});

test("ratios are shown as given (0.501 is not 0.50), and the fraction evicted is recorded, with a note where the sink and window kept more", async () => {
  const out = path.join(outDir, "labels.json");
  const r = await run(["eval", "--model", dir, "--texts", "1", "--windows", "1", "--context", "40", "--tokens", "4", "--passkeys", "0", "--scorers", "knorm", "--allocations", "uniform", "--ratios", "0.501,0.504", "--out", out]);
  expect([r.code, r.err]).toEqual([0, ""]);
  const table = r.out.split("\n").filter((l) => l.startsWith("| knorm"));
  expect(table.map((l) => l.split("|")[2].trim())).toEqual(["0.501", "0.504"]);
  const j = JSON.parse(fs.readFileSync(out, "utf8")) as EvalResult;
  // 40 tokens per head, of which every head keeps its first 4 and last 32: 10% evicted at most.
  for (const row of j.rows) expect(row.evicted).toBeCloseTo(0.1, 10);
  expect(j.full.evicted).toBe(0);
  expect(r.out).toContain("note: knorm uniform at ratio 0.501 evicted 10.0% of the tokens: every head keeps its first 4 and last 32\n");
});

test("a profile calibrated with other sink or window floors than the evaluation's is named in its note", async () => {
  const { layers, kvHeads } = loadTinyLM(dir).config;
  const file = path.join(dir, "profile-knorm.json");
  saveProfile(createProfile({ table: new Float64Array(99 * layers * kvHeads).fill(0.5), layers, kvHeads, meta: { scorer: "knorm", sink: 4, window: 1 } }), file);
  try {
    const r = await run(["eval", "--model", dir, "--texts", "1", "--windows", "1", "--context", "64", "--tokens", "4", "--passkeys", "0", "--scorers", "knorm", "--allocations", "lukv", "--ratios", "0.5", "--out", path.join(outDir, "floors.json")]);
    expect([r.code, r.err]).toEqual([0, ""]);
    expect(r.out).toContain(`note: lukv with knorm uses ${file}, calibrated with sink 4 and window 1 (this evaluation compresses with sink 4 and window 32)\n`);
  } finally {
    fs.rmSync(file);
  }
});
