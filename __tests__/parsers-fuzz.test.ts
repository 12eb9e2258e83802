// Every file parser, fed seeded mutations of valid files and crafted headers, either accepts the input
// or throws its typed error (BadProfileError, BadModelError). LUKV_FUZZ_INPUTS sets the count
// (scripts/fuzz-parsers.sh runs a million).
import { fuzzParsers } from "./helpers/fuzz";
import { testSeed } from "./helpers/random";

const seed = testSeed("parsers-fuzz");
const count = Number(process.env.LUKV_FUZZ_INPUTS ?? 100_000);

test(
  `${count} mutated and crafted inputs: every parser accepts or throws its typed error`,
  () => {
    const result = fuzzParsers(seed, count);
    // eslint-disable-next-line no-console
    console.log(
      `parsers-fuzz: ${result.inputs} inputs (${result.accepted} accepted, ${result.rejected} rejected with the typed error) in ${result.ms} ms; per parser (inputs, ms) ${JSON.stringify(result.perTarget)} ${JSON.stringify(result.perTargetMs)}`,
    );
    expect(result.findings).toEqual([]);
    expect(result.inputs).toBe(count);
    // The mutations must reach past the first checks: some inputs are still valid files.
    expect(result.accepted).toBeGreaterThan(count / 100);
  },
  Math.max(120_000, count * 2),
);
