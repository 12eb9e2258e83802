// The dense math of a transformer block in plain Float32Array loops: matmul against PyTorch-layout
// weights, RMSNorm, rotate-half RoPE, SwiGLU. Row-major throughout.

/**
 * y[t, o] = sum_i x[t, i] * w[o, i]: x is [rows, n], w is [m, n] (PyTorch's Linear weight, so each
 * output is a dot product of two contiguous rows), y is [rows, m].
 * Two rows by four outputs at a time: each weight load feeds two rows, each input load four outputs.
 */
export function matmul(x: Float32Array, rows: number, n: number, w: Float32Array, m: number, y: Float32Array): Float32Array {
  let t = 0;
  for (; t + 1 < rows; t += 2) {
    const x0 = t * n, x1 = x0 + n;
    const y0 = t * m, y1 = y0 + m;
    let o = 0;
    for (; o + 3 < m; o += 4) {
      const w0 = o * n, w1 = w0 + n, w2 = w1 + n, w3 = w2 + n;
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
      for (let i = 0; i < n; i++) {
        const p = x[x0 + i], q = x[x1 + i];
        const c0 = w[w0 + i], c1 = w[w1 + i], c2 = w[w2 + i], c3 = w[w3 + i];
        a0 += p * c0; a1 += p * c1; a2 += p * c2; a3 += p * c3;
        b0 += q * c0; b1 += q * c1; b2 += q * c2; b3 += q * c3;
      }
      y[y0 + o] = a0; y[y0 + o + 1] = a1; y[y0 + o + 2] = a2; y[y0 + o + 3] = a3;
      y[y1 + o] = b0; y[y1 + o + 1] = b1; y[y1 + o + 2] = b2; y[y1 + o + 3] = b3;
    }
    for (; o < m; o++) {
      let a = 0, b = 0;
      for (let i = 0; i < n; i++) {
        a += x[x0 + i] * w[o * n + i];
        b += x[x1 + i] * w[o * n + i];
      }
      y[y0 + o] = a;
      y[y1 + o] = b;
    }
  }
  if (t < rows) matvec(x, t * n, n, w, m, y, t * m);
  return y;
}

/** y[yo + o] = sum_i x[xo + i] * w[o, i]: one row of matmul, four outputs at a time. */
export function matvec(x: Float32Array, xo: number, n: number, w: Float32Array, m: number, y: Float32Array, yo: number): void {
  let o = 0;
  for (; o + 3 < m; o += 4) {
    const w0 = o * n, w1 = w0 + n, w2 = w1 + n, w3 = w2 + n;
    let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (let i = 0; i < n; i++) {
      const p = x[xo + i];
      a0 += p * w[w0 + i]; a1 += p * w[w1 + i]; a2 += p * w[w2 + i]; a3 += p * w[w3 + i];
    }
    y[yo + o] = a0; y[yo + o + 1] = a1; y[yo + o + 2] = a2; y[yo + o + 3] = a3;
  }
  for (; o < m; o++) {
    let a = 0;
    for (let i = 0; i < n; i++) a += x[xo + i] * w[o * n + i];
    y[yo + o] = a;
  }
}

/** y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, for each of `rows` rows of length weight.length. */
export function rmsNorm(x: Float32Array, rows: number, weight: Float32Array, eps: number, y: Float32Array): Float32Array {
  const d = weight.length;
  for (let t = 0; t < rows; t++) {
    const o = t * d;
    let ss = 0;
    for (let i = 0; i < d; i++) ss += x[o + i] * x[o + i];
    // Rounded to f32 where PyTorch's f32 arithmetic rounds, so the reference logits match closely.
    const inv = Math.fround(1 / Math.sqrt(Math.fround(Math.fround(ss / d) + eps)));
    for (let i = 0; i < d; i++) y[o + i] = Math.fround(x[o + i] * inv) * weight[i];
  }
  return y;
}

/** cos/sin of rotate-half RoPE for `count` consecutive positions from `start`: [count, headDim] each. */
export function ropeTables(headDim: number, start: number, count: number, theta: number): { cos: Float32Array; sin: Float32Array } {
  const half = headDim / 2;
  const cos = new Float32Array(count * headDim), sin = new Float32Array(count * headDim);
  for (let t = 0; t < count; t++) {
    const p = start + t;
    for (let j = 0; j < half; j++) {
      // Angles in f64 like the reference (position * theta^(-2j/d)), rounded to f32 after cos/sin.
      const angle = p * (1 / theta ** ((j * 2) / headDim));
      const c = Math.cos(angle), s = Math.sin(angle);
      cos[t * headDim + j] = cos[t * headDim + j + half] = c;
      sin[t * headDim + j] = sin[t * headDim + j + half] = s;
    }
  }
  return { cos, sin };
}

/**
 * In-place rotate-half RoPE on x [count, heads, headDim]: out[j] = x[j] cos - x[j+d/2] sin,
 * out[j+d/2] = x[j+d/2] cos + x[j] sin (the tables are the same for every head of a position).
 */
export function applyRope(x: Float32Array, count: number, heads: number, headDim: number, cos: Float32Array, sin: Float32Array): void {
  const half = headDim / 2;
  for (let t = 0; t < count; t++) {
    const tab = t * headDim;
    for (let h = 0; h < heads; h++) {
      const o = (t * heads + h) * headDim;
      for (let j = 0; j < half; j++) {
        const a = x[o + j], b = x[o + j + half];
        x[o + j] = Math.fround(a * cos[tab + j]) - Math.fround(b * sin[tab + j]);
        x[o + j + half] = Math.fround(b * cos[tab + j + half]) + Math.fround(a * sin[tab + j + half]);
      }
    }
  }
}

/** gate[i] = silu(gate[i]) * up[i], in place (SwiGLU), silu(z) = z * sigmoid(z). */
export function swiglu(gate: Float32Array, up: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) {
    const z = gate[i];
    gate[i] = Math.fround(z / (1 + Math.exp(-z))) * up[i];
  }
}

/** x[i] += y[i] for the first n elements. */
export function addInPlace(x: Float32Array, y: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) x[i] += y[i];
}
