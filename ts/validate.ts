// Argument checks shared by the public API; each throws InvalidArgumentError naming the parameter.
import { types } from "util";
import { InvalidArgumentError, invalid, quoted } from "./errors";

export function isPositiveInteger(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v > 0;
}

export function isNonNegativeInteger(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0;
}

export function positiveInteger(name: string, v: unknown, max = Number.MAX_SAFE_INTEGER): number {
  if (!isPositiveInteger(v) || v > max) throw invalid(name, max < Number.MAX_SAFE_INTEGER ? `positive integer at most ${max}` : "positive integer", v);
  return v;
}

export function nonNegativeInteger(name: string, v: unknown, max = Number.MAX_SAFE_INTEGER): number {
  if (!isNonNegativeInteger(v) || v > max) throw invalid(name, max < Number.MAX_SAFE_INTEGER ? `integer between 0 and ${max}` : "non-negative integer", v);
  return v;
}

export function integerInRange(name: string, v: unknown, lo: number, hi: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) throw invalid(name, `integer between ${lo} and ${hi}`, v);
  return v;
}

export function finitePositive(name: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw invalid(name, "finite positive number", v);
  return v;
}

export function oneOf<T extends string>(name: string, v: unknown, allowed: readonly T[]): T {
  if (typeof v !== "string" || !(allowed as readonly string[]).includes(v))
    throw invalid(name, `one of ${allowed.map((a) => JSON.stringify(a)).join(", ")}`, v);
  return v as T;
}

export function isFloat32Array(v: unknown): v is Float32Array {
  return types.isFloat32Array(v);
}

export function isUint16Array(v: unknown): v is Uint16Array {
  return types.isUint16Array(v);
}

/**
 * A Float32Array, Uint16Array or Int32Array argument as the call will read it, checks included: one
 * of a subclass or with a length property of its own (user code: its length, slice or species) is
 * copied into a plain array of its element type; any other value is returned as given.
 */
export function ownRows<T>(v: T): T {
  // Views only (a Proxy is none: its traps must not run here); a plain array of its own type, with
  // no length of its own, as given.
  if (!ArrayBuffer.isView(v)) return v;
  const proto = Object.getPrototypeOf(v);
  if ((proto === Float32Array.prototype || proto === Uint16Array.prototype || proto === Int32Array.prototype) && !Object.prototype.hasOwnProperty.call(v, "length"))
    return v;
  if (types.isFloat32Array(v)) return new Float32Array(v) as T;
  if (types.isUint16Array(v)) return new Uint16Array(v) as T;
  if (types.isInt32Array(v)) return new Int32Array(v) as T;
  return v;
}

/** A copy of rows: a new plain array of their element type. */
export function copyRows<T extends Float32Array | Uint16Array>(v: T): T {
  return (types.isFloat32Array(v) ? new Float32Array(v) : new Uint16Array(v)) as T;
}

export function isInt32Array(v: unknown): v is Int32Array {
  return types.isInt32Array(v);
}

export function isUint8Array(v: unknown): v is Uint8Array {
  return types.isUint8Array(v);
}

/** Edit distance of two short strings, a swap of neighbours counting one (for "did you mean"). */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.length][b.length];
}

/**
 * The options of `o` named in `names` (own or inherited), each read once, as a plain object without
 * the undefined ones: checks and the call then read these (a getter runs once, before any check).
 */
export function readOnce(o: object, names: readonly string[]): Record<string, unknown> {
  const read: Record<string, unknown> = {};
  for (const k of names) {
    const v = (o as Record<string, unknown>)[k];
    if (v !== undefined) read[k] = v;
  }
  return read;
}

/**
 * Throws InvalidArgumentError for the first property of `options` that is not in `allowed` (a typo
 * such as `ratoi` must not silently fall back to a default), listing the accepted names and the
 * nearest one.
 */
export function knownOptions(name: string, options: object, allowed: readonly string[]): void {
  for (const key of Object.keys(options)) {
    if (allowed.includes(key)) continue;
    let best = "", bestD = Infinity;
    for (const a of allowed) {
      const d = distance(key.toLowerCase(), a.toLowerCase());
      if (d < bestD) [best, bestD] = [a, d];
    }
    const hint = bestD <= Math.max(1, Math.floor(best.length / 3)) ? ` (did you mean ${best}?)` : "";
    throw new InvalidArgumentError(`Expected only ${allowed.join(", ")} in ${name} but received ${quoted(key)}${hint}`);
  }
}
