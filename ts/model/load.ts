// Loading the tiny model from a directory laid out like models/tiny-lm: config.json,
// model.safetensors (f16), tokenizer.json.
import * as fs from "fs";
import * as path from "path";
import { BadModelError, jsonPreview } from "../errors";
import { packageRoot } from "../native";
import { readSafetensors } from "./safetensors";
import { TinyLM, TinyLMConfig } from "./tiny-lm";
import { Tokenizer } from "./tokenizer";

/** models/tiny-lm inside the installed package (or the checkout). */
export function defaultModelDir(): string {
  return path.join(packageRoot(), "models", "tiny-lm");
}

/** The camelCase config of a config.json written by tools/tiny-lm/export.py. @throws BadModelError when a field is missing or not a number. */
export function configFromJson(j: Record<string, unknown>): TinyLMConfig {
  if (j === null || typeof j !== "object" || Array.isArray(j)) throw new BadModelError(`config.json: expected a JSON object but found ${jsonPreview(j)}`);
  const num = (key: string): number => {
    const v = j[key];
    if (typeof v !== "number" || !Number.isFinite(v)) throw new BadModelError(`config.json: "${key}" should be a number but is ${jsonPreview(v)}`);
    return v;
  };
  const opt = (key: string) => (typeof j[key] === "number" ? (j[key] as number) : undefined);
  return {
    vocabSize: num("vocab_size"),
    hidden: num("hidden_size"),
    layers: num("num_layers"),
    heads: num("num_heads"),
    kvHeads: num("num_kv_heads"),
    headDim: num("head_dim"),
    intermediate: num("intermediate_size"),
    ropeTheta: num("rope_theta"),
    rmsNormEps: num("rms_norm_eps"),
    maxPosition: num("max_position"),
    bosTokenId: opt("bos_token_id"),
    eosTokenId: opt("eos_token_id"),
  };
}

/** The files a model directory must hold. */
export const MODEL_FILES = ["config.json", "model.safetensors", "tokenizer.json"] as const;

/** Loads the model and its tokenizer from `dir` (default: the package's models/tiny-lm). */
export function loadTinyLM(dir: string = defaultModelDir()): TinyLM {
  const missing = MODEL_FILES.filter((f) => !fs.existsSync(path.join(dir, f)));
  if (missing.length > 0) throw new Error(`the model directory ${dir} lacks ${missing.join(", ")}`);
  let configJson: Record<string, unknown>;
  try {
    configJson = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
  } catch (e) {
    throw new BadModelError(`config.json: not JSON (${(e as Error).message})`);
  }
  const config = configFromJson(configJson);
  const { tensors } = readSafetensors(path.join(dir, "model.safetensors"));
  return TinyLM.fromTensors(config, tensors, Tokenizer.load(path.join(dir, "tokenizer.json")));
}
