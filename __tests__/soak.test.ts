// A short run of scripts/soak.js (random mixed sync/async calls on many sequences, invariants
// checked after every batch, pages and memory back at the end); the script runs 10 minutes by default.
import { spawnSync } from "child_process";
import * as path from "path";

test("soak for 5 seconds", () => {
  const seed = process.env.LUKV_SEED ?? String(Date.now() % 1e9);
  const r = spawnSync(process.execPath, ["--expose-gc", path.join(__dirname, "..", "scripts", "soak.js"), "--seconds", "5", "--seed", seed], {
    encoding: "utf8",
    timeout: 120_000,
  });
  if (r.status !== 0) console.log(r.stdout, r.stderr);
  expect(r.stderr).toBe("");
  expect(r.status).toBe(0);
  expect(r.stdout).toMatch(/soak: passed/);
  expect(r.stdout).toMatch(/"SequenceBusyError":\d+/);
  expect(r.stdout).toMatch(/"OutOfPagesError":\d+/);
}, 150_000);
