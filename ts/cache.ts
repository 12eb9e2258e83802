// KVCache and Sequence: the typed surface over the native paged per-head cache.
import { constants as bufferConstants } from "buffer";
import {
  BackendUnavailableError,
  BadSequenceFileError,
  DisposedError,
  InternalError,
  InvalidArgumentError,
  LukvError,
  OutOfMemoryError,
  OutOfPagesError,
  invalid,
  describe,
  outGone,
  SequenceBusyError,
} from "./errors";
import { readSequenceSource, readSequenceSourceAsync, checkSavePath, writeFileReplacing, writeFileReplacingAsync } from "./sequence-file";
import { DType, bf16BitsToF32, f16BitsToF32 } from "./dtype";
import { native, NativeCache, resolveDevice } from "./native";
import { defaultThreads, MAX_THREADS } from "./backends";
import {
  COMPRESS_OPTION_NAMES,
  CompressOptions,
  CompressReport,
  NativeCompressOptions,
  SCORE_OPTION_NAMES,
  ScoreOptions,
  nativeCompressOptions,
  nativeScoreOptions,
  snapshotCompressOptions,
} from "./compress";
import * as batch from "./batch";
import type { AttendBatchItem, AttendBatchOptions, AppendBatchItem } from "./batch";
import { VALUE_SUM_LIMIT, checkExpectedScores, checkKeyNorms, checkScale, checkScores, checkValueSum, scanTensor, scanValuesBatch } from "./finite";
import {
  integerInRange,
  isFloat32Array,
  isUint16Array,
  knownOptions,
  nonNegativeInteger,
  oneOf,
  ownRows,
  copyRows,
  readOnce,
  positiveInteger,
} from "./validate";
import { bufferOf, lengthOf, overlapping } from "./typed";

/** Where the cache lives. */
export type Device = "auto" | "cpu" | "cuda";
/** Which CPU kernel table to use. */
export type SimdLevel = "auto" | "avx512" | "avx2" | "neon" | "generic";
/** How the CPU kernels request K/V rows ahead of use while streaming memory. */
export type PrefetchHint = "auto" | "t0" | "t2" | "nta" | "none";

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
   * processor). Default: "auto" (the best this processor runs, `backends().cpu.simdSupported[0]`;
   * but "avx2" over "avx512" for a headDim that is a multiple of 8 and not of 16, which AVX2's
   * vectors cover whole; `cache.config.simd` names the table taken).
   */
  simd?: SimdLevel;
  /**
   * How the CPU kernels request the next page's K/V rows while they compute on the current one:
   * "t0" (into every cache level), "t2" (into the outer levels), "nta" (non-temporal: past the
   * outer levels where the processor allows), "none" (the hardware prefetchers alone). On arm64
   * every hint but "none" is the one streaming hint. Default: "auto", the hint measured fastest
   * for this processor (`backends().cpu.prefetch`: "t2" on Intel and on AMD before family 26 (Zen 4 and
   * earlier), "nta" on AMD from family 26 (Zen 5) and on arm64, "t0" on other x86); the
   * results are the same whatever the hint.
   */
  prefetch?: PrefetchHint;
  /**
   * Query rows remembered per layer for SnapKV-style scoring. Default: 32. Each sequence holds them
   * in host memory outside the pool (layers × observationWindow × queryHeads × headDim × 4 bytes
   * once it has attended that many rows; not counted by usage()); 0 keeps none.
   */
  observationWindow?: number;
  /**
   * Check every input before the kernels run. Default: true: append, attend and compress throw
   * InvalidArgumentError naming the tensor and the first bad index for NaN or infinity in keys,
   * values or queries, and for a Float32Array value an f16/bf16 cache would store as infinity
   * (|x| >= 65520 for f16; nothing is clamped); attend and the attention and key-norm scorers also
   * refuse magnitudes whose float32 scores could overflow (headDim × max|q| × max|k| × max(1, |scale|)
   * above 2^120, max|q| × |scale| above the largest float32), and attend, whose outputs sum the
   * values, tokens × max|v| above 2^112. false
   * skips these scans (one pass over each input) when the caller guarantees finite, moderate inputs;
   * bad inputs then give unspecified results.
   */
  checkFinite?: boolean;
}

/**
 * Options of `seq.autoCompress`: compress() options (scorer, allocation, profile, sink, window, ...)
 * without ratio, budget or budgets, plus when to compress and down to what.
 */
export interface AutoCompressOptions extends Omit<CompressOptions, "ratio" | "budget" | "budgets"> {
  /** Tokens to keep per (layer, KV head) on average after each automatic compression (compress's `budget`). Required. */
  maxTokens: number;
  /**
   * Check after every `every` positions appended to the last layer; the check (and the compression,
   * if due) runs at the start of the next append. Default: 256.
   */
  every?: number;
  /**
   * Called with each automatic compression's report, inside the append that ran it (before its
   * rows go in), where synchronous calls on the sequence are allowed even during an async call's
   * turn; an exception it throws fails that append. Default: none.
   */
  onCompress?: (report: CompressReport) => void;
}

/**
 * What the cache does when an append finds too few free pages (`cache.onPressure`): compress other
 * sequences (or the appending one) to make room, then retry the append.
 */
export interface PressureOptions extends Omit<CompressOptions, "ratio" | "budget" | "budgets"> {
  /**
   * Which sequence gives pages first: "largest", the one holding the most pages alone (pages no
   * fork shares: what compressing it can free; ties by most tokens kept), or "oldest", the one
   * created first.
   */
  evict: "largest" | "oldest";
  /** Fraction of a chosen sequence's tokens to remove (compress's `ratio`). Default: 0.5. */
  ratio?: number;
  /** Called after every compression made for pressure. Default: none. */
  listener?: (event: PressureEvent) => void;
}

/** One compression made because an append ran out of pages. */
export interface PressureEvent {
  /** The sequence that was compressed. */
  sequence: Sequence;
  /** The sequence whose append needed the pages (may be the same one). */
  requestedBy: Sequence;
  /** "largest" or "oldest": why this sequence was chosen. */
  reason: "largest" | "oldest";
  /** What compress() did (before, total, pagesFreed...). */
  report: CompressReport;
}

/** Totals of the compressions made for pressure since the cache was created. */
export interface PressureStats {
  events: number;
  tokensEvicted: number;
  pagesFreed: number;
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
  /** Softmax scale, a finite float32 (magnitude at most 3.4028234663852886e38). Default: 1 / sqrt(headDim). */
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

/** @internal The names of KVCacheOptions (every one: checked when compiled). */
export const CACHE_OPTION_NAMES = [
  "layers", "kvHeads", "queryHeads", "headDim", "pageSize", "maxTokens", "dtype", "device", "threads", "simd", "prefetch", "observationWindow", "checkFinite",
] as const satisfies readonly (keyof KVCacheOptions)[];
// An option added to KVCacheOptions fails to compile here until the list names it.
const everyCacheOption: Exclude<keyof KVCacheOptions, (typeof CACHE_OPTION_NAMES)[number]> extends never ? true : never = true;
void everyCacheOption;
const ATTEND_OPTION_NAMES = ["scale", "out"] as const;
const ORACLE_OPTION_NAMES = ["outputProjection", "normalize"] as const;
const DTYPES: readonly DType[] = ["f32", "f16", "bf16"];
const DEVICES: readonly Device[] = ["auto", "cpu", "cuda"];
const SIMD: readonly SimdLevel[] = ["auto", "avx512", "avx2", "neon", "generic"];
const PREFETCH: readonly PrefetchHint[] = ["auto", "t0", "t2", "nta", "none"];
const MAX_INT32 = 2 ** 31 - 1;
/** @internal The most tokens a pool with pages of `pageSize` tokens holds: 2^40, and MAX_INT32 pages. */
export function mostTokens(pageSize: number): number {
  return Math.min(2 ** 40, MAX_INT32 * pageSize);
}

/** @internal Turns an error from the addon (another realm, code property) into the typed lukv error. */
export function rethrow(e: unknown): never {
  if (e instanceof LukvError) throw e;
  const err = e as { code?: string; message?: string };
  const message = err?.message ?? String(e);
  switch (err?.code) {
    case "ERR_LUKV_INVALID_ARGUMENT":
      throw new InvalidArgumentError(message);
    case "ERR_LUKV_OUT_OF_PAGES":
      throw new OutOfPagesError(message);
    case "ERR_LUKV_OUT_OF_MEMORY":
      throw new OutOfMemoryError(message);
    case "ERR_LUKV_INTERNAL":
      throw new InternalError(message);
    case "ERR_LUKV_DISPOSED":
      throw new DisposedError(message);
    case "ERR_LUKV_BACKEND_UNAVAILABLE":
      throw new BackendUnavailableError(message);
    case "ERR_LUKV_BAD_SEQUENCE_FILE":
      throw new BadSequenceFileError(message);
    default:
      throw e;
  }
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
  /** The prefetch hint in use ("t0", "t2", "nta" or "none"). */
  readonly prefetch: string;
  readonly observationWindow: number;
  readonly checkFinite: boolean;
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
    knownOptions("options", options, CACHE_OPTION_NAMES);
    const layers = positiveInteger("layers", options.layers, 65536);
    const kvHeads = positiveInteger("kvHeads", options.kvHeads, 65536);
    const queryHeads = positiveInteger("queryHeads", options.queryHeads ?? kvHeads, 65536);
    if (queryHeads % kvHeads !== 0)
      throw invalid("queryHeads", `a multiple of kvHeads (${kvHeads})`, queryHeads);
    const headDim = positiveInteger("headDim", options.headDim, 4096);
    const pageSize = positiveInteger("pageSize", options.pageSize ?? 16, 65536);
    const defaultTokens = layers * kvHeads * 4096;
    if ((options.maxTokens === undefined || options.maxTokens === null) && defaultTokens > mostTokens(pageSize))
      throw invalid("maxTokens", `a value given: its default, layers × kvHeads × 4096 = ${defaultTokens}, passes the limits (2^40 tokens, ${MAX_INT32} pages)`, undefined);
    const maxTokens = positiveInteger("maxTokens", options.maxTokens ?? defaultTokens, 2 ** 40);
    if (Math.ceil(maxTokens / pageSize) > MAX_INT32) throw invalid("maxTokens", `at most ${MAX_INT32} pages`, maxTokens);
    const dtype = oneOf("dtype", options.dtype ?? "f16", DTYPES);
    const device = oneOf("device", options.device ?? "auto", DEVICES);
    const threads = options.threads === undefined || options.threads === null ? defaultThreads() : positiveInteger("threads", options.threads, MAX_THREADS);
    const simd = oneOf("simd", options.simd ?? "auto", SIMD);
    const prefetch = oneOf("prefetch", options.prefetch ?? "auto", PREFETCH);
    const observationWindow = nonNegativeInteger("observationWindow", options.observationWindow ?? 32, 65536);
    const checkFinite = options.checkFinite ?? true;
    if (typeof checkFinite !== "boolean") throw invalid("checkFinite", "boolean", checkFinite);

    const addon = native();
    // "cuda" throws BackendUnavailableError with every reason when it cannot be used; "auto" takes it when it can.
    const resolved = resolveDevice(device);
    if (simd !== "auto" && !addon.cpuInfo().simdSupported.includes(simd))
      throw invalid("simd", `one of the levels this processor supports (${addon.cpuInfo().simdSupported.join(", ")})`, simd);
    const make = (on: "cpu" | "cuda") =>
      new addon.NativeCache({ layers, kvHeads, queryHeads, headDim, pageSize, maxTokens, dtype, device: on, threads, simd, prefetch, observationWindow });
    try {
      try {
        this.#native = make(resolved);
      } catch (e) {
        // "auto" takes the CPU where the device refuses this cache (a head size it has no kernels
        // for, a pool larger than its memory, a device whose memory is full): config.device says
        // which it took.
        const code = (e as { code?: unknown })?.code;
        const refused = code === "ERR_LUKV_INVALID_ARGUMENT" || code === "ERR_LUKV_OUT_OF_PAGES" || code === "ERR_LUKV_OUT_OF_MEMORY";
        if (device !== "auto" || resolved !== "cuda" || !refused) throw e;
        try {
          this.#native = make("cpu");
        } catch (cpuError) {
          // Both refused: the CPU's error, saying that the device was tried first and why it refused.
          // (By shape: the addon's errors may come from another realm.)
          const err = cpuError as { message?: unknown };
          if (typeof err?.message === "string") err.message += ` (device "auto" tried CUDA first, which refused: ${(e as Error).message})`;
          throw cpuError;
        }
      }
    } catch (e) {
      rethrow(e);
    }
    const info = this.#native.info();
    this.config = Object.freeze({
      layers, kvHeads, queryHeads, headDim, pageSize, maxTokens, dtype,
      device: info.device as "cpu" | "cuda",
      threads: info.threads,
      simd: info.simd,
      prefetch: info.prefetch,
      observationWindow,
      checkFinite,
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
    const seq = Sequence.fromNative(madeByCache, this, id);
    this.#sequences.add(seq);
    return seq;
  }

  /** @internal called by Sequence.dispose */
  forget(seq: Sequence): void {
    this.#sequences.delete(seq);
  }

  #pressure: { options: CompressOptions; evict: "largest" | "oldest"; listener?: (event: PressureEvent) => void } | undefined;
  readonly #pressureStats: PressureStats = { events: 0, tokensEvicted: 0, pagesFreed: 0 };
  // User callbacks (onCompress, pressure listeners) started so far: an append whose rows were
  // checked before one ran checks them again before they are written (the callback may have
  // detached, resized or rewritten them).
  #callbacksStarted = 0;

  /** @internal See #callbacksStarted. */
  get callbacksStarted(): number {
    return this.#callbacksStarted;
  }

  /** @internal Counts a user callback about to run. */
  noteCallback(): void {
    this.#callbacksStarted++;
  }

  /**
   * What an append that finds too few free pages does: "throw" (the default: OutOfPagesError, and
   * the append changes nothing), or make room by compressing sequences, one at a time, the largest
   * (most pages held alone, the pages a compression can free; then most tokens kept) or the oldest
   * first, until the append fits, and then append. Sequences with
   * async calls pending are skipped. Every compression made for pressure is reported to `listener`
   * and counted in `cache.pressureStats`; when no sequence can give pages, the append still throws
   * OutOfPagesError. Options are checked now.
   */
  onPressure(options: PressureOptions | "throw"): void {
    void this.handle;
    if (options === "throw") {
      this.#pressure = undefined;
      return;
    }
    if (options === null || typeof options !== "object") throw invalid("options", 'an options object or "throw"', options);
    const { given, compress: compressOptions } = embeddedCompressOptions(options, ["evict", "ratio", "listener"], (g) => ({ ratio: (g.ratio as number | undefined) ?? 0.5 }));
    const evict = oneOf("evict", given.evict, ["largest", "oldest"] as const);
    const listener = given.listener;
    if (listener !== undefined && typeof listener !== "function") throw invalid("listener", "a function", listener);
    const n = nativeCompressOptions(compressOptions, this.config, () => new Int32Array(this.config.layers * this.config.kvHeads));
    refuseFailingEveryTime(n, this.config);
    this.#pressure = { options: compressOptions, evict, listener: listener as PressureOptions["listener"] };
  }

  /** Compressions made for pressure so far, the tokens they removed and the pages they freed. */
  get pressureStats(): PressureStats {
    return { ...this.#pressureStats };
  }

  /**
   * @internal Runs `attempt` (an append); when it runs out of pages and a pressure policy is set,
   * compresses sequences one by one, retrying after each, until it fits or none is left to try.
   */
  withPressure(requestedBy: Sequence, attempt: () => void): void {
    try {
      attempt();
      return;
    } catch (e) {
      if (!(e instanceof OutOfPagesError) || !this.#pressure) throw e;
      const policy = this.#pressure;
      const total = (seq: Sequence) => seq.lengths().reduce((a, b) => a + b, 0);
      const candidates = [...this.#sequences].filter((seq) => seq.pending === 0 && total(seq) > 0);
      if (policy.evict === "largest") {
        // Largest by the pages a compression can free (those no fork shares), then by tokens kept:
        // a fork of a long prompt keeps many tokens but holds few pages alone, and compressing it
        // first would cost its tokens (and copies of the shared pages it keeps) for little room.
        const alone = new Map(candidates.map((seq) => [seq, viaAddon(() => this.handle.pagesHeldAlone(seq.nativeId()))]));
        candidates.sort((a, b) => alone.get(b)! - alone.get(a)! || total(b) - total(a));
      }
      let refusals = 0, firstRefusal = "";
      for (const seq of candidates) {
        // A listener may have disposed a later candidate or started an async call on it.
        if (seq.disposed || seq.pending > 0) continue;
        // A sequence all of whose pages others share (now: an earlier compression may have left it
        // the only holder) frees nothing when compressed, since its compaction copies the shared
        // pages it keeps: it would lose tokens for no room.
        if (viaAddon(() => this.handle.pagesHeldAlone(seq.nativeId())) === 0) continue;
        let report: CompressReport;
        const tokensBefore = total(seq), pagesBefore = this.usage().pagesUsed;
        try {
          report = seq.compress(policy.options);
        } catch (err) {
          if (err instanceof InvalidArgumentError && refusals++ === 0) firstRefusal = err.message;
          if (err instanceof OutOfPagesError || err instanceof InvalidArgumentError) continue; // this one cannot give pages now
          // A device compression that failed after earlier rounds keeps what they evicted: counted.
          const evicted = seq.disposed ? 0 : tokensBefore - total(seq);
          if (evicted > 0) {
            this.#pressureStats.events++;
            this.#pressureStats.tokensEvicted += evicted;
            this.#pressureStats.pagesFreed += pagesBefore - this.usage().pagesUsed;
          }
          if (err instanceof LukvError)
            err.message = `The pressure policy's compression of ${seq === requestedBy ? "the appending sequence" : "another sequence"} failed${evicted > 0 ? ` after evicting ${evicted} of its ${tokensBefore} tokens (counted in pressureStats; the listener is not called)` : ""}: ${err.message}`;
          throw err;
        }
        this.#pressureStats.events++;
        this.#pressureStats.tokensEvicted += report.before - report.total;
        this.#pressureStats.pagesFreed += report.pagesFreed;
        if (policy.listener) {
          this.noteCallback();
          policy.listener({ sequence: seq, requestedBy, reason: policy.evict, report });
        }
        if (report.pagesFreed === 0) continue;
        try {
          attempt();
          return;
        } catch (err) {
          if (!(err instanceof OutOfPagesError)) throw err;
        }
      }
      // Once more, in the state the policy leaves (a listener may have made room another way, by
      // disposing a sequence, say): a failed append changes nothing, and its error is the latest.
      try {
        attempt();
      } catch (err) {
        // Compressions the policy's options made impossible are said, not passed over in silence.
        if (err instanceof OutOfPagesError && refusals > 0)
          err.message += ` (the onPressure policy's compression was refused for ${refusals} sequence${refusals === 1 ? "" : "s"}; the first: ${firstRefusal})`;
        throw err;
      }
    }
  }

  /**
   * Batched step: attention on `layer` for several sequences at once, one native pass over
   * (sequence, KV head, token range) instead of one call per sequence. Each item is what
   * `item.sequence.attend(layer, item.queries, { scale, out: item.out })` would take (decode rows
   * or a prefill chunk, sequences of any lengths) and the result is the same: one Float32Array per
   * item, in order, bit for bit on the CPU backend. Each sequence may appear once; every item is
   * checked before anything runs (a bad one throws naming `items[i]`), an empty batch returns [].
   * It is a call on each of its sequences: SequenceBusyError while any has async calls pending.
   */
  attendBatch(layer: number, items: readonly AttendBatchItem[], options?: AttendBatchOptions): Float32Array[] {
    return batch.attendBatch(this, layer, items, options);
  }

  /**
   * Like attendBatch(), off the main thread. It takes its turn in the queue of every sequence of
   * the batch: it runs once the async calls made before it on any of them have settled, and later
   * calls on any of them wait for it. The queries are read at the call.
   */
  attendBatchAsync(layer: number, items: readonly AttendBatchItem[], options?: AttendBatchOptions): Promise<Float32Array[]> {
    return batch.attendBatchAsync(this, layer, items, options);
  }

  /**
   * Batched step: appends each item's keys/values to its sequence's `layer`, as `append` would,
   * all or nothing: if the pool lacks the pages of the whole batch (after the onPressure policy,
   * if one is set, made what room it could; its events name the batch's first sequence as
   * `requestedBy`) or any item is bad, throws and appends nothing. Each sequence may appear once;
   * an empty batch does nothing. SequenceBusyError while any sequence has async calls pending.
   */
  appendBatch(layer: number, items: readonly AppendBatchItem[]): void {
    batch.appendBatch(this, layer, items);
  }

  /**
   * appendBatch() in the queues of the batch's sequences (see attendBatchAsync): the rows are
   * checked and read at the call, and written when the batch's turn comes (at once when no
   * sequence of it has calls pending). Calls made after it see its rows. A write is a copy, so it
   * runs on the main thread; a pressure policy then skips the batch's own sequences (they are busy).
   */
  appendBatchAsync(layer: number, items: readonly AppendBatchItem[]): Promise<void> {
    return batch.appendBatchAsync(this, layer, items);
  }

  /** Pages and bytes of the pool in use. */
  usage(): Usage {
    try {
      return this.handle.usage();
    } catch (e) {
      rethrow(e);
    }
  }

  /**
   * Gives the memory of the pool's free pages (what eviction, `dispose()` of sequences and
   * compaction returned to the pool) back to the system, for a long-running process whose working
   * set shrank. Sequences keep every page they hold, and the free pages stay in the pool: appends
   * take them again (the system hands them out zeroed, at the cost of page faults the first time).
   * It gives back the pool's 2 MiB regions (its huge pages) whose pages are all free: free pages
   * scattered among pages in use give back nothing (a smaller run given back would be refilled by
   * the kernel's huge-page merging within seconds). Returns the bytes given back (resident before;
   * a second call right after gives back 0). Pools in host memory of 2 MiB or more on Linux;
   * elsewhere (smaller pools, other systems, `device: "cuda"`) it returns 0 and changes nothing. A
   * synchronous call on the cache; it runs while async calls are in flight, as `usage()` does,
   * holding the page table for a pass over the pages ever used.
   */
  trim(): number {
    try {
      return this.handle.trim();
    } catch (e) {
      rethrow(e);
    }
  }

  /**
   * A new sequence restored from what `seq.save()` wrote: `source` is the bytes (a Buffer or
   * Uint8Array) or the path of a file `seq.saveFile()` wrote. The sequence continues exactly as the
   * saved one would have: the same kept tokens per (layer, KV head) bit for bit, positions, appended
   * counts, observation rows and H2O mass. The cache must have the saved one's layers, kvHeads,
   * queryHeads, headDim and dtype; its pageSize, maxTokens, device and threads may differ. Throws
   * BadSequenceFileError (the message names the problem: magic, version, shape, checksum,
   * truncation, a section that does not add up; with checkFinite, a key or value that is not
   * finite) or OutOfPagesError (the pool lacks the pages; the
   * pressure policy is not applied), and then nothing was allocated. A file that cannot be read
   * throws the file system's error. Format: docs/sequence-format.md.
   */
  loadSequence(source: Uint8Array | string): Sequence {
    const bytes = readSequenceSource(source);
    let loaded: [number, Float64Array];
    try {
      loaded = this.handle.loadSequence(bytes, this.config.checkFinite);
    } catch (e) {
      rethrow(e);
    }
    return this.#restored(loaded);
  }

  /**
   * Like loadSequence(), reading the file and checking and writing the rows off the main thread.
   * Bytes are copied at the call (the caller may reuse them at once); a cache disposed before the
   * work finishes rejects with DisposedError.
   */
  async loadSequenceAsync(source: Uint8Array | string): Promise<Sequence> {
    void this.handle;
    // Bytes go to the addon (which copies them) in this tick: the caller may reuse them at once.
    const bytes = typeof source === "string" ? await readSequenceSourceAsync(source) : readSequenceSource(source);
    let loaded: [number, Float64Array];
    try {
      loaded = await this.handle.loadSequenceAsync(bytes, this.config.checkFinite);
    } catch (e) {
      rethrow(e);
    }
    // Disposed while the work ran: the sequence went with the cache.
    if (this.disposed) throw new DisposedError("KVCache was disposed while loadSequenceAsync ran");
    return this.#restored(loaded);
  }

  #restored([id, bounds]: [number, Float64Array]): Sequence {
    const seq = this.#adopt(id);
    // Only a checked cache keeps bounds: one without checkFinite measures none of its appends, so
    // bounds it kept from a file would understate its rows in the files it saves (it saves 0s).
    if (this.config.checkFinite) seq.restoreBounds(bounds);
    return seq;
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

// Proof that a Sequence is made by the cache (see Sequence's constructor).
const madeByCache = Symbol("lukv.Sequence");

/**
 * One sequence in a KVCache. Every (layer, KV head) keeps its own list of pages, its length and the
 * original position of every kept token.
 */
export class Sequence {
  readonly #cache: KVCache;
  #id: number | undefined;
  // Largest |key|, |value| ever appended and |query| ever attended per layer (with checkFinite): they
  // bound every score and weighted sum the kernels compute. Eviction can only lower the truth. Only
  // calls that went in count (an async call's when it has run), so a queued call sees the bounds
  // the calls before it left, and a failed call changes nothing.
  readonly #keyMax: Float64Array;
  readonly #valueMax: Float64Array;
  readonly #queryMax: Float64Array;
  // Per layer: rows of async appends (appendBatchAsync) queued and not yet run.
  readonly #queuedRows: Float64Array;
  // The key and value bounds of async appends not yet settled: the checks of calls made meanwhile
  // count them (the rows may be in when those calls' turns come).
  readonly #unsettled = new Set<{ l: number; keyMax: number; valueMax: number }>();
  // Per layer: positions appended, as the native sequence counts them, read from it on first use
  // (a forked or loaded sequence starts with its origin's) and counted here from then on, so the
  // check of every attend call costs no call into the addon.
  #appendedRows: Float64Array | undefined;
  // Async calls run one after another in call order: each waits for the one before (#tail). While
  // any is waiting or running (#pending > 0), synchronous calls throw SequenceBusyError.
  #tail: Promise<unknown> = Promise.resolve();
  #pending = 0;
  // autoCompress: the compress() options, the check interval, and positions appended to the last
  // layer since the last check (a check is due, before the next append, once they reach `every`).
  #auto: { options: CompressOptions; every: number; window: number; onCompress?: (report: CompressReport) => void } | undefined;
  #sinceCheck = 0;
  // recordOracle: positions appended to layer 0 when it was called.
  #oracleFrom: number | undefined;
  // onCompress callbacks running: they run inside the call that compressed (an async call's turn
  // included), where the sequence is at rest, so synchronous calls on it are allowed there.
  #inCallback = 0;
  // #pending when the async call whose turn is running began it (0 outside turns). The calls
  // counted then are this one and those queued behind it; one started later (by a callback or a
  // pressure listener) raises #pending past it, and synchronous calls in callbacks are refused
  // from then on: they would take effect before a call made before them.
  #turnBase = 0;
  // #turnBase when the outermost running onCompress began (the turn it runs in, if any; an async
  // call the callback starts on an idle sequence begins a turn of its own, which must not count).
  #callbackBase = 0;
  #autoCompressions = 0;

  /** @internal the handle of native sequence `id` (KVCache.createSequence, fork, loadSequence) */
  static fromNative(token: symbol, cache: KVCache, id: number): Sequence {
    return new Sequence(token, cache, id);
  }

  /** Sequences are made by cache.createSequence(), seq.fork() and cache.loadSequence(). */
  private constructor(token: symbol, cache: KVCache, id: number) {
    // A second handle to a native sequence would get round the busy checks of the first.
    if (token !== madeByCache)
      throw new InvalidArgumentError("Sequences are made by cache.createSequence(), seq.fork() and cache.loadSequence(), not by new Sequence()");
    this.#cache = cache;
    this.#id = id;
    const { layers } = cache.config;
    this.#keyMax = new Float64Array(layers);
    this.#valueMax = new Float64Array(layers);
    this.#queryMax = new Float64Array(layers);
    this.#queuedRows = new Float64Array(layers);
  }

  /** The cache this sequence belongs to. */
  get cache(): KVCache {
    return this.#cache;
  }

  /** True once dispose() was called on it or on its cache. */
  get disposed(): boolean {
    return this.#id === undefined;
  }

  /** @internal the native id, for synchronous use: throws SequenceBusyError while async calls are pending. */
  get id(): number {
    const id = this.#liveId();
    if (this.#pending > (this.#inCallback > 0 ? this.#callbackBase : 0))
      throw new SequenceBusyError(
        `Sequence has ${this.#pending} async call${this.#pending === 1 ? "" : "s"} (its own or a batch's *Async calls) pending; await ${this.#pending === 1 ? "it" : "them"} before a synchronous call (calls on a sequence take effect in call order)`,
      );
    return id;
  }

  /** Number of async calls waiting or running on this sequence. */
  get pending(): number {
    return this.#pending;
  }

  #liveId(): number {
    if (this.#id === undefined) throw new DisposedError("Sequence was used after dispose()");
    if (this.#cache.disposed) throw new DisposedError("KVCache was used after dispose()");
    return this.#id;
  }

  // Runs `task` after every async call made before it on this sequence has settled; with none
  // pending it starts now (in this tick), so an idle sequence pays no extra turn of the event loop.
  // The call counts as pending before its task starts, so the task sees the sequence as busy
  // whether it waited or not (the pressure policy skips it; synchronous calls throw).
  #enqueue<T>(task: () => Promise<T>): Promise<T> {
    return Sequence.enqueueAll([this], task);
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
   * appends nothing (an automatic compression that was due runs first: see autoCompress).
   */
  append(layer: number, keys: Float32Array | Uint16Array, values: Float32Array | Uint16Array): void {
    const id = this.id;
    const l = this.#layer(layer);
    keys = ownRows(keys);
    values = ownRows(values);
    let checked = this.checkAppend(keys, values, "");
    const callbacks = this.#cache.callbacksStarted;
    this.autoCompressDue(id, () => void this.id);
    this.#cache.withPressure(this, () => {
      // An onCompress or a pressure listener (before a retry) may have started an async call here,
      // or changed the rows.
      void this.id;
      if (this.#cache.callbacksStarted !== callbacks) checked = this.recheckAppend(keys, values, "", checked);
      try {
        this.#cache.handle.append(id, l, keys, values);
      } catch (e) {
        rethrow(e);
      }
    });
    this.appended_(l, checked);
  }

  /**
   * @internal checkAppend again after user code ran (an onCompress, a pressure listener): the rows
   * must still hold the tokens they held when the append was called, and pass the checks as they are now.
   */
  recheckAppend(
    keys: Float32Array | Uint16Array,
    values: Float32Array | Uint16Array,
    prefix: string,
    before: { tokens: number },
  ): { keyMax: number; valueMax: number; tokens: number } {
    const row = this.#cache.config.kvHeads * this.#cache.config.headDim;
    for (const [name, rows] of [["keys", keys], ["values", values]] as const)
      if (rows.length !== before.tokens * row) {
        const now = rows.length === 0 ? "emptied it (detached, or resized to 0)" : `resized it (${rows.length % row === 0 ? `${rows.length / row} tokens` : `${rows.length} elements`} now)`;
        throw new InvalidArgumentError(
          `Expected ${prefix}${name} to hold the ${before.tokens} tokens it held when the append was called, but an onCompress or pressure listener that ran before the rows were written ${now}; nothing was appended`,
        );
      }
    return this.checkAppend(keys, values, prefix);
  }

  /**
   * @internal The checks of append() on keys/values (names prefixed with `prefix`, e.g.
   * "items[2]."): returns what appended_ records once the rows are in.
   */
  checkAppend(keys: Float32Array | Uint16Array, values: Float32Array | Uint16Array, prefix: string): { keyMax: number; valueMax: number; tokens: number } {
    const { kvHeads, headDim, dtype } = this.#cache.config;
    const row = kvHeads * headDim;
    checkTensor(`${prefix}keys`, keys, row, "[tokens, kvHeads, headDim]", dtype);
    checkTensor(`${prefix}values`, values, row, "[tokens, kvHeads, headDim]", dtype);
    if (Object.prototype.toString.call(keys) !== Object.prototype.toString.call(values))
      throw invalid(`${prefix}values`, `the same array type as keys (${describe(keys)})`, values);
    if (values.length !== keys.length)
      throw invalid(`${prefix}values`, `${keys.length / row} tokens like keys (length ${keys.length})`, values);
    let keyMax = 0, valueMax = 0;
    if (this.#cache.config.checkFinite) {
      // Both in one native call; a bad value is named by scanTensor, keys first.
      const scan = scanValuesBatch([keys, values], isUint16Array(keys), dtype, appendScan);
      if (scan[0] >= 0) scanTensor(`${prefix}keys`, keys, kvHeads, headDim, dtype);
      if (scan[2] >= 0) scanTensor(`${prefix}values`, values, kvHeads, headDim, dtype);
      keyMax = scan[1];
      valueMax = scan[3];
    }
    return { keyMax, valueMax, tokens: keys.length / row };
  }

  /**
   * @internal After rows checked by checkAppend went in: their bounds and count; after the last
   * layer's, whether an automatic compression is due (autoCompress; it runs before the next append).
   */
  appended_(l: number, checked: { keyMax: number; valueMax: number; tokens: number }): void {
    this.#keyMax[l] = Math.max(this.#keyMax[l], checked.keyMax);
    this.#valueMax[l] = Math.max(this.#valueMax[l], checked.valueMax);
    if (this.#appendedRows) this.#appendedRows[l] += checked.tokens;
    if (this.#auto && l === this.#cache.config.layers - 1) this.#sinceCheck += checked.tokens;
  }

  /**
   * @internal The checks of attend() for a batch item (`prefix` + "queries" is `queriesName`, made
   * once per item index by the caller): the queries as Float32Array, the output array if any, and the
   * queries' bound, which commitQueries() records once the call went in.
   */
  checkAttend(l: number, queries: Float32Array | Uint16Array, out: unknown, scale: number, prefix: string, queriesName: string): { q: Float32Array; out?: Float32Array; queryMax: number } {
    const { q, queryMax } = this.#queries(l, queries, scale, queriesName);
    return { q, out: this.#out(out, queries, prefix), queryMax };
  }

  /**
   * @internal The checks of checkAttend that the batch's fast path keeps in TypeScript, for
   * Float32Array queries: -1 when they need the full checks (no whole number of rows the layer can
   * take, or values whose sums could overflow), else the bound on |k| against which the addon checks
   * the queries' scores (0 without checkFinite).
   */
  quickAttend(l: number, queries: Float32Array, row: number): number {
    const tokens = queries.length / row;
    const appended = this.#appendedCount(l) + this.#queuedRows[l];
    if (!(tokens >= 1 && tokens <= appended && Number.isInteger(tokens))) return -1;
    if (!this.#cache.config.checkFinite) return 0;
    if (appended * this.#bound("valueMax", l) > VALUE_SUM_LIMIT) return -1;
    return this.#bound("keyMax", l);
  }

  /** @internal Records the bound of queries that went in (see checkAttend). */
  commitQueries(l: number, queryMax: number): void {
    this.#queryMax[l] = Math.max(this.#queryMax[l], queryMax);
  }

  /**
   * @internal An async append of rows checked by checkAppend, from its call until it settles: calls
   * made meanwhile count its rows (until its turn starts: `unqueue`) and their bounds (until it
   * settles: `release`; if it succeeded, appended_ has recorded them by then).
   */
  queueAppend(l: number, checked: { keyMax: number; valueMax: number; tokens: number }): { unqueue: () => void; release: () => void } {
    this.#queuedRows[l] += checked.tokens;
    const held = { l, keyMax: checked.keyMax, valueMax: checked.valueMax };
    this.#unsettled.add(held);
    let queued = true;
    return {
      unqueue: () => {
        if (queued) this.#queuedRows[l] -= checked.tokens;
        queued = false;
      },
      release: () => this.#unsettled.delete(held),
    };
  }

  // The largest |key| or |value| of layer `l` that a call made now may meet: the appends that went
  // in and the async ones not yet settled.
  #bound(which: "keyMax" | "valueMax", l: number): number {
    let m = which === "keyMax" ? this.#keyMax[l] : this.#valueMax[l];
    for (const held of this.#unsettled) if (held.l === l) m = Math.max(m, held[which]);
    return m;
  }

  /** @internal The native id without the busy check (for work already in this sequence's queue). */
  nativeId(): number {
    return this.#liveId();
  }

  /**
   * @internal Runs `task` once every async call made before on each of `seqs` has settled, as one
   * call in each sequence's queue (later calls on any of them wait for it).
   */
  static enqueueAll<T>(seqs: readonly Sequence[], task: () => Promise<T>): Promise<T> {
    const idle = seqs.every((s) => s.#pending === 0);
    const before = seqs.map((s) => s.#tail);
    // The call is in every queue before its task starts, so a call made from inside the task (a
    // callback) queues behind it rather than replacing it as the queue's end.
    let settle!: () => void;
    const settled = new Promise<void>((resolve) => (settle = resolve));
    for (const s of seqs) {
      s.#pending++;
      s.#tail = settled;
    }
    const run = () => {
      for (const s of seqs) s.#turnBase = s.#pending;
      return task();
    };
    const start = idle ? run() : Promise.all(before).then(run);
    const done = start.finally(() => {
      for (const s of seqs) {
        s.#turnBase = 0;
        s.#pending--;
      }
    });
    done.then(settle, settle);
    return done;
  }

  /**
   * Keeps a long generation in bounded memory: once `every` positions have been appended to the last
   * layer since the last check, the next append (normally the first layer's, at the start of the
   * next step, after the step before was attended) first checks the sequence, and if it holds more
   * than `maxTokens` tokens per (layer, KV head) on average, compresses it back to that (compress
   * with `budget: maxTokens` and the given options; pages go back to the pool). So it never holds
   * more than about maxTokens + every per head. If that compression fails, the append throws its
   * error (the message says so) and appends nothing, and the compression stays due; except when it
   * lacks free pages (a compression copies the pages it shares with forks): the cache's pressure
   * policy may then make room, and if there is still none the append goes ahead and the
   * compression stays due. Options are checked now. `autoCompress(false)` stops it.
   */
  autoCompress(options: AutoCompressOptions | false): void {
    void this.id;
    if (options === false) {
      this.#auto = undefined;
      return;
    }
    if (options === null || typeof options !== "object") throw invalid("options", "an options object or false", options);
    const own = ["maxTokens", "every", "onCompress"];
    const { given, compress: compressOptions } = embeddedCompressOptions(options, own, () => ({}));
    const maxTokens = integerInRange("maxTokens", given.maxTokens, 1, 2 ** 31 - 1);
    const every = integerInRange("every", given.every ?? 256, 1, 2 ** 31 - 1);
    const onCompress = given.onCompress as AutoCompressOptions["onCompress"];
    if (onCompress !== undefined && typeof onCompress !== "function") throw invalid("onCompress", "a function", onCompress);
    compressOptions.budget = maxTokens;
    const n = nativeCompressOptions(compressOptions, this.#cache.config, () => this.lengths()); // invalid options throw now
    refuseFailingEveryTime(n, this.#cache.config); // it would fail every time it is due
    if (n.scorer === "h2o" && !viaAddon(() => this.#cache.handle.accumulating(this.id)))
      throw invalid("scorer", '"h2o" only while accumulateAttention() is on (it scores by the mass accumulated; turn it on first)', "h2o");
    this.#auto = { options: compressOptions, every, window: n.window, onCompress };
    this.#sinceCheck = 0;
  }

  /** Automatic compressions made so far (autoCompress). */
  get autoCompressions(): number {
    return this.#autoCompressions;
  }

  /**
   * @internal Before an append (`id`: the sequence's native id, the call's busy check done): the
   * automatic compression the appends before made due, if the sequence is over its limit. It runs
   * here rather than right after the last layer's append so that the step that made it due has
   * been attended (SnapKV scores the last layer with that step's queries) and so that a failure
   * throws before the append changes anything; it stays due until it succeeds or autoCompress is
   * changed. `recheck` (synchronous appends): the busy checks, run again before each compression
   * attempt. True when a compression ran (and its onCompress, which may have started async calls).
   */
  autoCompressDue(id: number, recheck?: () => void): boolean {
    const auto = this.#auto;
    if (!auto || this.#sinceCheck < auto.every) return false;
    const lengths = viaAddon(() => this.#cache.handle.lengths(id));
    if (lengths.reduce((a, b) => a + b, 0) <= (auto.options.budget as number) * lengths.length) {
      this.#sinceCheck = 0;
      return false;
    }
    // A layer with fewer positions than the window cannot be compressed yet (maxTokens below the
    // window, early in a sequence): the append goes ahead, and this stays due until it can.
    for (let l = 0; l < this.#cache.config.layers; l++) if (this.#appendedCount(l) < auto.window) return false;
    let report: CompressReport | undefined;
    try {
      // Copying pages shared with forks takes free pages: the pressure policy may make room.
      this.#cache.withPressure(this, () => {
        // A synchronous append's: a pressure listener may have started an async call on it.
        recheck?.();
        report = this.#compressNow(id, auto.options);
      });
    } catch (e) {
      // Still no room: the append goes ahead (it may need no new page) and this stays due.
      if (e instanceof OutOfPagesError) return false;
      if (e instanceof LukvError)
        e.message = `The automatic compression (autoCompress) due before this append failed, and nothing was appended: ${e.message}`;
      throw e;
    }
    this.#autoCompressions++;
    this.#sinceCheck = 0;
    const outer = this.#callbackBase;
    if (this.#inCallback++ === 0) this.#callbackBase = this.#turnBase;
    try {
      if (auto.onCompress) {
        this.#cache.noteCallback();
        auto.onCompress(report!);
      }
    } finally {
      if (--this.#inCallback === 0) this.#callbackBase = outer;
    }
    return true;
  }

  #appendedCount(l: number): number {
    if (!this.#appendedRows) {
      const id = this.#liveId();
      const rows = new Float64Array(this.#cache.config.layers);
      for (let k = 0; k < rows.length; k++) rows[k] = viaAddon(() => this.#cache.handle.appended(id, k));
      this.#appendedRows = rows;
    }
    return this.#appendedRows[l];
  }

  #queries(layer: number, queries: Float32Array | Uint16Array, scale: number, name = "queries"): { l: number; q: Float32Array; tokens: number; queryMax: number } {
    const { queryHeads, headDim, dtype } = this.#cache.config;
    const l = this.#layer(layer);
    const row = queryHeads * headDim;
    checkTensor(name, queries, row, "[tokens, queryHeads, headDim]", dtype);
    const tokens = queries.length / row;
    // Rows of async appends queued before this call count: they are in when its turn comes.
    const appended = this.#appendedCount(l) + this.#queuedRows[l];
    if (tokens > appended)
      throw new InvalidArgumentError(
        `Expected at most ${appended} tokens (the positions appended to layer ${l}) for ${name} but received ${tokens} tokens`,
      );
    const q = isUint16Array(queries)
      ? Float32Array.from(queries, dtype === "bf16" ? bf16BitsToF32 : f16BitsToF32)
      : queries;
    let queryMax = 0;
    if (this.#cache.config.checkFinite) {
      queryMax = scanTensor(name, queries, queryHeads, headDim, "f32", dtype);
      checkScores(name, l, headDim, queryMax, this.#bound("keyMax", l), scale);
      checkValueSum(l, appended, this.#bound("valueMax", l));
    }
    return { l, q, tokens, queryMax };
  }

  // `out` checked through the engine's accessors: its own (a subclass's) would run after the queries' checks.
  #out(out: unknown, queries: Float32Array | Uint16Array, prefix = ""): Float32Array | undefined {
    if (out === undefined) return undefined;
    if (!isFloat32Array(out)) throw invalid(`${prefix}out`, "Float32Array", out);
    const length = lengthOf(queries);
    if (lengthOf(out) !== length) throw invalid(`${prefix}out`, `a Float32Array of length ${length} (the queries' length)`, out);
    if (bufferOf(out) === bufferOf(queries) && overlapping(out, queries))
      throw invalid(`${prefix}out`, "an array that does not overlap the queries", out);
    return out;
  }

  // attend()'s options, each read once and before the queries are checked (a getter runs no later).
  #attendOptions(opts: AttendOptions | undefined): { scale: number; out: unknown } {
    if (opts !== undefined) {
      if (opts === null || typeof opts !== "object") throw invalid("options", "an options object", opts);
      knownOptions("options", opts, ATTEND_OPTION_NAMES);
    }
    const scale = opts?.scale, out = opts?.out;
    return { scale: scale == null ? 1 / Math.sqrt(this.#cache.config.headDim) : checkScale(scale), out };
  }

  /**
   * Attention of `queries` ([tokens, queryHeads, headDim]) over the kept keys/values of `layer`.
   * The queries are the last `tokens` positions appended to the layer; query i sees every kept
   * token whose position is at most its own. Returns [tokens, queryHeads, headDim] Float32Array.
   */
  attend(layer: number, queries: Float32Array | Uint16Array, opts?: AttendOptions): Float32Array {
    const id = this.id;
    const { scale, out: outGiven } = this.#attendOptions(opts);
    queries = ownRows(queries);
    const { l, q, queryMax } = this.#queries(layer, queries, scale);
    const out = this.#out(outGiven, queries);
    let result: Float32Array;
    try {
      result = this.#cache.handle.attend(id, l, q, scale, out);
    } catch (e) {
      rethrow(e);
    }
    this.commitQueries(l, queryMax);
    return result;
  }

  /**
   * Like attend(), computed off the main thread. The queries are copied at the call, and the call
   * sees the sequence as every call made before it left it: async calls on one sequence run in call
   * order, and synchronous calls throw SequenceBusyError until they have settled.
   */
  async attendAsync(layer: number, queries: Float32Array | Uint16Array, opts?: AttendOptions): Promise<Float32Array> {
    this.#liveId();
    const { scale, out: outGiven } = this.#attendOptions(opts);
    queries = ownRows(queries);
    const { l, q, queryMax } = this.#queries(layer, queries, scale);
    const out = this.#out(outGiven, queries);
    // A call that waits its turn keeps its own copy (the addon copies them when the work starts).
    const rows = this.#pending === 0 || q !== queries ? q : copyRows(q);
    return this.#enqueue(async () => {
      let result: Float32Array | null;
      try {
        result = await this.#cache.handle.attendAsync(this.#liveId(), l, rows, scale, out);
      } catch (e) {
        rethrow(e);
      }
      // The queries joined the observation window when the work ran; their bound joins now.
      this.commitQueries(l, queryMax);
      if (result === null) throw outGone("attendAsync");
      return result;
    });
  }

  /**
   * Evicts tokens for real: scores every kept token of every head, splits the kept total over the
   * heads (`allocation`, or explicit `budgets`), keeps the best tokens of each head plus its sink and
   * recent window, compacts them in order and returns the emptied pages to the pool. Invalid
   * options throw before anything changes.
   */
  compress(options: CompressOptions = {}): CompressReport {
    return this.#compressNow(this.id, options);
  }

  #compressNow(id: number, options: CompressOptions): CompressReport {
    if (options !== null && typeof options === "object") {
      knownOptions("options", options, COMPRESS_OPTION_NAMES);
      options = readOnce(options, COMPRESS_OPTION_NAMES) as CompressOptions;
    }
    const n = nativeCompressOptions(options, this.#cache.config, () => viaAddon(() => this.#cache.handle.lengths(id)));
    this.#checkScoring(n);
    try {
      return this.#cache.handle.compress(id, n);
    } catch (e) {
      rethrow(e);
    }
  }

  /**
   * Like compress(), off the main thread, in call order with the sequence's other async calls (see
   * attendAsync). Options are read at the call (arrays, the profile and the query statistics are
   * copied: changing them afterwards changes nothing), and what does not depend on the sequence is
   * checked then; what does (the head lengths that bound `budgets`, that `budget` and the LU-KV
   * budgets are fitted to) is read and checked when the call's turn comes, after the calls before it.
   */
  async compressAsync(options: CompressOptions = {}): Promise<CompressReport> {
    this.#liveId();
    if (options !== null && typeof options === "object") {
      knownOptions("options", options, COMPRESS_OPTION_NAMES);
      options = readOnce(options, COMPRESS_OPTION_NAMES) as CompressOptions;
    }
    nativeCompressOptions(options, this.#cache.config, undefined); // invalid options reject now
    const o = snapshotCompressOptions(options);
    return this.#enqueue(async () => {
      const id = this.#liveId();
      const n = nativeCompressOptions(o, this.#cache.config, () => viaAddon(() => this.#cache.handle.lengths(id)));
      this.#checkScoring(n);
      try {
        return await this.#cache.handle.compressAsync(id, n);
      } catch (e) {
        rethrow(e);
      }
    });
  }

  /**
   * The scores compress() would rank the tokens of `layer` by, without evicting: one Float32Array per
   * KV head (length = the head's kept tokens, in position order; higher = keep).
   */
  scores(layer: number, scorer: ScoreOptions["scorer"] = "snapkv", options: Omit<ScoreOptions, "scorer"> = {}): Float32Array[] {
    const id = this.id;
    const l = this.#layer(layer);
    if (options === null || typeof options !== "object") throw invalid("options", "an options object", options);
    knownOptions("options", options, SCORE_OPTION_NAMES.filter((k) => k !== "scorer"));
    const n = nativeScoreOptions({ ...options, scorer }, this.#cache.config, () => [l]);
    this.#checkScoring(n, [l]);
    try {
      return this.#cache.handle.scores(id, l, n);
    } catch (e) {
      rethrow(e);
    }
  }

  // With checkFinite: the scorers' float32 arithmetic over the given layers must not overflow.
  #checkScoring(n: NativeCompressOptions, layers?: number[]): void {
    const { checkFinite, queryHeads, headDim } = this.#cache.config;
    if (!checkFinite) return;
    const scorer = n.scorer;
    for (const l of layers ?? this.#keyMax.keys()) {
      if (scorer === "snapkv" || scorer === "tova") {
        const given = n.observation?.[l];
        const name = given ? `observationQueries[${l}]` : "queries";
        const queryMax = given ? scanTensor(name, given, queryHeads, headDim, "f32") : this.#queryMax[l];
        checkScores(name, l, headDim, queryMax, this.#keyMax[l], n.scale);
      } else if (scorer === "keydiff" || scorer === "knorm") {
        checkKeyNorms(l, headDim, this.#keyMax[l]);
      } else if (scorer === "expected-attention" && n.expected?.mean[l]) {
        const e = n.expected;
        const stats = { meanMax: e.meanMax[l], covarianceMax: e.useCovariance ? e.covarianceMax[l] : 0 };
        checkExpectedScores(l, headDim, stats, { keyMax: this.#keyMax[l], valueMax: this.#valueMax[l] }, n.scale, { norm: e.valueNorm, epsilon: e.epsilon });
      }
    }
  }

  /**
   * Starts (or stops) accumulating, in every attend() call, each kept token's attention weight
   * averaged over its GQA group: the "h2o" scorer's heavy-hitter mass. Off by default.
   */
  accumulateAttention(on = true): void {
    if (typeof on !== "boolean") throw invalid("on", "a boolean", on);
    const id = this.id;
    if (!on && this.#auto?.options.scorer === "h2o")
      throw new InvalidArgumentError('autoCompress compresses with scorer "h2o", which needs accumulateAttention() on: call seq.autoCompress(false) (or give it another scorer) first');
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
    knownOptions("options", options, ORACLE_OPTION_NAMES);
    const given = options.outputProjection;
    let wo: Float32Array[] | undefined;
    if (given !== undefined) {
      if (!Array.isArray(given) || given.length !== layers)
        throw invalid("outputProjection", `an array of ${layers} Float32Array (one W_O per layer)`, given);
      // Each element read once: the addon gets the arrays that were checked (a getter could return another).
      wo = Array.from(given as unknown[]) as Float32Array[];
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
    this.#oracleFrom = this.#appendedCount(0);
  }

  /** @internal Positions appended to layer 0 when the oracle's recording started (where its context ended). */
  get oracleFrom(): number | undefined {
    return this.#oracleFrom;
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
    return viaAddon(() => this.#cache.handle.readRows(id, this.#layer(layer), this.#head(head), false));
  }

  /** The kept values of (layer, head) as stored (dtype-rounded), [length, headDim] Float32Array. */
  values(layer: number, head: number): Float32Array {
    const id = this.id;
    return viaAddon(() => this.#cache.handle.readRows(id, this.#layer(layer), this.#head(head), true));
  }

  /**
   * The sequence as bytes that `cache.loadSequence()` restores, in this or another cache of the same
   * shape and dtype (any pageSize): every (layer, KV head)'s kept positions and K/V rows in the cache
   * dtype, bit for bit, the appended counts, the observation query rows, the H2O mass when
   * accumulateAttention is on, and the input-check bounds, under a versioned header and a CRC-32C
   * (docs/sequence-format.md). Not saved: a recording oracle (the restored sequence does not record)
   * and the autoCompress setting. A synchronous call: throws SequenceBusyError while async calls are
   * pending (use saveAsync).
   */
  save(): Buffer {
    const id = this.id;
    try {
      return this.#cache.handle.saveSequence(id, this.#bounds(), bufferConstants.MAX_LENGTH);
    } catch (e) {
      rethrow(e);
    }
  }

  /** Like save(), off the main thread, in call order with the sequence's other async calls: it saves the sequence as the calls before it left it. */
  async saveAsync(): Promise<Buffer> {
    this.#liveId();
    return this.#enqueue(async () => {
      try {
        return await this.#cache.handle.saveSequenceAsync(this.#liveId(), this.#bounds(), bufferConstants.MAX_LENGTH);
      } catch (e) {
        rethrow(e);
      }
    });
  }

  /**
   * save() written to the file `path`. An existing file is replaced as a whole: the bytes are
   * written to a temporary file beside it (`<path>.<pid>.<random>.tmp`, removed if the write fails)
   * that is then renamed over it, so readers and crashes see the old file or the new one, never a
   * part of the new one.
   */
  saveFile(path: string): void {
    checkSavePath(path);
    writeFileReplacing(path, this.save());
  }

  /**
   * saveAsync() written to the file `path`, replaced as saveFile() does. Async writes to one path
   * happen in call order (the file holds what the last call saved); a saveFile() or saveProfile()
   * to a path with one in flight throws InvalidArgumentError.
   */
  saveFileAsync(path: string): Promise<void> {
    try {
      checkSavePath(path);
      return writeFileReplacingAsync(path, this.saveAsync());
    } catch (e) {
      return Promise.reject(e);
    }
  }

  // Per layer: the largest |key|, |value| and |query| seen (saved with the sequence).
  #bounds(): Float64Array {
    const L = this.#cache.config.layers;
    const b = new Float64Array(L * 3);
    for (let l = 0; l < L; l++) [b[3 * l], b[3 * l + 1], b[3 * l + 2]] = [this.#keyMax[l], this.#valueMax[l], this.#queryMax[l]];
    return b;
  }

  /** @internal loadSequence: the bounds saved with the sequence. */
  restoreBounds(b: Float64Array): void {
    for (let l = 0; l < this.#keyMax.length; l++) [this.#keyMax[l], this.#valueMax[l], this.#queryMax[l]] = [b[3 * l], b[3 * l + 1], b[3 * l + 2]];
  }

  /**
   * A new sequence sharing this one's pages (copy-on-write), with its settings: H2O accumulation,
   * and autoCompress with the same options and onCompress (the fork's autoCompressions count from 0).
   */
  fork(): Sequence {
    const id = this.id;
    let child: Sequence;
    try {
      child = this.#cache.adopt(this.#cache.handle.fork(id));
    } catch (e) {
      rethrow(e);
    }
    child.#keyMax.set(this.#keyMax);
    child.#valueMax.set(this.#valueMax);
    child.#queryMax.set(this.#queryMax);
    // The autoCompress setting goes with the copy (a prompt forked per request stays bounded).
    child.#auto = this.#auto;
    child.#sinceCheck = this.#sinceCheck;
    return child;
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

// The widest pooling kernel the CUDA backend's SnapKV and TOVA scoring takes (native/cuda/scores.h).
const CUDA_MOST_POOL_KERNEL = 129;

// Options for compressions made later (autoCompress, onPressure) that this cache could never run:
// refused when they are given, not each time a compression is due.
function refuseFailingEveryTime(n: NativeCompressOptions, config: { layers: number; observationWindow: number; device: string }): void {
  checkObservationWindow(n, config);
  // The CUDA backend pools SnapKV's and TOVA's scores on the device, with a narrower kernel than the CPU.
  if (config.device === "cuda" && (n.scorer === "snapkv" || n.scorer === "tova") && n.pooling !== "none" && n.kernel > CUDA_MOST_POOL_KERNEL)
    throw invalid("kernel", `an odd number between 1 and ${CUDA_MOST_POOL_KERNEL} for ${n.scorer}'s pooling on device "cuda" (the CPU takes up to 1025)`, n.kernel);
}

// SnapKV scores with the last `window` query rows each layer remembers (TOVA with the last one):
// a cache that remembers fewer can never run such a compression for a layer without
// observationQueries.
function checkObservationWindow(n: NativeCompressOptions, config: { layers: number; observationWindow: number }): void {
  const need = n.scorer === "snapkv" ? n.window : n.scorer === "tova" ? 1 : 0;
  let remembered = false; // some layer scores with the rows the sequence remembers
  for (let l = 0; l < config.layers; l++) remembered ||= n.observation?.[l] === undefined;
  if (remembered && need > config.observationWindow)
    throw new InvalidArgumentError(
      `${n.scorer} scores with the last ${need} query row${need === 1 ? "" : "s"} of each layer but this cache remembers ${config.observationWindow} (its observationWindow): raise observationWindow${n.scorer === "snapkv" ? ", lower window" : ""}, or choose another scorer`,
    );
}

// A call into the addon whose errors become the library's classes (DisposedError for a sequence
// disposed meanwhile, by a listener or a callback, say).
function viaAddon<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    rethrow(e);
  }
}

// compress() options given inside another call's options (autoCompress, onPressure): names are
// checked against compress's, without ratio, budget and budgets, plus the call's `own` names, which
// are dropped; `fixed` goes on top.
// The options of autoCompress / onPressure, each read once: its own (`own`) and the compress options
// it passes on, with `fixed` (made from what was read) over them.
function embeddedCompressOptions(
  options: object,
  own: readonly string[],
  fixed: (given: Record<string, unknown>) => CompressOptions,
): { given: Record<string, unknown>; compress: CompressOptions } {
  const names = [...COMPRESS_OPTION_NAMES.filter((k) => k !== "ratio" && k !== "budget" && k !== "budgets"), ...own];
  knownOptions("options", options, names);
  const given = readOnce(options, names);
  return { given, compress: { ...Object.fromEntries(Object.entries(given).filter(([k]) => !own.includes(k))), ...fixed(given) } };
}

// Where checkAppend's scan writes (read at once, before anything else scans).
const appendScan = new Float64Array(4);

function checkTensor(name: string, a: unknown, row: number, shape: string, dtype: DType): void {
  const f32 = isFloat32Array(a);
  const u16 = isUint16Array(a);
  if (!f32 && !u16)
    throw invalid(name, dtype === "f32" ? "Float32Array" : `Float32Array or Uint16Array (raw ${dtype} bits)`, a);
  if (u16 && dtype === "f32") throw invalid(name, "Float32Array (the cache dtype is f32)", a);
  const len = (a as Float32Array | Uint16Array).length;
  if (len === 0 || len % row !== 0)
    throw invalid(name, `a non-empty length that is a multiple of ${row} (${shape})`, a);
  if (len / row > MAX_POSITIONS) throw invalid(name, `at most ${MAX_POSITIONS} tokens (${shape}; a sequence holds at most that many positions)`, a);
}

/** @internal Positions of a sequence are int32: at most 2^31 - 1 (docs/sequence-format.md). */
export const MAX_POSITIONS = 2 ** 31 - 1;
