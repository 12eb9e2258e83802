// Builds the LU-KV profile of the embedded model from its calibration texts and writes it next to
// the model, where `lukv demo` and `lukv eval` find it:
//
//   npx tsc -p tsconfig.build.json && node dist/examples/tiny-lm/build-profile.js [MODEL_DIR] [--scorer snapkv] [--sink 4] [--window 32]
//
// The Expected Attention profile shipped with the model (the LU-KV authors' configuration,
// epsilon 0.02, sink 4, window 1; its query statistics come from each context's own prefill):
//
//   node dist/examples/tiny-lm/build-profile.js --scorer expected-attention --window 1
//
// For each calibration text, windows of 384, 640 and 896 tokens are prefilled with the full cache;
// then seq.recordOracle({ outputProjection: W_O }) (W_O = o_proj.weight transposed) and the text's
// next 32 tokens are decoded one at a time, so every attend() adds to the oracle
// I[l,h,j] = max over steps and the GQA group of attention(j) x ||v_j W_O||. The Profiler ranks each
// head's context by the scorer, solves the budget problem on the convex hulls at ratios 1%..99%, and
// averages the per-head prune ratios into the table compress({ allocation: "lukv" }) looks up.
import * as path from "path";
import { saveProfile } from "../../ts";
import { SCORERS, type ScorerName } from "../../ts/compress";
import { countOption, parseArgs, UsageError } from "../../ts/cli/io";
import { calibrateTinyLM, defaultModelDir, loadTinyLM, modelTexts } from "../../ts/model";

// Checked before the model loads: a typo stops here (exit 2), not after minutes of calibration.
const USAGE = "usage: node dist/examples/tiny-lm/build-profile.js [MODEL_DIR] [--scorer snapkv] [--sink 4] [--window 32]";
let scorer: ScorerName, sink: number, window: number, dir: string;
try {
  const { positional, options } = parseArgs(process.argv.slice(2), { values: ["scorer", "sink", "window"], flags: [] });
  for (const k of options.keys()) if (!["scorer", "sink", "window"].includes(k)) throw new UsageError(`unknown option --${k}`);
  if (positional.length > 1) throw new UsageError(`one MODEL_DIR expected, got ${positional.length} arguments`);
  const given = options.get("scorer") ?? "snapkv";
  if (typeof given !== "string" || !(SCORERS as readonly string[]).includes(given)) throw new UsageError(`--scorer expects one of ${SCORERS.join(", ")}, got ${String(given)}`);
  scorer = given as ScorerName;
  sink = countOption(options, "sink", 4, 0);
  window = countOption(options, "window", 32, 0);
  dir = positional[0] ?? defaultModelDir();
} catch (e) {
  if (!(e instanceof UsageError)) throw e;
  process.stderr.write(`build-profile.js: ${e.message}\n${USAGE}\n`);
  process.exit(2);
}
const out = path.join(dir, scorer === "snapkv" ? "profile.json" : `profile-${scorer}.json`);

const t0 = performance.now();
const model = loadTinyLM(dir);
const texts = modelTexts(dir, "calibration");
console.log(`calibrating ${scorer} on ${texts.length} texts: ${texts.map((t) => t.name).join(", ")}`);
const { profiles, reports, contexts } = calibrateTinyLM(model, texts, {
  scorers: [scorer],
  sink,
  window,
  onProgress: (done, total) => process.stderr.write(`\rcontexts ${done}/${total}`),
});
process.stderr.write("\n");
const profile = profiles.get(scorer)!;
const report = reports.get(scorer)!;
saveProfile(profile, out);

const { layers, kvHeads, grid } = profile;
const row = (ratio: number) => Math.round(ratio * (grid + 1)) - 1;
console.log(`${contexts.length} contexts (${contexts.map((c) => c.tokens).join(", ")} tokens) in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
console.log("share of each KV head's tokens kept at 80% compression (LU-KV):");
for (let l = 0; l < layers; l++) {
  const keep = Array.from({ length: kvHeads }, (_, h) => (1 - profile.table[(row(0.8) * layers + l) * kvHeads + h]).toFixed(2));
  console.log(`  layer ${l}: ${keep.join("  ")}`);
}
for (const ratio of [0.5, 0.8, 0.9])
  console.log(
    `at ${ratio * 100}%: LU-KV's budgets evict ${(100 * report.loss[row(ratio)]).toFixed(2)}% of the oracle mass on the calibration contexts, a uniform split ${(100 * report.uniformLoss[row(ratio)]).toFixed(2)}%`,
  );
console.log(`wrote ${out}`);
