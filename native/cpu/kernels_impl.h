// Body of the inner kernels, written once against a small vector type `Vec` and included by each
// instruction-set file inside its own namespace. Nothing here may be a shared inline or template
// symbol: each copy is compiled with different target flags and must not be merged by the linker.

static inline float scalarLoad(int dt, const void* base, int64_t i) {
  if (dt == 0) return static_cast<const float*>(base)[i];
  uint16_t h = static_cast<const uint16_t*>(base)[i];
  uint32_t u;
  if (dt == 2) {
    u = (uint32_t)h << 16;
  } else {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
      float v = (float)man * (1.0f / 16777216.0f);
      return sign ? -v : v;
    }
    u = exp == 31 ? (sign | 0x7f800000u | (man << 13)) : (sign | ((exp + 112) << 23) | (man << 13));
  }
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

static inline Vec loadRow(int dt, const void* base, int64_t i) {
  if (dt == 0) return Vec::loadF32(static_cast<const float*>(base) + i);
  if (dt == 1) return Vec::loadF16(static_cast<const uint16_t*>(base) + i);
  return Vec::loadBF16(static_cast<const uint16_t*>(base) + i);
}

static inline float dotTail(int dt, const void* K, int64_t row, const float* q, int from, int D) {
  float r = 0;
  for (int d = from; d < D; ++d) r += q[d] * scalarLoad(dt, K, row + d);
  return r;
}

// Scores of a block of rows. Dot products are long dependency chains, so each loop keeps eight
// independent accumulators in flight (two rows x four query heads, or four rows x one head) and
// reduces four of them at once.
template <int DT>
static void qkImpl(const void* K, int n, int D, const float* q, int G, float* s, int ld) {
  const int Dv = D - D % Vec::W;
  int g = 0;
  for (; g + 4 <= G; g += 4) {
    const float* q0 = q + (int64_t)g * D;
    float* s0 = s + (int64_t)g * ld;
    int j = 0;
    for (; j + 2 <= n; j += 2) {
      const int64_t ra = (int64_t)j * D, rb = ra + D;
      Vec a0 = Vec::zero(), a1 = Vec::zero(), a2 = Vec::zero(), a3 = Vec::zero();
      Vec b0 = Vec::zero(), b1 = Vec::zero(), b2 = Vec::zero(), b3 = Vec::zero();
      for (int d = 0; d < Dv; d += Vec::W) {
        Vec ka = loadRow(DT, K, ra + d), kb = loadRow(DT, K, rb + d);
        Vec x0 = Vec::loadF32(q0 + d), x1 = Vec::loadF32(q0 + D + d), x2 = Vec::loadF32(q0 + 2 * D + d), x3 = Vec::loadF32(q0 + 3 * D + d);
        a0 = Vec::fma(x0, ka, a0);
        a1 = Vec::fma(x1, ka, a1);
        a2 = Vec::fma(x2, ka, a2);
        a3 = Vec::fma(x3, ka, a3);
        b0 = Vec::fma(x0, kb, b0);
        b1 = Vec::fma(x1, kb, b1);
        b2 = Vec::fma(x2, kb, b2);
        b3 = Vec::fma(x3, kb, b3);
      }
      float ra4[4], rb4[4];
      Vec::sum4(a0, a1, a2, a3, ra4);
      Vec::sum4(b0, b1, b2, b3, rb4);
      for (int k = 0; k < 4; ++k) {
        s0[(int64_t)k * ld + j] = ra4[k] + dotTail(DT, K, ra, q0 + (int64_t)k * D, Dv, D);
        s0[(int64_t)k * ld + j + 1] = rb4[k] + dotTail(DT, K, rb, q0 + (int64_t)k * D, Dv, D);
      }
    }
    for (; j < n; ++j) {
      const int64_t row = (int64_t)j * D;
      Vec a0 = Vec::zero(), a1 = Vec::zero(), a2 = Vec::zero(), a3 = Vec::zero();
      for (int d = 0; d < Dv; d += Vec::W) {
        Vec k = loadRow(DT, K, row + d);
        a0 = Vec::fma(Vec::loadF32(q0 + d), k, a0);
        a1 = Vec::fma(Vec::loadF32(q0 + D + d), k, a1);
        a2 = Vec::fma(Vec::loadF32(q0 + 2 * D + d), k, a2);
        a3 = Vec::fma(Vec::loadF32(q0 + 3 * D + d), k, a3);
      }
      float r4[4];
      Vec::sum4(a0, a1, a2, a3, r4);
      for (int k = 0; k < 4; ++k) s0[(int64_t)k * ld + j] = r4[k] + dotTail(DT, K, row, q0 + (int64_t)k * D, Dv, D);
    }
  }
  for (; g < G; ++g) {
    const float* qg = q + (int64_t)g * D;
    float* sg = s + (int64_t)g * ld;
    int j = 0;
    for (; j + 4 <= n; j += 4) {
      const int64_t r0 = (int64_t)j * D;
      Vec a0 = Vec::zero(), a1 = Vec::zero(), a2 = Vec::zero(), a3 = Vec::zero();
      for (int d = 0; d < Dv; d += Vec::W) {
        Vec x = Vec::loadF32(qg + d);
        a0 = Vec::fma(x, loadRow(DT, K, r0 + d), a0);
        a1 = Vec::fma(x, loadRow(DT, K, r0 + D + d), a1);
        a2 = Vec::fma(x, loadRow(DT, K, r0 + 2 * D + d), a2);
        a3 = Vec::fma(x, loadRow(DT, K, r0 + 3 * D + d), a3);
      }
      float r4[4];
      Vec::sum4(a0, a1, a2, a3, r4);
      for (int k = 0; k < 4; ++k) sg[j + k] = r4[k] + dotTail(DT, K, r0 + (int64_t)k * D, qg, Dv, D);
    }
    for (; j < n; ++j) {
      const int64_t row = (int64_t)j * D;
      Vec a = Vec::zero();
      for (int d = 0; d < Dv; d += Vec::W) a = Vec::fma(Vec::loadF32(qg + d), loadRow(DT, K, row + d), a);
      sg[j] = a.sum() + dotTail(DT, K, row, qg, Dv, D);
    }
  }
}

template <int DT>
static void pvImpl(const void* V, int n, int D, const float* p, int ld, int G, float* acc) {
  constexpr int T = Vec::kTile;
  const int Dt = D - D % (Vec::W * T);
  const int Dv = D - D % Vec::W;
  int g = 0;
  // Groups of four query heads: each V row is converted once per tile and feeds 4*T accumulators
  // held in registers across the whole block of tokens.
  for (; g + 4 <= G; g += 4) {
    const float* pg = p + (int64_t)g * ld;
    for (int d = 0; d < Dt; d += Vec::W * T) {
      Vec a[4][T];
      for (int k = 0; k < 4; ++k)
        for (int t = 0; t < T; ++t) a[k][t] = Vec::loadF32(acc + (int64_t)(g + k) * D + d + t * Vec::W);
      for (int j = 0; j < n; ++j) {
        const Vec p0 = Vec::set1(pg[j]), p1 = Vec::set1(pg[ld + j]), p2 = Vec::set1(pg[2 * ld + j]), p3 = Vec::set1(pg[3 * ld + j]);
        for (int t = 0; t < T; ++t) {
          Vec v = loadRow(DT, V, (int64_t)j * D + d + t * Vec::W);
          a[0][t] = Vec::fma(p0, v, a[0][t]);
          a[1][t] = Vec::fma(p1, v, a[1][t]);
          a[2][t] = Vec::fma(p2, v, a[2][t]);
          a[3][t] = Vec::fma(p3, v, a[3][t]);
        }
      }
      for (int k = 0; k < 4; ++k)
        for (int t = 0; t < T; ++t) a[k][t].store(acc + (int64_t)(g + k) * D + d + t * Vec::W);
    }
    for (int d = Dt; d < Dv; d += Vec::W) {
      for (int k = 0; k < 4; ++k) {
        float* o = acc + (int64_t)(g + k) * D + d;
        Vec a = Vec::loadF32(o);
        for (int j = 0; j < n; ++j) a = Vec::fma(Vec::set1(pg[k * ld + j]), loadRow(DT, V, (int64_t)j * D + d), a);
        a.store(o);
      }
    }
  }
  for (; g < G; ++g) {
    const float* pg = p + (int64_t)g * ld;
    for (int d = 0; d < Dv; d += Vec::W) {
      float* o = acc + (int64_t)g * D + d;
      Vec a = Vec::loadF32(o);
      for (int j = 0; j < n; ++j) a = Vec::fma(Vec::set1(pg[j]), loadRow(DT, V, (int64_t)j * D + d), a);
      a.store(o);
    }
  }
  for (int d = Dv; d < D; ++d) {
    for (int gg = 0; gg < G; ++gg) {
      float a = acc[(int64_t)gg * D + d];
      for (int j = 0; j < n; ++j) a += p[(int64_t)gg * ld + j] * scalarLoad(DT, V, (int64_t)j * D + d);
      acc[(int64_t)gg * D + d] = a;
    }
  }
}

static void qk(int dt, const void* K, int n, int D, const float* q, int G, float* s, int ld) {
  if (dt == 0) qkImpl<0>(K, n, D, q, G, s, ld);
  else if (dt == 1) qkImpl<1>(K, n, D, q, G, s, ld);
  else qkImpl<2>(K, n, D, q, G, s, ld);
}

static void pv(int dt, const void* V, int n, int D, const float* p, int ld, int G, float* acc) {
  if (dt == 0) pvImpl<0>(V, n, D, p, ld, G, acc);
  else if (dt == 1) pvImpl<1>(V, n, D, p, ld, G, acc);
  else pvImpl<2>(V, n, D, p, ld, G, acc);
}

static float expSum(float* x, int n, float shift) {
  const int nv = n - n % Vec::W;
  Vec total = Vec::zero();
  const Vec sh = Vec::set1(shift);
  for (int i = 0; i < nv; i += Vec::W) {
    Vec e = Vec::exp(Vec::sub(Vec::loadF32(x + i), sh));
    e.store(x + i);
    total = Vec::add(total, e);
  }
  float sum = total.sum();
  for (int i = nv; i < n; ++i) {
    Vec e = Vec::exp(Vec::set1(x[i] - shift));
    x[i] = e.first();
    sum += x[i];
  }
  return sum;
}

static void scale(float* acc, int n, float a) {
  const int nv = n - n % Vec::W;
  const Vec av = Vec::set1(a);
  for (int i = 0; i < nv; i += Vec::W) Vec::mul(Vec::loadF32(acc + i), av).store(acc + i);
  for (int i = nv; i < n; ++i) acc[i] *= a;
}

template <int DT>
static void rowNormsImpl(const void* rows, int n, int D, float* out) {
  const int Dv = D - D % Vec::W;
  for (int j = 0; j < n; ++j) {
    Vec a = Vec::zero();
    for (int d = 0; d < Dv; d += Vec::W) {
      Vec v = loadRow(DT, rows, (int64_t)j * D + d);
      a = Vec::fma(v, v, a);
    }
    float r = a.sum();
    for (int d = Dv; d < D; ++d) {
      float v = scalarLoad(DT, rows, (int64_t)j * D + d);
      r += v * v;
    }
    out[j] = __builtin_sqrtf(r);
  }
}

static void rowNorms(int dt, const void* rows, int n, int D, float* out) {
  if (dt == 0) rowNormsImpl<0>(rows, n, D, out);
  else if (dt == 1) rowNormsImpl<1>(rows, n, D, out);
  else rowNormsImpl<2>(rows, n, D, out);
}

static const Kernels kTable = {KERNEL_NAME, qk, pv, expSum, scale, rowNorms};
