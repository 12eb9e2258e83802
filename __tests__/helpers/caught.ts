// The error a call throws, for tests that check its class, code and message together.

/** What `fn` throws; fails the test when it returns normally. */
export function caught(fn: () => unknown): Error & { code?: string } {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a throw");
}
