// A model directory laid out like models/tiny-lm, with a small random-weight model, the shipped
// tokenizer and generated texts, for testing the demo and eval commands without the trained model.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { encodeSafetensors, tensorName } from "../ts/model";
import { randn } from "./helpers/random";

const WORDS = (
  "the a package server key file system user install run list name debian apt signature " +
  "depends software manager project founded remember version module function returns value " +
  "of to and in is it with for on that by this be as are from or was"
).split(" ");

/** Word salad with punctuation and paragraphs: about `words` words. */
export function randomText(r: () => number, words: number): string {
  const out: string[] = [];
  for (let i = 0; i < words; i++) {
    let w = WORDS[Math.floor(r() * WORDS.length)];
    if (i % 12 === 0) w = w[0].toUpperCase() + w.slice(1);
    out.push(w);
    if (i % 12 === 11) out.push(r() < 0.3 ? ".\n\n" : ". ");
    else out.push(r() < 0.08 ? ", " : " ");
  }
  return out.join("").trim() + ".";
}

/** Writes the directory; returns its path (under the OS temp dir). */
export function makeModelDir(r: () => number): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-tiny-lm-"));
  const c = { vocab_size: 4096, hidden_size: 32, num_layers: 2, num_heads: 4, num_kv_heads: 2, head_dim: 8, intermediate_size: 64 };
  const config = { ...c, rope_theta: 10000, rms_norm_eps: 1e-5, max_position: 256, bos_token_id: 4094, eos_token_id: 4095 };
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(config));
  const { vocab_size: V, hidden_size: d, num_heads: H, num_kv_heads: KV, head_dim: hd, intermediate_size: m } = c;
  const t = new Map<string, { shape: number[]; data: Float32Array }>();
  const gain = (n: number) => ({ shape: [n], data: randn(r, n, 0.1).map((v) => 1 + v) });
  const mat = (rows: number, cols: number, scale: number) => ({ shape: [rows, cols], data: randn(r, rows * cols, scale) });
  t.set(tensorName(undefined, "embed_tokens.weight"), mat(V, d, 1));
  for (let l = 0; l < c.num_layers; l++) {
    t.set(tensorName(l, "input_layernorm.weight"), gain(d));
    t.set(tensorName(l, "self_attn.q_proj.weight"), mat(H * hd, d, 2 / Math.sqrt(d)));
    t.set(tensorName(l, "self_attn.k_proj.weight"), mat(KV * hd, d, 2 / Math.sqrt(d)));
    t.set(tensorName(l, "self_attn.v_proj.weight"), mat(KV * hd, d, 1 / Math.sqrt(d)));
    t.set(tensorName(l, "self_attn.o_proj.weight"), mat(d, H * hd, 1 / Math.sqrt(H * hd)));
    t.set(tensorName(l, "post_attention_layernorm.weight"), gain(d));
    t.set(tensorName(l, "mlp.gate_proj.weight"), mat(m, d, 1 / Math.sqrt(d)));
    t.set(tensorName(l, "mlp.up_proj.weight"), mat(m, d, 1 / Math.sqrt(d)));
    t.set(tensorName(l, "mlp.down_proj.weight"), mat(d, m, 1 / Math.sqrt(m)));
  }
  t.set(tensorName(undefined, "norm.weight"), gain(d));
  fs.writeFileSync(path.join(dir, "model.safetensors"), encodeSafetensors(t, "F16", { format: "pt" }));
  fs.copyFileSync(path.join(__dirname, "..", "models", "tiny-lm", "tokenizer.json"), path.join(dir, "tokenizer.json"));
  for (const sub of ["heldout", "calibration"]) fs.mkdirSync(path.join(dir, sub));
  fs.writeFileSync(path.join(dir, "heldout", "handbook-1.txt"), randomText(r, 500));
  fs.writeFileSync(path.join(dir, "heldout", "pydoc-1.txt"), randomText(r, 500));
  fs.writeFileSync(path.join(dir, "calibration", "handbook-9.txt"), randomText(r, 700));
  const prompts = [0.2, 0.7].map((depth, i) => {
    const answer = String(10000 + Math.floor(r() * 90000));
    const filler = randomText(r, 60 + 40 * i);
    const cut = Math.floor(depth * filler.length);
    const needle = `\n\nThe pass key is ${answer}. Remember it. ${answer} is the pass key.\n\n`;
    return { target_tokens: 128, depth, prompt: filler.slice(0, cut) + needle + filler.slice(cut) + "\n\nWhat is the pass key? The pass key is ", answer };
  });
  fs.writeFileSync(path.join(dir, "heldout", "passkey.json"), JSON.stringify({ prompts }));
  return dir;
}
