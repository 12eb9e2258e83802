// The output error of a compressed cache, LU-KV's objective measured: for the next decode steps
// (teacher-forced, with the queries, keys and values of the full-cache run), every layer's
// attention output after the output projection over the compressed cache against the full one.
//
//   error = Σ_l Σ_k ‖O_c(l, k) − O_f(l, k)‖₂ / Σ_l Σ_k ‖O_f(l, k)‖₂
//
// O(l, k) = Attn_l(q_{l,k}; cache of layer l + continuation keys/values up to step k) · W_O(l),
// a row of `hidden` values. Feeding every layer the full run's q, k and v isolates what eviction
// changes in each layer from what earlier layers' errors would add.
import type { Sequence } from "../cache";
import { InvalidArgumentError, shown } from "../errors";
import { matmul } from "./kernels";
import type { TinyLM } from "./tiny-lm";

/** Per-layer attention inputs of a continuation, as a model's forward pass produces them. */
export interface AttentionInputs {
  /** Post-RoPE queries [steps, queryHeads, headDim]. */
  q: Float32Array;
  /** Post-RoPE keys and values [steps, kvHeads, headDim]. */
  k: Float32Array;
  v: Float32Array;
}

/** The sums the error is the ratio of, overall and per layer. */
export interface OutputErrorTerms {
  /** Σ ‖O_c − O_f‖ and Σ ‖O_f‖ over layers and steps. */
  diff: number;
  norm: number;
  /** The same per layer. */
  layerDiff: number[];
  layerNorm: number[];
}

/**
 * Collects the first `steps` rows of every layer's attention inputs from forward passes (pass
 * `record` as ForwardOptions.onAttention), then measures caches against each other.
 */
export class OutputErrorProbe {
  readonly steps: number;
  readonly inputs: AttentionInputs[];
  readonly #filled: number[];
  readonly #sizes: { q: number; kv: number; hidden: number };
  /** o_proj weights per layer, PyTorch layout [hidden, queryHeads*headDim]. */
  readonly #wo: Float32Array[];

  /** @throws InvalidArgumentError when `steps` is not a positive integer or `wo` does not hold one matrix per layer. */
  constructor(shape: { layers: number; queryHeads: number; kvHeads: number; headDim: number; hidden: number }, wo: Float32Array[], steps: number) {
    if (!Number.isInteger(steps) || steps < 1) throw new InvalidArgumentError(`Expected a positive integer for steps but received ${shown(steps)}`);
    if (wo.length !== shape.layers) throw new InvalidArgumentError(`Expected ${shape.layers} output projections but received ${wo.length}`);
    this.steps = steps;
    this.#sizes = { q: shape.queryHeads * shape.headDim, kv: shape.kvHeads * shape.headDim, hidden: shape.hidden };
    this.#wo = wo;
    this.inputs = Array.from({ length: shape.layers }, () => ({
      q: new Float32Array(steps * this.#sizes.q),
      k: new Float32Array(steps * this.#sizes.kv),
      v: new Float32Array(steps * this.#sizes.kv),
    }));
    this.#filled = new Array<number>(shape.layers).fill(0);
  }

  /** The o_proj weights the outputs are projected with, per layer ([hidden, queryHeads*headDim]). */
  get outputProjections(): readonly Float32Array[] {
    return this.#wo;
  }

  /** Rows collected so far (of the first layer). */
  get collected(): number {
    return this.#filled[0];
  }

  /** ForwardOptions.onAttention: keeps rows until `steps` are held per layer. */
  readonly record = (layer: number, q: Float32Array, k: Float32Array, v: Float32Array): void => {
    const at = this.#filled[layer];
    const n = Math.min(this.steps - at, q.length / this.#sizes.q);
    if (n <= 0) return;
    const x = this.inputs[layer];
    x.q.set(q.subarray(0, n * this.#sizes.q), at * this.#sizes.q);
    x.k.set(k.subarray(0, n * this.#sizes.kv), at * this.#sizes.kv);
    x.v.set(v.subarray(0, n * this.#sizes.kv), at * this.#sizes.kv);
    this.#filled[layer] = at + n;
  };

  /**
   * Every layer's output rows [steps, hidden] over `seq`'s cache: the collected keys/values are
   * appended to a fork of `seq` (seq itself is unchanged) and the collected queries attend over it.
   */
  outputs(seq: Sequence): Float32Array[] {
    const steps = this.collected;
    if (steps === 0) throw new RangeError("no attention inputs were recorded (pass probe.record as onAttention to forward())");
    const { q: nq, kv: nkv, hidden } = this.#sizes;
    using f = seq.fork();
    f.autoCompress(false); // the fork's appends must not evict (a fork keeps seq's autoCompress)
    return this.inputs.map((x, l) => {
      f.append(l, x.k.subarray(0, steps * nkv), x.v.subarray(0, steps * nkv));
      const att = f.attend(l, x.q.subarray(0, steps * nq));
      return matmul(att, steps, nq, this.#wo[l], hidden, new Float32Array(steps * hidden));
    });
  }

  /** Σ‖got − reference‖ and Σ‖reference‖ over rows, overall and per layer. */
  compare(reference: Float32Array[], got: Float32Array[]): OutputErrorTerms {
    const hidden = this.#sizes.hidden;
    const t: OutputErrorTerms = { diff: 0, norm: 0, layerDiff: [], layerNorm: [] };
    reference.forEach((ref, l) => {
      let diff = 0, norm = 0;
      for (let row = 0; row < ref.length / hidden; row++) {
        let d2 = 0, n2 = 0;
        for (let i = row * hidden; i < (row + 1) * hidden; i++) {
          d2 += (got[l][i] - ref[i]) ** 2;
          n2 += ref[i] ** 2;
        }
        diff += Math.sqrt(d2);
        norm += Math.sqrt(n2);
      }
      t.layerDiff.push(diff);
      t.layerNorm.push(norm);
      t.diff += diff;
      t.norm += norm;
    });
    return t;
  }
}

/** A probe for `model`'s shape and output projections, holding the next `steps` decode steps. */
export function outputErrorProbe(model: TinyLM, steps: number): OutputErrorProbe {
  const c = model.config;
  return new OutputErrorProbe(
    { layers: c.layers, queryHeads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, hidden: c.hidden },
    model.weights.layers.map((w) => w.wo),
    steps,
  );
}

/**
 * The output-error oracle of a context: for every layer, KV head and context token j,
 *
 *   I_j = Σ_k ‖ Σ_{q in the head's GQA group} a_{k,q,j} · (v_j W_O^q − O_{k,q}) ‖₂
 *
 * the first-order change of the layer's output row at decode step k when token j alone is evicted
 * (its attention a moves to the other tokens in proportion: Δ = −a/(1 − a) · (v_j W_O^q − O_{k,q})
 * per query head q, W_O^q that head's rows of the output projection, O_{k,q} = Σ_j a v_j W_O^q its
 * projected output), summed over the steps: the quantity the output error sums, token by token.
 * Unlike LU-KV's oracle (max over steps of a · ‖v W_O‖, normalised per layer) it counts every
 * step and keeps the layers' real scale. `probe` holds the decode steps' inputs (recorded while
 * they were decoded after the context), `keys` / `values` the context rows [layer][head] as the
 * cache stores them ([tokens, headDim], e.g. seq.keys(l, h) before decoding).
 * @returns oracle[layer][head], one value per context token.
 */
export function outputErrorOracle(
  probe: OutputErrorProbe,
  keys: Float32Array[][],
  values: Float32Array[][],
  shape: { queryHeads: number; kvHeads: number; headDim: number; hidden: number; scale?: number },
): Float64Array[][] {
  const { queryHeads: H, kvHeads: KV, headDim: D, hidden } = shape;
  const G = H / KV;
  const scale = shape.scale ?? 1 / Math.sqrt(D);
  const steps = probe.collected;
  const wo = probe.outputProjections;
  return probe.inputs.map((x, l) => {
    const C = keys[l][0].length / D;
    return Array.from({ length: KV }, (_, h) => {
      const k = keys[l][h], v = values[l][h];
      // v_j W_O^q for every context token and query head of the group: [G][C][hidden].
      const vw = Array.from({ length: G }, (_, g) => {
        const q = h * G + g;
        const out = new Float64Array(C * hidden);
        for (let j = 0; j < C; j++)
          for (let o = 0; o < hidden; o++) {
            let s = 0;
            const w = o * H * D + q * D;
            for (let d = 0; d < D; d++) s += v[j * D + d] * wo[l][w + d];
            out[j * hidden + o] = s;
          }
        return out;
      });
      const oracle = new Float64Array(C);
      const a = Array.from({ length: G }, () => new Float64Array(C));
      const o = Array.from({ length: G }, () => new Float64Array(hidden));
      for (let s = 0; s < steps; s++) {
        for (let g = 0; g < G; g++) {
          const q = h * G + g;
          const qo = (s * H + q) * D;
          // Logits over the context and the steps so far (the full cache), then the softmax.
          const logits = new Float64Array(C + s + 1);
          for (let j = 0; j < C + s + 1; j++) {
            const row = j < C ? k : x.k;
            const ro = j < C ? j * D : ((j - C) * KV + h) * D;
            let dot = 0;
            for (let d = 0; d < D; d++) dot += x.q[qo + d] * row[ro + d];
            logits[j] = dot * scale;
          }
          let m = -Infinity;
          for (const z of logits) m = Math.max(m, z);
          let sum = 0;
          for (let j = 0; j < logits.length; j++) sum += logits[j] = Math.exp(logits[j] - m);
          // The head's projected output over everything, context and steps.
          o[g].fill(0);
          for (let j = 0; j < C; j++) {
            a[g][j] = logits[j] / sum;
            for (let c = 0; c < hidden; c++) o[g][c] += a[g][j] * vw[g][j * hidden + c];
          }
          for (let t = 0; t <= s; t++) {
            const p = logits[C + t] / sum;
            for (let c = 0; c < hidden; c++) {
              let y = 0;
              const w = c * H * D + q * D;
              for (let d = 0; d < D; d++) y += x.v[(t * KV + h) * D + d] * wo[l][w + d];
              o[g][c] += p * y;
            }
          }
        }
        for (let j = 0; j < C; j++) {
          let n2 = 0;
          for (let c = 0; c < hidden; c++) {
            let dlt = 0;
            for (let g = 0; g < G; g++) dlt += a[g][j] * (vw[g][j * hidden + c] - o[g][c]);
            n2 += dlt * dlt;
          }
          oracle[j] += Math.sqrt(n2);
        }
      }
      return oracle;
    });
  });
}
