// Seeded random data for tests: the seed comes from LUKV_SEED or the clock and is printed, so a
// failure can be replayed with LUKV_SEED=<seed>.

/** mulberry32: small, fast, good enough for test data. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function testSeed(label: string): number {
  const env = process.env.LUKV_SEED;
  const seed = env ? Number(env) : (Date.now() ^ (Math.random() * 0x7fffffff)) >>> 0;
  // eslint-disable-next-line no-console
  console.log(`${label}: seed ${seed} (replay with LUKV_SEED=${seed})`);
  return seed;
}

/** Standard normal values times `scale`. */
export function randn(r: () => number, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(r(), 1e-12);
    const v = r();
    out[i] = scale * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return out;
}
