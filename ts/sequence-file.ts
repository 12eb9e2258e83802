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
