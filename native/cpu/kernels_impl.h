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

template <int DT>
static void qkImpl(const void* K, int n, int D, const float* q, int G, float* s, int ld) {
  const int Dv = D - D % Vec::W;
  for (int j = 0; j < n; ++j) {
    const int64_t row = (int64_t)j * D;
    int g = 0;
    for (; g + 4 <= G; g += 4) {
      Vec a0 = Vec::zero(), a1 = Vec::zero(), a2 = Vec::zero(), a3 = Vec::zero();
      const float* q0 = q + (int64_t)g * D;
      for (int d = 0; d < Dv; d += Vec::W) {
        Vec k = loadRow(DT, K, row + d);
        a0 = Vec::fma(Vec::loadF32(q0 + d), k, a0);
        a1 = Vec::fma(Vec::loadF32(q0 + D + d), k, a1);
        a2 = Vec::fma(Vec::loadF32(q0 + 2 * D + d), k, a2);
        a3 = Vec::fma(Vec::loadF32(q0 + 3 * D + d), k, a3);
      }
      float r0 = a0.sum(), r1 = a1.sum(), r2 = a2.sum(), r3 = a3.sum();
      for (int d = Dv; d < D; ++d) {
        float k = scalarLoad(DT, K, row + d);
        r0 += q0[d] * k;
        r1 += q0[D + d] * k;
        r2 += q0[2 * D + d] * k;
        r3 += q0[3 * D + d] * k;
      }
      s[(int64_t)g * ld + j] = r0;
      s[(int64_t)(g + 1) * ld + j] = r1;
      s[(int64_t)(g + 2) * ld + j] = r2;
      s[(int64_t)(g + 3) * ld + j] = r3;
    }
    for (; g < G; ++g) {
      Vec a = Vec::zero();
      const float* qg = q + (int64_t)g * D;
      for (int d = 0; d < Dv; d += Vec::W) a = Vec::fma(Vec::loadF32(qg + d), loadRow(DT, K, row + d), a);
      float r = a.sum();
      for (int d = Dv; d < D; ++d) r += qg[d] * scalarLoad(DT, K, row + d);
      s[(int64_t)g * ld + j] = r;
    }
  }
}

template <int DT>
static void pvImpl(const void* V, int n, int D, const float* p, int ld, int G, float* acc) {
  const int Dv = D - D % Vec::W;
  for (int d = 0; d < Dv; d += Vec::W) {
    int g = 0;
    for (; g + 4 <= G; g += 4) {
      float* o = acc + (int64_t)g * D + d;
      const float* pg = p + (int64_t)g * ld;
      Vec a0 = Vec::loadF32(o), a1 = Vec::loadF32(o + D), a2 = Vec::loadF32(o + 2 * D), a3 = Vec::loadF32(o + 3 * D);
      for (int j = 0; j < n; ++j) {
        Vec v = loadRow(DT, V, (int64_t)j * D + d);
        a0 = Vec::fma(Vec::set1(pg[j]), v, a0);
        a1 = Vec::fma(Vec::set1(pg[ld + j]), v, a1);
        a2 = Vec::fma(Vec::set1(pg[2 * ld + j]), v, a2);
        a3 = Vec::fma(Vec::set1(pg[3 * ld + j]), v, a3);
      }
      a0.store(o);
      a1.store(o + D);
      a2.store(o + 2 * D);
      a3.store(o + 3 * D);
    }
    for (; g < G; ++g) {
      float* o = acc + (int64_t)g * D + d;
      const float* pg = p + (int64_t)g * ld;
      Vec a = Vec::loadF32(o);
      for (int j = 0; j < n; ++j) a = Vec::fma(Vec::set1(pg[j]), loadRow(DT, V, (int64_t)j * D + d), a);
      a.store(o);
    }
  }
  for (int d = Dv; d < D; ++d) {
    for (int g = 0; g < G; ++g) {
      float a = acc[(int64_t)g * D + d];
      for (int j = 0; j < n; ++j) a += p[(int64_t)g * ld + j] * scalarLoad(DT, V, (int64_t)j * D + d);
      acc[(int64_t)g * D + d] = a;
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
