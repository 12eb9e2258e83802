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
