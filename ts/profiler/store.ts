// A profiler's recorded samples on disk: manifest.json plus one little-endian float32 file per sample.
import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readFileSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import { endianness } from "node:os";
import { join } from "node:path";
import { BadProfileError, jsonPreview } from "../errors";
import { largestBuffer, readIntoSync, writeAllSync } from "../sequence-file";
import type { ScorerName } from "../compress";
import type { FlatSample, ProfilerScope } from "./sample";

/** The `format` tag of a samples manifest. */
export const SAMPLES_FORMAT = "lukv-profiler-samples";
/** The manifest version this lukv writes and the newest it reads. */
export const SAMPLES_FORMAT_VERSION = 1;
/** The most cells (layers × kvHeads × grid) a profiler's table holds: 2^27 doubles, 1 GiB. */
export const MAX_PROFILE_CELLS = 2 ** 27;
const MANIFEST = "manifest.json";
const SAMPLE_FILE = /^sample-\d{6,}\.f32$/;

/** The profiler options a manifest records. */
export interface StoredOptions {
  layers: number;
  kvHeads: number;
  scorer: ScorerName;
  scorerOptions: Record<string, unknown>;
  sink: number;
  window: number;
  grid: number;
  scope: ProfilerScope;
  model?: string;
  dataset?: string;
}

/** A sample as kept by the profiler. */
export interface StoredSample extends FlatSample {
  decodeSteps?: number;
}

interface ManifestSample {
  file: string;
  lengths: number[];
  decodeSteps?: number;
}

const LITTLE = endianness() === "LE";

/** Float32 values as little-endian bytes (a copy only on big-endian hosts). */
function leBytes(a: Float32Array): Uint8Array {
  if (LITTLE) return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const out = new Uint8Array(a.byteLength);
  const view = new DataView(out.buffer);
  for (let i = 0; i < a.length; i++) view.setFloat32(4 * i, a[i], true);
  return out;
}

/** Fills `a` with the little-endian float32 values at `position` of file `fd`; the bytes read. */
function readFloats(fd: number, a: Float32Array, position: number): number {
  const got = readIntoSync(fd, new Uint8Array(a.buffer, a.byteOffset, a.byteLength), position);
  if (!LITTLE) {
    const view = new DataView(a.buffer, a.byteOffset, a.byteLength);
    for (let i = 0; i < a.length; i++) a[i] = view.getFloat32(4 * i, true); // in place: value i only reads its own bytes
  }
  return got;
}

function writeAtomic(path: string, data: string | Uint8Array): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

function previousFiles(dir: string): string[] {
  try {
    const doc = JSON.parse(readFileSync(join(dir, MANIFEST), "utf8")) as { format?: unknown; samples?: unknown };
    if (doc.format !== SAMPLES_FORMAT || !Array.isArray(doc.samples)) return [];
    return doc.samples.map((s: { file?: unknown }) => s?.file).filter((f): f is string => typeof f === "string" && SAMPLE_FILE.test(f));
  } catch {
    return [];
  }
}

/**
 * Writes the samples, then the manifest (through a rename, so a reader sees the old set or the
 * new one), then removes sample files of an earlier save that the new manifest no longer lists.
 */
export function writeSamples(dir: string, options: StoredOptions, samples: readonly StoredSample[]): void {
  mkdirSync(dir, { recursive: true });
  const before = previousFiles(dir);
  const entries: ManifestSample[] = samples.map((s, i) => {
    const file = `sample-${String(i).padStart(6, "0")}.f32`;
    // In pieces (Node writes less than 2 GiB a call): the scores, then the oracle.
    const fd = openSync(join(dir, file), "w");
    try {
      writeAllSync(fd, leBytes(s.scores), 0);
      writeAllSync(fd, leBytes(s.oracle), s.scores.byteLength);
    } finally {
      closeSync(fd);
    }
    const entry: ManifestSample = { file, lengths: Array.from(s.lengths) };
    if (s.decodeSteps !== undefined) entry.decodeSteps = s.decodeSteps;
    return entry;
  });
  const manifest = { format: SAMPLES_FORMAT, version: SAMPLES_FORMAT_VERSION, ...options, samples: entries };
  writeAtomic(join(dir, MANIFEST), JSON.stringify(manifest, null, 1) + "\n");
  const kept = new Set(entries.map((e) => e.file));
  for (const f of before) {
    if (kept.has(f)) continue;
    try {
      unlinkSync(join(dir, f));
    } catch {
      // already gone
    }
  }
}

/** The largest head length (and count) the Int32Array fields that hold them can take. */
const INT32_MAX = 2 ** 31 - 1;

function isCount(x: unknown): x is number {
  return typeof x === "number" && Number.isInteger(x) && x >= 0 && x <= INT32_MAX;
}

/** A saved samples directory: its options, and its samples read one at a time. */
export interface SampleDirectory {
  options: StoredOptions;
  count: number;
  /** Reads sample i from its file. @throws BadProfileError when the file's size does not match its lengths. */
  read(i: number): StoredSample;
}

/**
 * Opens what {@link writeSamples} wrote: the manifest is read and checked now (the options only
 * for their JSON types — the Profiler constructor validates them), each sample file when read.
 * @throws BadProfileError naming the file and the problem; file-system errors as thrown by Node.
 */
export function openSamples(dir: string): SampleDirectory {
  const path = join(dir, MANIFEST);
  if (!existsSync(path)) throw new BadProfileError(`${dir} holds no ${MANIFEST}: expected a directory written by profiler.save()`);
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  } catch (e) {
    throw new BadProfileError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
  const bad = (what: string) => new BadProfileError(`${path}: ${what}`);
  if (doc === null || typeof doc !== "object" || doc.format !== SAMPLES_FORMAT) {
    throw bad(`expected "format": "${SAMPLES_FORMAT}" (a directory written by profiler.save())`);
  }
  if (!isCount(doc.version) || doc.version < 1) throw bad(`"version" must be a positive integer`);
  if (doc.version > SAMPLES_FORMAT_VERSION) {
    throw bad(`version ${doc.version} is newer than this lukv reads (up to ${SAMPLES_FORMAT_VERSION}): upgrade lukv`);
  }
  const { layers, kvHeads } = doc;
  if (!isCount(layers) || !isCount(kvHeads) || layers === 0 || kvHeads === 0) throw bad(`"layers" and "kvHeads" must be positive integers of at most ${INT32_MAX}`);
  if (!Array.isArray(doc.samples)) throw bad(`"samples" must be an array`);
  const H = layers * kvHeads;
  if (H > MAX_PROFILE_CELLS) throw bad(`layers × kvHeads is ${layers} × ${kvHeads} = ${H}, more than the ${MAX_PROFILE_CELLS} heads a profile holds`);
  const entries = (doc.samples as unknown[]).map((entry, i) => {
    const e = entry as Partial<ManifestSample> | null;
    if (e === null || typeof e !== "object" || typeof e.file !== "string" || !SAMPLE_FILE.test(e.file)) {
      throw bad(`samples[${i}].file must be a file name like "sample-000000.f32"`);
    }
    const lens = e.lengths;
    if (!Array.isArray(lens) || lens.length !== H) throw bad(`samples[${i}].lengths must be ${H} positive integers (layers ${layers} × kvHeads ${kvHeads})`);
    const h = lens.findIndex((t) => !isCount(t) || t === 0);
    if (h >= 0) throw bad(`samples[${i}].lengths[${h}] must be a positive integer of at most ${INT32_MAX} (a head's length), got ${jsonPreview(lens[h])}`);
    if (e.decodeSteps !== undefined && !isCount(e.decodeSteps)) throw bad(`samples[${i}].decodeSteps must be a non-negative integer of at most ${INT32_MAX}, got ${jsonPreview(e.decodeSteps)}`);
    return { file: e.file, lengths: Int32Array.from(lens), decodeSteps: e.decodeSteps };
  });
  const options = {
    layers,
    kvHeads,
    scorer: doc.scorer,
    scorerOptions: doc.scorerOptions ?? {},
    sink: doc.sink,
    window: doc.window,
    grid: doc.grid,
    scope: doc.scope,
    model: doc.model,
    dataset: doc.dataset,
  } as StoredOptions;
  const read = (i: number): StoredSample => {
    const { file: name, lengths, decodeSteps } = entries[i];
    const offsets = new Float64Array(H + 1);
    for (let h = 0; h < H; h++) offsets[h + 1] = offsets[h] + lengths[h];
    const total = offsets[H];
    const file = join(dir, name);
    const wrongSize = (bytes: number) =>
      new BadProfileError(`${file} has ${bytes} bytes but its ${total} tokens need ${8 * total} (float32 scores, then float32 oracle)`);
    // In pieces, straight into the arrays: Node reads no file over 2 GiB whole.
    const fd = openSync(file, "r");
    try {
      const size = fstatSync(fd).size;
      if (size !== 8 * total) throw wrongSize(size);
      if (total > largestBuffer()) {
        throw new BadProfileError(`${file} has ${size} bytes: its ${total} tokens are more float32 values than the largest typed array this Node.js makes (${largestBuffer()})`);
      }
      const scores = new Float32Array(total), oracle = new Float32Array(total);
      const got = readFloats(fd, scores, 0) + readFloats(fd, oracle, 4 * total);
      if (got !== 8 * total) throw wrongSize(got); // the file shrank while read
      return { lengths, offsets, scores, oracle, decodeSteps };
    } finally {
      closeSync(fd);
    }
  };
  return { options, count: entries.length, read };
}
