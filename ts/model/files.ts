// The data shipped next to the model in models/tiny-lm: its LU-KV profile, held-out texts and
// passkey prompts, calibration texts.
import * as fs from "fs";
import * as path from "path";
import { loadProfile } from "../profile";
import type { Profile } from "../profile";

/**
 * The model's LU-KV profile for `scorer` and its file, or undefined when there is none: first
 * profile-<scorer>.json / .npy, then profile.json / profile.npy if it was calibrated with that
 * scorer (a .npy carries no metadata and is taken as snapkv's, the LU-KV authors' default).
 */
export function modelProfile(dir: string, scorer: string = "snapkv"): { profile: Profile; file: string } | undefined {
  for (const name of [`profile-${scorer}.json`, `profile-${scorer}.npy`, "profile.json", "profile.npy"]) {
    const file = path.join(dir, name);
    if (!fs.existsSync(file)) continue;
    const profile = loadProfile(file);
    if (name.startsWith("profile-") || (profile.meta.scorer ?? "snapkv") === scorer) return { profile, file };
  }
  return undefined;
}

/** A text file of the model directory. */
export interface NamedText {
  /** File name relative to the model directory, e.g. "heldout/handbook-1.txt". */
  name: string;
  text: string;
}

/** The .txt files of `sub` (e.g. "heldout", "calibration"), sorted by name; empty when the folder is missing. */
export function modelTexts(dir: string, sub: string): NamedText[] {
  const folder = path.join(dir, sub);
  if (!fs.existsSync(folder)) return [];
  return fs
    .readdirSync(folder)
    .filter((f) => f.endsWith(".txt"))
    .sort()
    .map((f) => ({ name: `${sub}/${f}`, text: fs.readFileSync(path.join(folder, f), "utf8") }));
}

/** One passkey retrieval prompt of heldout/passkey.json. */
export interface PasskeyPrompt {
  /** Tokenize as [BOS] + encode(prompt); the answer follows. */
  prompt: string;
  answer: string;
  target_tokens: number;
  depth: number;
  prompt_tokens?: number;
  beyond_trained_context?: boolean;
  model_correct?: boolean;
}

/** The passkey prompts of heldout/passkey.json. */
export function passkeyPrompts(dir: string): PasskeyPrompt[] {
  const file = path.join(dir, "heldout", "passkey.json");
  if (!fs.existsSync(file)) throw new Error(`${file} is missing`);
  const j = JSON.parse(fs.readFileSync(file, "utf8")) as { prompts?: PasskeyPrompt[] };
  if (!Array.isArray(j.prompts)) throw new Error(`${file} has no "prompts" array`);
  return j.prompts;
}
