import { types } from "node:util";
import { BadProfileError, escapeControls, invalid, quoted } from "../errors";
import { parsePyLiteral, type PyValue } from "./pyliteral";
import { knownOptions } from "../validate";

/** A floating-point array read from a .npy file. */
export interface NpyArray {
  /** The values in C (row-major) order, whatever the file's order and width. */
  data: Float64Array;
  shape: number[];
  /** The dtype descriptor as written in the header, e.g. "<f4". */
  descr: string;
  /** Whether the file stored the data in Fortran (column-major) order. */
  fortranOrder: boolean;
  /** Format version of the file: "1.0", "2.0" or "3.0". */
  version: string;
}

/** Float dtypes lukv writes: byte order then width. */
export type NpyFloatDtype = "<f8" | "<f4" | ">f8" | ">f4";

/** Options of {@link encodeNpy}. */
export interface EncodeNpyOptions {
  /** Element type. Default "<f8" (float64, little-endian: lossless for a Profile). */
  dtype?: NpyFloatDtype;
  /** Format version. Default: the oldest that can hold the header, as NumPy chooses (1.0 in practice). */
  version?: "1.0" | "2.0" | "3.0";
  /** Store the data in Fortran (column-major) order. Default false. */
  fortranOrder?: boolean;
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"
const ALIGN = 64; // NumPy aligns the data to 64 bytes
const GROWTH_DIGITS = 21; // NumPy leaves room to grow the first axis in place
const MAX_VALUES = 1 << 28;

function hex(bytes: Uint8Array, n: number): string {
  return Array.from(bytes.subarray(0, n), (b) => b.toString(16).padStart(2, "0")).join(" ");
}

function fail(problem: string): never {
  throw new BadProfileError(problem);
}

/** Element reader for a descr, or a message saying why lukv cannot read it. */
function floatReader(descr: string): { size: number; little: boolean; read: (v: DataView, at: number) => number } {
  const m = /^([<>=|]?)([a-zA-Z])(\d*)$/.exec(descr);
  if (!m) fail(`unsupported npy dtype ${quoted(descr)}: lukv reads float16, float32 and float64 arrays`);
  const [, order, kind, digits] = m;
  // Single-letter type codes NumPy also accepts: e = half, f = single, d = double.
  const size = digits ? Number(digits) : ({ e: 2, f: 4, d: 8 } as Record<string, number>)[kind];
  const isFloat = (digits ? kind === "f" : kind in { e: 1, f: 1, d: 1 }) && (size === 2 || size === 4 || size === 8);
  if (!isFloat) {
    const name: Record<string, string> = {
      O: "a pickled object array",
      S: "a byte-string array",
      a: "a byte-string array",
      U: "a unicode-string array",
      i: "an integer array",
      u: "an unsigned integer array",
      b: "a boolean array",
      c: "a complex array",
      V: "a raw-bytes array",
      M: "a datetime array",
      m: "a timedelta array",
      f: "a float array of an unsupported width",
    };
    const what = name[kind] ?? "not a float array";
    fail(`unsupported npy dtype ${quoted(descr)} (${what}): lukv reads float16, float32 and float64 arrays`);
  }
  // '=' and '|' (and no prefix) mean the writer's native order; NumPy platforms are little-endian.
  const little = order !== ">";
  if (size === 8) return { size, little, read: (v, at) => v.getFloat64(at, little) };
  if (size === 4) return { size, little, read: (v, at) => v.getFloat32(at, little) };
  return { size, little, read: (v, at) => halfToNumber(v.getUint16(at, little)) };
}

function halfToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/**
 * A header string as Python writes it between single quotes: control characters (what a terminal
 * acts on) as \xNN or \n, \r, \t, and a backslash or quote escaped, so a crafted header prints as text.
 */
function pyEscape(s: string): string {
  const named: Record<string, string> = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };
  return escapeControls(s.replace(/[\\']/g, (c) => `\\${c}`), (c) => {
    const code = c.charCodeAt(0);
    return named[c] ?? (code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16)}`);
  });
}

/** Python text of a header value for messages, cut after 80 characters (a crafted header may hold a million items). */
function pyRepr(v: PyValue): string {
  const max = 80;
  let out = "";
  const walk = (x: PyValue): void => {
    if (out.length > max) return;
    if (x === null) out += "None";
    else if (typeof x === "boolean") out += x ? "True" : "False";
    else if (typeof x === "string") out += `'${pyEscape(x.length > max ? x.slice(0, max) : x)}'`;
    else if (typeof x === "number") out += String(x);
    else if (x.kind === "float") out += Number.isInteger(x.value) ? x.value.toFixed(1) : String(x.value);
    else if (x.kind === "dict") out += "{…}";
    else {
      out += x.kind === "list" ? "[" : "(";
      for (let k = 0; k < x.items.length && out.length <= max; k++) {
        if (k > 0) out += ", ";
        walk(x.items[k]);
      }
      out += x.kind === "list" ? "]" : x.items.length === 1 ? ",)" : ")";
    }
  };
  walk(v);
  return out.length > max ? out.slice(0, max) + "…" : out;
}

/** Row-major strides of a shape. */
function stridesOf(shape: readonly number[], fortran: boolean): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let k = 0; k < shape.length; k++) {
    const d = fortran ? k : shape.length - 1 - k;
    s[d] = acc;
    acc *= shape[d];
  }
  return s;
}

/** For each C-order position, the position of the same element in Fortran order. */
function fortranIndex(shape: readonly number[]): Int32Array | null {
  if (shape.length < 2) return null;
  const count = shape.reduce((a, b) => a * b, 1);
  const fs = stridesOf(shape, true);
  const idx = new Int32Array(count);
  const pos = new Array<number>(shape.length).fill(0);
  let f = 0;
  for (let c = 0; c < count; c++) {
    idx[c] = f;
    // Advance the C-order multi-index (last axis fastest), tracking the Fortran offset.
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++pos[d] < shape[d]) {
        f += fs[d];
        break;
      }
      f -= fs[d] * (shape[d] - 1);
      pos[d] = 0;
    }
  }
  return idx;
}

/**
 * Decodes a NumPy .npy file holding a float array (float16/32/64, either byte order,
 * C or Fortran order; format versions 1.0, 2.0 and 3.0). The header is parsed as a
 * literal, never evaluated. Bytes after the array are ignored, as NumPy does.
 *
 * @throws BadProfileError naming the problem: wrong magic, unsupported version,
 *   truncation, a malformed header, or a dtype that is not a float.
 */
export function decodeNpy(bytes: Uint8Array): NpyArray {
  if (!types.isUint8Array(bytes)) throw invalid("bytes", "a Uint8Array or Buffer", bytes);
  if (bytes.length < 10) fail(`truncated npy file: ${bytes.length} bytes, fewer than the 10-byte preamble`);
  if (!MAGIC.every((b, k) => bytes[k] === b)) {
    fail(`not a .npy file: expected the magic string \\x93NUMPY but found ${hex(bytes, 6)}`);
  }
  const major = bytes[6];
  const minor = bytes[7];
  if (!(major >= 1 && major <= 3 && minor === 0)) {
    fail(`unsupported .npy format version ${major}.${minor}: lukv reads 1.0, 2.0 and 3.0`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const lenBytes = major === 1 ? 2 : 4;
  if (bytes.length < 8 + lenBytes) fail(`truncated npy file: ${bytes.length} bytes, the header length is cut off`);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const headerStart = 8 + lenBytes;
  const dataStart = headerStart + headerLen;
  if (dataStart > bytes.length) {
    fail(`truncated npy header: it needs ${headerLen} bytes but only ${bytes.length - headerStart} follow the preamble`);
  }
  let header: string;
  try {
    // Versions 1.0 and 2.0 store the header in latin1, 3.0 in utf8.
    header = new TextDecoder(major === 3 ? "utf-8" : "latin1", { fatal: true }).decode(bytes.subarray(headerStart, dataStart));
  } catch {
    return fail("npy header of a version 3.0 file is not valid UTF-8");
  }
  const dict = parsePyLiteral(header);
  if (dict === null || typeof dict !== "object" || dict.kind !== "dict") {
    return fail(`npy header is not a dict but ${pyRepr(dict)}`);
  }
  for (const key of ["descr", "fortran_order", "shape"]) {
    if (!dict.entries.has(key)) fail(`npy header has no '${key}' key`);
  }
  const descr = dict.entries.get("descr") as PyValue;
  if (typeof descr !== "string") {
    return fail(`unsupported npy dtype ${pyRepr(descr)} (a structured array): lukv reads float16, float32 and float64 arrays`);
  }
  const fortran = dict.entries.get("fortran_order");
  if (typeof fortran !== "boolean") return fail(`npy header 'fortran_order' must be True or False but is ${pyRepr(fortran as PyValue)}`);
  const shapeV = dict.entries.get("shape") as PyValue;
  if (
    shapeV === null ||
    typeof shapeV !== "object" ||
    shapeV.kind !== "tuple" ||
    !shapeV.items.every((d) => typeof d === "number" && Number.isSafeInteger(d) && d >= 0)
  ) {
    return fail(`npy header 'shape' must be a tuple of non-negative integers but is ${pyRepr(shapeV)}`);
  }
  const shape = shapeV.items as number[];
  const reader = floatReader(descr);
  const count = shape.reduce((a, b) => a * b, 1);
  if (count > MAX_VALUES) fail(`npy array of shape ${pyRepr(shapeV)} is too large (${count} values)`);
  const need = count * reader.size;
  const have = bytes.length - dataStart;
  if (have < need) {
    fail(`truncated npy data: shape ${pyRepr(shapeV)} of ${descr} needs ${need} bytes but only ${have} follow the header`);
  }
  const data = new Float64Array(count);
  const map = fortran ? fortranIndex(shape) : null;
  for (let c = 0; c < count; c++) data[c] = reader.read(view, dataStart + (map ? map[c] : c) * reader.size);
  return { data, shape: shape.slice(), descr, fortranOrder: fortran, version: `${major}.0` };
}

function encodeLatin1OrUtf8(s: string, utf8: boolean): Uint8Array {
  if (utf8) return new TextEncoder().encode(s);
  const out = new Uint8Array(s.length);
  for (let k = 0; k < s.length; k++) out[k] = s.charCodeAt(k);
  return out;
}

/**
 * Encodes a float array as a .npy file byte-for-byte as NumPy's `np.save` writes it
 * (same header text, padding and 64-byte alignment), so NumPy, the LU-KV scripts and
 * kvpress read it back.
 *
 * @param data values in C (row-major) order; its length must be the product of shape.
 * @param shape non-negative integer dimensions.
 * @param options dtype (default "<f8"), version (default oldest that fits), fortranOrder (default false).
 */
export function encodeNpy(data: ArrayLike<number>, shape: readonly number[], options: EncodeNpyOptions = {}): Uint8Array {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw invalid("shape", "an array of non-negative integers", shape);
  }
  // What np.load takes: at most NPY_MAXDIMS (64) dimensions, whose product (zeros left out) fits its index type.
  if (shape.length > 64) throw invalid("shape", "at most 64 dimensions (NumPy's limit)", shape);
  if (shape.reduce((a, b) => a * Math.max(b, 1), 1) > Number.MAX_SAFE_INTEGER)
    throw invalid("shape", "dimensions whose product, zeros left out, is at most 2^53 - 1 (NumPy refuses larger)", shape);
  const count = shape.reduce((a, b) => a * b, 1);
  if (data === null || typeof data !== "object" || data.length !== count) {
    throw invalid("data", `${count} numbers (the product of shape [${shape.join(", ")}])`, data);
  }
  if (options === null || typeof options !== "object") throw invalid("options", "an options object", options);
  knownOptions("options", options, ["dtype", "version", "fortranOrder"]);
  const dtype = options.dtype ?? "<f8";
  if (!["<f8", "<f4", ">f8", ">f4"].includes(dtype)) throw invalid("options.dtype", `one of "<f8", "<f4", ">f8", ">f4"`, dtype);
  const asked = options.fortranOrder ?? false;
  if (typeof asked !== "boolean") throw invalid("options.fortranOrder", "a boolean", asked);
  // As np.save: an array that is C- and Fortran-contiguous at once (at most one dimension over 1, or
  // no elements) is written in C order, its bytes the same either way.
  const fortran = asked && count > 0 && shape.filter((d) => d > 1).length > 1;
  if (options.version !== undefined && !["1.0", "2.0", "3.0"].includes(options.version)) {
    throw invalid("options.version", `"1.0", "2.0" or "3.0"`, options.version);
  }

  const shapeRepr = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
  let dictText = `{'descr': '${dtype}', 'fortran_order': ${fortran ? "True" : "False"}, 'shape': ${shapeRepr}, }`;
  if (shape.length > 0) dictText += " ".repeat(Math.max(0, GROWTH_DIGITS - String(shape[fortran ? shape.length - 1 : 0]).length));
  const wrap = (major: number): Uint8Array | null => {
    const text = encodeLatin1OrUtf8(dictText, major === 3);
    const lenBytes = major === 1 ? 2 : 4;
    const pad = ALIGN - ((6 + 2 + lenBytes + text.length + 1) % ALIGN);
    const headerLen = text.length + pad + 1;
    if (major === 1 && headerLen > 0xffff) return null;
    const out = new Uint8Array(8 + lenBytes + headerLen);
    out.set(MAGIC, 0);
    out[6] = major;
    const v = new DataView(out.buffer);
    if (major === 1) v.setUint16(8, headerLen, true);
    else v.setUint32(8, headerLen, true);
    out.set(text, 8 + lenBytes);
    out.fill(0x20, 8 + lenBytes + text.length, out.length - 1);
    out[out.length - 1] = 0x0a;
    return out;
  };
  const head = options.version ? wrap(Number(options.version[0])) : (wrap(1) ?? wrap(2));
  if (!head) throw invalid("options.version", "a version whose header length field can hold the header (2.0 or 3.0)", options.version);

  const size = dtype.endsWith("8") ? 8 : 4;
  const little = dtype[0] === "<";
  const out = new Uint8Array(head.length + count * size);
  out.set(head, 0);
  const view = new DataView(out.buffer, head.length);
  const map = fortran ? fortranIndex(shape) : null;
  for (let c = 0; c < count; c++) {
    const at = (map ? map[c] : c) * size;
    if (size === 8) view.setFloat64(at, data[c], little);
    else view.setFloat32(at, data[c], little);
  }
  return out;
}
