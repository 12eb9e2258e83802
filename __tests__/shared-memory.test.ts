// Typed arrays over a SharedArrayBuffer (as worker_threads share them) are accepted wherever a plain
// array is, and give the same results.
import { KVCache, toBits } from "../ts";
import { randn, rng, testSeed } from "./helpers/random";

const seed = testSeed("shared-memory");
const shape = { layers: 2, kvHeads: 2, queryHeads: 4, headDim: 8, pageSize: 4, maxTokens: 256 };
const row = shape.kvHeads * shape.headDim;
const qrow = shape.queryHeads * shape.headDim;

/** A copy of `a` over a SharedArrayBuffer, 16 bytes in (so the view's byteOffset must be honoured). */
function shared<T extends Float32Array | Uint16Array | Int32Array>(a: T): T {
  const buf = new SharedArrayBuffer(a.byteLength + 16);
  const view = new (a.constructor as new (b: SharedArrayBuffer, o: number, n: number) => T)(buf, 16, a.length);
  view.set(a as never);
  return view;
}

test.each(["f32", "f16"] as const)("append, attend, attendAsync and out over SharedArrayBuffer (%s)", async (dtype) => {
  const r = rng(seed);
  const k = randn(r, 5 * row);
  const v = randn(r, 5 * row);
  const q = randn(r, 2 * qrow);
  const plain = new KVCache({ ...shape, dtype });
  const sab = new KVCache({ ...shape, dtype });
  try {
    const a = plain.createSequence();
    const b = sab.createSequence();
    a.append(0, k, v);
    b.append(0, shared(k), shared(v));
    if (dtype === "f16") {
      a.append(1, toBits(k, "f16"), toBits(v, "f16"));
      b.append(1, shared(toBits(k, "f16")), shared(toBits(v, "f16")));
    }
    expect(b.keys(0, 1)).toEqual(a.keys(0, 1));
    const expected = a.attend(0, q);
    expect(b.attend(0, shared(q))).toEqual(expected);
    expect(await b.attendAsync(0, shared(q))).toEqual(expected);
    const out = shared(new Float32Array(2 * qrow));
    expect(b.attend(0, shared(q), { out })).toBe(out);
    expect(out).toEqual(expected);
    const out2 = shared(new Float32Array(2 * qrow));
    await b.attendAsync(0, shared(q), { out: out2 });
    expect(out2).toEqual(expected);
    if (dtype === "f16") expect(b.attend(1, shared(toBits(q, "f16")))).toEqual(a.attend(1, toBits(q, "f16")));
    const obs = [shared(q), undefined];
    expect(b.scores(0, "snapkv", { window: 2, observationQueries: obs })).toEqual(a.scores(0, "snapkv", { window: 2, observationQueries: [q, undefined] }));
    const budgets = shared(Int32Array.from(a.lengths(), (n) => Math.floor(n / 2)));
    expect(b.compress({ budgets, sink: 0, window: 0 }).kept).toEqual(a.compress({ budgets: Int32Array.from(budgets), sink: 0, window: 0 }).kept);
  } finally {
    plain.dispose();
    sab.dispose();
  }
});
