// The tiny LM's byte-level BPE (format "lukv-bpe-1"), encoding exactly as tools/tiny-lm/bpe.py:
// pre-split the UTF-8 bytes by byte class, then merge each pre-token by lowest rank.
import * as fs from "fs";
import { BadModelError, jsonPreview } from "../errors";

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
  readonly #merges: Array<[number, number]>;
  readonly #cache = new Map<string, number[]>();

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
    this.#merges = [];
    for (let b = 0; b < 256; b++) this.#pieces.push(Uint8Array.of(b));
    merges.forEach((m: unknown, r: number) => {
      const ids = this.#pieces.length;
      if (!Array.isArray(m) || m.length !== 2 || !m.every((x) => Number.isInteger(x) && x >= 0 && x < ids))
        throw bad(`merges[${r}] is ${jsonPreview(m)}; expected two ids of earlier pieces (below ${ids})`);
      const [a, b] = m as [number, number];
      const pa = this.#pieces[a], pb = this.#pieces[b];
      if (pa.length + pb.length > MAX_PIECE_BYTES) throw bad(`merges[${r}] builds a piece of ${pa.length + pb.length} bytes, more than ${MAX_PIECE_BYTES}`);
      this.#merges.push([a, b]);
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
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (e) {
      throw new BadModelError(`${file}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "missing" : `cannot be read (${(e as Error).message})`}`);
    }
    let json: TokenizerJson;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new BadModelError(`${file}: not JSON (${(e as Error).message})`);
    }
    return new Tokenizer(json, file);
  }

  #encodePiece(bytes: Uint8Array): number[] {
    const key = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("latin1");
    const hit = this.#cache.get(key);
    if (hit) return hit;
    let ids = Array.from(bytes);
    while (ids.length >= 2) {
      let best = -1;
      for (let k = 0; k + 1 < ids.length; k++) {
        const r = this.#ranks.get(ids[k] * 0x100000 + ids[k + 1]);
        if (r !== undefined && (best < 0 || r < best)) best = r;
      }
      if (best < 0) break;
      // Replace every occurrence of the best pair, left to right, without overlap.
      const next: number[] = [];
      const [pa, pb] = this.#merges[best];
      for (let k = 0; k < ids.length; k++) {
        if (k + 1 < ids.length && ids[k] === pa && ids[k + 1] === pb) {
          next.push(256 + best);
          k++;
        } else next.push(ids[k]);
      }
      ids = next;
    }
    if (this.#cache.size < 200000) this.#cache.set(key, ids);
    return ids;
  }

  /** Token ids of `text` (no BOS; special tokens are never produced from text). */
  encode(text: string): number[] {
    const bytes = new TextEncoder().encode(text);
    const out: number[] = [];
    for (const [s, e] of preSplit(bytes)) for (const id of this.#encodePiece(bytes.subarray(s, e))) out.push(id);
    return out;
  }

  /** The UTF-8 bytes of `ids` (special tokens contribute nothing). */
  decodeBytes(ids: ArrayLike<number>): Uint8Array {
    let n = 0;
    for (let i = 0; i < ids.length; i++) n += this.#pieces[ids[i]]?.length ?? 0;
    const out = new Uint8Array(n);
    let at = 0;
    for (let i = 0; i < ids.length; i++) {
      const p = this.#pieces[ids[i]];
      if (p) {
        out.set(p, at);
        at += p.length;
      }
    }
    return out;
  }

  /** The text of `ids`; invalid UTF-8 becomes U+FFFD, and a leading U+FEFF is kept (decode(encode(s)) === s). */
  decode(ids: ArrayLike<number>): string {
    // TextDecoder drops a leading byte order mark unless told not to; it is text like any other here.
    return new TextDecoder("utf-8", { ignoreBOM: true }).decode(this.decodeBytes(ids));
  }
}
