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

  constructor(shape: { layers: number; queryHeads: number; kvHeads: number; headDim: number; hidden: number }, wo: Float32Array[], steps: number) {
    if (!Number.isInteger(steps) || steps < 1) throw new RangeError(`Expected a positive integer for steps but received ${steps}`);
    if (wo.length !== shape.layers) throw new RangeError(`Expected ${shape.layers} output projections but received ${wo.length}`);
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
