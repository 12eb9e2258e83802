// Files written by seq.saveFile(), seq.saveFileAsync() and saveProfile() replace the old file through
// a temporary file and a rename; the replaced file keeps its permission bits whatever the umask, a
// symbolic link keeps pointing at its target (which gets the new bytes), and the bytes reach the
// disk before the rename.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { KVCache, Sequence } from "../ts";
import { createProfile, loadProfile, saveProfile, type Profile } from "../ts/profile";
import { rng, testSeed, randn } from "./helpers/random";

const seed = testSeed("save-file-mode");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-save-mode-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const posix = process.platform === "win32" ? test.skip : test;

let cache: KVCache;
let seq: Sequence;
let profile: Profile;
beforeAll(() => {
  const r = rng(seed);
  cache = new KVCache({ layers: 2, kvHeads: 2, queryHeads: 4, headDim: 8, dtype: "f32", pageSize: 4, maxTokens: 1024, threads: 1, device: "cpu" });
  seq = cache.createSequence();
  for (let l = 0; l < 2; l++) seq.append(l, randn(r, 6 * 2 * 8), randn(r, 6 * 2 * 8));
  profile = createProfile({ table: Float64Array.from({ length: 99 * 4 }, () => r()), layers: 2, kvHeads: 2, meta: { model: "m" } });
});
afterAll(() => {
  seq.dispose();
  cache.dispose();
});

/** The three writers, each given the path to write and a check that the file holds what it wrote. */
const writers: [string, (file: string) => Promise<void>, (file: string) => void][] = [
  ["saveFile", async (file) => seq.saveFile(file), loadsAsSeq],
  ["saveFileAsync", (file) => seq.saveFileAsync(file), loadsAsSeq],
  ["saveProfile", async (file) => saveProfile(profile, file, { format: "json" }), (file) => expect(Array.from(loadProfile(file).table)).toEqual(Array.from(profile.table))],
];

/** The file holds seq's bytes and loads as a sequence. */
function loadsAsSeq(file: string): void {
  expect(fs.readFileSync(file).equals(seq.save())).toBe(true);
  const loaded = cache.loadSequence(file);
  expect(loaded.save().equals(seq.save())).toBe(true);
  loaded.dispose();
}

let fresh = 0;
function dirFor(name: string): string {
  const dir = path.join(tmp, `${name}-${fresh++}`);
  fs.mkdirSync(dir);
  return dir;
}
const modeOf = (file: string) => fs.statSync(file).mode & 0o777;

describe.each(writers)("%s", (name, write, holdsNewBytes) => {
  const fileIn = (dir: string) => path.join(dir, name === "saveProfile" ? "p.json" : "s.lukv");

  posix("an existing file keeps its permission bits (0600 stays 0600)", async () => {
    const dir = dirFor(name);
    const file = fileIn(dir);
    for (const mode of [0o600, 0o640, 0o444]) {
      fs.writeFileSync(file, "old contents");
      fs.chmodSync(file, mode);
      await write(file);
      expect(modeOf(file).toString(8)).toBe(mode.toString(8));
      holdsNewBytes(file);
      fs.chmodSync(file, 0o600);
      fs.rmSync(file);
    }
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  posix("the umask neither widens nor narrows an existing file's mode; a new file gets the default", async () => {
    const dir = dirFor(name);
    const file = fileIn(dir);
    const before = process.umask(0o077);
    try {
      fs.writeFileSync(file, "old contents");
      fs.chmodSync(file, 0o644);
      await write(file);
      expect(modeOf(file).toString(8)).toBe("644");
      fs.rmSync(file);
      await write(file);
      expect(modeOf(file).toString(8)).toBe("600");
      process.umask(0o022);
      fs.rmSync(file);
      await write(file);
      expect(modeOf(file).toString(8)).toBe("644");
      holdsNewBytes(file);
    } finally {
      process.umask(before);
    }
  });

  posix("a symbolic link stays a link and its target gets the new bytes", async () => {
    const dir = dirFor(name);
    const targets = dirFor(`${name}-targets`);
    const target = fileIn(targets);
    fs.writeFileSync(target, "old contents");
    fs.chmodSync(target, 0o600);
    const link = fileIn(dir);
    fs.symlinkSync(target, link);
    await write(link);
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect(fs.readlinkSync(link)).toBe(target);
    holdsNewBytes(target);
    holdsNewBytes(link);
    expect(modeOf(target).toString(8)).toBe("600");

    // A relative link, through a second link: the final target is replaced, both links stay.
    const relative = path.join(dir, "relative");
    fs.symlinkSync(path.relative(dir, link), relative);
    fs.writeFileSync(target, "old again");
    await write(relative);
    expect(fs.lstatSync(relative).isSymbolicLink()).toBe(true);
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    holdsNewBytes(target);
    expect(fs.readdirSync(dir).sort()).toEqual([path.basename(link), "relative"].sort());
    expect(fs.readdirSync(targets)).toEqual([path.basename(target)]);
  });

  posix("a dangling link gets its target written; a loop of links throws ELOOP and writes nothing", async () => {
    const dir = dirFor(name);
    const targets = dirFor(`${name}-dangling`);
    const target = path.join(targets, "not-yet");
    const link = fileIn(dir);
    fs.symlinkSync(target, link);
    await write(link);
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    holdsNewBytes(target);
    const a = path.join(dir, "loop-a"), b = path.join(dir, "loop-b");
    fs.symlinkSync(b, a);
    fs.symlinkSync(a, b);
    await expect(write(a)).rejects.toMatchObject({ code: "ELOOP" });
    expect(fs.readdirSync(dir).sort()).toEqual([path.basename(link), "loop-a", "loop-b"].sort());
  });

  test("the temporary file is flushed to disk before it is renamed over the file", async () => {
    const dir = dirFor(name);
    const file = fileIn(dir);
    fs.writeFileSync(file, "old contents");
    // The fs module itself (the namespace import above is a copy of its bindings), and the class of
    // fs.promises file handles.
    const nodeFs = jest.requireActual<typeof fs>("fs");
    const probe = await nodeFs.promises.open(path.join(dir, "probe"), "w");
    const FileHandle = Object.getPrototypeOf(probe) as fs.promises.FileHandle;
    await probe.close();
    nodeFs.rmSync(path.join(dir, "probe"));
    const syncs = [jest.spyOn(nodeFs, "fsyncSync"), jest.spyOn(FileHandle, "sync")];
    const renames = [jest.spyOn(nodeFs, "renameSync"), jest.spyOn(nodeFs.promises, "rename")];
    const first = (spies: jest.SpyInstance[]) => Math.min(...spies.flatMap((s) => s.mock.invocationCallOrder));
    try {
      await write(file);
      expect(first(renames)).toBeLessThan(Infinity);
      expect(first(syncs)).toBeLessThan(first(renames));
    } finally {
      [...syncs, ...renames].forEach((s) => s.mockRestore());
    }
    holdsNewBytes(file);
    expect(fs.readdirSync(dir)).toEqual([path.basename(file)]);
  });

  test("errors pass through and no temporary file is left behind", async () => {
    const dir = dirFor(name);
    fs.mkdirSync(path.join(dir, "a-directory"));
    await expect(write(path.join(dir, "a-directory"))).rejects.toThrow(/EISDIR|EEXIST|ENOTEMPTY|EPERM/);
    await expect(write(path.join(dir, "missing-folder", "x.json"))).rejects.toThrow(/ENOENT/);
    expect(fs.readdirSync(dir)).toEqual(["a-directory"]);
  });
});

/**
 * A large save to `first`, a compression, then a small save to `last` (the same file, maybe by
 * another name): the file must end up with the small one, which used to be renamed first and the
 * large one last. `meanwhile` runs while the first write is in flight.
 */
async function largeThenSmall(s: Sequence, first: string, last: string, ratio: number, meanwhile?: () => void): Promise<void> {
  const large = s.saveFileAsync(first);
  meanwhile?.();
  const compressed = s.compressAsync({ ratio, scorer: "knorm" });
  const small = s.saveFileAsync(last);
  const bytes = s.saveAsync();
  await Promise.all([large, compressed, small]);
  expect(Buffer.compare(fs.readFileSync(last), await bytes)).toBe(0);
}

describe("async writes to one path", () => {
  test("happen in call order: the file holds what the last call saved, whatever size each is", async () => {
    const r = rng(seed ^ 0x51);
    const own = new KVCache({ layers: 2, kvHeads: 2, queryHeads: 4, headDim: 64, dtype: "f32", pageSize: 16, maxTokens: 16384, device: "cpu" });
    const s = own.createSequence();
    for (let l = 0; l < 2; l++) s.append(l, randn(r, 2000 * 2 * 64), randn(r, 2000 * 2 * 64));
    const file = path.join(tmp, "order.lukv");
    for (let trial = 0; trial < 2; trial++) {
      await largeThenSmall(s, file, file, 0.95);
      for (let l = 0; l < 2; l++) s.append(l, randn(r, 1000 * 2 * 64), randn(r, 1000 * 2 * 64));
    }
    own.dispose();
  });

  posix("through symbolic links (to the file or to its directory) too: one queue per file written", async () => {
    const r = rng(seed ^ 0x52);
    const own = new KVCache({ layers: 2, kvHeads: 2, queryHeads: 4, headDim: 64, dtype: "f32", pageSize: 16, maxTokens: 16384, device: "cpu" });
    const s = own.createSequence();
    for (let l = 0; l < 2; l++) s.append(l, randn(r, 2000 * 2 * 64), randn(r, 2000 * 2 * 64));
    const dir = fs.mkdtempSync(path.join(tmp, "links-"));
    const target = path.join(dir, "target.lukv");
    fs.symlinkSync(target, path.join(dir, "link.lukv"));
    fs.symlinkSync(dir, path.join(tmp, `${path.basename(dir)}-alias`));
    const aliasOfTarget = path.join(tmp, `${path.basename(dir)}-alias`, "target.lukv");
    for (const via of [path.join(dir, "link.lukv"), aliasOfTarget]) {
      await largeThenSmall(s, via, target, 0.9, () => expect(() => s.cache.createSequence().saveFile(target)).toThrow(/in flight/));
      for (let l = 0; l < 2; l++) s.append(l, randn(r, 1500 * 2 * 64), randn(r, 1500 * 2 * 64));
    }
    own.dispose();
  });

  test("a synchronous write to a path with an async write in flight is refused; one that fails does not hold the path", async () => {
    const file = path.join(tmp, "in-flight.lukv");
    const other = cache.createSequence();
    other.append(0, new Float32Array(2 * 8).fill(1), new Float32Array(2 * 8).fill(1));
    const pending = seq.saveFileAsync(file);
    // (seq itself is busy with its save; another sequence's write to the file would be overwritten)
    expect(() => other.saveFile(file)).toThrow(expect.objectContaining({ name: "InvalidArgumentError", message: expect.stringMatching(/no asynchronous write to it in flight \(await the saveFileAsync to it first\) for path/) }));
    expect(() => saveProfile(profile, path.join(tmp, ".", "in-flight.lukv"), { format: "json" })).toThrow(/in flight/);
    await pending;
    seq.saveFile(file);
    loadsAsSeq(file);
    // A write that fails (its directory is missing) rejects and lets the next one go: a sync write
    // to the same path fails for the directory, not as "in flight".
    const missing = path.join(tmp, "no-such-dir", "x.lukv");
    await expect(seq.saveFileAsync(missing)).rejects.toThrow(/ENOENT/);
    expect(() => seq.saveFile(missing)).toThrow(/ENOENT/);
    seq.saveFile(path.join(tmp, "after.lukv"));
    await expect(seq.saveFileAsync(path.join(tmp, "after.lukv"))).resolves.toBeUndefined();
    other.dispose();
  });
});
