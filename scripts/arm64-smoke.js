// Smoke test of a lukv build on another processor (run by scripts/arm64-check.sh under an emulated
// arm64 Node): the addon loads and reports its kernel tables; on every table and storage type,
// attention over 300 tokens matches a float64 reference on the stored rows, and compress frees pages.
// Usage: node scripts/arm64-smoke.js <package folder with dist/ and build/Release/lukv.node>
const path = require("path");
const { KVCache, backends } = require(path.resolve(process.argv[2] || "."));
const b = backends();
console.log(process.arch, JSON.stringify(b.cpu), b.binary && b.binary.kind);
let seed = 12345;
const rnd = () => { seed = (seed * 1103515245 + 12345) >>> 0; return seed / 4294967296 - 0.5; };
for (const simd of b.cpu.simdSupported) for (const dtype of ["f32", "f16", "bf16"]) {
  const kvHeads = 2, queryHeads = 8, headDim = 64, n = 300, G = queryHeads / kvHeads;
  const cache = new KVCache({ layers: 1, kvHeads, queryHeads, headDim, dtype, simd, maxTokens: kvHeads * n });
  const seq = cache.createSequence();
  const keys = Float32Array.from({ length: n * kvHeads * headDim }, () => 4 * rnd());
  const values = Float32Array.from({ length: n * kvHeads * headDim }, rnd);
  seq.append(0, keys, values);
  const q = Float32Array.from({ length: 3 * queryHeads * headDim }, rnd);
  const out = seq.attend(0, q);
  let num = 0, den = 0;
  for (let h = 0; h < kvHeads; h++) {
    const K = seq.keys(0, h), V = seq.values(0, h);   // stored (dtype-rounded) rows
    for (let r = 0; r < 3; r++) for (let g = 0; g < G; g++) {
      const qo = (r * queryHeads + h * G + g) * headDim, vis = n - 3 + r + 1;
      const s = []; let m = -Infinity;
      for (let t = 0; t < vis; t++) { let d = 0; for (let i = 0; i < headDim; i++) d += q[qo + i] * K[t * headDim + i]; d /= Math.sqrt(headDim); s.push(d); m = Math.max(m, d); }
      let z = 0; for (let t = 0; t < vis; t++) { s[t] = Math.exp(s[t] - m); z += s[t]; }
      for (let i = 0; i < headDim; i++) { let o = 0; for (let t = 0; t < vis; t++) o += s[t] / z * V[t * headDim + i]; num += (out[qo + i] - o) ** 2; den += o * o; }
    }
  }
  const rel = Math.sqrt(num / den);
  console.log(`${rel < 1e-5 ? "ok  " : "FAIL"} ${simd} ${dtype}: rel. error ${rel.toExponential(2)}`);
  if (!(rel < 1e-5)) process.exitCode = 1;
  const before = cache.usage().pagesUsed;
  const rep = seq.compress({ ratio: 0.5, scorer: "keydiff" });
  const after = cache.usage().pagesUsed;
  console.log(`     compress 0.5: kept ${rep.total} of ${rep.before}, pages ${before} -> ${after}`);
  if (!(rep.total === rep.before / 2 && after < before)) process.exitCode = 1;
  cache.dispose();
}
