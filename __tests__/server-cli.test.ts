// The example server's and load test's command lines (compiled, as users run them): --help lists the
// options and exits 0, a refused option exits 2 naming it before anything starts; and SIGTERM ends
// the server's streams in flight cleanly before the process exits.
import * as fs from "fs";
import * as http from "http";
import * as os from "os";
import * as path from "path";
import { spawn } from "child_process";
import { defaultModelDir } from "../ts/model";

const root = path.resolve(__dirname, "..");
const haveModel = fs.existsSync(path.join(defaultModelDir(), "model.safetensors"));
const script = (name: string) => path.join(root, "dist", "examples", "server", `${name}.js`);

beforeAll(() => {
  // Built by `npm ci` (prepare) or `npx tsc -p tsconfig.build.json`; an older build would test old code.
  for (const name of ["server", "load-test"]) {
    const js = script(name), ts = path.join(root, "examples", "server", `${name}.ts`);
    if (!fs.existsSync(js) || fs.statSync(js).mtimeMs < fs.statSync(ts).mtimeMs)
      throw new Error(`dist/examples/server/${name}.js is missing or older than examples/server/${name}.ts: run npx tsc -p tsconfig.build.json`);
  }
});

interface Run {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a script, killed after 10 s (a command line that starts the server or the load test instead of stopping). */
function run(name: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script(name), ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "", stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.on("exit", (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
  });
}

test("--help lists the options and exits 0; an unknown option or a bad value exits 2 naming it", async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-server-cli-"));
  try {
    const env = { LUKV_BENCH_OUT: out };
    const refused: [string, string[], string][] = [
      ["server", ["--prot", "0"], "server.js: unknown option --prot; the options are --port, --max-body-bytes, --no-evict, --help"],
      ["server", ["--port", "70000"], 'server.js: --port must be an integer from 0 to 65535, got "70000"'],
      ["server", ["--port"], "server.js: --port expects a value"],
      ["server", ["--max-body-bytes", "0"], 'server.js: --max-body-bytes must be an integer of at least 1, got "0"'],
      ["server", ["--no-evict=1"], 'server.js: --no-evict takes no value, got "1"'],
      ["server", ["8080"], 'server.js: unexpected argument "8080"; options start with --'],
      ["load-test", ["--client", "2"], "load-test.js: unknown option --client; the options are --clients, --requests, --tokens, --prompt-tokens, --pool-tokens, --keep-tokens, --help"],
      ["load-test", ["--tokens", "300"], 'load-test.js: --tokens must be an integer from 1 to 256, got "300"'],
      // Past 2^31 - 1 the server's autoCompress would refuse it: every request of the eviction pass failed (exit 1).
      ["load-test", ["--clients", "1", "--requests", "1", "--tokens", "2", "--prompt-tokens", "16", "--keep-tokens", "3000000000"], 'load-test.js: --keep-tokens must be an integer from 1 to 2147483647, got "3000000000"'],
    ];
    const helps: [string, string[], string[]][] = [
      ["server", ["--help"], ["--port N", "--max-body-bytes N", "--no-evict"]],
      ["server", ["--port", "0", "-h"], ["--port N"]],
      ["load-test", ["--help"], ["--clients N", "--requests N", "--tokens N", "--prompt-tokens N", "--pool-tokens N", "--keep-tokens N"]],
    ];
    const runs = await Promise.all([...refused, ...helps].map(([name, args]) => run(name, args, env)));
    refused.forEach(([name, args, message], i) => {
      const r = runs[i];
      expect([name, args, r.status, r.stdout, r.stderr]).toEqual([name, args, 2, "", message + "\n"]);
    });
    helps.forEach(([name, args, options], i) => {
      const r = runs[refused.length + i];
      expect([name, args, r.status, r.stderr]).toEqual([name, args, 0, ""]);
      expect(r.stdout.split("\n")[0]).toBe(`usage: node dist/examples/server/${name}.js [options]`);
      for (const o of options) expect(r.stdout).toMatch(new RegExp(`^  ${o} .*default`, "m"));
    });
    expect(fs.readdirSync(out)).toEqual([]); // the load test wrote nothing
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

(haveModel ? test : test.skip)("load test: a pool smaller than one request is refused up front; a keep below the sink and window works", async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-server-cli-"));
  try {
    const env = { LUKV_BENCH_OUT: out };
    const small = ["--clients", "2", "--requests", "2", "--tokens", "8", "--prompt-tokens", "64"];
    // 1 BOS + 64 prompt tokens + 7 fed back = 72 positions per head: 5 pages of 16.
    const [tiny, short, kept] = await Promise.all([
      run("load-test", [...small, "--pool-tokens", "1"], env),
      run("load-test", [...small, "--pool-tokens", "64"], env),
      run("load-test", [...small, "--keep-tokens", "8"], env),
    ]);
    expect([tiny.status, tiny.stdout, tiny.stderr]).toEqual([2, "", 'load-test.js: --pool-tokens must be an integer of at least 16, got "1"\n']);
    expect([short.status, short.stdout, short.stderr]).toEqual([
      2,
      "",
      'load-test.js: --pool-tokens must be at least 80 for these requests (one whole request: 72 positions per head in pages of 16 tokens), got "64"\n',
    ]);
    expect([kept.status, kept.stderr]).toEqual([0, ""]);
    const rows = kept.stdout.split("\n").filter((l) => /^ +(off|on) /.test(l));
    expect(rows).toHaveLength(2);
    for (const row of rows) expect(row).toMatch(/^ +(off|on) +2\/2 +16 /);
    expect(kept.stdout).not.toMatch(/NaN/);
    expect(JSON.parse(fs.readFileSync(path.join(out, "server.json"), "utf8")).results.map((r: { failed: number }) => r.failed)).toEqual([0, 0]);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

(haveModel ? test : test.skip)("load test --tokens 1: – where no gap between tokens or decode step was measured, never NaN", async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-server-cli-"));
  try {
    const r = await run("load-test", ["--clients", "2", "--requests", "2", "--tokens", "1", "--prompt-tokens", "64"], { LUKV_BENCH_OUT: out });
    expect([r.status, r.stderr]).toEqual([0, ""]);
    expect(r.stdout).not.toMatch(/NaN/);
    const rows = r.stdout.split("\n").filter((l) => /^ +(off|on) /.test(l));
    expect(rows).toHaveLength(2);
    // requests ok, tokens, tokens/s, first token ms, then – for p50 and p99 ms/token; – for the mean decode batch.
    for (const row of rows) expect(row).toMatch(/^ +(off|on) +2\/2 +2 +[\d.]+ +\d+ +– +– +\d+ +\d+ +\d+ +–$/);
    expect(r.stdout).toContain("ms/token and decode batch: – (a reply of one token has no gap between two tokens, and no decode step)");
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

(haveModel ? test : test.skip)("SIGTERM: the streams in flight end with an error line, then the server exits 0", async () => {
  const child = spawn(process.execPath, [script("server"), "--port", "0"], { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "", stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on("exit", (status, signal) => resolve([status, signal])));
  try {
    const port = await new Promise<number>((resolve, reject) => {
      child.stdout.on("data", (d) => {
        stdout += d;
        const m = /http:\/\/127\.0\.0\.1:(\d+)/.exec(stdout);
        if (m) resolve(Number(m[1]));
      });
      child.on("exit", () => reject(new Error(`the server exited: ${stdout}${stderr}`)));
    });
    const lines = await new Promise<Record<string, unknown>[]>((resolve, reject) => {
      const req = http.request({ host: "127.0.0.1", port, path: "/generate", method: "POST", agent: false }, (res) => {
        let body = "", signalled = false;
        res.setEncoding("utf8");
        res.on("data", (c: string) => {
          body += c;
          if (!signalled && body.split("\n").length > 3) {
            signalled = true;
            child.kill("SIGTERM");
          }
        });
        res.on("end", () => resolve(body.split("\n").filter((l) => l).map((l) => JSON.parse(l))));
        res.on("error", reject);
      });
      req.on("error", reject);
      req.end(JSON.stringify({ prompt: "The river", tokens: 256 }));
    });
    expect(lines.length).toBeGreaterThan(3);
    expect(lines.length).toBeLessThan(257);
    expect(lines.at(-1)).toEqual({ error: "the server is shutting down" });
    expect(await exited).toEqual([0, null]);
    expect(stdout).toContain("SIGTERM: shutting down");
    expect(stderr).toBe("");
  } finally {
    child.kill("SIGKILL");
  }
});
