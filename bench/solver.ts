// The LU-KV budget solver and the online profile lookup at model scale.
// Usage: node dist/bench/solver.js [--layers 32] [--kv-heads 8] [--tokens 32768] [--repeats 15] [--seed N]
import { lowerHull, solveBudgets, solveBudgetsDetailed, solveBudgetsForTotals } from "../ts/budget";
import { budgetsFromProfile, createProfile } from "../ts/profile";
import * as os from "node:os";
import { benchOptions, intOption, cpuLine, machine, median, printTable, writeResults } from "./common";
import { rng } from "../ts/random";

const options = benchOptions({
  script: "solver",
  about: "LU-KV hulls + greedy (solveBudgets) for synthetic per-head loss curves at model scale, and the online profile lookup (budgetsFromProfile).",
  options: {
    layers: intOption({ default: 32, min: 1, help: "layers" }),
    "kv-heads": intOption({ default: 8, min: 1, help: "KV heads per layer" }),
    // The lookups keep at least 36 tokens per head: 46.3% of a head of a quarter of this length.
    tokens: intOption({ default: 32768, min: 320, help: "tokens per head" }),
    repeats: intOption({ default: 15, min: 1, help: "runs per median; the 99-ratio solve takes a quarter of them, at least 3" }),
    seed: intOption({ default: Date.now() % 0x100000000, min: 0, max: 0xffffffff, defaultText: "from the clock", help: "seed of the synthetic curves" }),
  },
});
const { layers, "kv-heads": kvHeads, tokens: T, repeats, seed } = options;
const H = layers * kvHeads;
const rand = rng(seed);

// Head-like curves: marginal eviction cost grows along the scorer's order (convex on
// average) with a per-head scale and shape, and multiplicative noise plus rare spikes
// where the scorer mis-ranks an important token (the non-convexity LU-KV handles).
const curves: Float64Array[] = [];
for (let h = 0; h < H; h++) {
  const scale = Math.exp((rand() - 0.5) * 4);
  const power = 1 + rand() * 3;
  const y = new Float64Array(T + 1);
  for (let n = 1; n <= T; n++) {
    let m = scale * (n / T) ** power * (0.2 + 1.6 * rand());
    if (rand() < 0.001) m += scale * rand() * 5;
    y[n] = y[n - 1] + m;
  }
  curves.push(y);
}

const total = Math.round(0.2 * H * T); // compression ratio 0.8
const grid = 99;
// The 99-ratio solve takes a quarter of the runs (at least 3): it is about 99 solves long.
const gridRepeats = Math.max(3, repeats >> 2);
const totals = Array.from({ length: grid }, (_, i) => Math.round((1 - (i + 1) / (grid + 1)) * H * T));

console.log(`LU-KV budget solver: ${layers} layers x ${kvHeads} KV heads, ${T} tokens per head (${(H * T / 1e6).toFixed(1)}M), seed ${seed}`);
console.log(`CPU: ${cpuLine()}; node ${process.version}; medians of ${repeats} runs (the ${grid}-ratio solve: ${gridRepeats})\n`);

/** Median wall and CPU milliseconds per run: on a busy machine wall time includes waiting for a core, CPU time does not. */
function measure(fn: () => void, runs: number, warmup: number): { wallMs: number; cpuMs: number; runs: number } {
  for (let i = 0; i < warmup; i++) fn();
  const wall: number[] = [];
  const cpu: number[] = [];
  for (let i = 0; i < runs; i++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    fn();
    wall.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1000);
  }
  return { wallMs: median(wall), cpuMs: median(cpu), runs };
}

const marginals = new Float64Array(T);
const hull = measure(() => curves.forEach((c) => lowerHull(c, marginals)), repeats, 1);
const solve = measure(() => solveBudgets(curves, total), repeats, 2);
const detail = solveBudgetsDetailed(curves, total);
const gridSolve = measure(() => solveBudgetsForTotals(curves, totals), gridRepeats, 1);

// A profile made the LU-KV way from these curves (one "query"), then the online lookup.
const solutions = solveBudgetsForTotals(curves, totals);
const table = new Float64Array(grid * H);
solutions.forEach((s, i) => s.keep.forEach((k, h) => (table[i * H + h] = 1 - k / T)));
const profile = createProfile({ table, layers, kvHeads, meta: { model: "synthetic", calibration: { samples: 1, contextLengths: [T] } } });
const equal = new Int32Array(H).fill(T);
const unequal = Int32Array.from({ length: H }, () => Math.floor(T * (0.25 + 0.75 * rand())));
const CALLS = 1000;
// Per call, from batches of CALLS calls (one call is too short to time alone).
const lookup = (lengths: Int32Array, ratio: number) => {
  const m = measure(() => {
    for (let i = 0; i < CALLS; i++) budgetsFromProfile(profile, { ratio, lengths, minKeep: 36 });
  }, repeats, 2);
  return { wallUs: (m.wallMs * 1000) / CALLS, cpuUs: (m.cpuMs * 1000) / CALLS, runs: m.runs, callsPerRun: CALLS };
};
const lookupEqual = lookup(equal, 0.8);
const lookupUnequal = lookup(unequal, 0.537);

const rows: (string | number)[][] = [
  [`lowerHull, all ${H} heads (into one buffer)`, hull.wallMs.toFixed(2), hull.cpuMs.toFixed(2), "ms", "-"],
  [`solveBudgets (hulls + greedy), keep 20%`, solve.wallMs.toFixed(2), solve.cpuMs.toFixed(2), "ms", "< 50 ms"],
  [`solveBudgetsForTotals, ${grid} ratios (median of ${gridRepeats})`, gridSolve.wallMs.toFixed(2), gridSolve.cpuMs.toFixed(2), "ms", "-"],
  [`budgetsFromProfile, equal lengths, ratio 0.8`, lookupEqual.wallUs.toFixed(2), lookupEqual.cpuUs.toFixed(2), "µs", "< 100 µs"],
  [`budgetsFromProfile, unequal lengths, ratio 0.537`, lookupUnequal.wallUs.toFixed(2), lookupUnequal.cpuUs.toFixed(2), "µs", "< 100 µs"],
];
printTable(["operation", "median wall", "median CPU", "unit", "target"], rows);
const load = os.loadavg()[0];
if (load > os.cpus().length * 0.75) console.log(`\nnote: load average ${load.toFixed(1)} on ${os.cpus().length} CPUs; wall times include waiting for a core`);
console.log(
  `\nat keep 20%: true loss ${detail.trueLoss.toPrecision(6)}, hull loss ${detail.relaxedLoss.toPrecision(6)}, ` +
    `hull-gap bound ${detail.gapBound.toPrecision(3)} (${((detail.gapBound / detail.trueLoss) * 100).toPrecision(2)}% of the loss)`,
);
const file = writeResults("solver", {
  benchmark: "LU-KV budget solver",
  layers,
  kvHeads,
  tokensPerHead: T,
  seed,
  repeats,
  repeatsSolveBudgetsForTotals99: gridRepeats,
  machine: machine(),
  loadAverage: os.loadavg()[0],
  results: {
    lowerHullAllHeads: hull,
    solveBudgets: solve,
    solveBudgetsForTotals99: gridSolve,
    budgetsFromProfileEqualLengths: lookupEqual,
    budgetsFromProfileUnequalLengths: lookupUnequal,
    keep20: { trueLoss: detail.trueLoss, relaxedLoss: detail.relaxedLoss, gapBound: detail.gapBound },
  },
});
console.log(`written ${file}`);
