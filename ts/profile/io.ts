import { readFileSync } from "node:fs";
import { types } from "node:util";
import { BadProfileError, invalid } from "../errors";
import { writeFileReplacing } from "../sequence-file";
import { knownOptions } from "../validate";
import { profileFromJson, profileToJson } from "./json";
import { decodeNpy, encodeNpy, type NpyFloatDtype } from "./npy";
import { checkProfile, checkTable, createProfile, type Profile, type ProfileMeta } from "./profile";

/** File formats a profile can be stored in. */
export type ProfileFormat = "npy" | "json";

/** Options of {@link encodeProfile} and {@link saveProfile}. */
export interface SaveProfileOptions {
  /** "npy" (the LU-KV / kvpress table, no metadata) or "json" (table and metadata). Default: from the file extension. */
  format?: ProfileFormat;
  /** Element type of a .npy file. Default "<f8". */
  dtype?: NpyFloatDtype;
}

/**
 * Reads a profile from .npy bytes: a float array of shape [grid, layers, kvHeads]
 * (as the LU-KV authors and kvpress write them, grid = 99). A .npy file has no
 * metadata; `meta` (default {}) is attached as given.
 * @throws BadProfileError when the file is malformed, not 3-D, or holds NaN or ratios outside [0, 1].
 */
export function profileFromNpy(bytes: Uint8Array, meta?: ProfileMeta): Profile {
  const arr = decodeNpy(bytes);
  const shape = `(${arr.shape.join(", ")}${arr.shape.length === 1 ? "," : ""})`;
  if (arr.shape.length !== 3) {
    throw new BadProfileError(
      `npy profile must be a 3-D array [grid, layers, kvHeads] but has shape ${shape} (${arr.shape.length}-D)`,
    );
  }
  const [grid, layers, kvHeads] = arr.shape;
  if (grid === 0 || layers === 0 || kvHeads === 0) {
    throw new BadProfileError(`npy profile has an empty dimension: shape ${shape}`);
  }
  return createProfile({ table: arr.data, grid, layers, kvHeads, meta });
}

/** Encodes a profile's table as .npy bytes, shape [grid, layers, kvHeads] (dtype default "<f8"); metadata is not stored. */
export function profileToNpy(profile: Profile, options: { dtype?: NpyFloatDtype } = {}): Uint8Array {
  checkProfile(profile);
  checkTable(profile.table, profile.grid, profile.layers, profile.kvHeads);
  if (options === null || typeof options !== "object") throw invalid("options", "an options object", options);
  knownOptions("options", options, ["dtype"]);
  return encodeNpy(profile.table, [profile.grid, profile.layers, profile.kvHeads], { dtype: options.dtype });
}

/**
 * Decodes a profile from bytes, telling .npy (magic \x93NUMPY) from lukv JSON by content.
 * @throws BadProfileError naming the problem.
 */
export function decodeProfile(bytes: Uint8Array): Profile {
  if (!types.isUint8Array(bytes)) throw invalid("bytes", "a Uint8Array or Buffer", bytes);
  if (bytes[0] === 0x93) return profileFromNpy(bytes);
  // JSON: "{" after an optional UTF-8 byte order mark and any amount of JSON whitespace.
  let i = bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0;
  while (bytes[i] === 0x20 || bytes[i] === 0x09 || bytes[i] === 0x0a || bytes[i] === 0x0d) i++;
  if (bytes[i] === 0x7b) return profileFromJson(new TextDecoder("utf-8").decode(bytes));
  const head = Array.from(bytes.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join(" ");
  throw new BadProfileError(
    `unrecognised profile: expected a .npy file (starting with \\x93NUMPY) or lukv JSON (starting with "{") but the data starts with ${head || "nothing (empty)"}`,
  );
}

/** Encodes a profile as .npy (dtype default "<f8") or lukv JSON bytes. */
export function encodeProfile(profile: Profile, format: ProfileFormat, options: { dtype?: NpyFloatDtype } = {}): Uint8Array {
  if (options === null || typeof options !== "object") throw invalid("options", "an options object", options);
  knownOptions("options", options, ["dtype"]);
  if (format === "npy") return profileToNpy(profile, options);
  // A dtype is a choice of the .npy table: beside JSON it would be ignored, whatever it is.
  if (format === "json" && options.dtype != null) throw invalid("options.dtype", 'nothing beside format "json" (dtype is for .npy)', options.dtype);
  if (format === "json") return new TextEncoder().encode(profileToJson(profile));
  throw invalid("format", `"npy" or "json"`, format);
}

/** The format a path's extension names, if any. */
export function formatOfPath(path: string): ProfileFormat | undefined {
  const m = /\.(npy|json)$/i.exec(path);
  return m ? (m[1].toLowerCase() as ProfileFormat) : undefined;
}

/**
 * Loads a profile from a file path or from bytes: LU-KV / kvpress `.npy` tables
 * (float16/32/64, any byte order, C or Fortran order, format 1.0/2.0/3.0) and lukv
 * JSON. The format is detected from the content, not the name. Synchronous: profiles
 * are small.
 * @throws BadProfileError (prefixed with the path) when the content is malformed; file-system errors as thrown by Node.
 */
export function loadProfile(pathOrBytes: string | Uint8Array): Profile {
  if (typeof pathOrBytes === "string") {
    if (pathOrBytes.length === 0) throw invalid("pathOrBytes", "a file path or a Uint8Array", pathOrBytes);
    const bytes = readFileSync(pathOrBytes);
    try {
      return decodeProfile(bytes);
    } catch (e) {
      if (e instanceof BadProfileError) throw new BadProfileError(`${pathOrBytes}: ${e.message}`);
      throw e;
    }
  }
  if (types.isUint8Array(pathOrBytes)) return decodeProfile(pathOrBytes);
  throw invalid("pathOrBytes", "a file path or a Uint8Array", pathOrBytes);
}

/**
 * Writes a profile to `path` as .npy (table only, shape [grid, layers, kvHeads]) or
 * lukv JSON (table and metadata). The file is written next to its target, flushed to disk
 * and renamed into place, so a reader (or a crash) never sees half a profile. A path that
 * is a symbolic link replaces the link's target, and an existing file keeps its permissions.
 * @param options format (default from the extension, .npy or .json) and dtype for .npy (default "<f8").
 * @throws InvalidArgumentError when the format cannot be told; BadProfileError for an invalid profile.
 */
export function saveProfile(profile: Profile, path: string, options: SaveProfileOptions = {}): void {
  if (typeof path !== "string" || path.length === 0) throw invalid("path", "a file path", path);
  if (options === null || typeof options !== "object") throw invalid("options", "an options object", options);
  knownOptions("options", options, ["format", "dtype"]);
  const format = options.format ?? formatOfPath(path);
  if (format !== "npy" && format !== "json") {
    throw invalid(
      options.format === undefined ? "path" : "options.format",
      options.format === undefined ? `a path ending in .npy or .json (or options.format)` : `"npy" or "json"`,
      options.format ?? path,
    );
  }
  const bytes = encodeProfile(profile, format, { dtype: options.dtype });
  writeFileReplacing(path, bytes);
}
