// `lukv eval --model recall-lm --task ...` on a handful of held-out instances of the shipped
// model: the JSON has a row per task x question mode x setting, ratio 0 reproduces the full cache,
// and the model answers the needle tasks with the full cache.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { main } from "../ts/cli";
import { RECALL_TASKS, recallInstances, type RecallResult } from "../ts/cli/eval-recall";
import { resolveModelDir } from "../ts/cli/eval";
import { loadTinyLM } from "../ts/model";

const dir = resolveModelDir("recall-lm");
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
    const x = recallInstances(dir, "heldout", task)[0] as unknown as { context: string; question: string; answer: string; context_tokens: number; question_tokens: number; answer_tokens: number };
    expect(1 + tok.encode(x.context).length).toBe(x.context_tokens);
    expect(tok.encode(x.question).length).toBe(x.question_tokens);
    expect(tok.encode(x.answer).length).toBe(x.answer_tokens);
    expect(tok.decode(tok.encode(x.context + x.question + x.answer))).toBe(x.context + x.question + x.answer);
  }
});

test("a handful of instances per task: JSON shape, ratio 0 equals the full cache, full-cache accuracy is high", async () => {
  const out = path.join(outDir, "recall.json");
  const argv = ["eval", "--model", "recall-lm", "--task", "all", "--instances", "3", "--scorers", "snapkv", "--allocations", "uniform,adakv", "--ratios", "0,0.8", "--out", out];
  const r = await run(argv);
  expect(r.err).toBe("");
  expect(r.code).toBe(0);
  const j = JSON.parse(fs.readFileSync(out, "utf8")) as RecallResult & { command: string };
  expect(j.command).toBe(["lukv", ...argv].join(" "));
  // per task and mode: the full cache, then scorer x ratio x allocation
  const expected = RECALL_TASKS.flatMap((t) =>
    ["after", "before"].flatMap((q) => [`${t} ${q} full full 0`, ...[0, 0.8].flatMap((ratio) => ["uniform", "adakv"].map((a) => `${t} ${q} snapkv ${a} ${ratio}`))]),
  );
  expect(j.rows.map((x) => `${x.task} ${x.question} ${x.scorer} ${x.allocation} ${x.ratio}`)).toEqual(expected);
  let correct = 0, total = 0;
  for (const task of RECALL_TASKS)
    for (const q of ["after", "before"]) {
      const rows = j.rows.filter((x) => x.task === task && x.question === q);
      const full = rows[0];
      expect(full.instances).toBe(3);
      correct += full.correct;
      total += full.instances;
      for (const x of rows) {
        expect(x.accuracy).toBeCloseTo(x.correct / x.instances, 12);
        expect(x.decodeMs).toBeGreaterThan(0);
        if (x.ratio === 0) {
          // nothing evicted: the same answers and the same memory as the full cache
          expect(x.correct).toBe(full.correct);
          expect(x.kvBytes).toBe(full.kvBytes);
        } else {
          expect(x.kvBytes).toBeLessThan(0.25 * full.kvBytes);
          expect(x.kvBytes).toBeGreaterThan(0.15 * full.kvBytes);
        }
      }
    }
  expect(correct / total).toBeGreaterThanOrEqual(0.9);
  expect(r.out).toMatch(/question after compression:/);
  expect(r.out).toMatch(/\| full cache /);
});

test("bad --task and unknown options are usage errors", async () => {
  const a = await run(["eval", "--task", "nope"]);
  expect(a.code).toBe(2);
  expect(a.err).toMatch(/--task expects a comma-separated list of niah, mk-niah, mq-niah, vt/);
  const b = await run(["eval", "--task", "niah", "--texts", "3"]);
  expect(b.code).toBe(2);
  expect(b.err).toMatch(/unknown option --texts/);
});
