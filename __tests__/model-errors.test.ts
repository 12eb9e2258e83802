// The embedded model's edges: a byte order mark round-trips through the tokenizer, non-finite
// logits have a defined outcome, a cache of another shape, bad generate() arguments and unknown
// options (createCache's contextTokens included) are refused before anything changes (as
// InvalidArgumentError, bad values included), and a
// broken model folder (a copy of models/tiny-lm, damaged, NaN or infinite weights included) gives
// BadModelError naming the file and the field or tensor.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { KVCache, QueryStatistics } from "../ts";
import { BadModelError, InvalidArgumentError } from "../ts/errors";
import { encodeSafetensors, loadTinyLM, parseSafetensors, readSafetensors, Sampler, TinyLM, Tokenizer, type Tensor, type TokenizerJson } from "../ts/model";
import { caught } from "./helpers/caught";

const shipped = path.join(__dirname, "..", "models", "tiny-lm");
const FILES = ["config.json", "model.safetensors", "tokenizer.json"];

/** Expects `fn` to throw exactly `type` with exactly `message`. */
function throwsExactly(fn: () => unknown, type: new (...args: never[]) => Error, message: string): void {
  const e = caught(fn);
  expect(e.constructor).toBe(type);
  expect(e.message).toBe(message);
}

/** Expects `fn` to throw InvalidArgumentError (code ERR_LUKV_INVALID_ARGUMENT) with exactly `message`. */
function throwsInvalid(fn: () => unknown, message: string): void {
  const e = caught(fn);
  expect([e.constructor, e.code, e.message]).toEqual([InvalidArgumentError, "ERR_LUKV_INVALID_ARGUMENT", message]);
}

let model: TinyLM;
beforeAll(() => {
  model = loadTinyLM(shipped);
});

describe("tokenizer", () => {
  const bytesOnly = new Tokenizer({ format: "lukv-bpe-1", vocab_size: 256, special_tokens: {}, merges: [] });

  test("a leading U+FEFF survives decode", () => {
    expect(bytesOnly.decode([0xef, 0xbb, 0xbf, 0x48, 0x69])).toBe("\uFEFFHi");
    expect(bytesOnly.decode([0xef, 0xbb, 0xbf])).toBe("\uFEFF");
    const tok = model.tokenizer!;
    for (const s of ["\uFEFFHello", "\uFEFF", "\uFEFF\uFEFFx", "x\uFEFF"]) expect(tok.decode(tok.encode(s))).toBe(s);
  });

  const base: TokenizerJson = { format: "lukv-bpe-1", vocab_size: 260, special_tokens: { "<|bos|>": 258, "<|eos|>": 259 }, merges: [[97, 98], [256, 99]] };
  test.each([
    ["vocab_size other than the ids defined", { ...base, vocab_size: 300 }, "tokenizer: vocab_size is 300 but the file defines 260 ids (256 bytes, 2 merges, 2 special tokens)"],
    ["a special id on a byte", { ...base, special_tokens: { "<|bos|>": 65, "<|eos|>": 259 } }, 'tokenizer: special token "<|bos|>" has id 65; the 2 special tokens take the ids 258 to 259, after the 256 bytes and 2 merges'],
    ["a special id on a merge", { ...base, special_tokens: { "<|bos|>": 257, "<|eos|>": 259 } }, 'tokenizer: special token "<|bos|>" has id 257; the 2 special tokens take the ids 258 to 259, after the 256 bytes and 2 merges'],
    ["a special id past the end", { ...base, special_tokens: { "<|bos|>": 999999, "<|eos|>": 259 } }, 'tokenizer: special token "<|bos|>" has id 999999; the 2 special tokens take the ids 258 to 259, after the 256 bytes and 2 merges'],
    ["bos == eos", { ...base, special_tokens: { "<|bos|>": 259, "<|eos|>": 259 } }, 'tokenizer: special tokens "<|bos|>" and "<|eos|>" share the id 259'],
  ])("%s is refused", (_, json, message) => {
    throwsExactly(() => new Tokenizer(json), BadModelError, message);
  });

  test("consistent files load, with or without vocab_size", () => {
    const tok = new Tokenizer({ ...base, special_tokens: { "<|eos|>": 258, "<|bos|>": 259 } });
    expect([tok.vocabSize, tok.bos, tok.eos]).toEqual([260, 259, 258]);
    const { vocab_size: _, ...rest } = base;
    expect(new Tokenizer(rest as TokenizerJson).vocabSize).toBe(260);
  });
});

describe("sampling with non-finite logits", () => {
  const draws = (s: Sampler, logits: number[], n = 200) => Array.from({ length: n }, () => s.next(logits));
  const counts = (xs: number[]) => xs.reduce<Record<number, number>>((c, x) => ((c[x] = (c[x] ?? 0) + 1), c), {});

  test("NaN is refused, greedy or not, naming its index", () => {
    for (const options of [{}, { temperature: 1 }, { temperature: 1, topK: 2 }])
      throwsExactly(() => new Sampler(options).next([0, 2, NaN, 30]), InvalidArgumentError, "Expected a number that is not NaN for logits[2] but received NaN of type number");
    throwsExactly(() => new Sampler({ temperature: 1 }).next(Float32Array.of(9, 9, 0, NaN, 1), 2, 3), InvalidArgumentError, "Expected a number that is not NaN for logits[3] but received NaN of type number");
  });

  test("+Infinity wins: greedy takes the first, sampling draws uniformly among them", () => {
    expect(new Sampler().next([1, 2, Infinity, 0])).toBe(2);
    expect(new Set(draws(new Sampler({ temperature: 1, seed: 1 }), [1, 2, Infinity, 0]))).toEqual(new Set([2]));
    expect(new Set(draws(new Sampler({ temperature: 1, topK: 2, seed: 1 }), [1, 2, Infinity, 0]))).toEqual(new Set([2]));
    expect(new Sampler().next([Infinity, 0, Infinity, 5])).toBe(0);
    const c = counts(draws(new Sampler({ temperature: 0.5, seed: 3 }), [Infinity, 0, Infinity, 5], 2000));
    expect(Object.keys(c).sort()).toEqual(["0", "2"]);
    expect(c[0]).toBeGreaterThan(900);
    expect(c[2]).toBeGreaterThan(900);
  });

  test("-Infinity is never drawn unless every candidate is -Infinity", () => {
    expect(new Set(draws(new Sampler({ temperature: 2, seed: 1 }), [-Infinity, 0, -Infinity, -3]))).toEqual(new Set([1, 3]));
    expect(new Sampler().next([-Infinity, -Infinity, -Infinity])).toBe(0);
    expect(new Set(draws(new Sampler({ temperature: 1, seed: 1 }), [-Infinity, -Infinity, -Infinity]))).toEqual(new Set([0, 1, 2]));
  });

  test("a row outside the array is refused", () => {
    throwsExactly(() => new Sampler().next(new Float32Array(0)), InvalidArgumentError, "Expected a non-empty array or typed array of logits for logits but received Float32Array(0)");
    throwsExactly(() => new Sampler().next([1, 2, 3], -1, 2), InvalidArgumentError, "Expected integer between 0 and 2 for offset but received -1 of type number");
    throwsExactly(() => new Sampler().next([1, 2, 3], 1, 3), InvalidArgumentError, "Expected integer between 1 and 2 for vocab but received 3 of type number");
  });
});

describe("sampler options", () => {
  test.each([
    ["a misspelt name", { temprature: 1 }, "Expected only temperature, topK, seed in options but received \"temprature\" (did you mean temperature?)"],
    ["seed \"x\"", { temperature: 1, seed: "x" }, 'Expected integer between 0 and 4294967295 for seed but received "x" of type string'],
    ["seed NaN", { seed: NaN }, "Expected integer between 0 and 4294967295 for seed but received NaN of type number"],
    ["seed Infinity", { seed: Infinity }, "Expected integer between 0 and 4294967295 for seed but received Infinity of type number"],
    ["seed 1.5", { seed: 1.5 }, "Expected integer between 0 and 4294967295 for seed but received 1.5 of type number"],
    ["seed 2^32", { seed: 2 ** 32 }, "Expected integer between 0 and 4294967295 for seed but received 4294967296 of type number"],
    ["seed -1", { seed: -1 }, "Expected integer between 0 and 4294967295 for seed but received -1 of type number"],
    ["null", null, "Expected an options object for options but received null"],
  ])("%s is refused", (_, options, message) => {
    throwsExactly(() => new Sampler(options as never), InvalidArgumentError, message);
  });

  test.each([
    ["temperature -1", { temperature: -1 }, "Expected a finite number >= 0 for temperature but received -1"],
    ["temperature NaN", { temperature: NaN }, "Expected a finite number >= 0 for temperature but received NaN"],
    ["temperature Infinity", { temperature: Infinity }, "Expected a finite number >= 0 for temperature but received Infinity"],
    ["temperature \"1\"", { temperature: "1" }, 'Expected a finite number >= 0 for temperature but received "1" of type string'],
    ["topK 1.5", { temperature: 1, topK: 1.5 }, "Expected a non-negative integer for topK but received 1.5"],
    ["topK -1", { topK: -1 }, "Expected a non-negative integer for topK but received -1"],
    ["topK NaN", { topK: NaN }, "Expected a non-negative integer for topK but received NaN"],
  ])("%s is an InvalidArgumentError (Sampler and generate), with the message it always had", (_, options, message) => {
    throwsInvalid(() => new Sampler(options as never), message);
    using cache = model.createCache({ contextTokens: 32 });
    using seq = cache.createSequence();
    throwsInvalid(() => model.generate(seq, new Float32Array(4096), 3, options as never), message);
    expect(seq.appended(0)).toBe(0);
  });

  test("valid seeds still draw the same tokens as before", () => {
    const logits = [0.1, 2.0, -1, 1.5, 2.0, 0.3];
    const a = new Sampler({ temperature: 1, seed: 0xffffffff });
    const b = new Sampler({ temperature: 1, seed: 0xffffffff });
    expect(Array.from({ length: 50 }, () => a.next(logits))).toEqual(Array.from({ length: 50 }, () => b.next(logits)));
  });
});

describe("forward, forwardBatch and generate arguments", () => {
  const wanted = "Expected a Sequence of a cache shaped for this model (layers 4, kvHeads 2, queryHeads 8, headDim 32)";

  test.each([
    [{ layers: 4, kvHeads: 4, queryHeads: 16, headDim: 16 }],
    [{ layers: 4, kvHeads: 2, queryHeads: 8, headDim: 16 }],
    [{ layers: 4, kvHeads: 1, queryHeads: 4, headDim: 64 }],
    [{ layers: 2, kvHeads: 2, queryHeads: 8, headDim: 32 }],
    [{ layers: 5, kvHeads: 2, queryHeads: 8, headDim: 32 }],
    [{ layers: 4, kvHeads: 2, queryHeads: 2, headDim: 32 }],
  ])("a sequence of a cache shaped %j is refused before anything is appended", (shape) => {
    using cache = new KVCache({ ...shape, dtype: "f32", maxTokens: 1024 });
    using seq = cache.createSequence();
    const got = `layers ${shape.layers}, kvHeads ${shape.kvHeads}, queryHeads ${shape.queryHeads}, headDim ${shape.headDim}`;
    throwsExactly(() => model.forward(seq, [1, 2, 3]), InvalidArgumentError, `${wanted} for seq but received one of a cache with ${got}`);
    throwsExactly(() => model.forwardBatch([seq], [1]), InvalidArgumentError, `${wanted} for seqs[0] but received one of a cache with ${got}`);
    throwsExactly(() => model.generate(seq, new Float32Array(4096), 3), InvalidArgumentError, `${wanted} for seq but received one of a cache with ${got}`);
    expect(seq.appended(0)).toBe(0);
  });

  test("generate refuses logits that are not whole rows and steps that are not a non-negative integer", () => {
    using cache = model.createCache({ contextTokens: 32 });
    using seq = cache.createSequence();
    const logits = model.forward(seq, [4094, 72, 101]);
    const rows = "a Float32Array of 4096 logits (or of whole rows of 4096, the last of which is used)";
    throwsExactly(() => model.generate(seq, new Float32Array(0), 3), InvalidArgumentError, `Expected ${rows} for logits but received Float32Array(0)`);
    throwsExactly(() => model.generate(seq, new Float32Array(10), 3), InvalidArgumentError, `Expected ${rows} for logits but received Float32Array(10)`);
    throwsExactly(() => model.generate(seq, new Float32Array(4097), 3), InvalidArgumentError, `Expected ${rows} for logits but received Float32Array(4097)`);
    throwsExactly(() => model.generate(seq, Array.from(logits) as never, 3), InvalidArgumentError, `Expected ${rows} for logits but received Array(4096)`);
    for (const [steps, shown] of [[2.5, "2.5 of type number"], [-1, "-1 of type number"], [NaN, "NaN of type number"], ["3", '"3" of type string']])
      throwsExactly(() => model.generate(seq, logits, steps as number), InvalidArgumentError, `Expected non-negative integer for steps but received ${shown}`);
    throwsExactly(() => model.generate(seq, logits, 3, { stop: 5 } as never), InvalidArgumentError, "Expected only temperature, topK, seed, stopToken, onToken in options but received \"stop\"");
    throwsExactly(() => model.generate(seq, logits, 3, { stopToken: 1.5 }), InvalidArgumentError, "Expected an integer for stopToken but received 1.5 of type number");
    throwsExactly(() => model.generate(seq, logits, 3, { onToken: 1 as never }), InvalidArgumentError, "Expected a function for onToken but received 1 of type number");
    throwsExactly(() => model.generate(seq, logits, 3, { seed: NaN }), InvalidArgumentError, "Expected integer between 0 and 4294967295 for seed but received NaN of type number");
    expect(seq.appended(0)).toBe(3);
  });

  test("generate: 0 steps returns nothing and appends nothing; the last of several rows is the one used", () => {
    using cache = model.createCache({ contextTokens: 32 });
    const prompt = [4094, ...model.tokenizer!.encode("The package")];
    using a = cache.createSequence();
    const all = model.forward(a, prompt, { logits: "all" });
    using b = a.fork();
    expect(model.generate(a, all, 0)).toEqual({ tokens: [], stepMs: [], attentionMs: [] });
    expect(a.appended(0)).toBe(prompt.length);
    const fromAll = model.generate(a, all, 4, { stopToken: -1 }).tokens;
    const fromLast = model.generate(b, all.slice(all.length - 4096), 4, { stopToken: -1 }).tokens;
    expect(fromAll).toEqual(fromLast);
    expect(fromAll.length).toBe(4);
    expect(a.appended(0)).toBe(prompt.length + 3);
  });

  test("forward and forwardBatch refuse unknown options, invalid values and a tokens argument that is not an array", () => {
    using cache = model.createCache({ contextTokens: 32 });
    using seq = cache.createSequence();
    const names = "logits, chunk, onProgress, timing, onAttention, queryStatistics";
    throwsExactly(() => model.forward(seq, [1], { chunks: 1 } as never), InvalidArgumentError, `Expected only ${names} in options but received "chunks" (did you mean chunk?)`);
    throwsExactly(() => model.forward(seq, [1], { logits: "All" } as never), InvalidArgumentError, 'Expected one of "last", "all", "none" for logits but received "All" of type string');
    throwsExactly(() => model.forward(seq, [1], null as never), InvalidArgumentError, "Expected an options object for options but received null");
    throwsExactly(() => model.forward(seq, [1], { onProgress: "x" } as never), InvalidArgumentError, 'Expected a function for onProgress but received "x" of type string');
    throwsExactly(() => model.forward(seq, [1], { onAttention: {} } as never), InvalidArgumentError, "Expected a function for onAttention but received object");
    throwsExactly(() => model.forward(seq, [1], { timing: {} } as never), InvalidArgumentError, "Expected an object { attentionMs: number } for timing but received object");
    const stats = new QueryStatistics({ layers: 2, queryHeads: 8, headDim: 32 });
    throwsExactly(
      () => model.forward(seq, [1, 2], { queryStatistics: stats }),
      InvalidArgumentError,
      "Expected a QueryStatistics of this model's shape (layers 4, queryHeads 8, headDim 32) for queryStatistics but received object",
    );
    throwsExactly(() => model.forward(seq, 5 as never), InvalidArgumentError, "Expected an array or typed array of token ids for tokens but received 5 of type number");
    throwsExactly(() => model.forward(seq, "ab" as never), InvalidArgumentError, 'Expected an array or typed array of token ids for tokens but received "ab" of type string');
    throwsExactly(() => model.forward({} as never, [1]), InvalidArgumentError, "Expected a Sequence for seq but received object");
    throwsExactly(() => model.forwardBatch([seq], 5 as never), InvalidArgumentError, "Expected an array or typed array of token ids for tokens but received 5 of type number");
    expect(seq.appended(0)).toBe(0);
    // Valid options, undefined ones included, still run.
    const timing = { attentionMs: 0 };
    const out = model.forward(seq, Int32Array.of(4094, 72), { logits: "all", chunk: 1, timing, onProgress: undefined, queryStatistics: new QueryStatistics({ layers: 4, queryHeads: 8, headDim: 32 }) });
    expect(out.length).toBe(2 * 4096);
    expect(seq.appended(0)).toBe(2);
  });
});

describe("sequences and directories that are not what the model takes", () => {
  test("forwardBatch's seqs and loadTinyLM's dir are checked as lukv errors (were TypeErrors)", () => {
    using cache = model.createCache({ contextTokens: 32 });
    using seq = cache.createSequence();
    throwsInvalid(() => model.forwardBatch(null as never, []), "Expected an array of sequences for seqs but received null");
    throwsInvalid(() => model.forwardBatch([seq, {}] as never, [1, 2]), "Expected a Sequence for seqs[1] but received object");
    throwsInvalid(() => loadTinyLM(5 as never), "Expected the path of a model directory for dir but received 5 of type number");
    expect(seq.appended(0)).toBe(0);
  });

  test("a sequence a failed forward left with layers of different lengths is refused, not extended", () => {
    using cache = model.createCache({ contextTokens: 256 });
    using seq = cache.createSequence();
    using other = cache.createSequence();
    model.forward(seq, [1, 2, 3]);
    // Chunks of 64 until the pool runs out, part-way through the layers of one chunk.
    expect(() => model.forward(seq, new Array(3000).fill(1))).toThrow(expect.objectContaining({ name: "OutOfPagesError" }));
    const appended = Array.from({ length: model.config.layers }, (_, l) => seq.appended(l));
    expect(new Set(appended).size).toBe(2);
    const last = appended.findIndex((n) => n !== appended[0]);
    const message = `Expected a Sequence whose layers hold the same positions for seq but layer 0 holds ${appended[0]} and layer ${last} ${appended[last]} (a forward that failed, out of pages say, stopped between layers): dispose it`;
    throwsInvalid(() => model.forward(seq, [7]), message);
    throwsInvalid(() => model.forwardBatch([other, seq], [7, 7]), message.replace("for seq but", "for seqs[1] but"));
    expect(Array.from({ length: model.config.layers }, (_, l) => seq.appended(l))).toEqual(appended);
    expect(other.appended(0)).toBe(0);
  });
});

describe("createCache options", () => {
  // KVCache's limits on maxTokens (2^40, and 2^31 - 1 pages), over the model's 4 layers x 2 KV heads.
  const most = 2 ** 40 / 8;
  // 4294967280 with pages of 16 tokens: whole pages per head, (2^31 - 1) / 8 of them (rounded down) x 16.
  const mostIn16 = Math.floor((2 ** 31 - 1) / 8) * 16;
  test("contextTokens that is not a positive integer within KVCache's limits is refused, naming contextTokens", () => {
    for (const bad of [-1, 0, 0.1, 1.5, NaN, Infinity, mostIn16 + 1])
      throwsInvalid(() => model.createCache({ contextTokens: bad }), `Expected positive integer at most ${mostIn16} for contextTokens but received ${bad} of type number`);
    throwsInvalid(() => model.createCache({ contextTokens: null as never }), `Expected positive integer at most ${mostIn16} for contextTokens but received null`);
    throwsInvalid(() => model.createCache({ contextTokens: "64" as never }), `Expected positive integer at most ${mostIn16} for contextTokens but received "64" of type string`);
    // Larger pages allow more tokens, up to maxTokens' own limit.
    throwsInvalid(() => model.createCache({ contextTokens: most + 1, pageSize: 1024 }), `Expected positive integer at most ${most} for contextTokens but received ${most + 1} of type number`);
  });

  test("an unknown name lists contextTokens among the accepted ones; contextTokens with maxTokens, or another shape, is refused", () => {
    const names = "layers, kvHeads, queryHeads, headDim, pageSize, maxTokens, dtype, device, threads, simd, prefetch, observationWindow, checkFinite, contextTokens";
    throwsInvalid(() => model.createCache({ contextTokns: 100 } as never), `Expected only ${names} in options but received "contextTokns" (did you mean contextTokens?)`);
    throwsInvalid(() => model.createCache({ contextTokens: 100, maxTokens: 8 }), "Expected contextTokens or maxTokens in options but received both (contextTokens 100, maxTokens 8)");
    throwsInvalid(() => model.createCache({ layers: 99 }), "Expected the model's layers (4) or no value for layers but received 99 of type number");
    throwsInvalid(() => model.createCache({ headDim: 64 }), "Expected the model's headDim (32) or no value for headDim but received 64 of type number");
    throwsInvalid(() => model.createCache(null as never), "Expected an options object for options but received null");
  });

  test("valid options make the cache they describe: contextTokens per head in whole pages", () => {
    const cases: [Parameters<TinyLM["createCache"]>[0], number][] = [
      [{}, 8 * 4096],
      [{ contextTokens: 16 }, 128],
      [{ maxTokens: 64 }, 64],
      // Rounded up to whole pages of each of the 8 (layer, KV head) pairs (it was 8 x 3 = 24 tokens: 2 pages for 8 heads).
      [{ contextTokens: 3, layers: 4, kvHeads: 2, queryHeads: 8, headDim: 32 }, 8 * 16],
      [{ contextTokens: 17 }, 8 * 32],
      [{ contextTokens: 100, pageSize: 64 }, 8 * 128],
    ];
    for (const [options, maxTokens] of cases) {
      using cache = model.createCache(options);
      expect([options, cache.config.maxTokens, cache.config.dtype, cache.config.threads]).toEqual([options, maxTokens, "f32", 1]);
    }
  });

  test("a prompt of contextTokens tokens fits whatever the page size (17 or 100 tokens ran out of pages with pages of 16)", () => {
    for (const [contextTokens, pageSize] of [[17, 16], [100, 16], [1, 16], [100, 64], [31, 7]]) {
      using cache = model.createCache({ contextTokens, pageSize });
      using seq = cache.createSequence();
      model.forward(seq, Array.from({ length: contextTokens }, (_, i) => (i * 7) % 4096));
      expect([contextTokens, pageSize, [0, 1, 2, 3].map((l) => seq.appended(l))]).toEqual([contextTokens, pageSize, [0, 1, 2, 3].map(() => contextTokens)]);
    }
  });
});

describe("token ids, chunk and the batch's length", () => {
  test("are refused as InvalidArgumentError with the messages they always had, before anything is appended", () => {
    using cache = model.createCache({ contextTokens: 32 });
    using seq = cache.createSequence();
    using other = cache.createSequence();
    throwsInvalid(() => model.forward(seq, [4094, 4096]), "Expected token ids in [0, 4096) but tokens[1] is 4096");
    throwsInvalid(() => model.forward(seq, Int32Array.of(72, 101, -1)), "Expected token ids in [0, 4096) but tokens[2] is -1");
    throwsInvalid(() => model.forward(seq, [4094, 1.5]), "Expected token ids in [0, 4096) but tokens[1] is 1.5");
    for (const chunk of [0, -1, 2.5, NaN]) throwsInvalid(() => model.forward(seq, [4094], { chunk }), `Expected a positive integer for chunk but received ${chunk}`);
    throwsInvalid(() => model.forwardBatch([seq, other], [4094]), "Expected one token per sequence (2) but received 1 tokens");
    throwsInvalid(() => model.forwardBatch([seq, other], [4094, NaN]), "Expected token ids in [0, 4096) but tokens[1] is NaN");
    expect([seq.appended(0), other.appended(0)]).toEqual([0, 0]);
  });
});

describe("loading a damaged model folder", () => {
  const original = Object.fromEntries(FILES.map((f) => [f, fs.readFileSync(path.join(shipped, f))]));
  const dirs: string[] = [];
  afterAll(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

  interface Damage {
    config?: (j: Record<string, unknown>) => void;
    tensors?: (t: Map<string, Tensor>) => void;
    tokenizer?: (j: Record<string, unknown>) => void;
    remove?: string;
  }

  /** A copy of models/tiny-lm's model files with `damage` done to them. */
  function folder(damage: Damage): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-model-errors-"));
    dirs.push(dir);
    for (const f of FILES) fs.writeFileSync(path.join(dir, f), original[f]);
    const edit = (f: string, change: (j: Record<string, unknown>) => void) => {
      const j = JSON.parse(original[f].toString("utf8"));
      change(j);
      fs.writeFileSync(path.join(dir, f), JSON.stringify(j));
    };
    if (damage.config) edit("config.json", damage.config);
    if (damage.tokenizer) edit("tokenizer.json", damage.tokenizer);
    if (damage.tensors) {
      const { tensors, metadata } = parseSafetensors(original["model.safetensors"]);
      damage.tensors(tensors);
      fs.writeFileSync(path.join(dir, "model.safetensors"), encodeSafetensors(tensors, "F16", metadata));
    }
    if (damage.remove) fs.rmSync(path.join(dir, damage.remove));
    return dir;
  }

  const reshape = (name: string, shape: number[], keep = (d: Float32Array) => d) => (t: Map<string, Tensor>) => {
    const old = t.get(name)!;
    t.set(name, { ...old, shape, data: keep(old.data) });
  };
  /** Sets values of tensor `name` ([index, value] pairs); the folder stores them as f16 (1e6 becomes Infinity). */
  const poke = (name: string, values: Array<[number, number]>) => (t: Map<string, Tensor>) => {
    for (const [i, v] of values) t.get(name)!.data[i] = v;
  };

  test.each<[string, Damage, string]>([
    ["config.json missing", { remove: "config.json" }, "config.json: missing; a model directory holds config.json, model.safetensors, tokenizer.json"],
    ["model.safetensors missing", { remove: "model.safetensors" }, "model.safetensors: missing; a model directory holds config.json, model.safetensors, tokenizer.json"],
    ["tokenizer.json missing", { remove: "tokenizer.json" }, "tokenizer.json: missing; a model directory holds config.json, model.safetensors, tokenizer.json"],
    ["hidden_size 128", { config: (j) => (j.hidden_size = 128) }, "model.safetensors: tensor model.embed_tokens.weight has shape [4096,256] but config.json (vocab_size 4096, hidden_size 128) gives it [4096,128]"],
    ["num_layers 2.5", { config: (j) => (j.num_layers = 2.5) }, 'config.json: "num_layers" should be a positive integer but is 2.5'],
    ["num_layers 0", { config: (j) => (j.num_layers = 0) }, 'config.json: "num_layers" should be a positive integer but is 0'],
    ["num_layers 3", { config: (j) => (j.num_layers = 3) }, "model.safetensors: tensor model.layers.3.input_layernorm.weight is not one the model reads (config.json's num_layers is 3)"],
    ["num_layers 5", { config: (j) => (j.num_layers = 5) }, "model.safetensors: no tensor model.layers.4.input_layernorm.weight (config.json's num_layers is 5)"],
    ["num_kv_heads 3", { config: (j) => (j.num_kv_heads = 3) }, 'config.json: "num_heads" should be a multiple of "num_kv_heads" (3) but is 8'],
    ["num_kv_heads 4", { config: (j) => (j.num_kv_heads = 4) }, "model.safetensors: tensor model.layers.0.self_attn.k_proj.weight has shape [64,256] but config.json (num_kv_heads 4, head_dim 32, hidden_size 256) gives it [128,256]"],
    ["head_dim 33", { config: (j) => (j.head_dim = 33) }, 'config.json: "head_dim" should be even (rotate-half RoPE) but is 33'],
    ["rms_norm_eps -1", { config: (j) => (j.rms_norm_eps = -1) }, 'config.json: "rms_norm_eps" should be a finite number > 0 but is -1'],
    ["rms_norm_eps 0", { config: (j) => (j.rms_norm_eps = 0) }, 'config.json: "rms_norm_eps" should be a finite number > 0 but is 0'],
    ["rope_theta 0", { config: (j) => (j.rope_theta = 0) }, 'config.json: "rope_theta" should be a finite number > 0 but is 0'],
    ["eos_token_id 4096", { config: (j) => (j.eos_token_id = 4096) }, 'config.json: "eos_token_id" should be an id below "vocab_size" (4096) but is 4096'],
    ["bos_token_id \"x\"", { config: (j) => (j.bos_token_id = "x") }, 'config.json: "bos_token_id" should be a number but is "x"'],
    ["no model.norm.weight", { tensors: (t) => t.delete("model.norm.weight") }, "model.safetensors: no tensor model.norm.weight"],
    ["no layer 2 up_proj", { tensors: (t) => t.delete("model.layers.2.mlp.up_proj.weight") }, "model.safetensors: no tensor model.layers.2.mlp.up_proj.weight (config.json's num_layers is 4)"],
    ["embed [4000,256]", { tensors: reshape("model.embed_tokens.weight", [4000, 256], (d) => d.slice(0, 4000 * 256)) }, "model.safetensors: tensor model.embed_tokens.weight has shape [4000,256] but config.json (vocab_size 4096, hidden_size 256) gives it [4096,256]"],
    ["gate_proj [256,512]", { tensors: reshape("model.layers.0.mlp.gate_proj.weight", [256, 512]) }, "model.safetensors: tensor model.layers.0.mlp.gate_proj.weight has shape [256,512] but config.json (intermediate_size 512, hidden_size 256) gives it [512,256]"],
    ["norm [1,256]", { tensors: reshape("model.norm.weight", [1, 256]) }, "model.safetensors: tensor model.norm.weight has shape [1,256] but config.json (hidden_size 256) gives it [256]"],
    ["an extra tensor", { tensors: (t) => t.set("lm_head.weight", t.get("model.embed_tokens.weight")!) }, "model.safetensors: tensor lm_head.weight is not one the model reads (config.json's num_layers is 4)"],
    ["a NaN weight", { tensors: poke("model.layers.2.mlp.up_proj.weight", [[1234, NaN], [5000, NaN]]) }, "model.safetensors: tensor model.layers.2.mlp.up_proj.weight holds NaN at index 1234 (row 4, column 210); weights must be finite"],
    ["an infinite weight", { tensors: poke("model.embed_tokens.weight", [[4095 * 256 + 255, -Infinity]]) }, "model.safetensors: tensor model.embed_tokens.weight holds -Infinity at index 1048575 (row 4095, column 255); weights must be finite"],
    ["a weight beyond f16's range", { tensors: poke("model.norm.weight", [[7, 1e6]]) }, "model.safetensors: tensor model.norm.weight holds Infinity at index 7; weights must be finite"],
    ["NaN first in the last tensor", { tensors: poke("model.norm.weight", [[0, NaN]]) }, "model.safetensors: tensor model.norm.weight holds NaN at index 0; weights must be finite"],
    ["tokenizer vocab_size 5000", { tokenizer: (j) => (j.vocab_size = 5000) }, "tokenizer.json: vocab_size is 5000 but the file defines 4096 ids (256 bytes, 3838 merges, 2 special tokens)"],
    ["tokenizer bos on a byte", { tokenizer: (j) => (j.special_tokens = { "<|bos|>": 65, "<|eos|>": 4095 }) }, 'tokenizer.json: special token "<|bos|>" has id 65; the 2 special tokens take the ids 4094 to 4095, after the 256 bytes and 3838 merges'],
    [
      "tokenizer smaller than config.json says",
      { tokenizer: (j) => Object.assign(j, { merges: (j.merges as unknown[]).slice(0, 100), vocab: undefined, vocab_size: 358, special_tokens: { "<|bos|>": 356, "<|eos|>": 357 } }) },
      "tokenizer.json: defines 358 ids but config.json's vocab_size is 4096",
    ],
    ["bos and eos swapped", { tokenizer: (j) => (j.special_tokens = { "<|bos|>": 4095, "<|eos|>": 4094 }) }, "tokenizer.json: <|bos|> is id 4095 but config.json's bos_token_id is 4094"],
  ])("%s", (_, damage, message) => {
    const dir = folder(damage);
    throwsExactly(() => loadTinyLM(dir), BadModelError, `${path.join(dir, message.slice(0, message.indexOf(":")))}${message.slice(message.indexOf(":"))}`);
  });

  test("non-finite weights: the safetensors reader returns them as stored, loadTinyLM refuses them", () => {
    const dir = folder({ tensors: poke("model.layers.0.self_attn.q_proj.weight", [[3, Infinity], [9, NaN]]) });
    const read = readSafetensors(path.join(dir, "model.safetensors")).tensors.get("model.layers.0.self_attn.q_proj.weight")!.data;
    expect([read[3], read[9]]).toEqual([Infinity, NaN]);
    const e = caught(() => loadTinyLM(dir));
    expect([e.constructor, e.code, e.message]).toEqual([
      BadModelError,
      "ERR_LUKV_BAD_MODEL",
      `${path.join(dir, "model.safetensors")}: tensor model.layers.0.self_attn.q_proj.weight holds Infinity at index 3 (row 0, column 3); weights must be finite`,
    ]);
  });

  test("several files missing, no directory at all", () => {
    const dir = folder({ remove: "config.json" });
    fs.rmSync(path.join(dir, "tokenizer.json"));
    throwsExactly(() => loadTinyLM(dir), BadModelError, `${path.join(dir, "config.json")}: missing (so is tokenizer.json); a model directory holds config.json, model.safetensors, tokenizer.json`);
    const none = path.join(dir, "nope");
    throwsExactly(() => loadTinyLM(none), BadModelError, `${none}: no such model directory (one holding config.json, model.safetensors, tokenizer.json)`);
  });

  test("readSafetensors: a missing file, a directory or an unreadable file is a BadModelError naming it", () => {
    const dir = folder({});
    const missing = path.join(dir, "nope.safetensors");
    throwsExactly(() => readSafetensors(missing), BadModelError, `${missing}: missing`);
    const unreadable = (file: string, code: string) => {
      const e = caught(() => readSafetensors(file));
      expect(e.constructor).toBe(BadModelError);
      expect(e.message.startsWith(`${file}: cannot be read (${code}`)).toBe(true);
    };
    unreadable(dir, "EISDIR");
    const file = path.join(dir, "model.safetensors");
    expect(readSafetensors(file).tensors.size).toBeGreaterThan(0);
    // root reads a file of mode 000 anyway; anyone else gets EACCES.
    if (process.getuid?.() !== 0) {
      fs.chmodSync(file, 0);
      unreadable(file, "EACCES");
    }
  });

  test("the shipped models load; fromTensors and the constructor refuse a tensor of the wrong shape and a bad config", () => {
    for (const name of ["tiny-lm", "recall-lm"]) {
      const m = loadTinyLM(path.join(__dirname, "..", "models", name));
      expect(m.tokenizer!.vocabSize).toBe(m.config.vocabSize);
    }
    const { tensors } = parseSafetensors(original["model.safetensors"]);
    reshape("model.layers.1.self_attn.o_proj.weight", [256, 8, 32])(tensors);
    throwsInvalid(() => TinyLM.fromTensors(model.config, tensors), "tensor model.layers.1.self_attn.o_proj.weight has shape [256,8,32] but the config needs [256,256]");
    throwsInvalid(() => TinyLM.fromTensors({ ...model.config, rmsNormEps: NaN }, tensors), "config.rmsNormEps should be a finite number > 0 but is NaN");
    tensors.delete("model.layers.1.self_attn.o_proj.weight");
    throwsInvalid(() => TinyLM.fromTensors(model.config, tensors), "the weights have no tensor model.layers.1.self_attn.o_proj.weight");
    throwsInvalid(() => TinyLM.fromTensors(null as never, tensors), "Expected a TinyLMConfig object but received null");
    throwsInvalid(() => new TinyLM(model.config, { ...model.weights, norm: new Float32Array(3) }), "norm: expected 256 values but the weights have 3");
    throwsInvalid(() => new TinyLM(model.config, { ...model.weights, layers: model.weights.layers.slice(1) }), "expected 4 layers of weights but got 3");
  });
});
