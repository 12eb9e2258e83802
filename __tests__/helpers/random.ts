// Seeded random data for tests: the seed comes from LUKV_SEED or the clock and is printed, so a
// failure can be replayed with LUKV_SEED=<seed>.
import { rng } from "../../ts/random";

export { rng };

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
