// Saved sequences in tests: a CRC-32C written from its definition (bit by bit), the byte layout of
// docs/sequence-format.md walked independently of the library, and bit-exact snapshots of sequences.
import { Sequence } from "../../ts";

/** CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF, one bit at a time. */
export function crc32c(bytes: Uint8Array, end = bytes.length): number {
  let c = 0xffffffff;
  for (let i = 0; i < end; i++) {
    c ^= bytes[i];
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

/** A copy of `bytes` with its trailing checksum recomputed (a mutation that the checksum does not catch). */
export function withChecksum(bytes: Uint8Array): Buffer {
  const b = Buffer.from(bytes);
  if (b.length >= 4) b.writeUInt32LE(crc32c(b, b.length - 4), b.length - 4);
  return b;
}

export const HEADER_BYTES = 64;
/** Header fields: name, byte offset, width. */
export const HEADER_FIELDS = [
  { name: "magic", offset: 0, bytes: 8 },
  { name: "version", offset: 8, bytes: 4 },
  { name: "headerBytes", offset: 12, bytes: 4 },
  { name: "fileBytes", offset: 16, bytes: 8 },
  { name: "layers", offset: 24, bytes: 4 },
  { name: "kvHeads", offset: 28, bytes: 4 },
  { name: "queryHeads", offset: 32, bytes: 4 },
  { name: "headDim", offset: 36, bytes: 4 },
  { name: "dtype", offset: 40, bytes: 4 },
  { name: "flags", offset: 44, bytes: 4 },
  { name: "reserved", offset: 48, bytes: 16 },
] as const;

export interface Layout {
  /** Offsets where a section or a part of one starts (header end, each layer and head part), ascending. */
  boundaries: number[];
  /** Offset of each head's length field, [layers * kvHeads]. */
  heads: number[];
  /** Offset of each layer section. */
  layers: number[];
}

/** Walks a valid file by the documented layout. */
export function layoutOf(bytes: Uint8Array): Layout {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const [L, H, Q, D, dtype, flags] = [24, 28, 32, 36, 40, 44].map((o) => b.readUInt32LE(o));
  const rowBytes = D * (dtype === 0 ? 4 : 2);
  const mass = (flags & 1) !== 0;
  const out: Layout = { boundaries: [HEADER_BYTES], heads: [], layers: [] };
  let at = HEADER_BYTES;
  for (let l = 0; l < L; l++) {
    out.layers.push(at);
    const rows = b.readUInt32LE(at + 4);
    at += 32;
    out.boundaries.push(at);
    at += rows * 4;
    out.boundaries.push(at);
    at += rows * Q * D * 4;
    out.boundaries.push(at);
  }
  for (let i = 0; i < L * H; i++) {
    out.heads.push(at);
    const n = b.readUInt32LE(at);
    at += 4;
    for (const part of [n * 4, mass ? n * 4 : 0, n * rowBytes, n * rowBytes]) {
      out.boundaries.push(at);
      at += part;
    }
  }
  out.boundaries.push(at);
  if (at + 4 !== b.length) throw new Error(`layout walk ended at ${at + 4}, file has ${b.length} bytes`);
  return out;
}

/** Everything a sequence holds, as bytes where it matters: K/V rows, positions, lengths, appended counts. */
export function snapshot(seq: Sequence): { lengths: number[]; appended: number[]; heads: { positions: number[]; k: Buffer; v: Buffer }[] } {
  const { layers, kvHeads } = seq.cache.config;
  const heads = [];
  for (let l = 0; l < layers; l++)
    for (let h = 0; h < kvHeads; h++) {
      const k = seq.keys(l, h), v = seq.values(l, h);
      heads.push({ positions: Array.from(seq.positions(l, h)), k: Buffer.from(k.buffer, k.byteOffset, k.byteLength), v: Buffer.from(v.buffer, v.byteOffset, v.byteLength) });
    }
  return {
    lengths: Array.from(seq.lengths()),
    appended: Array.from({ length: layers }, (_, l) => seq.appended(l)),
    heads,
  };
}

export const bytesOf = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
