// Unknown option names throw InvalidArgumentError listing the accepted ones: a typo such as `ratoi`
// must not fall back to a default without a word.
import { KVCache, Profiler, budgetsFromProfile, createProfile, encodeProfile, profileToNpy, saveProfile, solveBudgets, solveBudgetsDetailed, solveBudgetsExact, solveBudgetsForTotals } from "../ts";
import { encodeNpy } from "../ts/profile/npy";
import { randn, rng, testSeed } from "./helpers/random";

const seed = testSeed("options");
const shape = { layers: 2, kvHeads: 2, queryHeads: 4, headDim: 4, pageSize: 4, maxTokens: 256, dtype: "f32" as const };

function expectInvalid(fn: () => unknown, message: string): void {
  let caught: Error | undefined;
  try {
    fn();
  } catch (e) {
    caught = e as Error;
  }
  expect(caught?.name).toBe("InvalidArgumentError");
  expect(caught?.message).toBe(message);
}

const COMPRESS = "scorer, window, pooling, kernel, groupReduce, seed, scale, observationQueries, valueNorm, sink, expectedAttention, ratio, budget, allocation, profile, budgets, alpha, beta";

test("cache, attend, compress, scores and recordOracle options", async () => {
  expectInvalid(
    () => new KVCache({ ...shape, pagesize: 8 } as never),
    'Expected only layers, kvHeads, queryHeads, headDim, pageSize, maxTokens, dtype, device, threads, simd, prefetch, observationWindow, checkFinite in options but received "pagesize" (did you mean pageSize?)',
  );
  const cache = new KVCache(shape);
  try {
    const seq = cache.createSequence();
    const r = rng(seed);
    seq.append(0, randn(r, 40 * 8), randn(r, 40 * 8));
    seq.append(1, randn(r, 40 * 8), randn(r, 40 * 8));
    const before = seq.lengths();
    expectInvalid(() => seq.compress({ ratoi: 0.5 } as never), `Expected only ${COMPRESS} in options but received "ratoi" (did you mean ratio?)`);
    expectInvalid(() => seq.compress({ buggets: 100 } as never), `Expected only ${COMPRESS} in options but received "buggets" (did you mean budgets?)`);
    await expect(seq.compressAsync({ ratio: 0.5, colour: "red" } as never)).rejects.toMatchObject({
      name: "InvalidArgumentError",
      message: `Expected only ${COMPRESS} in options but received "colour"`,
    });
    expect(seq.lengths()).toEqual(before);
    expectInvalid(
      () => seq.scores(0, "snapkv", { windw: 4 } as never),
      'Expected only window, pooling, kernel, groupReduce, seed, scale, observationQueries, valueNorm, sink, expectedAttention in options but received "windw" (did you mean window?)',
    );
    expectInvalid(() => seq.attend(0, new Float32Array(16), { scael: 1 } as never), 'Expected only scale, out in options but received "scael" (did you mean scale?)');
    await expect(seq.attendAsync(0, new Float32Array(16), { outt: 1 } as never)).rejects.toMatchObject({
      message: 'Expected only scale, out in options but received "outt" (did you mean out?)',
    });
    expectInvalid(() => seq.recordOracle({ normalise: true } as never), 'Expected only outputProjection, normalize in options but received "normalise" (did you mean normalize?)');
    // Known names still work, undefined values included.
    expect(seq.compress({ ratio: 0.5, scorer: "knorm", sink: 2, window: 2, profile: undefined }).total).toBe(80);
  } finally {
    cache.dispose();
  }
});

test("profiler, budgetsFromProfile and saveProfile options", () => {
  expectInvalid(
    () => new Profiler({ layers: 1, kvHeads: 1, scorrer: "snapkv" } as never),
    'Expected only layers, kvHeads, scorer, scorerOptions, sink, window, grid, scope, model, dataset, keepSamples in options but received "scorrer" (did you mean scorer?)',
  );
  const profile = createProfile({ table: [0.5], grid: 1, layers: 1, kvHeads: 1 });
  expectInvalid(
    () => budgetsFromProfile(profile, { ratio: 0.5, lengths: [10], minkeep: 2 } as never),
    'Expected only ratio, lengths, minKeep in options but received "minkeep" (did you mean minKeep?)',
  );
  expectInvalid(() => saveProfile(profile, "/nonexistent/p.json", { fromat: "json" } as never), 'Expected only format, dtype in options but received "fromat" (did you mean format?)');
});

test("solver, profile encoding and Profiler.addSequence options", () => {
  const curves = [[0, 1, 2], [0, 2, 4]];
  const solverMessage = 'Expected only minKeep, maxKeep in options but received "minkeep" (did you mean minKeep?)';
  expectInvalid(() => solveBudgets(curves, 3, { minkeep: 3 } as never), solverMessage);
  expectInvalid(() => solveBudgetsDetailed(curves, 3, { minkeep: 3 } as never), solverMessage);
  expectInvalid(() => solveBudgetsForTotals(curves, [2, 3], { minkeep: 3 } as never), solverMessage);
  expectInvalid(() => solveBudgetsExact(curves, 3, { maxstep: 10 } as never), 'Expected only minKeep, maxKeep, maxSteps in options but received "maxstep" (did you mean maxSteps?)');
  const profile = createProfile({ table: [0.5], grid: 1, layers: 1, kvHeads: 1 });
  expectInvalid(() => profileToNpy(profile, { dtyp: "<f4" } as never), 'Expected only dtype in options but received "dtyp" (did you mean dtype?)');
  for (const format of ["npy", "json"] as const)
    expectInvalid(() => encodeProfile(profile, format, { dtyp: "<f4" } as never), 'Expected only dtype in options but received "dtyp" (did you mean dtype?)');
  expectInvalid(() => encodeNpy([1], [1], { fortran: true } as never), 'Expected only dtype, version, fortranOrder in options but received "fortran"');
  const cache = new KVCache(shape);
  try {
    const seq = cache.createSequence();
    seq.recordOracle();
    expectInvalid(() => new Profiler({ layers: 2, kvHeads: 2 }).addSequence(seq, { decodestep: 1 } as never), 'Expected only decodeSteps in options but received "decodestep" (did you mean decodeSteps?)');
  } finally {
    cache.dispose();
  }
});

test("cache construction: threads null is the default, a default maxTokens past the limits is named as the default, a pool the host cannot hold says what to change", () => {
  const c = new KVCache({ layers: 1, kvHeads: 1, headDim: 8, maxTokens: 64, threads: null as never });
  expect(c.config.threads).toBe(new KVCache({ layers: 1, kvHeads: 1, headDim: 8, maxTokens: 64 }).config.threads);
  c.dispose();
  expect(() => new KVCache({ layers: 65536, kvHeads: 65536, headDim: 8 })).toThrow(
    "Expected a value given: its default, layers × kvHeads × 4096 = 17592186044416, passes the limits (2^40 tokens, 2147483647 pages) for maxTokens but received undefined",
  );
  // 2^40 tokens of 4096 f32 values, K and V: 32 PiB
  expect(() => new KVCache({ layers: 1, kvHeads: 1, headDim: 4096, dtype: "f32", pageSize: 65536, maxTokens: 2 ** 40, device: "cpu" })).toThrow(
    expect.objectContaining({ name: "OutOfPagesError", message: expect.stringMatching(/^could not allocate the page pool \(\d+ bytes of host memory\): give a smaller maxTokens/) }),
  );
});
