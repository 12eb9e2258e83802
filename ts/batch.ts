// Batched steps: one call on each of several sequences of a cache, on one layer, as one native
// pass (KVCache.attendBatch / appendBatch and their async variants).
import type { KVCache, Sequence } from "./cache";
import { MAX_POSITIONS, rethrow, Sequence as SequenceClass } from "./cache";
import { DisposedError, LukvError, invalid, outGone } from "./errors";
import { checkScale, scanValuesBatch } from "./finite";
import { copyRows, integerInRange, isFloat32Array, isUint16Array, knownOptions, ownRows } from "./validate";
import { bufferOf, lengthOf, overlapping } from "./typed";

/** One sequence's part of `cache.attendBatch`. */
export interface AttendBatchItem {
  /** The sequence to attend over (of this cache; each sequence at most once per batch). */
  sequence: Sequence;
  /**
   * [tokens, queryHeads, headDim]: one decode row or a prefill chunk, as in `seq.attend`: the last
   * `tokens` positions appended to the layer. Float32Array, or Uint16Array of raw f16/bf16 bits.
   */
  queries: Float32Array | Uint16Array;
  /** Where to write this item's result (see AttendOptions.out). Default: a new array. */
  out?: Float32Array;
}

/** Options of `cache.attendBatch`. */
export interface AttendBatchOptions {
  /**
   * Softmax scale of every item (a batch is one layer of one model), a finite float32.
   * Default: 1 / sqrt(headDim).
   */
  scale?: number;
}

/** One sequence's part of `cache.appendBatch`. */
export interface AppendBatchItem {
  /** The sequence to grow (of this cache; each sequence at most once per batch). */
  sequence: Sequence;
  /** [tokens, kvHeads, headDim], as in `seq.append`; every item of a batch has the same array type. */
  keys: Float32Array | Uint16Array;
  /** [tokens, kvHeads, headDim], the same type and length as keys. */
  values: Float32Array | Uint16Array;
}

const ATTEND_ITEM_NAMES = ["sequence", "queries", "out"] as const;
const APPEND_ITEM_NAMES = ["sequence", "keys", "values"] as const;
const BATCH_OPTION_NAMES = ["scale"] as const;

type Checked<T> = { seqs: Sequence[]; ids: Int32Array; parts: T[] };

// The names of item i's fields in messages ("items[3].", "items[3].queries"), made once per index:
// the checks pass them on every call, and a string built per item and call showed in the profile
// of small batches.
const itemNames: { prefix: string; queries: string }[] = [];
function itemName(i: number): { prefix: string; queries: string } {
  let n = itemNames[i];
  if (n === undefined) {
    const prefix = `items[${i}].`;
    n = { prefix, queries: `${prefix}queries` };
    if (i < 4096) itemNames[i] = n;
  }
  return n;
}

// Up to this many items, a repeated sequence is found by a scan of the ones before (no map to build).
const SCAN_ITEMS = 32;

// The items as an array of objects naming distinct live sequences of `cache` (DisposedError for a
// disposed one). The native ids are read by idsOf() once the items' arrays have been read too.
function checkItems<I extends { sequence: Sequence }>(
  cache: KVCache,
  items: unknown,
  names: readonly string[],
): { items: I[]; seqs: Sequence[] } {
  void cache.handle;
  if (!Array.isArray(items)) throw invalid("items", "an array of batch items", items);
  const n = items.length;
  const seqs: Sequence[] = [];
  const seen = n > SCAN_ITEMS ? new Map<Sequence, number>() : undefined;
  for (let i = 0; i < n; i++) {
    const item: unknown = items[i];
    if (item === null || typeof item !== "object") throw invalid(`items[${i}]`, "an item object", item);
    for (const key in item) if (!names.includes(key)) knownOptions(`items[${i}]`, item, names);
    const seq = (item as { sequence?: unknown }).sequence;
    if (!(seq instanceof SequenceClass) || seq.cache !== cache)
      throw invalid(`items[${i}].sequence`, "a Sequence of this cache", seq);
    if (seq.disposed) throw new DisposedError(`Sequence of items[${i}] was used after dispose()`);
    const first = seen ? seen.get(seq) ?? -1 : seqs.indexOf(seq);
    if (first >= 0)
      throw invalid(`items[${i}].sequence`, `a sequence not already in the batch (it is items[${first}].sequence)`, seq);
    seen?.set(seq, i);
    seqs.push(seq);
  }
  return { items: items as I[], seqs };
}

// Each sequence's native id through `idOf` (the sync calls' busy check, or none for queued work),
// read after every item's arrays: a getter may have disposed a sequence or queued a call on it.
function idsOf(seqs: readonly Sequence[], idOf: (seq: Sequence) => number): Int32Array {
  const ids = new Int32Array(seqs.length);
  for (let i = 0; i < seqs.length; i++) ids[i] = idOf(seqs[i]);
  return ids;
}

// Reads every item (`read`) before checking any (`check`): a getter of a later item could change an
// earlier item's arrays after its checks. A getter that throws stops the reading there, and its
// error comes after the checks of the items before it, as item by item.
function readThenCheck<R, P>(n: number, read: (i: number) => R, check: (item: R, i: number, items: R[]) => P): { read: R[]; parts: P[] } {
  const items: R[] = [];
  let failed: { error: unknown } | undefined;
  for (let i = 0; i < n && !failed; i++) {
    try {
      items.push(read(i));
    } catch (error) {
      failed = { error };
    }
  }
  const parts = items.map(check);
  if (failed) throw failed.error;
  return { read: items, parts };
}

function batchScale(cache: KVCache, opts: AttendBatchOptions | undefined): number {
  if (opts !== undefined) {
    if (opts === null || typeof opts !== "object") throw invalid("options", "an options object", opts);
    knownOptions("options", opts, BATCH_OPTION_NAMES);
  }
  if (opts?.scale == null) return 1 / Math.sqrt(cache.config.headDim);
  return checkScale(opts.scale);
}

type AttendPart = { q: Float32Array; out?: Float32Array; queryMax: number };

// False when no output shares its buffer with another output or with any queries (then nothing
// can overlap); true sends the items to the exact check.
function sharesBuffer(list: readonly AttendBatchItem[]): boolean {
  const buffers = new Set<ArrayBufferLike>();
  for (const item of list) {
    if (item.out === undefined) continue;
    const buffer = bufferOf(item.out);
    if (buffers.has(buffer)) return true;
    buffers.add(buffer);
  }
  return list.some((item) => buffers.has(bufferOf(item.queries)));
}

function checkAttendBatch(
  cache: KVCache,
  layer: unknown,
  items: unknown,
  opts: AttendBatchOptions | undefined,
  idOf: (seq: Sequence) => number,
): Checked<AttendPart> & { l: number; scale: number; list: AttendBatchItem[] } {
  const l = integerInRange("layer", layer, 0, cache.config.layers - 1);
  const scale = batchScale(cache, opts);
  const { items: given, seqs } = checkItems<AttendBatchItem>(cache, items, ATTEND_ITEM_NAMES);
  // Each item's arrays are read once: the checks below and the call use what was read.
  const { read: list, parts } = readThenCheck(
    given.length,
    (i): AttendBatchItem => {
      const { queries, out } = given[i];
      return out === undefined ? { sequence: seqs[i], queries: ownRows(queries) } : { sequence: seqs[i], queries: ownRows(queries), out };
    },
    ({ queries, out }, i): AttendPart => {
      const name = itemName(i);
      return seqs[i].checkAttend(l, queries, out, scale, name.prefix, name.queries);
    },
  );
  // An item's output must not overlap another item's queries or output: the batch reads every
  // item's queries after it wrote outputs (the observation window) and writes all outputs. Only
  // arrays over one buffer can overlap: grouped by buffer, the check is linear in the items (and
  // when every array has a buffer of its own, as usual, one pass over a set finds that).
  if (list.some((item) => item.out !== undefined) && sharesBuffer(list)) {
    const byBuffer = new Map<ArrayBufferLike, { i: number; what: string; a: ArrayBufferView }[]>();
    list.forEach((item, i) => {
      for (const [what, a] of [["queries", item.queries], ["out", item.out]] as const) {
        if (a === undefined) continue;
        const buffer = bufferOf(a), group = byBuffer.get(buffer);
        if (group) group.push({ i, what, a });
        else byBuffer.set(buffer, [{ i, what, a }]);
      }
    });
    for (const group of byBuffer.values()) {
      if (group.length < 2) continue;
      for (const o of group) {
        if (o.what !== "out") continue;
        for (const x of group) {
          if (x.i === o.i) continue;
          if (overlapping(o.a, x.a)) throw invalid(`items[${o.i}].out`, `an array that does not overlap items[${x.i}].${x.what}`, o.a);
        }
      }
    }
  }
  return { l, scale, seqs, ids: idsOf(seqs, idOf), parts, list };
}

// The common batch in its fast form, the arguments of one native call: every item an object with
// only known keys, naming a distinct idle live sequence of the cache, with Float32Array queries of
// a row count its layer can take and a Float32Array out of their length, if any. The per-item
// checks left (the queries' values against the scores' bound, and the outputs' overlaps) run in the
// addon, which has the arrays in hand. Undefined when anything differs: checkAttendBatch then
// checks the batch and names what is wrong.
type QuickBatch = {
  l: number;
  scale: number;
  seqs: Sequence[];
  ids: Int32Array;
  queries: Float32Array[];
  outs: Float32Array[];
  keyMax: Float64Array | null;
  queryMax: Float64Array;
  /** The items as read (each field read once), for the full checks after a refusal. */
  items: () => AttendBatchItem[];
};

// The fast path's typed arrays, one set per batch size: made once, since new ones cost more than
// the checks they carry (their buffers are allocated and swept). They are filled after every item
// was read (a getter of an item can run any code, another batch's included), the addon reads ids
// and keyMax and writes queryMax during the call, and the batch reads queryMax right after it.
const quickArrays: { ids: Int32Array; keyMax: Float64Array; queryMax: Float64Array }[] = [];
function quickArraysOf(n: number): { ids: Int32Array; keyMax: Float64Array; queryMax: Float64Array } {
  return (quickArrays[n] ??= { ids: new Int32Array(n), keyMax: new Float64Array(n), queryMax: new Float64Array(n) });
}

// Undefined when the batch is not of that form before its items are read (or an item is not an
// object of known keys); the items as read (each field read once) when it is not after: the full
// checks then run on those, so no getter runs twice and what is checked is what runs.
function quickAttendBatch(cache: KVCache, layer: unknown, items: unknown, opts: AttendBatchOptions | undefined): QuickBatch | AttendBatchItem[] | undefined {
  const { layers, queryHeads, headDim, checkFinite } = cache.config;
  if (!Number.isInteger(layer) || (layer as number) < 0 || (layer as number) >= layers || !Array.isArray(items)) return undefined;
  const l = layer as number;
  const scale = batchScale(cache, opts);
  const n = items.length;
  if (n === 0 || n > SCAN_ITEMS) return undefined;
  const row = queryHeads * headDim;
  // First every item is read, once: the checks below then see what the items' getters left.
  const seqs: Sequence[] = new Array(n), queries: (Float32Array | Uint16Array)[] = new Array(n), given: (Float32Array | undefined)[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const item: unknown = items[i];
    if (item === null || typeof item !== "object") return undefined;
    for (const key in item) if (key !== "sequence" && key !== "queries" && key !== "out") return undefined;
    try {
      ({ sequence: seqs[i], queries: queries[i], out: given[i] } = item as AttendBatchItem);
      queries[i] = ownRows(queries[i]);
    } catch {
      return undefined; // a getter that throws: the item-by-item checks meet it in their order
    }
  }
  const read = () => seqs.map((sequence, i): AttendBatchItem => (given[i] !== undefined ? { sequence, queries: queries[i], out: given[i] } : { sequence, queries: queries[i] }));
  for (let i = 0; i < n; i++) {
    const seq = seqs[i], q = queries[i], out = given[i];
    if (!(seq instanceof SequenceClass) || seq.cache !== cache || !isFloat32Array(q)) return read();
    if (out !== undefined && !(isFloat32Array(out) && lengthOf(out) === q.length)) return read();
    for (let j = 0; j < i; j++) if (seqs[j] === seq) return read();
  }
  const scratch = quickArraysOf(n), ids = scratch.ids, keyMax = checkFinite ? scratch.keyMax : null;
  const outs: Float32Array[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const seq = seqs[i];
    if (seq.disposed || seq.pending > 0) return read();
    const bound = seq.quickAttend(l, queries[i] as Float32Array, row);
    if (bound < 0) return read();
    if (keyMax) keyMax[i] = bound;
    ids[i] = seq.id;
    outs[i] = given[i] ?? new Float32Array(queries[i].length);
  }
  return { l, scale, seqs, ids, queries: queries as Float32Array[], outs, keyMax, queryMax: scratch.queryMax, items: read };
}

// The addon refused a fast batch before anything ran: the full checks of the items as read name
// what is wrong (the addon's own error stands if they find nothing).
function refused(e: unknown, cache: KVCache, layer: number, quick: QuickBatch, idOf: (seq: Sequence) => number): never {
  if ((e as { code?: unknown })?.code === "ERR_LUKV_INVALID_ARGUMENT") checkAttendBatch(cache, layer, quick.items(), { scale: quick.scale }, idOf);
  rethrow(e);
}

/** See KVCache.attendBatch. */
export function attendBatch(cache: KVCache, layer: number, given: readonly AttendBatchItem[], opts?: AttendBatchOptions): Float32Array[] {
  const quick = quickAttendBatch(cache, layer, given, opts);
  if (quick && !Array.isArray(quick)) {
    const { l, scale, seqs, ids, queries, outs, keyMax, queryMax } = quick;
    try {
      cache.handle.attendBatch(l, ids, queries, scale, outs, keyMax, queryMax);
    } catch (e) {
      refused(e, cache, layer, quick, (s) => s.id);
    }
    if (keyMax) for (let i = 0; i < seqs.length; i++) seqs[i].commitQueries(l, queryMax[i]);
    return outs;
  }
  const { l, scale, seqs, ids, parts } = checkAttendBatch(cache, layer, quick ?? given, opts, (s) => s.id);
  if (parts.length === 0) return [];
  // The addon writes into one array per item: the caller's, or a new one.
  const outs = parts.map((p) => p.out ?? new Float32Array(p.q.length));
  try {
    cache.handle.attendBatch(l, ids, parts.map((p) => p.q), scale, outs);
  } catch (e) {
    rethrow(e);
  }
  parts.forEach((p, i) => seqs[i].commitQueries(l, p.queryMax));
  return outs;
}

/** See KVCache.attendBatchAsync. */
export async function attendBatchAsync(
  cache: KVCache,
  layer: number,
  given: readonly AttendBatchItem[],
  opts?: AttendBatchOptions,
): Promise<Float32Array[]> {
  const quick = quickAttendBatch(cache, layer, given, opts);
  if (quick && !Array.isArray(quick)) {
    // No item's sequence has calls pending, so the work starts now: the addon checks the queries
    // and copies them at this call, as attendBatch's do.
    const { l, scale, seqs, ids, queries, outs, keyMax, queryMax } = quick;
    let work: Promise<boolean>;
    try {
      work = cache.handle.attendBatchAsync(l, ids, queries, scale, outs, keyMax, queryMax);
    } catch (e) {
      refused(e, cache, layer, quick, (s) => s.nativeId());
    }
    const maxima = keyMax && queryMax.slice();
    return SequenceClass.enqueueAll(seqs, async () => {
      let written: boolean;
      try {
        written = await work;
      } catch (e) {
        rethrow(e);
      }
      // The queries joined the observation windows when the work ran; their bounds join now.
      if (maxima) for (let i = 0; i < seqs.length; i++) seqs[i].commitQueries(l, maxima[i]);
      if (!written) throw outGone("attendBatchAsync");
      return outs;
    });
  }
  const { l, scale, seqs, parts, list } = checkAttendBatch(cache, layer, quick ?? given, opts, (s) => s.nativeId());
  if (parts.length === 0) return [];
  // A batch that waits its turn keeps its own copy of the queries (the addon copies them when the work starts).
  const waits = seqs.some((s) => s.pending > 0);
  const queries = parts.map((p, i) => (waits && p.q === list[i].queries ? copyRows(p.q) : p.q));
  // The addon writes into one array per item when the work has run: the caller's, or a new one.
  const outs = parts.map((p) => p.out ?? new Float32Array(p.q.length));
  return SequenceClass.enqueueAll(seqs, async () => {
    let written: boolean;
    try {
      const ids = Int32Array.from(seqs, (s) => s.nativeId());
      written = await cache.handle.attendBatchAsync(l, ids, queries, scale, outs);
    } catch (e) {
      rethrow(e);
    }
    // The queries joined the observation windows when the work ran; their bounds join now.
    parts.forEach((p, i) => seqs[i].commitQueries(l, p.queryMax));
    if (!written) throw outGone("attendBatchAsync");
    return outs;
  });
}

type AppendPart = { keys: Float32Array | Uint16Array; values: Float32Array | Uint16Array; checked: { keyMax: number; valueMax: number; tokens: number } };

// The common batch's rows (every item's keys and values Float32Arrays, or every one raw 16-bit
// words, of whole rows, none empty, values as long as keys), their values scanned in one native
// call instead of two per item. When anything differs or any value is bad, the rows as read: the
// checks item by item then name the first problem, as they always did (undefined when a getter
// throws: they meet it in their order).
function quickAppendParts(
  cache: KVCache,
  list: readonly AppendBatchItem[],
): { parts: AppendPart[] } | { read: { keys: Float32Array | Uint16Array; values: Float32Array | Uint16Array }[] } | undefined {
  const { kvHeads, headDim, dtype, checkFinite } = cache.config;
  const row = kvHeads * headDim, n = list.length;
  if (n === 0) return { parts: [] };
  // Every item's rows read once, first (the item-by-item checks then use them too).
  const rows: (Float32Array | Uint16Array)[] = new Array(2 * n);
  for (let i = 0; i < n; i++) {
    try {
      ({ keys: rows[2 * i], values: rows[2 * i + 1] } = list[i]);
      rows[2 * i] = ownRows(rows[2 * i]);
      rows[2 * i + 1] = ownRows(rows[2 * i + 1]);
    } catch {
      return undefined; // a getter that throws: the item-by-item checks meet it in their order
    }
  }
  const read = () => Array.from({ length: n }, (_, i) => ({ keys: rows[2 * i], values: rows[2 * i + 1] }));
  const raw = isUint16Array(rows[0]);
  if (raw && dtype === "f32") return { read: read() };
  for (let i = 0; i < n; i++) {
    const keys = rows[2 * i], values = rows[2 * i + 1];
    if (raw ? !(isUint16Array(keys) && isUint16Array(values)) : !(isFloat32Array(keys) && isFloat32Array(values))) return { read: read() };
    if (keys.length === 0 || keys.length % row !== 0 || values.length !== keys.length || keys.length / row > MAX_POSITIONS) return { read: read() };
  }
  const scan = checkFinite ? scanValuesBatch(rows, raw, dtype) : undefined;
  if (scan) for (let k = 0; k < 2 * n; k++) if (scan[2 * k] >= 0) return { read: read() };
  const parts: AppendPart[] = new Array(n);
  for (let i = 0; i < n; i++)
    parts[i] = { keys: rows[2 * i], values: rows[2 * i + 1], checked: { keyMax: scan ? scan[4 * i + 1] : 0, valueMax: scan ? scan[4 * i + 3] : 0, tokens: rows[2 * i].length / row } };
  return { parts };
}

function checkAppendBatch(cache: KVCache, layer: unknown, given: unknown, idOf: (seq: Sequence) => number): Checked<AppendPart> & { l: number } {
  const l = integerInRange("layer", layer, 0, cache.config.layers - 1);
  const { items: list, seqs } = checkItems<AppendBatchItem>(cache, given, APPEND_ITEM_NAMES);
  const quick = quickAppendParts(cache, list);
  if (quick && "parts" in quick) return { l, seqs, ids: idsOf(seqs, idOf), parts: quick.parts };
  // Read once: the rows the quick form read, or the items' now; the checks and the call use these.
  const { parts } = readThenCheck(
    list.length,
    (i) => (quick ? quick.read[i] : { keys: ownRows(list[i].keys), values: ownRows(list[i].values) }),
    ({ keys, values }, i, items): AppendPart => {
      const checked = seqs[i].checkAppend(keys, values, itemName(i).prefix);
      const f32 = isFloat32Array(items[0].keys);
      if (i > 0 && isFloat32Array(keys) !== f32)
        throw invalid(`items[${i}].keys`, `the same array type as items[0].keys (${f32 ? "Float32Array" : "Uint16Array"})`, keys);
      return { keys, values, checked };
    },
  );
  return { l, seqs, ids: idsOf(seqs, idOf), parts };
}

// The append itself, through the cache's pressure policy (on out-of-pages it may compress other
// sequences and retry; the batch goes in whole or not at all).
function runAppend(cache: KVCache, l: number, seqs: Sequence[], ids: Int32Array, parts: AppendPart[], callbacks: number, recheck?: () => void): void {
  cache.withPressure(seqs[0], () => {
    recheck?.();
    // Rows that user code (an onCompress, a pressure listener) could have changed since they were checked.
    if (cache.callbacksStarted !== callbacks)
      parts.forEach((p, i) => (p.checked = seqs[i].recheckAppend(p.keys, p.values, itemName(i).prefix, p.checked)));
    try {
      cache.handle.appendBatch(l, ids, parts.map((p) => p.keys), parts.map((p) => p.values));
    } catch (e) {
      rethrow(e);
    }
  });
}

/**
 * Each item's due automatic compression, in item order, as the item's own append would run it. One
 * that fails throws naming its item; those of the items before it are done (each complete).
 */
function compressDue(cache: KVCache, seqs: Sequence[], ids: Int32Array | readonly number[], recheck?: () => void): void {
  let callbacks = cache.callbacksStarted;
  seqs.forEach((s, i) => {
    // A synchronous batch's: an earlier item's onCompress may have started an async call on any
    // of its sequences, and a pressure listener one on this item's before a retry. Only user code
    // can, so the items are checked again only after some ran (checking every item before each
    // made a batch of n items cost n^2).
    if (recheck && cache.callbacksStarted !== callbacks) {
      recheck();
      callbacks = cache.callbacksStarted;
    }
    ofItem(i, () => s.autoCompressDue(ids[i], recheck && (() => void s.id)));
  });
}

/** Runs `fn` for item `i`; a lukv error it throws names the item's sequence. */
function ofItem<T>(i: number, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof LukvError) e.message = `items[${i}].sequence: ${e.message}`;
    throw e;
  }
}

/** See KVCache.appendBatch. */
export function appendBatch(cache: KVCache, layer: number, items: readonly AppendBatchItem[]): void {
  const { l, seqs, ids, parts } = checkAppendBatch(cache, layer, items, (s) => s.id);
  if (parts.length === 0) return;
  // An onCompress or a pressure listener may start an async call on a sequence of the batch: busy
  // checks before each compression and each attempt of the append.
  const recheck = () => seqs.forEach((s, i) => ofItem(i, () => s.id));
  const callbacks = cache.callbacksStarted;
  compressDue(cache, seqs, ids, recheck);
  runAppend(cache, l, seqs, ids, parts, callbacks, recheck);
  parts.forEach((p, i) => seqs[i].appended_(l, p.checked));
}

/** See KVCache.appendBatchAsync. */
export function appendBatchAsync(cache: KVCache, layer: number, items: readonly AppendBatchItem[]): Promise<void> {
  let checked: ReturnType<typeof checkAppendBatch>;
  try {
    checked = checkAppendBatch(cache, layer, items, (s) => s.nativeId());
  } catch (e) {
    return Promise.reject(e);
  }
  const { l, seqs, parts } = checked;
  if (parts.length === 0) return Promise.resolve();
  // The rows are read now: a batch that waits its turn keeps its own copy.
  const waits = seqs.some((s) => s.pending > 0);
  const own = waits ? parts.map((p) => ({ ...p, keys: copyRows(p.keys), values: copyRows(p.values) })) : parts;
  // Calls made after this one see these rows as appended (their checks count them).
  const queued = parts.map((p, i) => seqs[i].queueAppend(l, p.checked));
  return SequenceClass.enqueueAll(seqs, async () => {
    try {
      for (const q of queued) q.unqueue();
      const ids = Int32Array.from(seqs, (s) => s.nativeId());
      const callbacks = cache.callbacksStarted;
      compressDue(cache, seqs, ids);
      runAppend(cache, l, seqs, ids, own, callbacks);
      own.forEach((p, i) => seqs[i].appended_(l, p.checked));
    } finally {
      for (const q of queued) q.release();
    }
  });
}
