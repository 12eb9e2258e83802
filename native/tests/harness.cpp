#include "harness.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <thread>

#include "../cpu/attention.h"
#include "../cpu/scores.h"

namespace lukv {
namespace test {

namespace {

// splitmix64: fast, and every case reproducible from (seed, case index).
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint32_t below(uint32_t n) { return (uint32_t)(((next() >> 32) * (uint64_t)n) >> 32); }
  int range(int lo, int hi) { return lo + (int)below((uint32_t)(hi - lo + 1)); }
  float uniform() { return (float)(next() >> 40) * (1.0f / 16777216.0f); }
  // Sum of four uniforms: mean 0, variance 1, cheap enough for millions of rows.
  float normal() { return (uniform() + uniform() + uniform() + uniform() - 2.0f) * 1.7320508f; }
  // Log-uniform integer in [lo, hi].
  int logRange(int lo, int hi) {
    const double a = std::log((double)lo), b = std::log((double)hi + 1);
    return std::min(hi, std::max(lo, (int)std::exp(a + (b - a) * uniform())));
  }
};

struct Report {
  int passed = 0, failed = 0;
  std::vector<std::string> failures;
  bool verbose = false;
};

double relErr(const float* a, const float* b, size_t n, size_t* worst = nullptr) {
  double num = 0, den = 0, w = -1;
  for (size_t i = 0; i < n; ++i) {
    const double d = (double)a[i] - (double)b[i];
    if (std::isnan(a[i]) != std::isnan(b[i])) return NAN;
    if (std::isnan(a[i])) continue;
    num += d * d;
    den += (double)b[i] * b[i];
    if (worst && std::fabs(d) > w) w = std::fabs(d), *worst = i;
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

void record(Report& r, const std::string& what, bool ok, const std::string& detail) {
  if (ok) r.passed++;
  else {
    r.failed++;
    r.failures.push_back(what + ": " + detail);
  }
  if (!ok || r.verbose) std::printf("  %-4s %s  %s\n", ok ? "ok" : "FAIL", what.c_str(), detail.c_str());
  std::fflush(stdout);
}

void checkRel(Report& r, const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
              double tol) {
  size_t worst = 0;
  const double e = got.size() == want.size() ? relErr(got.data(), want.data(), want.size(), &worst) : NAN;
  char buf[256];
  if (got.size() != want.size()) std::snprintf(buf, sizeof buf, "size %zu vs %zu", got.size(), want.size());
  else if (std::isnan(e)) std::snprintf(buf, sizeof buf, "NaN or unwritten output (n=%zu)", want.size());
  else
    std::snprintf(buf, sizeof buf, "rel %.2e (tol %.0e), worst at %zu: %.7g vs %.7g", e, tol, worst,
                  want.empty() ? 0.0 : (double)got[worst], want.empty() ? 0.0 : (double)want[worst]);
  record(r, what, !std::isnan(e) && e <= tol, buf);
}

double tolerance(DType dt) { return dt == DType::F32 ? 1e-5 : 2e-3; }

void storeRow(DType dt, uint8_t* dst, const float* src, int D) {
  if (dt == DType::F32) {
    std::memcpy(dst, src, (size_t)D * 4);
    return;
  }
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
  for (int i = 0; i < D; ++i) d[i] = dt == DType::F16 ? f32ToF16(src[i]) : f32ToBf16(src[i]);
}

float loadElem(DType dt, const uint8_t* row, int d) {
  if (dt == DType::F32) {
    float v;
    std::memcpy(&v, row + 4 * d, 4);
    return v;
  }
  uint16_t b;
  std::memcpy(&b, row + 2 * d, 2);
  return dt == DType::F16 ? f16ToF32(b) : bf16ToF32(b);
}

// Device memory owned by the test.
template <class T>
struct DevArray {
  Backend* b;
  T* p = nullptr;
  size_t n = 0;
  DevArray(Backend& be, size_t count) : b(&be), n(count) { p = static_cast<T*>(be.alloc(std::max<size_t>(1, count) * sizeof(T))); }
  ~DevArray() { b->release(p); }
  DevArray(const DevArray&) = delete;
  DevArray& operator=(const DevArray&) = delete;
  void put(const std::vector<T>& v) { b->upload(p, v.data(), v.size() * sizeof(T)); }
  std::vector<T> get() {
    std::vector<T> v(n);
    b->download(v.data(), p, n * sizeof(T));
    return v;
  }
};

const char* dtName(DType dt) { return dtypeName(dt); }

ThreadPool& cpuThreads() {
  static ThreadPool tp((int)std::max(1u, std::thread::hardware_concurrency()));
  return tp;
}

const cpu::Kernels* cpuKernels() {
  static const cpu::Kernels* k = cpu::selectKernels("auto");
  return k;
}

// k distinct values of [0, n), ascending (selection sampling).
std::vector<int32_t> sample(Rng& rng, int32_t n, int32_t k) {
  std::vector<int32_t> out;
  out.reserve(k);
  for (int32_t i = 0; i < n && (int32_t)out.size() < k; ++i)
    if ((double)rng.uniform() * (n - i) < (double)(k - (int32_t)out.size())) out.push_back(i);
  return out;
}

// Sequences whose heads were evicted to different lengths: kept positions are a random subset
// that always includes the last `rows` positions (the query rows just appended), page ids are a
// random permutation of the pool, unused rows of the pool hold NaN bytes.
struct Layout {
  DType dt;
  int kvHeads, G, D, P;
  std::vector<int> rows;
  std::vector<int32_t> appended;
  std::vector<std::vector<HeadState>> heads;  // [sequence][kv head]
  std::unique_ptr<PagePool> pool;
  size_t poolBytes() const { return (size_t)pool->numPages() * pool->pageBytes(); }
};

Layout makeLayout(Rng& rng, DType dt, int D, int G, int kvHeads, int P, const std::vector<std::vector<int32_t>>& lengths,
                  const std::vector<int>& rows, bool evicted) {
  Layout lay;
  lay.dt = dt;
  lay.kvHeads = kvHeads;
  lay.G = G;
  lay.D = D;
  lay.P = P;
  lay.rows = rows;
  const size_t S = lengths.size();
  lay.heads.resize(S);
  int64_t pagesNeeded = 0;
  std::vector<std::vector<int>> extraPage(S);
  for (size_t s = 0; s < S; ++s) {
    int32_t maxLen = 0;
    for (int h = 0; h < kvHeads; ++h) maxLen = std::max(maxLen, std::max(lengths[s][h], (int32_t)rows[s]));
    const int32_t A = maxLen + (evicted ? (int32_t)rng.below((uint32_t)maxLen / 2 + 1) : 0);
    lay.appended.push_back(A);
    lay.heads[s].resize(kvHeads);
    extraPage[s].resize(kvHeads);
    for (int h = 0; h < kvHeads; ++h) {
      const int32_t L = std::max(lengths[s][h], (int32_t)rows[s]);
      HeadState& hs = lay.heads[s][h];
      hs.positions = sample(rng, A - rows[s], L - rows[s]);
      for (int r = 0; r < rows[s]; ++r) hs.positions.push_back(A - rows[s] + r);
      extraPage[s][h] = rng.below(4) == 0 ? 1 : 0;  // a page list longer than needed is valid
      pagesNeeded += (L + P - 1) / P + extraPage[s][h];
    }
  }
  const int64_t numPages = pagesNeeded + 3;
  std::vector<int32_t> perm(numPages);
  std::iota(perm.begin(), perm.end(), 0);
  for (int64_t i = numPages - 1; i > 0; --i) std::swap(perm[i], perm[rng.below((uint32_t)(i + 1))]);
  lay.pool.reset(new PagePool(numPages, P, D, dt));
  std::memset(lay.pool->keys(0), 0xFF, lay.poolBytes());
  int64_t next = 0;
  std::vector<float> row(D);
  const size_t rb = lay.pool->rowBytes();
  for (size_t s = 0; s < S; ++s)
    for (int h = 0; h < kvHeads; ++h) {
      HeadState& hs = lay.heads[s][h];
      const int32_t L = hs.length();
      const int64_t np = (L + P - 1) / P + extraPage[s][h];
      for (int64_t i = 0; i < np; ++i) hs.pages.push_back(perm[next++]);
      const float keyScale = 0.5f + 3.5f * rng.uniform();  // some heads attend sharply
      for (int32_t t = 0; t < L; ++t) {
        const int32_t page = hs.pages[t / P];
        for (int d = 0; d < D; ++d) row[d] = rng.normal() * keyScale;
        storeRow(dt, lay.pool->keys(page) + (size_t)(t % P) * rb, row.data(), D);
        for (int d = 0; d < D; ++d) row[d] = rng.normal();
        storeRow(dt, lay.pool->values(page) + (size_t)(t % P) * rb, row.data(), D);
      }
    }
  return lay;
}

void uploadPool(Backend& be, const Layout& lay) {
  be.newPool(lay.pool->numPages(), lay.P, lay.D, lay.dt);
  be.upload(be.pool().data, lay.pool->keys(0), lay.poolBytes());
}

struct AttnSpec {
  DType dt;
  int D, G, kvHeads, P;
  std::vector<std::vector<int32_t>> lengths;  // [sequence][kv head]
  std::vector<int> rows;
  bool mass = false, oracle = false;
  int32_t minChunk = 256;
  bool fused = true;  // split heads merged by their last block (else by the reduce kernel)
};

std::string attnLabel(const AttnSpec& s) {
  int32_t maxLen = 0;
  int maxRows = 0;
  for (auto& v : s.lengths)
    for (int32_t x : v) maxLen = std::max(maxLen, x);
  for (int r : s.rows) maxRows = std::max(maxRows, r);
  char buf[200];
  std::snprintf(buf, sizeof buf, "%s %s D=%d G=%d P=%d batch=%zu rows=%d maxLen=%d%s%s%s", maxRows > 1 ? "prefill" : "decode",
                dtName(s.dt), s.D, s.G, s.P, s.lengths.size(), maxRows, maxLen, s.mass ? " +mass" : "",
                s.oracle ? " +oracle" : "", s.fused ? "" : " reduce-kernel");
  return buf;
}

void attendCase(Backend& be, Report& rep, Rng& rng, const AttnSpec& spec) {
  const std::string label = "attend " + attnLabel(spec);
  Layout lay = makeLayout(rng, spec.dt, spec.D, spec.G, spec.kvHeads, spec.P, spec.lengths, spec.rows, true);
  uploadPool(be, lay);
  const int H = spec.kvHeads, G = spec.G, Hq = H * G, D = spec.D;
  const size_t S = spec.lengths.size();
  int32_t totalRows = 0;
  std::vector<int32_t> rowBegin;
  for (size_t s = 0; s < S; ++s) rowBegin.push_back(totalRows), totalRows += spec.rows[s];
  std::vector<float> q((size_t)totalRows * Hq * D);
  for (float& x : q) x = rng.normal();
  const float scale = 1.0f / std::sqrt((float)D);
  std::vector<std::vector<int32_t>> qpos(S);
  for (size_t s = 0; s < S; ++s)
    for (int r = 0; r < spec.rows[s]; ++r) qpos[s].push_back(lay.appended[s] - spec.rows[s] + r);

  // Per (sequence, head): initial mass, oracle tokens, initial oracle, weights [G][oracleTokens].
  std::vector<std::vector<float>> mass0(S * H), oracle0(S * H), weight(S * H);
  std::vector<int32_t> oracleTokens(S * H, 0);
  for (size_t s = 0; s < S; ++s)
    for (int h = 0; h < H; ++h) {
      const size_t i = s * H + h;
      const int32_t L = lay.heads[s][h].length();
      if (spec.mass) {
        mass0[i].resize(L);
        for (float& x : mass0[i]) x = rng.uniform() * 1e-3f;
      }
      if (spec.oracle) {
        oracleTokens[i] = L - (int32_t)rng.below((uint32_t)(L / 4 + 1));
        oracle0[i].resize(oracleTokens[i]);
        for (float& x : oracle0[i]) x = rng.uniform() * 1e-4f;
        weight[i].resize((size_t)G * oracleTokens[i]);
        for (float& x : weight[i]) x = 0.1f + rng.uniform();
      }
    }

  // CPU twin.
  std::vector<float> outRef(q.size(), 0.f);
  std::vector<std::vector<float>> massRef = mass0, oracleRef = oracle0;
  for (size_t s = 0; s < S; ++s) {
    cpu::AttendArgs a;
    a.pool = lay.pool.get();
    a.kernels = cpuKernels();
    a.threads = &cpuThreads();
    a.heads = lay.heads[s].data();
    a.kvHeads = H;
    a.queryHeads = Hq;
    a.headDim = D;
    a.tokens = spec.rows[s];
    a.queryPositions = qpos[s].data();
    a.queries = q.data() + (size_t)rowBegin[s] * Hq * D;
    a.out = outRef.data() + (size_t)rowBegin[s] * Hq * D;
    a.scale = scale;
    std::vector<float*> m, o;
    std::vector<const float*> w;
    if (spec.mass) {
      for (int h = 0; h < H; ++h) m.push_back(massRef[s * H + h].data());
      a.mass = m.data();
    }
    if (spec.oracle) {
      for (int h = 0; h < H; ++h) o.push_back(oracleRef[s * H + h].data());
      for (int h = 0; h < H; ++h)
        for (int g = 0; g < G; ++g) w.push_back(weight[s * H + h].data() + (size_t)g * oracleTokens[s * H + h]);
      a.oracle = o.data();
      a.oracleWeight = w.data();
      a.oracleTokens = oracleTokens.data() + s * H;
    }
    cpu::attend(a);
  }

  // CUDA side.
  DevArray<float> dq(be, q.size()), dout(be, q.size());
  dq.put(q);
  std::vector<std::unique_ptr<DevArray<float>>> dmass, doracle, dweight;
  std::vector<std::vector<float*>> massPtr(S), oraclePtr(S);
  std::vector<std::vector<const float*>> weightPtr(S);
  for (size_t s = 0; s < S; ++s)
    for (int h = 0; h < H; ++h) {
      const size_t i = s * H + h;
      if (spec.mass) {
        dmass.emplace_back(new DevArray<float>(be, mass0[i].size()));
        dmass.back()->put(mass0[i]);
        massPtr[s].push_back(dmass.back()->p);
      }
      if (spec.oracle) {
        doracle.emplace_back(new DevArray<float>(be, oracle0[i].size()));
        doracle.back()->put(oracle0[i]);
        oraclePtr[s].push_back(doracle.back()->p);
        dweight.emplace_back(new DevArray<float>(be, weight[i].size()));
        dweight.back()->put(weight[i]);
        weightPtr[s].push_back(dweight.back()->p);
      }
    }
  cuda::AttendBatch b;
  b.pool = be.pool();
  b.kvHeads = H;
  b.queryHeads = Hq;
  for (size_t s = 0; s < S; ++s) {
    cuda::AttendSequence as;
    as.heads = lay.heads[s].data();
    as.rows = spec.rows[s];
    as.queryPositions = qpos[s].data();
    if (spec.mass) as.mass = massPtr[s].data();
    if (spec.oracle) {
      as.oracle = oraclePtr[s].data();
      as.oracleWeight = weightPtr[s].data();
      as.oracleTokens = oracleTokens.data() + s * H;
    }
    b.sequences.push_back(as);
  }
  b.queries = dq.p;
  b.out = dout.p;
  b.scale = scale;
  try {
    cuda::AttendOptions ao;
    ao.minChunk = spec.minChunk;
    ao.fusedReduce = spec.fused;
    be.attend(b, ao);
    be.sync();
  } catch (const std::exception& e) {
    record(rep, label, false, std::string("threw: ") + e.what());
    return;
  }
  const double tol = tolerance(spec.dt);
  checkRel(rep, label + " out", dout.get(), outRef, tol);
  if (spec.mass) {
    // Compare what was added (the initial mass would hide errors in the increments).
    std::vector<float> got, want;
    for (size_t i = 0; i < S * H; ++i) {
      const std::vector<float> m = dmass[i]->get();
      for (size_t t = 0; t < m.size(); ++t) {
        got.push_back(m[t] - mass0[i][t]);
        want.push_back(massRef[i][t] - mass0[i][t]);
      }
    }
    checkRel(rep, label + " mass", got, want, tol);
  }
  if (spec.oracle) {
    std::vector<float> got, want;
    for (size_t i = 0; i < S * H; ++i) {
      const std::vector<float> o = doracle[i]->get();
      got.insert(got.end(), o.begin(), o.end());
      want.insert(want.end(), oracleRef[i].begin(), oracleRef[i].end());
    }
    checkRel(rep, label + " oracle", got, want, tol);
  }
}

struct ScoreSpec {
  DType dt;
  int D, G, kvHeads, P;
  std::vector<std::vector<int32_t>> lengths;
  int window;
  Scorer scorer;
  Pooling pooling = Pooling::None;
  int kernel = 7;
  bool groupMax = false;
  float scale = NAN;         // NaN: 1 / sqrt(D)
  float queryMagnitude = 1;  // observation queries are normal values times this
};

const char* scorerName(Scorer s) {
  switch (s) {
    case Scorer::SnapKV: return "snapkv";
    case Scorer::KeyDiff: return "keydiff";
    case Scorer::KNorm: return "knorm";
    case Scorer::TOVA: return "tova";
    case Scorer::H2O: return "h2o";
    case Scorer::Streaming: return "streaming";
    default: return "random";
  }
}

void scoreCase(Backend& be, Report& rep, Rng& rng, const ScoreSpec& spec) {
  const bool attention = spec.scorer == Scorer::SnapKV || spec.scorer == Scorer::TOVA;
  const int W = spec.scorer == Scorer::TOVA ? 1 : spec.window;
  char buf[200];
  int32_t maxLen = 0;
  for (auto& v : spec.lengths)
    for (int32_t x : v) maxLen = std::max(maxLen, x);
  std::snprintf(buf, sizeof buf, "scores %s %s D=%d G=%d P=%d maxLen=%d", scorerName(spec.scorer), dtName(spec.dt), spec.D,
                spec.G, spec.P, maxLen);
  std::string label = buf;
  if (attention)
    label += std::string(" pool=") + (spec.pooling == Pooling::None ? "none" : spec.pooling == Pooling::Max ? "max" : "avg") +
             (spec.pooling != Pooling::None ? std::to_string(spec.kernel) : "") + (spec.groupMax ? " groupMax" : " groupMean") +
             " W=" + std::to_string(W);
  if (!std::isnan(spec.scale)) {
    std::snprintf(buf, sizeof buf, " scale=%g", spec.scale);
    label += buf;
  }
  const size_t S = spec.lengths.size();
  std::vector<int> rows(S, W);
  Layout lay = makeLayout(rng, spec.dt, spec.D, spec.G, spec.kvHeads, spec.P, spec.lengths, rows, true);
  uploadPool(be, lay);
  const int H = spec.kvHeads, G = spec.G, Hq = H * G, D = spec.D;
  std::vector<float> q((size_t)S * W * Hq * D);
  for (float& x : q) x = rng.normal() * spec.queryMagnitude;
  std::vector<std::vector<int32_t>> qpos(S);
  for (size_t s = 0; s < S; ++s)
    for (int r = 0; r < W; ++r) qpos[s].push_back(lay.appended[s] - W + r);
  ScoreOptions so;
  so.scorer = spec.scorer;
  so.window = W;
  so.pooling = spec.pooling;
  so.kernel = spec.kernel;
  so.groupMax = spec.groupMax;
  so.seed = 1234;
  so.scale = std::isnan(spec.scale) ? 1.0f / std::sqrt((float)D) : spec.scale;
  std::vector<std::vector<float>> mass(S * H);
  for (size_t s = 0; s < S; ++s)
    for (int h = 0; h < H; ++h) {
      mass[s * H + h].resize(lay.heads[s][h].length());
      for (float& x : mass[s * H + h]) x = rng.uniform();
    }

  std::vector<float> ref;
  for (size_t s = 0; s < S; ++s)
    for (int h = 0; h < H; ++h) {
      cpu::HeadScoreArgs a;
      a.pool = lay.pool.get();
      a.kernels = cpuKernels();
      a.head = &lay.heads[s][h];
      a.layer = 0;
      a.headIndex = h;
      a.group = G;
      a.headDim = D;
      a.queryHeads = Hq;
      a.queries = q.data() + (size_t)s * W * Hq * D;
      a.queryPositions = qpos[s].data();
      a.rows = W;
      a.accumulated = mass[s * H + h].data();
      a.newest = lay.appended[s] - 1;
      a.options = &so;
      std::vector<float> out(lay.heads[s][h].length());
      cpu::scoreHead(a, out.data());
      ref.insert(ref.end(), out.begin(), out.end());
    }

  DevArray<float> dq(be, q.size()), dout(be, ref.size());
  if (!q.empty()) dq.put(q);  // none with window 0
  std::vector<std::unique_ptr<DevArray<float>>> dmass;
  cuda::ScoreBatch b;
  b.pool = be.pool();
  b.kvHeads = H;
  b.queryHeads = Hq;
  for (size_t s = 0; s < S; ++s)
    for (int h = 0; h < H; ++h) {
      cuda::ScoreHeadRef r;
      r.head = &lay.heads[s][h];
      r.layer = 0;
      r.kvHead = h;
      r.row0 = (int32_t)(s * W);
      r.rows = W;
      r.queryPositions = qpos[s].data();
      r.newest = lay.appended[s] - 1;
      dmass.emplace_back(new DevArray<float>(be, mass[s * H + h].size()));
      dmass.back()->put(mass[s * H + h]);
      r.mass = dmass.back()->p;
      b.heads.push_back(r);
    }
  b.queries = dq.p;
  b.queryRows = (int32_t)(S * W);
  b.scorer = spec.scorer;
  b.pooling = spec.pooling;
  b.kernel = spec.kernel;
  b.groupMax = spec.groupMax;
  b.seed = so.seed;
  b.scale = so.scale;
  b.out = dout.p;
  try {
    be.scores(b);
    be.sync();
  } catch (const std::exception& e) {
    record(rep, label, false, std::string("threw: ") + e.what());
    return;
  }
  checkRel(rep, label, dout.get(), ref, tolerance(spec.dt));
}

struct CacheSpec {
  DType dt;
  int D, kvHeads, P;
  InputKind kind;
  std::vector<int> chunks;  // tokens per append before the fork
  std::vector<int> after;   // appended to the original after the fork (the fork gets the same sizes)
  bool mass;
};

// Rows of a device head decoded to f32 from a downloaded copy of the pool.
std::vector<float> deviceRows(const std::vector<uint8_t>& poolBytes, const cuda::PoolView& v, DType dt,
                              const HeadState& h, bool values) {
  std::vector<float> out((size_t)h.length() * v.headDim);
  for (int32_t t = 0; t < h.length(); ++t) {
    const uint8_t* row = poolBytes.data() + (size_t)h.pages[t / v.pageSize] * v.pageBytes +
                         (values ? (size_t)v.pageSize * v.rowBytes : 0) + (size_t)(t % v.pageSize) * v.rowBytes;
    for (int d = 0; d < v.headDim; ++d) out[(size_t)t * v.headDim + d] = loadElem(dt, row, d);
  }
  return out;
}

void compareSequence(Backend& be, Report& rep, const std::string& label, Cache& cache, int32_t seq,
                     const std::vector<HeadState>& dev, DType dt) {
  const cuda::PoolView v = be.pool();
  std::vector<uint8_t> bytes((size_t)v.numPages * v.pageBytes);
  be.download(bytes.data(), v.data, bytes.size());
  bool ok = true;
  std::string detail = "rows and positions identical";
  for (size_t h = 0; h < dev.size() && ok; ++h) {
    if (cache.positions(seq, 0, (int)h) != dev[h].positions) {
      ok = false;
      detail = "positions differ in head " + std::to_string(h);
      break;
    }
    for (int values = 0; values < 2 && ok; ++values) {
      const std::vector<float> want = cache.readRows(seq, 0, (int)h, values != 0);
      const std::vector<float> got = deviceRows(bytes, v, dt, dev[h], values != 0);
      if (want.size() != got.size() || std::memcmp(want.data(), got.data(), want.size() * 4) != 0) {
        size_t i = 0;
        while (i < want.size() && i < got.size() && std::memcmp(&want[i], &got[i], 4) == 0) ++i;
        char buf[160];
        std::snprintf(buf, sizeof buf, "%s of head %zu differ at element %zu (token %zu): %.8g vs %.8g", values ? "V" : "K", h,
                      i, i / v.headDim, i < got.size() ? got[i] : NAN, i < want.size() ? want[i] : NAN);
        ok = false;
        detail = buf;
      }
    }
  }
  record(rep, label, ok, detail);
}

void cacheCase(Backend& be, Report& rep, Rng& rng, const CacheSpec& spec) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s D=%d H=%d P=%d input=%s", dtName(spec.dt), spec.D, spec.kvHeads, spec.P,
                spec.kind == InputKind::F32 ? "f32" : "raw16");
  const std::string label = buf;
  const int H = spec.kvHeads, D = spec.D, P = spec.P;
  int64_t total = 0;
  for (int n : spec.chunks) total += n;
  for (int n : spec.after) total += 2 * n;
  CacheConfig cfg;
  cfg.layers = 1;
  cfg.kvHeads = H;
  cfg.queryHeads = H;
  cfg.headDim = D;
  cfg.pageSize = P;
  // Room for every head of both sequences, the copies of shared pages and the fresh pages of
  // the compaction.
  cfg.maxTokens = (int64_t)H * (2 * total + 6 * P);
  cfg.dtype = spec.dt;
  cfg.threads = 2;
  Cache cache(cfg);
  const int32_t seq = cache.createSequence();
  be.newPool((cfg.maxTokens + P - 1) / P, P, D, spec.dt);
  std::vector<HeadState> dev(H);
  int32_t appended = 0;

  auto input = [&](int n, std::vector<uint8_t>& k, std::vector<uint8_t>& v) {
    const size_t elems = (size_t)n * H * D;
    const size_t eb = spec.kind == InputKind::F32 ? 4 : 2;
    k.resize(elems * eb);
    v.resize(elems * eb);
    for (size_t i = 0; i < elems; ++i) {
      const float a = rng.normal() * 3.0f, c = rng.normal();
      if (spec.kind == InputKind::F32) {
        std::memcpy(k.data() + 4 * i, &a, 4);
        std::memcpy(v.data() + 4 * i, &c, 4);
      } else {
        const uint16_t ka = spec.dt == DType::F16 ? f32ToF16(a) : f32ToBf16(a);
        const uint16_t vc = spec.dt == DType::F16 ? f32ToF16(c) : f32ToBf16(c);
        std::memcpy(k.data() + 2 * i, &ka, 2);
        std::memcpy(v.data() + 2 * i, &vc, 2);
      }
    }
  };
  auto appendBoth = [&](int32_t cpuSeq, std::vector<HeadState>& devHeads, int32_t pos0, int n) {
    std::vector<uint8_t> k, v;
    input(n, k, v);
    cache.append(cpuSeq, 0, n, k.data(), v.data(), spec.kind);
    DevArray<uint8_t> dk(be, k.size()), dv(be, v.size());
    be.upload(dk.p, k.data(), k.size());
    be.upload(dv.p, v.data(), v.size());
    be.appendTokens(devHeads.data(), H, n, pos0, dk.p, dv.p, spec.kind);
    be.sync();
  };
  auto pagesMatch = [&](const std::string& what) {
    const int64_t cpuUsed = cache.usage().pagesUsed, devUsed = be.pool().numPages - be.freePages();
    record(rep, label + " " + what + " pages", cpuUsed == devUsed,
           std::to_string(devUsed) + " pages used, CPU " + std::to_string(cpuUsed));
  };
  try {
    for (int n : spec.chunks) appendBoth(seq, dev, appended, n), appended += n;
    compareSequence(be, rep, "append " + label, cache, seq, dev, spec.dt);

    // Fork: the fork shares every page; appending to either copies the shared partial last page.
    const int32_t fork = cache.fork(seq);
    std::vector<HeadState> devFork = dev;
    for (auto& h : devFork)
      for (int32_t p : h.pages) be.retain(p);
    int32_t forkAppended = appended;
    for (int n : spec.after) {
      appendBoth(seq, dev, appended, n), appended += n;
      appendBoth(fork, devFork, forkAppended, n), forkAppended += n;
    }
    compareSequence(be, rep, "append-after-fork " + label, cache, seq, dev, spec.dt);
    compareSequence(be, rep, "fork " + label, cache, fork, devFork, spec.dt);
    pagesMatch("append");

    // Compaction: the CPU chooses (random scores, explicit budgets); positions were 0..n-1, so
    // the kept positions are the kept indices the device gathers.
    CompressOptions opt;
    opt.score.scorer = Scorer::Random;
    opt.score.seed = (uint32_t)rng.next();
    opt.score.window = std::min(8, appended);
    opt.allocation = Allocation::Explicit;
    opt.sink = 4;
    const std::vector<int32_t> lens = cache.lengths(seq);
    for (int h = 0; h < H; ++h) opt.budgets.push_back(1 + (int32_t)rng.below((uint32_t)lens[h]));
    std::vector<std::vector<float>> massIn(H);
    std::vector<std::unique_ptr<DevArray<float>>> dIn, dOut;
    std::vector<const float*> inPtr;
    std::vector<float*> outPtr;
    if (spec.mass) {
      for (int h = 0; h < H; ++h) {
        massIn[h].resize(lens[h]);
        for (float& x : massIn[h]) x = rng.uniform();
        dIn.emplace_back(new DevArray<float>(be, lens[h]));
        dIn.back()->put(massIn[h]);
        inPtr.push_back(dIn.back()->p);
      }
    }
    cache.compress(seq, opt);
    std::vector<std::vector<int32_t>> kept(H);
    std::vector<HeadState*> ptrs;
    for (int h = 0; h < H; ++h) {
      kept[h] = cache.positions(seq, 0, h);
      ptrs.push_back(&dev[h]);
      if (spec.mass) {
        dOut.emplace_back(new DevArray<float>(be, kept[h].size()));
        outPtr.push_back(dOut.back()->p);
      }
    }
    be.compact(ptrs, kept, inPtr, outPtr);
    be.sync();
    compareSequence(be, rep, "compact " + label, cache, seq, dev, spec.dt);
    compareSequence(be, rep, "fork-after-compact " + label, cache, fork, devFork, spec.dt);
    pagesMatch("compact");
    if (spec.mass) {
      bool ok = true;
      for (int h = 0; h < H && ok; ++h) {
        if ((int32_t)kept[h].size() == lens[h]) continue;  // nothing evicted: the head is left alone
        const std::vector<float> got = dOut[h]->get();
        for (size_t j = 0; j < kept[h].size() && ok; ++j) ok = got[j] == massIn[h][kept[h][j]];
      }
      record(rep, "compact-mass " + label, ok, ok ? "gathered exactly" : "gathered mass differs");
    }
  } catch (const std::exception& e) {
    record(rep, "cache " + label, false, std::string("threw: ") + e.what());
  }
}

void errorCases(Backend& be, Report& rep) {
  for (int D : {100, 4, 264}) {
    bool ok = false;
    std::string detail = "no error";
    try {
      be.newPool(4, 16, D, DType::F16);
    } catch (const Error& e) {
      ok = e.code() == ErrorCode::InvalidArgument;
      detail = e.what();
    } catch (const std::exception& e) {
      detail = std::string("wrong error type: ") + e.what();
    }
    record(rep, "rejects headDim " + std::to_string(D), ok, detail);
  }
  // A page list shorter than the head's length must be refused before any launch.
  be.newPool(8, 16, 64, DType::F16);
  HeadState h;
  h.positions.resize(40);
  std::iota(h.positions.begin(), h.positions.end(), 0);
  h.pages = {0, 1};  // 40 tokens need 3 pages
  std::vector<float> q(64, 0.f);
  DevArray<float> dq(be, 64), dout(be, 64);
  dq.put(q);
  cuda::AttendBatch b;
  b.pool = be.pool();
  b.kvHeads = 1;
  b.queryHeads = 1;
  const int32_t qp = 39;
  b.sequences.push_back({&h, 1, &qp});
  b.queries = dq.p;
  b.out = dout.p;
  b.scale = 0.125f;
  bool ok = false;
  std::string detail = "no error";
  try {
    be.attend(b, cuda::AttendOptions());
  } catch (const Error& e) {
    ok = e.code() == ErrorCode::InvalidArgument;
    detail = e.what();
  }
  record(rep, "rejects a short page list", ok, detail);
  h.pages = {0, 1, 8};  // page 8 is outside the pool of 8
  ok = false;
  detail = "no error";
  try {
    be.attend(b, cuda::AttendOptions());
  } catch (const Error& e) {
    ok = e.code() == ErrorCode::InvalidArgument;
    detail = e.what();
  }
  record(rep, "rejects a page outside the pool", ok, detail);
}

// A case that throws (a CUDA error, say) is one failed check with its label; later cases still run.
template <class F>
void guarded(Report& rep, const std::string& label, F&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    record(rep, label, false, std::string("threw: ") + e.what());
  }
}

std::vector<std::vector<int32_t>> lengthsFor(Rng& rng, int S, int H, int lo, int hi) {
  std::vector<std::vector<int32_t>> l(S, std::vector<int32_t>(H));
  for (auto& v : l)
    for (auto& x : v) x = rng.logRange(lo, hi);
  return l;
}

}  // namespace

int runKernelTests(Backend& be, const Options& o) {
  Report rep;
  rep.verbose = o.verbose;
  Rng rng(o.seed);
  const bool full = o.full;
  auto want = [&](const char* group) { return o.only.empty() || std::string(group).find(o.only) != std::string::npos; };
  auto timed = [&](const char* group, const std::function<void()>& fn) {
    if (!want(group)) return;
    const int before = rep.passed + rep.failed;
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%-10s %4d checks, %d failed so far, %.1f s\n", group, rep.passed + rep.failed - before, rep.failed, s);
    std::fflush(stdout);
  };
  const DType dts[] = {DType::F32, DType::F16, DType::BF16};
  const int pageSizes[] = {1, 16, 64};

  timed("errors", [&] { guarded(rep, "errors", [&] { errorCases(be, rep); }); });

  timed("append", [&] {
    int i = 0;
    for (DType dt : dts)
      for (int P : pageSizes)
        for (InputKind kind : {InputKind::F32, InputKind::Raw16}) {
          if (kind == InputKind::Raw16 && dt == DType::F32) continue;
          CacheSpec c;
          c.dt = dt;
          c.D = (i % 2) ? 128 : 64;
          c.kvHeads = full ? 4 : 2;
          c.P = P;
          c.kind = kind;
          const int maxChunk = full ? 700 : 40;
          // Chunk sizes that leave the last page partly filled before the fork.
          for (int k = 0; k < 3; ++k) c.chunks.push_back(rng.range(1, maxChunk));
          if (P > 1 && (c.chunks[0] + c.chunks[1] + c.chunks[2]) % P == 0) c.chunks.back()++;
          for (int k = 0; k < 2; ++k) c.after.push_back(rng.range(1, maxChunk / 2));
          c.mass = (i % 2) == 0;
          guarded(rep, std::string("cache ") + dtName(c.dt), [&] { cacheCase(be, rep, rng, c); });
          ++i;
        }
  });

  timed("decode", [&] {
    int i = 0;
    for (DType dt : dts)
      for (int D : {64, 128})
        for (int G : {1, 4, 8}) {
          AttnSpec s;
          s.dt = dt;
          s.D = D;
          s.G = G;
          s.kvHeads = G == 8 ? 2 : 4;
          // Batch 1: one long head (32K on the GPU) among shorter ones; every page size on the GPU.
          for (int k = 0; k < (full ? 3 : 1); ++k) {
            s.P = pageSizes[(i + k) % 3];
            s.lengths = lengthsFor(rng, 1, s.kvHeads, 1, full ? 4096 : 300);
            s.lengths[0][(i + k) % s.kvHeads] = full ? ((i + k) % 2 ? 32768 : 16384 + 7) : 700;
            s.rows = {1};
            s.mass = (i + k) % 3 == 0;
            s.oracle = (i + k) % 4 == 1;
            s.minChunk = full ? 256 : 64;
            s.fused = (i + k) % 2 == 0;
            guarded(rep, "attend " + attnLabel(s), [&] { attendCase(be, rep, rng, s); });
          }
          s.P = pageSizes[i % 3];
          // Batch 16 (4 in the emulator): lengths from 1 up, one sequence of 32K.
          AttnSpec m = s;
          const int B = full ? 16 : 4;
          m.lengths = lengthsFor(rng, B, s.kvHeads, 1, full ? 8192 : 200);
          if (full && (i % 3) == 0)
            for (auto& x : m.lengths[B - 1]) x = 32768;
          m.rows.assign(B, 1);
          m.mass = (i % 3) == 1;
          m.oracle = false;
          m.fused = true;
          guarded(rep, "attend " + attnLabel(m), [&] { attendCase(be, rep, rng, m); });
          ++i;
        }
    // Shapes off the main grid: padded head dims, the f32 two-vector path, groups that do not
    // divide 8, groups wider than one block.
    struct Odd {
      DType dt;
      int D, G, H;
    };
    const Odd odd[] = {{DType::F16, 96, 4, 2}, {DType::F32, 256, 2, 2}, {DType::BF16, 256, 4, 2}, {DType::F16, 8, 3, 2},
                       {DType::F32, 40, 16, 1}, {DType::BF16, 128, 5, 2}};
    for (const Odd& x : odd) {
      AttnSpec s;
      s.dt = x.dt;
      s.D = x.D;
      s.G = x.G;
      s.kvHeads = x.H;
      s.P = pageSizes[i++ % 3];
      s.lengths = lengthsFor(rng, full ? 5 : 2, x.H, 1, full ? 5000 : 300);
      s.rows.assign(s.lengths.size(), 1);
      s.mass = true;
      s.oracle = true;
      s.minChunk = 64;
      s.fused = (i % 2) == 1;
      guarded(rep, "attend " + attnLabel(s), [&] { attendCase(be, rep, rng, s); });
    }
  });

  timed("prefill", [&] {
    int i = 0;
    for (DType dt : dts)
      for (int D : {64, 128})
        for (int G : {1, 4, 8}) {
          AttnSpec s;
          s.dt = dt;
          s.D = D;
          s.G = G;
          s.kvHeads = G == 8 ? 2 : 4;
          s.P = pageSizes[(i + 1) % 3];
          const int B = full ? 3 : 2;
          s.lengths = lengthsFor(rng, B, s.kvHeads, 40, full ? 3000 : 200);
          s.rows.clear();
          for (int b = 0; b < B; ++b) s.rows.push_back(full ? rng.range(1, 40) : rng.range(1, 9));
          s.mass = (i % 2) == 0;
          s.oracle = (i % 3) == 2;
          s.minChunk = 64;
          s.fused = (i % 3) != 1;
          guarded(rep, "attend " + attnLabel(s), [&] { attendCase(be, rep, rng, s); });
          ++i;
        }
    for (int G : {3, 16}) {
      AttnSpec s;
      s.dt = DType::F16;
      s.D = 64;
      s.G = G;
      s.kvHeads = G == 16 ? 1 : 2;
      s.P = 16;
      s.lengths = lengthsFor(rng, 2, s.kvHeads, 40, full ? 2000 : 150);
      s.rows = {full ? 17 : 5, full ? 9 : 3};
      s.mass = true;
      s.oracle = true;
      s.minChunk = 64;
      s.fused = (i % 2) == 1;
      guarded(rep, "attend " + attnLabel(s), [&] { attendCase(be, rep, rng, s); });
    }
  });

  timed("scores", [&] {
    int i = 0;
    for (DType dt : dts)
      for (int D : {64, 128})
        for (int G : {1, 4}) {
          ScoreSpec base;
          base.dt = dt;
          base.D = D;
          base.G = G;
          base.kvHeads = 2;
          base.P = pageSizes[i % 3];
          base.lengths = lengthsFor(rng, 2, 2, 40, full ? 4096 : 160);
          base.window = full ? 32 : 8;
          struct Variant {
            Scorer s;
            Pooling p;
            int k;
            bool gmax;
          };
          const Variant vars[] = {{Scorer::SnapKV, Pooling::Max, 7, false}, {Scorer::SnapKV, Pooling::Avg, 5, true},
                                  {Scorer::SnapKV, Pooling::None, 1, false}, {Scorer::TOVA, Pooling::None, 1, true},
                                  {Scorer::KNorm, Pooling::None, 1, false},  {Scorer::KeyDiff, Pooling::None, 1, false},
                                  {Scorer::H2O, Pooling::None, 1, false},    {Scorer::Streaming, Pooling::None, 1, false},
                                  {Scorer::Random, Pooling::None, 1, false}};
          for (const Variant& v : vars) {
            ScoreSpec s = base;
            s.scorer = v.s;
            s.pooling = v.p;
            s.kernel = v.k;
            s.groupMax = v.gmax;
            s.lengths = lengthsFor(rng, 2, 2, 40, full ? 4096 : 160);
            guarded(rep, std::string("scores ") + scorerName(s.scorer) + " " + dtName(s.dt),
                    [&] { scoreCase(be, rep, rng, s); });
          }
          ++i;
        }
    // No observation rows (all scores 0), scale 0 (uniform attention), and a scale whose product
    // with log2(e) overflows float32, on queries small enough for finite scores.
    struct Edge {
      Scorer s;
      int window;
      float scale, queryMagnitude;
    };
    const Edge edges[] = {{Scorer::SnapKV, 0, NAN, 1}, {Scorer::SnapKV, 8, 0.f, 1}, {Scorer::TOVA, 1, 0.f, 1},
                          {Scorer::SnapKV, 8, 3.4e38f, 1e-38f}};
    for (DType dt : {DType::F32, DType::BF16})
      for (const Edge& e : edges) {
        ScoreSpec s;
        s.dt = dt;
        s.D = 64;
        s.G = 4;
        s.kvHeads = 2;
        s.P = 16;
        s.lengths = lengthsFor(rng, 2, 2, 40, full ? 2000 : 160);
        s.window = e.window;
        s.scorer = e.s;
        s.pooling = Pooling::Max;
        s.kernel = 5;
        s.scale = e.scale;
        s.queryMagnitude = e.queryMagnitude;
        guarded(rep, std::string("scores ") + scorerName(s.scorer) + " edge " + dtName(s.dt),
                [&] { scoreCase(be, rep, rng, s); });
      }
  });

  std::printf("\n%d checks: %d passed, %d failed\n", rep.passed + rep.failed, rep.passed, rep.failed);
  for (const auto& f : rep.failures) std::printf("  FAILED %s\n", f.c_str());
  return rep.failed;
}

}  // namespace test
}  // namespace lukv
