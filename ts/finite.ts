// Number checks run before the kernels: no NaN or infinity in keys, values and queries, no value an
// f16/bf16 cache would store as infinity, and no attention whose float32 arithmetic could overflow.
import { DType, bf16BitsToF32, f16BitsToF32 } from "./dtype";
import { InvalidArgumentError, invalid } from "./errors";
import { native } from "./native";
import { isUint16Array } from "./validate";

/** Largest float32. */
export const FLOAT32_MAX = 3.4028234663852886e38;
/** Bound on |q·k·scale| (and |k|² for the key-norm scorers): the kernels' exp and sums keep a wide margin below FLOAT32_MAX. */
export const SCORE_LIMIT = 2 ** 120;
/** Bound on tokens × max|v|: the softmax-weighted sums of values stay far below FLOAT32_MAX. */
export const VALUE_SUM_LIMIT = 2 ** 112;
/** Magnitudes from which an f32 value rounds to infinity in the storage type (round to nearest even). */
const STORAGE_LIMIT: Record<DType, number> = { f32: Infinity, f16: 65520, bf16: (2 - 2 ** -8) * 2 ** 127 };

// Where the native scan writes its result: reused, so a scan allocates nothing.
const scanResult = new Float64Array(2);

/**
 * The native scan of `values` (kind 0: float32 with magnitudes below `limit`; 1, 2: raw f16, bf16
 * bits, finite): [0] the first bad index or -1, [1] the largest magnitude before it. The array is
 * reused by the next scan: read it first.
 */
export function scanValues(values: Float32Array | Uint16Array, kind: 0 | 1 | 2, limit: number): Float64Array {
  native().scanValues(values, kind, limit, scanResult);
  return scanResult;
}

/** The native scan's kind and limit: raw `rawDtype` words (finite), or floats below `storage`'s limit. */
function scanMode(raw: boolean, storage: DType, rawDtype: DType): [kind: 0 | 1 | 2, limit: number] {
  return raw ? [rawDtype === "bf16" ? 2 : 1, Infinity] : [0, STORAGE_LIMIT[storage]];
}

/**
 * scanValues over every array of `arrays` (all of one kind) in one native call: for array i, [2i]
 * the first index that is not finite or not below the storage limit of `storage`, or -1, and [2i+1]
 * the largest magnitude before it. Uint16Array arrays hold raw bits of `storage`. Written into
 * `result` (2 per array) when given.
 */
export function scanValuesBatch(
  arrays: (Float32Array | Uint16Array)[],
  raw: boolean,
  storage: DType,
  result: Float64Array = new Float64Array(2 * arrays.length),
): Float64Array {
  native().scanValuesBatch(arrays, ...scanMode(raw, storage, storage), result);
  return result;
}

/**
 * Scans a [tokens, heads, headDim] tensor for the first value that is not finite, or (with
 * `storage` f16/bf16 and Float32Array input) too large for it, and throws InvalidArgumentError
 * naming the tensor and that index. Returns the largest magnitude. Uint16Array input holds raw
 * `rawDtype` bits.
 */
export function scanTensor(
  name: string,
  values: Float32Array | Uint16Array,
  heads: number,
  headDim: number,
  storage: DType,
  rawDtype: DType = storage,
): number {
  const raw = isUint16Array(values);
  const [kind, limit] = scanMode(raw, storage, rawDtype);
  const [bad, maxAbs] = scanValues(values, kind, limit);
  if (bad < 0) return maxAbs;
  const value = raw ? (rawDtype === "bf16" ? bf16BitsToF32 : f16BitsToF32)(values[bad]) : values[bad];
  const row = heads * headDim;
  const where = `at index ${bad} (token ${Math.floor(bad / row)}, head ${Math.floor((bad % row) / headDim)}, element ${bad % headDim})`;
  if (!Number.isFinite(value)) throw new InvalidArgumentError(`Expected finite numbers for ${name} but received ${value} ${where}`);
  throw new InvalidArgumentError(
    `Expected numbers that ${storage} can hold (magnitude below ${f32Text(limit)}) for ${name} but received ${f32Text(value)} ${where}; scale the inputs down or use a wider dtype`,
  );
}

/** The shortest decimal that reads back as the same float32 (3.4e+38, not 3.3999999521443642e+38). */
function f32Text(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  for (let digits = 1; digits < 9; digits++) {
    const s = String(Number(x.toPrecision(digits)));
    if (Math.fround(Number(s)) === x) return s;
  }
  return String(Number(x.toPrecision(9)));
}

/** A magnitude for messages: 6 significant digits, exponent form from 1e6 on (1e+19, not 9999999980506448000). */
function fmt(x: number): string {
  return x >= 1e6 ? x.toExponential(5).replace(/\.?0+e/, "e") : String(+x.toPrecision(6));
}

/**
 * Throws when headDim × max|q| × max|k| × max(1, |scale|) could reach float32 overflow in the scores
 * of `layer`, or when the queries times the scale could (the kernels scale the queries first).
 */
export function checkScores(name: string, layer: number, headDim: number, queryMax: number, keyMax: number, scale: number): void {
  const bound = headDim * queryMax * keyMax * Math.max(1, Math.abs(scale));
  if (bound > SCORE_LIMIT)
    throw new InvalidArgumentError(
      `Expected ${name} whose scores stay within float32 (headDim × max|q| × max|k| × max(1, |scale|) at most 2^120) ` +
        `for ${name} but received max|q| ${fmt(queryMax)} against keys of layer ${layer} up to ${fmt(keyMax)} (headDim ${headDim}, scale ${scale})`,
    );
  // Both are float32 values, so their product is exact in a double.
  if (queryMax * Math.abs(scale) > FLOAT32_MAX)
    throw new InvalidArgumentError(
      `Expected ${name} whose scaled values stay within float32 (max|q| × |scale| at most 3.4e38) for ${name} but received max|q| ${fmt(queryMax)} with scale ${scale}`,
    );
}

/** Throws when the weighted sum of `tokens` values of magnitude up to `valueMax` could overflow float32. */
export function checkValueSum(layer: number, tokens: number, valueMax: number): void {
  if (tokens * valueMax > VALUE_SUM_LIMIT)
    throw new InvalidArgumentError(
      `Expected values whose sums over the layer stay within float32 (tokens × max|v| at most 2^112) for values ` +
        `but received values of layer ${layer} up to ${fmt(valueMax)} over ${tokens} tokens`,
    );
}

/** Throws when the squared norms of keys up to `keyMax` could overflow float32 (the keydiff and knorm scorers). */
export function checkKeyNorms(layer: number, headDim: number, keyMax: number): void {
  if (headDim * keyMax * keyMax > SCORE_LIMIT)
    throw new InvalidArgumentError(
      `Expected keys whose squared norms stay within float32 (headDim × max|k|² at most 2^120) for keys ` +
        `but received keys of layer ${layer} up to ${fmt(keyMax)} (headDim ${headDim})`,
    );
}

/**
 * The expected-attention scorer's float32 arithmetic on layer `layer`: z = s·μ'·k + ½·s²·kᵀΣ'k
 * per key (μ', Σ' the statistics rotated to the future positions: rotations keep |μ'_i| within
 * √2·max|μ| and |Σ'_ij| within 2·max|Σ|), then (score + ε)·‖v‖. Throws when a bound of them
 * could overflow, as checkScores does for the attention-based scorers.
 */
export function checkExpectedScores(
  layer: number,
  headDim: number,
  stats: { meanMax: number; covarianceMax: number },
  rows: { keyMax: number; valueMax: number },
  scale: number,
  value: { norm: boolean; epsilon: number },
): void {
  const s = Math.abs(scale), D = headDim, k = rows.keyMax;
  const meanTerm = s * D * Math.SQRT2 * stats.meanMax * k;
  const quadratic = D * D * 2 * stats.covarianceMax * k * k;
  const z = meanTerm + 0.5 * s * s * quadratic;
  if (!(z <= SCORE_LIMIT && quadratic <= SCORE_LIMIT && Math.SQRT2 * stats.meanMax * s <= FLOAT32_MAX))
    throw new InvalidArgumentError(
      `Expected query statistics whose expected-attention logits stay within float32 (s·headDim·√2·max|μ|·max|k| + s²·headDim²·max|Σ|·max|k|² at most 2^120) ` +
        `for expectedAttention.statistics but received max|μ| ${fmt(stats.meanMax)} and max|Σ| ${fmt(stats.covarianceMax)} against keys of layer ${layer} up to ${fmt(k)} (headDim ${D}, scale ${scale})`,
    );
  // (The norms themselves are summed again in float64 where their squares overflow float32.)
  if (value.norm && !((1 + value.epsilon) * Math.sqrt(D) * rows.valueMax <= FLOAT32_MAX))
    throw new InvalidArgumentError(
      `Expected values whose norms times (1 + epsilon) stay within float32 for the expected-attention value norm but received values of layer ${layer} up to ${fmt(rows.valueMax)} with epsilon ${value.epsilon} (headDim ${D})`,
    );
}

/** Validates an attention scale: finite and representable as float32. */
export function checkScale(v: unknown): number {
  if (typeof v !== "number" || !Number.isFinite(v)) throw invalid("scale", "finite number", v);
  if (Math.abs(v) > FLOAT32_MAX) throw invalid("scale", `finite number within the float32 range (magnitude at most ${FLOAT32_MAX})`, v);
  return v;
}
