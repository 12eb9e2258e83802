// Seeded fuzzing of lukv's file parsers: byte and structure mutations of valid files, plus crafted
// headers (deep nesting, huge declared sizes, lengths past the end). A parser may accept an input or
// throw its typed error; anything else (a RangeError, a TypeError, a stack overflow) is a finding.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { BadModelError, BadProfileError } from "../../ts/errors";
import { createProfile, decodeProfile, encodeNpy, profileFromJson, profileToJson } from "../../ts/profile";
import { parsePyLiteral } from "../../ts/profile/pyliteral";
import { configFromJson } from "../../ts/model/load";
import { encodeSafetensors, parseSafetensors } from "../../ts/model/safetensors";
import { Tokenizer } from "../../ts/model/tokenizer";
import { rng } from "./random";

type Rand = () => number;
const int = (r: Rand, n: number) => Math.floor(r() * n);
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[int(r, xs.length)];
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const utf8 = (s: string) => encoder.encode(s);
const text = (b: Uint8Array) => decoder.decode(b);

/** Numbers and values a crafted file would use to break size arithmetic and type assumptions. */
const NASTY_NUMBERS = [0, -1, 1, 2, 3, 255, 256, 65535, 65536, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, 2 ** 53, 1e308, -1e308, 0.5, -0.5, 1e-320];
const NASTY_VALUES: unknown[] = [...NASTY_NUMBERS, null, true, false, "", "x", "F16", "<f4", [], {}, [1, 2], { a: 1 }, "__proto__"];

function nestedText(open: string, close: string, depth: number): string {
  return open.repeat(depth) + close.repeat(depth);
}

function nested(depth: number): unknown {
  // Built by JSON.parse, which is iterative, so the value can be deeper than the call stack allows.
  return JSON.parse(nestedText("[", "]", depth));
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Byte-level mutations: flips, overwrites with boundary bytes, inserted, deleted and repeated runs, truncation. */
export function mutateBytes(input: Uint8Array, r: Rand): Uint8Array {
  let b: Uint8Array = Uint8Array.from(input);
  const steps = 1 + int(r, 4);
  for (let s = 0; s < steps; s++) {
    const at = int(r, b.length + 1);
    switch (int(r, 8)) {
      case 0:
        if (b.length) b[Math.min(at, b.length - 1)] ^= 1 << int(r, 8);
        break;
      case 1:
        if (b.length) b[Math.min(at, b.length - 1)] = pick(r, [0, 0x7f, 0x80, 0xff, 0x5b, 0x28, 0x7b, 0x22, 0x27, 0x2c, 0x3a, 0x20, 0x30, 0x39]);
        break;
      case 2: {
        const ins = Uint8Array.from({ length: 1 + int(r, 16) }, () => int(r, 256));
        b = concat(b.subarray(0, at), ins, b.subarray(at));
        break;
      }
      case 3:
        b = concat(b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + int(r, 32))));
        break;
      case 4: {
        const len = 1 + int(r, 16);
        const run = b.subarray(at, at + len);
        const times = 1 + int(r, 64);
        b = concat(b.subarray(0, at), ...Array.from({ length: times }, () => run), b.subarray(at));
        break;
      }
      case 5:
        b = b.slice(0, at);
        break;
      case 6:
        // A little-endian length field (npy header length, safetensors header length) set to a boundary.
        if (b.length >= 16) {
          const v = new DataView(b.buffer);
          const off = pick(r, [6, 8, 0]);
          const val = pick(r, [0, 1, 0xffff, 0xffffffff, b.length, b.length - 8, 0x7fffffff]);
          if (off === 0) v.setBigUint64(0, BigInt(val), true);
          else v.setUint32(off, val >>> 0, true);
        }
        break;
      default:
        // A digit run replaced by a huge or negative number.
        {
          const s = text(b);
          const m = [...s.matchAll(/\d+/g)];
          if (m.length) {
            const hit = pick(r, m);
            const rep = String(pick(r, NASTY_NUMBERS));
            const out = s.slice(0, hit.index) + rep + s.slice((hit.index ?? 0) + hit[0].length);
            b = utf8(out);
          }
        }
    }
  }
  return b;
}

/** Replaces one random node of a JSON value (object field or array item) with a nasty value. */
export function mutateJson(value: unknown, r: Rand): unknown {
  const root = JSON.parse(JSON.stringify(value));
  let node: unknown = root;
  let parent: Record<string, unknown> | unknown[] | undefined;
  let key: string | number | undefined;
  for (let depth = 0; depth < 6 && node !== null && typeof node === "object"; depth++) {
    const keys: (string | number)[] = Array.isArray(node) ? node.map((_, i) => i) : Object.keys(node);
    if (keys.length === 0 || r() < 0.25) break;
    parent = node as Record<string, unknown>;
    key = pick(r, keys);
    node = (parent as Record<string | number, unknown>)[key];
  }
  const replacement = (() => {
    switch (int(r, 6)) {
      case 0:
        return nested(100 + int(r, 2000));
      case 1:
        return Array.from({ length: int(r, 5) }, () => pick(r, NASTY_VALUES));
      case 2:
        return typeof node === "number" ? node * pick(r, [2, 1000, -1, 0.5, 2 ** 32]) : pick(r, NASTY_NUMBERS);
      default:
        return pick(r, NASTY_VALUES);
    }
  })();
  if (parent === undefined) return replacement;
  if (r() < 0.1 && !Array.isArray(parent)) delete (parent as Record<string, unknown>)[key as string];
  else (parent as Record<string | number, unknown>)[key as string] = replacement;
  return root;
}

/** A parser under test: what it reads, the error class it may throw, and valid seed inputs. */
interface Target {
  name: string;
  accepts: ReadonlyArray<new (...a: never[]) => Error>;
  seeds: Uint8Array[];
  /** Structured seeds (JSON documents) mutated node by node, for parsers of JSON. */
  docs?: unknown[];
  /** Bytes of a (mutated) document; default its JSON text. */
  fromDoc?: (doc: unknown) => Uint8Array;
  crafted: Uint8Array[];
  run(input: Uint8Array): void;
}

function npySeeds(): Uint8Array[] {
  const dir = join(__dirname, "..", "fixtures", "npy");
  return readdirSync(dir)
    .filter((f) => f.endsWith(".npy"))
    .map((f) => new Uint8Array(readFileSync(join(dir, f))))
    // Small ones keep the rate high; one full-size table stays in the mix.
    .filter((b, i) => b.length < 600 || i === 0);
}

function npyWithHeader(header: string, major = 1, data = new Uint8Array(0)): Uint8Array {
  const h = utf8(header);
  const lenBytes = major === 1 ? 2 : 4;
  const out = new Uint8Array(8 + lenBytes + h.length + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0]);
  const v = new DataView(out.buffer);
  if (major === 1) v.setUint16(8, Math.min(h.length, 0xffff), true);
  else v.setUint32(8, h.length, true);
  out.set(h, 8 + lenBytes);
  out.set(data, 8 + lenBytes + h.length);
  return out;
}

function smallProfileJson(r: Rand): unknown {
  const grid = 1 + int(r, 3), layers = 1 + int(r, 3), kvHeads = 1 + int(r, 3);
  const table = Array.from({ length: grid * layers * kvHeads }, () => r());
  const p = createProfile({ table, grid, layers, kvHeads, meta: { model: "m", scorer: "snapkv", sink: 4, window: 32, calibration: { samples: 2, contextLengths: [10, 20] } } });
  return JSON.parse(profileToJson(p));
}

function safetensorsSeeds(r: Rand): Uint8Array[] {
  const t = (n: number) => Array.from({ length: n }, () => r() * 4 - 2);
  return [
    encodeSafetensors([["a", { shape: [2, 3], data: t(6) }], ["b", { shape: [4], data: t(4) }]], "F16", { format: "pt" }),
    encodeSafetensors([["w", { shape: [3], data: t(3) }]], "F32"),
  ];
}

function safetensorsWithHeader(header: unknown, data = new Uint8Array(16)): Uint8Array {
  const h = utf8(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

const TOKENIZER_DOC = {
  format: "lukv-bpe-1",
  vocab_size: 262,
  special_tokens: { "<|bos|>": 260, "<|eos|>": 261 },
  merges: [[97, 98], [256, 99], [32, 97], [98, 98]],
  vocab: undefined as string[] | undefined,
};

function targets(r: Rand): Target[] {
  const profileDocs = [smallProfileJson(r), smallProfileJson(r)];
  const profiles = profileDocs.map((d) => utf8(JSON.stringify(d)));
  const npy = [...npySeeds(), encodeNpy([0.1, 0.2, 0.3, 0.4], [1, 2, 2], { dtype: "<f4" }), encodeNpy([0.5], [1, 1, 1], { version: "3.0" })];
  const doubling = { ...TOKENIZER_DOC, merges: Array.from({ length: 40 }, (_, i) => (i === 0 ? [97, 97] : [255 + i, 255 + i])) };
  const full = JSON.parse(readFileSync(join(__dirname, "..", "..", "models", "tiny-lm", "config.json"), "utf8"));
  // The fields configFromJson reads (the shipped file also holds training notes).
  const config = Object.fromEntries(Object.entries(full).filter(([, v]) => typeof v === "number"));
  return [
    {
      name: "profile (.npy and JSON bytes)",
      accepts: [BadProfileError],
      seeds: [...npy, ...profiles],
      docs: profileDocs,
      crafted: [
        npyWithHeader("{'descr': '<f8', 'fortran_order': False, 'shape': " + nestedText("[", "]", 30000) + "}"),
        npyWithHeader(nestedText("(", ")", 30000), 2),
        npyWithHeader(nestedText("{'a':", "}", 20000), 2),
        npyWithHeader("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967295, 4294967295, 4294967295), }"),
        npyWithHeader("{'descr': '<f8', 'fortran_order': True, 'shape': (" + "1, ".repeat(50000) + "), }", 2),
        npyWithHeader("{'descr': '<f2', 'fortran_order': False, 'shape': (0, 9007199254740991, 9007199254740991), }"),
        npyWithHeader("{'descr': '" + "x".repeat(70000) + "', 'fortran_order': False, 'shape': (1,), }", 3),
        utf8(JSON.stringify({ ...(profileDocs[0] as object), layers: 2 ** 32 - 1 })),
        utf8(JSON.stringify({ ...(profileDocs[0] as object), grid: 2 ** 53 - 1, layers: 2 ** 53 - 1, kvHeads: 2 ** 53 - 1 })),
        utf8(`{"format": ${nestedText("[", "]", 30000)}}`),
        utf8(`{"format": "lukv-profile", "version": 1, "grid": 1, "layers": 1, "kvHeads": 1, "table": [[[0.5]]], "meta": {"model": ${nestedText("[", "]", 30000)}}}`),
      ],
      run: (b) => void decodeProfile(b),
    },
    {
      name: "python literal (.npy header text)",
      accepts: [BadProfileError],
      seeds: npy.map((b) => b.subarray(b[6] === 1 ? 10 : 12, b[6] === 1 ? 10 + new DataView(b.buffer, b.byteOffset).getUint16(8, true) : 12 + new DataView(b.buffer, b.byteOffset).getUint32(8, true))),
      crafted: [utf8(nestedText("[", "]", 30000)), utf8(nestedText("{'a':", "}", 30000)), utf8("'" + "\\x".repeat(1000)), utf8("1".repeat(30000))],
      run: (b) => void parsePyLiteral(text(b)),
    },
    {
      name: "profile (parsed JSON object)",
      accepts: [BadProfileError],
      seeds: profiles,
      docs: profileDocs,
      crafted: [],
      run: (b) => {
        let doc: unknown;
        try {
          doc = JSON.parse(text(b));
        } catch {
          return; // only the text form reports JSON syntax
        }
        profileFromJson(doc as object);
      },
    },
    {
      name: "safetensors",
      accepts: [BadModelError],
      seeds: safetensorsSeeds(r),
      docs: [{ __metadata__: { format: "pt" }, a: { dtype: "F16", shape: [2, 3], data_offsets: [0, 12] }, b: { dtype: "F32", shape: [1], data_offsets: [12, 16] } }],
      fromDoc: (doc) => safetensorsWithHeader(doc),
      crafted: [
        safetensorsWithHeader(null),
        safetensorsWithHeader([1, 2]),
        safetensorsWithHeader({ a: { dtype: "F16", shape: [-2, -4], data_offsets: [0, 16] } }),
        safetensorsWithHeader({ a: { dtype: "F32", shape: [2 ** 40, 2 ** 40], data_offsets: [0, 16] } }),
        safetensorsWithHeader({ a: { dtype: "F32", shape: [0.5, 8], data_offsets: [0, 16] } }),
        safetensorsWithHeader({ a: { dtype: "F16", shape: [8], data_offsets: [0.5, 16.5] } }),
        safetensorsWithHeader({ a: { dtype: "__proto__", shape: [1], data_offsets: [0, 2] } }),
        safetensorsWithHeader(`{"a": {"dtype": "F16", "shape": ${nestedText("[", "]", 30000)}, "data_offsets": [0, 2]}}`),
        safetensorsWithHeader(`{"__metadata__": {"x": ${nestedText("[", "]", 30000)}}}`),
      ],
      run: (b) => void parseSafetensors(b),
    },
    {
      name: "tokenizer.json",
      accepts: [BadModelError],
      seeds: [utf8(JSON.stringify(TOKENIZER_DOC))],
      docs: [TOKENIZER_DOC],
      crafted: [
        utf8(JSON.stringify(doubling)),
        utf8(JSON.stringify({ ...TOKENIZER_DOC, merges: [[300, 1]] })),
        utf8(JSON.stringify({ ...TOKENIZER_DOC, merges: [[97, 98], [256]] })),
        utf8(JSON.stringify({ ...TOKENIZER_DOC, special_tokens: null })),
        utf8(JSON.stringify({ ...TOKENIZER_DOC, vocab: ["61", "zz"] })),
      ],
      run: (b) => {
        let doc: unknown;
        try {
          doc = JSON.parse(text(b));
        } catch {
          return; // Tokenizer.load reports a file that is not JSON; the constructor takes parsed JSON
        }
        const tok = new Tokenizer(doc as never);
        tok.decode(tok.encode("ab abc bbb"));
      },
    },
    {
      name: "config.json",
      accepts: [BadModelError],
      seeds: [utf8(JSON.stringify(config))],
      docs: [config],
      crafted: [utf8("null"), utf8("[]"), utf8(`{"vocab_size": ${nestedText("[", "]", 30000)}}`)],
      run: (b) => {
        let doc: unknown;
        try {
          doc = JSON.parse(text(b));
        } catch {
          return;
        }
        configFromJson(doc as never);
      },
    },
  ];
}

/** An input a parser failed on in a way it must not, with enough to replay it. */
export interface Finding {
  target: string;
  index: number;
  error: string;
  input: string;
}

export interface FuzzResult {
  inputs: number;
  accepted: number;
  rejected: number;
  perTarget: Record<string, number>;
  /** Milliseconds spent per parser, input generation included. */
  perTargetMs: Record<string, number>;
  findings: Finding[];
  ms: number;
}

/**
 * Runs `count` inputs spread over every parser: about 1 in 50 a crafted header, the rest mutations
 * (of bytes, or of JSON structure where the format is JSON) of the valid seeds.
 */
export function fuzzParsers(seed: number, count: number): FuzzResult {
  const r = rng(seed);
  const ts = targets(r);
  const t0 = Date.now();
  // Most inputs end in a typed error: without stack traces they cost a tenth as much.
  const stackTraceLimit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  const result: FuzzResult = { inputs: 0, accepted: 0, rejected: 0, perTarget: {}, perTargetMs: {}, findings: [], ms: 0 };
  try {
    fuzzLoop(ts, r, count, result);
  } finally {
    Error.stackTraceLimit = stackTraceLimit;
  }
  result.ms = Date.now() - t0;
  for (const k of Object.keys(result.perTargetMs)) result.perTargetMs[k] = Math.round(result.perTargetMs[k]);
  return result;
}

function fuzzLoop(ts: Target[], r: Rand, count: number, result: FuzzResult): void {
  for (let i = 0; i < count; i++) {
    const t = ts[i % ts.length];
    const started = performance.now();
    let input: Uint8Array;
    if (t.crafted.length && r() < 0.02) input = pick(r, t.crafted);
    else if (t.docs && r() < 0.5) {
      const doc = mutateJson(pick(r, t.docs), r);
      input = t.fromDoc ? t.fromDoc(doc) : utf8(JSON.stringify(doc) ?? "");
    } else input = mutateBytes(pick(r, t.seeds), r);
    result.inputs++;
    result.perTarget[t.name] = (result.perTarget[t.name] ?? 0) + 1;
    try {
      t.run(input);
      result.accepted++;
    } catch (e) {
      if (t.accepts.some((cls) => e instanceof cls)) result.rejected++;
      else if (result.findings.filter((f) => f.target === t.name).length < 3) {
        const err = e as Error;
        result.findings.push({
          target: t.name,
          index: i,
          error: `${err?.name}: ${String(err?.message).slice(0, 200)}`,
          input: Buffer.from(input.subarray(0, 200)).toString("latin1"),
        });
      }
    }
    result.perTargetMs[t.name] = (result.perTargetMs[t.name] ?? 0) + performance.now() - started;
  }
}
