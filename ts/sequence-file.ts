// Arguments of the saved-sequence calls (seq.save*, cache.loadSequence*): bytes or a file path.
import * as fs from "fs";
import { invalid } from "./errors";
import { isUint8Array } from "./validate";

function checkSource(source: unknown): asserts source is Uint8Array | string {
  if (typeof source === "string" ? source.length === 0 : !isUint8Array(source))
    throw invalid("source", "a Uint8Array (or Buffer) of saved bytes or a non-empty file path", source);
}

/** The bytes of a saved sequence given as bytes or as a path. */
export function readSequenceSource(source: Uint8Array | string): Uint8Array {
  checkSource(source);
  return typeof source === "string" ? fs.readFileSync(source) : source;
}

export async function readSequenceSourceAsync(source: Uint8Array | string): Promise<Uint8Array> {
  checkSource(source);
  return typeof source === "string" ? fs.promises.readFile(source) : source;
}

export function checkSavePath(path: unknown): asserts path is string {
  if (typeof path !== "string" || path.length === 0) throw invalid("path", "a non-empty file path", path);
}

// A file is replaced as a whole: the bytes go to a new file beside it, which is then renamed over
// it, so a reader (or a crash) sees the old file or the new one, never a part of the new one. The
// temporary file is removed when any step fails.
function tempPathFor(path: string): string {
  return `${path}.${process.pid}.${Math.random().toString(36).slice(2, 10)}.tmp`;
}

/** Writes `data` to `path`, replacing it atomically (see above). */
export function writeFileReplacing(path: string, data: Uint8Array): void {
  const temp = tempPathFor(path);
  try {
    fs.writeFileSync(temp, data, { flag: "wx" });
    fs.renameSync(temp, path);
  } catch (e) {
    fs.rmSync(temp, { force: true });
    throw e;
  }
}

/** writeFileReplacing() with the file system calls off the main thread. */
export async function writeFileReplacingAsync(path: string, data: Uint8Array): Promise<void> {
  const temp = tempPathFor(path);
  try {
    await fs.promises.writeFile(temp, data, { flag: "wx" });
    await fs.promises.rename(temp, path);
  } catch (e) {
    await fs.promises.rm(temp, { force: true });
    throw e;
  }
}
