import { BadProfileError, jsonPreview } from "../errors";
import { checkMeta, checkProfile, checkTable, createProfile, PROFILE_FORMAT, PROFILE_FORMAT_VERSION, type Profile } from "./profile";

/**
 * lukv's JSON profile, version 1:
 *
 *     { "format": "lukv-profile", "version": 1,
 *       "grid": 99, "layers": 32, "kvHeads": 8,
 *       "meta": { "model": ..., "scorer": ..., "scorerOptions": {...}, "sink": 4,
 *                 "window": 32, "calibration": { "samples": ..., ... } },
 *       "table": [ [ [p, ...kvHeads], ...layers ], ...grid ] }
 *
 * `table[i][l][h]` is the prune ratio of layer l, KV head h at compression ratio
 * (i + 1) / (grid + 1). Readers reject a newer `version`; `meta` may hold extra fields.
 */
export interface ProfileJson {
  format: typeof PROFILE_FORMAT;
  version: number;
  grid: number;
  layers: number;
  kvHeads: number;
  meta: Record<string, unknown>;
  table: number[][][];
}

/** Serialises a profile as version-1 JSON, one compression ratio per line. Doubles round-trip exactly. */
export function profileToJson(profile: Profile): string {
  checkProfile(profile);
  const { grid, layers, kvHeads, table } = profile;
  checkTable(table, grid, layers, kvHeads);
  const rows: string[] = [];
  for (let i = 0; i < grid; i++) {
    const ls: string[] = [];
    for (let l = 0; l < layers; l++) {
      const at = (i * layers + l) * kvHeads;
      // JSON.stringify writes -0 as 0; "-0" parses back to -0.
      ls.push(`[${Array.from(table.subarray(at, at + kvHeads), (x) => (Object.is(x, -0) ? "-0" : JSON.stringify(x))).join(", ")}]`);
    }
    rows.push(`    [${ls.join(", ")}]`);
  }
  const meta = JSON.stringify(profile.meta ?? {}, null, 2).replace(/\n/g, "\n  ");
  return (
    `{\n  "format": "${PROFILE_FORMAT}",\n  "version": ${PROFILE_FORMAT_VERSION},\n` +
    `  "grid": ${grid},\n  "layers": ${layers},\n  "kvHeads": ${kvHeads},\n` +
    `  "meta": ${meta},\n  "table": [\n${rows.join(",\n")}\n  ]\n}\n`
  );
}

function describeJson(x: unknown): string {
  return jsonPreview(x);
}

/**
 * Reads lukv's JSON profile (text, or an already parsed object).
 * @throws BadProfileError naming the problem: not JSON, wrong format tag, newer version,
 *   sizes that disagree with the table, a value that is not a number in [0, 1], bad meta.
 */
export function profileFromJson(json: string | object): Profile {
  let doc: unknown = json;
  if (typeof json === "string") {
    try {
      doc = JSON.parse(json.replace(/^\uFEFF/, ""));
    } catch (e) {
      throw new BadProfileError(`profile is not valid JSON: ${(e as Error).message}`);
    }
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    throw new BadProfileError(`JSON profile must be an object but is ${describeJson(doc)}`);
  }
  const d = doc as Record<string, unknown>;
  if (d.format !== PROFILE_FORMAT) {
    throw new BadProfileError(`JSON profile must have "format": "${PROFILE_FORMAT}" but has ${describeJson(d.format)}`);
  }
  if (typeof d.version !== "number" || !Number.isInteger(d.version) || d.version < 1) {
    throw new BadProfileError(`JSON profile "version" must be a positive integer but is ${describeJson(d.version)}`);
  }
  if (d.version > PROFILE_FORMAT_VERSION) {
    throw new BadProfileError(
      `JSON profile version ${d.version} is newer than this lukv reads (up to ${PROFILE_FORMAT_VERSION}): upgrade lukv`,
    );
  }
  for (const key of ["grid", "layers", "kvHeads"]) {
    const v = d[key];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
      throw new BadProfileError(`JSON profile "${key}" must be a positive integer but is ${describeJson(v)}`);
    }
  }
  const grid = d.grid as number;
  const layers = d.layers as number;
  const kvHeads = d.kvHeads as number;
  // The declared sizes are only trusted once the table has them: values are gathered first.
  const flat: number[] = [];
  const rows = d.table;
  const sized = (x: unknown, n: number, where: string, what: string): unknown[] => {
    if (!Array.isArray(x) || x.length !== n) {
      const got = Array.isArray(x) ? `${x.length} entries` : describeJson(x);
      throw new BadProfileError(`JSON profile ${where} must be an array of ${n} ${what} but has ${got}`);
    }
    return x;
  };
  sized(rows, grid, "table", "rows (grid)");
  for (let i = 0; i < grid; i++) {
    const row = sized((rows as unknown[])[i], layers, `table[${i}]`, "layers");
    for (let l = 0; l < layers; l++) {
      const cell = sized(row[l], kvHeads, `table[${i}][${l}]`, "KV heads");
      for (let h = 0; h < kvHeads; h++) {
        const p = cell[h];
        if (typeof p !== "number") {
          throw new BadProfileError(`JSON profile table[${i}][${l}][${h}] must be a number in [0, 1] but is ${describeJson(p)}`);
        }
        flat.push(p);
      }
    }
  }
  const meta = checkMeta(d.meta);
  return createProfile({ table: flat, grid, layers, kvHeads, meta });
}
