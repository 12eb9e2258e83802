// KVCache and Sequence: the typed surface over the native paged per-head cache.
import * as os from "os";
import { BackendUnavailableError, DisposedError, InvalidArgumentError, LukvError, OutOfPagesError, invalid, describe } from "./errors";
import { DType, bf16BitsToF32, f16BitsToF32 } from "./dtype";
import { native, NativeCache, resolveDevice } from "./native";
import { CompressOptions, CompressReport, ScoreOptions, nativeCompressOptions, nativeScoreOptions } from "./compress";
import {
  integerInRange,
  isFloat32Array,
  isUint16Array,
  nonNegativeInteger,
  oneOf,
  positiveInteger,
} from "./validate";

/** Where the cache lives. */
export type Device = "auto" | "cpu" | "cuda";
/** Which CPU kernel table to use. */
export type SimdLevel = "auto" | "avx512" | "avx2" | "neon" | "generic";

export interface KVCacheOptions {
  /** Number of transformer layers. Required. */
  layers: number;
  /** Key/value heads per layer. Required. */
  kvHeads: number;
  /** Query heads per layer, a multiple of kvHeads (GQA groups are consecutive). Default: kvHeads. */
  queryHeads?: number;
  /** Dimension of one head. Required. */
  headDim: number;
  /** Tokens per page; each page holds one (layer, KV head). Default: 16. */
  pageSize?: number;
  /** Pool capacity in tokens of one KV head; pages = ceil(maxTokens / pageSize). Default: layers * kvHeads * 4096. */
  maxTokens?: number;
  /** Storage type of keys and values. Default: "f16". */
  dtype?: DType;
  /** "cpu", "cuda", or "auto" (CUDA when usable, else CPU). Default: "auto". */
  device?: Device;
  /**
   * CPU threads for the kernels (the calling thread is one of them). Default: the LUKV_THREADS
   * environment variable, else os.availableParallelism(). After each call the other threads spin
   * for up to 2 ms before they sleep, so that the next call (the next layer) starts at once; use
   * fewer threads when the cores are needed for other work between calls.
   */
  threads?: number;
  /**
   * CPU kernel table: "avx512", "avx2" (x86), "neon" (arm64) or "generic" (portable loops, any
   * processor). Default: "auto" (the best this processor runs; `backends().cpu.simdSupported`).
   */
  simd?: SimdLevel;
  /** Query rows remembered per layer for SnapKV-style scoring. Default: 32. */
  observationWindow?: number;
}

/** Options of `recordOracle`. */
export interface OracleOptions {
  /** W_O per layer, row-major [queryHeads*headDim, hidden] (PyTorch's o_proj.weight transposed). Default: none, ||v|| is used. */
  outputProjection?: Float32Array[];
  /** Divide ||v W_O|| by its sum over the layer's heads and context tokens (the LU-KV authors' profiling). Default: false. */
  normalize?: boolean;
}

/** Options of `attend`. */
export interface AttendOptions {
  /** Softmax scale. Default: 1 / sqrt(headDim). */
  scale?: number;
  /**
   * Where to write the result: a Float32Array of the queries' length ([tokens, queryHeads,
   * headDim]) that does not overlap the queries, returned in place of a new array. A decode loop
   * that passes the same array every step allocates nothing per call. With attendAsync the array
   * is written when the promise resolves. Default: a new array.
   */
  out?: Float32Array;
}

/** Pool occupancy. */
export interface Usage {
  pagesTotal: number;
  pagesUsed: number;
  bytesTotal: number;
  bytesUsed: number;
  sequences: number;
}

const DTYPES: readonly DType[] = ["f32", "f16", "bf16"];
const DEVICES: readonly Device[] = ["auto", "cpu", "cuda"];
const SIMD: readonly SimdLevel[] = ["auto", "avx512", "avx2", "neon", "generic"];
const MAX_INT32 = 2 ** 31 - 1;

/** Turns an error from the addon (another realm, code property) into the typed lukv error. */
export function rethrow(e: unknown): never {
  if (e instanceof LukvError) throw e;
  const err = e as { code?: string; message?: string };
  const message = err?.message ?? String(e);
  switch (err?.code) {
    case "ERR_LUKV_INVALID_ARGUMENT":
      throw new InvalidArgumentError(message);
    case "ERR_LUKV_OUT_OF_PAGES":
      throw new OutOfPagesError(message);
    case "ERR_LUKV_DISPOSED":
      throw new DisposedError(message);
    case "ERR_LUKV_BACKEND_UNAVAILABLE":
      throw new BackendUnavailableError(message);
    default:
      throw e;
  }
}

function defaultThreads(): number {
  const env = process.env.LUKV_THREADS;
  if (env !== undefined && env !== "") {
    const n = Number(env);
    if (!Number.isInteger(n) || n < 1) throw invalid("LUKV_THREADS", "positive integer", env);
    return n;
  }
  return os.availableParallelism();
}

/** Resolved configuration of a cache (every option filled in). */
export interface CacheConfig {
  readonly layers: number;
  readonly kvHeads: number;
  readonly queryHeads: number;
  readonly headDim: number;
  readonly pageSize: number;
  readonly maxTokens: number;
  readonly dtype: DType;
  readonly device: "cpu" | "cuda";
  readonly threads: number;
  readonly simd: string;
  readonly observationWindow: number;
}

/**
 * A paged KV cache in which every (layer, KV head) of every sequence has its own length.
 * One pool of pages is allocated at construction; sequences take pages as they grow and give
 * them back on eviction or dispose.
 */
export class KVCache {
  /** The resolved configuration. */
  readonly config: CacheConfig;
  #native: NativeCache | undefined;
  readonly #sequences = new Set<Sequence>();

  constructor(options: KVCacheOptions) {
    if (typeof options !== "object" || options === null) throw invalid("options", "an options object", options);
    const layers = positiveInteger("layers", options.layers, 65536);
    const kvHeads = positiveInteger("kvHeads", options.kvHeads, 65536);
    const queryHeads = positiveInteger("queryHeads", options.queryHeads ?? kvHeads, 65536);
    if (queryHeads % kvHeads !== 0)
      throw invalid("queryHeads", `a multiple of kvHeads (${kvHeads})`, queryHeads);
    const headDim = positiveInteger("headDim", options.headDim, 4096);
    const pageSize = positiveInteger("pageSize", options.pageSize ?? 16, 65536);
    const maxTokens = positiveInteger("maxTokens", options.maxTokens ?? layers * kvHeads * 4096, 2 ** 40);
    if (Math.ceil(maxTokens / pageSize) > MAX_INT32) throw invalid("maxTokens", `at most ${MAX_INT32} pages`, maxTokens);
    const dtype = oneOf("dtype", options.dtype ?? "f16", DTYPES);
    const device = oneOf("device", options.device ?? "auto", DEVICES);
    const threads = options.threads === undefined ? defaultThreads() : positiveInteger("threads", options.threads, 1024);
    const simd = oneOf("simd", options.simd ?? "auto", SIMD);
    const observationWindow = nonNegativeInteger("observationWindow", options.observationWindow ?? 32, 65536);

    const addon = native();
    // "cuda" throws BackendUnavailableError with every reason when it cannot be used; "auto" takes it when it can.
    const resolved = resolveDevice(device);
    if (simd !== "auto" && !addon.cpuInfo().simdSupported.includes(simd))
      throw invalid("simd", `one of the levels this processor supports (${addon.cpuInfo().simdSupported.join(", ")})`, simd);
    try {
      this.#native = new addon.NativeCache({
        layers,
        kvHeads,
        queryHeads,
        headDim,
        pageSize,
        maxTokens,
        dtype,
        device: resolved,
        threads,
        simd,
        observationWindow,
      });
    } catch (e) {
      rethrow(e);
    }
    const info = this.#native.info();
    this.config = Object.freeze({
      layers, kvHeads, queryHeads, headDim, pageSize, maxTokens, dtype,
      device: info.device as "cpu" | "cuda",
      threads: info.threads,
      simd: info.simd,
      observationWindow,
    });
  }

  /** @internal the native handle; throws DisposedError after dispose. */
  get handle(): NativeCache {
    if (!this.#native) throw new DisposedError("KVCache was used after dispose()");
    return this.#native;
  }

  /** True once dispose() was called. */
  get disposed(): boolean {
    return this.#native === undefined;
  }

  /** Starts an empty sequence. */
  createSequence(): Sequence {
    let id: number;
    try {
      id = this.handle.createSequence();
    } catch (e) {
      rethrow(e);
    }
    return this.#adopt(id);
  }

  /** @internal */
  adopt(id: number): Sequence {
    return this.#adopt(id);
  }

  #adopt(id: number): Sequence {
    const seq = new Sequence(this, id);
    this.#sequences.add(seq);
    return seq;
  }

  /** @internal called by Sequence.dispose */
  forget(seq: Sequence): void {
    this.#sequences.delete(seq);
  }

  /** Pages and bytes of the pool in use. */
  usage(): Usage {
    try {
      return this.handle.usage();
    } catch (e) {
      rethrow(e);
    }
  }

  /** Frees the pool and every sequence of it. Idempotent. */
  dispose(): void {
    if (!this.#native) return;
    for (const s of [...this.#sequences]) s.markDisposed();
    this.#sequences.clear();
    this.#native.dispose();
    this.#native = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * One sequence in a KVCache. Every (layer, KV head) keeps its own list of pages, its length and the
 * original position of every kept token.
 */
export class Sequence {
  readonly #cache: KVCache;
  #id: number | undefined;

  /** @internal use KVCache.createSequence() */
  constructor(cache: KVCache, id: number) {
    this.#cache = cache;
    this.#id = id;
  }

  /** The cache this sequence belongs to. */
  get cache(): KVCache {
    return this.#cache;
  }

  /** True once dispose() was called on it or on its cache. */
  get disposed(): boolean {
    return this.#id === undefined;
  }

  /** @internal */
  get id(): number {
    if (this.#id === undefined) throw new DisposedError("Sequence was used after dispose()");
    if (this.#cache.disposed) throw new DisposedError("KVCache was used after dispose()");
    return this.#id;
  }

  /** @internal */
  markDisposed(): void {
    this.#id = undefined;
  }

  #layer(layer: unknown): number {
    return integerInRange("layer", layer, 0, this.#cache.config.layers - 1);
  }

  #head(head: unknown): number {
    return integerInRange("head", head, 0, this.#cache.config.kvHeads - 1);
  }

  /**
   * Appends `tokens` new positions to every KV head of `layer`.
   * keys/values: [tokens, kvHeads, headDim], Float32Array, or Uint16Array holding raw bits of the
   * cache dtype (f16/bf16 caches). If the pool has too few pages, throws OutOfPagesError and
   * changes nothing.
   */
  append(layer: number, keys: Float32Array | Uint16Array, values: Float32Array | Uint16Array): void {
    const id = this.id;
    const { kvHeads, headDim, dtype } = this.#cache.config;
    const l = this.#layer(layer);
    const row = kvHeads * headDim;
    checkTensor("keys", keys, row, "[tokens, kvHeads, headDim]", dtype);
    checkTensor("values", values, row, "[tokens, kvHeads, headDim]", dtype);
    if (Object.prototype.toString.call(keys) !== Object.prototype.toString.call(values))
      throw invalid("values", `the same array type as keys (${describe(keys)})`, values);
    if (values.length !== keys.length)
      throw invalid("values", `${keys.length / row} tokens like keys (length ${keys.length})`, values);
    try {
      this.#cache.handle.append(id, l, keys, values);
    } catch (e) {
      rethrow(e);
    }
  }

  #queries(layer: number, queries: Float32Array | Uint16Array): { l: number; q: Float32Array; tokens: number } {
    const { queryHeads, headDim, dtype } = this.#cache.config;
    const l = this.#layer(layer);
    const row = queryHeads * headDim;
    checkTensor("queries", queries, row, "[tokens, queryHeads, headDim]", dtype);
    const tokens = queries.length / row;
    const appended = this.#cache.handle.appended(this.id, l);
    if (tokens > appended)
      throw new InvalidArgumentError(
        `Expected at most ${appended} tokens (the positions appended to layer ${l}) for queries but received ${tokens} tokens`,
      );
    const q = isUint16Array(queries)
      ? Float32Array.from(queries, dtype === "bf16" ? bf16BitsToF32 : f16BitsToF32)
      : queries;
    return { l, q, tokens };
  }

  #out(opts: AttendOptions | undefined, queries: Float32Array | Uint16Array): Float32Array | undefined {
    const out = opts?.out;
    if (out === undefined) return undefined;
    if (!isFloat32Array(out)) throw invalid("out", "Float32Array", out);
    if (out.length !== queries.length) throw invalid("out", `a Float32Array of length ${queries.length} (the queries' length)`, out);
    if (out.buffer === queries.buffer) {
      const a0 = out.byteOffset, a1 = a0 + out.byteLength, b0 = queries.byteOffset, b1 = b0 + queries.byteLength;
      if (a0 < b1 && b0 < a1) throw invalid("out", "an array that does not overlap the queries", out);
    }
    return out;
  }

  #scale(opts: AttendOptions | undefined): number {
    if (opts?.scale === undefined) return 1 / Math.sqrt(this.#cache.config.headDim);
    if (typeof opts.scale !== "number" || !Number.isFinite(opts.scale)) throw invalid("scale", "finite number", opts.scale);
    return opts.scale;
  }

  /**
   * Attention of `queries` ([tokens, queryHeads, headDim]) over the kept keys/values of `layer`.
   * The queries are the last `tokens` positions appended to the layer; query i sees every kept
   * token whose position is at most its own. Returns [tokens, queryHeads, headDim] Float32Array.
   */
  attend(layer: number, queries: Float32Array | Uint16Array, opts?: AttendOptions): Float32Array {
    const id = this.id;
    const { l, q } = this.#queries(layer, queries);
    const scale = this.#scale(opts);
    const out = this.#out(opts, queries);
    try {
      return this.#cache.handle.attend(id, l, q, scale, out);
    } catch (e) {
      rethrow(e);
    }
  }

  /** Like attend(), computed off the main thread; the queries are copied at the call. */
  async attendAsync(layer: number, queries: Float32Array | Uint16Array, opts?: AttendOptions): Promise<Float32Array> {
    const id = this.id;
    const { l, q } = this.#queries(layer, queries);
    const scale = this.#scale(opts);
    const out = this.#out(opts, queries);
    try {
      return await this.#cache.handle.attendAsync(id, l, q, scale, out);
    } catch (e) {
      rethrow(e);
    }
  }

  /**
   * Evicts tokens for real: scores every kept token of every head, splits the kept total over the
   * heads (`allocation`, or explicit `budgets`), keeps the best tokens of each head plus its sink and
   * recent window, compacts them in order and returns the emptied pages to the pool. Invalid
   * options throw before anything changes.
   */
  compress(options: CompressOptions = {}): CompressReport {
    const id = this.id;
    const n = nativeCompressOptions(options, this.#cache.config, () => this.lengths());
    try {
      return this.#cache.handle.compress(id, n);
    } catch (e) {
      rethrow(e);
    }
  }

  /** Like compress(), off the main thread. Options are read at the call. */
  async compressAsync(options: CompressOptions = {}): Promise<CompressReport> {
    const id = this.id;
    const n = nativeCompressOptions(options, this.#cache.config, () => this.lengths());
    try {
      return await this.#cache.handle.compressAsync(id, n);
    } catch (e) {
      rethrow(e);
    }
  }

  /**
   * The scores compress() would rank the tokens of `layer` by, without evicting: one Float32Array per
   * KV head (length = the head's kept tokens, in position order; higher = keep).
   */
  scores(layer: number, scorer: ScoreOptions["scorer"] = "snapkv", options: Omit<ScoreOptions, "scorer"> = {}): Float32Array[] {
    const id = this.id;
    const l = this.#layer(layer);
    const n = nativeScoreOptions({ ...options, scorer }, this.#cache.config);
    try {
      return this.#cache.handle.scores(id, l, n);
    } catch (e) {
      rethrow(e);
    }
  }

  /**
   * Starts (or stops) accumulating, in every attend() call, each kept token's attention weight
   * averaged over its GQA group: the "h2o" scorer's heavy-hitter mass. Off by default.
   */
  accumulateAttention(on = true): void {
    const id = this.id;
    try {
      this.#cache.handle.accumulate(id, on);
    } catch (e) {
      rethrow(e);
    }
  }

  /**
   * Starts recording the LU-KV oracle for profiling. The context is what the sequence holds now;
   * from now on every attend() records, per (layer, KV head, context token), the largest value over
   * query rows and the query heads of the group of (softmax weight) x ||v_j W_O(q)|| (||v_j|| when no
   * output projection is given). The observation window is frozen too, so scores() ranks the
   * context as compress() would have at this moment. compress() is refused while recording.
   */
  recordOracle(options: OracleOptions = {}): void {
    const id = this.id;
    const { layers, queryHeads, headDim } = this.#cache.config;
    if (options === null || typeof options !== "object") throw invalid("options", "an options object", options);
    const wo = options.outputProjection;
    if (wo !== undefined) {
      if (!Array.isArray(wo) || wo.length !== layers)
        throw invalid("outputProjection", `an array of ${layers} Float32Array (one W_O per layer)`, wo);
      const row = queryHeads * headDim;
      wo.forEach((w, l) => {
        if (!isFloat32Array(w) || w.length === 0 || w.length % row !== 0)
          throw invalid(`outputProjection[${l}]`, `a Float32Array of [queryHeads*headDim = ${row}, hidden] (length a multiple of ${row})`, w);
      });
    }
    const normalize = options.normalize ?? false;
    if (typeof normalize !== "boolean") throw invalid("normalize", "boolean", normalize);
    try {
      this.#cache.handle.recordOracle(id, wo, normalize);
    } catch (e) {
      rethrow(e);
    }
  }

  /** Stops recording (the recorded oracle stays readable) and unfreezes the observation window. */
  stopOracle(): void {
    const id = this.id;
    try {
      this.#cache.handle.stopOracle(id);
    } catch (e) {
      rethrow(e);
    }
  }

  /** The recorded oracle of `layer`: one Float32Array per KV head over its context tokens (position order). */
  oracle(layer: number): Float32Array[] {
    const id = this.id;
    const l = this.#layer(layer);
    try {
      return this.#cache.handle.oracle(id, l);
    } catch (e) {
      rethrow(e);
    }
  }

  /** Kept tokens per (layer, KV head): Int32Array [layers * kvHeads], index layer * kvHeads + head. */
  lengths(): Int32Array {
    try {
      return this.#cache.handle.lengths(this.id);
    } catch (e) {
      rethrow(e);
    }
  }

  /** Original positions of the kept tokens of (layer, head), ascending. */
  positions(layer: number, head: number): Int32Array {
    const id = this.id;
    try {
      return this.#cache.handle.positions(id, this.#layer(layer), this.#head(head));
    } catch (e) {
      rethrow(e);
    }
  }

  /** Positions ever appended to `layer` (the next token's position). */
  appended(layer: number): number {
    const id = this.id;
    try {
      return this.#cache.handle.appended(id, this.#layer(layer));
    } catch (e) {
      rethrow(e);
    }
  }

  /** The kept keys of (layer, head) as stored (dtype-rounded), [length, headDim] Float32Array. */
  keys(layer: number, head: number): Float32Array {
    const id = this.id;
    return this.#cache.handle.readRows(id, this.#layer(layer), this.#head(head), false);
  }

  /** The kept values of (layer, head) as stored (dtype-rounded), [length, headDim] Float32Array. */
  values(layer: number, head: number): Float32Array {
    const id = this.id;
    return this.#cache.handle.readRows(id, this.#layer(layer), this.#head(head), true);
  }

  /** A new sequence sharing this one's pages (copy-on-write). */
  fork(): Sequence {
    const id = this.id;
    try {
      return this.#cache.adopt(this.#cache.handle.fork(id));
    } catch (e) {
      rethrow(e);
    }
  }

  /** Returns the sequence's pages to the pool. Idempotent. */
  dispose(): void {
    if (this.#id === undefined) return;
    if (!this.#cache.disposed) this.#cache.handle.disposeSequence(this.#id);
    this.#cache.forget(this);
    this.#id = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

function checkTensor(name: string, a: unknown, row: number, shape: string, dtype: DType): void {
  const f32 = isFloat32Array(a);
  const u16 = isUint16Array(a);
  if (!f32 && !u16)
    throw invalid(name, dtype === "f32" ? "Float32Array" : `Float32Array or Uint16Array (raw ${dtype} bits)`, a);
  if (u16 && dtype === "f32") throw invalid(name, "Float32Array (the cache dtype is f32)", a);
  const len = (a as Float32Array | Uint16Array).length;
  if (len === 0 || len % row !== 0)
    throw invalid(name, `a non-empty length that is a multiple of ${row} (${shape})`, a);
}
