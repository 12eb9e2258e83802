// Argument checks shared by the public API; each throws InvalidArgumentError naming the parameter.
import { types } from "util";
import { invalid } from "./errors";

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

export function isInt32Array(v: unknown): v is Int32Array {
  return types.isInt32Array(v);
}
