import { lowerHull } from "../ts/budget";
import { rng, testSeed } from "./helpers/random";

// Fresh random data each run; rerun a failure with LUKV_SEED=<seed>.
const SEED = testSeed("budget-hull");

/** The lower convex envelope by its definition: the lowest chord over every point. */
function referenceEnvelope(y: number[]): number[] {
  const T = y.length - 1;
  const out = y.slice();
  for (let i = 0; i <= T; i++) {
    for (let j = i + 2; j <= T; j++) {
      for (let n = i + 1; n < j; n++) {
        const chord = y[i] + ((y[j] - y[i]) * (n - i)) / (j - i);
        if (chord < out[n]) out[n] = chord;
      }
    }
  }
  return out;
}

function cumulate(start: number, marginals: Float64Array): number[] {
  const out = [start];
  for (const m of marginals) out.push(out[out.length - 1] + m);
  return out;
}

describe("lowerHull edge cases", () => {
  test("T = 0 has no marginals", () => {
    expect(lowerHull([5])).toEqual(new Float64Array(0));
  });

  test("T = 1 is the single increment", () => {
    expect(Array.from(lowerHull([2, 5]))).toEqual([3]);
  });

  test("an already convex curve is its own hull", () => {
    expect(Array.from(lowerHull([0, 1, 3, 6, 10]))).toEqual([1, 2, 3, 4]);
  });

  test("a concave curve becomes the straight chord from 0 to T", () => {
    expect(Array.from(lowerHull([0, 4, 7, 9, 10]))).toEqual([2.5, 2.5, 2.5, 2.5]);
  });

  test("a flat curve has zero marginals", () => {
    expect(Array.from(lowerHull([2, 2, 2, 2]))).toEqual([0, 0, 0]);
  });

  test("a bump is bridged and the rest kept", () => {
    // 0, 1, 5, 3, 4 lies on or above the chord from (0, 0) to (4, 4).
    expect(Array.from(lowerHull([0, 1, 5, 3, 4]))).toEqual([1, 1, 1, 1]);
    expect(Array.from(lowerHull([0, 0, 6, 2, 10]))).toEqual([0, 1, 1, 8]);
  });

  test("typed arrays are accepted", () => {
    expect(Array.from(lowerHull(new Float32Array([0, 4, 7, 9, 10])))).toEqual([2.5, 2.5, 2.5, 2.5]);
  });

  test("writes into a caller's buffer when given one", () => {
    const out = new Float64Array(4).fill(-1);
    expect(lowerHull([0, 4, 7, 9, 10], out)).toBe(out);
    expect(Array.from(out)).toEqual([2.5, 2.5, 2.5, 2.5]);
    expect(() => lowerHull([0, 1, 2], new Float64Array(3))).toThrow(
      "Expected a Float64Array of length 2 (one less than cumulativeLoss) for out but received Float64Array(3)",
    );
  });

  test("bad input is named", () => {
    expect(() => lowerHull([])).toThrow("Expected an array of at least 1 finite number for cumulativeLoss but received Array(0)");
    expect(() => lowerHull([0, NaN, 1])).toThrow("Expected a finite number for cumulativeLoss[1] but received NaN of type number");
    expect(() => lowerHull([0, 1, Infinity])).toThrow("Expected a finite number for cumulativeLoss[2] but received Infinity of type number");
    expect(() => lowerHull("abc" as unknown as number[])).toThrow("for cumulativeLoss but received \"abc\" of type string");
  });

  test("a slope past the float64 range is refused (such slopes all tied at Infinity and the solver chose wrongly)", () => {
    const message = "Expected cumulativeLoss to change by less than the float64 range per token between hull points but it goes from -1e+308 at 0 to 1e+308 at 1";
    expect(() => lowerHull([-1e308, 1e308])).toThrow(message);
    const { solveBudgetsDetailed } = require("../ts/budget") as typeof import("../ts/budget");
    expect(() => solveBudgetsDetailed([[-1e308, 1e308], [-1.5e308, 1.5e308]], 1)).toThrow(/^Expected curves\[0\] to change by less than the float64 range/);
    // A slope within the range whose difference is not: 1e308 per token over two tokens.
    expect(Array.from(lowerHull([-1e308, 0, 1e308]))).toEqual([1e308, 1e308]);
    expect(Array.from(lowerHull([-1e308, 1e308, 1e308]))).toEqual([1e308, 1e308]);
    // Within the range, extreme values still work: slopes of -1e308 and -5e307 (already convex).
    expect(Array.from(lowerHull([1e308, 0, -5e307]))).toEqual([-1e308, -5e307]);
  });
});

describe(`lowerHull on random curves (seed ${SEED})`, () => {
  const rand = rng(SEED);

  test("matches the envelope's definition, never decreases, touches the curve at 0 and T", () => {
    for (let trial = 0; trial < 300; trial++) {
      const T = 1 + Math.floor(rand() * 40);
      const y = [rand() * 4 - 2];
      // Mix of smooth and jumpy increments, sometimes negative, sometimes repeated.
      for (let n = 1; n <= T; n++) {
        const step = rand() < 0.2 ? 0 : rand() < 0.5 ? rand() * rand() * 10 : rand() - 0.3;
        y.push(y[n - 1] + step);
      }
      const m = lowerHull(y);
      expect(m.length).toBe(T);
      const hull = cumulate(y[0], m);
      const ref = referenceEnvelope(y);
      // Worst violations over the trial, so a few assertions cover every point.
      let decreases = 0;
      let offEnvelope = 0;
      let aboveCurve = 0;
      for (let i = 1; i < T; i++) decreases = Math.max(decreases, m[i - 1] - m[i]);
      for (let n = 0; n <= T; n++) {
        const tol = 1e-9 * (1 + Math.abs(y[n]));
        offEnvelope = Math.max(offEnvelope, Math.abs(hull[n] - ref[n]) - tol);
        aboveCurve = Math.max(aboveCurve, hull[n] - y[n] - tol);
      }
      const endGap = Math.abs(hull[T] - y[T]) - 1e-9 * (1 + Math.abs(y[T]));
      expect(decreases).toBe(0);
      expect(offEnvelope).toBeLessThanOrEqual(0);
      expect(aboveCurve).toBeLessThanOrEqual(0);
      expect(endGap).toBeLessThanOrEqual(0);
    }
  });

  test("long curves of many shapes: equals a plain monotone chain", () => {
    // The plain chain: keep a stack, pop while the new point is on or below the last segment's line.
    const plainChain = (y: number[]): number[] => {
      const st: number[] = [];
      for (let n = 0; n < y.length; n++) {
        while (st.length >= 2) {
          const a = st[st.length - 2];
          const b = st[st.length - 1];
          if ((y[b] - y[a]) * (n - b) >= (y[n] - y[b]) * (b - a)) st.pop();
          else break;
        }
        st.push(n);
      }
      const hull = new Array<number>(y.length);
      for (let j = 0; j + 1 < st.length; j++) {
        for (let n = st[j]; n <= st[j + 1]; n++) hull[n] = y[st[j]] + ((y[st[j + 1]] - y[st[j]]) * (n - st[j])) / (st[j + 1] - st[j]);
      }
      if (st.length === 1) hull[0] = y[0];
      return hull;
    };
    const shapes: [string, (n: number, T: number) => number][] = [
      ["noisy convex", (n, T) => (n / T) ** 2 * (0.2 + 1.6 * rand())],
      ["noise", () => rand()],
      ["rare spikes", () => (rand() < 0.01 ? 50 * rand() : 0.01 * rand())],
      ["concave", (n, T) => 1 - n / T],
      ["convex", (n) => n],
      ["sawtooth", (n) => (n % 7) - 3],
      ["steps", (n) => Math.floor(n / 50) + (n % 50 === 0 ? 20 : 0)],
      ["drop at the end", (n, T) => (n === T ? -1e6 : n)],
      ["integers", () => Math.floor(rand() * 4)],
    ];
    for (const [, marginal] of shapes) {
      for (let trial = 0; trial < 4; trial++) {
        const T = 1 + Math.floor(rand() * 5000);
        const y = [rand()];
        for (let n = 1; n <= T; n++) y.push(y[n - 1] + marginal(n, T));
        const m = lowerHull(Float64Array.from(y));
        const hull = cumulate(y[0], m);
        const ref = plainChain(y);
        let worst = 0;
        let decreases = 0;
        for (let n = 0; n <= T; n++) worst = Math.max(worst, Math.abs(hull[n] - ref[n]) / (1 + Math.abs(ref[n])));
        for (let i = 1; i < T; i++) decreases = Math.max(decreases, m[i - 1] - m[i]);
        expect(decreases).toBe(0);
        expect(worst).toBeLessThan(1e-9);
      }
    }
  });

  test("convex input gives back its own increments", () => {
    for (let trial = 0; trial < 100; trial++) {
      const T = 1 + Math.floor(rand() * 50);
      // Distinct sorted increments: exactly representable sums keep this exact.
      const inc = Array.from({ length: T }, () => Math.floor(rand() * 1000)).sort((a, b) => a - b);
      const y = cumulate(0, Float64Array.from(inc));
      expect(Array.from(lowerHull(y))).toEqual(inc);
    }
  });
});
