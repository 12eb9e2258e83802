// The TypeScript forward pass on lukv, with random weights drawn here: chunked prefill, one token at
// a time and a plain float64 reference agree; after compress the model sees exactly the kept tokens
// at their original positions; safetensors, tokenizer and sampling pieces on their own.
import * as path from "path";
import { TinyLM, TinyLMConfig, Tokenizer, preSplit, parseSafetensors, Sampler, argmax, tensorName } from "../ts/model";
import { rng, testSeed, randn } from "./helpers/random";
import { relativeError } from "./helpers/reference";

const seed = testSeed("tiny-lm-random");

const config: TinyLMConfig = {
  vocabSize: 96,
  hidden: 48,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  headDim: 12,
  intermediate: 80,
  ropeTheta: 10000,
  rmsNormEps: 1e-5,
  maxPosition: 256,
};

/** Weights scaled so that attention is far from uniform and every part of the block matters. */
function randomModel(r: () => number, c: TinyLMConfig = config): TinyLM {
  const { vocabSize: V, hidden: d, heads: H, kvHeads: KV, headDim: hd, intermediate: m } = c;
  const t = new Map<string, Float32Array>();
  const gain = (n: number) => randn(r, n, 0.2).map((v) => 1 + v);
  t.set(tensorName(undefined, "embed_tokens.weight"), randn(r, V * d));
  t.set(tensorName(undefined, "norm.weight"), gain(d));
  for (let l = 0; l < c.layers; l++) {
    const s = 2 / Math.sqrt(d);
    t.set(tensorName(l, "input_layernorm.weight"), gain(d));
    t.set(tensorName(l, "self_attn.q_proj.weight"), randn(r, H * hd * d, s));
    t.set(tensorName(l, "self_attn.k_proj.weight"), randn(r, KV * hd * d, s));
    t.set(tensorName(l, "self_attn.v_proj.weight"), randn(r, KV * hd * d, 1 / Math.sqrt(d)));
    t.set(tensorName(l, "self_attn.o_proj.weight"), randn(r, d * H * hd, 1 / Math.sqrt(H * hd)));
    t.set(tensorName(l, "post_attention_layernorm.weight"), gain(d));
    t.set(tensorName(l, "mlp.gate_proj.weight"), randn(r, m * d, 1 / Math.sqrt(d)));
    t.set(tensorName(l, "mlp.up_proj.weight"), randn(r, m * d, 1 / Math.sqrt(d)));
    t.set(tensorName(l, "mlp.down_proj.weight"), randn(r, d * m, 1 / Math.sqrt(m)));
  }
  return TinyLM.fromTensors(c, t);
}

/** Who query position i of (layer, KV head) may attend to. */
type Visible = (layer: number, kvHead: number, i: number, j: number) => boolean;

/** The model in float64 over the whole sequence at once, written from model.py for clarity. */
function referenceForward(model: TinyLM, tokens: number[], visible: Visible = (_l, _h, i, j) => j <= i): number[][] {
  const { vocabSize: V, hidden: d, heads: H, kvHeads: KV, headDim: hd, intermediate: m, rmsNormEps: eps, ropeTheta } = model.config;
  const w = model.weights;
  const T = tokens.length;
  const linear = (x: number[], W: Float32Array, out: number) =>
    Array.from({ length: out }, (_, o) => x.reduce((s, v, i) => s + v * W[o * x.length + i], 0));
  const norm = (x: number[], g: Float32Array) => {
    const r = 1 / Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length + eps);
    return x.map((v, i) => v * r * g[i]);
  };
  const rope = (v: number[], p: number) => {
    const half = hd / 2;
    return v.map((_, j) => {
      const f = p / ropeTheta ** ((2 * (j % half)) / hd);
      const rot = j < half ? -v[j + half] : v[j - half];
      return v[j] * Math.cos(f) + rot * Math.sin(f);
    });
  };
  let x = tokens.map((t) => Array.from(w.embed.subarray(t * d, (t + 1) * d)));
  w.layers.forEach((lw, l) => {
    const h = x.map((row) => norm(row, lw.inputNorm));
    const q = h.map((row) => linear(row, lw.wq, H * hd));
    const k = h.map((row) => linear(row, lw.wk, KV * hd));
    const v = h.map((row) => linear(row, lw.wv, KV * hd));
    const head = (a: number[], n: number) => a.slice(n * hd, (n + 1) * hd);
    const qr = q.map((row, i) => Array.from({ length: H }, (_, n) => rope(head(row, n), i)));
    const kr = k.map((row, i) => Array.from({ length: KV }, (_, n) => rope(head(row, n), i)));
    const att = qr.map((qi, i) =>
      qi.flatMap((qv, n) => {
        const g = Math.floor(n / (H / KV));
        const js = Array.from({ length: T }, (_, j) => j).filter((j) => visible(l, g, i, j));
        const s = js.map((j) => qv.reduce((a, b, e) => a + b * kr[j][g][e], 0) / Math.sqrt(hd));
        const mx = Math.max(...s);
        const e = s.map((z) => Math.exp(z - mx));
        const sum = e.reduce((a, b) => a + b, 0);
        return Array.from({ length: hd }, (_, c) => js.reduce((a, j, n2) => a + (e[n2] / sum) * v[j][g * hd + c], 0));
      }),
    );
    x = x.map((row, i) => {
      const o = linear(att[i], lw.wo, d);
      const hh = row.map((val, c) => val + o[c]);
      const n2 = norm(hh, lw.postNorm);
      const gate = linear(n2, lw.gate, m), up = linear(n2, lw.up, m);
      const act = gate.map((z, c) => (z / (1 + Math.exp(-z))) * up[c]);
      const down = linear(act, lw.down, d);
      return hh.map((val, c) => val + down[c]);
    });
  });
  return x.map((row) => linear(norm(row, w.norm), w.embed, V));
}

function randomTokens(r: () => number, n: number, vocab = config.vocabSize): number[] {
  return Array.from({ length: n }, () => Math.floor(r() * vocab));
}

describe("forward pass on lukv (random weights)", () => {
  test("prefill in chunks, one token at a time and a plain float64 reference give the same logits", () => {
    const r = rng(seed);
    const model = randomModel(r);
    const tokens = randomTokens(r, 45);
    const expected = referenceForward(model, tokens);
    for (const chunk of [1, 8, 64]) {
      using cache = model.createCache({ pageSize: 8, contextTokens: 128 });
      using seq = cache.createSequence();
      const got = model.forward(seq, tokens, { logits: "all", chunk });
      expect(relativeError(got, expected.flat())).toBeLessThan(2e-5);
      expect(seq.appended(0)).toBe(tokens.length);
      expect(Array.from(seq.lengths())).toEqual(new Array(config.layers * config.kvHeads).fill(tokens.length));
    }
  });

  test("logits 'last' is the last row of 'all', and 'none' returns nothing but fills the cache", () => {
    const r = rng(seed + 1);
    const model = randomModel(r);
    const tokens = randomTokens(r, 20);
    using cache = model.createCache({ contextTokens: 128 });
    const a = cache.createSequence(), b = cache.createSequence(), c = cache.createSequence();
    const all = model.forward(a, tokens, { logits: "all", chunk: 6 });
    const last = model.forward(b, tokens, { chunk: 6 });
    expect(Array.from(last)).toEqual(Array.from(all.subarray(19 * config.vocabSize)));
    expect(model.forward(c, tokens, { logits: "none", chunk: 6 }).length).toBe(0);
    expect(Array.from(c.keys(1, 1))).toEqual(Array.from(a.keys(1, 1)));
  });

  test("after compress, the model attends to exactly the kept tokens at their original positions", () => {
    const r = rng(seed + 2);
    const model = randomModel(r);
    const context = randomTokens(r, 80), continuation = randomTokens(r, 12);
    using cache = model.createCache({ pageSize: 8, contextTokens: 256, observationWindow: 16 });
    using seq = cache.createSequence();
    model.forward(seq, context, { logits: "none", chunk: 32 });
    const report = seq.compress({ ratio: 0.6, scorer: "snapkv", allocation: "adakv", window: 16, sink: 2 });
    expect(report.total).toBeLessThan(context.length * config.layers * config.kvHeads * 0.5);
    const kept = Array.from({ length: config.layers }, (_, l) =>
      Array.from({ length: config.kvHeads }, (_, h) => new Set(seq.positions(l, h))),
    );
    // Heads differ in what they kept, or the check below would not tell head-wise masks apart.
    expect(kept.flat().some((s) => s.size !== kept[0][0].size || [...s].some((p) => !kept[0][0].has(p)))).toBe(true);
    const got = model.forward(seq, continuation, { logits: "all", chunk: 5 });
    const n = context.length;
    const expected = referenceForward(model, [...context, ...continuation], (l, h, i, j) => j <= i && (i < n || j >= n || kept[l][h].has(j)));
    expect(relativeError(got, expected.slice(n).flat())).toBeLessThan(2e-5);
    // And it is not the full-cache answer.
    const full = referenceForward(model, [...context, ...continuation]).slice(n).flat();
    expect(relativeError(got, full)).toBeGreaterThan(1e-3);
  });

  test("greedy decoding one token at a time equals teacher forcing the same tokens in one chunk", () => {
    const r = rng(seed + 3);
    const model = randomModel(r);
    const prompt = randomTokens(r, 30);
    using cache = model.createCache({ contextTokens: 128 });
    using seq = cache.createSequence();
    const logits = model.forward(seq, prompt, { chunk: 16 });
    const twin = seq.fork();
    const gen = model.generate(seq, logits, 10);
    expect(gen.tokens.length).toBe(10);
    expect(gen.stepMs.length).toBe(9);
    expect(gen.attentionMs.length).toBe(9);
    gen.attentionMs.forEach((a, i) => expect(a).toBeLessThanOrEqual(gen.stepMs[i]));
    expect(seq.appended(0)).toBe(prompt.length + 9);
    const forced = model.forward(twin, gen.tokens, { logits: "all" });
    for (let s = 0; s + 1 < gen.tokens.length; s++) expect(argmax(forced, s * config.vocabSize, config.vocabSize)).toBe(gen.tokens[s + 1]);
    expect(argmax(logits)).toBe(gen.tokens[0]);
    twin.dispose();
  });

  test("forwardBatch: one decode step for several sequences gives each the logits forward gives it alone", () => {
    const r = rng(seed + 6);
    const model = randomModel(r);
    const lengths = [1, 7, 30, 16, 45];
    const prompts = lengths.map((n) => randomTokens(r, n));
    using batched = model.createCache({ pageSize: 8, contextTokens: 512 });
    using alone = model.createCache({ pageSize: 8, contextTokens: 512 });
    const a = prompts.map(() => batched.createSequence()), b = prompts.map(() => alone.createSequence());
    prompts.forEach((p, i) => {
      model.forward(a[i], p, { logits: "none" });
      model.forward(b[i], p, { logits: "none" });
    });
    // One sequence is compressed first, so the batch mixes heads of different lengths.
    a[4].compress({ ratio: 0.5, window: 4 });
    b[4].compress({ ratio: 0.5, window: 4 });
    for (let step = 0; step < 6; step++) {
      const next = randomTokens(r, prompts.length);
      const got = model.forwardBatch(a, next);
      expect(got.length).toBe(prompts.length);
      b.forEach((seq, i) => {
        const want = model.forward(seq, [next[i]]);
        expect(Array.from(got[i])).toEqual(Array.from(want)); // bit for bit on the CPU backend
        expect(a[i].appended(0)).toBe(seq.appended(0));
      });
    }
    expect(model.forwardBatch([], [])).toEqual([]);
    expect(() => model.forwardBatch(a, [1, 2])).toThrow("Expected one token per sequence (5) but received 2 tokens");
    expect(() => model.forwardBatch([a[0]], [config.vocabSize])).toThrow(`Expected token ids in [0, ${config.vocabSize}) but tokens[0] is ${config.vocabSize}`);
    expect(() => model.forwardBatch([a[0], a[0]], [1, 2])).toThrow(/a sequence not already in the batch/);
    expect(() => model.forwardBatch([a[0], {} as never], [1, 2])).toThrow("Expected a Sequence for seqs[1]");
    expect(() => model.forwardBatch([a[0], b[1]], [1, 2])).toThrow(/a Sequence of this cache/);
    // Nothing was appended by the refused calls.
    expect(a[0].appended(0)).toBe(b[0].appended(0));
  });

  test("a fork taken before compress keeps the full cache; the compressed one holds fewer pages", () => {
    const r = rng(seed + 4);
    const model = randomModel(r);
    using cache = model.createCache({ pageSize: 4, contextTokens: 256 });
    using seq = cache.createSequence();
    model.forward(seq, randomTokens(r, 100), { logits: "none" });
    const before = cache.usage().bytesUsed;
    const full = seq.fork();
    expect(cache.usage().bytesUsed).toBe(before);
    seq.compress({ ratio: 0.8, window: 8 });
    expect(Array.from(full.lengths())).toEqual(new Array(4).fill(100));
    full.dispose();
    expect(cache.usage().bytesUsed).toBeLessThan(before * 0.35);
  });

  test("outputProjections() is o_proj.weight transposed, [heads*headDim, hidden]", () => {
    const r = rng(seed + 5);
    const model = randomModel(r);
    const wo = model.outputProjections();
    const n = config.heads * config.headDim, d = config.hidden;
    expect(wo.length).toBe(config.layers);
    for (let k = 0; k < 20; k++) {
      const l = Math.floor(r() * config.layers), i = Math.floor(r() * n), o = Math.floor(r() * d);
      expect(wo[l][i * d + o]).toBe(model.weights.layers[l].wo[o * n + i]);
    }
  });

  test("wrong weights and bad tokens are refused with a message that names them", () => {
    const r = rng(seed + 6);
    const model = randomModel(r);
    expect(() => new TinyLM({ ...config, hidden: 40 }, model.weights)).toThrow(/embed: expected 3840 values but the weights have 4608/);
    expect(() => TinyLM.fromTensors(config, new Map())).toThrow(/no tensor model.embed_tokens.weight/);
    using cache = model.createCache({ contextTokens: 16 });
    using seq = cache.createSequence();
    expect(() => model.forward(seq, [1, 96])).toThrow(/tokens\[1\] is 96/);
    expect(seq.appended(0)).toBe(0);
  });
});

describe("safetensors", () => {
  function file(entries: { name: string; dtype: string; shape: number[]; bytes: Uint8Array }[], extra = 0): Uint8Array {
    const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
    let off = 0;
    for (const e of entries) {
      header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + e.bytes.length] };
      off += e.bytes.length;
    }
    let json = JSON.stringify(header);
    while (json.length % 8) json += " ";
    const out = new Uint8Array(8 + json.length + off + extra);
    new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
    out.set(new TextEncoder().encode(json), 8);
    let at = 8 + json.length;
    for (const e of entries) {
      out.set(e.bytes, at);
      at += e.bytes.length;
    }
    return out;
  }
  const le16 = (words: number[]) => new Uint8Array(Uint16Array.from(words).buffer);

  test("reads f16, bf16 and f32 tensors and the metadata", () => {
    const f32 = new Uint8Array(Float32Array.from([1.5, -2.25, 3e-8]).buffer);
    const st = parseSafetensors(
      file([
        { name: "a", dtype: "F16", shape: [2, 3], bytes: le16([0x3c00, 0xc000, 0x0001, 0x7bff, 0x8000, 0x3555]) },
        { name: "b", dtype: "BF16", shape: [2], bytes: le16([0x3f80, 0xc0a0]) },
        { name: "c", dtype: "F32", shape: [3], bytes: f32 },
      ]),
    );
    expect(st.metadata).toEqual({ format: "pt" });
    expect(st.tensors.get("a")!.shape).toEqual([2, 3]);
    expect(Array.from(st.tensors.get("a")!.data)).toEqual([1, -2, 2 ** -24, 65504, -0, Math.fround(0.333251953125)]);
    expect(Array.from(st.tensors.get("b")!.data)).toEqual([1, -5]);
    expect(Array.from(st.tensors.get("c")!.data)).toEqual(Array.from(Float32Array.from([1.5, -2.25, 3e-8])));
  });

  test("malformed files get an error naming the problem", () => {
    expect(() => parseSafetensors(new Uint8Array(4))).toThrow(/shorter than the 8-byte header length/);
    const bad = file([{ name: "a", dtype: "F16", shape: [3], bytes: le16([1, 2]) }]);
    expect(() => parseSafetensors(bad)).toThrow(/tensor a \(F16 \[3\]\) has data offsets \[0, 4\] that do not fit/);
    expect(() => parseSafetensors(file([{ name: "i", dtype: "I64", shape: [1], bytes: new Uint8Array(8) }]))).toThrow(/dtype I64/);
    const long = file([]);
    new DataView(long.buffer).setBigUint64(0, 1000n, true);
    expect(() => parseSafetensors(long)).toThrow(/runs past the end/);
  });
});

describe("tokenizer", () => {
  // bytes: a=97 b=98 c=99, space=32; merges: (a,b)->256, (256,c)->257, (32,97)->258, (98,98)->259
  const tiny = new Tokenizer({
    format: "lukv-bpe-1",
    vocab_size: 261,
    special_tokens: { "<|bos|>": 260 },
    merges: [[97, 98], [256, 99], [32, 97], [98, 98]],
  });

  test("pre-split follows the byte-class rules", () => {
    const split = (s: string) => {
      const b = new TextEncoder().encode(s);
      return preSplit(b).map(([x, y]) => new TextDecoder().decode(b.subarray(x, y)));
    };
    expect(split("Hello, world!")).toEqual(["Hello", ",", " world", "!"]);
    expect(split("x = 123.45")).toEqual(["x", " =", " ", "1", "2", "3", ".", "4", "5"]);
    expect(split("a  b\n\n  c   ")).toEqual(["a", " ", " b", "\n\n ", " c", "   "]);
    expect(split("\t x")).toEqual(["\t", " x"]);
    expect(split("café—ok, ok")).toEqual(["café—ok", ",", " ok"]); // bytes >= 0x80 are letters
  });

  test("merges by lowest rank, all occurrences left to right without overlap", () => {
    expect(tiny.encode("abc")).toEqual([257]);
    expect(tiny.encode("abbb")).toEqual([256, 259]); // (a,b) ranks before (b,b)
    expect(tiny.encode("bbb")).toEqual([259, 98]);
    expect(tiny.encode(" abc")).toEqual([32, 257]); // (a,b) is rank 0, so (32,97) never gets its turn
  });

  test("decode inverts encode, special tokens decode to nothing", () => {
    expect(tiny.decode([257, 260, 259])).toBe("abcbb");
  });

  test("the shipped tokenizer round-trips random text", () => {
    const tok = Tokenizer.load(path.join(__dirname, "..", "models", "tiny-lm", "tokenizer.json"));
    expect(tok.vocabSize).toBe(4096);
    expect(tok.bos).toBe(4094);
    const r = rng(seed + 7);
    const alphabet = ["a", "b", "Z", " ", "  ", "\n", "\t", "7", ".", ",", "é", "—", "日", "🙂", "ing", " the", "\r\n"];
    for (let k = 0; k < 50; k++) {
      const s = Array.from({ length: 1 + Math.floor(r() * 40) }, () => alphabet[Math.floor(r() * alphabet.length)]).join("");
      const ids = tok.encode(s);
      expect(tok.decode(ids)).toBe(s);
      expect(ids.every((i) => i >= 0 && i < 4094)).toBe(true);
    }
  });
});

describe("sampling", () => {
  const logits = Float32Array.from([0.1, 2.0, -1, 1.5, 2.0, 0.3]);

  test("greedy is the first argmax; top-k 1 is greedy at any temperature", () => {
    expect(new Sampler().next(logits)).toBe(1);
    const s = new Sampler({ temperature: 5, topK: 1, seed: 3 });
    for (let i = 0; i < 20; i++) expect(s.next(logits)).toBe(1);
  });

  test("the same seed draws the same tokens; frequencies follow the softmax", () => {
    const draw = (seedValue: number) => {
      const s = new Sampler({ temperature: 1, seed: seedValue });
      return Array.from({ length: 4000 }, () => s.next(logits));
    };
    const a = draw(seed), b = draw(seed);
    expect(a).toEqual(b);
    const z = Array.from(logits).map(Math.exp);
    const total = z.reduce((x, y) => x + y, 0);
    z.forEach((v, i) => {
      const freq = a.filter((t) => t === i).length / a.length;
      // 4000 draws: the standard error is at most 0.008.
      expect(Math.abs(freq - v / total)).toBeLessThan(0.04);
    });
  });

  test("top-k keeps only the k most likely tokens", () => {
    const s = new Sampler({ temperature: 2, topK: 3, seed });
    const seen = new Set(Array.from({ length: 500 }, () => s.next(logits)));
    expect([...seen].sort()).toEqual([1, 3, 4]);
  });
});
