// `lukv eval --model recall-lm --task ...` on a handful of held-out instances of the shipped
// model: the JSON has a row per task x question mode x setting, ratio 0 reproduces the full cache,
// and the full-cache answers are the ones PyTorch decodes from the same weights.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { main } from "../ts/cli";
import { calibrateRecall, fullAnswer, RECALL_TASKS, recallInstances, recallProfileName, recallScorerOptions, type RecallInstance, type RecallResult } from "../ts/cli/eval-recall";
import type { Profile } from "../ts/profile";
import { resolveModelDir } from "../ts/cli/eval";
import { loadTinyLM } from "../ts/model";

const dir = resolveModelDir("recall-lm");
const contextLength = (JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")) as { context_length: number }).context_length;
let outDir: string;
beforeAll(() => {
  outDir = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-recall-"));
});
afterAll(() => fs.rmSync(outDir, { recursive: true, force: true }));

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "", err = "";
  const code = await main(argv, { out: (s) => (out += s + "\n"), err: (s) => (err += s + "\n") });
  return { code, out, err };
}

test("--model recall-lm resolves to the shipped model, whose tokenizer reproduces the instances' token counts", () => {
  expect(dir).toBe(path.resolve(__dirname, "..", "models", "recall-lm"));
  const model = loadTinyLM(dir);
  const tok = model.tokenizer!;
  for (const task of RECALL_TASKS) {
    type Part = { question: string; answer: string; question_tokens: number; answer_tokens: number };
    const x = recallInstances(dir, "heldout", task)[0] as unknown as Part & { context: string; context_tokens: number; followups?: Part[] };
    expect(1 + tok.encode(x.context).length).toBe(x.context_tokens);
    for (const p of [x, ...(x.followups ?? [])]) {
      expect(tok.encode(p.question).length).toBe(p.question_tokens);
      expect(tok.encode(p.answer).length).toBe(p.answer_tokens);
    }
    const whole = x.context + x.question + fullAnswer(x);
    expect(tok.decode(tok.encode(whole))).toBe(whole);
  }
  // mq-niah asks two keys: the second answer follows a given prompt that names the second key
  const mq = recallInstances(dir, "heldout", "mq-niah")[0];
  expect(mq.followups).toHaveLength(1);
  expect(mq.followups![0].question).toMatch(/^ \. the special magic number for \w+ is$/);
  expect(mq.question).toMatch(new RegExp(`for \\w+ and ${mq.followups![0].question.split(" ").slice(-2)[0]} \\?`));
});

test("recallInstances checks the instances' fields, follow-ups included", () => {
  const d = fs.mkdtempSync(path.join(outDir, "instances-"));
  fs.mkdirSync(path.join(d, "heldout"));
  const write = (instances: unknown) => fs.writeFileSync(path.join(d, "heldout", "mq-niah.json"), JSON.stringify({ instances }));
  const good = { context: " a", question: " q", answer: " 1", followups: [{ question: " . r", answer: " 2" }] };
  write([good]);
  expect(recallInstances(d, "heldout", "mq-niah")).toEqual([good]);
  expect(fullAnswer(good)).toBe(" 1 . r 2");
  for (const bad of [[{ ...good, answer: 1 }], [{ ...good, followups: {} }], [{ ...good, followups: [{ question: " . r" }] }], { x: 1 }]) {
    write(bad);
    expect(() => recallInstances(d, "heldout", "mq-niah")).toThrow(/"instances" must be an array of \{context, question, answer\} strings, with optional followups/);
  }
  expect(() => recallInstances(d, "heldout", "vt")).toThrow(/vt\.json is missing/);
});

test("a handful of instances per task: JSON shape, ratio 0 equals the full cache, full-cache answers equal PyTorch's", async () => {
  const out = path.join(outDir, "recall.json");
  const argv = ["eval", "--model", "recall-lm", "--task", "all", "--instances", "2", "--scorers", "snapkv", "--allocations", "uniform,lukv", "--ratios", "0,0.8", "--question", "after", "--out", out];
  const r = await run(argv);
  expect(r.err).toBe("");
  expect(r.code).toBe(0);
  const j = JSON.parse(fs.readFileSync(out, "utf8")) as RecallResult & { command: string };
  expect(j.command).toBe(["lukv", ...argv].join(" "));
  // per task: the full cache, then scorer x ratio x allocation (lukv with the shipped profile)
  expect(r.out).toMatch(/note: lukv with snapkv uses .*profile-snapkv\.json/);
  const expected = RECALL_TASKS.flatMap((t) => [`${t} after full full 0`, ...[0, 0.8].flatMap((ratio) => ["uniform", "lukv"].map((a) => `${t} after snapkv ${a} ${ratio}`))]);
  expect(j.rows.map((x) => `${x.task} ${x.question} ${x.scorer} ${x.allocation} ${x.ratio}`)).toEqual(expected);
  for (const task of RECALL_TASKS) {
    const rows = j.rows.filter((x) => x.task === task);
    const full = rows[0];
    expect(full.instances).toBe(2);
    // the instances fit the length they were generated for (export.py --length)
    expect(j.contextTokens[task][1]).toBeLessThanOrEqual(contextLength);
    expect(j.contextTokens[task][1]).toBeGreaterThan(contextLength - 64);
    // the TypeScript forward pass with lukv's cache decodes what PyTorch decoded (export.py),
    // and an instance counts as correct exactly when that answer is the expected one
    const held = recallInstances(dir, "heldout", task).slice(0, 2) as (RecallInstance & { model_answer: string })[];
    expect(full.answers).toEqual(held.map((x) => x.model_answer));
    expect(full.correct).toBe(held.filter((x) => x.model_answer === fullAnswer(x)).length);
    for (const x of rows) {
      expect(x.instances).toBe(2);
      expect(x.accuracy).toBeCloseTo(x.correct / x.instances, 12);
      // every setting's answers are recorded, and its count of correct ones is theirs
      expect(x.answers.length).toBe(2);
      expect(x.correct).toBe(held.filter((h, i) => x.answers[i] === fullAnswer(h)).length);
      expect(x.decodeMs).toBeGreaterThan(0);
      if (x.ratio === 0) {
        // nothing evicted: the same answers and the same memory as the full cache
        expect(x.answers).toEqual(full.answers);
        expect(x.kvBytes).toBe(full.kvBytes);
      } else {
        // 20% of the context, but never less than the sink and window (36 tokens per head),
        // a larger share of the shortest contexts
        expect(x.kvBytes).toBeLessThan(Math.max(0.25, 36 / j.contextTokens[task][0] + 0.05) * full.kvBytes);
        expect(x.kvBytes).toBeGreaterThan(0.15 * full.kvBytes);
      }
    }
  }
  expect(r.out).toMatch(/question after compression:/);
  expect(r.out).toMatch(/\| full cache /);
});

test("question before compression: the question is prefilled and compressed with the context", async () => {
  const out = path.join(outDir, "recall-before.json");
  const r = await run(["eval", "--task", "niah", "--instances", "1", "--scorers", "snapkv", "--allocations", "uniform", "--ratios", "0", "--question", "before", "--out", out]);
  expect(r.code).toBe(0);
  const j = JSON.parse(fs.readFileSync(out, "utf8")) as RecallResult;
  expect(j.rows.map((x) => `${x.question} ${x.scorer} ${x.ratio}`)).toEqual(["before full 0", "before snapkv 0"]);
  // the prefilled prefix holds the question (all but its last token): more KV than the context alone
  const model = loadTinyLM(dir);
  const x = recallInstances(dir, "heldout", "niah")[0];
  const perToken = 2 * model.config.headDim * 4 * model.config.layers * model.config.kvHeads;
  expect(j.rows[0].kvBytes).toBe((1 + model.tokenizer!.encode(x.context).length + model.tokenizer!.encode(x.question).length - 1) * perToken);
  expect(j.rows[1].correct).toBe(j.rows[0].correct);
});

test("expected-attention runs on recall-lm with the model's RoPE: ratio 0 equals the full cache, 80% keeps about a fifth", async () => {
  const out = path.join(outDir, "recall-ea.json");
  const r = await run(["eval", "--task", "niah", "--instances", "1", "--scorers", "expected-attention", "--allocations", "uniform,lukv", "--ratios", "0,0.8", "--question", "after", "--out", out]);
  expect(r.err).toBe("");
  expect(r.code).toBe(0);
  expect(r.out).toMatch(/note: lukv with expected-attention uses .*profile-expected-attention\.json/);
  const j = JSON.parse(fs.readFileSync(out, "utf8")) as RecallResult;
  expect(j.rows.map((x) => `${x.scorer} ${x.allocation} ${x.ratio}`)).toEqual(["full full 0", ...[0, 0.8].flatMap((ratio) => ["uniform", "lukv"].map((a) => `expected-attention ${a} ${ratio}`))]);
  const full = j.rows[0];
  for (const x of j.rows.slice(1)) {
    if (x.ratio === 0) {
      expect(x.correct).toBe(full.correct);
      expect(x.kvBytes).toBe(full.kvBytes);
    } else {
      expect(x.kvBytes).toBeLessThan(0.25 * full.kvBytes);
      expect(x.kvBytes).toBeGreaterThan(0.15 * full.kvBytes);
    }
  }
});

test("--ea-epsilon and --ea-future-positions are recorded in the settings; bad values are usage errors", async () => {
  const out = path.join(outDir, "recall-ea-options.json");
  const r = await run(["eval", "--task", "niah", "--instances", "1", "--scorers", "expected-attention,snapkv", "--allocations", "uniform", "--ratios", "0.8", "--question", "after", "--ea-epsilon", "0", "--ea-future-positions", "64", "--out", out]);
  expect(r.err).toBe("");
  expect(r.code).toBe(0);
  const j = JSON.parse(fs.readFileSync(out, "utf8")) as RecallResult;
  expect(j.settings.expectedAttention).toEqual({ epsilon: 0, futurePositions: 64 });
  expect(j.rows.map((x) => x.scorer)).toEqual(["full", "expected-attention", "snapkv"]);
  for (const bad of [["--ea-epsilon", "-1"], ["--ea-epsilon", "x"], ["--ea-epsilon", ""], ["--ea-future-positions", "0"], ["--ea-future-positions", "2.5"]]) {
    const b = await run(["eval", "--task", "niah", ...bad]);
    expect(b.code).toBe(2);
    expect(b.err).toMatch(new RegExp(`${bad[0]} expects`));
  }
});

test("calibrateRecall calibrates expected-attention with the given epsilon and future positions (in the profile's settings)", () => {
  const model = loadTinyLM(dir);
  const one = recallInstances(dir, "calibration", "niah").slice(0, 1);
  const own = calibrateRecall(model, one, ["expected-attention"], "test", undefined, { epsilon: 0, futurePositions: 64 }).get("expected-attention")!;
  // (the shipped profile, calibrated with the defaults, records epsilon 0.02 and 512 positions)
  const settings = (p: Profile) => (p.meta.scorerOptions as { expectedAttention: Record<string, unknown> }).expectedAttention;
  expect(settings(own)).toEqual({ epsilon: 0, futurePositions: 64, valueNorm: true, rope: { theta: model.config.ropeTheta } });
});

test("--pooling and --kernel: the scorers that pool get them, with their own profile file; bad values are usage errors", async () => {
  const s = { pooling: { pooling: "max" as const, kernel: 7 } };
  expect(recallScorerOptions(s, "keydiff")).toEqual({ pooling: "max", kernel: 7 });
  expect(recallScorerOptions(s, "streaming")).toEqual({});
  expect(recallScorerOptions({}, "keydiff")).toEqual({});
  expect(recallProfileName(s, "keydiff")).toBe("profile-keydiff-max-7.json");
  expect(recallProfileName(s, "snapkv")).toBe("profile-snapkv.json"); // max 7 is snapkv's default
  expect(recallProfileName({ pooling: { pooling: "none", kernel: 7 } }, "snapkv")).toBe("profile-snapkv-none.json");
  expect(recallProfileName(s, "random")).toBe("profile-random.json");

  const out = path.join(outDir, "recall-pooling.json");
  const r = await run(["eval", "--task", "niah", "--instances", "1", "--scorers", "keydiff,streaming", "--allocations", "uniform,lukv", "--ratios", "0.8", "--question", "after", "--pooling", "max", "--kernel", "7", "--out", out]);
  expect(r.err).toBe("");
  expect(r.code).toBe(0);
  expect(r.out).toMatch(/note: lukv with keydiff uses .*profile-keydiff-max-7\.json/);
  expect(r.out).toMatch(/note: lukv with streaming uses .*profile-streaming\.json/);
  expect(r.out).toMatch(/keydiff \(pooling max 7\)/);
  const j = JSON.parse(fs.readFileSync(out, "utf8")) as RecallResult;
  expect(j.settings.pooling).toEqual({ pooling: "max", kernel: 7 });
  expect(j.rows.map((x) => `${x.scorer} ${x.allocation} ${x.pooling ?? "-"}`)).toEqual([
    "full full -",
    "keydiff uniform max 7",
    "keydiff lukv max 7",
    "streaming uniform none",
    "streaming lukv none",
  ]);
  for (const bad of [["--pooling", "mean"], ["--pooling", "max", "--kernel", "4"], ["--pooling", "max", "--kernel", "0"], ["--kernel", "5"]]) {
    const b = await run(["eval", "--task", "niah", ...bad]);
    expect(b.code).toBe(2);
    expect(b.err).toMatch(/--(pooling|kernel) (expects|needs)/);
  }
});

test("bad --task and unknown options are usage errors", async () => {
  const a = await run(["eval", "--task", "nope"]);
  expect(a.code).toBe(2);
  expect(a.err).toMatch(/--task expects a comma-separated list of niah, mk-niah, mq-niah, vt/);
  const b = await run(["eval", "--task", "niah", "--texts", "3"]);
  expect(b.code).toBe(2);
  expect(b.err).toMatch(/unknown option --texts/);
});
