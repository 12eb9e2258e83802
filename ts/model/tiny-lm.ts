// The tiny GQA decoder (tools/tiny-lm/model.py) in TypeScript, with lukv doing all attention and
// KV storage: every layer appends its keys/values to a Sequence and attends through it, so a
// compressed sequence changes what the model sees and nothing else.
import { CACHE_OPTION_NAMES, KVCache, KVCacheOptions, Sequence, mostTokens } from "../cache";
import { InvalidArgumentError, invalid, shown } from "../errors";
import { addInPlace, applyRope, matmul, rmsNorm, ropeTables, swiglu } from "./kernels";
import { QueryStatistics } from "../expected-attention";
import { isFloat32Array, isPositiveInteger, knownOptions, nonNegativeInteger, oneOf, positiveInteger } from "../validate";
import { Sampler, SamplingOptions, SAMPLING_OPTION_NAMES } from "./sampling";
import type { Tensor } from "./safetensors";
import type { Tokenizer } from "./tokenizer";

/** Hyperparameters (config.json of models/tiny-lm, in camelCase). */
export interface TinyLMConfig {
  vocabSize: number;
  hidden: number;
  layers: number;
  /** Query heads per layer. */
  heads: number;
  kvHeads: number;
  headDim: number;
  /** Width of the SwiGLU MLP. */
  intermediate: number;
  ropeTheta: number;
  rmsNormEps: number;
  /** Longest context the model was trained on (longer still runs; RoPE extrapolates). */
  maxPosition: number;
  bosTokenId?: number;
  eosTokenId?: number;
}

/** One block's weights, in PyTorch layout ([out, in] for projections). */
export interface LayerWeights {
  inputNorm: Float32Array;
  wq: Float32Array;
  wk: Float32Array;
  wv: Float32Array;
  wo: Float32Array;
  postNorm: Float32Array;
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
}

export interface TinyLMWeights {
  /** [vocab, hidden]; also the output matrix (tied). */
  embed: Float32Array;
  layers: LayerWeights[];
  /** Final RMSNorm gain. */
  norm: Float32Array;
}

/** Options of forward(). Unknown names and invalid values throw InvalidArgumentError. */
export interface ForwardOptions {
  /** Which positions' logits to return: "last", "all" or "none". Default: "last". */
  logits?: (typeof LOGITS_CHOICES)[number];
  /** Tokens per prefill chunk (each layer appends and attends a chunk at a time). Default: 64. */
  chunk?: number;
  /** Called after each chunk with the tokens done so far. */
  onProgress?: (done: number, total: number) => void;
  /** When given, the wall time of lukv's append + attend calls is added to `timing.attentionMs`. */
  timing?: { attentionMs: number };
  /**
   * Called for every chunk and layer with the chunk's post-RoPE queries [T, heads, headDim], keys
   * and values [T, kvHeads, headDim] before they reach the cache (views, valid during the call).
   */
  onAttention?: (layer: number, q: Float32Array, k: Float32Array, v: Float32Array) => void;
  /**
   * When given, every layer's queries are added to it before RoPE is applied (what the
   * "expected-attention" scorer predicts future queries from); its layers, queryHeads and headDim
   * must be the model's. Default: none.
   */
  queryStatistics?: QueryStatistics;
}

const LOGITS_CHOICES = ["last", "all", "none"] as const;
/** The options of createCache(): KVCache's and contextTokens. */
const CREATE_CACHE_OPTION_NAMES = [...CACHE_OPTION_NAMES, "contextTokens"] as const;
const FORWARD_OPTION_NAMES = ["logits", "chunk", "onProgress", "timing", "onAttention", "queryStatistics"] as const;
const GENERATE_OPTION_NAMES = [...SAMPLING_OPTION_NAMES, "stopToken", "onToken"] as const;

/** Options of generate(): the sampling options and these. Unknown names throw InvalidArgumentError. */
export interface GenerateOptions extends SamplingOptions {
  /**
   * Stop after this token (it is included); an integer, and one outside the vocabulary (e.g. -1)
   * never stops. Default: the model's EOS token.
   */
  stopToken?: number;
  /** Called with each new token as it is chosen. */
  onToken?: (token: number, step: number) => void;
}

/** What generate() produced. */
export interface Generation {
  tokens: number[];
  /** Wall time of each decode step (the forward pass of one token, attention included), ms. */
  stepMs: number[];
  /** The part of each step spent in lukv (append + attend over every layer), ms. */
  attentionMs: number[];
}

/** PyTorch parameter names of the exported model (Hugging Face Llama style). */
export function tensorName(layer: number | undefined, name: string): string {
  return layer === undefined ? `model.${name}` : `model.layers.${layer}.${name}`;
}

/** One tensor the model reads: its name, its shape for a config, and the config fields that set the shape. */
export interface TensorSpec {
  name: string;
  shape: number[];
  fields: Array<keyof TinyLMConfig>;
}

/** Every tensor of a model with `config`, in file order, with the shape it must have ([out, in] for projections). */
export function tensorSpecs(config: TinyLMConfig): TensorSpec[] {
  const { vocabSize: V, hidden: d, heads: H, kvHeads: KV, headDim: hd, intermediate: m } = config;
  const specs: TensorSpec[] = [{ name: tensorName(undefined, "embed_tokens.weight"), shape: [V, d], fields: ["vocabSize", "hidden"] }];
  for (let l = 0; l < config.layers; l++) {
    const t = (name: string, shape: number[], fields: Array<keyof TinyLMConfig>) => specs.push({ name: tensorName(l, name), shape, fields });
    t("input_layernorm.weight", [d], ["hidden"]);
    t("self_attn.q_proj.weight", [H * hd, d], ["heads", "headDim", "hidden"]);
    t("self_attn.k_proj.weight", [KV * hd, d], ["kvHeads", "headDim", "hidden"]);
    t("self_attn.v_proj.weight", [KV * hd, d], ["kvHeads", "headDim", "hidden"]);
    t("self_attn.o_proj.weight", [d, H * hd], ["hidden", "heads", "headDim"]);
    t("post_attention_layernorm.weight", [d], ["hidden"]);
    t("mlp.gate_proj.weight", [m, d], ["intermediate", "hidden"]);
    t("mlp.up_proj.weight", [m, d], ["intermediate", "hidden"]);
    t("mlp.down_proj.weight", [d, m], ["hidden", "intermediate"]);
  }
  specs.push({ name: tensorName(undefined, "norm.weight"), shape: [d], fields: ["hidden"] });
  return specs;
}

/** The sizes of a config that must be positive integers. */
const CONFIG_SIZES = ["vocabSize", "hidden", "layers", "heads", "kvHeads", "headDim", "intermediate", "maxPosition"] as const;

/**
 * The first problem of `config` as [field, what it should be], or undefined when it is usable:
 * sizes positive integers, heads a multiple of kvHeads, headDim even, ropeTheta and rmsNormEps
 * positive and finite, bos/eos token ids (when given) ids of the vocabulary. `name` spells the
 * fields the message refers to.
 */
export function configProblem(config: TinyLMConfig, name: (field: keyof TinyLMConfig) => string = (f) => f): [keyof TinyLMConfig, string] | undefined {
  for (const key of CONFIG_SIZES) if (!Number.isSafeInteger(config[key]) || config[key] < 1) return [key, "a positive integer"];
  if (config.heads % config.kvHeads !== 0) return ["heads", `a multiple of ${name("kvHeads")} (${config.kvHeads})`];
  if (config.headDim % 2 !== 0) return ["headDim", "even (rotate-half RoPE)"];
  for (const key of ["ropeTheta", "rmsNormEps"] as const) {
    const v = config[key];
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) return [key, "a finite number > 0"];
  }
  for (const key of ["bosTokenId", "eosTokenId"] as const) {
    const v = config[key];
    if (v !== undefined && (!Number.isInteger(v) || v < 0 || v >= config.vocabSize)) return [key, `an id below ${name("vocabSize")} (${config.vocabSize})`];
  }
  return undefined;
}

function checkConfig(config: TinyLMConfig): void {
  if (config === null || typeof config !== "object") throw new InvalidArgumentError(`Expected a TinyLMConfig object but received ${String(config)}`);
  const problem = configProblem(config);
  if (problem) throw new InvalidArgumentError(`config.${problem[0]} should be ${problem[1]} but is ${String(config[problem[0]])}`);
}

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((x, i) => x === b[i]);

/** A decoder-only transformer whose KV cache is a lukv Sequence. */
export class TinyLM {
  readonly config: TinyLMConfig;
  readonly weights: TinyLMWeights;
  /** The model's tokenizer, when it was loaded with one. */
  readonly tokenizer: Tokenizer | undefined;

  /** @throws InvalidArgumentError when the config is not usable (see configProblem) or a weight has the wrong number of values. */
  constructor(config: TinyLMConfig, weights: TinyLMWeights, tokenizer?: Tokenizer) {
    checkConfig(config);
    const { vocabSize: V, hidden: d, heads: H, kvHeads: KV, headDim: hd, intermediate: m } = config;
    const expect = (what: string, a: Float32Array, n: number) => {
      if (a.length !== n) throw new InvalidArgumentError(`${what}: expected ${n} values but the weights have ${a.length}`);
    };
    expect("embed", weights.embed, V * d);
    expect("norm", weights.norm, d);
    if (weights.layers.length !== config.layers) throw new InvalidArgumentError(`expected ${config.layers} layers of weights but got ${weights.layers.length}`);
    weights.layers.forEach((w, l) => {
      expect(`layer ${l} inputNorm`, w.inputNorm, d);
      expect(`layer ${l} wq`, w.wq, H * hd * d);
      expect(`layer ${l} wk`, w.wk, KV * hd * d);
      expect(`layer ${l} wv`, w.wv, KV * hd * d);
      expect(`layer ${l} wo`, w.wo, d * H * hd);
      expect(`layer ${l} postNorm`, w.postNorm, d);
      expect(`layer ${l} gate`, w.gate, m * d);
      expect(`layer ${l} up`, w.up, m * d);
      expect(`layer ${l} down`, w.down, d * m);
    });
    this.config = Object.freeze({ ...config });
    this.weights = weights;
    this.tokenizer = tokenizer;
  }

  /**
   * Builds the model from tensors named as in model.safetensors ("model.layers.0.self_attn.q_proj.weight", ...).
   * Tensors given with a shape must have the shape of tensorSpecs(config); other tensors are ignored.
   * @throws InvalidArgumentError naming the tensor that is missing or has the wrong shape, or when
   * the config is not usable (see configProblem).
   */
  static fromTensors(config: TinyLMConfig, tensors: Map<string, Tensor | Float32Array>, tokenizer?: Tokenizer): TinyLM {
    checkConfig(config);
    const shapes = new Map(tensorSpecs(config).map((s) => [s.name, s.shape]));
    const get = (name: string): Float32Array => {
      const t = tensors.get(name);
      if (t === undefined) throw new InvalidArgumentError(`the weights have no tensor ${name}`);
      if (t instanceof Float32Array) return t;
      // Equal element counts are not enough: a transposed matrix would be read as garbage.
      const want = shapes.get(name)!;
      if (!sameShape(t.shape, want)) throw new InvalidArgumentError(`tensor ${name} has shape [${t.shape.join(",")}] but the config needs [${want.join(",")}]`);
      return t.data;
    };
    const embed = get(tensorName(undefined, "embed_tokens.weight"));
    const layers: LayerWeights[] = [];
    for (let l = 0; l < config.layers; l++) {
      const w = (n: string) => get(tensorName(l, n));
      layers.push({
        inputNorm: w("input_layernorm.weight"),
        wq: w("self_attn.q_proj.weight"),
        wk: w("self_attn.k_proj.weight"),
        wv: w("self_attn.v_proj.weight"),
        wo: w("self_attn.o_proj.weight"),
        postNorm: w("post_attention_layernorm.weight"),
        gate: w("mlp.gate_proj.weight"),
        up: w("mlp.up_proj.weight"),
        down: w("mlp.down_proj.weight"),
      });
    }
    return new TinyLM(config, { embed, layers, norm: get(tensorName(undefined, "norm.weight")) }, tokenizer);
  }

  /**
   * A KV cache shaped for this model. Defaults: dtype "f32"; maxTokens for `contextTokens`
   * (default 4096) tokens in every head of every layer (each head's share rounded up to whole
   * pages); threads 1, because with 2 KV heads a
   * decode step's attention is too small to pay for waking other threads. Other options as KVCache's.
   * @throws InvalidArgumentError naming the option: an unknown name (the names accepted are
   * KVCache's and contextTokens), a contextTokens that is not a positive integer or whose pool
   * would pass KVCache's maxTokens limits, contextTokens and maxTokens both given, or layers,
   * kvHeads, queryHeads or headDim other than the model's; and as KVCache's constructor.
   */
  createCache(options: Partial<KVCacheOptions> & { contextTokens?: number } = {}): KVCache {
    const { layers, kvHeads, heads, headDim } = this.config;
    if (options === null || typeof options !== "object" || Array.isArray(options)) throw invalid("options", "an options object", options);
    knownOptions("options", options, CREATE_CACHE_OPTION_NAMES);
    const { contextTokens, ...rest } = options;
    const shape: Record<string, number> = { layers, kvHeads, queryHeads: heads, headDim };
    for (const [name, want] of Object.entries(shape)) {
      const v = (rest as Record<string, unknown>)[name];
      if (v !== undefined && v !== want) throw invalid(name, `the model's ${name} (${want}) or no value`, v);
    }
    let maxTokens = rest.maxTokens;
    if (contextTokens !== undefined || maxTokens === undefined) {
      if (contextTokens !== undefined && maxTokens !== undefined)
        throw new InvalidArgumentError(`Expected contextTokens or maxTokens in options but received both (contextTokens ${contextTokens}, maxTokens ${maxTokens})`);
      // Every head holds whole pages, so each head's share is contextTokens rounded up to a multiple
      // of pageSize: layers x kvHeads x contextTokens alone would leave heads a page short.
      const pageSize = isPositiveInteger(rest.pageSize) ? rest.pageSize : 16;
      // KVCache's limit on maxTokens, in whole pages of each (layer, KV head).
      const most = Math.floor(mostTokens(pageSize) / (layers * kvHeads) / pageSize) * pageSize;
      const context = positiveInteger("contextTokens", contextTokens === undefined ? 4096 : contextTokens, most);
      maxTokens = layers * kvHeads * Math.ceil(context / pageSize) * pageSize;
    }
    return new KVCache({
      dtype: "f32",
      threads: 1,
      ...rest,
      maxTokens,
      layers,
      kvHeads,
      queryHeads: heads,
      headDim,
    });
  }

  /** W_O of every layer as recordOracle() takes it: [heads*headDim, hidden] (o_proj.weight transposed). */
  outputProjections(): Float32Array[] {
    const { hidden: d, heads, headDim } = this.config;
    const n = heads * headDim;
    return this.weights.layers.map(({ wo }) => {
      const t = new Float32Array(n * d);
      for (let o = 0; o < d; o++) for (let i = 0; i < n; i++) t[i * d + o] = wo[o * n + i];
      return t;
    });
  }

  /**
   * Runs `tokens` through the model after what `seq` already holds (their positions continue from
   * seq.appended(0)), appending their keys/values to `seq` layer by layer, a chunk at a time.
   * Returns logits: [1, vocab] for "last", [tokens, vocab] for "all", empty for "none".
   * If a layer's append or attention fails (the pool runs out of pages: OutOfPagesError; memory or
   * the device fails: OutOfMemoryError, InternalError) some layers may hold a chunk that others do
   * not: dispose that sequence (forward and forwardBatch refuse it).
   * @throws InvalidArgumentError, before anything is appended, when `seq` is not a Sequence of a
   * cache shaped for this model (layers, kvHeads, queryHeads = heads, headDim) or its layers hold
   * different numbers of positions, `tokens` is not an array or typed array of ids of the vocabulary (integers from 0 to vocabSize - 1; the message
   * names the first id outside it and its index), or an option is unknown or invalid (a chunk that
   * is not a positive integer included).
   */
  forward(seq: Sequence, tokens: ArrayLike<number>, options: ForwardOptions = {}): Float32Array {
    const V = this.config.vocabSize;
    this.#checkSequence("seq", seq);
    if (!isTokenArray(tokens)) throw invalid("tokens", "an array or typed array of token ids", tokens);
    const want = this.#checkForwardOptions(options);
    const chunk = options.chunk ?? 64;
    if (!Number.isInteger(chunk) || chunk < 1) throw new InvalidArgumentError(`Expected a positive integer for chunk but received ${shown(chunk)}`);
    // The checked copy feeds every chunk: onProgress / onAttention may change `tokens` between chunks.
    const ids = this.#checkTokens(tokens);
    const n = ids.length;
    const logits = new Float32Array(want === "all" ? n * V : want === "last" && n > 0 ? V : 0);
    for (let done = 0; done < n; done += chunk) {
      const T = Math.min(chunk, n - done);
      const x = this.#blocks(seq, ids, done, T, options.timing, options.onAttention, options.queryStatistics);
      // Only the rows whose logits are wanted go through the (largest) output matmul.
      if (want === "all") this.#logits(x, 0, T, logits.subarray(done * V, (done + T) * V));
      else if (want === "last" && done + T === n) this.#logits(x, T - 1, 1, logits);
      options.onProgress?.(done + T, n);
    }
    return logits;
  }

  /**
   * One decode step for several sequences of one cache at once: tokens[i] comes after what seqs[i]
   * holds. Each layer's matrix products run over all the rows together, and its keys/values and
   * attention go through one cache.appendBatch and one cache.attendBatch. Returns the logits
   * [vocab] of each sequence (views of one array): what forward(seqs[i], [tokens[i]]) one sequence
   * after another would return, bit for bit on the CPU backend (on CUDA a batch's attention may
   * round differently, see cache.attendBatch). If the pool runs out of pages (OutOfPagesError),
   * some layers may hold the step and others not: dispose those sequences. A sequence of a cache
   * not shaped for this model throws InvalidArgumentError naming it, before anything is appended,
   * as do tokens that are not one id of the vocabulary per sequence.
   */
  forwardBatch(seqs: readonly Sequence[], tokens: ArrayLike<number>): Float32Array[] {
    const V = this.config.vocabSize;
    if (!Array.isArray(seqs)) throw invalid("seqs", "an array of sequences", seqs);
    // Each sequence and id is read once: a getter could hand later reads another one than was checked.
    const list: Sequence[] = [];
    for (let i = 0, count = seqs.length; i < count; i++) {
      const seq: unknown = seqs[i];
      this.#checkSequence(`seqs[${i}]`, seq);
      list.push(seq);
    }
    const n = list.length;
    if (!isTokenArray(tokens)) throw invalid("tokens", "an array or typed array of token ids", tokens);
    const ids = this.#checkTokens(tokens, n);
    if (n === 0) return [];
    const { heads: H, kvHeads: KV, headDim: hd, ropeTheta } = this.config;
    const cache = list[0].cache;
    const qRow = H * hd, kvRow = KV * hd;
    const cos = new Float32Array(n * hd), sin = new Float32Array(n * hd);
    list.forEach((seq, i) => {
      const t = ropeTables(hd, seq.appended(0), 1, ropeTheta);
      cos.set(t.cos, i * hd);
      sin.set(t.sin, i * hd);
    });
    const x = this.#layers(this.#embed(ids, 0, n), n, cos, sin, (l, q, k, v, out) => {
      cache.appendBatch(l, list.map((sequence, i) => ({ sequence, keys: k.subarray(i * kvRow, (i + 1) * kvRow), values: v.subarray(i * kvRow, (i + 1) * kvRow) })));
      cache.attendBatch(l, list.map((sequence, i) => ({ sequence, queries: q.subarray(i * qRow, (i + 1) * qRow), out: out.subarray(i * qRow, (i + 1) * qRow) })));
    });
    const logits = new Float32Array(n * V);
    this.#logits(x, 0, n, logits);
    return Array.from({ length: n }, (_, i) => logits.subarray(i * V, (i + 1) * V));
  }

  /** Refuses anything but a Sequence of a cache with this model's shape (another shape would be read as garbage). */
  #checkSequence(name: string, seq: unknown): asserts seq is Sequence {
    if (!(seq instanceof Sequence)) throw invalid(name, "a Sequence", seq);
    const { layers, kvHeads, heads, headDim } = this.config;
    const c = seq.cache.config;
    if (c.layers !== layers || c.kvHeads !== kvHeads || c.queryHeads !== heads || c.headDim !== headDim)
      throw new InvalidArgumentError(
        `Expected a Sequence of a cache shaped for this model (layers ${layers}, kvHeads ${kvHeads}, queryHeads ${heads}, headDim ${headDim}) for ${name} ` +
          `but received one of a cache with layers ${c.layers}, kvHeads ${c.kvHeads}, queryHeads ${c.queryHeads}, headDim ${c.headDim}`,
      );
    // A forward that failed (out of pages, memory or a device failure) may have stopped between
    // layers; positions would no longer line up.
    const first = seq.appended(0);
    for (let l = 1; l < layers; l++) {
      const here = seq.appended(l);
      if (here !== first)
        throw new InvalidArgumentError(
          `Expected a Sequence whose layers hold the same positions for ${name} but layer 0 holds ${first} and layer ${l} ${here} ` +
            "(a forward that failed, out of pages say, stopped between layers): dispose it",
        );
    }
  }

  /** Checks forward()'s options (chunk apart); returns which logits are wanted. */
  #checkForwardOptions(options: ForwardOptions): (typeof LOGITS_CHOICES)[number] {
    if (options === null || typeof options !== "object") throw invalid("options", "an options object", options);
    knownOptions("options", options, FORWARD_OPTION_NAMES);
    const want = oneOf("logits", options.logits ?? "last", LOGITS_CHOICES);
    for (const key of ["onProgress", "onAttention"] as const)
      if (options[key] !== undefined && typeof options[key] !== "function") throw invalid(key, "a function", options[key]);
    const { timing, queryStatistics: stats } = options;
    if (timing !== undefined && (timing === null || typeof timing !== "object" || typeof timing.attentionMs !== "number"))
      throw invalid("timing", "an object { attentionMs: number }", timing);
    if (stats !== undefined) {
      const { layers, heads, headDim } = this.config;
      if (!(stats instanceof QueryStatistics) || stats.layers !== layers || stats.queryHeads !== heads || stats.headDim !== headDim)
        throw invalid("queryStatistics", `a QueryStatistics of this model's shape (layers ${layers}, queryHeads ${heads}, headDim ${headDim})`, stats);
    }
    return want;
  }

  /** `tokens` (`count` of them when given), each read once, checked and copied: the model reads the copy. */
  #checkTokens(tokens: ArrayLike<number>, count?: number): Float64Array {
    const V = this.config.vocabSize;
    const n = tokens.length;
    if (count !== undefined && n !== count) throw new InvalidArgumentError(`Expected one token per sequence (${count}) but received ${n} tokens`);
    const ids = new Float64Array(n); // exact for any id below a safe-integer vocabSize
    for (let i = 0; i < n; i++) {
      const id: unknown = tokens[i];
      // shown() names the type of a non-number (a BigInt64Array's 1n, a "1" string).
      if (typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= V)
        throw new InvalidArgumentError(`Expected token ids in [0, ${V}) but tokens[${i}] is ${shown(id)}`);
      ids[i] = id;
    }
    return ids;
  }

  /** The embeddings of tokens[from .. from+T), [T, hidden]. */
  #embed(tokens: ArrayLike<number>, from: number, T: number): Float32Array {
    const d = this.config.hidden, { embed } = this.weights;
    const x = new Float32Array(T * d);
    for (let t = 0; t < T; t++) x.set(embed.subarray(tokens[from + t] * d, (tokens[from + t] + 1) * d), t * d);
    return x;
  }

  /** The residual stream after the last block for tokens[from .. from+T) of one sequence, [T, hidden]. */
  #blocks(seq: Sequence, tokens: ArrayLike<number>, from: number, T: number, timing?: { attentionMs: number }, onAttention?: ForwardOptions["onAttention"], stats?: QueryStatistics): Float32Array {
    const { cos, sin } = ropeTables(this.config.headDim, seq.appended(0), T, this.config.ropeTheta);
    return this.#layers(this.#embed(tokens, from, T), T, cos, sin, (l, q, k, v, out) => {
      const t0 = timing ? performance.now() : 0;
      seq.append(l, k, v);
      seq.attend(l, q, { out });
      if (timing) timing.attentionMs += performance.now() - t0;
    }, onAttention, stats);
  }

  /**
   * Runs the blocks over x [T, hidden] (in place; returned), row t at the RoPE angles of row t of
   * cos / sin [T, headDim]. `attention(l, q, k, v, out)` stores layer l's keys/values [T, kvHeads,
   * headDim] and writes the attention of the queries [T, heads, headDim] into out.
   */
  #layers(
    x: Float32Array,
    T: number,
    cos: Float32Array,
    sin: Float32Array,
    attention: (l: number, q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array) => void,
    onAttention?: ForwardOptions["onAttention"],
    stats?: QueryStatistics,
  ): Float32Array {
    const { hidden: d, heads: H, kvHeads: KV, headDim: hd, intermediate: m, rmsNormEps: eps } = this.config;
    const h = new Float32Array(T * d);
    const q = new Float32Array(T * H * hd), k = new Float32Array(T * KV * hd), v = new Float32Array(T * KV * hd);
    const att = new Float32Array(T * H * hd), y = new Float32Array(T * d);
    const gate = new Float32Array(T * m), up = new Float32Array(T * m);
    this.weights.layers.forEach((w, l) => {
      // Attention: the new keys/values go into the cache, and the queries attend over whatever it
      // kept (causal by original position, GQA groups resolved by lukv).
      rmsNorm(x, T, w.inputNorm, eps, h);
      matmul(h, T, d, w.wq, H * hd, q);
      matmul(h, T, d, w.wk, KV * hd, k);
      matmul(h, T, d, w.wv, KV * hd, v);
      stats?.add(l, q);
      applyRope(q, T, H, hd, cos, sin);
      applyRope(k, T, KV, hd, cos, sin);
      onAttention?.(l, q, k, v);
      attention(l, q, k, v, att);
      matmul(att, T, H * hd, w.wo, d, y);
      addInPlace(x, y, T * d);
      // MLP (SwiGLU).
      rmsNorm(x, T, w.postNorm, eps, h);
      matmul(h, T, d, w.gate, m, gate);
      matmul(h, T, d, w.up, m, up);
      swiglu(gate, up, T * m);
      matmul(gate, T, m, w.down, d, y);
      addInPlace(x, y, T * d);
    });
    return x;
  }

  /** logits of rows [row, row+count) of x: RMSNorm, then the tied embedding as output matrix. */
  #logits(x: Float32Array, row: number, count: number, out: Float32Array): void {
    const { hidden: d, vocabSize: V, rmsNormEps: eps } = this.config;
    const h = rmsNorm(x.subarray(row * d, (row + count) * d), count, this.weights.norm, eps, new Float32Array(count * d));
    matmul(h, count, d, this.weights.embed, V, out);
  }

  /**
   * Decodes up to `steps` tokens one at a time. `logits` are those of the sequence's last position:
   * what forward() returned for the prompt, a Float32Array of vocabSize values, or of several
   * whole rows (logits: "all"), of which the last is used. Each chosen token but the last is fed
   * back through forward(), so afterwards the sequence holds the prompt and tokens[0 .. length-2].
   * `steps` 0 returns no tokens and leaves the sequence as it was.
   * @throws InvalidArgumentError, before anything is appended, when `seq` is not a Sequence of a
   * cache shaped for this model, `logits` is not such a Float32Array, `steps` is not a
   * non-negative integer, or an option is unknown or invalid (see GenerateOptions, Sampler).
   */
  generate(seq: Sequence, logits: Float32Array, steps: number, options: GenerateOptions = {}): Generation {
    const V = this.config.vocabSize;
    this.#checkSequence("seq", seq);
    if (!isFloat32Array(logits) || logits.length === 0 || logits.length % V !== 0)
      throw invalid("logits", `a Float32Array of ${V} logits (or of whole rows of ${V}, the last of which is used)`, logits);
    nonNegativeInteger("steps", steps);
    if (options === null || typeof options !== "object") throw invalid("options", "an options object", options);
    knownOptions("options", options, GENERATE_OPTION_NAMES);
    const { temperature, topK, seed, stopToken, onToken } = options;
    if (stopToken !== undefined && !Number.isSafeInteger(stopToken)) throw invalid("stopToken", "an integer", stopToken);
    if (onToken !== undefined && typeof onToken !== "function") throw invalid("onToken", "a function", onToken);
    const sampler = new Sampler({ temperature, topK, seed });
    const stop = stopToken ?? this.config.eosTokenId;
    const tokens: number[] = [];
    const stepMs: number[] = [];
    const attentionMs: number[] = [];
    if (steps === 0) return { tokens, stepMs, attentionMs };
    let next = sampler.next(logits, logits.length - V, V);
    for (let s = 0; s < steps; s++) {
      tokens.push(next);
      onToken?.(next, s);
      if (next === stop || s + 1 === steps) break;
      const timing = { attentionMs: 0 };
      const t0 = performance.now();
      const row = this.forward(seq, [next], { timing });
      stepMs.push(performance.now() - t0);
      attentionMs.push(timing.attentionMs);
      next = sampler.next(row);
    }
    return { tokens, stepMs, attentionMs };
  }
}

/** An array or typed array (a string or a number is not a list of token ids). */
function isTokenArray(tokens: unknown): tokens is ArrayLike<number> {
  return Array.isArray(tokens) || (ArrayBuffer.isView(tokens) && !(tokens instanceof DataView));
}
