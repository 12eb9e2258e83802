import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  createProfile,
  decodeProfile,
  encodeProfile,
  loadProfile,
  profileFromJson,
  profileToJson,
  saveProfile,
  type Profile,
  type ProfileMeta,
} from "../ts/profile";
import { rng, testSeed } from "./helpers/random";

// Fresh random data each run; rerun a failure with LUKV_SEED=<seed>.
const SEED = testSeed("profile-json");

const rand = rng(SEED);

const META: ProfileMeta = {
  model: "tiny-llama-test",
  scorer: "snapkv",
  scorerOptions: { window: 32, kernel: 7, aggregate: "mean" },
  sink: 4,
  window: 32,
  calibration: { samples: 3, queriesPerSample: 30, contextLengths: [4096, 8192, 16384], decodeSteps: 64, dataset: "synthetic" },
  createdAt: "2026-11-28T12:00:00Z",
  notes: { anything: ["extra", 1] },
};

function randomProfile(grid = 1 + Math.floor(rand() * 12), layers = 1 + Math.floor(rand() * 4), kvHeads = 1 + Math.floor(rand() * 4)): Profile {
  const table = Float64Array.from({ length: grid * layers * kvHeads }, () => (rand() < 0.05 ? Math.round(rand()) : rand()));
  return createProfile({ table, grid, layers, kvHeads, meta: structuredClone(META) });
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "lukv-profile-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe(`save / load round trips (seed ${SEED})`, () => {
  test("JSON keeps the exact table and all metadata", () => {
    for (let trial = 0; trial < 10; trial++) {
      const p = randomProfile();
      const path = join(dir, `p${trial}.json`);
      saveProfile(p, path);
      const back = loadProfile(path);
      expect([back.grid, back.layers, back.kvHeads]).toEqual([p.grid, p.layers, p.kvHeads]);
      expect(Array.from(back.table)).toEqual(Array.from(p.table));
      expect(back.meta).toEqual(META);
    }
    expect(readdirSync(dir).filter((f) => f.endsWith(".tmp"))).toEqual([]);
  });

  test("JSON keeps -0 (JSON.stringify would write 0)", () => {
    const table = new Float64Array(2 * 3).fill(0.25);
    table[1] = -0;
    const path = join(dir, "negative-zero.json");
    saveProfile(createProfile({ table, layers: 1, kvHeads: 3 }), path);
    const back = loadProfile(path);
    expect(Object.is(back.table[1], -0)).toBe(true);
    expect(Array.from(back.table)).toEqual(Array.from(table));
  });

  test("npy keeps the exact table (float64) or its float32 rounding, and no metadata", () => {
    const p = randomProfile(99, 3, 2);
    saveProfile(p, join(dir, "p.npy"));
    const back = loadProfile(join(dir, "p.npy"));
    expect([back.grid, back.layers, back.kvHeads]).toEqual([99, 3, 2]);
    expect(Array.from(back.table)).toEqual(Array.from(p.table));
    expect(back.meta).toEqual({});

    saveProfile(p, join(dir, "p4.NPY"), { dtype: "<f4" });
    expect(Array.from(loadProfile(join(dir, "p4.NPY")).table)).toEqual(Array.from(Float32Array.from(p.table)));
  });

  test("npy -> JSON -> npy gives back the same bytes", () => {
    const p = randomProfile(99, 2, 3);
    const npy = encodeProfile(p, "npy");
    const json = encodeProfile(decodeProfile(npy), "json");
    expect(Buffer.from(encodeProfile(decodeProfile(json), "npy")).equals(Buffer.from(npy))).toBe(true);
  });

  test("options.format overrides the extension; an unknown extension needs it", () => {
    const p = randomProfile();
    saveProfile(p, join(dir, "profile.bin"), { format: "json" });
    expect(readFileSync(join(dir, "profile.bin"), "utf8").startsWith('{\n  "format": "lukv-profile",\n  "version": 1,')).toBe(true);
    expect(loadProfile(join(dir, "profile.bin")).meta).toEqual(META);
    expect(() => saveProfile(p, "profile.txt")).toThrow(
      'Expected a path ending in .npy or .json (or options.format) for path but received "profile.txt" of type string',
    );
    expect(() => saveProfile(p, join(dir, "x.json"), { format: "csv" as "json" })).toThrow(
      'Expected "npy" or "json" for options.format but received "csv" of type string',
    );
    expect(existsSync("profile.txt")).toBe(false);
    // A dtype beside JSON would be ignored, valid or not; an empty path is named, not an ENOENT.
    for (const dtype of ["<f4", "<f2x"])
      expect(() => saveProfile(p, join(dir, "dtype.json"), { dtype: dtype as "<f4" })).toThrow(`Expected nothing beside format "json" (dtype is for .npy) for options.dtype but received "${dtype}" of type string`);
    expect(existsSync(join(dir, "dtype.json"))).toBe(false);
    expect(() => loadProfile("")).toThrow('Expected a file path or a Uint8Array for pathOrBytes but received "" of type string');
  });

  test("the JSON form has one line per compression ratio and parses as plain JSON", () => {
    const p = randomProfile(5, 2, 2);
    const text = profileToJson(p);
    const lines = text.split("\n");
    const tableAt = lines.indexOf('  "table": [');
    expect(lines.slice(tableAt + 1, tableAt + 1 + 5).every((l) => /^ {4}\[\[.*\]\],?$/.test(l))).toBe(true);
    const doc = JSON.parse(text);
    expect(doc.format).toBe("lukv-profile");
    expect(doc.version).toBe(1);
    expect(doc.table[4][1][0]).toBe(p.table[4 * 4 + 1 * 2 + 0]);
  });

  test("a byte-order mark and leading whitespace are accepted", () => {
    const p = randomProfile();
    const bytes = Buffer.concat([Buffer.from("\uFEFF \n"), Buffer.from(profileToJson(p))]);
    expect(Array.from(decodeProfile(bytes).table)).toEqual(Array.from(p.table));
    // However much whitespace comes first (format detection once looked at the first 64 bytes only).
    for (const pad of [63, 64, 100_000]) {
      const padded = Buffer.concat([Buffer.from(" \t\r\n".repeat(pad).slice(0, pad)), Buffer.from(profileToJson(p))]);
      expect(Array.from(decodeProfile(padded).table)).toEqual(Array.from(p.table));
    }
  });
});

describe("bad JSON profiles name the problem", () => {
  const good = () =>
    JSON.parse(profileToJson(createProfile({ table: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], grid: 2, layers: 2, kvHeads: 2, meta: { sink: 4 } })));
  const load = (doc: unknown) => () => loadProfile(Buffer.from(typeof doc === "string" ? doc : JSON.stringify(doc)));

  test("structure", () => {
    expect(load("{ not json")).toThrow("profile is not valid JSON: ");
    expect(load({ ...good(), format: "kvpress" })).toThrow('JSON profile must have "format": "lukv-profile" but has "kvpress"');
    expect(load({ ...good(), version: 2 })).toThrow("JSON profile version 2 is newer than this lukv reads (up to 1): upgrade lukv");
    expect(load({ ...good(), version: "1" })).toThrow('JSON profile "version" must be a positive integer but is "1"');
    expect(load({ ...good(), kvHeads: 0 })).toThrow('JSON profile "kvHeads" must be a positive integer but is 0');
    expect(load({ ...good(), grid: 3 })).toThrow("JSON profile table must be an array of 3 rows (grid) but has 2 entries");
    const shortRow = good();
    shortRow.table[1][0] = [0.5];
    expect(load(shortRow)).toThrow("JSON profile table[1][0] must be an array of 2 KV heads but has 1 entries");
    const notArray = good();
    notArray.table[0] = 7;
    expect(load(notArray)).toThrow("JSON profile table[0] must be an array of 2 layers but has 7");
    expect(() => profileFromJson("[1, 2]")).toThrow("JSON profile must be an object but is [1,2]");
  });

  test("values", () => {
    const nan = good();
    nan.table[1][0][1] = null; // what JSON.stringify makes of NaN
    expect(load(nan)).toThrow("JSON profile table[1][0][1] must be a number in [0, 1] but is null");
    const big = good();
    big.table[1][1][0] = 1.25;
    expect(load(big)).toThrow("prune ratio at row 1 (compression ratio 0.666667), layer 1, head 0 is 1.25; expected a number in [0, 1]");
  });

  test("metadata", () => {
    expect(load({ ...good(), meta: { sink: -1 } })).toThrow("meta.sink must be a non-negative integer but is -1");
    expect(load({ ...good(), meta: { model: 3 } })).toThrow("meta.model must be a string but is 3");
    expect(load({ ...good(), meta: { calibration: { contextLengths: "4k" } } })).toThrow(
      'meta.calibration.contextLengths must be an array of non-negative integers but is "4k"',
    );
    expect(load({ ...good(), meta: [] })).toThrow("meta must be an object but is []");
    // Not JSON data: saveProfile would have failed on it later with a TypeError.
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    expect(() => createProfile({ table: [0.5], layers: 1, kvHeads: 1, meta: { n: 10n } as never })).toThrow("meta must be JSON data but Do not know how to serialize a BigInt");
    expect(() => createProfile({ table: [0.5], layers: 1, kvHeads: 1, meta: { cycle } as never })).toThrow(/^meta must be JSON data but Converting circular structure to JSON$/);
    // A misspelt field was dropped in silence.
    expect(() => createProfile({ table: [0.5], layers: 1, kvHeads: 1, metta: { model: "m" } } as never)).toThrow(
      'a profile has the fields table, grid, layers, kvHeads, meta but received "metta" (metadata goes in meta)',
    );
  });

  test("createProfile checks sizes", () => {
    expect(() => createProfile({ table: [0.1, 0.2, 0.3], grid: 2, layers: 1, kvHeads: 2 })).toThrow(
      "table has 3 values but grid 2 × layers 1 × kvHeads 2 needs 4",
    );
    expect(() => createProfile({ table: [0.1, 0.2, 0.3], layers: 1, kvHeads: 2 })).toThrow("table has 3 values, not a positive multiple of layers 1 × kvHeads 2 = 2");
    expect(() => createProfile({ table: [], layers: 1, kvHeads: 2 })).toThrow("table has 0 values, not a positive multiple of layers 1 × kvHeads 2 = 2");
    expect(() => createProfile({ table: [0.5], grid: 1.5, layers: 1, kvHeads: 1 })).toThrow("grid must be a positive integer but is 1.5");
    expect(() => createProfile({ table: [], layers: 0, kvHeads: 2 })).toThrow("layers must be a positive integer but is 0");
    expect(() => saveProfile({ table: new Float64Array(3), grid: 1, layers: 2, kvHeads: 2, meta: {} }, join(dir, "x.json"))).toThrow(
      "table must be a Float64Array of grid × layers × kvHeads = 4 values but is Float64Array(3)",
    );
    const p = createProfile({ table: [0.5, 0.5], layers: 1, kvHeads: 2 });
    p.table[1] = NaN;
    expect(() => saveProfile(p, join(dir, "nan.npy"))).toThrow("prune ratio at row 0 (compression ratio 0.5), layer 0, head 1 is NaN");
    expect(existsSync(join(dir, "nan.npy"))).toBe(false);
  });

  test("file-system errors pass through", () => {
    writeFileSync(join(dir, "empty.json"), "");
    expect(() => loadProfile(join(dir, "empty.json"))).toThrow(`${join(dir, "empty.json")}: unrecognised profile`);
    expect(() => loadProfile(join(dir, "missing.npy"))).toThrow(expect.objectContaining({ code: "ENOENT" }));
  });
});
