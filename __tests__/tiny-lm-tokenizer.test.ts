// The tokenizer on hostile input: one very long pre-token encodes in about linear time with the ids of
// bpe.py's round-by-round rule, the pre-token cache keeps no long words, lone surrogates come back
// as U+FFFD (the one case where decode(encode(s)) !== s), decode refuses ids outside the
// vocabulary instead of dropping them, and encode refuses what is not a string.
import * as fs from "fs";
import * as path from "path";
import * as v8 from "v8";
import * as vm from "vm";
import { InvalidArgumentError } from "../ts/errors";
import { Tokenizer, preSplit, type TokenizerJson } from "../ts/model";
import { caught } from "./helpers/caught";
import { rng, testSeed } from "./helpers/random";

const seed = testSeed("tiny-lm-tokenizer");
const shippedFile = path.join(__dirname, "..", "models", "tiny-lm", "tokenizer.json");
const shippedJson: TokenizerJson = JSON.parse(fs.readFileSync(shippedFile, "utf8"));

/** bpe.py's encoder as written there: each round merges every occurrence of the lowest-ranked pair. */
function referenceEncode(merges: Array<[number, number]>, text: string): number[] {
  const ranks = new Map<string, number>();
  merges.forEach(([a, b], r) => ranks.set(`${a},${b}`, r));
  const bytes = new TextEncoder().encode(text);
  const out: number[] = [];
  for (const [s, e] of preSplit(bytes)) {
    let ids = Array.from(bytes.subarray(s, e));
    for (;;) {
      let best = -1;
      for (let k = 0; k + 1 < ids.length; k++) {
        const r = ranks.get(`${ids[k]},${ids[k + 1]}`);
        if (r !== undefined && (best < 0 || r < best)) best = r;
      }
      if (best < 0) break;
      const [a, b] = merges[best];
      const next: number[] = [];
      for (let k = 0; k < ids.length; k++) {
        if (k + 1 < ids.length && ids[k] === a && ids[k + 1] === b) {
          next.push(256 + best);
          k++;
        } else next.push(ids[k]);
      }
      ids = next;
    }
    out.push(...ids);
  }
  return out;
}

/** `n` letters a-z from a fixed generator: one pre-token. */
function letters(n: number, state: number): string {
  const a = new Array<string>(n);
  for (let i = 0; i < n; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    a[i] = "abcdefghijklmnopqrstuvwxyz"[(state >>> 16) % 26];
  }
  return a.join("");
}

function fnv1a(ids: number[]): string {
  let h = 0x811c9dc5;
  for (const id of ids) h = Math.imul(h ^ id, 0x01000193) >>> 0;
  return h.toString(16);
}

/** Best of `reps` timings of encoding `text` with a fresh tokenizer (nothing cached), in ms. */
function encodeMs(text: string, reps = 3): number {
  let best = Infinity;
  for (let k = 0; k < reps; k++) {
    const tok = new Tokenizer(shippedJson);
    tok.encode("warm up");
    const t0 = process.hrtime.bigint();
    tok.encode(text);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return best;
}

describe("encoding cost and result", () => {
  test("a 100K-letter word costs about what the same letters split into words do, with the same ids as before", () => {
    const word = letters(100_000, 1);
    const ids = new Tokenizer(shippedJson).encode(word);
    // What the round-by-round encoder (lukv before the heap, and bpe.py) gives for this word.
    expect([ids.length, fnv1a(ids)]).toEqual([76161, "94650aff"]);
    const split = word.match(/.{1,8}/g)!.join(" ");
    encodeMs(split, 1);
    const one = encodeMs(word), words = encodeMs(split);
    // About 1-3x with a heap; the rescanning encoder took ~100x. Generous for a busy machine.
    expect(one).toBeLessThan(20 * Math.max(words, 5));
  });

  test("the shipped tokenizer gives bpe.py's ids on random text, long words included", () => {
    const r = rng(seed);
    const tok = new Tokenizer(shippedJson), merges = shippedJson.merges;
    const alphabet = ["a", "e", "t", "s", "h", "in", "ing", " the", "th", "ll", "ss", "aa", " ", "  ", "\n", "7", ".", "é", "日", "🙂", "\r\n"];
    for (let k = 0; k < 1000; k++) {
      const s = Array.from({ length: 1 + Math.floor(r() * 30) }, () => alphabet[Math.floor(r() * alphabet.length)]).join("");
      expect(tok.encode(s)).toEqual(referenceEncode(merges, s));
    }
    for (let k = 0; k < 3; k++) {
      const s = letters(1000 + Math.floor(r() * 1000), (r() * 2 ** 32) >>> 0);
      expect(tok.encode(s)).toEqual(referenceEncode(merges, s));
    }
  });

  test("random merge tables (pairs of one id, repeated pairs, chains) give the round-by-round ids", () => {
    const r = rng(seed + 1);
    for (let t = 0; t < 200; t++) {
      const alphabet = [97, 98, 99, 100].slice(0, 1 + Math.floor(r() * 4));
      const merges: Array<[number, number]> = [];
      for (let k = Math.floor(r() * 30); k > 0; k--) {
        if (merges.length > 0 && r() < 0.1) {
          merges.push([...merges[Math.floor(r() * merges.length)]]);
          continue;
        }
        const ids = [...alphabet, ...merges.map((_, i) => 256 + i)];
        merges.push([ids[Math.floor(r() * ids.length)], ids[Math.floor(r() * ids.length)]]);
      }
      const tok = new Tokenizer({ format: "lukv-bpe-1", vocab_size: 256 + merges.length, special_tokens: {}, merges });
      for (let k = 0; k < 10; k++) {
        const s = String.fromCharCode(...Array.from({ length: 1 + Math.floor(r() * (k < 8 ? 30 : 300)) }, () => alphabet[Math.floor(r() * alphabet.length)]));
        expect(tok.encode(s)).toEqual(referenceEncode(merges, s));
      }
    }
  });
});

describe("pre-token cache", () => {
  v8.setFlagsFromString("--expose_gc");
  const gc = vm.runInNewContext("gc") as () => void;
  /** Heap bytes still held, after a full GC, once `work` has run with a fresh tokenizer. */
  function kept(work: (tok: Tokenizer) => void): number {
    const tok = new Tokenizer(shippedJson);
    tok.encode("warm up");
    gc();
    const before = process.memoryUsage().heapUsed;
    work(tok);
    gc();
    const after = process.memoryUsage().heapUsed;
    // The tokenizer (and its cache) is still alive here, and gives the same ids as a fresh one.
    expect(tok.encode("the cat sat")).toEqual(new Tokenizer(shippedJson).encode("the cat sat"));
    return after - before;
  }

  test("long words encoded once are not kept", () => {
    let text = 0;
    const bytes = kept((tok) => {
      for (let i = 0; i < 100; i++) {
        const word = "x".repeat(20_000 + i);
        text += word.length;
        expect(tok.encode(word).length).toBeGreaterThan(0);
      }
    });
    // Caching each word kept ~6 bytes per letter (12 MB here); nothing of them needs to stay.
    expect(bytes).toBeLessThan(text / 2);
  });

  test("many distinct short words keep a bounded amount", () => {
    // 40K words of 21 CJK characters (63 bytes each), all distinct.
    const r = rng(seed + 2);
    const bytes = kept((tok) => {
      for (let i = 0; i < 40_000; i++) tok.encode(String.fromCharCode(...Array.from({ length: 21 }, () => 0x4e00 + Math.floor(r() * 0x5000))));
    });
    // Caching all of them kept ~37 MB; the cache holds at most ~9 MB (8 MB estimated) before it starts again.
    expect(bytes).toBeLessThan(20e6);
  });
});

describe("lone surrogates", () => {
  test("encode as U+FFFD, so decode gives U+FFFD where they were; well-formed text round-trips", () => {
    const tok = new Tokenizer(shippedJson);
    for (const [s, back] of [
      ["a\uD800b", "a\uFFFDb"],
      ["x\uDC00", "x\uFFFD"],
      ["end\uD83D", "end\uFFFD"],
      ["\uDE42\uD83D", "\uFFFD\uFFFD"], // a pair in the wrong order is two lone surrogates
    ]) {
      expect(tok.encode(s)).toEqual(tok.encode(back));
      expect(tok.decode(tok.encode(s))).toBe(back);
    }
    for (const s of ["🙂", "a\uD83D\uDE42b", "\uFFFD"]) expect(tok.decode(tok.encode(s))).toBe(s);
  });
});

describe("encoding what is not a string", () => {
  test("is refused as InvalidArgumentError, as decode refuses what is not a list of ids; strings encode as before", () => {
    const tok = new Tokenizer(shippedJson);
    for (const [bad, shown] of [[null, "null"], [undefined, "undefined"], [123, "123 of type number"], [{}, "object"], [["ab"], "Array(1)"], [new String("ab"), "object"]] as const) {
      const e = caught(() => tok.encode(bad as never));
      expect([e.constructor, e.code, e.message]).toEqual([InvalidArgumentError, "ERR_LUKV_INVALID_ARGUMENT", `Expected a string for text but received ${shown}`]);
    }
    expect(tok.encode("")).toEqual([]);
    expect(tok.decode(tok.encode("null 123"))).toBe("null 123");
  });
});

describe("decoding ids outside the vocabulary", () => {
  const tok = new Tokenizer(shippedJson);
  const ids = "a token id (an integer from 0 to 4095)";

  test.each<[string, ArrayLike<number>, string]>([
    ["a negative id", [72, 105, -1, 33], `Expected ${ids} for ids[2] but received -1 of type number`],
    ["the vocabulary size", [72, 4096], `Expected ${ids} for ids[1] but received 4096 of type number`],
    ["an id far past the end", [2 ** 40], `Expected ${ids} for ids[0] but received 1099511627776 of type number`],
    ["a fraction", [72, 105.5], `Expected ${ids} for ids[1] but received 105.5 of type number`],
    ["NaN", [NaN, 72], `Expected ${ids} for ids[0] but received NaN of type number`],
    ["Infinity", [72, Infinity], `Expected ${ids} for ids[1] but received Infinity of type number`],
    ["a string", [72, "105" as never], `Expected ${ids} for ids[1] but received "105" of type string`],
    ["a hole", [72, , 105] as number[], `Expected ${ids} for ids[1] but received undefined`],
    ["the first of several bad ids", [72, 5000, -1], `Expected ${ids} for ids[1] but received 5000 of type number`],
    ["a Float64Array", Float64Array.of(72, 0.25), `Expected ${ids} for ids[1] but received 0.25 of type number`],
    ["an Int32Array", Int32Array.of(-7, 72), `Expected ${ids} for ids[0] but received -7 of type number`],
    ["a Uint16Array", Uint16Array.of(72, 65535), `Expected ${ids} for ids[1] but received 65535 of type number`],
    // Nothing is allocated for the length before the ids are read (this one would need 32 GiB)
    ["an array-like of length 2^33 holding no ids", { length: 2 ** 33 }, `Expected ${ids} for ids[0] but received undefined`],
  ])("%s is an InvalidArgumentError naming it and its index, and nothing is decoded", (_, bad, message) => {
    for (const call of [() => tok.decode(bad), () => tok.decodeBytes(bad)]) {
      const e = caught(call);
      expect(e).toBeInstanceOf(InvalidArgumentError);
      expect(e.code).toBe("ERR_LUKV_INVALID_ARGUMENT");
      expect(e.message).toBe(message);
    }
  });

  test("an argument that is not a list of ids is refused", () => {
    for (const [bad, shown] of [[5, "5 of type number"], [null, "null"], [undefined, "undefined"], ["Hi", '"Hi" of type string'], [{}, "object"]] as const) {
      const e = caught(() => tok.decode(bad as never));
      expect([e.constructor, e.message]).toEqual([InvalidArgumentError, `Expected an array or typed array of token ids for ids but received ${shown}`]);
    }
  });

  test("every valid input decodes as before: arrays, typed arrays, array-likes, special tokens, every id", () => {
    const text = "The cache keeps 42 tokens — ok?";
    const enc = tok.encode(text);
    for (const list of [enc, Int32Array.from(enc), Uint16Array.from(enc), Uint32Array.from(enc), Float32Array.from(enc), Float64Array.from(enc), { ...enc, length: enc.length }])
      expect(tok.decode(list)).toBe(text);
    // Special tokens are ids of the vocabulary that decode to nothing.
    const [bos, eos] = [tok.bos!, tok.eos!];
    expect([bos, eos]).toEqual([4094, 4095]);
    expect(tok.decode([bos, ...enc, eos])).toBe(text);
    expect(tok.decodeBytes([bos, eos]).length).toBe(0);
    expect(tok.decode([])).toBe("");
    expect(tok.decode(Uint8Array.of(0x48, 0x69))).toBe("Hi");
    expect(tok.decode([-0])).toBe("\0");
    // Every id alone, and all of them at once, give the bytes of its piece (bytes, then merges in order).
    const pieces: Uint8Array[] = Array.from({ length: 256 }, (_, b) => Uint8Array.of(b));
    for (const [a, b] of shippedJson.merges) pieces.push(Uint8Array.from([...pieces[a], ...pieces[b]]));
    const all = Array.from({ length: tok.vocabSize }, (_, id) => id);
    for (const id of all) expect(tok.decodeBytes([id])).toEqual(id < pieces.length ? pieces[id] : new Uint8Array(0));
    expect(Buffer.from(tok.decodeBytes(all))).toEqual(Buffer.concat(pieces));
  });
});
