// Body of the inner kernels, written once against a small vector type `Vec` and included by each
// instruction-set file inside its own namespace. Nothing here may be a shared inline or template
// symbol: each copy is compiled with different target flags and must not be merged by the linker.

static inline float bitsToFloat(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// f16 bits to f32 without branches, so loops of it vectorise: the 15 bits of exponent and mantissa,
// moved up to the f32 positions, read as an f32 that is 2^112 too small (the exponent biases are 15
// and 127); the product is exact for normal and subnormal halves alike. Infinity and NaN (exponent
// 31) get the f32 exponent 255 instead.
static inline float halfToFloat(uint16_t h) {
#if defined(__aarch64__)
  __fp16 x;
  __builtin_memcpy(&x, &h, 2);
  return (float)x;  // one hardware conversion
#else
  const uint32_t em = h & 0x7fffu;
  uint32_t u;
  const float mag = bitsToFloat(em << 13) * 0x1p112f;
  __builtin_memcpy(&u, &mag, 4);
  if (em >= 0x7c00u) u = 0x7f800000u | (em & 0x3ffu) << 13;
  return bitsToFloat(u | (uint32_t)(h & 0x8000u) << 16);
#endif
}

static inline float scalarLoad(DType dt, const void* base, int64_t i) {
  if (dt == DType::F32) return static_cast<const float*>(base)[i];
  const uint16_t h = static_cast<const uint16_t*>(base)[i];
  return dt == DType::BF16 ? bitsToFloat((uint32_t)h << 16) : halfToFloat(h);
}

static inline Vec loadRow(DType dt, const void* base, int64_t i) {
  if (dt == DType::F32) return Vec::loadF32(static_cast<const float*>(base) + i);
  if (dt == DType::F16) return Vec::loadF16(static_cast<const uint16_t*>(base) + i);
  return Vec::loadBF16(static_cast<const uint16_t*>(base) + i);
}

static inline float dotTail(DType dt, const void* K, int64_t row, const float* q, int from, int D) {
  float r = 0;
  for (int d = from; d < D; ++d) r += q[d] * scalarLoad(dt, K, row + d);
  return r;
}

// Requests the cache lines of one row ahead of use (rowBytes bytes from p; p may be null) with
// hint H. Written as volatile asm because GCC deletes a loop of __builtin_prefetch with a run-time
// trip count as a loop without side effects; four lines per step, since the loop's own
// instructions showed in the time of rows already in cache.
template <int H>
static inline void prefetchLine(const uint8_t* p) {
#if defined(__x86_64__) || defined(__i386__)
  if (H == (int)Prefetch::Nta) __asm__ volatile("prefetchnta %0" : : "m"(*(const volatile uint8_t*)p));
  else if (H == (int)Prefetch::T2) __asm__ volatile("prefetcht2 %0" : : "m"(*(const volatile uint8_t*)p));
  else __asm__ volatile("prefetcht0 %0" : : "m"(*(const volatile uint8_t*)p));
#elif defined(__aarch64__)
  __asm__ volatile("prfm pldl1strm, [%0]" : : "r"(p));  // streaming (used once) load hint
#else
  __builtin_prefetch(p, 0, 0);
#endif
}

template <int H>
static inline void prefetchRowAs(const uint8_t* p, int64_t rowBytes) {
  int64_t x = 0;
  for (; x + 256 <= rowBytes; x += 256) {
    prefetchLine<H>(p + x);
    prefetchLine<H>(p + x + 64);
    prefetchLine<H>(p + x + 128);
    prefetchLine<H>(p + x + 192);
  }
  for (; x < rowBytes; x += 64) prefetchLine<H>(p + x);
}

static inline void prefetchRow(const uint8_t* p, int64_t rowBytes, Prefetch hint) {
  if (!p) return;
  if (hint == Prefetch::T0) prefetchRowAs<(int)Prefetch::T0>(p, rowBytes);
  else if (hint == Prefetch::T2) prefetchRowAs<(int)Prefetch::T2>(p, rowBytes);
  else if (hint == Prefetch::Nta) prefetchRowAs<(int)Prefetch::Nta>(p, rowBytes);
}

// Requests part `step` of the rows from p, in parts of N elements: loops that take a row (or R
// contiguous rows) N elements at a time request the next rows' lines a part per step. Spread over
// the arithmetic, the requests do not queue in a burst for free miss buffers while the arithmetic
// waits behind them: on the Intel Xeon measured, decode at 32K ran 20-30% faster than with a
// burst of a row's lines per row.
template <DType DT, int N>
static inline void prefetchPart(const uint8_t* p, int step, Prefetch hint) {
  constexpr int64_t kPartBytes = (int64_t)N * (DT == DType::F32 ? 4 : 2);
  static_assert(kPartBytes % 64 == 0 || 64 % kPartBytes == 0, "parts must tile cache lines");
  const int64_t at = (int64_t)step * kPartBytes;
  if (kPartBytes < 64 && at % 64 != 0) return;  // one request per line
  prefetchRow(p + at, kPartBytes, hint);
}

// Scores of R = W/4 rows from row j for four query heads (q0, q0 + D, q0 + 2D, q0 + 3D): W
// accumulators reduced together by one transpose-and-add tree. Lane k*R + r of the result is the
// score of row j + r for head k. Requires D % W == 0; requests the same rows of `ahead` (may be null).
template <DType DT>
static LUKV_ALWAYS_INLINE Vec qkRows(const void* K, int j, int D, const float* q0, const uint8_t* ahead, int64_t rowBytes,
                         Prefetch hint) {
  constexpr int R = Vec::W / 4;
  Vec a[Vec::W];
  for (int i = 0; i < Vec::W; ++i) a[i] = Vec::zero();
  for (int d = 0; d < D; d += Vec::W) {
    const Vec x0 = Vec::loadF32(q0 + d), x1 = Vec::loadF32(q0 + D + d), x2 = Vec::loadF32(q0 + 2 * D + d),
              x3 = Vec::loadF32(q0 + 3 * D + d);
    if (ahead) prefetchPart<DT, R * Vec::W>(ahead + (int64_t)j * rowBytes, d / Vec::W, hint);
    for (int r = 0; r < R; ++r) {
      const Vec k = loadRow(DT, K, (int64_t)(j + r) * D + d);
      a[r] = Vec::fma(x0, k, a[r]);
      a[R + r] = Vec::fma(x1, k, a[R + r]);
      a[2 * R + r] = Vec::fma(x2, k, a[2 * R + r]);
      a[3 * R + r] = Vec::fma(x3, k, a[3 * R + r]);
    }
  }
  return Vec::sumEach(a);
}

// Scores of a block of rows. Dot products are long dependency chains, so each loop keeps several
// independent accumulators in flight: W/4 rows x four query heads (qkRows), or one row x four
// heads, or four rows x one head (reduced four at a time by sum4).
template <DType DT>
static void qkImpl(const void* K, int n, int D, const float* q, int G, float* s, int ld, const uint8_t* ahead,
                   Prefetch hint) {
  const int64_t rowBytes = (int64_t)D * (DT == DType::F32 ? 4 : 2);
  const int Dv = D - D % Vec::W;
  int g = 0;
  for (; g + 4 <= G; g += 4) {
    const float* q0 = q + (int64_t)g * D;
    float* s0 = s + (int64_t)g * ld;
    int j = 0;
    constexpr int R = Vec::W / 4;
    if (Dv == D) {
      for (; j + R <= n; j += R) {
        float t[Vec::W];
        qkRows<DT>(K, j, D, q0, ahead, rowBytes, hint).store(t);
        for (int k = 0; k < 4; ++k)
          for (int r = 0; r < R; ++r) s0[(int64_t)k * ld + j + r] = t[k * R + r];
      }
    }
    for (; j < n; ++j) {
      const int64_t row = (int64_t)j * D;
      prefetchRow(ahead ? ahead + j * rowBytes : nullptr, rowBytes, hint);
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
  if (G < 4 && ahead)  // the grouped loop above did not request them
    for (int j = 0; j < n; ++j) prefetchRow(ahead + j * rowBytes, rowBytes, hint);
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

// acc[k*D + d] += sum_j w_k(j) * V[j][d] for KH query heads k (four unless given) and d < Dt
// (whole tiles of W*T, T = kTile unless given): each V row is converted once per tile and feeds
// KH*T accumulators held in registers across the whole block. The weights: w_k(j) = p[j + k*ld],
// or in the interleaved layout of qkRows (IL, four heads) w_k(j) = p[(j / R) * W + k*R + j % R].
// Requests the same rows of `ahead` (may be null).
template <DType DT, bool IL, int T = Vec::kTile, int KH = 4>
static inline void pvHeads(const void* V, int n, int D, int Dt, const float* p, int ld, float* acc, const uint8_t* ahead,
                           int64_t rowBytes, Prefetch hint) {
  static_assert(!IL || KH == 4, "the interleaved layout holds four heads");
  constexpr int R = Vec::W / 4;
  const int stride = IL ? R : ld;
  for (int d = 0; d < Dt; d += Vec::W * T) {
    Vec a[KH][T];
    for (int k = 0; k < KH; ++k)
      for (int t = 0; t < T; ++t) a[k][t] = Vec::loadF32(acc + (int64_t)k * D + d + t * Vec::W);
    for (int j = 0; j < n; ++j) {
      if (ahead) {
        if (Dt == D) prefetchPart<DT, Vec::W * T>(ahead + (int64_t)j * rowBytes, d / (Vec::W * T), hint);
        else if (d == 0) prefetchRow(ahead + j * rowBytes, rowBytes, hint);
      }
      const float* pj = IL ? p + (j / R) * Vec::W + j % R : p + j;
      Vec w[KH];
      for (int k = 0; k < KH; ++k) w[k] = Vec::set1(pj[k * stride]);
      for (int t = 0; t < T; ++t) {
        Vec v = loadRow(DT, V, (int64_t)j * D + d + t * Vec::W);
        for (int k = 0; k < KH; ++k) a[k][t] = Vec::fma(w[k], v, a[k][t]);
      }
    }
    for (int k = 0; k < KH; ++k)
      for (int t = 0; t < T; ++t) a[k][t].store(acc + (int64_t)k * D + d + t * Vec::W);
  }
}

// pvHeads over every column of rows whose length D is a multiple of W: whole tiles of W*kTile,
// then the columns left over (D % (W*kTile)) in tiles of two vectors and of one, each reading the
// same V rows from that column on. Rows are requested ahead by the first part that runs.
template <DType DT, bool IL>
static inline void pvHeads4Rows(const void* V, int n, int D, const float* p, int ld, float* acc, const uint8_t* ahead,
                                int64_t rowBytes, Prefetch hint) {
  constexpr int W = Vec::W, T = Vec::kTile, E = DT == DType::F32 ? 4 : 2;
  const int Dt = D - D % (W * T);
  if (Dt > 0) {
    pvHeads<DT, IL>(V, n, D, Dt, p, ld, acc, ahead, rowBytes, hint);
    ahead = nullptr;
  }
  int d = Dt;
  if (T > 2 && D - d >= 2 * W) {
    const int w = (D - d) / (2 * W) * (2 * W);
    pvHeads<DT, IL, 2>(static_cast<const uint8_t*>(V) + (int64_t)d * E, n, D, w, p, ld, acc + d, ahead, rowBytes, hint);
    ahead = nullptr;
    d += w;
  }
  if (T > 1 && D - d >= W)
    pvHeads<DT, IL, 1>(static_cast<const uint8_t*>(V) + (int64_t)d * E, n, D, D - d, p, ld, acc + d, ahead, rowBytes, hint);
}

// The two or three heads left after the groups of four, columns below Dv: pvHeads over the whole
// tiles, then vector by vector. Out of line, so that pvImpl's loops compile as they do without it
// (inlined, a single head left ran 4-8% slower).
template <DType DT>
LUKV_NOINLINE static void pvLeftHeads(const void* V, int n, int D, int Dt, int Dv, const float* p, int ld, float* acc,
                                     int heads, int64_t rowBytes, Prefetch hint) {
  if (heads == 2) pvHeads<DT, false, Vec::kTile, 2>(V, n, D, Dt, p, ld, acc, nullptr, rowBytes, hint);
  else pvHeads<DT, false, Vec::kTile, 3>(V, n, D, Dt, p, ld, acc, nullptr, rowBytes, hint);
  for (int k = 0; k < heads; ++k)
    for (int d = Dt; d < Dv; d += Vec::W) {
      float* o = acc + (int64_t)k * D + d;
      Vec a = Vec::loadF32(o);
      for (int j = 0; j < n; ++j) a = Vec::fma(Vec::set1(p[(int64_t)k * ld + j]), loadRow(DT, V, (int64_t)j * D + d), a);
      a.store(o);
    }
}

template <DType DT>
static void pvImpl(const void* V, int n, int D, const float* p, int ld, int G, float* acc, const uint8_t* ahead,
                   Prefetch hint) {
  const int64_t rowBytes = (int64_t)D * (DT == DType::F32 ? 4 : 2);
  constexpr int T = Vec::kTile;
  const int Dt = D - D % (Vec::W * T);
  const int Dv = D - D % Vec::W;
  int g = 0;
  // Groups of four query heads in register tiles (pvHeads), then the columns left over.
  for (; g + 4 <= G; g += 4) {
    const float* pg = p + (int64_t)g * ld;
    pvHeads<DT, false>(V, n, D, Dt, pg, ld, acc + (int64_t)g * D, ahead, rowBytes, hint);
    for (int d = Dt; d < Dv; d += Vec::W) {
      for (int k = 0; k < 4; ++k) {
        float* o = acc + (int64_t)(g + k) * D + d;
        Vec a = Vec::loadF32(o);
        for (int j = 0; j < n; ++j) a = Vec::fma(Vec::set1(pg[k * ld + j]), loadRow(DT, V, (int64_t)j * D + d), a);
        a.store(o);
      }
    }
  }
  if ((G < 4 || Dt == 0) && ahead)  // the tiled loop above did not request them
    for (int j = 0; j < n; ++j) prefetchRow(ahead + j * rowBytes, rowBytes, hint);
  // Two or three heads left over share each V vector's conversion in register tiles too (converted
  // again per head, G = 2 and 7 ran 10-13% slower), then their columns past the tiles. One head
  // alone runs as fast vector by vector.
  if (G - g >= 2 && Dt > 0) {
    pvLeftHeads<DT>(V, n, D, Dt, Dv, p + (int64_t)g * ld, ld, acc + (int64_t)g * D, G - g, rowBytes, hint);
    g = G;
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

static void qk(DType dt, const void* K, int n, int D, const float* q, int G, float* s, int ld) {
  if (dt == DType::F32) qkImpl<DType::F32>(K, n, D, q, G, s, ld, nullptr, Prefetch::None);
  else if (dt == DType::F16) qkImpl<DType::F16>(K, n, D, q, G, s, ld, nullptr, Prefetch::None);
  else qkImpl<DType::BF16>(K, n, D, q, G, s, ld, nullptr, Prefetch::None);
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

static float maxOf(const float* x, int n) {
  const int nv = n - n % Vec::W;
  float m = -__builtin_inff();
  if (nv > 0) {
    Vec a = Vec::loadF32(x);
    for (int i = Vec::W; i < nv; i += Vec::W) a = Vec::max(a, Vec::loadF32(x + i));
    m = a.hmax();
  }
  for (int i = nv; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

static void scale(float* acc, int n, float a) {
  const int nv = n - n % Vec::W;
  const Vec av = Vec::set1(a);
  for (int i = 0; i < nv; i += Vec::W) Vec::mul(Vec::loadF32(acc + i), av).store(acc + i);
  for (int i = nv; i < n; ++i) acc[i] *= a;
}

// The reference m[g] moves only when a block's maximum exceeds it by more than kSlack, so most
// blocks skip the rescale of l and acc; weights stay at most e^kSlack, far from f32 overflow. The
// test is on s - m, the very difference the weight exponentiates (m + kSlack can round up to
// m + 16, for m in [2^27, 2^28)).
static constexpr float kSlack = 8.0f;

// Moves a head's reference maximum m to bm, rescaling its sum l and accumulator acc[D] by
// exp(old - new) (nothing to rescale before the first block, m = -inf); returns that factor.
static float moveReference(float bm, float& m, float& l, float* acc, int D) {
  float corr = 0.f;
  if (m != -__builtin_inff()) {
    corr = Vec::exp(Vec::set1(m - bm)).first();
    l *= corr;
    scale(acc, D, corr);
  }
  m = bm;
  return corr;
}

// Raises the reference m of one head's block when a score passes it by more than kSlack
// (rescaling l and acc); usually one compare per vector and no reduction.
static void raiseReference(const float* sg, int n, float& m, float& l, float* acc, int D) {
  const int nv = n - n % Vec::W;
  bool raise = m == -__builtin_inff();
  if (!raise) {
    const Vec mv = Vec::set1(m), slack = Vec::set1(kSlack);
    for (int i = 0; i < nv && !raise; i += Vec::W) raise = Vec::anyGreater(Vec::sub(Vec::loadF32(sg + i), mv), slack);
    for (int i = nv; i < n && !raise; ++i) raise = sg[i] - m > kSlack;
  }
  if (raise) moveReference(maxOf(sg, n), m, l, acc, D);
}

// One online-softmax step over a block of scores s[g*ld + j] (j < n, g < G), in the per-head
// layout: with reference maxima m[g], sums l[g] and accumulators acc[g*D .. g*D + D) (see
// attendSpan), it may raise m[g] (rescaling l[g] and acc by exp(old - new)), then replaces s by
// exp(s - m[g]) and adds their sum to l[g].
static void softmaxStep(float* s, int ld, int n, int G, float* m, float* l, float* acc, int D) {
  for (int g = 0; g < G; ++g) raiseReference(s + (int64_t)g * ld, n, m[g], l[g], acc + (int64_t)g * D, D);
  const int nv = n - n % Vec::W;
  int g = 0;
  // Four heads at a time: four independent exp chains keep the vector units busy (one head alone
  // is a chain of dependent operations ending in a horizontal sum), and one sum4 ends them.
  for (; g + 4 <= G; g += 4) {
    float* s0 = s + (int64_t)g * ld;
    const Vec m0 = Vec::set1(m[g]), m1 = Vec::set1(m[g + 1]), m2 = Vec::set1(m[g + 2]), m3 = Vec::set1(m[g + 3]);
    Vec t0 = Vec::zero(), t1 = Vec::zero(), t2 = Vec::zero(), t3 = Vec::zero();
    for (int i = 0; i < nv; i += Vec::W) {
      const Vec e0 = Vec::exp(Vec::sub(Vec::loadF32(s0 + i), m0));
      const Vec e1 = Vec::exp(Vec::sub(Vec::loadF32(s0 + ld + i), m1));
      const Vec e2 = Vec::exp(Vec::sub(Vec::loadF32(s0 + 2 * ld + i), m2));
      const Vec e3 = Vec::exp(Vec::sub(Vec::loadF32(s0 + 3 * ld + i), m3));
      e0.store(s0 + i);
      e1.store(s0 + ld + i);
      e2.store(s0 + 2 * ld + i);
      e3.store(s0 + 3 * ld + i);
      t0 = Vec::add(t0, e0);
      t1 = Vec::add(t1, e1);
      t2 = Vec::add(t2, e2);
      t3 = Vec::add(t3, e3);
    }
    float r4[4];
    Vec::sum4(t0, t1, t2, t3, r4);
    for (int k = 0; k < 4; ++k) {
      float* sg = s0 + (int64_t)k * ld;
      float tail = 0;
      for (int i = nv; i < n; ++i) {
        sg[i] = Vec::exp(Vec::set1(sg[i] - m[g + k])).first();
        tail += sg[i];
      }
      l[g + k] += r4[k] + tail;
    }
  }
  for (; g < G; ++g) l[g] += expSum(s + (int64_t)g * ld, n, m[g]);
}

// The storage type rows are read as, as a type (for generic lambdas).
template <DType N>
struct LoadAs {
  static constexpr DType value = N;
};

// dst[d] = row element d as f32, for d < D.
template <DType DT>
static inline void toF32(const void* src, int D, float* dst) {
  const int Dv = D - D % Vec::W;
  for (int d = 0; d < Dv; d += Vec::W) loadRow(DT, src, d).store(dst + d);
  for (int d = Dv; d < D; ++d) dst[d] = scalarLoad(DT, src, d);
}

// ONE: a single query row (decode), compiled separately so the row loops fold away.
template <DType DT, bool ONE>
static void attendSpanImpl(const Span& sp, int D, int G) {
  constexpr int R = Vec::W / 4;
  const int rows = ONE ? 1 : sp.rows;
  const int P = sp.P, B = sp.block;
  float* s = sp.scratch;
  // Calls fn(K or V rows of the segment, rows `ahead` pages further on or null, count, first token)
  // for the tokens [b, e) page by page.
  auto segments = [&](int32_t b, int32_t e, bool values, int ahead, auto&& fn) {
    const size_t v = values ? (size_t)P * sp.rowBytes : 0;
    for (int32_t t = b; t < e;) {
      const int off = t % P;
      const int n = P - off < e - t ? P - off : e - t;
      const int64_t i = t / P, a = i + ahead;
      const uint8_t* here = sp.base + (size_t)sp.pages[i] * sp.pageBytes + v + (size_t)off * sp.rowBytes;
      const uint8_t* next =
          ahead > 0 && a < sp.numPages ? sp.base + (size_t)sp.pages[a] * sp.pageBytes + v + (size_t)off * sp.rowBytes : nullptr;
      fn(here, next, n, t);
      t += n;
    }
  };

  // The common shapes (query heads in groups of four, whole register tiles, R-token steps) take the
  // interleaved path: each group's scores stay in the lane order qkRows produces them (lane k*R + r
  // = head k, token r of each R-token step), the softmax works on whole vectors with per-lane
  // references, and the sums l stay in vectors until the end of the span.
  constexpr int kMaxGroups = 16;
  const bool interleaved = sp.raw == nullptr && G % 4 == 0 && G / 4 <= kMaxGroups && D % Vec::W == 0 && P % R == 0;
  alignas(64) float mLane[kSpanRows][kMaxGroups][Vec::W], lLane[kSpanRows][kMaxGroups][Vec::W];
  auto loadLanes = [&](int i) {  // lanes of row i's m from m[], its lane sums of l cleared
    const float* m = sp.state + i * sp.stateStride;
    for (int h = 0; h < G / 4; ++h)
      for (int x = 0; x < Vec::W; ++x) {
        mLane[i][h][x] = m[4 * h + x / R];
        lLane[i][h][x] = 0.f;
      }
  };
  auto flushLanes = [&](int i) {  // row i's lane sums of l into l[]
    float* l = sp.state + i * sp.stateStride + G;
    for (int h = 0; h < G / 4; ++h)
      for (int x = 0; x < Vec::W; ++x) l[4 * h + x / R] += lLane[i][h][x];
  };
  int32_t last = sp.t0, ends[kSpanRows];
  for (int i = 0; i < rows; ++i) {
    ends[i] = sp.ends[i];
    last = ends[i] > last ? ends[i] : last;
    if (interleaved) loadLanes(i);
  }

  // Serves query row i over the block [b, b + its end): LT is the type its K and V rows are read as,
  // and rowsOf(from, to, values, ahead, fn) hands them out (the pages, or the block's f32 copy).
  auto serveRow = [&](auto loadAs, int32_t b, int i, int ahead, auto&& rowsOf) {
    constexpr DType LT = decltype(loadAs)::value;
    const int64_t rowBytes = (int64_t)D * (LT == DType::F32 ? 4 : 2);
    const int nb = ends[i] - b < B ? ends[i] - b : B;
    const float* q = sp.q + i * sp.qStride;
    float* m = sp.state + i * sp.stateStride;
    float* l = m + G;
    float* acc = m + 2 * G;
    if (interleaved && nb % R == 0 && b % R == 0) {
      const int C = nb / R;  // score vectors per group of four heads
      rowsOf(b, b + nb, false, ahead, [&](const uint8_t* K, const uint8_t* next, int n, int32_t t) {
        for (int g = 0; g < G; g += 4) {
          float* sc = s + (int64_t)g * B + (t - b) / R * Vec::W;
          const uint8_t* pf = g == 0 ? next : nullptr;
          for (int j = 0; j < n; j += R)
            qkRows<LT>(K, j, D, q + (int64_t)g * D, pf, rowBytes, sp.prefetch).store(sc + j / R * Vec::W);
        }
      });
      for (int g = 0; g < G; g += 4) {
        float* sc = s + (int64_t)g * B;
        float* mL = mLane[i][g / 4];
        float* lL = lLane[i][g / 4];
        Vec top = Vec::loadF32(sc);
        for (int c = 1; c < C; ++c) top = Vec::max(top, Vec::loadF32(sc + c * Vec::W));
        // Raise a head's reference only when one of its scores passes it by more than kSlack (always
        // on a head's first block: its lanes hold -inf).
        if (Vec::anyGreater(Vec::sub(top, Vec::loadF32(mL)), Vec::set1(kSlack))) {
          alignas(64) float t[Vec::W];
          top.store(t);
          for (int k = 0; k < 4; ++k) {
            float bm = t[k * R];
            for (int r = 1; r < R; ++r) bm = t[k * R + r] > bm ? t[k * R + r] : bm;
            if (m[g + k] != -__builtin_inff() && !(bm - m[g + k] > kSlack)) continue;
            const float corr = moveReference(bm, m[g + k], l[g + k], acc + (int64_t)(g + k) * D, D);
            for (int r = 0; r < R; ++r) {
              lL[k * R + r] *= corr;  // 0 before the first block, where the lane sums are still 0
              mL[k * R + r] = bm;
            }
          }
        }
        const Vec shift = Vec::loadF32(mL);
        Vec sum = Vec::loadF32(lL);
        for (int c = 0; c < C; ++c) {
          const Vec e = Vec::exp(Vec::sub(Vec::loadF32(sc + c * Vec::W), shift));
          e.store(sc + c * Vec::W);
          sum = Vec::add(sum, e);
        }
        sum.store(lL);
      }
      rowsOf(b, b + nb, true, ahead, [&](const uint8_t* V, const uint8_t* next, int n, int32_t t) {
        for (int g = 0; g < G; g += 4)
          pvHeads4Rows<LT, true>(V, n, D, s + (int64_t)g * B + (t - b) / R * Vec::W, 0, acc + (int64_t)g * D,
                             g == 0 ? next : nullptr, rowBytes, sp.prefetch);
      });
    } else {
      // Any other block: scores laid out per head (s[g * B + j]), softmaxStep, pv.
      if (interleaved) flushLanes(i);
      rowsOf(b, b + nb, false, ahead, [&](const uint8_t* K, const uint8_t* next, int n, int32_t t) {
        qkImpl<LT>(K, n, D, q, G, s + (t - b), B, next, sp.prefetch);
      });
      if (sp.raw) {
        float* raw = sp.raw + i * sp.rawRowStride + (b - sp.t0);
        for (int g = 0; g < G; ++g)
          for (int j = 0; j < nb; ++j) raw[(int64_t)g * sp.rawStride + j] = s[(int64_t)g * B + j];
      }
      softmaxStep(s, B, nb, G, m, l, acc, D);
      rowsOf(b, b + nb, true, ahead, [&](const uint8_t* V, const uint8_t* next, int n, int32_t t) {
        pvImpl<LT>(V, n, D, s + (t - b), B, G, acc, next, sp.prefetch);
      });
      if (interleaved) loadLanes(i);
    }
  };

  // Prefill with 16-bit storage: each block's K and V rows are converted to f32 once, into
  // sp.converted, and every row reads that copy (converted per row, they cost a quarter of a row's
  // arithmetic on the Intel Xeon measured).
  const bool shared = !ONE && DT != DType::F32 && rows > 1 && sp.converted != nullptr;
  float* const kf = sp.converted;
  float* const vf = shared ? sp.converted + (int64_t)B * D : nullptr;
  for (int32_t b = sp.t0; b < last; b += B) {
    // Every row that sees this block, while its K and V rows are in cache; the first pass over the
    // block requests the rows `aheadPages` pages on.
    if (shared) {
      const int32_t e = last - b < B ? last : b + B;
      auto convert = [&](float* to) {
        return [&, to](const uint8_t* from, const uint8_t* next, int n, int32_t t) {
          for (int j = 0; j < n; ++j) {
            prefetchRow(next ? next + j * sp.rowBytes : nullptr, (int64_t)sp.rowBytes, sp.prefetch);
            toF32<DT>(from + j * sp.rowBytes, D, to + (int64_t)(t - b + j) * D);
          }
        };
      };
      segments(b, e, false, sp.aheadPages, convert(kf));
      segments(b, e, true, sp.aheadPages, convert(vf));
      auto copyRows = [&](int32_t from, int32_t to, bool values, int, auto&& fn) {
        fn(reinterpret_cast<const uint8_t*>((values ? vf : kf) + (int64_t)(from - b) * D), nullptr, to - from, from);
      };
      for (int i = 0; i < rows; ++i)
        if (ends[i] > b) serveRow(LoadAs<DType::F32>{}, b, i, 0, copyRows);
    } else {
      int ahead = sp.aheadPages;
      for (int i = 0; i < rows; ++i) {
        if (ends[i] <= b) continue;
        serveRow(LoadAs<DT>{}, b, i, ahead, segments);
        ahead = 0;
      }
    }
  }
  if (interleaved)
    for (int i = 0; i < rows; ++i) flushLanes(i);
}

template <bool ONE>
static void attendSpanRows(DType dt, const Span& span, int D, int G) {
  if (dt == DType::F32) attendSpanImpl<DType::F32, ONE>(span, D, G);
  else if (dt == DType::F16) attendSpanImpl<DType::F16, ONE>(span, D, G);
  else attendSpanImpl<DType::BF16, ONE>(span, D, G);
}

static void attendSpan(DType dt, const Span& span, int D, int G) {
  if (span.rows == 1) attendSpanRows<true>(dt, span, D, G);
  else attendSpanRows<false>(dt, span, D, G);
}

template <DType DT>
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
    if (!(r >= kTinySquares && r < __builtin_inff())) {
      // Squares of values below ~1e-19 underflow float32, above ~1e19 overflow: summed again in double.
      double sd = 0;
      for (int d = 0; d < D; ++d) {
        const double v = scalarLoad(DT, rows, (int64_t)j * D + d);
        sd += v * v;
      }
      out[j] = (float)__builtin_sqrt(sd);
    } else {
      out[j] = __builtin_sqrtf(r);
    }
  }
}

static void rowNorms(DType dt, const void* rows, int n, int D, float* out) {
  if (dt == DType::F32) rowNormsImpl<DType::F32>(rows, n, D, out);
  else if (dt == DType::F16) rowNormsImpl<DType::F16>(rows, n, D, out);
  else rowNormsImpl<DType::BF16>(rows, n, D, out);
}

// out[g*ld + j] = k_j' A_g k_j for float32 rows k_j of K [n, D] and matrices A_g [G, D, D], as
// k_j . (sum_i k_j[i] A_g[i][:]): rows of A_g scaled and added (no horizontal sums but one per
// key and tile), four keys at a time so every row of A loaded feeds four of them.
template <int T>
static inline void quadTile(const float* K, int D, const float* A, int d0, int jb, float* q) {
  constexpr int JB = 4;
  Vec acc[JB][T];
  for (int b = 0; b < JB; ++b)
    for (int t = 0; t < T; ++t) acc[b][t] = Vec::zero();
  for (int i = 0; i < D; ++i) {
    Vec a[T];
    for (int t = 0; t < T; ++t) a[t] = Vec::loadF32(A + (int64_t)i * D + d0 + t * Vec::W);
    for (int b = 0; b < jb; ++b) {
      const Vec k = Vec::set1(K[(int64_t)b * D + i]);
      for (int t = 0; t < T; ++t) acc[b][t] = Vec::fma(k, a[t], acc[b][t]);
    }
  }
  for (int b = 0; b < jb; ++b) {
    Vec r = Vec::zero();
    for (int t = 0; t < T; ++t) r = Vec::fma(acc[b][t], Vec::loadF32(K + (int64_t)b * D + d0 + t * Vec::W), r);
    q[b] += r.sum();
  }
}

static void quadForms(const float* K, int n, int D, const float* A, int G, float* out, int ld) {
  constexpr int JB = 4, T = Vec::kTile;
  for (int g = 0; g < G; ++g) {
    const float* Ag = A + (int64_t)g * D * D;
    for (int j0 = 0; j0 < n; j0 += JB) {
      const int jb = n - j0 < JB ? n - j0 : JB;
      const float* Kj = K + (int64_t)j0 * D;
      float q[JB] = {0.f, 0.f, 0.f, 0.f};
      int d0 = 0;
      for (; d0 + T * Vec::W <= D; d0 += T * Vec::W) quadTile<T>(Kj, D, Ag, d0, jb, q);
      for (; d0 + Vec::W <= D; d0 += Vec::W) quadTile<1>(Kj, D, Ag, d0, jb, q);
      for (; d0 < D; ++d0)
        for (int b = 0; b < jb; ++b) {
          float y = 0.f;
          for (int i = 0; i < D; ++i) y += Kj[(int64_t)b * D + i] * Ag[(int64_t)i * D + d0];
          q[b] += y * Kj[(int64_t)b * D + d0];
        }
      for (int b = 0; b < jb; ++b) out[(int64_t)g * ld + j0 + b] = q[b];
    }
  }
}

// Appends store rows in the cache dtype: W floats at a time through Vec::storeF16 (the hardware
// conversion on x86), the last partial vector through a padded copy.
static void toF16(const float* src, uint16_t* dst, int n) {
  int i = 0;
  for (; i + Vec::W <= n; i += Vec::W) Vec::loadF32(src + i).storeF16(dst + i);
  if (i == n) return;
  float in[Vec::W] = {};
  uint16_t out[Vec::W];
  for (int j = i; j < n; ++j) in[j - i] = src[j];
  Vec::loadF32(in).storeF16(out);
  for (int j = i; j < n; ++j) dst[j] = out[j - i];
}

// Round to nearest even on the bits, NaN kept quiet: written without branches, so it vectorises.
static void toBf16(const float* src, uint16_t* dst, int n) {
  for (int i = 0; i < n; ++i) {
    uint32_t x;
    __builtin_memcpy(&x, src + i, 4);
    const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    dst[i] = (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? (x >> 16) | 0x40u : rounded);
  }
}

// The memory benchmark's plain read: n floats through W-wide loads into eight accumulators, so the
// loop is bound by the loads and not by one add chain; with `prefetch`, every step also requests
// the lines 2 KiB ahead (into L1). Returns the sum (to keep the loads).
static float readSum(const float* p, size_t n, bool prefetch) {
  constexpr size_t kStep = 8 * Vec::W;
  Vec a[8];
  for (Vec& x : a) x = Vec::zero();
  size_t i = 0;
  for (; i + kStep <= n; i += kStep) {
    if (prefetch) prefetchRowAs<(int)Prefetch::T0>(reinterpret_cast<const uint8_t*>(p + i) + 2048, kStep * 4);
    for (int k = 0; k < 8; ++k) a[k] = Vec::add(a[k], Vec::loadF32(p + i + k * Vec::W));
  }
  float tail = 0.f;
  for (; i < n; ++i) tail += p[i];
  for (int k = 1; k < 8; ++k) a[0] = Vec::add(a[0], a[k]);
  return a[0].sum() + tail;
}

static const Kernels kTable = {KERNEL_NAME, qk, expSum, maxOf, attendSpan, rowNorms, quadForms, toF16, toBf16, readSum};
