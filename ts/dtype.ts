// f16 / bf16 conversions, matching the addon bit for bit (round to nearest, ties to even).

/** Storage type of the cache. */
export type DType = "f32" | "f16" | "bf16";

import { invalid } from "./errors";

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Rounds a number to IEEE half precision and returns its 16 raw bits. */
export function f32ToF16Bits(value: number): number {
  f32[0] = value;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const abs = x & 0x7fffffff;
  if (abs >= 0x7f800000) return sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 : 0);
  if (abs >= 0x477ff000) return sign | 0x7c00;
  if (abs < 0x38800000) {
    if (abs < 0x33000000) return sign;
    const e = abs >>> 23;
    const m = (abs & 0x7fffff) | 0x800000;
    const shift = 126 - e;
    let q = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (q & 1))) q++;
    return sign | q;
  }
  const e = (abs >>> 23) - 112;
  const m = abs & 0x7fffff;
  let q = (e << 10) | (m >>> 13);
  const rem = m & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (q & 1))) q++;
  return sign | q;
}

/** The value of 16 raw IEEE half bits. */
export function f16BitsToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const man = bits & 0x3ff;
  if (exp === 0) return sign * man * 2 ** -24;
  if (exp === 31) return man ? NaN : sign * Infinity;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

/** Rounds a number to bfloat16 and returns its 16 raw bits. */
export function f32ToBf16Bits(value: number): number {
  f32[0] = value;
  const x = u32[0];
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff;
  const lsb = (x >>> 16) & 1;
  return ((x + 0x7fff + lsb) >>> 16) & 0xffff;
}

/** The value of 16 raw bfloat16 bits. */
export function bf16BitsToF32(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0];
}

// The 16-bit dtype and the array-like of a conversion, checked (any other string used to be taken
// for bf16).
function checkConversion(values: unknown, dtype: unknown, dtypes: readonly string[], what: string): void {
  if (!dtypes.includes(dtype as string)) throw invalid("dtype", dtypes.map((d) => JSON.stringify(d)).join(" or "), dtype);
  const length = (values as { length?: unknown } | null | undefined)?.length;
  if (values === null || typeof values !== "object" || !Number.isSafeInteger(length) || (length as number) < 0)
    throw invalid(what, "an array or typed array", values);
}

/** Converts values to raw 16-bit words of `dtype` ("f16" or "bf16"). */
export function toBits(values: ArrayLike<number>, dtype: "f16" | "bf16"): Uint16Array {
  checkConversion(values, dtype, ["f16", "bf16"], "values");
  const out = new Uint16Array(values.length);
  const conv = dtype === "f16" ? f32ToF16Bits : f32ToBf16Bits;
  for (let i = 0; i < values.length; i++) out[i] = conv(values[i]);
  return out;
}

/** Converts raw 16-bit words of `dtype` back to Float32Array. */
export function fromBits(bits: Uint16Array, dtype: "f16" | "bf16"): Float32Array {
  checkConversion(bits, dtype, ["f16", "bf16"], "bits");
  const out = new Float32Array(bits.length);
  const conv = dtype === "f16" ? f16BitsToF32 : bf16BitsToF32;
  for (let i = 0; i < bits.length; i++) out[i] = conv(bits[i]);
  return out;
}

/** The values as the cache would store them: rounded to `dtype` and back (a copy). */
export function roundTo(values: ArrayLike<number>, dtype: DType): Float32Array {
  checkConversion(values, dtype, ["f32", "f16", "bf16"], "values");
  if (dtype === "f32") return Float32Array.from(values);
  return fromBits(toBits(values, dtype), dtype);
}
