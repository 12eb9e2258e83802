import { BadProfileError, quoted } from "../errors";

/**
 * A Python literal as found in .npy headers. Integers are numbers; floats are {float, value}, so that
 * `2.0` is not taken for the integer 2. Tuples and lists both become {tuple|list, items}.
 */
export type PyValue =
  | string
  | number
  | boolean
  | null
  | { kind: "float"; value: number }
  | { kind: "tuple" | "list"; items: PyValue[] }
  | { kind: "dict"; entries: Map<string, PyValue> };

/** Deepest nesting of brackets accepted: NumPy writes 2 levels; a crafted header must not exhaust the stack. */
export const MAX_PY_LITERAL_DEPTH = 64;

/**
 * Parses the subset of Python literal syntax that NumPy writes in .npy headers
 * (dicts, tuples, lists, quoted strings, integers with an optional Python 2 `L`,
 * floats, True/False/None), tolerating any whitespace and trailing commas.
 * Nothing is evaluated. Dict keys must be strings. Nesting deeper than
 * {@link MAX_PY_LITERAL_DEPTH} brackets is rejected.
 */
export function parsePyLiteral(text: string): PyValue {
  let i = 0;
  let depth = 0;
  const fail = (why: string): never => {
    const near = quoted(text.slice(Math.max(0, i - 10), i + 20));
    throw new BadProfileError(`npy header is not a valid Python literal: ${why} at character ${i} (near ${near})`);
  };
  const skip = () => {
    while (i < text.length && " \t\r\n\f\v".includes(text[i])) i++;
  };
  const value = (): PyValue => {
    skip();
    const c = text[i];
    if (c === undefined) return fail("unexpected end");
    if (c === "{" || c === "(" || c === "[") {
      if (++depth > MAX_PY_LITERAL_DEPTH) fail(`nesting deeper than ${MAX_PY_LITERAL_DEPTH} brackets`);
      const v = c === "{" ? dict() : sequence(c === "(" ? ")" : "]", c === "(" ? "tuple" : "list");
      depth--;
      return v;
    }
    if (c === "'" || c === '"') return str();
    if ((c === "u" || c === "U") && (text[i + 1] === "'" || text[i + 1] === '"')) {
      i++;
      return str();
    }
    if (/[-+0-9.]/.test(c)) return num();
    for (const [word, v] of [["True", true], ["False", false], ["None", null]] as const) {
      if (text.startsWith(word, i) && !/[A-Za-z0-9_]/.test(text[i + word.length] ?? "")) {
        i += word.length;
        return v;
      }
    }
    return fail(`unexpected ${quoted(c)}`);
  };
  const sequence = (close: string, kind: "tuple" | "list"): PyValue => {
    i++;
    const items: PyValue[] = [];
    let comma = true;
    for (;;) {
      skip();
      if (text[i] === close) {
        i++;
        // Python's (x) is just x; a 1-tuple needs its comma.
        if (kind === "tuple" && items.length === 1 && !comma) return items[0];
        return { kind, items };
      }
      if (!comma) fail(`expected ',' or '${close}'`);
      items.push(value());
      skip();
      comma = text[i] === ",";
      if (comma) i++;
    }
  };
  const dict = (): PyValue => {
    i++;
    const entries = new Map<string, PyValue>();
    let comma = true;
    for (;;) {
      skip();
      if (text[i] === "}") {
        i++;
        return { kind: "dict", entries };
      }
      if (!comma) fail("expected ',' or '}'");
      const key = value();
      if (typeof key !== "string") fail("dict keys must be strings");
      skip();
      if (text[i] !== ":") fail("expected ':'");
      i++;
      entries.set(key as string, value());
      skip();
      comma = text[i] === ",";
      if (comma) i++;
    }
  };
  const str = (): string => {
    const quote = text[i++];
    let out = "";
    for (;;) {
      const c = text[i++];
      if (c === undefined || c === "\n") return fail("unterminated string");
      if (c === quote) return out;
      if (c !== "\\") {
        out += c;
        continue;
      }
      const e = text[i++];
      const simple: Record<string, string> = { n: "\n", t: "\t", r: "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"' };
      if (e in simple) out += simple[e];
      else if (e === "x" || e === "u") {
        const len = e === "x" ? 2 : 4;
        const hex = text.slice(i, i + len);
        if (!/^[0-9a-fA-F]+$/.test(hex) || hex.length !== len) fail("bad escape");
        out += String.fromCharCode(parseInt(hex, 16));
        i += len;
      } else fail(`unsupported escape \\${e}`);
    }
  };
  const num = (): PyValue => {
    // An integer has no leading zeros (Python 3 refuses "01"), a float has a point or an exponent.
    const m = /^[-+]?(?:((?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)|(?:0+|[1-9]\d*)[lL]?(?![\d.eE]))/.exec(text.slice(i, i + 64));
    if (!m) return fail("bad number");
    i += m[0].length;
    return m[1] !== undefined ? { kind: "float", value: Number(m[0]) } : Number(m[0].replace(/[lL]$/, ""));
  };
  const v = value();
  skip();
  if (i !== text.length) fail("unexpected text after the literal");
  return v;
}
