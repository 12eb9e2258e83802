import { types } from "util";
import { lengthOf, typedArrayName } from "./typed";

/** Base class of every error lukv throws; `code` is stable and machine-readable. */
export class LukvError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
    this.name = new.target.name;
  }
}

/** An argument has the wrong type, shape or value. The message names the parameter, what was expected and what was received. */
export class InvalidArgumentError extends LukvError {
  constructor(message: string) {
    super("ERR_LUKV_INVALID_ARGUMENT", message);
  }
}

/** The page pool has too few free pages for the call; the call changed nothing. */
export class OutOfPagesError extends LukvError {
  constructor(message: string) {
    super("ERR_LUKV_OUT_OF_PAGES", message);
  }
}

/**
 * Memory a call needs besides the page pool could not be allocated: host memory, or a device's
 * staging and workspace buffers (the GPU's memory is full). Unlike OutOfPagesError, evicting
 * tokens gives none back (the pool is allocated whole); the call changed nothing.
 */
export class OutOfMemoryError extends LukvError {
  constructor(message: string) {
    super("ERR_LUKV_OUT_OF_MEMORY", message);
  }
}

/**
 * The backend failed where it should not: a CUDA launch, copy or synchronisation (the message names
 * the call and its CUDA error), or a check of lukv's own. After a compress that fails this way
 * partway, the message says what it changed.
 */
export class InternalError extends LukvError {
  constructor(message: string) {
    super("ERR_LUKV_INTERNAL", message);
  }
}

/** The cache or sequence was used after `dispose()`. */
export class DisposedError extends LukvError {
  constructor(message: string) {
    super("ERR_LUKV_DISPOSED", message);
  }
}

/**
 * A synchronous call was made on a sequence that still has async calls (attendAsync, compressAsync)
 * waiting or running: calls on a sequence take effect in call order, and a synchronous call cannot
 * wait for them without blocking the event loop. Await the pending calls first.
 */
export class SequenceBusyError extends LukvError {
  constructor(message: string) {
    super("ERR_LUKV_SEQUENCE_BUSY", message);
  }
}

/** The requested backend (for example CUDA) cannot be used here; the message lists why. */
export class BackendUnavailableError extends LukvError {
  constructor(message: string) {
    super("ERR_LUKV_BACKEND_UNAVAILABLE", message);
  }
}

/** A profile file or object is malformed; the message names the problem. */
export class BadProfileError extends LukvError {
  constructor(message: string) {
    super("ERR_LUKV_BAD_PROFILE", message);
  }
}

/** A model file (safetensors weights, tokenizer.json, config.json) is malformed; the message names the file and the problem. */
export class BadModelError extends LukvError {
  constructor(message: string) {
    super("ERR_LUKV_BAD_MODEL", message);
  }
}

/**
 * Saved-sequence bytes (`cache.loadSequence`) are not a sequence this cache can take: wrong magic or
 * format version, a cache shape or dtype other than this cache's, a checksum mismatch, truncated or
 * inconsistent sections. The message names the problem; nothing was allocated.
 */
export class BadSequenceFileError extends LukvError {
  constructor(message: string) {
    super("ERR_LUKV_BAD_SEQUENCE_FILE", message);
  }
}

// What a terminal may act on (C0, DEL and C1: U+009B acts as ESC [), and U+FFFE / U+FFFF, which
// XML 1.0 refuses: text from a file or a caller is printed with these escaped.
const CONTROLS = /[\u0000-\u001f\u007f-\u009f\ufffe\uffff]/g;

/** The escape \uXXXX of character `c`. */
export const unicodeEscape = (c: string): string => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`;

/** `s` with every character of CONTROLS written as `escape(c)`. */
export function escapeControls(s: string, escape: (c: string) => string = unicodeEscape): string {
  return s.replace(CONTROLS, escape);
}

/**
 * `s` as a JSON string literal in which DEL, the C1 controls and U+FFFE / U+FFFF are escaped too
 * (JSON.stringify escapes only C0).
 */
export function quoted(s: string): string {
  return escapeControls(JSON.stringify(s));
}

/** A received value in a message: a number as written, anything else as describe() shows it (strings quoted, with their type). */
export function shown(value: unknown): string {
  return typeof value === "number" ? String(value) : describe(value);
}

/**
 * JSON text of a value for error messages, cut to `max` characters. Never recurses deeper than a
 * few levels (a parsed file may nest a million arrays, which JSON.stringify cannot print).
 */
export function jsonPreview(value: unknown, max = 40): string {
  let out = "";
  const put = (s: string): boolean => {
    out += s;
    return out.length <= max;
  };
  const walk = (v: unknown, depth: number): boolean => {
    if (v === null || typeof v === "boolean") return put(String(v));
    if (typeof v === "number") return put(Number.isFinite(v) ? JSON.stringify(v) : "null");
    if (typeof v === "string") return put(quoted(v.length > max ? v.slice(0, max) : v));
    if (typeof v !== "object") return put(String(v));
    if (depth >= 8) return put("…");
    if (Array.isArray(v)) {
      if (!put("[")) return false;
      for (let i = 0; i < v.length; i++) if ((i > 0 && !put(",")) || !walk(v[i], depth + 1)) return false;
      return put("]");
    }
    if (!put("{")) return false;
    let first = true;
    for (const key of Object.keys(v)) {
      if ((!first && !put(",")) || !put(quoted(key) + ":") || !walk((v as Record<string, unknown>)[key], depth + 1)) return false;
      first = false;
    }
    return put("}");
  };
  if (value === undefined) return "undefined";
  walk(value, 0);
  return out.length > max ? out.slice(0, max) + "…" : out;
}

/** Describes a received value for error messages: `1.5 of type number`, `Float64Array(12)`. */
export function describe(value: unknown): string {
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  if (ArrayBuffer.isView(value)) {
    // The engine's name and length (a subclass's own getters would run user code in a message).
    const name = typedArrayName(value);
    return name === undefined ? "DataView" : `${name}(${lengthOf(value)})`;
  }
  if (types.isProxy(value)) return "a Proxy";
  if (Array.isArray(value)) return `Array(${value.length})`;
  if (types.isAnyArrayBuffer(value)) return `${Object.prototype.toString.call(value).slice(8, -1)}(${value.byteLength} bytes)`;
  if (typeof value === "bigint") return `${value}n of type bigint`;
  if (typeof value === "string") return `${quoted(value.length > 40 ? value.slice(0, 40) + "…" : value)} of type string`;
  if (typeof value === "object") return `object`;
  return `${String(value)} of type ${typeof value}`;
}

/** Builds the error for a bad argument: "Expected <expected> for <name> but received <value>". */
export function invalid(name: string, expected: string, received: unknown): InvalidArgumentError {
  return new InvalidArgumentError(`Expected ${expected} for ${name} but received ${describe(received)}`);
}

/**
 * The error of an async attend whose `out` was detached or resized while it ran: the attention
 * itself ran, so unlike other failed calls this one did change the sequence.
 */
export function outGone(call: string): InvalidArgumentError {
  return new InvalidArgumentError(
    `out was detached or resized before ${call} finished: the attention ran (its queries joined the observation window, as in a call that succeeds) but its output was dropped`,
  );
}
