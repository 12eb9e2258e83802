// A reader for .safetensors files: 8-byte little-endian header length, a JSON header, then the
// raw tensor data. Every tensor comes back as Float32Array (f16/bf16/f32 are converted).
import { f32ToF16Bits } from "../dtype";
import { BadModelError, jsonPreview } from "../errors";
import { readModelFile } from "./read-file";

/** One tensor of a safetensors file, converted to f32. */
export interface Tensor {
  /** Shape, outermost first (row-major data). */
  shape: number[];
  /** The file's dtype tag, e.g. "F16". */
  dtype: string;
  data: Float32Array;
}

/** Every tensor by name, and the file's `__metadata__` strings. */
export interface Safetensors {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

let f16Table: Float32Array | undefined;

/** All 65536 f16 values, so conversion is one lookup per element. */
function f16ToF32Table(): Float32Array {
  if (f16Table) return f16Table;
  f16Table = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1;
    const exp = (bits >>> 10) & 0x1f;
    const man = bits & 0x3ff;
    f16Table[bits] =
      exp === 0 ? sign * man * 2 ** -24 : exp === 31 ? (man ? NaN : sign * Infinity) : sign * (1 + man / 1024) * 2 ** (exp - 15);
  }
  return f16Table;
}

const BYTES: Record<string, number> = { F16: 2, BF16: 2, F32: 4 };

function isPlainObject(x: unknown): x is Record<string, unknown> {
  return x !== null && typeof x === "object" && !Array.isArray(x);
}

/** Parses safetensors bytes (a file read whole). Throws BadModelError naming the problem on a malformed file. */
export function parseSafetensors(bytes: Uint8Array, source = "safetensors data"): Safetensors {
  const bad = (problem: string) => new BadModelError(`${source}: ${problem}`);
  if (bytes.length < 8) throw bad("shorter than the 8-byte header length");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  if (8 + headerLength > bytes.length) throw bad(`header length ${headerLength} runs past the end of the file`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  } catch (e) {
    throw bad(`the header is not JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(header)) throw bad(`the header must be a JSON object but is ${jsonPreview(header)}`);
  const dataStart = 8 + headerLength;
  const dataLength = bytes.length - dataStart;
  const tensors = new Map<string, Tensor>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (!isPlainObject(entry) || !Object.values(entry).every((v) => typeof v === "string"))
        throw bad(`__metadata__ must map names to strings but is ${jsonPreview(entry)}`);
      metadata = entry as Record<string, string>;
      continue;
    }
    if (!isPlainObject(entry)) throw bad(`tensor ${name} must be an object but is ${jsonPreview(entry)}`);
    const { dtype, shape, data_offsets: offsets } = entry;
    const size = typeof dtype === "string" && Object.prototype.hasOwnProperty.call(BYTES, dtype) ? BYTES[dtype] : undefined;
    if (size === undefined) throw bad(`tensor ${name} has dtype ${typeof dtype === "string" ? dtype.slice(0, 40) : jsonPreview(dtype)}; only F16, BF16 and F32 are read`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      throw bad(`tensor ${name} has shape ${jsonPreview(shape)}; expected an array of non-negative integers`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o)))
      throw bad(`tensor ${name} has data_offsets ${jsonPreview(offsets)}; expected two integers [begin, end]`);
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    const [begin, end] = offsets as [number, number];
    if (!(begin >= 0 && end <= dataLength && end - begin === count * size))
      throw bad(`tensor ${name} (${dtype} ${jsonPreview(shape)}) has data offsets [${begin}, ${end}] that do not fit`);
    const data = new Float32Array(count);
    const at = dataStart + begin;
    if (dtype === "F16") {
      const table = f16ToF32Table();
      for (let i = 0; i < count; i++) data[i] = table[view.getUint16(at + 2 * i, true)];
    } else if (dtype === "BF16") {
      const u = new Uint32Array(data.buffer);
      for (let i = 0; i < count; i++) u[i] = view.getUint16(at + 2 * i, true) << 16;
    } else {
      for (let i = 0; i < count; i++) data[i] = view.getFloat32(at + 4 * i, true);
    }
    tensors.set(name, { shape: shape as number[], dtype: dtype as string, data });
  }
  return { tensors, metadata };
}

/**
 * Reads a .safetensors file.
 * @throws BadModelError naming the file when it is missing, unreadable (a directory, no permission)
 * or malformed (see parseSafetensors).
 */
export function readSafetensors(file: string): Safetensors {
  return parseSafetensors(readModelFile(file), file);
}

/**
 * Encodes tensors as a .safetensors file (the inverse of parseSafetensors), in the given order,
 * as "F16" (rounded to nearest even) or "F32".
 */
export function encodeSafetensors(
  tensors: Iterable<[string, { shape: number[]; data: ArrayLike<number> }]>,
  dtype: "F16" | "F32" = "F16",
  metadata: Record<string, string> = {},
): Uint8Array {
  const size = dtype === "F16" ? 2 : 4;
  const list = [...tensors];
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const [name, t] of list) {
    header[name] = { dtype, shape: t.shape, data_offsets: [offset, offset + t.data.length * size] };
    offset += t.data.length * size;
  }
  let jsonBytes = new TextEncoder().encode(JSON.stringify(header));
  // Readers may map the data aligned; the header is padded with spaces to a multiple of 8 bytes.
  const padded = new Uint8Array(jsonBytes.length + ((8 - (jsonBytes.length % 8)) % 8)).fill(32);
  padded.set(jsonBytes);
  jsonBytes = padded;
  const out = new Uint8Array(8 + jsonBytes.length + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(jsonBytes.length), true);
  out.set(jsonBytes, 8);
  let at = 8 + jsonBytes.length;
  for (const [, t] of list) {
    for (let i = 0; i < t.data.length; i++, at += size) {
      if (dtype === "F16") view.setUint16(at, f32ToF16Bits(t.data[i]), true);
      else view.setFloat32(at, t.data[i], true);
    }
  }
  return out;
}
