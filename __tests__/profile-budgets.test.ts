import { join } from "node:path";
import { budgetsFromProfile, createProfile, loadProfile, pruneRatiosAt, type Profile } from "../ts/profile";
import { decimalKeptTotal } from "./helpers/evict-reference";
import { rng, testSeed } from "./helpers/random";

// Fresh random data each run; rerun a failure with LUKV_SEED=<seed>.
const SEED = testSeed("profile-budgets");

const rand = rng(SEED);
const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));

/** Any values in [0, 1], no structure. */
function randomProfile(grid: number, layers: number, kvHeads: number): Profile {
  const table = Float64Array.from({ length: grid * layers * kvHeads }, () => (rand() < 0.05 ? Math.round(rand()) : rand()));
  return createProfile({ table, grid, layers, kvHeads });
}

/** Like a real profile: head h prunes r + d_h·r(1−r) with Σ d_h = 0, so rows are monotone and average to r. */
function consistentProfile(grid: number, layers: number, kvHeads: number): Profile {
  const H = layers * kvHeads;
  const d = Array.from({ length: H }, () => rand() * 0.9 - 0.45); // |d − mean| < 0.9 keeps Φ in [0, 1]
  const mean = d.reduce((a, b) => a + b, 0) / H;
  const table = new Float64Array(grid * H);
  for (let i = 0; i < grid; i++) {
    const r = (i + 1) / (grid + 1);
    for (let h = 0; h < H; h++) table[i * H + h] = r + (d[h] - mean) * r * (1 - r);
  }
  return createProfile({ table, grid, layers, kvHeads });
}

/** Plain reference: linear interpolation through (0, 0), the rows at their ratios, and (1, 1). */
function referencePrune(p: Profile, ratio: number): number[] {
  const H = p.layers * p.kvHeads;
  const xs = [0, ...Array.from({ length: p.grid }, (_, i) => (i + 1) / (p.grid + 1)), 1];
  return Array.from({ length: H }, (_, h) => {
    const ys = [0, ...Array.from({ length: p.grid }, (_, i) => p.table[i * H + h]), 1];
    let k = 0;
    while (k < xs.length - 2 && xs[k + 1] < ratio) k++;
    return ys[k] + ((ys[k + 1] - ys[k]) * (ratio - xs[k])) / (xs[k + 1] - xs[k]);
  });
}

/** Plain reference for the real-valued shares: bisection on the common prune shift. */
function referenceShares(prune: number[], lengths: number[], lo: number[], K: number): number[] {
  const at = (t: number) => prune.map((p, h) => Math.min(lengths[h], Math.max(lo[h], (1 - p + t) * lengths[h])));
  let a = -1;
  let b = 1;
  for (let k = 0; k < 200; k++) {
    const m = (a + b) / 2;
    if (at(m).reduce((s, v) => s + v, 0) < K) a = m;
    else b = m;
  }
  return at((a + b) / 2);
}

function sum(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i];
  return s;
}

describe(`pruneRatiosAt (seed ${SEED})`, () => {
  test("interpolates between rows and towards 0 and 1 beyond them", () => {
    for (let trial = 0; trial < 40; trial++) {
      const p = randomProfile(int(1, 20), int(1, 3), int(1, 3));
      for (let k = 0; k < 20; k++) {
        const ratio = k === 0 ? 0 : k === 1 ? 1 : rand();
        const got = Array.from(pruneRatiosAt(p, ratio));
        const want = referencePrune(p, ratio);
        got.forEach((v, h) => expect(v).toBeCloseTo(want[h], 12));
      }
    }
  });

  test("whole percents read their row exactly", () => {
    const p = loadProfile(join(__dirname, "fixtures", "npy", "plain.npy"));
    for (const [ratio, row] of [[0.01, 0], [0.07, 6], [0.29, 28], [0.8, 79], [0.99, 98]]) {
      expect(Array.from(pruneRatiosAt(p, ratio))).toEqual(Array.from(p.table.subarray(row * 6, row * 6 + 6)));
    }
    expect(Array.from(pruneRatiosAt(p, 0))).toEqual([0, 0, 0, 0, 0, 0]);
    expect(Array.from(pruneRatiosAt(p, 1))).toEqual([1, 1, 1, 1, 1, 1]);
    const half = pruneRatiosAt(p, 0.005);
    half.forEach((v, h) => expect(v).toBeCloseTo(p.table[h] / 2, 15));
  });

  test("a ratio within 1e-9 of a row's ratio reads the row exactly; further away it interpolates", () => {
    const table = new Float64Array(99 * 2);
    for (let g = 0; g < 99; g++) table.fill((g + 1) / 250, g * 2, g * 2 + 2);
    const p = createProfile({ table, layers: 1, kvHeads: 2 });
    expect(Array.from(pruneRatiosAt(p, 0.5 + 5e-10))).toEqual([0.2, 0.2]);
    expect(Array.from(pruneRatiosAt(p, 0.5 - 9e-10))).toEqual([0.2, 0.2]);
    expect(pruneRatiosAt(p, 0.5 + 2e-9)[0]).toBeGreaterThan(0.2);
  });

  test("a hand-built profile: the rows a ratio reads must hold prune ratios", () => {
    const good = createProfile({ table: new Float64Array(99 * 2).fill(0.5), layers: 1, kvHeads: 2 });
    for (const bad of [NaN, -0.25, 1.5, Infinity]) {
      const table = good.table.slice();
      table[49 * 2 + 1] = bad; // row 49 (ratio 0.5), head 1
      const p: Profile = { ...good, table };
      const what = Number.isNaN(bad) ? "NaN" : String(bad);
      const message = `prune ratio at row 49 (compression ratio 0.5), layer 0, head 1 is ${what}; expected a number in [0, 1]`;
      expect(() => pruneRatiosAt(p, 0.5)).toThrow(expect.objectContaining({ name: "BadProfileError", message }));
      expect(() => pruneRatiosAt(p, 0.495)).toThrow(expect.objectContaining({ name: "BadProfileError", message })); // between rows 48 and 49
      expect(() => budgetsFromProfile(p, { ratio: 0.5, lengths: [10, 10] })).toThrow(expect.objectContaining({ name: "BadProfileError", message }));
      // Rows the ratio does not read are not scanned (checkProfile is cheap by design).
      expect(Array.from(pruneRatiosAt(p, 0.2))).toEqual([0.5, 0.5]);
    }
  });

  test("fills a given out, which must be a Float64Array of length layers × kvHeads", () => {
    const p = createProfile({ table: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], grid: 1, layers: 2, kvHeads: 3 });
    const out = new Float64Array(6).fill(-1);
    expect(pruneRatiosAt(p, 0.5, out)).toBe(out);
    expect(Array.from(out)).toEqual(Array.from(pruneRatiosAt(p, 0.5)));
    const expected = "Expected a Float64Array of length 6 (layers 2 × kvHeads 3 of the profile) for out";
    for (const bad of [new Float64Array(5), new Float64Array(7), new Float64Array(0), new Float32Array(6), [0, 0, 0, 0, 0, 0], null]) {
      const before = bad && Array.from(bad);
      expect(() => pruneRatiosAt(p, 0.5, bad as unknown as Float64Array)).toThrow(
        expect.objectContaining({ name: "InvalidArgumentError", message: expect.stringContaining(expected) }),
      );
      if (bad) expect(Array.from(bad)).toEqual(before); // left as it was
    }
  });
});

describe(`budgetsFromProfile (seed ${SEED})`, () => {
  test("the total is exactly round((1 − ratio) × Σ lengths), heads within bounds, largest remainders rounded up", () => {
    for (let trial = 0; trial < 300; trial++) {
      const layers = int(1, 6);
      const kvHeads = int(1, 5);
      const H = layers * kvHeads;
      const p = trial % 2 ? randomProfile(int(1, 99), layers, kvHeads) : consistentProfile(int(1, 99), layers, kvHeads);
      const lengths = Array.from({ length: H }, () => (rand() < 0.1 ? int(0, 3) : int(0, 5000)));
      const ratio = trial % 10 === 0 ? Math.round(rand() * 100) / 100 : rand();
      const S = sum(lengths);
      const K = decimalKeptTotal(ratio, S);
      // A floor that is feasible: at most what the ratio keeps.
      const floor = rand() < 0.5 ? 0 : Math.floor((K / Math.max(1, H)) * rand());
      const minKeep = rand() < 0.5 ? floor : lengths.map(() => int(0, floor));
      const keep = budgetsFromProfile(p, { ratio, lengths, minKeep });
      expect(keep).toBeInstanceOf(Int32Array);
      expect(sum(keep)).toBe(K);

      const lo = lengths.map((t, h) => Math.min(t, typeof minKeep === "number" ? minKeep : minKeep[h]));
      const shares = referenceShares(referencePrune(p, ratio), lengths, lo, K);
      let minUpFrac = Infinity;
      let maxDownFrac = -Infinity;
      for (let h = 0; h < H; h++) {
        expect(keep[h]).toBeGreaterThanOrEqual(lo[h]);
        expect(keep[h]).toBeLessThanOrEqual(lengths[h]);
        // Rounding moves each head by less than one token from its real-valued share.
        expect(Math.abs(keep[h] - shares[h])).toBeLessThan(1 + 1e-6);
        const frac = shares[h] - Math.floor(shares[h]);
        if (keep[h] > shares[h] + 1e-6) minUpFrac = Math.min(minUpFrac, frac);
        if (keep[h] < shares[h] - 1e-6) maxDownFrac = Math.max(maxDownFrac, frac);
      }
      expect(maxDownFrac).toBeLessThanOrEqual(minUpFrac + 1e-6);
    }
  });

  test("the total rounds halves up with the ratio read as the decimal it prints as (0.3 of 365 keeps 256)", () => {
    const p = consistentProfile(9, 1, 1);
    // Products of the nearest doubles that fall below the half (0.3 · 365 → 255.49999999999997)
    // and above it (0.1 · 5 → 4.5 exactly in decimal, 4.499... exactly in binary).
    expect(budgetsFromProfile(p, { ratio: 0.3, lengths: [365] })[0]).toBe(256);
    expect(budgetsFromProfile(p, { ratio: 0.1, lengths: [5] })[0]).toBe(5);
    let halves = 0;
    for (let trial = 0; trial < 3000; trial++) {
      const digits = int(1, 4);
      const ratio = int(0, 10 ** digits - 1) / 10 ** digits;
      const kvHeads = int(1, 4);
      const lengths = Array.from({ length: kvHeads }, () => int(0, trial % 3 ? 2000 : 2 ** 24));
      const S = sum(lengths);
      const K = decimalKeptTotal(ratio, S);
      if ((2 * S * (10 ** digits - Math.round(ratio * 10 ** digits))) % (2 * 10 ** digits) === 10 ** digits) halves++;
      expect([ratio, S, sum(budgetsFromProfile(consistentProfile(3, 1, kvHeads), { ratio, lengths }))]).toEqual([ratio, S, K]);
    }
    // The draw must reach the halves it is about.
    expect(halves).toBeGreaterThan(50);
    // Past 2^49 tokens the tolerance once reached a half: ratio 0 kept one token more than there were.
    const lengths = new Array(2 ** 18 + 7).fill(2 ** 31 - 1);
    expect(Array.from(budgetsFromProfile(consistentProfile(1, 1, lengths.length), { ratio: 0, lengths }))).toEqual(lengths);
  });

  test("equal lengths and a consistent profile: each head keeps (1 − Φ_h) × T within one token", () => {
    const p = loadProfile(join(__dirname, "fixtures", "npy", "plain.npy"));
    for (let trial = 0; trial < 100; trial++) {
      const T = int(1, 40000);
      const ratio = rand();
      const keep = budgetsFromProfile(p, { ratio, lengths: new Array(6).fill(T) });
      const prune = referencePrune(p, ratio);
      // The fixture is float32-rounded, so rows average to r within ~1e-7 per head.
      keep.forEach((k, h) => expect(Math.abs(k - (1 - prune[h]) * T)).toBeLessThan(1 + 1e-6 * T));
    }
  });

  test("monotone in ratio: the total never grows and no head gains more than the rounding token", () => {
    const p = consistentProfile(99, 4, 8);
    const lengths = new Array(32).fill(int(100, 20000));
    const ratios = Array.from({ length: 200 }, () => rand()).sort((a, b) => a - b);
    let prev = budgetsFromProfile(p, { ratio: ratios[0], lengths });
    for (const ratio of ratios.slice(1)) {
      const keep = budgetsFromProfile(p, { ratio, lengths });
      expect(sum(keep)).toBeLessThanOrEqual(sum(prev));
      keep.forEach((k, h) => expect(k).toBeLessThanOrEqual(prev[h] + 1));
      prev = keep;
    }
  });

  test("end points and clamping", () => {
    const p = createProfile({ table: [0.99, 0.45, 0.2, 0.999, 0.6, 0.3], grid: 2, layers: 1, kvHeads: 3 });
    expect(Array.from(budgetsFromProfile(p, { ratio: 0, lengths: [10, 20, 30] }))).toEqual([10, 20, 30]);
    expect(Array.from(budgetsFromProfile(p, { ratio: 1, lengths: [10, 20, 30] }))).toEqual([0, 0, 0]);
    // Row 0 (ratio 1/3) gives shares 1, 55 and 80 tokens: 136, not the 200 the ratio keeps.
    // Every prune ratio shifts by the same t; head 2 is capped at 100, so
    // (1 + 100t) + (55 + 100t) + 100 = 200 and t = 0.22.
    expect(Array.from(budgetsFromProfile(p, { ratio: 1 / 3, lengths: [100, 100, 100] }))).toEqual([23, 77, 100]);
    // At ratio 0.6 (80% of the way to row 1) head 0 would keep 0.14 tokens; a floor of 10
    // lifts it and the shift takes the difference from the others: 17.75 and 32.25, and
    // the largest remainder (head 1's) gets the last token.
    expect(Array.from(budgetsFromProfile(p, { ratio: 0.6, lengths: [50, 50, 50], minKeep: 10 }))).toEqual([10, 18, 32]);
    // Zero-length heads keep zero whatever minKeep says.
    expect(Array.from(budgetsFromProfile(p, { ratio: 0.5, lengths: [0, 40, 0], minKeep: 4 }))).toEqual([0, 20, 0]);
  });

  test("largest remainder: bigger remainders first, then ties to the lower head index", () => {
    // Row 2 is ratio 0.75; with 10 tokens per head the shares are 2.5, 2.5, 2.6 and 2.4 (sum 10).
    const rows = (last: number[]) => createProfile({ table: [0.25, 0.25, 0.25, 0.25, 0.5, 0.5, 0.5, 0.5, ...last], layers: 1, kvHeads: 4 });
    const lengths = [10, 10, 10, 10];
    expect(Array.from(budgetsFromProfile(rows([0.75, 0.75, 0.74, 0.76]), { ratio: 0.75, lengths }))).toEqual([3, 2, 3, 2]);
    expect(Array.from(budgetsFromProfile(rows([0.76, 0.75, 0.75, 0.74]), { ratio: 0.75, lengths }))).toEqual([2, 3, 2, 3]);
    expect(Array.from(budgetsFromProfile(rows([0.75, 0.75, 0.75, 0.75]), { ratio: 0.75, lengths }))).toEqual([3, 3, 2, 2]);
  });

  test("exactly tied remainders after the shift go to the lower head (exact rational reference)", () => {
    // Dyadic prune ratios and whole-percent dyadic ratios: the shares are rational, so a plain
    // exact computation knows which remainders tie; the library's shift is a double.
    type Q = [bigint, bigint]; // numerator, positive denominator
    const q = (n: bigint, d = 1n): Q => (d < 0n ? [-n, -d] : [n, d]);
    const add = (a: Q, b: Q) => q(a[0] * b[1] + b[0] * a[1], a[1] * b[1]);
    const mul = (a: Q, b: Q) => q(a[0] * b[0], a[1] * b[1]);
    const cmp = (a: Q, b: Q) => Math.sign(Number(a[0] * b[1] - b[0] * a[1]));
    const floorQ = (a: Q) => (a[0] >= 0n ? a[0] / a[1] : -((-a[0] + a[1] - 1n) / a[1]));
    const neg = (a: Q): Q => [-a[0], a[1]];
    const div = (a: Q, b: Q) => q(a[0] * b[1], a[1] * b[0]);
    /** Keep counts by the documented rule: clamp(x_h + t·T_h, lo_h, T_h) summing to K, largest remainder, ties to the lower head. */
    const reference = (prune16: number[], T: number[], lo: number[], K: number): number[] => {
      const H = T.length;
      const x = T.map((t, h): Q => q(BigInt((16 - prune16[h]) * t), 16n));
      const share = (h: number, t: Q): Q => {
        const v = add(x[h], mul(t, q(BigInt(T[h]))));
        return cmp(v, q(BigInt(lo[h]))) <= 0 ? q(BigInt(lo[h])) : cmp(v, q(BigInt(T[h]))) >= 0 ? q(BigInt(T[h])) : v;
      };
      const total = (t: Q) => Array.from({ length: H }, (_, h) => share(h, t)).reduce(add, q(0n));
      const points: Q[] = [];
      for (let h = 0; h < H; h++)
        if (T[h] > 0) for (const end of [lo[h], T[h]]) points.push(div(add(q(BigInt(end)), neg(x[h])), q(BigInt(T[h]))));
      points.sort(cmp);
      let t = points[0] ?? q(0n);
      for (let i = 0; i + 1 < points.length; i++) {
        const a = points[i], b = points[i + 1], Sa = total(a), Sb = total(b);
        if (cmp(Sa, q(BigInt(K))) <= 0 && cmp(Sb, q(BigInt(K))) >= 0) {
          t = cmp(Sa, Sb) === 0 ? a : add(a, div(mul(add(b, neg(a)), add(q(BigInt(K)), neg(Sa))), add(Sb, neg(Sa))));
          break;
        }
      }
      const y = T.map((_, h) => share(h, t));
      const keep = y.map((v) => Number(floorQ(v)));
      const frac = y.map((v, h) => add(v, q(-BigInt(keep[h]))));
      const order = T.map((_, h) => h).sort((a, b) => cmp(frac[b], frac[a]) || a - b);
      for (let i = 0, left = K - sum(keep); i < left; i++) keep[order[i]]++;
      return keep;
    };
    let ties = 0;
    for (let trial = 0; trial < 400; trial++) {
      const H = int(2, 8);
      const prune16 = Array.from({ length: H }, () => int(0, 16));
      const T = Array.from({ length: H }, () => [4, 8, 12, 20, 24, 40, 1000][int(0, 6)]);
      const ratio = [0.25, 0.5, 0.75][int(0, 2)];
      const minKeep = rand() < 0.3 ? int(0, 3) : 0;
      const lo = T.map((t) => Math.min(t, minKeep));
      const K = Math.round((1 - ratio) * sum(T));
      if (K < sum(lo)) continue;
      const table = Float64Array.from({ length: 99 * H }, (_, i) => prune16[i % H] / 16);
      const got = Array.from(budgetsFromProfile(createProfile({ table, grid: 99, layers: 1, kvHeads: H }), { ratio, lengths: T, minKeep }));
      const want = reference(prune16, T, lo, K);
      expect([trial, prune16, T, ratio, minKeep, got]).toEqual([trial, prune16, T, ratio, minKeep, want]);
      if (new Set(got.map((k, h) => k - (T[h] * (16 - prune16[h])) / 16)).size < H) ties++;
    }
    expect(ties).toBeGreaterThan(0);
  });

  test("errors name the problem", () => {
    const p = createProfile({ table: new Float64Array(99 * 2 * 4).fill(0.5), layers: 2, kvHeads: 4 });
    const lengths = new Int32Array(8).fill(100);
    expect(() => budgetsFromProfile(p, { ratio: 0.5, lengths: new Int32Array(6) })).toThrow(
      "Expected an array of 8 lengths (layers 2 × kvHeads 4 of the profile) for lengths but received Int32Array(6)",
    );
    expect(() => budgetsFromProfile(p, { ratio: 1.2, lengths })).toThrow("Expected a number between 0 and 1 for ratio but received 1.2 of type number");
    expect(() => budgetsFromProfile(p, { ratio: NaN, lengths })).toThrow("Expected a number between 0 and 1 for ratio but received NaN of type number");
    expect(() => budgetsFromProfile(p, { ratio: 0.95, lengths, minKeep: 8 })).toThrow(
      "Expected a ratio that keeps at least 64 of 800 tokens (the sum of minKeep over heads) for ratio but received 0.95 of type number",
    );
    expect(() => budgetsFromProfile(p, { ratio: 0.5, lengths: [1, 2, 3, 4, 5, 6, 7, 8.5] })).toThrow(
      "Expected a non-negative integer for lengths[7] but received 8.5 of type number",
    );
    expect(() => budgetsFromProfile(p, { ratio: 0.5, lengths: [1, 2, 3, 4, 5, 6, 7, 2 ** 31] })).toThrow(
      "Expected at most 2147483647 (a head's length) for lengths[7] but received 2147483648 of type number",
    );
    expect(() => budgetsFromProfile(p, { ratio: 0.5, lengths, minKeep: [1, 2] })).toThrow(
      "Expected a non-negative integer or an array of 8 of them (one per head) for minKeep but received Array(2)",
    );
    expect(() => budgetsFromProfile(p, { ratio: 0.5, lengths, minKeep: -1 })).toThrow(
      "Expected a non-negative integer for minKeep but received -1 of type number",
    );
  });
});
