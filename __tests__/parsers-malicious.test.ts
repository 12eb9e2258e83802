// Crafted files that once escaped the parsers' typed errors: each must now be rejected with
// BadProfileError or BadModelError and a message naming the problem.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BadModelError, BadProfileError } from "../ts/errors";
import { createProfile, decodeProfile, profileFromJson, profileToJson } from "../ts/profile";
import { configFromJson } from "../ts/model/load";
import { parseSafetensors } from "../ts/model/safetensors";
import { Tokenizer } from "../ts/model/tokenizer";
import { caught } from "./helpers/caught";

const utf8 = (s: string) => new TextEncoder().encode(s);

function npy(header: string): Uint8Array {
  const h = utf8(header);
  const out = new Uint8Array(12 + h.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 2, 0]);
  new DataView(out.buffer).setUint32(8, h.length, true);
  out.set(h, 12);
  return out;
}

function safetensors(header: string): Uint8Array {
  const h = utf8(header);
  const out = new Uint8Array(8 + h.length + 16);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  return out;
}

const profileDoc = JSON.parse(profileToJson(createProfile({ table: [0.5, 0.25], grid: 1, layers: 1, kvHeads: 2 })));

describe("profiles", () => {
  test("a JSON profile declaring layers 2**32-1 is a BadProfileError, not a RangeError", () => {
    const e = caught(() => decodeProfile(utf8(JSON.stringify({ ...profileDoc, layers: 2 ** 32 - 1 }))));
    expect(e).toBeInstanceOf(BadProfileError);
    expect(e.message).toBe("JSON profile table[0] must be an array of 4294967295 layers but has 1 entries");
  });

  test("huge grid, layers and kvHeads with a matching first row are rejected by the rows that are missing", () => {
    const doc = { ...profileDoc, grid: 2 ** 20, layers: 2 ** 20, kvHeads: 2 };
    const e = caught(() => profileFromJson(doc));
    expect(e).toBeInstanceOf(BadProfileError);
    expect(e.message).toBe("JSON profile table must be an array of 1048576 rows (grid) but has 1 entries");
  });

  test("a .npy header nesting 30,000 '[' is a BadProfileError, not a stack overflow", () => {
    const e = caught(() => decodeProfile(npy("{'descr': '<f8', 'fortran_order': False, 'shape': " + "[".repeat(30000) + "]".repeat(30000) + "}")));
    expect(e).toBeInstanceOf(BadProfileError);
    expect(e.message).toMatch(/^npy header is not a valid Python literal: nesting deeper than 64 brackets at character 113 /);
  });

  test("a JSON value nested 30,000 deep in a field is reported without a stack overflow", () => {
    const deep = "[".repeat(30000) + "]".repeat(30000);
    const e = caught(() => decodeProfile(utf8(`{"format": ${deep}}`)));
    expect(e).toBeInstanceOf(BadProfileError);
    expect(e.message).toBe('JSON profile must have "format": "lukv-profile" but has [[[[[[[[…]]]]]]]]');
    const m = caught(() => profileFromJson({ ...profileDoc, meta: { model: JSON.parse(deep) } }));
    expect(m).toBeInstanceOf(BadProfileError);
    expect(m.message).toBe("meta.model must be a string but is [[[[[[[[…]]]]]]]]");
  });
});

describe("safetensors", () => {
  test.each([
    ["null", "safetensors data: the header must be a JSON object but is null"],
    ['{"a": 5}', "safetensors data: tensor a must be an object but is 5"],
    ['{"a": {"dtype": "F16", "shape": [-2, -4], "data_offsets": [0, 16]}}', "safetensors data: tensor a has shape [-2,-4]; expected an array of non-negative integers"],
    ['{"a": {"dtype": "F16", "shape": 8, "data_offsets": [0, 16]}}', "safetensors data: tensor a has shape 8; expected an array of non-negative integers"],
    ['{"a": {"dtype": "F16", "shape": [8], "data_offsets": [0.5, 16.5]}}', "safetensors data: tensor a has data_offsets [0.5,16.5]; expected two integers [begin, end]"],
    ['{"a": {"dtype": "F16", "shape": [8]}}', "safetensors data: tensor a has data_offsets undefined; expected two integers [begin, end]"],
    ['{"a": {"dtype": "constructor", "shape": [8], "data_offsets": [0, 16]}}', "safetensors data: tensor a has dtype constructor; only F16, BF16 and F32 are read"],
    ['{"__metadata__": {"x": 1}}', "safetensors data: __metadata__ must map names to strings but is {\"x\":1}"],
  ])("%s", (header, message) => {
    const e = caught(() => parseSafetensors(safetensors(header)));
    expect(e).toBeInstanceOf(BadModelError);
    expect(e.message).toBe(message);
  });
});

describe("tokenizer and config", () => {
  const base = { format: "lukv-bpe-1", vocab_size: 260, special_tokens: { "<|bos|>": 258 }, merges: [[97, 98]] };
  test.each([
    [{ ...base, merges: Array.from({ length: 40 }, (_, i) => (i === 0 ? [97, 97] : [255 + i, 255 + i])) }, "tokenizer: merges[12] builds a piece of 8192 bytes, more than 4096"],
    [{ ...base, merges: [[300, 1]] }, "tokenizer: merges[0] is [300,1]; expected two ids of earlier pieces (below 256)"],
    [{ ...base, merges: [[97]] }, "tokenizer: merges[0] is [97]; expected two ids of earlier pieces (below 256)"],
    [{ ...base, merges: null }, "tokenizer: merges must be an array of at most 1048320 pairs but is null"],
    [{ ...base, special_tokens: null }, "tokenizer: special_tokens must be an object of ids but is null"],
    [{ ...base, special_tokens: { x: -1 } }, 'tokenizer: special token "x" has id -1; expected a non-negative integer'],
    [{ ...base, vocab: ["00", 7] }, "tokenizer: vocab[1] does not match its merge"],
    [null, "tokenizer: expected a JSON object but found null"],
  ])("%j", (json, message) => {
    const e = caught(() => new Tokenizer(json as never));
    expect(e).toBeInstanceOf(BadModelError);
    expect(e.message).toBe(message);
  });

  test("a tokenizer file that is not JSON and a config that is not an object", () => {
    const dir = mkdtempSync(join(tmpdir(), "lukv-tok-"));
    try {
      const file = join(dir, "tokenizer.json");
      writeFileSync(file, "{ not json");
      const e = caught(() => Tokenizer.load(file));
      expect(e).toBeInstanceOf(BadModelError);
      expect(e.message).toMatch(/^.+tokenizer\.json: not JSON \(/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const c = caught(() => configFromJson(null as never));
    expect(c).toBeInstanceOf(BadModelError);
    expect(c.message).toBe("config.json: expected a JSON object but found null");
    const d = caught(() => configFromJson({ vocab_size: "x" }));
    expect(d).toBeInstanceOf(BadModelError);
    expect(d.message).toBe('config.json: "vocab_size" should be a number but is "x"');
  });
});
