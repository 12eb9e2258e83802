import { types } from "node:util";
import { BadProfileError, describe, jsonPreview, quoted } from "../errors";

/** The `format` tag of lukv's JSON profiles. */
export const PROFILE_FORMAT = "lukv-profile";
/** The JSON profile version this lukv writes and the newest it reads. */
export const PROFILE_FORMAT_VERSION = 1;

/** How a profile was calibrated; every field is optional and informational. */
export interface ProfileCalibration {
  /** Calibration contexts (prompts) that were profiled. */
  samples?: number;
  /** Queries (continuations) decoded per context; the paper used about 30. */
  queriesPerSample?: number;
  /** Context length, in tokens, of each calibration sample. */
  contextLengths?: number[];
  /** Decode steps K whose attention defined the oracle importance; the paper used 64. */
  decodeSteps?: number;
  /** Where the contexts came from, e.g. a dataset name. */
  dataset?: string;
}

/** What a profile was made for and how. Unknown extra fields are kept through JSON round trips. */
export interface ProfileMeta {
  /** Model the profile belongs to, e.g. "meta-llama/Llama-3.1-8B-Instruct". */
  model?: string;
  /** In-head scorer π the profile was calibrated with, e.g. "snapkv". */
  scorer?: string;
  /** The scorer's options, e.g. { window: 32, kernel: 7 }. */
  scorerOptions?: Record<string, unknown>;
  /** Sink tokens that were always kept. */
  sink?: number;
  /** Recent-window tokens that were always kept. */
  window?: number;
  /** How the profile was calibrated. */
  calibration?: ProfileCalibration;
  /** ISO 8601 time the profile was made. */
  createdAt?: string;
  [key: string]: unknown;
}

/**
 * An LU-KV profile: per-head prune ratios Φ on a grid of compression ratios.
 * `table` is laid out [grid][layers][kvHeads] (C order); row i holds the prune ratio
 * (fraction of the head's tokens to evict) of every (layer, KV head) at compression
 * ratio (i + 1) / (grid + 1), so the usual 99 rows cover 1%..99%.
 */
export interface Profile {
  /** Prune ratios in [0, 1], length grid × layers × kvHeads. */
  table: Float64Array;
  /** Rows of the table (compression ratios); 99 in the LU-KV / kvpress files. */
  grid: number;
  layers: number;
  kvHeads: number;
  meta: ProfileMeta;
}

/** What {@link createProfile} takes. */
export interface ProfileInit {
  /** Prune ratios laid out [grid][layers][kvHeads]; copied. */
  table: ArrayLike<number>;
  /** Rows; default table.length / (layers × kvHeads). */
  grid?: number;
  layers: number;
  kvHeads: number;
  /** Default {}. */
  meta?: ProfileMeta;
}

/** The compression ratio of row `row`: (row + 1) / (grid + 1). */
export function profileRowRatio(profile: Pick<Profile, "grid">, row: number): number {
  return (row + 1) / (profile.grid + 1);
}

function isPositiveInt(x: unknown): x is number {
  return typeof x === "number" && Number.isSafeInteger(x) && x > 0;
}

function isCount(x: unknown): boolean {
  return typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
}

function isPlainObject(x: unknown): x is Record<string, unknown> {
  return x !== null && typeof x === "object" && !Array.isArray(x) && !ArrayBuffer.isView(x);
}

function show(x: unknown): string {
  if (typeof x === "number" && !Number.isFinite(x)) return String(x);
  return jsonPreview(x);
}

/** Checks the known metadata fields' types; unknown fields pass through. */
export function checkMeta(meta: unknown): ProfileMeta {
  if (meta === undefined) return {};
  if (!isPlainObject(meta)) throw new BadProfileError(`meta must be an object but is ${show(meta)}`);
  const bad = (field: string, what: string, value: unknown) =>
    new BadProfileError(`meta.${field} must be ${what} but is ${show(value)}`);
  for (const field of ["model", "scorer", "createdAt"]) {
    if (meta[field] !== undefined && typeof meta[field] !== "string") throw bad(field, "a string", meta[field]);
  }
  for (const field of ["sink", "window"]) {
    if (meta[field] !== undefined && !isCount(meta[field])) throw bad(field, "a non-negative integer", meta[field]);
  }
  if (meta.scorerOptions !== undefined && !isPlainObject(meta.scorerOptions)) {
    throw bad("scorerOptions", "an object", meta.scorerOptions);
  }
  const cal = meta.calibration;
  if (cal !== undefined) {
    if (!isPlainObject(cal)) throw bad("calibration", "an object", cal);
    for (const field of ["samples", "queriesPerSample", "decodeSteps"]) {
      if (cal[field] !== undefined && !isCount(cal[field])) throw bad(`calibration.${field}`, "a non-negative integer", cal[field]);
    }
    if (cal.dataset !== undefined && typeof cal.dataset !== "string") throw bad("calibration.dataset", "a string", cal.dataset);
    const lens = cal.contextLengths;
    if (lens !== undefined && !(Array.isArray(lens) && lens.every(isCount))) {
      throw bad("calibration.contextLengths", "an array of non-negative integers", lens);
    }
  }
  // saveProfile writes it as JSON: a BigInt or a cycle would fail there, far from here.
  try {
    JSON.stringify(meta);
  } catch (e) {
    throw new BadProfileError(`meta must be JSON data but ${(e as Error).message.split("\n")[0]}`);
  }
  return meta as ProfileMeta;
}

/** Where flat index i of a [grid][layers][kvHeads] table is, in words, for error messages. */
export function tableCell(i: number, grid: number, layers: number, kvHeads: number): string {
  const head = i % kvHeads;
  const layer = Math.floor(i / kvHeads) % layers;
  const row = Math.floor(i / (kvHeads * layers));
  const ratio = +((row + 1) / (grid + 1)).toFixed(6);
  return `row ${row} (compression ratio ${ratio}), layer ${layer}, head ${head}`;
}

/** Rejects NaN and prune ratios outside [0, 1], naming the first bad cell. */
export function checkTable(table: ArrayLike<number>, grid: number, layers: number, kvHeads: number, from = 0, to = table.length): void {
  for (let i = from; i < to; i++) {
    const p = table[i];
    if (typeof p !== "number" || !(p >= 0 && p <= 1)) {
      const what = typeof p !== "number" ? show(p) : Number.isNaN(p) ? "NaN" : String(p);
      throw new BadProfileError(
        `prune ratio at ${tableCell(i, grid, layers, kvHeads)} is ${what}; expected a number in [0, 1]`,
      );
    }
  }
}

const PROFILE_INIT_FIELDS = ["table", "grid", "layers", "kvHeads", "meta"];

/**
 * Builds a validated {@link Profile} (the table is copied into a Float64Array).
 * @throws BadProfileError when the sizes disagree, a field is unknown, a ratio is NaN or outside
 * [0, 1], or meta is malformed (or not JSON: a BigInt, a cycle).
 */
export function createProfile(init: ProfileInit): Profile {
  if (!isPlainObject(init)) throw new BadProfileError(`a profile must be an object but is ${show(init)}`);
  // A misspelt field (metta) would be dropped in silence; user metadata belongs in meta.
  const unknown = Object.keys(init).find((k) => !PROFILE_INIT_FIELDS.includes(k));
  if (unknown !== undefined)
    throw new BadProfileError(`a profile has the fields ${PROFILE_INIT_FIELDS.join(", ")} but received ${quoted(unknown)} (metadata goes in meta)`);
  const { table, layers, kvHeads } = init;
  if (!isPositiveInt(layers)) throw new BadProfileError(`layers must be a positive integer but is ${show(layers)}`);
  if (!isPositiveInt(kvHeads)) throw new BadProfileError(`kvHeads must be a positive integer but is ${show(kvHeads)}`);
  if (table === null || typeof table !== "object" || typeof table.length !== "number") {
    throw new BadProfileError(`table must be an array of numbers but is ${show(table)}`);
  }
  const cells = layers * kvHeads;
  // Without grid the table's length gives it (the message names the length, not a derived grid).
  if (init.grid === undefined && !isPositiveInt(table.length / cells))
    throw new BadProfileError(`table has ${table.length} values, not a positive multiple of layers ${layers} × kvHeads ${kvHeads} = ${cells}`);
  const grid = init.grid ?? table.length / cells;
  if (!isPositiveInt(grid)) throw new BadProfileError(`grid must be a positive integer but is ${show(grid)}`);
  if (table.length !== grid * cells) {
    throw new BadProfileError(
      `table has ${table.length} values but grid ${grid} × layers ${layers} × kvHeads ${kvHeads} needs ${grid * cells}`,
    );
  }
  checkTable(table, grid, layers, kvHeads);
  return { table: Float64Array.from(table), grid, layers, kvHeads, meta: checkMeta(init.meta) };
}

/** Checks a Profile object's shape (cheap: the values are not scanned). */
export function checkProfile(profile: Profile): Profile {
  if (!isPlainObject(profile)) throw new BadProfileError(`a profile must be an object but is ${show(profile)}`);
  const { grid, layers, kvHeads, table } = profile;
  if (!isPositiveInt(grid) || !isPositiveInt(layers) || !isPositiveInt(kvHeads)) {
    throw new BadProfileError(
      `grid, layers and kvHeads must be positive integers but are ${show(grid)}, ${show(layers)}, ${show(kvHeads)}`,
    );
  }
  if (!(types.isFloat64Array(table) || types.isFloat32Array(table)) || table.length !== grid * layers * kvHeads) {
    throw new BadProfileError(
      `table must be a Float64Array of grid × layers × kvHeads = ${grid * layers * kvHeads} values but is ${describe(table)}`,
    );
  }
  return profile;
}
