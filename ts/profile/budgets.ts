import { types } from "node:util";
import { invalid } from "../errors";
import { knownOptions } from "../validate";
import { checkProfile, checkTable, type Profile } from "./profile";
import { native } from "../native";

const INT32_MAX = 2 ** 31 - 1;

/** Options of {@link budgetsFromProfile}. */
export interface BudgetsFromProfileOptions {
  /** Fraction of all tokens to evict, in [0, 1] (kvpress convention: 0.8 keeps 20%). */
  ratio: number;
  /** Tokens now in each (layer, KV head), layer-major: length layers × kvHeads. */
  lengths: ArrayLike<number>;
  /** Fewest tokens a head keeps, clamped to its length: one integer or one per head. Default 0. */
  minKeep?: number | ArrayLike<number>;
}

/** Ratios closer than this to a grid row's ratio use the row as is, so 0.07 reads row 6 exactly. */
const SNAP = 1e-9;

function checkRatio(ratio: unknown): number {
  if (typeof ratio !== "number" || !(ratio >= 0 && ratio <= 1)) throw invalid("ratio", "a number between 0 and 1", ratio);
  return ratio;
}

/**
 * The profile's prune ratio for every (layer, KV head) at compression ratio `ratio`,
 * interpolated linearly between grid rows (row i sits at (i + 1) / (grid + 1)).
 * Outside the rows it interpolates towards the natural end points, prune 0 at ratio 0
 * and prune 1 at ratio 1, rather than clamping: a profile says nothing about ratios
 * below its first row, and keeping the ends fixed makes the result continuous and
 * monotone whenever the rows are.
 *
 * @param ratio in [0, 1].
 * @param out optional Float64Array(layers × kvHeads) to fill.
 * @returns prune ratios, layer-major (`out` when given).
 * @throws InvalidArgumentError when ratio is outside [0, 1], or `out` is given and is not a
 *   Float64Array of length layers × kvHeads. BadProfileError when a table row it reads holds
 *   NaN or a value outside [0, 1] (a Profile built by hand; loadProfile and createProfile
 *   check every value).
 */
export function pruneRatiosAt(profile: Profile, ratio: number, out?: Float64Array): Float64Array {
  checkProfile(profile);
  checkRatio(ratio);
  const { grid, table } = profile;
  const H = profile.layers * profile.kvHeads;
  if (out !== undefined && !(types.isFloat64Array(out) && out.length === H)) {
    throw invalid("out", `a Float64Array of length ${H} (layers ${profile.layers} × kvHeads ${profile.kvHeads} of the profile)`, out);
  }
  const p = out ?? new Float64Array(H);
  // checkProfile does not scan the table; the rows read here must hold prune ratios (a NaN or a
  // value outside [0, 1] would turn into keep counts).
  const rows = (first: number, count: number) => checkTable(table, grid, profile.layers, profile.kvHeads, first * H, (first + count) * H);
  let x = ratio * (grid + 1) - 1; // fractional row index
  const near = Math.round(x);
  if (Math.abs(x - near) < SNAP * (grid + 1)) x = near; // SNAP in ratio: grid + 1 rows per unit
  if (x <= -1) {
    p.fill(0);
  } else if (x < 0) {
    rows(0, 1);
    const w = x + 1;
    for (let h = 0; h < H; h++) p[h] = w * table[h];
  } else if (x >= grid - 1) {
    rows(grid - 1, 1);
    const w = x - (grid - 1);
    const last = (grid - 1) * H;
    for (let h = 0; h < H; h++) p[h] = (1 - w) * table[last + h] + w;
  } else {
    const i = Math.floor(x);
    const f = x - i;
    const a = i * H;
    const b = a + H;
    rows(i, f === 0 ? 1 : 2);
    if (f === 0) for (let h = 0; h < H; h++) p[h] = table[a + h];
    else for (let h = 0; h < H; h++) p[h] = (1 - f) * table[a + h] + f * table[b + h];
  }
  return p;
}

/**
 * Per-head keep counts for a compression ratio, from an LU-KV profile.
 *
 * Each head's share is (1 − Φ_h(ratio)) × length_h, Φ interpolated as in
 * {@link pruneRatiosAt}. The total is exactly round((1 − ratio) × Σ lengths), each head
 * keeps between min(minKeep, length) and its length, and rounding is by largest
 * remainder (ties to the lower head index). When the shares do not add up to the
 * total (heads of unequal length, or the bounds clip some heads), every head's prune
 * ratio is shifted by the same amount t, clamped to the bounds, with t chosen so that
 * they do: the profile's differences between heads are kept.
 *
 * Runs in O(layers × kvHeads) and allocates only the result and a few scratch arrays.
 *
 * @returns keep counts, layer-major, Int32Array(layers × kvHeads).
 * @throws InvalidArgumentError when lengths do not match the profile's shape, ratio is
 *   outside [0, 1], or minKeep asks for more than the ratio keeps; BadProfileError as
 *   {@link pruneRatiosAt}.
 */
export function budgetsFromProfile(profile: Profile, options: BudgetsFromProfileOptions): Int32Array {
  if (options === null || typeof options !== "object") throw invalid("options", "an object with ratio and lengths", options);
  knownOptions("options", options, ["ratio", "lengths", "minKeep"]);
  const ratio = checkRatio(options.ratio);
  checkProfile(profile);
  const H = profile.layers * profile.kvHeads;
  const lengths = options.lengths;
  if (lengths === null || typeof lengths !== "object" || lengths.length !== H) {
    throw invalid(
      "lengths",
      `an array of ${H} lengths (layers ${profile.layers} × kvHeads ${profile.kvHeads} of the profile)`,
      lengths,
    );
  }
  const minKeep = options.minKeep ?? 0;
  const scalarMin = typeof minKeep === "number";
  if (scalarMin) {
    if (!Number.isSafeInteger(minKeep) || minKeep < 0) throw invalid("minKeep", "a non-negative integer", minKeep);
  } else if (minKeep === null || typeof minKeep !== "object" || minKeep.length !== H) {
    throw invalid("minKeep", `a non-negative integer or an array of ${H} of them (one per head)`, minKeep);
  }

  const p = pruneRatiosAt(profile, ratio);
  const T = new Int32Array(H);
  const lo = new Int32Array(H);
  let total = 0;
  let sumLo = 0;
  for (let h = 0; h < H; h++) {
    const t = lengths[h];
    if (!Number.isSafeInteger(t) || t < 0) throw invalid(`lengths[${h}]`, "a non-negative integer", t);
    if (t > INT32_MAX) throw invalid(`lengths[${h}]`, `at most ${INT32_MAX} (a head's length)`, t);
    const m = scalarMin ? minKeep : (minKeep as ArrayLike<number>)[h];
    if (!scalarMin && (!Number.isSafeInteger(m) || m < 0)) throw invalid(`minKeep[${h}]`, "a non-negative integer", m);
    T[h] = t;
    lo[h] = Math.min(m, t);
    total += t;
    sumLo += lo[h];
  }
  const K = native().keptTotal(ratio, total);
  if (K < sumLo) {
    throw invalid("ratio", `a ratio that keeps at least ${sumLo} of ${total} tokens (the sum of minKeep over heads)`, ratio);
  }
  // The shift, the clamping and the rounding are the native allocation's (core/allocation: the rule
  // compress applies with allocation "lukv"), so the two cannot drift apart.
  // Copied into an array of this realm (the addon's belongs to the main one: instanceof would fail
  // inside a vm context such as a test runner's).
  return new Int32Array(native().lukvBudgets(p, T, lo, K));
}
