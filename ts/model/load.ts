// Loading the tiny model from a directory laid out like models/tiny-lm: config.json,
// model.safetensors (f16), tokenizer.json.
import * as fs from "fs";
import * as path from "path";
import { BadModelError, invalid, jsonPreview } from "../errors";
import { scanValues } from "../finite";
import { packageRoot } from "../native";
import { readModelFile } from "./read-file";
import { parseSafetensors } from "./safetensors";
import { configProblem, TinyLM, TinyLMConfig, tensorSpecs } from "./tiny-lm";
import { Tokenizer } from "./tokenizer";

/** models/tiny-lm inside the installed package (or the checkout). */
export function defaultModelDir(): string {
  return path.join(packageRoot(), "models", "tiny-lm");
}

/** The config.json name of each TinyLMConfig field. */
const JSON_NAMES: Record<keyof TinyLMConfig, string> = {
  vocabSize: "vocab_size",
  hidden: "hidden_size",
  layers: "num_layers",
  heads: "num_heads",
  kvHeads: "num_kv_heads",
  headDim: "head_dim",
  intermediate: "intermediate_size",
  ropeTheta: "rope_theta",
  rmsNormEps: "rms_norm_eps",
  maxPosition: "max_position",
  bosTokenId: "bos_token_id",
  eosTokenId: "eos_token_id",
};

/**
 * The camelCase config of a config.json written by tools/tiny-lm/export.py. `source` names the
 * file in error messages.
 * @throws BadModelError naming the field when one is missing or not a number, a size is not a
 * positive integer, num_heads is not a multiple of num_kv_heads, head_dim is odd, rope_theta or
 * rms_norm_eps is not a finite number > 0, or bos_token_id / eos_token_id (optional; null means
 * none) is not an id below vocab_size.
 */
export function configFromJson(j: Record<string, unknown>, source = "config.json"): TinyLMConfig {
  if (j === null || typeof j !== "object" || Array.isArray(j)) throw new BadModelError(`${source}: expected a JSON object but found ${jsonPreview(j)}`);
  const num = (key: string): number => {
    const v = j[key];
    if (typeof v !== "number" || !Number.isFinite(v)) throw new BadModelError(`${source}: "${key}" should be a number but is ${jsonPreview(v)}`);
    return v;
  };
  // An id of the wrong type must not read as "no such token": the default stop token depends on it.
  const opt = (key: string) => (j[key] === undefined || j[key] === null ? undefined : num(key));
  const config: TinyLMConfig = {
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
  const problem = configProblem(config, (f) => `"${JSON_NAMES[f]}"`);
  if (problem) throw new BadModelError(`${source}: "${JSON_NAMES[problem[0]]}" should be ${problem[1]} but is ${jsonPreview(config[problem[0]])}`);
  return config;
}

/** The files a model directory must hold. */
export const MODEL_FILES = ["config.json", "model.safetensors", "tokenizer.json"] as const;

/**
 * Loads the model and its tokenizer from `dir` (default: the package's models/tiny-lm).
 * @throws BadModelError naming the file and the problem: a file missing or unreadable, a
 * malformed file (see configFromJson, parseSafetensors, Tokenizer), a tensor of the weights
 * missing, of another shape than config.json gives it, not one of the model's, or holding NaN or
 * ±Infinity (the message names the tensor and the first such value's index), a tokenizer whose
 * number of ids or BOS / EOS ids differ from config.json's; InvalidArgumentError when `dir` is not
 * a non-empty string.
 */
export function loadTinyLM(dir: string = defaultModelDir()): TinyLM {
  if (typeof dir !== "string" || dir === "") throw invalid("dir", "the path of a model directory", dir);
  const file = (name: string) => path.join(dir, name);
  if (!fs.statSync(dir, { throwIfNoEntry: false })?.isDirectory())
    throw new BadModelError(`${dir}: no such model directory (one holding ${MODEL_FILES.join(", ")})`);
  const missing = MODEL_FILES.filter((f) => !fs.existsSync(file(f)));
  if (missing.length > 0) {
    const also = missing.length > 1 ? ` (so ${missing.length > 2 ? "are" : "is"} ${missing.slice(1).join(" and ")})` : "";
    throw new BadModelError(`${file(missing[0])}: missing${also}; a model directory holds ${MODEL_FILES.join(", ")}`);
  }
  const configFile = file("config.json");
  let configJson: Record<string, unknown>;
  try {
    configJson = JSON.parse(readModelFile(configFile).toString("utf8"));
  } catch (e) {
    if (e instanceof BadModelError) throw e;
    throw new BadModelError(`${configFile}: not JSON (${(e as Error).message})`);
  }
  const config = configFromJson(configJson, configFile);
  const weightsFile = file("model.safetensors");
  const { tensors } = parseSafetensors(readModelFile(weightsFile), weightsFile);
  const specs = tensorSpecs(config);
  for (const { name, shape, fields } of specs) {
    const t = tensors.get(name);
    if (t === undefined)
      throw new BadModelError(`${weightsFile}: no tensor ${name}${name.startsWith("model.layers.") ? ` (config.json's num_layers is ${config.layers})` : ""}`);
    const sizes = fields.map((f) => `${JSON_NAMES[f]} ${config[f]}`).join(", ");
    // Equal element counts are not enough: a transposed matrix would load and compute garbage.
    if (t.shape.length !== shape.length || t.shape.some((n, i) => n !== shape[i]))
      throw new BadModelError(`${weightsFile}: tensor ${name} has shape [${t.shape.join(",")}] but config.json (${sizes}) gives it [${shape.join(",")}]`);
  }
  if (tensors.size > specs.length) {
    const known = new Set(specs.map((s) => s.name));
    const extra = [...tensors.keys()].find((name) => !known.has(name))!;
    // A tensor the model would ignore means the file holds another architecture or size.
    throw new BadModelError(`${weightsFile}: tensor ${extra} is not one the model reads (config.json's num_layers is ${config.layers})`);
  }
  // One NaN or infinity in a weight makes every activation after it NaN; refuse it here, where the
  // message can name the tensor (the native scan reads the tiny model's 3.3M values in ~0.3 ms).
  for (const { name, shape } of specs) {
    const data = tensors.get(name)!.data;
    const bad = scanValues(data, 0, Infinity)[0];
    if (bad >= 0) {
      const where = shape.length === 2 ? ` (row ${Math.floor(bad / shape[1])}, column ${bad % shape[1]})` : "";
      throw new BadModelError(`${weightsFile}: tensor ${name} holds ${data[bad]} at index ${bad}${where}; weights must be finite`);
    }
  }
  const tokenizerFile = file("tokenizer.json");
  const tokenizer = Tokenizer.load(tokenizerFile);
  if (tokenizer.vocabSize !== config.vocabSize)
    throw new BadModelError(`${tokenizerFile}: defines ${tokenizer.vocabSize} ids but config.json's vocab_size is ${config.vocabSize}`);
  for (const [key, name, id] of [["bosTokenId", "<|bos|>", tokenizer.bos], ["eosTokenId", "<|eos|>", tokenizer.eos]] as const) {
    const want = config[key];
    if (want !== undefined && id !== undefined && want !== id)
      throw new BadModelError(`${tokenizerFile}: ${name} is id ${id} but config.json's ${JSON_NAMES[key]} is ${want}`);
  }
  return TinyLM.fromTensors(config, tensors, tokenizer);
}
