// Plain reference attention in float64, written for clarity rather than speed.

export interface RefHead {
  keys: Float32Array; // [n, headDim]
  values: Float32Array; // [n, headDim]
  positions: Int32Array | number[]; // [n]
}

/**
 * out[t, q, :] = softmax_j(scale * q·k_j over kept tokens j of KV head floor(q / group) with
 * position <= queryPositions[t]) · v_j
 */
export function referenceAttention(
  heads: RefHead[],
  queries: Float32Array,
  queryPositions: number[],
  queryHeads: number,
  headDim: number,
  scale = 1 / Math.sqrt(headDim),
): Float64Array {
  const kvHeads = heads.length;
  const group = queryHeads / kvHeads;
  const T = queryPositions.length;
  const out = new Float64Array(T * queryHeads * headDim);
  for (let t = 0; t < T; t++) {
    for (let qh = 0; qh < queryHeads; qh++) {
      const head = heads[Math.floor(qh / group)];
      const q = queries.subarray((t * queryHeads + qh) * headDim, (t * queryHeads + qh + 1) * headDim);
      const scores: number[] = [];
      const idx: number[] = [];
      for (let j = 0; j < head.positions.length; j++) {
        if (head.positions[j] > queryPositions[t]) continue;
        let s = 0;
        for (let d = 0; d < headDim; d++) s += q[d] * head.keys[j * headDim + d];
        scores.push(s * scale);
        idx.push(j);
      }
      if (scores.length === 0) continue;
      const m = Math.max(...scores);
      let l = 0;
      const w = scores.map((s) => {
        const e = Math.exp(s - m);
        l += e;
        return e;
      });
      const o = (t * queryHeads + qh) * headDim;
      for (let i = 0; i < idx.length; i++) {
        const j = idx[i];
        for (let d = 0; d < headDim; d++) out[o + d] += (w[i] / l) * head.values[j * headDim + d];
      }
    }
  }
  return out;
}

/** ||a - b|| / ||b|| */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num) / Math.sqrt(den || 1);
}
