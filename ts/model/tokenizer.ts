// The tiny LM's byte-level BPE (format "lukv-bpe-1"), encoding exactly as tools/tiny-lm/bpe.py:
// pre-split the UTF-8 bytes by byte class, then merge each pre-token by lowest rank.
import { BadModelError, invalid, jsonPreview } from "../errors";
import { readModelFile } from "./read-file";

const L = 0, D = 1, W = 2, P = 3;
const CLASS = new Uint8Array(256);
for (let b = 0; b < 256; b++) {
  if ((b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b >= 128) CLASS[b] = L;
  else if (b >= 48 && b <= 57) CLASS[b] = D;
  else if (b === 9 || b === 10 || b === 11 || b === 12 || b === 13 || b === 32) CLASS[b] = W;
  else CLASS[b] = P;
}

const isWordOrPunct = (b: number) => CLASS[b] === L || CLASS[b] === P;

/** Splits UTF-8 bytes into pre-tokens, as [start, end) offsets (the rules of bpe.py's pre_split). */
export function preSplit(bytes: Uint8Array): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const n = bytes.length;
  let i = 0;
  while (i < n) {
    const b = bytes[i];
    const c = CLASS[b];
    let j: number;
    if (b === 32 && i + 1 < n && isWordOrPunct(bytes[i + 1])) {
      // A space joins the word or punctuation run after it.
      const c2 = CLASS[bytes[i + 1]];
      j = i + 2;
      while (j < n && CLASS[bytes[j]] === c2) j++;
    } else if (c === D) {
      j = i + 1;
    } else if (c === L || c === P) {
      j = i + 1;
      while (j < n && CLASS[bytes[j]] === c) j++;
    } else {
      j = i + 1;
      while (j < n && CLASS[bytes[j]] === W) j++;
      // Leave a final space to start the next word.
      if (j < n && j - i >= 2 && bytes[j - 1] === 32 && isWordOrPunct(bytes[j])) j--;
    }
    out.push([i, j]);
    i = j;
  }
  return out;
}

/** What tokenizer.json holds. */
export interface TokenizerJson {
  format: string;
  vocab_size: number;
  special_tokens: Record<string, number>;
  merges: Array<[number, number]>;
  vocab?: string[];
}

/** Longest piece a merge may build, in bytes: real merges join a few bytes, a crafted file could double a piece per merge. */
export const MAX_PIECE_BYTES = 4096;
/** Most merges a tokenizer may have: ids and merge keys stay below 2^20. */
export const MAX_MERGES = (1 << 20) - 256;

/** Pre-tokens longer than this many bytes are encoded each time, never cached. */
const CACHE_MAX_PIECE_BYTES = 64;
/** The cache's size estimate: once its entries would pass this, it starts again empty. */
const CACHE_MAX_BYTES = 8 << 20;
/** Estimated bytes of one cache entry besides its key's bytes and 8 per id (map slot, string and array headers, slack). */
const CACHE_ENTRY_OVERHEAD = 160;
/** Heap keys are rank * POSITIONS + position (ranks below 2^20, so keys stay exact doubles). */
const POSITIONS = 2 ** 32;

/** #merge keeps its scratch arrays between calls while they hold at most this many bytes' symbols. */
const SCRATCH_KEEP = 4096;

/** Adds `key` to the min-heap heap[0, size); returns the new size. */
function heapPush(heap: Float64Array, size: number, key: number): number {
  let i = size;
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (heap[parent] <= key) break;
    heap[i] = heap[parent];
    i = parent;
  }
  heap[i] = key;
  return size + 1;
}

/** Removes the least key (heap[0]: read it first) from the min-heap heap[0, size); returns the new size. */
function heapPop(heap: Float64Array, size: number): number {
  const last = heap[--size];
  let i = 0;
  for (;;) {
    let c = 2 * i + 1;
    if (c >= size) break;
    if (c + 1 < size && heap[c + 1] < heap[c]) c++;
    if (heap[c] >= last) break;
    heap[i] = heap[c];
    i = c;
  }
  heap[i] = last;
  return size;
}

/** Byte-level BPE: ids 0..255 are bytes, id 256 + r is merges[r] joined; special tokens after. */
export class Tokenizer {
  /** Total ids, special tokens included. */
  readonly vocabSize: number;
  /** Special token ids by name, e.g. "<|bos|>". */
  readonly specialTokens: Readonly<Record<string, number>>;
  readonly bos: number | undefined;
  readonly eos: number | undefined;
  /** Bytes of every non-special id. */
  readonly #pieces: Uint8Array[];
  /** rank of the merge (a, b), keyed a * 2^20 + b */
  readonly #ranks = new Map<number, number>();
  /** Parts of merge r: ids #mergeLeft[r] and #mergeRight[r]. */
  readonly #mergeLeft: Int32Array;
  readonly #mergeRight: Int32Array;
  /** Ids of short pre-tokens already encoded, bounded by an estimate of their bytes (see CACHE_MAX_BYTES). */
  readonly #cache = new Map<string, number[]>();
  #cacheBytes = 0;
  /** #merge's scratch, reused between pieces up to SCRATCH_KEEP bytes. */
  #id = new Int32Array(0);
  #next = new Int32Array(0);
  #prev = new Int32Array(0);
  #heap = new Float64Array(0);

  /**
   * @throws BadModelError naming the problem when `json` is not a valid "lukv-bpe-1" tokenizer:
   * bad merges or vocab, special token ids other than the ids right after the pieces (one each),
   * or a vocab_size (when given) other than the number of ids the file defines.
   */
  constructor(json: TokenizerJson, source = "tokenizer") {
    const bad = (problem: string) => new BadModelError(`${source}: ${problem}`);
    if (json === null || typeof json !== "object" || Array.isArray(json)) throw bad(`expected a JSON object but found ${jsonPreview(json)}`);
    if (json.format !== "lukv-bpe-1") throw bad(`format ${jsonPreview(json.format)} is not "lukv-bpe-1"`);
    const merges: unknown = json.merges;
    if (!Array.isArray(merges) || merges.length > MAX_MERGES)
      throw bad(`merges must be an array of at most ${MAX_MERGES} pairs but is ${Array.isArray(merges) ? `${merges.length} long` : jsonPreview(merges)}`);
    const special: unknown = json.special_tokens;
    if (special === null || typeof special !== "object" || Array.isArray(special))
      throw bad(`special_tokens must be an object of ids but is ${jsonPreview(special)}`);
    const specialIds = Object.entries(special as Record<string, unknown>);
    for (const [name, id] of specialIds)
      if (!Number.isSafeInteger(id) || (id as number) < 0) throw bad(`special token ${jsonPreview(name)} has id ${jsonPreview(id)}; expected a non-negative integer`);
    this.#pieces = [];
    this.#mergeLeft = new Int32Array(merges.length);
    this.#mergeRight = new Int32Array(merges.length);
    for (let b = 0; b < 256; b++) this.#pieces.push(Uint8Array.of(b));
    merges.forEach((m: unknown, r: number) => {
      const ids = this.#pieces.length;
      if (!Array.isArray(m) || m.length !== 2 || !m.every((x) => Number.isInteger(x) && x >= 0 && x < ids))
        throw bad(`merges[${r}] is ${jsonPreview(m)}; expected two ids of earlier pieces (below ${ids})`);
      const [a, b] = m as [number, number];
      const pa = this.#pieces[a], pb = this.#pieces[b];
      if (pa.length + pb.length > MAX_PIECE_BYTES) throw bad(`merges[${r}] builds a piece of ${pa.length + pb.length} bytes, more than ${MAX_PIECE_BYTES}`);
      this.#mergeLeft[r] = a;
      this.#mergeRight[r] = b;
      this.#ranks.set(a * 0x100000 + b, r);
      const joined = new Uint8Array(pa.length + pb.length);
      joined.set(pa);
      joined.set(pb, pa.length);
      this.#pieces.push(joined);
    });
    const vocab: unknown = json.vocab;
    if (vocab !== undefined) {
      if (!Array.isArray(vocab)) throw bad(`vocab must be an array of hex strings but is ${jsonPreview(vocab)}`);
      // The file lists every piece in hex; a mismatch means merges and vocab disagree.
      vocab.forEach((hex: unknown, i: number) => {
        if (typeof hex !== "string" || i >= this.#pieces.length || Buffer.from(hex, "hex").compare(this.#pieces[i]) !== 0)
          throw bad(`vocab[${i}] does not match its merge`);
      });
    }
    // Special ids follow the pieces, one each: an id below would decode as that piece, one above
    // would leave a hole in the embedding rows.
    const pieces = this.#pieces.length, size = pieces + specialIds.length;
    const owner = new Map<number, string>();
    for (const [name, id] of specialIds as Array<[string, number]>) {
      if (id < pieces || id >= size)
        throw bad(`special token ${jsonPreview(name)} has id ${id}; the ${specialIds.length} special tokens take the ids ${pieces} to ${size - 1}, after the 256 bytes and ${merges.length} merges`);
      const other = owner.get(id);
      if (other !== undefined) throw bad(`special tokens ${jsonPreview(other)} and ${jsonPreview(name)} share the id ${id}`);
      owner.set(id, name);
    }
    if (json.vocab_size !== undefined && json.vocab_size !== size)
      throw bad(`vocab_size is ${jsonPreview(json.vocab_size)} but the file defines ${size} ids (256 bytes, ${merges.length} merges, ${specialIds.length} special tokens)`);
    this.specialTokens = Object.freeze(Object.fromEntries(specialIds) as Record<string, number>);
    this.vocabSize = size;
    this.bos = this.specialTokens["<|bos|>"];
    this.eos = this.specialTokens["<|eos|>"];
  }

  /** Loads tokenizer.json. @throws BadModelError when the file is missing or unreadable, not JSON or not a valid tokenizer. */
  static load(file: string): Tokenizer {
    const text = readModelFile(file).toString("utf8");
    let json: TokenizerJson;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new BadModelError(`${file}: not JSON (${(e as Error).message})`);
    }
    return new Tokenizer(json, file);
  }

  #encodePiece(bytes: Uint8Array): number[] {
    // Only short pieces are cached: words recur, a long run of letters rarely does, and caching it
    // would keep its bytes and ids for good.
    if (bytes.length > CACHE_MAX_PIECE_BYTES) return this.#merge(bytes);
    const key = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("latin1");
    const hit = this.#cache.get(key);
    if (hit) return hit;
    const ids = this.#merge(bytes);
    const cost = CACHE_ENTRY_OVERHEAD + key.length + 8 * ids.length;
    if (this.#cacheBytes + cost > CACHE_MAX_BYTES) {
      this.#cache.clear();
      this.#cacheBytes = 0;
    }
    this.#cache.set(key, ids);
    this.#cacheBytes += cost;
    return ids;
  }

  /**
   * BPE on one pre-token, with bpe.py's result: merge the lowest-ranked adjacent pair, all its
   * occurrences left to right without overlap, and repeat. Done in O(n log n) with a heap of
   * (rank, position) over a linked list of symbols. Each rank is one pair, and a merge only creates
   * pairs of higher rank (a merge's parts are older ids), so popping by rank, then by position,
   * replays the rounds exactly: the leftmost occurrence first, and an overlapping one (the second
   * "a a" of "a a a") is then stale and skipped.
   */
  #merge(bytes: Uint8Array): number[] {
    const n = bytes.length;
    if (n < 2) return Array.from(bytes);
    const ranks = this.#ranks, left = this.#mergeLeft, right = this.#mergeRight;
    if (this.#id.length < n) {
      const size = Math.max(n, 2 * this.#id.length, 64);
      this.#id = new Int32Array(size);
      this.#next = new Int32Array(size);
      this.#prev = new Int32Array(size);
      this.#heap = new Float64Array(3 * size);
    }
    // Symbol at position i (its first byte): id[i] (-1 once merged into the one before), next[i], prev[i].
    const id = this.#id, next = this.#next, prev = this.#prev;
    // A min-heap of rank * 2^32 + position: at most n - 1 pairs at the start, then two per merge.
    const heap = this.#heap;
    let size = 0;
    for (let i = 0; i < n; i++) {
      id[i] = bytes[i];
      next[i] = i + 1;
      prev[i] = i - 1;
    }
    for (let i = 0; i + 1 < n; i++) {
      const r = ranks.get(id[i] * 0x100000 + id[i + 1]);
      if (r !== undefined) size = heapPush(heap, size, r * POSITIONS + i);
    }
    while (size > 0) {
      const key = heap[0];
      size = heapPop(heap, size);
      const r = Math.floor(key / POSITIONS), i = key - r * POSITIONS;
      const j = next[i];
      // Stale: the pair at i has changed since it was pushed.
      if (id[i] !== left[r] || j >= n || id[j] !== right[r]) continue;
      id[i] = 256 + r;
      id[j] = -1;
      const k = next[j];
      next[i] = k;
      if (k < n) {
        prev[k] = i;
        const rk = ranks.get(id[i] * 0x100000 + id[k]);
        if (rk !== undefined) size = heapPush(heap, size, rk * POSITIONS + i);
      }
      const p = prev[i];
      if (p >= 0) {
        const rp = ranks.get(id[p] * 0x100000 + id[i]);
        if (rp !== undefined) size = heapPush(heap, size, rp * POSITIONS + p);
      }
    }
    const out: number[] = [];
    for (let i = 0; i < n; i = next[i]) out.push(id[i]);
    if (this.#id.length > SCRATCH_KEEP) {
      // Don't hold a long piece's scratch (36 bytes a byte) until the next call.
      this.#id = this.#next = this.#prev = new Int32Array(0);
      this.#heap = new Float64Array(0);
    }
    return out;
  }

  /**
   * Token ids of `text` (no BOS; special tokens are never produced from text). A lone surrogate in
   * `text` is encoded as U+FFFD, as TextEncoder does. Time grows as n log n with the length of `text`.
   * @throws InvalidArgumentError when `text` is not a string (null, a number, an object or
   * undefined is not read as its String() form); nothing is encoded.
   */
  encode(text: string): number[] {
    if (typeof text !== "string") throw invalid("text", "a string", text);
    const bytes = new TextEncoder().encode(text);
    const out: number[] = [];
    for (const [s, e] of preSplit(bytes)) for (const id of this.#encodePiece(bytes.subarray(s, e))) out.push(id);
    return out;
  }

  /**
   * The UTF-8 bytes of `ids` (special tokens contribute nothing).
   * @throws InvalidArgumentError when `ids` is not an array or typed array, or holds a value that
   * is not an id of this tokenizer (an integer from 0 to vocabSize - 1): the message names the
   * first such value and its index, and nothing is decoded.
   */
  decodeBytes(ids: ArrayLike<number>): Uint8Array {
    if (ids === null || typeof ids !== "object" || !Number.isSafeInteger(ids.length) || ids.length < 0)
      throw invalid("ids", "an array or typed array of token ids", ids);
    const pieces = this.#pieces, size = this.vocabSize;
    // The ids are read once: what is checked is what is decoded. Kept as they are checked (nothing
    // is allocated for a length before its ids are read: an array-like of length 2^33 holding no
    // ids is refused at its first).
    const checked: number[] = [];
    let n = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!Number.isInteger(id) || id < 0 || id >= size) throw invalid(`ids[${i}]`, `a token id (an integer from 0 to ${size - 1})`, id);
      checked.push(id);
      // Special tokens (the ids after the pieces) have no bytes.
      if (id < pieces.length) n += pieces[id].length;
    }
    const out = new Uint8Array(n);
    let at = 0;
    for (let i = 0; i < checked.length; i++) {
      const id = checked[i];
      if (id < pieces.length) {
        const p = pieces[id];
        out.set(p, at);
        at += p.length;
      }
    }
    return out;
  }

  /**
   * The text of `ids`; invalid UTF-8 becomes U+FFFD, and a leading U+FEFF is kept.
   * decode(encode(s)) === s for every well-formed string s. A lone surrogate (a UTF-16 code unit
   * 0xD800-0xDFFF without its pair) has no UTF-8 form: encode turns it into U+FFFD, so it comes back
   * as "\uFFFD" ("a\uD800b" decodes as "a\uFFFDb").
   * @throws InvalidArgumentError naming the first value of `ids` that is not an id of this
   * tokenizer and its index (see decodeBytes); nothing is decoded.
   */
  decode(ids: ArrayLike<number>): string {
    // TextDecoder drops a leading byte order mark unless told not to; it is text like any other here.
    return new TextDecoder("utf-8", { ignoreBOM: true }).decode(this.decodeBytes(ids));
  }
}
