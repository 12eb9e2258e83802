// A reader for .safetensors files: 8-byte little-endian header length, a JSON header, then the
// raw tensor data. Every tensor comes back as Float32Array (f16/bf16/f32 are converted).
import * as fs from "fs";
import { f32ToF16Bits } from "../dtype";

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

/** Parses safetensors bytes (a file read whole). Throws an Error naming the problem on a malformed file. */
export function parseSafetensors(bytes: Uint8Array, source = "safetensors data"): Safetensors {
  if (bytes.length < 8) throw new Error(`${source}: shorter than the 8-byte header length`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  if (8 + headerLength > bytes.length) throw new Error(`${source}: header length ${headerLength} runs past the end of the file`);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  } catch (e) {
    throw new Error(`${source}: the header is not JSON (${(e as Error).message})`);
  }
  const dataStart = 8 + headerLength;
  const dataLength = bytes.length - dataStart;
  const tensors = new Map<string, Tensor>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = entry as Record<string, string>;
      continue;
    }
    const { dtype, shape, data_offsets: offsets } = entry as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const size = BYTES[dtype];
    if (size === undefined) throw new Error(`${source}: tensor ${name} has dtype ${dtype}; only F16, BF16 and F32 are read`);
    const count = shape.reduce((a, b) => a * b, 1);
    const [begin, end] = offsets;
    if (!(begin >= 0 && end <= dataLength && end - begin === count * size))
      throw new Error(`${source}: tensor ${name} (${dtype} ${JSON.stringify(shape)}) has data offsets [${begin}, ${end}] that do not fit`);
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
    tensors.set(name, { shape, dtype, data });
  }
  return { tensors, metadata };
}

/** Reads a .safetensors file. */
export function readSafetensors(file: string): Safetensors {
  return parseSafetensors(fs.readFileSync(file), file);
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
