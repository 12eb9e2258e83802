// The keep share of every (layer, KV head) of a profile at one compression ratio, drawn as an SVG
// heat map and as a compact grid for the terminal (coloured blocks, or digits where colour is off).
import { pruneRatiosAt, type Profile } from "../profile";
import { escapeControls, unicodeEscape } from "../errors";

/** Keep shares 1 − Φ at `ratio`, layer-major, with their range. */
export interface KeepGrid {
  layers: number;
  kvHeads: number;
  ratio: number;
  keep: Float64Array;
  min: number;
  max: number;
}

export function keepGrid(profile: Profile, ratio: number): KeepGrid {
  const keep = Float64Array.from(pruneRatiosAt(profile, ratio), (p) => 1 - p);
  let min = Infinity;
  let max = -Infinity;
  for (const k of keep) {
    min = Math.min(min, k);
    max = Math.max(max, k);
  }
  return { layers: profile.layers, kvHeads: profile.kvHeads, ratio, keep, min, max };
}

/** Position of `k` on the grid's colour scale, 0 at its smallest share and 1 at its largest. */
export function scaleOf(g: KeepGrid, k: number): number {
  return g.max > g.min ? (k - g.min) / (g.max - g.min) : 0.5;
}

// Viridis at five points (dark purple → yellow), interpolated linearly in RGB: readable by people
// with the common colour-vision deficiencies, and ordered in lightness.
const STOPS: [number, number, number][] = [
  [68, 1, 84],
  [59, 82, 139],
  [33, 145, 140],
  [94, 201, 98],
  [253, 231, 37],
];

/** RGB of the colour scale at t in [0, 1]. */
export function colourAt(t: number): [number, number, number] {
  const x = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x));
  const f = x - i;
  return [0, 1, 2].map((c) => Math.round(STOPS[i][c] + f * (STOPS[i + 1][c] - STOPS[i][c]))) as [number, number, number];
}

const hex = (rgb: [number, number, number]): string => "#" + rgb.map((v) => v.toString(16).padStart(2, "0")).join("");

/** The digit of a share in the terminal's plain grid: its tenth of the scale, 0–9. */
export function digitOf(g: KeepGrid, k: number): number {
  // The small slack keeps a share that sits on a tenth (up to rounding) in that tenth.
  return Math.min(9, Math.floor(scaleOf(g, k) * 10 + 1e-9));
}

/** How the terminal grid is drawn: plain digits, ANSI 256-colour or 24-bit colour blocks. */
export type ColourMode = "none" | "ansi256" | "truecolor";

/** Colour only on a terminal, never with NO_COLOR set (https://no-color.org); 24-bit where COLORTERM says so. */
export function colourMode(isTTY: boolean, env: NodeJS.ProcessEnv = process.env): ColourMode {
  if (!isTTY || (env.NO_COLOR !== undefined && env.NO_COLOR !== "")) return "none";
  return env.COLORTERM === "truecolor" || env.COLORTERM === "24bit" ? "truecolor" : "ansi256";
}

function ansiBackground(rgb: [number, number, number], mode: ColourMode): string {
  if (mode === "truecolor") return `\x1b[48;2;${rgb[0]};${rgb[1]};${rgb[2]}m`;
  const [r, g, b] = rgb.map((v) => Math.round((v / 255) * 5));
  return `\x1b[48;5;${16 + 36 * r + 6 * g + b}m`;
}

const fmt = (x: number): string => x.toFixed(3);

/** One row per layer: a two-character cell per KV head, then the layer's mean keep share. */
export function terminalGrid(g: KeepGrid, mode: ColourMode): string[] {
  const { layers, kvHeads, keep } = g;
  const cell = (k: number): string =>
    mode === "none" ? String(digitOf(g, k)).repeat(2) : `${ansiBackground(colourAt(scaleOf(g, k)), mode)}  \x1b[0m`;
  const mean = keep.reduce((a, b) => a + b, 0) / keep.length;
  const width = Math.max(5, 2 * kvHeads);
  const legend =
    mode === "none"
      ? `  digits: 0 = ${fmt(g.min)} … 9 = ${fmt(g.max)} (each digit a tenth of that range)`
      : `  colours: ${cell(g.min)} ${fmt(g.min)} … ${cell(g.max)} ${fmt(g.max)}`;
  const lines = [`keep share per KV head at compression ratio ${g.ratio} (mean ${fmt(mean)}, min ${fmt(g.min)}, max ${fmt(g.max)})`, legend];
  lines.push(`  layer  ${"heads".padEnd(width)}  mean keep`);
  for (let l = 0; l < layers; l++) {
    let cells = "";
    let sum = 0;
    for (let h = 0; h < kvHeads; h++) {
      const k = keep[l * kvHeads + h];
      cells += cell(k);
      sum += k;
    }
    // Pad by visible width (colour codes take no columns).
    lines.push(`  ${String(l).padStart(5)}  ${cells}${" ".repeat(Math.max(0, width - 2 * kvHeads))}  ${fmt(sum / kvHeads)}`);
  }
  return lines;
}

/**
 * The compression ratio of row `row` of a table with `grid` rows, (row + 1) / (grid + 1), with
 * enough decimals to tell it from its neighbours and from 0 and 1 (at least 4: 0.01, 0.8333).
 */
export function gridRatio(row: number, grid: number): string {
  const digits = Math.max(4, Math.ceil(Math.log10(grid + 1)) + 1);
  return String(+((row + 1) / (grid + 1)).toFixed(digits));
}

const CONTROL_NAMES: Record<string, string> = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

/**
 * `s` with every control character (C0, DEL and C1: what a terminal may act on, and what XML 1.0
 * does not allow) and U+FFFE / U+FFFF written out as an escape ("\n", "\u001b"), so that text
 * from a file prints as text and fits in XML.
 */
export function printable(s: string): string {
  return escapeControls(s, (c) => CONTROL_NAMES[c] ?? unicodeEscape(c));
}

/** Text for XML character data or an attribute value: printable, with the five special characters escaped. */
const escapeXml = (s: string): string =>
  printable(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/'/g, "&apos;");

/**
 * The heat map as a standalone SVG document: a cell per (layer, KV head), layers down and heads
 * across, coloured on a scale from the smallest to the largest share; every cell carries its value
 * in a <title> (shown on hover) and in data-layer / data-head / data-keep attributes.
 */
export function heatMapSvg(g: KeepGrid, title = "LU-KV profile"): string {
  const { layers, kvHeads, keep } = g;
  const cell = Math.max(6, Math.min(28, Math.floor(640 / Math.max(layers, kvHeads))));
  const left = 64, top = 52, legendW = 16;
  const gridW = kvHeads * cell, gridH = layers * cell;
  // Wide enough for the title lines too (about 7 px per character at these sizes).
  const width = Math.max(left + gridW + 40 + legendW + 60, left + 7 * Math.max(title.length, 48) + 16);
  const height = top + gridH + 48;
  const out: string[] = [];
  out.push(`<?xml version="1.0" encoding="UTF-8"?>`);
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`);
  out.push(`<title>${escapeXml(`${title}: keep share per (layer, KV head) at compression ratio ${g.ratio}`)}</title>`);
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`<text x="${left}" y="20" font-size="13" font-weight="bold">${escapeXml(title)}</text>`);
  out.push(`<text x="${left}" y="36">${escapeXml(`keep share per KV head at compression ratio ${g.ratio}`)}</text>`);
  out.push(`<g id="cells">`);
  for (let l = 0; l < layers; l++)
    for (let h = 0; h < kvHeads; h++) {
      const k = keep[l * kvHeads + h];
      out.push(
        `<rect x="${left + h * cell}" y="${top + l * cell}" width="${cell}" height="${cell}" fill="${hex(colourAt(scaleOf(g, k)))}" ` +
          `data-layer="${l}" data-head="${h}" data-keep="${k.toPrecision(6)}"><title>layer ${l}, KV head ${h}: keep ${k.toFixed(4)}</title></rect>`,
      );
    }
  out.push(`</g>`);
  // Axes: ticks and labels.
  // A label every `step` rows / columns, so that labels never overlap.
  const step = Math.max(1, Math.ceil(12 / cell));
  const lt = step, ht = step;
  for (let l = 0; l < layers; l += lt) out.push(`<text x="${left - 6}" y="${top + l * cell + cell / 2 + 4}" text-anchor="end">${l}</text>`);
  for (let h = 0; h < kvHeads; h += ht) out.push(`<text x="${left + h * cell + cell / 2}" y="${top + gridH + 14}" text-anchor="middle">${h}</text>`);
  out.push(`<text x="${left + gridW / 2}" y="${top + gridH + 34}" text-anchor="middle">KV head</text>`);
  out.push(`<text transform="translate(${left - 40} ${top + gridH / 2}) rotate(-90)" text-anchor="middle">layer</text>`);
  // Colour scale legend: the gradient from the smallest share (bottom) to the largest (top).
  const lx = left + gridW + 40;
  out.push(`<defs><linearGradient id="scale" x1="0" y1="1" x2="0" y2="0">`);
  for (let i = 0; i <= 10; i++) out.push(`<stop offset="${i / 10}" stop-color="${hex(colourAt(i / 10))}"/>`);
  out.push(`</linearGradient></defs>`);
  out.push(`<rect x="${lx}" y="${top}" width="${legendW}" height="${gridH}" fill="url(#scale)" stroke="#444444" stroke-width="0.5"/>`);
  out.push(`<text x="${lx + legendW + 4}" y="${top + 8}">${fmt(g.max)}</text>`);
  out.push(`<text x="${lx + legendW + 4}" y="${top + gridH}">${fmt(g.min)}</text>`);
  out.push(`<text x="${lx + legendW / 2}" y="${top - 6}" text-anchor="middle">keep</text>`);
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}
