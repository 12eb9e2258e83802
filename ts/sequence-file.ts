// Arguments of the saved-sequence calls (seq.save*, cache.loadSequence*): bytes or a file path.
import * as fs from "fs";
import { constants as bufferConstants } from "buffer";
import { basename, dirname, resolve } from "path";
import { BadSequenceFileError, invalid, quoted } from "./errors";
import { isUint8Array } from "./validate";

function checkSource(source: unknown): asserts source is Uint8Array | string {
  if (typeof source === "string" ? source.length === 0 : !isUint8Array(source))
    throw invalid("source", "a Uint8Array (or Buffer) of saved bytes or a non-empty file path", source);
}

// Node refuses one read or write of 2 GiB or more, and whole-file reads of files over 2 GiB: files
// are read and written in pieces of at most this many bytes.
const CHUNK_BYTES = 2 ** 30;
// Pieces of a file whose size fstat does not give (a pipe, a character device).
const STREAM_CHUNK_BYTES = 2 ** 16;
let chunkBytes = CHUNK_BYTES;
let maxBytes = bufferConstants.MAX_LENGTH;

/**
 * @internal Tests: the most bytes one read or write call moves, and the largest file (in bytes) or
 * typed array (in elements) a read makes; no argument restores Node's limits.
 */
export function setFileLimits(limits: { chunkBytes?: number; maxBytes?: number } = {}): void {
  chunkBytes = limits.chunkBytes ?? CHUNK_BYTES;
  maxBytes = limits.maxBytes ?? bufferConstants.MAX_LENGTH;
}

/** @internal The largest Buffer (bytes) or typed array (elements) this Node.js makes. */
export function largestBuffer(): number {
  return maxBytes;
}

/** Writes all of `data` to `fd` from file offset `position`. */
export function writeAllSync(fd: number, data: Uint8Array, position = 0): void {
  for (let at = 0; at < data.length; ) at += fs.writeSync(fd, data, at, Math.min(chunkBytes, data.length - at), position + at);
}

async function writeAll(file: fs.promises.FileHandle, data: Uint8Array): Promise<void> {
  for (let at = 0; at < data.length; ) at += (await file.write(data, at, Math.min(chunkBytes, data.length - at), at)).bytesWritten;
}

/** Fills `into` from `fd` at file offset `position`; the bytes read, fewer only where the file ends first. */
export function readIntoSync(fd: number, into: Uint8Array, position = 0): number {
  let at = 0;
  while (at < into.length) {
    const n = fs.readSync(fd, into, at, Math.min(chunkBytes, into.length - at), position + at);
    if (n === 0) break;
    at += n;
  }
  return at;
}

async function readInto(file: fs.promises.FileHandle, into: Uint8Array): Promise<number> {
  let at = 0;
  while (at < into.length) {
    const { bytesRead } = await file.read(into, at, Math.min(chunkBytes, into.length - at), at);
    if (bytesRead === 0) break;
    at += bytesRead;
  }
  return at;
}

// `size` undefined: a file without a size (a pipe) that went on past the limit.
function tooLarge(path: string, size?: number): BadSequenceFileError {
  const what = size === undefined ? "holds more than" : `is ${size} bytes, more than`;
  return new BadSequenceFileError(`${quoted(path)} ${what} the largest Buffer this Node.js makes (${maxBytes} bytes): it cannot be loaded here`);
}

// A file whose size changes while read: the bytes read (a shorter file is found truncated), up to
// the size fstat gave (a longer one fails its declared size or checksum). Size 0 may be a file
// that has no size (/proc), read to its end as readFileSync does.
function readFileChunked(path: string): Buffer {
  const fd = fs.openSync(path, "r");
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile() || stat.size === 0) {
      const pieces: Buffer[] = [];
      let total = 0;
      for (;;) {
        const piece = Buffer.allocUnsafe(Math.min(chunkBytes, STREAM_CHUNK_BYTES));
        const n = fs.readSync(fd, piece, 0, piece.length, null);
        if (n === 0) return Buffer.concat(pieces, total);
        pieces.push(piece.subarray(0, n));
        if ((total += n) > maxBytes) throw tooLarge(path);
      }
    }
    if (stat.size > maxBytes) throw tooLarge(path, stat.size);
    const out = Buffer.allocUnsafeSlow(stat.size);
    return out.subarray(0, readIntoSync(fd, out));
  } finally {
    fs.closeSync(fd);
  }
}

async function readFileChunkedAsync(path: string): Promise<Buffer> {
  const file = await fs.promises.open(path, "r");
  try {
    const stat = await file.stat();
    if (!stat.isFile() || stat.size === 0) {
      const pieces: Buffer[] = [];
      let total = 0;
      for (;;) {
        const piece = Buffer.allocUnsafe(Math.min(chunkBytes, STREAM_CHUNK_BYTES));
        const { bytesRead } = await file.read(piece, 0, piece.length, null);
        if (bytesRead === 0) return Buffer.concat(pieces, total);
        pieces.push(piece.subarray(0, bytesRead));
        if ((total += bytesRead) > maxBytes) throw tooLarge(path);
      }
    }
    if (stat.size > maxBytes) throw tooLarge(path, stat.size);
    const out = Buffer.allocUnsafeSlow(stat.size);
    return out.subarray(0, await readInto(file, out));
  } finally {
    await file.close();
  }
}

/** The bytes of a saved sequence given as bytes or as a path. */
export function readSequenceSource(source: Uint8Array | string): Uint8Array {
  checkSource(source);
  return typeof source === "string" ? readFileChunked(source) : source;
}

export async function readSequenceSourceAsync(source: Uint8Array | string): Promise<Uint8Array> {
  checkSource(source);
  return typeof source === "string" ? readFileChunkedAsync(source) : source;
}

export function checkSavePath(path: unknown): asserts path is string {
  if (typeof path !== "string" || path.length === 0) throw invalid("path", "a non-empty file path", path);
}

// A file is replaced as a whole: the bytes go to a new file beside it, which is flushed to disk and
// then renamed over it, so a reader (or a crash) sees the old file or the new one, never a part of
// the new one. A path that is a symbolic link replaces the link's target (the link stays), and an
// existing file keeps its permission bits; a new file gets the default (0666 less the umask). The
// temporary file is removed when any step fails. Saved profiles are written the same way.
function tempPathFor(path: string): string {
  return `${path}.${process.pid}.${Math.random().toString(36).slice(2, 10)}.tmp`;
}

// Symbolic links followed from `path` to the file a write replaces: the last link's target, which
// need not exist yet (a dangling link gets its target written, as opening it for writing does).
const MAX_LINKS = 40;
function loopError(path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`ELOOP: too many symbolic links encountered, open '${path}'`), { code: "ELOOP", path });
}
function followLinks(path: string): string {
  let at = path;
  for (let hops = 0; hops <= MAX_LINKS; hops++) {
    let link: string;
    try {
      link = fs.readlinkSync(at);
    } catch {
      return at; // not a link (or not there): the file itself
    }
    at = resolve(dirname(at), link);
  }
  throw loopError(path);
}
async function followLinksAsync(path: string): Promise<string> {
  let at = path;
  for (let hops = 0; hops <= MAX_LINKS; hops++) {
    let link: string;
    try {
      link = await fs.promises.readlink(at);
    } catch {
      return at;
    }
    at = resolve(dirname(at), link);
  }
  throw loopError(path);
}

// The permission bits of the file a write replaces, or undefined for a new file.
function modeOf(stat: fs.Stats | undefined): number | undefined {
  return stat?.isFile() ? stat.mode & 0o777 : undefined;
}

// The directory fsync makes the rename itself durable. Some platforms and file systems cannot open
// or sync a directory; the file's own fsync already made its bytes durable there.
const DIR_SYNC_UNSUPPORTED = new Set(["EINVAL", "EISDIR", "EPERM", "EACCES", "ENOTSUP", "EOPNOTSUPP", "EBADF"]);

function ignoreUnsupported(e: unknown): void {
  if (!DIR_SYNC_UNSUPPORTED.has((e as NodeJS.ErrnoException)?.code ?? "")) throw e;
}

// The async writes in flight, by the file they write: each waits for the one called before it, so
// the file ends up with what the last call wrote (an earlier, larger write used to rename last).
const asyncWrites = new Map<string, Promise<void>>();

// The file a write to `path` replaces, as one name whatever links lead to it (the path's own links
// followed, its directory resolved); a loop of links keys by the path (the write then fails).
function writeKey(path: string): string {
  let file: string;
  try {
    file = followLinks(path);
  } catch {
    return resolve(path);
  }
  try {
    return resolve(fs.realpathSync(dirname(file)), basename(file));
  } catch {
    return resolve(file); // a directory that does not exist: the write fails anyway
  }
}

/** Writes `data` to `path`, replacing it atomically (see above). */
export function writeFileReplacing(path: string, data: Uint8Array): void {
  // Written now, it would be replaced by the async write still to come.
  if (asyncWrites.size > 0 && asyncWrites.has(writeKey(path)))
    throw invalid("path", "no asynchronous write to it in flight (await the saveFileAsync to it first)", path);
  const real = followLinks(path);
  let stat: fs.Stats | undefined;
  try {
    stat = fs.statSync(real);
  } catch {
    // a new file (or one the write below reports the error of)
  }
  const mode = modeOf(stat);
  const temp = tempPathFor(real);
  try {
    const fd = fs.openSync(temp, "wx", mode ?? 0o666);
    try {
      if (mode !== undefined) {
        try {
          fs.fchmodSync(fd, mode); // open applied the umask
        } catch {
          // the file has the mode less the umask: never wider than the old file's
        }
      }
      writeAllSync(fd, data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temp, real);
  } catch (e) {
    fs.rmSync(temp, { force: true });
    throw e;
  }
  if (process.platform === "win32") return;
  try {
    const dir = fs.openSync(dirname(real), "r");
    try {
      fs.fsyncSync(dir);
    } finally {
      fs.closeSync(dir);
    }
  } catch (e) {
    ignoreUnsupported(e);
  }
}

/**
 * writeFileReplacing() with the file system calls off the main thread, after the async writes to
 * `path` called before it; `data` may still be coming (its rejection rejects this write only).
 */
export function writeFileReplacingAsync(path: string, data: Uint8Array | Promise<Uint8Array>): Promise<void> {
  const key = writeKey(path);
  const bytes = Promise.resolve(data);
  bytes.catch(() => undefined); // awaited below, after the writes before it
  const entry: { settled?: Promise<void> } = {};
  const done = (asyncWrites.get(key) ?? Promise.resolve()).then(async () => {
    try {
      await writeNowAsync(path, await bytes);
    } finally {
      // Before this write settles, so that code awaiting it may write the path at once.
      if (asyncWrites.get(key) === entry.settled) asyncWrites.delete(key);
    }
  });
  entry.settled = done.catch(() => undefined);
  asyncWrites.set(key, entry.settled);
  return done;
}

async function writeNowAsync(path: string, data: Uint8Array): Promise<void> {
  const real = await followLinksAsync(path);
  let stat: fs.Stats | undefined;
  try {
    stat = await fs.promises.stat(real);
  } catch {
    // a new file (or one the write below reports the error of)
  }
  const mode = modeOf(stat);
  const temp = tempPathFor(real);
  try {
    const file = await fs.promises.open(temp, "wx", mode ?? 0o666);
    try {
      if (mode !== undefined) await file.chmod(mode).catch(() => undefined); // as in writeFileReplacing
      await writeAll(file, data);
      await file.sync();
    } finally {
      await file.close();
    }
    await fs.promises.rename(temp, real);
  } catch (e) {
    await fs.promises.rm(temp, { force: true });
    throw e;
  }
  if (process.platform === "win32") return;
  try {
    const dir = await fs.promises.open(dirname(real), "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  } catch (e) {
    ignoreUnsupported(e);
  }
}
