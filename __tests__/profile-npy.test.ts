import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createProfile, decodeNpy, decodeProfile, encodeNpy, loadProfile, profileFromNpy, profileToNpy, type NpyFloatDtype } from "../ts/profile";
import { parsePyLiteral } from "../ts/profile/pyliteral";
import { Profiler } from "../ts/profiler";
import { Sampler } from "../ts/model";
import { rng, testSeed } from "./helpers/random";

// Fresh random data each run; rerun a failure with LUKV_SEED=<seed>.
const SEED = testSeed("profile-npy");

const DIR = join(__dirname, "fixtures", "npy");
interface Manifest {
  shape: number[];
  values: number[];
  valuesF2: number[];
  files: { file: string; version: string; descr: string; fortranOrder: boolean }[];
}
const expected = JSON.parse(readFileSync(join(DIR, "expected.json"), "utf8")) as Manifest;
const fixture = (name: string) => readFileSync(join(DIR, name));

describe(".npy files written by NumPy", () => {
  test("the manifest covers every header version, byte order, width and memory order", () => {
    const files = expected.files;
    expect(new Set(files.map((f) => f.version))).toEqual(new Set(["1.0", "2.0", "3.0"]));
    expect(new Set(files.map((f) => f.descr))).toEqual(new Set(["<f4", ">f4", "<f8", ">f8", "=f8", "|f4"]));
    expect(new Set(files.map((f) => f.fortranOrder))).toEqual(new Set([true, false]));
    expect(expected.values).toHaveLength(99 * 2 * 3);
  });

  test.each(expected.files.map((f) => [f.file, f] as const))("%s loads to the expected numbers", (file, info) => {
    const arr = decodeNpy(fixture(file));
    expect(arr.shape).toEqual(expected.shape);
    expect(arr.descr).toBe(info.descr);
    expect(arr.version).toBe(info.version);
    expect(arr.fortranOrder).toBe(info.fortranOrder);
    expect(Array.from(arr.data)).toEqual(expected.values);

    const profile = loadProfile(join(DIR, file));
    expect([profile.grid, profile.layers, profile.kvHeads]).toEqual([99, 2, 3]);
    expect(Array.from(profile.table)).toEqual(expected.values);
    expect(profile.meta).toEqual({});
  });

  test("float16 files load to NumPy's half-precision values", () => {
    const arr = decodeNpy(fixture("v1-le-f2-c.npy"));
    expect(arr.descr).toBe("<f2");
    expect(Array.from(arr.data)).toEqual(expected.valuesF2);
  });

  test("paths, Buffers and plain Uint8Arrays load alike", () => {
    const buf = fixture("v2-be-f4-f.npy");
    const plain = new Uint8Array(buf.length + 3).subarray(3); // unaligned view
    plain.set(buf);
    for (const p of [loadProfile(buf), loadProfile(plain), decodeProfile(plain), profileFromNpy(plain)]) {
      expect(Array.from(p.table)).toEqual(expected.values);
    }
  });

  test("encodeNpy writes the very bytes NumPy writes", () => {
    const shape = expected.shape;
    const cases: [string, Parameters<typeof encodeNpy>[2]][] = [
      ["plain.npy", undefined],
      ["v1-le-f8-c.npy", { dtype: "<f8" }],
      ["v1-le-f4-c.npy", { dtype: "<f4" }],
      ["v1-be-f4-c.npy", { dtype: ">f4" }],
      ["v1-be-f8-f.npy", { dtype: ">f8", fortranOrder: true }],
      ["v1-le-f4-f.npy", { dtype: "<f4", fortranOrder: true }],
      ["v2-le-f8-c.npy", { version: "2.0" }],
      ["v2-be-f4-f.npy", { version: "2.0", dtype: ">f4", fortranOrder: true }],
      ["v3-le-f4-c.npy", { version: "3.0", dtype: "<f4" }],
      ["v3-be-f8-f.npy", { version: "3.0", dtype: ">f8", fortranOrder: true }],
    ];
    for (const [file, options] of cases) {
      expect(Buffer.from(encodeNpy(expected.values, shape, options)).equals(fixture(file))).toBe(true);
    }
    const profile = loadProfile(join(DIR, "v3-be-f8-f.npy"));
    expect(Buffer.from(profileToNpy(profile)).equals(fixture("plain.npy"))).toBe(true);
  });
});

describe(`encodeNpy / decodeNpy round trips (seed ${SEED})`, () => {
  const rand = rng(SEED);
  const dtypes: NpyFloatDtype[] = ["<f8", ">f8", "<f4", ">f4"];

  test("random shapes of 0 to 4 dimensions, every dtype, order and version", () => {
    for (let trial = 0; trial < 60; trial++) {
      const ndim = Math.floor(rand() * 5);
      const shape = Array.from({ length: ndim }, () => Math.floor(rand() * 5) + (rand() < 0.1 ? 0 : 1));
      const count = shape.reduce((a, b) => a * b, 1);
      const values = Float64Array.from({ length: count }, () => (rand() - 0.5) * 10 ** Math.floor(rand() * 10 - 5));
      for (const dtype of dtypes) {
        for (const fortranOrder of [false, true]) {
          const version = (["1.0", "2.0", "3.0"] as const)[Math.floor(rand() * 3)];
          const bytes = encodeNpy(values, shape, { dtype, fortranOrder, version });
          expect(bytes.length % 64).toBe((count * (dtype.endsWith("8") ? 8 : 4)) % 64);
          const back = decodeNpy(bytes);
          expect(back.shape).toEqual(shape);
          // As np.save: an array that is C- and Fortran-contiguous at once is written in C order.
          const both = count === 0 || shape.filter((d) => d > 1).length <= 1;
          expect(back.fortranOrder).toBe(fortranOrder && !both);
          expect(back.version).toBe(version);
          const want = dtype.endsWith("4") ? Float64Array.from(Float32Array.from(values)) : values;
          expect(Array.from(back.data)).toEqual(Array.from(want));
        }
      }
    }
  });

  test("bytes after the array are ignored, as NumPy does", () => {
    const bytes = fixture("plain.npy");
    const longer = new Uint8Array(bytes.length + 5);
    longer.set(bytes);
    expect(Array.from(decodeNpy(longer).data)).toEqual(expected.values);
  });

  test("encodeNpy writes Fortran order only for arrays that are not C-contiguous too, as np.save; shapes np.load refuses are refused", () => {
    const header = (bytes: Uint8Array) => Buffer.from(bytes.subarray(10, 10 + new DataView(bytes.buffer, bytes.byteOffset).getUint16(8, true))).toString("latin1");
    for (const shape of [[5], [1, 3], [3, 1], [3, 1, 1], [0, 3], []]) {
      const count = shape.reduce((a, b) => a * b, 1);
      const text = header(encodeNpy(new Float64Array(count), shape, { fortranOrder: true }));
      expect([shape, text.includes("'fortran_order': False")]).toEqual([shape, true]);
    }
    expect(header(encodeNpy(new Float64Array(6), [2, 3], { fortranOrder: true }))).toContain("'fortran_order': True");
    expect(() => encodeNpy([], new Array(65).fill(0))).toThrow("at most 64 dimensions (NumPy's limit)");
    expect(() => encodeNpy([], [2 ** 40, 2 ** 40, 0])).toThrow("dimensions whose product, zeros left out, is at most 2^53 - 1");
  });

  test("encodeNpy rejects bad arguments", () => {
    expect(() => encodeNpy([1, 2, 3], [2, 2])).toThrow("Expected 4 numbers (the product of shape [2, 2]) for data but received Array(3)");
    expect(() => encodeNpy([1], [1.5])).toThrow("Expected an array of non-negative integers for shape but received Array(1)");
    expect(() => encodeNpy([1], [1], { dtype: "<i4" as NpyFloatDtype })).toThrow(
      'Expected one of "<f8", "<f4", ">f8", ">f4" for options.dtype but received "<i4" of type string',
    );
  });
});

describe("bad .npy files name the problem", () => {
  const cases: [string, string][] = [
    ["bad-truncated.npy", "truncated npy data: shape (99, 1, 2) of <f8 needs 1584 bytes but only 100 follow the header"],
    ["bad-magic.npy", "not a .npy file: expected the magic string \\x93NUMPY but found 93 4e 55 4d 50 58"],
    ["bad-int32.npy", 'unsupported npy dtype "<i4" (an integer array): lukv reads float16, float32 and float64 arrays'],
    ["bad-bytes-s4.npy", 'unsupported npy dtype "|S4" (a byte-string array): lukv reads float16, float32 and float64 arrays'],
    ["bad-object.npy", 'unsupported npy dtype "|O" (a pickled object array): lukv reads float16, float32 and float64 arrays'],
    ["bad-shape-2d.npy", "npy profile must be a 3-D array [grid, layers, kvHeads] but has shape (99, 2) (2-D)"],
    ["bad-shape-4d.npy", "npy profile must be a 3-D array [grid, layers, kvHeads] but has shape (99, 1, 2, 1) (4-D)"],
    ["bad-nan.npy", "prune ratio at row 5 (compression ratio 0.06), layer 0, head 1 is NaN; expected a number in [0, 1]"],
    ["bad-ratio-above-1.npy", "prune ratio at row 98 (compression ratio 0.99), layer 0, head 1 is 1.5; expected a number in [0, 1]"],
    ["bad-ratio-negative.npy", "prune ratio at row 3 (compression ratio 0.04), layer 0, head 0 is -0.25; expected a number in [0, 1]"],
  ];

  test.each(cases)("%s", (file, message) => {
    const path = join(DIR, file);
    expect(() => loadProfile(path)).toThrow(expect.objectContaining({ name: "BadProfileError", code: "ERR_LUKV_BAD_PROFILE" }));
    expect(() => loadProfile(path)).toThrow(`${path}: ${message}`);
    expect(() => loadProfile(fixture(file))).toThrow(message);
  });

  /** A v1.0 file with a hand-written header, padded like NumPy's. */
  function withHeader(header: string, payload = new Uint8Array(0), major = 1): Uint8Array {
    const text = Buffer.from(header, major === 3 ? "utf8" : "latin1");
    const lenBytes = major === 1 ? 2 : 4;
    const pad = 64 - ((8 + lenBytes + text.length + 1) % 64);
    const head = Buffer.concat([text, Buffer.alloc(pad, 0x20), Buffer.from("\n")]);
    const pre = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0, 0, 0, 0, 0].slice(0, 8 + lenBytes));
    if (major === 1) pre.writeUInt16LE(head.length, 8);
    else pre.writeUInt32LE(head.length, 8);
    return Buffer.concat([pre, head, payload]);
  }

  test("malformed headers and preambles", () => {
    const plain = fixture("plain.npy");
    const v4 = Buffer.from(plain);
    v4[6] = 4;
    expect(() => decodeNpy(v4)).toThrow("unsupported .npy format version 4.0: lukv reads 1.0, 2.0 and 3.0");
    expect(() => decodeNpy(plain.subarray(0, 7))).toThrow("truncated npy file: 7 bytes, fewer than the 10-byte preamble");
    expect(() => decodeNpy(plain.subarray(0, 40))).toThrow("truncated npy header: it needs 118 bytes but only 30 follow the preamble");
    expect(() => decodeNpy(withHeader("[1, 2]"))).toThrow("npy header is not a dict but [1, 2]");
    expect(() => decodeNpy(withHeader("{'descr': '<f8', 'shape': (1,)}"))).toThrow("npy header has no 'fortran_order' key");
    expect(() => decodeNpy(withHeader("{'descr': '<f8', 'fortran_order': 0, 'shape': (1,)}"))).toThrow(
      "npy header 'fortran_order' must be True or False but is 0",
    );
    expect(() => decodeNpy(withHeader("{'descr': '<f8', 'fortran_order': False, 'shape': (2, -1)}"))).toThrow(
      "npy header 'shape' must be a tuple of non-negative integers but is (2, -1)",
    );
    // Floats are not integers, even when whole: NumPy refuses them.
    for (const [shape, shown] of [["(2.0, 1)", "(2.0, 1)"], ["(1e0,)", "(1.0,)"], ["(2., 1)", "(2.0, 1)"], ["(0.5,)", "(0.5,)"]])
      expect(() => decodeNpy(withHeader(`{'descr': '<f8', 'fortran_order': False, 'shape': ${shape}}`))).toThrow(
        `npy header 'shape' must be a tuple of non-negative integers but is ${shown}`,
      );
    expect(() => decodeNpy(withHeader("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,)}"))).toThrow(
      "unsupported npy dtype [('a', '<f8')] (a structured array)",
    );
    expect(() => decodeNpy(withHeader("{'descr': '<f16', 'fortran_order': False, 'shape': (1,)}"))).toThrow(
      'unsupported npy dtype "<f16" (a float array of an unsupported width)',
    );
    expect(() => decodeNpy(withHeader("{'descr': '<c8', 'fortran_order': False, 'shape': (1,)}"))).toThrow("(a complex array)");
    expect(() => decodeNpy(withHeader("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), "))).toThrow(
      "npy header is not a valid Python literal: unexpected end",
    );
    expect(() => decodeNpy(withHeader("{'descr': __import__('os'), 'fortran_order': False, 'shape': (1,)}"))).toThrow(
      'npy header is not a valid Python literal: unexpected "_" at character 10',
    );
    const badUtf8 = withHeader("{'descr': '<f8', 'fortran_order': False, 'shape': (0,), 'x': 'é'}", undefined, 3);
    const at = Buffer.from(badUtf8).indexOf(Buffer.from("é", "utf8"));
    badUtf8[at] = 0xff;
    expect(() => decodeNpy(badUtf8)).toThrow("npy header of a version 3.0 file is not valid UTF-8");
    expect(() => decodeNpy("x" as unknown as Uint8Array)).toThrow('Expected a Uint8Array or Buffer for bytes but received "x" of type string');
  });

  test("DEL and C1 controls in a header are escaped in messages (U+009B acts as ESC [ on terminals; JSON.stringify escapes only C0)", () => {
    const v3 = (text: string) => withHeader(text, undefined, 3);
    expect(() => decodeNpy(v3("{'descr': '<i4\u009b2J\u007f', 'fortran_order': False, 'shape': (1,)}"))).toThrow(
      'unsupported npy dtype "<i4\\u009b2J\\u007f"',
    );
    expect(() => decodeNpy(v3("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), \u009b"))).toThrow(
      "npy header is not a valid Python literal: unexpected \"\\u009b\" at character",
    );
    // The same in option names and string values of any message.
    expect(() => createProfile({ table: [0.5], layers: 1, kvHeads: 1, ["x\u009b"]: 1 } as never)).toThrow('received "x\\u009b" (metadata goes in meta)');
    expect(() => new Profiler({ layers: 1, kvHeads: 1, scorerOptions: { ["k\u009b"]: 1 } as never })).toThrow('but received "k\\u009b"');
    expect(() => new Sampler({ temperature: "t\u009b" as never })).toThrow('Expected a finite number >= 0 for temperature but received "t\\u009b" of type string');
  });

  test("a version 3.0 header is read as UTF-8 and single-letter type codes work", () => {
    const payload = Buffer.from(new Float64Array([0.25, 0.5]).buffer);
    const v3 = withHeader("{'descr': 'd', 'fortran_order': False, 'shape': (1, 1, 2), 'note': 'Φ → ratios'}", payload, 3);
    expect(Array.from(decodeNpy(v3).data)).toEqual([0.25, 0.5]);
    // 'note' is a key NumPy would refuse; lukv reads the three it needs and ignores the rest.
    expect(Array.from(loadProfile(v3).table)).toEqual([0.25, 0.5]);
  });

  test("content that is neither .npy nor JSON", () => {
    expect(() => decodeProfile(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0]))).toThrow(
      'unrecognised profile: expected a .npy file (starting with \\x93NUMPY) or lukv JSON (starting with "{") but the data starts with 89 50 4e 47 0d 0a 1a 0a',
    );
    expect(() => decodeProfile(new Uint8Array(0))).toThrow("but the data starts with nothing (empty)");
    expect(() => loadProfile(42 as unknown as string)).toThrow("Expected a file path or a Uint8Array for pathOrBytes but received 42 of type number");
  });
});

describe("the header literal parser", () => {
  test("reads what NumPy and Python 2 write, with any spacing and quotes", () => {
    const v = parsePyLiteral(" {\"descr\" :'<f4' ,'fortran_order':True,'shape':( 99L ,2,3 ,) , 'x': [1.5e3, None, -2, u'a\\'b\\x41'],} ");
    expect(v).toEqual({
      kind: "dict",
      entries: new Map<string, unknown>([
        ["descr", "<f4"],
        ["fortran_order", true],
        ["shape", { kind: "tuple", items: [99, 2, 3] }],
        ["x", { kind: "list", items: [{ kind: "float", value: 1500 }, null, -2, "a'bA"] }],
      ]),
    });
    expect(parsePyLiteral("()")).toEqual({ kind: "tuple", items: [] });
    expect(parsePyLiteral("(7,)")).toEqual({ kind: "tuple", items: [7] });
    expect(parsePyLiteral("(7)")).toBe(7);
    expect(parsePyLiteral("(0, 00, 2., .5, 1e3, -3E-1)")).toEqual({
      kind: "tuple",
      items: [0, 0, { kind: "float", value: 2 }, { kind: "float", value: 0.5 }, { kind: "float", value: 1000 }, { kind: "float", value: -0.3 }],
    });
  });

  test("rejects what is not a literal", () => {
    expect(() => parsePyLiteral("{'a': 1} x")).toThrow("unexpected text after the literal at character 9");
    expect(() => parsePyLiteral("{1: 2}")).toThrow("dict keys must be strings");
    expect(() => parsePyLiteral("'abc")).toThrow("unterminated string");
    expect(() => parsePyLiteral("(1 2)")).toThrow("expected ',' or ')'");
    expect(() => parsePyLiteral("Truex")).toThrow('unexpected "T"');
    expect(() => parsePyLiteral("(01,)")).toThrow("bad number at character 1");
  });
});
