// lukv_cpu_tests: the CPU backend (every kernel table this processor runs) against a plain
// double-precision attention, without Node.js. The addon's jest suite covers the same ground on
// the machines that run it; this program is for building and checking the core on a processor or
// toolchain where Node is not at hand (for example an arm64 cross build run under an emulator).
//   lukv_cpu_tests [--seed N]          (or LUKV_TEST_SEED=N)
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../core/cache.h"
#include "../core/crc32c.h"
#include "../core/threadpool.h"
#include "../cpu/kernels.h"

namespace {

struct Case {
  lukv::DType dtype;
  int queryHeads, headDim, pageSize, length, rows;
  bool rising = false;  // keys grow along the sequence: the softmax reference moves again and again
};

// out[r][h][d] for query rows at the last `rows` positions, over the stored (dtype-rounded) rows.
std::vector<double> reference(lukv::Cache& c, int32_t seq, const Case& k, const std::vector<float>& q, float scale) {
  const int H = c.config().kvHeads, G = k.queryHeads / H, D = k.headDim;
  std::vector<double> out((size_t)k.rows * k.queryHeads * D, 0.0);
  for (int h = 0; h < H; ++h) {
    const std::vector<float> K = c.readRows(seq, 0, h, false), V = c.readRows(seq, 0, h, true);
    for (int r = 0; r < k.rows; ++r) {
      const int visible = k.length - k.rows + r + 1;  // causal: tokens up to the row's own position
      for (int g = 0; g < G; ++g) {
        const float* qv = q.data() + ((size_t)r * k.queryHeads + (size_t)h * G + g) * D;
        std::vector<double> s(visible);
        double top = -INFINITY;
        for (int t = 0; t < visible; ++t) {
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += (double)qv[d] * K[(size_t)t * D + d];
          s[t] = dot * scale;
          top = std::max(top, s[t]);
        }
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - top));
        double* o = out.data() + ((size_t)r * k.queryHeads + (size_t)h * G + g) * D;
        for (int t = 0; t < visible; ++t)
          for (int d = 0; d < D; ++d) o[d] += s[t] / sum * V[(size_t)t * D + d];
      }
    }
  }
  return out;
}

// The thread pool: every item runs exactly once whatever the job size and thread count, and an
// item that throws (on the calling thread or a worker) reaches the caller only after every other
// item ran; the pool then takes the next job. Returns the number of failures.
int threadPoolChecks() {
  int failures = 0;
  auto fail = [&](const std::string& what) {
    ++failures;
    std::printf("FAIL thread pool: %s\n", what.c_str());
  };
  for (int threads : {1, 2, 3, 5}) {
    lukv::ThreadPool pool(threads);
    for (int64_t n : {1, 2, 3, 4, 7, 64, 1000}) {
      for (int64_t thrower : {(int64_t)-1, (int64_t)0, n - 1, n / 2}) {
        std::vector<std::atomic<int>> runs((size_t)n);
        bool caught = false;
        try {
          pool.parallelFor(n, [&](int64_t i) {
            runs[(size_t)i].fetch_add(1);
            if (i == thrower) throw std::runtime_error("item " + std::to_string(i));
          });
        } catch (const std::runtime_error& e) {
          caught = std::string(e.what()) == "item " + std::to_string(thrower);
        }
        for (int64_t i = 0; i < n; ++i)
          if (runs[(size_t)i].load() != 1) fail("threads " + std::to_string(threads) + ", n " + std::to_string(n) + ": item " + std::to_string(i) + " ran " + std::to_string(runs[(size_t)i].load()) + " times");
        if (caught != (thrower >= 0)) fail("threads " + std::to_string(threads) + ", n " + std::to_string(n) + ": the exception of item " + std::to_string(thrower) + (caught ? " appeared" : " did not reach the caller"));
      }
    }
  }
  std::printf("%-4s thread pool: items run once, exceptions after the job\n", failures ? "FAIL" : "ok");
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = (uint64_t)std::chrono::steady_clock::now().time_since_epoch().count() % 1000000007ull;
  if (const char* s = std::getenv("LUKV_TEST_SEED")) seed = std::strtoull(s, nullptr, 10);
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--seed") == 0 && i + 1 < argc) seed = std::strtoull(argv[++i], nullptr, 10);
  std::printf("lukv_cpu_tests: seed %llu (LUKV_TEST_SEED=%llu reruns it)\n", (unsigned long long)seed,
              (unsigned long long)seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);

  const Case cases[] = {
      {lukv::DType::F32, 2, 64, 16, 300, 1},   {lukv::DType::F16, 8, 128, 16, 1000, 1},
      {lukv::DType::BF16, 16, 128, 64, 777, 1}, {lukv::DType::F16, 8, 64, 1, 129, 5},
      {lukv::DType::F32, 8, 80, 7, 200, 9},     {lukv::DType::F16, 8, 128, 16, 3000, 1},
      {lukv::DType::F32, 8, 64, 16, 1001, 1, true}, {lukv::DType::F32, 8, 64, 16, 1001, 9, true},
  };
  const char* levels[] = {"avx512", "avx2", "neon", "generic"};
  int failed = 0, run = 0;
  for (const char* level : levels) {
    if (!lukv::cpu::cpuSupports(level)) continue;
    for (const Case& k : cases) {
      lukv::CacheConfig cfg;
      cfg.layers = 1;
      cfg.kvHeads = 2;
      cfg.queryHeads = k.queryHeads;
      cfg.headDim = k.headDim;
      cfg.pageSize = k.pageSize;
      cfg.maxTokens = (int64_t)cfg.kvHeads * (k.length + k.pageSize);
      cfg.dtype = k.dtype;
      cfg.threads = 2;
      cfg.simd = level;
      lukv::Cache cache(cfg);
      const int32_t seq = cache.createSequence();
      std::vector<float> keys((size_t)k.length * cfg.kvHeads * k.headDim), values(keys.size());
      for (float& x : keys) x = 2.f * normal(rng);  // peaky softmax: exercises the running maximum
      if (k.rising)
        for (size_t i = 0; i < keys.size(); ++i) keys[i] *= 0.2f + 4.f * (float)(i / ((size_t)cfg.kvHeads * k.headDim)) / k.length;
      for (float& x : values) x = normal(rng);
      cache.append(seq, 0, k.length, keys.data(), values.data(), lukv::InputKind::F32);
      std::vector<float> q((size_t)k.rows * k.queryHeads * k.headDim);
      for (float& x : q) x = normal(rng);
      const float scale = 1.f / std::sqrt((float)k.headDim);
      std::vector<float> out(q.size());
      cache.attend(seq, 0, k.rows, q.data(), out.data(), scale);
      const std::vector<double> ref = reference(cache, seq, k, q, scale);
      double num = 0, den = 0;
      for (size_t i = 0; i < out.size(); ++i) {
        num += (out[i] - ref[i]) * (out[i] - ref[i]);
        den += ref[i] * ref[i];
      }
      const double rel = std::sqrt(num / den);
      const bool ok = std::isfinite(rel) && rel < 1e-5;  // same rounded inputs: only f32 accumulation differs
      ++run;
      failed += ok ? 0 : 1;
      std::printf("%-4s %-7s dtype %d, G %d, headDim %d, pageSize %d, %d tokens%s, %d rows: rel. error %.2e\n",
                  ok ? "ok" : "FAIL", level, (int)k.dtype, k.queryHeads / cfg.kvHeads, k.headDim, k.pageSize, k.length,
                  k.rising ? " (rising keys)" : "", k.rows, rel);
    }
  }
  // Token scores (what compress ranks by: scores, softmax, row norms) of every kernel table against
  // the portable one, on the same cache contents and observation queries.
  {
    const lukv::Scorer scorers[] = {lukv::Scorer::SnapKV, lukv::Scorer::KeyDiff, lukv::Scorer::KNorm, lukv::Scorer::TOVA};
    const int H = 2, Q = 8, D = 128, n = 700, rows = 32;
    std::vector<float> keys((size_t)n * H * D), values(keys.size()), q((size_t)rows * Q * D);
    for (float& x : keys) x = 2.f * normal(rng);
    for (float& x : values) x = normal(rng);
    for (float& x : q) x = normal(rng);
    auto scoresWith = [&](const char* level, lukv::Scorer scorer) {
      lukv::CacheConfig cfg;
      cfg.layers = 1;
      cfg.kvHeads = H;
      cfg.queryHeads = Q;
      cfg.headDim = D;
      cfg.maxTokens = 2 * n;
      cfg.dtype = lukv::DType::F16;
      cfg.simd = level;
      lukv::Cache cache(cfg);
      const int32_t seq = cache.createSequence();
      cache.append(seq, 0, n, keys.data(), values.data(), lukv::InputKind::F32);
      std::vector<float> out(q.size());
      cache.attend(seq, 0, rows, q.data(), out.data(), 1.f / std::sqrt((float)D));  // remembered as observation
      lukv::ScoreOptions o;
      o.scorer = scorer;
      o.scale = 1.f / std::sqrt((float)D);
      return cache.scores(seq, 0, o);
    };
    for (const char* level : levels) {
      if (!lukv::cpu::cpuSupports(level) || std::strcmp(level, "generic") == 0) continue;
      for (lukv::Scorer scorer : scorers) {
        const auto ref = scoresWith("generic", scorer), got = scoresWith(level, scorer);
        double num = 0, den = 0;
        for (size_t h = 0; h < ref.size(); ++h)
          for (size_t t = 0; t < ref[h].size() && t < got[h].size(); ++t) {
            num += ((double)got[h][t] - ref[h][t]) * ((double)got[h][t] - ref[h][t]);
            den += (double)ref[h][t] * ref[h][t];
          }
        const bool sizes = ref.size() == got.size() && ref[0].size() == got[0].size() && !ref[0].empty();
        const double rel = std::sqrt(num / den);
        const bool ok = sizes && std::isfinite(rel) && rel < 1e-5;
        ++run;
        failed += ok ? 0 : 1;
        std::printf("%-4s %-7s scores, scorer %d, against the portable table: rel. difference %.2e\n", ok ? "ok" : "FAIL",
                    level, (int)scorer, rel);
      }
    }
  }

  // A cache of one layer and one head of 8 floats, f32.
  auto smallConfig = [](int maxTokens) {
    lukv::CacheConfig cfg;
    cfg.layers = 1;
    cfg.kvHeads = 1;
    cfg.queryHeads = 1;
    cfg.headDim = 8;
    cfg.maxTokens = maxTokens;
    cfg.dtype = lukv::DType::F32;
    return cfg;
  };
  // Raw 16-bit input has no meaning for an f32 cache: refused, and nothing appended.
  {
    lukv::Cache cache(smallConfig(64));
    const int32_t seq = cache.createSequence();
    std::vector<uint16_t> raw(8, 0x3c00);
    bool refused = false;
    try {
      cache.append(seq, 0, 1, raw.data(), raw.data(), lukv::InputKind::Raw16);
    } catch (const lukv::Error& e) {
      refused = e.code() == lukv::ErrorCode::InvalidArgument;
    }
    const bool ok = refused && cache.lengths(seq)[0] == 0 && cache.usage().pagesUsed == 0;
    ++run;
    failed += ok ? 0 : 1;
    std::printf("%-4s raw 16-bit input into an f32 cache is refused and appends nothing\n", ok ? "ok" : "FAIL");
  }
  {
    // A batch naming a sequence twice is refused, naming the first item that repeats an earlier
    // one and that earlier item; nothing is written.
    lukv::Cache cache(smallConfig(256));
    std::vector<int32_t> seqs;
    std::vector<float> row(8, 0.5f);
    for (int i = 0; i < 3; ++i) {
      seqs.push_back(cache.createSequence());
      cache.append(seqs.back(), 0, 1, row.data(), row.data(), lukv::InputKind::F32);
    }
    auto message = [&](const std::vector<int32_t>& order, std::vector<float>& out) {
      std::vector<lukv::Cache::AttendItem> items;
      for (int32_t id : order) items.push_back({id, 1, row.data(), out.data()});
      try {
        cache.attendBatch(0, items, 0.25f);
      } catch (const lukv::Error& e) {
        return e.code() == lukv::ErrorCode::InvalidArgument ? std::string(e.what()) : std::string("wrong code");
      }
      return std::string("no error");
    };
    std::vector<float> out(8, -7.f);
    const std::string a = message({seqs[0], seqs[1], seqs[1], seqs[0], seqs[0]}, out);
    const std::string b = message({seqs[2], seqs[0], seqs[1], seqs[2]}, out);
    const bool untouched = out[0] == -7.f;
    const bool ok = a.find("items[1] and items[2] are the same sequence") != std::string::npos &&
                    b.find("items[0] and items[3] are the same sequence") != std::string::npos && untouched &&
                    message({seqs[2], seqs[0], seqs[1]}, out) == "no error";
    ++run;
    failed += ok ? 0 : 1;
    std::printf("%-4s a batch naming a sequence twice is refused, naming both items (%s | %s)\n", ok ? "ok" : "FAIL",
                a.c_str(), b.c_str());
  }
  {
    // The saved-sequence checksum: the dispatched and the table-driven CRC-32C against the
    // definition (one bit at a time), at every length up to 300 and at unaligned starts.
    auto bitwise = [](const uint8_t* p, size_t n) {
      uint32_t c = 0xFFFFFFFFu;
      for (size_t i = 0; i < n; ++i) {
        c ^= p[i];
        for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      }
      return ~c;
    };
    std::vector<uint8_t> bytes(320);
    for (auto& b : bytes) b = (uint8_t)(rng() & 0xff);
    bool ok = lukv::crc32c(reinterpret_cast<const uint8_t*>("123456789"), 9) == 0xE3069283u;
    for (size_t off = 0; off < 8; ++off)
      for (size_t n = 0; n + off <= 308; ++n) {
        const uint32_t want = bitwise(bytes.data() + off, n);
        ok = ok && lukv::crc32c(bytes.data() + off, n) == want && lukv::crc32cPortable(bytes.data() + off, n) == want;
      }
    ++run;
    failed += ok ? 0 : 1;
    std::printf("%-4s CRC-32C (dispatched and table-driven) matches the bitwise definition\n", ok ? "ok" : "FAIL");
  }
  ++run;
  failed += threadPoolChecks() ? 1 : 0;
  std::printf("%d of %d passed\n", run - failed, run);
  return failed == 0 && run > 0 ? 0 : 1;
}
