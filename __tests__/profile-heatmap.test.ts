// `lukv profile inspect --plot`: the SVG is well-formed XML whose cells carry the keep shares of a
// known profile; the terminal grid is coloured only on a terminal without NO_COLOR.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { profileCommand } from "../ts/cli/profile";
import { colourAt, colourMode, heatMapSvg, keepGrid, printable, terminalGrid } from "../ts/cli/heatmap";
import { createProfile, saveProfile } from "../ts/profile";

interface XmlElement {
  name: string;
  attrs: Record<string, string>;
  children: XmlElement[];
  text: string;
}

/**
 * A strict parser for the subset of XML an SVG file uses: one root element, properly nested and
 * closed tags, quoted and unique attributes, only the five predefined entities and numeric
 * character references, an optional XML declaration and comments. Throws on anything else.
 */
function parseXml(src: string): XmlElement {
  let i = 0;
  const fail = (what: string): never => {
    throw new Error(`XML error at offset ${i}: ${what} (near ${JSON.stringify(src.slice(i, i + 30))})`);
  };
  const name = /[A-Za-z_:][-A-Za-z0-9_:.]*/y;
  const readName = (): string => {
    name.lastIndex = i;
    const m = name.exec(src);
    if (!m) fail("expected a name");
    i += m![0].length;
    return m![0];
  };
  const decode = (s: string): string => {
    if (/[<]/.test(s)) fail("'<' in text or attribute");
    return s.replace(/&([^;]*);|&/g, (_match, ent: string | undefined) => {
      if (ent === undefined) fail("bare '&'");
      const named: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };
      if (ent! in named) return named[ent!];
      if (/^#[0-9]+$/.test(ent!)) return String.fromCodePoint(Number(ent!.slice(1)));
      if (/^#x[0-9a-fA-F]+$/.test(ent!)) return String.fromCodePoint(parseInt(ent!.slice(2), 16));
      return fail(`unknown entity &${ent};`);
    });
  };
  const skipSpace = (): void => {
    while (i < src.length && /\s/.test(src[i])) i++;
  };
  const skipMisc = (): void => {
    for (;;) {
      skipSpace();
      if (src.startsWith("<!--", i)) {
        const e = src.indexOf("-->", i + 4);
        if (e < 0) fail("unclosed comment");
        i = e + 3;
      } else return;
    }
  };
  const element = (): XmlElement => {
    if (src[i] !== "<") fail("expected '<'");
    i++;
    const el: XmlElement = { name: readName(), attrs: {}, children: [], text: "" };
    for (;;) {
      const before = i;
      skipSpace();
      if (src.startsWith("/>", i)) {
        i += 2;
        return el;
      }
      if (src[i] === ">") {
        i++;
        break;
      }
      if (i === before) fail("expected whitespace before an attribute");
      const a = readName();
      if (a in el.attrs) fail(`duplicate attribute ${a}`);
      skipSpace();
      if (src[i] !== "=") fail("expected '='");
      i++;
      skipSpace();
      const q = src[i];
      if (q !== '"' && q !== "'") fail("unquoted attribute");
      const e = src.indexOf(q, i + 1);
      if (e < 0) fail("unclosed attribute");
      el.attrs[a] = decode(src.slice(i + 1, e));
      i = e + 1;
    }
    for (;;) {
      const lt = src.indexOf("<", i);
      if (lt < 0) fail(`unclosed <${el.name}>`);
      el.text += decode(src.slice(i, lt));
      i = lt;
      if (src.startsWith("</", i)) {
        i += 2;
        const n = readName();
        if (n !== el.name) fail(`</${n}> closes <${el.name}>`);
        skipSpace();
        if (src[i] !== ">") fail("expected '>'");
        i++;
        return el;
      }
      if (src.startsWith("<!--", i)) {
        const e = src.indexOf("-->", i + 4);
        if (e < 0) fail("unclosed comment");
        i = e + 3;
        continue;
      }
      el.children.push(element());
    }
  };
  if (src.startsWith("<?xml", i)) {
    const e = src.indexOf("?>", i);
    if (e < 0) fail("unclosed declaration");
    i = e + 2;
  }
  skipMisc();
  const root = element();
  skipMisc();
  if (i !== src.length) fail("content after the root element");
  return root;
}

function all(el: XmlElement, pred: (e: XmlElement) => boolean, out: XmlElement[] = []): XmlElement[] {
  if (pred(el)) out.push(el);
  for (const c of el.children) all(c, pred, out);
  return out;
}

// A known profile: 3 layers × 2 KV heads; at ratio 0.5 (row 49 of 99) head (l, h) prunes 0.1·(l·2 + h) + 0.2.
const layers = 3, kvHeads = 2;
const table = new Float64Array(99 * layers * kvHeads);
for (let row = 0; row < 99; row++)
  for (let c = 0; c < layers * kvHeads; c++) table[row * layers * kvHeads + c] = row === 49 ? 0.1 * c + 0.2 : (row + 1) / 100;
const profile = createProfile({ table, layers, kvHeads, meta: { model: "m<&>" } });
const expectedKeep = (l: number, h: number): number => 1 - (0.1 * (l * kvHeads + h) + 0.2);

describe("the parser of the test rejects what is not well-formed", () => {
  test.each([
    ["<a><b></a></b>", "closes"],
    ["<a x=1/>", "unquoted"],
    ['<a x="1" x="2"/>', "duplicate"],
    ["<a>&nbsp;</a>", "unknown entity"],
    ["<a>1 & 2</a>", "bare"],
    ["<a/><b/>", "after the root"],
    ["<a>", "unclosed"],
  ])("%s", (src, msg) => expect(() => parseXml(src)).toThrow(msg));
});

describe("heat map SVG", () => {
  test("parses, and every (layer, KV head) cell carries its keep share", () => {
    const svg = heatMapSvg(keepGrid(profile, 0.5), "model m<&>");
    const root = parseXml(svg);
    expect(root.name).toBe("svg");
    expect(root.attrs.xmlns).toBe("http://www.w3.org/2000/svg");
    const cells = all(root, (e) => e.name === "rect" && e.attrs["data-layer"] !== undefined);
    expect(cells).toHaveLength(layers * kvHeads);
    const seen = new Set<string>();
    for (const c of cells) {
      const l = Number(c.attrs["data-layer"]), h = Number(c.attrs["data-head"]);
      seen.add(`${l},${h}`);
      expect(Number(c.attrs["data-keep"])).toBeCloseTo(expectedKeep(l, h), 5);
      const title = c.children.find((e) => e.name === "title");
      expect(title?.text).toBe(`layer ${l}, KV head ${h}: keep ${expectedKeep(l, h).toFixed(4)}`);
      // Placed by layer (down) and head (across).
      expect(Number(c.attrs.x)).toBe(Number(cells[0].attrs.x) + h * Number(c.attrs.width));
      expect(Number(c.attrs.y)).toBe(Number(cells[0].attrs.y) + l * Number(c.attrs.height));
    }
    expect(seen.size).toBe(layers * kvHeads);
    // The most-kept head gets the top of the colour scale, the least-kept its bottom.
    const fill = (l: number, h: number) => cells.find((c) => c.attrs["data-layer"] === String(l) && c.attrs["data-head"] === String(h))!.attrs.fill;
    const hex = (rgb: number[]) => "#" + rgb.map((v) => v.toString(16).padStart(2, "0")).join("");
    expect(fill(0, 0)).toBe(hex(colourAt(1)));
    expect(fill(2, 1)).toBe(hex(colourAt(0)));
    // Labelled axes, the legend's range and the escaped title.
    const texts = all(root, (e) => e.name === "text").map((e) => e.text);
    expect(texts).toEqual(expect.arrayContaining(["KV head", "layer", "keep", "0.800", "0.300", "model m<&>", "0", "1", "2"]));
    expect(all(root, (e) => e.name === "linearGradient")).toHaveLength(1);
  });

  test("lukv profile inspect --plot writes it; a non-.svg path is a usage error", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lukv-heatmap-"));
    try {
      saveProfile(profile, join(dir, "p.json"));
      const out: string[] = [];
      const err: string[] = [];
      const io = { out: (s: string) => out.push(s), err: (s: string) => err.push(s) };
      expect(await profileCommand(["inspect", join(dir, "p.json"), "--ratio", "0.5", "--plot", join(dir, "b.svg")], io)).toBe(0);
      const cells = all(parseXml(readFileSync(join(dir, "b.svg"), "utf8")), (e) => e.name === "rect" && e.attrs["data-keep"] !== undefined);
      expect(cells.map((c) => Number(c.attrs["data-keep"]))).toEqual(
        Array.from({ length: 6 }, (_, c) => expect.closeTo(expectedKeep(Math.floor(c / 2), c % 2), 5)),
      );
      expect(out.join("\n")).toContain(`wrote ${join(dir, "b.svg")}`);
      expect(await profileCommand(["inspect", join(dir, "p.json"), "--plot", join(dir, "b.png")], io)).toBe(2);
      expect(err.join("\n")).toContain("--plot must name an .svg file");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("control characters in a profile's metadata", () => {
  // What a crafted or damaged file may hold: terminal escapes (colour, clear screen, window title,
  // the one-byte CSI U+009B), a bell, NUL, line breaks, and U+FFFF (not allowed in XML either).
  const meta = {
    model: 'a<b>&"c\u001b[31mRED\u0007\u0000\u009b2J\uffff',
    scorer: "snap\nkv\r\t",
    scorerOptions: { "k\u009b": "v\u007f\u001b" },
    calibration: { dataset: "d\u001b]0;title\u0007" },
    createdAt: "2024\u001b[2J",
  };
  const shown = {
    model: 'a<b>&"c\\u001b[31mRED\\u0007\\u0000\\u009b2J\\uffff',
    scorer: "snap\\nkv\\r\\t",
    dataset: "d\\u001b]0;title\\u0007",
    createdAt: "2024\\u001b[2J",
  };
  // Every character outside XML 1.0's Char production (surrogate pairs aside), and what a terminal acts on.
  const notXml = /[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\ud800-\udfff]/;
  const control = /[\u0000-\u001f\u007f-\u009f]/;

  test("are written out as escapes, in the SVG (valid XML) and on the terminal", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lukv-heatmap-"));
    try {
      saveProfile(createProfile({ table, layers, kvHeads, meta }), join(dir, "evil.json"));
      const out: string[] = [];
      const err: string[] = [];
      const io = { out: (s: string) => out.push(s), err: (s: string) => err.push(s) };
      expect(await profileCommand(["inspect", join(dir, "evil.json"), "--plot", join(dir, "evil.svg")], io)).toBe(0);
      expect(err).toEqual([]);
      const svg = readFileSync(join(dir, "evil.svg"), "utf8");
      expect(svg).not.toMatch(notXml);
      const texts = all(parseXml(svg), (e) => e.name === "text" || e.name === "title").map((e) => e.text);
      expect(texts).toContain(`LU-KV profile of ${shown.model}`);
      const printed = out.join("\n");
      expect(printed.replace(/\n/g, "")).not.toMatch(control);
      const lines = printed.split("\n");
      expect(lines).toContain(`  model        ${shown.model}`);
      expect(lines).toContain(`  scorer       ${shown.scorer} {"k\\u009b":"v\\u007f\\u001b"}`);
      expect(lines).toContain(`  created      ${shown.createdAt}`);
      expect(lines.find((l) => l.startsWith("  calibration"))).toContain(`data: ${shown.dataset}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("heatMapSvg escapes a title with control characters; printable text is left as it is", () => {
    const svg = heatMapSvg(keepGrid(profile, 0.5), "t\u001b[1m\u0000\n\u0085é 🙂 <x>");
    expect(svg).not.toMatch(notXml);
    const root = parseXml(svg);
    expect(all(root, (e) => e.name === "text").map((e) => e.text)).toContain("t\\u001b[1m\\u0000\\n\\u0085é 🙂 <x>");
    expect(printable("Zürich 🙂 <&> ok")).toBe("Zürich 🙂 <&> ok");
  });
});

describe("terminal grid", () => {
  const grid = keepGrid(profile, 0.5);
  test("digits without colour: 9 for the most kept, 0 for the least, each a tenth of the range", () => {
    const lines = terminalGrid(grid, "none");
    expect(lines.join("\n")).not.toContain("\x1b[");
    const rows = lines.filter((l) => /^\s+\d+\s{2}\d{4}\s+\d\.\d{3}$/.test(l)).map((l) => l.trim().split(/\s+/));
    // keep 0.8, 0.7 / 0.6, 0.5 / 0.4, 0.3 on the range 0.3 … 0.8
    expect(rows).toEqual([
      ["0", "9988", "0.750"],
      ["1", "6644", "0.550"],
      ["2", "2200", "0.350"],
    ]);
    expect(lines[1]).toBe("  digits: 0 = 0.300 … 9 = 0.800 (each digit a tenth of that range)");
  });

  test("coloured blocks: 256-colour or 24-bit backgrounds", () => {
    const ansi = terminalGrid(grid, "ansi256").join("\n");
    expect(ansi).toMatch(/\x1b\[48;5;\d+m {2}\x1b\[0m/);
    const [r, g, b] = colourAt(1);
    expect(terminalGrid(grid, "truecolor").join("\n")).toContain(`\x1b[48;2;${r};${g};${b}m  \x1b[0m`);
  });

  test("colour only on a terminal, and never with NO_COLOR", () => {
    expect(colourMode(false, {})).toBe("none");
    expect(colourMode(true, { NO_COLOR: "1" })).toBe("none");
    expect(colourMode(true, {})).toBe("ansi256");
    expect(colourMode(true, { COLORTERM: "truecolor" })).toBe("truecolor");
  });
});
