// Configurations beyond the LU-KV paper on the embedded model, against LU-KV + SnapKV as shipped:
// output error (docs/methods.md), perplexity and next-token agreement on the held-out texts.
//
//   npx tsc -p tsconfig.build.json && nice -n 19 node dist/examples/tiny-lm/beyond-paper.js [--ratios 0.5,0.8,0.9] [--windows 3] [--variants 0,1,4]
//
// --variants picks rows of VARIANTS by index (default: all); the first one picked is the
// baseline the other rows are compared with.
// Every variant's LU-KV profile is calibrated here, on models/tiny-lm/calibration, with the same
// scorer options it is evaluated with; the baseline uses the shipped models/tiny-lm/profile.json.
// Writes bench/results/beyond-paper.json (the package's, or in the folder LUKV_BENCH_OUT names).
// `--help` lists the options; a refused command line stops before anything is calibrated (exit 2).
import { benchOptions, intListOption, intOption, textOption, writeResults } from "../../bench/common";
import { decimalText } from "../../ts/cli/io";
import type { ScoreOptions } from "../../ts/compress";
import { runEval, type EvalRow } from "../../ts/cli/eval";
import { calibrateTinyLM, defaultModelDir, loadTinyLM, modelProfile, modelTexts, type CalibrationOptions } from "../../ts/model";
import type { Profile } from "../../ts/profile";

interface Variant {
  name: string;
  /** compress() options besides scorer "snapkv", allocation "lukv" and the ratio. */
  options: ScoreOptions;
  /** How its profile is calibrated (undefined: the shipped profile). */
  calibration?: Pick<CalibrationOptions, "normalize" | "oracle" | "contexts" | "decodeSteps">;
}

const VARIANTS: Variant[] = [
  { name: "LU-KV + SnapKV (shipped profile)", options: {} },
  { name: "LU-KV (output-error oracle) + SnapKV", options: {}, calibration: { oracle: "output" } },
  { name: "LU-KV (output-error oracle) + SnapKV, max-pool kernel 3", options: { kernel: 3 }, calibration: { oracle: "output" } },
  { name: "LU-KV (output-error oracle) + SnapKV, no pooling", options: { pooling: "none" }, calibration: { oracle: "output" } },
  { name: "LU-KV (output-error oracle) + SnapKV, avg-pool kernel 3", options: { pooling: "avg", kernel: 3 }, calibration: { oracle: "output" } },
];

const args = process.argv.slice(2);
const options = benchOptions({
  script: "beyond-paper",
  folder: "dist/examples/tiny-lm",
  about: "Configurations beyond the LU-KV paper on the embedded model against LU-KV + SnapKV with the shipped profile: output error, perplexity, next-token agreement.",
  options: {
    ratios: textOption({ meta: "R,R,...", default: "0.5,0.8,0.9", help: "eviction ratios, each in [0, 1)" }),
    windows: intOption({ default: 3, min: 1, help: "held-out windows per text, as many as fit up to N" }),
    variants: intListOption({
      default: VARIANTS.map((_, i) => i),
      min: 0,
      max: VARIANTS.length - 1,
      help: `configurations by index (${VARIANTS.map((v, i) => `${i}: ${v.name}`).join("; ")}); the first is the baseline of the comparison`,
    }),
  },
  check: (o) => {
    const bad = o.ratios.split(",").find((r) => !(decimalText(r) >= 0 && decimalText(r) < 1));
    return bad === undefined ? undefined : `--ratios must be a comma-separated list of numbers in [0, 1), got ${JSON.stringify(bad)} in ${JSON.stringify(o.ratios)}`;
  },
});
const ratios = options.ratios.split(",").map(Number);
const windows = options.windows;
const picked = options.variants.map((i) => VARIANTS[i]);

const t0 = performance.now();
const dir = defaultModelDir();
const model = loadTinyLM(dir);
const calibration = modelTexts(dir, "calibration");
const rows: { variant: string; row: EvalRow }[] = [];
for (const v of picked) {
  const tv = performance.now();
  const profile: Profile = v.calibration
    ? calibrateTinyLM(model, calibration, { scorers: ["snapkv"], scorerOptions: v.options, ...v.calibration }).profiles.get("snapkv")!
    : modelProfile(dir, "snapkv")!.profile;
  const result = runEval(model, dir, {
    scorers: ["snapkv"],
    allocations: ["lukv"],
    ratios,
    texts: Number.MAX_SAFE_INTEGER,
    windows,
    context: 768,
    tokens: 128,
    passkeys: 0,
    question: "after",
    dtype: "f32",
    errorSteps: 64,
    scoreOptions: { snapkv: v.options },
  }, new Map([["snapkv", profile]]));
  for (const row of result.rows) rows.push({ variant: v.name, row });
  console.error(`${v.name}: ${((performance.now() - tv) / 1000).toFixed(0)} s`);
}

const base = (ratio: number) => rows.find((r) => r.variant === picked[0].name && r.row.ratio === ratio)!.row;
const lines = ["| configuration | ratio | output error | vs LU-KV + SnapKV | perplexity | next-token agreement |", "| --- | ---: | ---: | ---: | ---: | ---: |"];
for (const ratio of ratios)
  for (const { variant, row } of rows.filter((r) => r.row.ratio === ratio)) {
    const d = row.outputError / base(ratio).outputError - 1;
    lines.push(
      `| ${variant} | ${ratio.toFixed(2)} | ${row.outputError.toFixed(4)} | ${variant === picked[0].name ? "-" : `${d >= 0 ? "+" : ""}${(100 * d).toFixed(1)}%`} | ` +
        `${row.perplexity.toFixed(3)} | ${(100 * row.agreement).toFixed(1)}% |`,
    );
  }
console.log(lines.join("\n"));
console.log(`${((performance.now() - t0) / 1000).toFixed(0)} s`);
const out = writeResults("beyond-paper", { command: ["node", "dist/examples/tiny-lm/beyond-paper.js", ...args].join(" "), rows });
console.error(`wrote ${out}`);
