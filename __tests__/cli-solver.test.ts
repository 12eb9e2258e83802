import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { solveBudgets, solveBudgetsExact } from "../ts/budget";
import { profileCommand } from "../ts/cli/profile";
import { solveCommand } from "../ts/cli/solve";
import { createProfile, loadProfile, pruneRatiosAt, saveProfile } from "../ts/profile";
import { Profiler } from "../ts/profiler";

const FIXTURES = join(__dirname, "fixtures", "npy");

async function run(command: typeof profileCommand, argv: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await command(argv, { out: (s) => out.push(s), err: (s) => err.push(s) });
  return { code, out: out.join("\n"), err: err.join("\n") };
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "lukv-cli-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("lukv profile inspect", () => {
  test("prints shape, format and one heat-map row per layer with the layer's mean keep", async () => {
    const file = join(FIXTURES, "v1-be-f8-f.npy");
    for (const ratio of [undefined, "0.35"]) {
      const r = await run(profileCommand, ["inspect", file, ...(ratio ? ["--ratio", ratio] : [])]);
      expect(r.code).toBe(0);
      expect(r.err).toBe("");
      expect(r.out).toContain("format       .npy (>f8, format 1.0, Fortran order; no metadata)");
      expect(r.out).toContain("shape        grid 99 × layers 2 × kvHeads 3 (rows: compression ratio 0.01 … 0.99)");
      const keep = Array.from(pruneRatiosAt(loadProfile(file), ratio ? Number(ratio) : 0.8), (p) => 1 - p);
      expect(r.out).toContain(`keep share per KV head at compression ratio ${ratio ?? 0.8} (mean `);
      // Not a terminal: plain digits, no colour codes.
      expect(r.out).not.toContain("\x1b[");
      const rows = r.out.split("\n").filter((l) => /^\s+\d+\s{2}\d{6}\s{2}\d\.\d{3}$/.test(l));
      expect(rows).toHaveLength(2);
      rows.forEach((row, layer) => {
        const mean = (keep[layer * 3] + keep[layer * 3 + 1] + keep[layer * 3 + 2]) / 3;
        expect(row.endsWith(mean.toFixed(3))).toBe(true);
        // The most-kept head of the whole table is 9, the least-kept 0.
        const cells = row.trim().split(/\s{2}/)[1];
        for (let h = 0; h < 3; h++) {
          if (keep[layer * 3 + h] === Math.max(...keep)) expect(cells.slice(2 * h, 2 * h + 2)).toBe("99");
          if (keep[layer * 3 + h] === Math.min(...keep)) expect(cells.slice(2 * h, 2 * h + 2)).toBe("00");
        }
      });
    }
  });

  test("shows JSON metadata", async () => {
    const profile = createProfile({
      table: new Float64Array(99 * 4).fill(0.5),
      layers: 2,
      kvHeads: 2,
      meta: { model: "m-test", scorer: "snapkv", scorerOptions: { kernel: 7 }, sink: 4, window: 32, calibration: { samples: 3, contextLengths: [1000, 4000], decodeSteps: 64 } },
    });
    saveProfile(profile, join(dir, "meta.json"));
    const r = await run(profileCommand, ["inspect", join(dir, "meta.json")]);
    expect(r.code).toBe(0);
    expect(r.out).toContain("format       lukv JSON");
    expect(r.out).toContain("model        m-test");
    expect(r.out).toContain('scorer       snapkv {"kernel":7}');
    expect(r.out).toContain("sink/window  4 / 32");
    expect(r.out).toContain("calibration  3 samples, contexts of 1000–4000 tokens, 64 decode steps");
  });

  test("a profile of 200,000 samples (one context length each) is inspected (a spread of them overflowed the stack)", async () => {
    const contextLengths = Array.from({ length: 200_000 }, (_, i) => 512 + (i % 3000));
    const profile = createProfile({ table: new Float64Array(9 * 2).fill(0.5), grid: 9, layers: 1, kvHeads: 2, meta: { calibration: { samples: 200_000, contextLengths } } });
    saveProfile(profile, join(dir, "many.json"));
    const r = await run(profileCommand, ["inspect", join(dir, "many.json")]);
    expect([r.code, r.err]).toEqual([0, ""]);
    expect(r.out).toContain("calibration  200000 samples, contexts of 512–3511 tokens");
  });

  test("usage errors exit 2 with the usage; unreadable or bad files exit 1", async () => {
    const none = await run(profileCommand, []);
    expect([none.code, none.err]).toEqual([2, expect.stringContaining("usage: lukv profile <subcommand>")]);
    const help = await run(profileCommand, ["--help"]);
    expect([help.code, help.out]).toEqual([0, expect.stringContaining("inspect FILE [--ratio R]")]);
    const unknownSub = await run(profileCommand, ["merge", "x"]);
    expect(unknownSub.code).toBe(2);
    expect(unknownSub.err).toContain('lukv profile: unknown subcommand "merge"');
    const noFile = await run(profileCommand, ["inspect"]);
    expect([noFile.code, noFile.err]).toEqual([2, expect.stringContaining("lukv profile inspect: inspect needs a FILE")]);
    const ratio = await run(profileCommand, ["inspect", join(FIXTURES, "plain.npy"), "--ratio", "1.5"]);
    expect([ratio.code, ratio.err]).toEqual([2, expect.stringContaining('--ratio must be a number between 0 and 1, got "1.5"')]);
    const unknown = await run(profileCommand, ["inspect", join(FIXTURES, "plain.npy"), "--ratios=0.5"]);
    expect([unknown.code, unknown.err]).toEqual([2, expect.stringContaining("Unknown option '--ratios'")]);
    const missing = await run(profileCommand, ["inspect", join(dir, "missing.npy")]);
    expect([missing.code, missing.err]).toEqual([1, expect.stringContaining("ENOENT")]);
    const bad = await run(profileCommand, ["inspect", join(FIXTURES, "bad-nan.npy")]);
    expect(bad.code).toBe(1);
    expect(bad.err).toBe(`lukv profile inspect: ${join(FIXTURES, "bad-nan.npy")}: prune ratio at row 5 (compression ratio 0.06), layer 0, head 1 is NaN; expected a number in [0, 1]`);
  });
});

describe("lukv profile convert", () => {
  test("npy -> json -> npy round-trips, with a note when metadata cannot go into .npy", async () => {
    const json = join(dir, "c.json");
    const npy = join(dir, "c.npy");
    const a = await run(profileCommand, ["convert", join(FIXTURES, "v3-be-f8-f.npy"), json]);
    expect([a.code, a.out]).toEqual([0, `wrote ${json} (lukv JSON, grid 99 × layers 2 × kvHeads 3)`]);
    const b = await run(profileCommand, ["convert", json, npy]);
    expect([b.code, b.err]).toEqual([0, ""]);
    expect(readFileSync(npy).equals(readFileSync(join(FIXTURES, "plain.npy")))).toBe(true);

    saveProfile(createProfile({ table: [0.5, 0.25], layers: 1, kvHeads: 2, meta: { model: "x", sink: 4 } }), join(dir, "m.json"));
    const toJson = await run(profileCommand, ["convert", join(dir, "m.json"), join(dir, "m2.json"), "--dtype", "f4"]);
    expect([toJson.code, toJson.err]).toEqual([2, expect.stringContaining("--dtype is for .npy output; lukv JSON writes the table as it is")]);
    const c = await run(profileCommand, ["convert", join(dir, "m.json"), join(dir, "m.npy"), "--dtype", "f4"]);
    expect(c.code).toBe(0);
    expect(c.err).toBe("note: a .npy file holds only the table; the metadata (model, sink) was not written");
    expect(readFileSync(join(dir, "m.npy")).subarray(10, 30).toString("latin1")).toContain("'descr': '<f4'");
  });

  test("bad arguments", async () => {
    const one = await run(profileCommand, ["convert", "a.npy"]);
    expect([one.code, one.err]).toEqual([2, expect.stringContaining("convert needs IN and OUT, got 1 path")]);
    const ext = await run(profileCommand, ["convert", join(FIXTURES, "plain.npy"), join(dir, "x.csv")]);
    expect([ext.code, ext.err]).toEqual([2, expect.stringContaining(`OUT must end in .npy or .json, got ${JSON.stringify(join(dir, "x.csv"))}`)]);
    const dtype = await run(profileCommand, ["convert", join(FIXTURES, "plain.npy"), join(dir, "x.npy"), "--dtype", "f2"]);
    expect([dtype.code, dtype.err]).toEqual([2, expect.stringContaining('--dtype must be f4 or f8, got "f2"')]);
  });
});

describe("lukv solve", () => {
  const curves = [
    [0, 1, 5, 6],
    [0, 2, 3],
    [0, 0, 4, 9, 10],
    [0, 3, 3.5, 8],
  ];
  const keepColumn = (out: string) =>
    out
      .split("\n")
      .filter((l) => /^\s+\d+\s+\d+\s+\d+\s+\S+$/.test(l))
      .map((l) => Number(l.trim().split(/\s+/)[2]));

  test("prints the greedy's keep per head and the losses", async () => {
    writeFileSync(join(dir, "curves.json"), JSON.stringify(curves));
    for (let keep = 0; keep <= 12; keep++) {
      const r = await run(solveCommand, [join(dir, "curves.json"), "--keep", String(keep)]);
      expect(r.code).toBe(0);
      expect(keepColumn(r.out)).toEqual(Array.from(solveBudgets(curves, keep)));
      expect(r.out).toMatch(/greedy loss \S+ \(hull loss \S+, hull-gap bound \S+: the optimum lies in \[\S+, \S+\]\)/);
    }
  });

  test("--exact, bounds from the file or the command line, --json", async () => {
    writeFileSync(join(dir, "obj.json"), JSON.stringify({ curves, minKeep: 1 }));
    const exact = await run(solveCommand, [join(dir, "obj.json"), "--keep", "7", "--exact"]);
    expect(exact.code).toBe(0);
    expect(exact.out.split("\n")[0]).toBe("exact optimum (dynamic programming): keep 7 of 12 tokens over 4 heads");
    expect(keepColumn(exact.out)).toEqual(Array.from(solveBudgetsExact(curves, 7, { minKeep: 1 })));
    expect(exact.out).toMatch(/exact loss \S+ \(greedy − exact = \S+\)/);

    const json = await run(solveCommand, [join(dir, "obj.json"), "--keep", "6", "--min-keep", "0", "--max-keep", "2", "--json"]);
    expect(json.code).toBe(0);
    const doc = JSON.parse(json.out);
    expect(doc.solver).toBe("greedy");
    expect(doc.keep).toEqual(Array.from(solveBudgets(curves, 6, { minKeep: 0, maxKeep: 2 })));
    expect(doc.loss).toBe(doc.headLoss.reduce((a: number, b: number) => a + b, 0));
  });

  test("bad arguments exit 2, bad files exit 1", async () => {
    writeFileSync(join(dir, "curves.json"), JSON.stringify(curves));
    const noKeep = await run(solveCommand, [join(dir, "curves.json")]);
    expect([noKeep.code, noKeep.err]).toEqual([2, expect.stringContaining("lukv solve: --keep N is required")]);
    const badKeep = await run(solveCommand, [join(dir, "curves.json"), "--keep", "2.5"]);
    expect([badKeep.code, badKeep.err]).toEqual([2, expect.stringContaining('--keep must be a non-negative integer, got "2.5"')]);
    const tooMany = await run(solveCommand, [join(dir, "curves.json"), "--keep", "13"]);
    expect(tooMany.code).toBe(2);
    expect(tooMany.err).toBe(
      "lukv solve: Expected an integer between 0 (the sum of minKeep) and 12 (the sum of maxKeep, capped by head lengths) for --keep but received 13 of type number",
    );
    const noFile = await run(solveCommand, ["--keep", "3"]);
    expect([noFile.code, noFile.err]).toEqual([2, expect.stringContaining("CURVES.json is missing")]);
    writeFileSync(join(dir, "bad.json"), '{"curves": [[0, 1], [0, "x"]]}');
    const bad = await run(solveCommand, [join(dir, "bad.json"), "--keep", "1"]);
    expect([bad.code, bad.err]).toEqual([1, `lukv solve: ${join(dir, "bad.json")}: curves[1] must be a non-empty array of finite numbers (loss after evicting 0..T tokens)`]);
    // 1e999 parses as Infinity: a malformed file too (exit 1, the file named), not a usage error.
    writeFileSync(join(dir, "inf.json"), '{"curves": [[0, 1], [0, 1e999]]}');
    const inf = await run(solveCommand, [join(dir, "inf.json"), "--keep", "1"]);
    expect([inf.code, inf.err]).toEqual([1, `lukv solve: ${join(dir, "inf.json")}: curves[1] must be a non-empty array of finite numbers (loss after evicting 0..T tokens)`]);
    // Finite losses whose sums pass the float64 range: a malformed file too, not "loss": null.
    writeFileSync(join(dir, "huge.json"), '{"curves": [[0, 1e308, 1.7e308], [0, 1e308, 1.7e308]]}');
    for (const extra of [[], ["--json"], ["--exact"]]) {
      const huge = await run(solveCommand, [join(dir, "huge.json"), "--keep", "0", ...extra]);
      expect([huge.code, huge.err]).toEqual([1, `lukv solve: ${join(dir, "huge.json")}: the losses are too large to sum in float64; scale the curves down`]);
    }
    // The file's own bounds are part of the file: malformed, they exit 1 too.
    for (const [field, value] of [["minKeep", -1], ["maxKeep", 1.5], ["minKeep", [1]], ["maxKeep", "x"]] as const) {
      writeFileSync(join(dir, "bounds.json"), JSON.stringify({ curves: [[0, 1], [0, 1, 2]], [field]: value }));
      const r = await run(solveCommand, [join(dir, "bounds.json"), "--keep", "1"]);
      expect([r.code, r.err]).toEqual([
        1,
        `lukv solve: ${join(dir, "bounds.json")}: "${field}" must be a non-negative integer or an array of 2 of them (one per head), got ${JSON.stringify(value)}`,
      ]);
    }
    writeFileSync(join(dir, "notjson.json"), "[[0, 1]");
    const notJson = await run(solveCommand, [join(dir, "notjson.json"), "--keep", "1"]);
    expect([notJson.code, notJson.err]).toEqual([1, expect.stringContaining("notjson.json is not valid JSON")]);
    const help = await run(solveCommand, ["--help"]);
    expect([help.code, help.out]).toEqual([0, expect.stringContaining("usage: lukv solve CURVES.json --keep N")]);
  });
});

test("a directory given as the input file is named in the message (Node's EISDIR names no path)", async () => {
  const inspect = await run(profileCommand, ["inspect", dir]);
  expect([inspect.code, inspect.out, inspect.err]).toEqual([1, "", `lukv profile inspect: cannot read ${dir}: EISDIR: illegal operation on a directory`]);
  const convert = await run(profileCommand, ["convert", dir, join(dir, "x.json")]);
  expect([convert.code, convert.out, convert.err]).toEqual([1, "", `lukv profile convert: cannot read ${dir}: EISDIR: illegal operation on a directory`]);
  const solve = await run(solveCommand, [dir, "--keep", "1"]);
  expect([solve.code, solve.out, solve.err]).toEqual([1, "", `lukv solve: cannot read ${dir}: EISDIR: illegal operation on a directory`]);
  const missing = join(dir, "missing.json");
  const gone = await run(solveCommand, [missing, "--keep", "1"]);
  expect([gone.code, gone.err]).toEqual([1, `lukv solve: cannot read ${missing}: ENOENT: no such file or directory`]);
});

test("solve: curves the solver cannot take are a malformed file (exit 1, the file named); an --exact too large is exit 2 in the command's words", async () => {
  const slope = join(dir, "slope.json");
  writeFileSync(slope, "[[-1e308, 1e308], [0, 1]]");
  for (const extra of [[], ["--exact"], ["--json"]]) {
    const r = await run(solveCommand, [slope, "--keep", "1", ...extra]);
    expect([extra, r.code, r.out, r.err]).toEqual([
      extra,
      1,
      "",
      `lukv solve: ${slope}: Expected curves[0] to change by less than the float64 range per token between hull points but it goes from -1e+308 at 0 to 1e+308 at 1`,
    ]);
  }
  const big = join(dir, "big.json");
  writeFileSync(big, JSON.stringify([0, 1].map(() => Array.from({ length: 10001 }, (_, n) => n))));
  const exact = await run(solveCommand, [big, "--keep", "10000", "--exact"]);
  expect([exact.code, exact.out, exact.err]).toEqual([2, "", "lukv solve: --exact would take 200040002 steps, more than its limit of 50000000: leave out --exact for the greedy's solution"]);
  expect((await run(solveCommand, [big, "--keep", "10000"])).code).toBe(0);
});

test("compression ratios of the rows are printed with enough digits: never 0 or 1, no row twice", async () => {
  const grid = 20000;
  const file = join(dir, "fine-grid.json");
  saveProfile(createProfile({ table: Float64Array.from({ length: grid * 2 }, (_, i) => (Math.floor(i / 2) + 1) / (grid + 1)), layers: 1, kvHeads: 2 }), file);
  const inspect = await run(profileCommand, ["inspect", file]);
  expect(inspect.code).toBe(0);
  expect(inspect.out).toContain("shape        grid 20000 × layers 1 × kvHeads 2 (rows: compression ratio 0.00005 … 0.99995)\n");

  const samples = join(dir, "samples");
  const p = new Profiler({ layers: 1, kvHeads: 2, sink: 1, window: 2, scorer: "knorm" });
  const head = (k: number) => Float32Array.from({ length: 12 }, (_, i) => ((i * 7 + k) % 12) / 12);
  p.addSample({ scores: [[head(1), head(2)]], oracle: [[head(3), head(5)]], decodeSteps: 3 });
  p.save(samples);
  const ratios = (out: string) => out.split("\n").filter((l) => l.startsWith("  ratio ")).map((l) => l.split(/\s+/)[2]);
  for (const [g, expected] of [["5", ["0.5", "0.8333"]], ["1", ["0.5"]], ["99", ["0.5", "0.8", "0.9"]]] as const) {
    const r = await run(profileCommand, ["build", samples, "--grid", g, "--out", join(dir, "built.json")]);
    expect([g, r.code, ratios(r.out)]).toEqual([g, 0, expected]);
  }
});
