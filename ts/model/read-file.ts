// Reading a model's files: every failure is a BadModelError naming the file.
import * as fs from "fs";
import { BadModelError } from "../errors";

/** The bytes of `file`. @throws BadModelError "<file>: missing", or "<file>: cannot be read (...)" (a directory, no permission). */
export function readModelFile(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new BadModelError(`${file}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "missing" : `cannot be read (${(e as Error).message})`}`);
  }
}
