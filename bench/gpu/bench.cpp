// lukv_gpu_bench: decode attention on the CUDA backend against a device-to-device copy measured
// in the same run, the same after compression to 20%, and the fused eviction pass per layer.
//   lukv_gpu_bench [--tokens 32768] [--repeats 30] [--page 16] [--json FILE]
// 8 KV heads x 32 query heads x headDim 128, f16, batch 1 and 16 sequences. Times are medians of
// cudaEvent-timed repeats after warm-up; batch 1 rotates over three copies of the cache so the
// 50 MB L2 cannot hold the data between repeats.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "../../native/core/cache.h"
#include "../../native/cuda/attention.h"
#include "../../native/cuda/check.h"
#include "../../native/cuda/compress.h"
#include "../../native/cuda/pool.h"
#include "../../native/cuda/scores.h"

using namespace lukv;

namespace {

constexpr int kKvHeads = 8, kQueryHeads = 32, kHeadDim = 128, kWindow = 32, kSink = 4;

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float normal() {
    float a = 0;
    for (int i = 0; i < 4; ++i) a += (float)(next() >> 40) * (1.0f / 16777216.0f);
    return (a - 2.0f) * 1.7320508f;
  }
};

class Timer {
 public:
  explicit Timer(cudaStream_t s) : s_(s) {
    LUKV_CUDA_CHECK(cudaEventCreate(&a_));
    LUKV_CUDA_CHECK(cudaEventCreate(&b_));
  }
  ~Timer() {
    cudaEventDestroy(a_);
    cudaEventDestroy(b_);
  }
  void start() { LUKV_CUDA_CHECK(cudaEventRecord(a_, s_)); }
  double stopMs() {
    LUKV_CUDA_CHECK(cudaEventRecord(b_, s_));
    LUKV_CUDA_CHECK(cudaEventSynchronize(b_));
    float ms = 0;
    LUKV_CUDA_CHECK(cudaEventElapsedTime(&ms, a_, b_));
    return ms;
  }

 private:
  cudaStream_t s_;
  cudaEvent_t a_, b_;
};

// The sink, the window and the best-scoring rest of a head, ascending (compress.cpp's rule).
std::vector<int32_t> selectKeep(const float* score, int32_t L, int32_t keep) {
  std::vector<int32_t> kept;
  if (keep >= L) {
    kept.resize(L);
    std::iota(kept.begin(), kept.end(), 0);
    return kept;
  }
  const int32_t front = std::min<int32_t>(kSink, L), back = std::min<int32_t>(kWindow, L - front);
  std::vector<int32_t> middle(L - front - back);
  std::iota(middle.begin(), middle.end(), front);
  const int32_t fromMiddle = std::max<int32_t>(0, keep - front - back);
  auto better = [score](int32_t a, int32_t b) { return score[a] > score[b] || (score[a] == score[b] && a < b); };
  if (fromMiddle < (int32_t)middle.size()) std::nth_element(middle.begin(), middle.begin() + fromMiddle, middle.end(), better);
  middle.resize(std::min<size_t>(middle.size(), (size_t)fromMiddle));
  for (int32_t i = 0; i < front; ++i) kept.push_back(i);
  kept.insert(kept.end(), middle.begin(), middle.end());
  for (int32_t i = L - back; i < L; ++i) kept.push_back(i);
  std::sort(kept.begin(), kept.end());
  return kept;
}

template <class F>
void parallelFor(size_t n, F&& fn) {
  const size_t threads = std::max<size_t>(1, std::min<size_t>(n, std::thread::hardware_concurrency()));
  std::vector<std::thread> ts;
  for (size_t t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      for (size_t i = t; i < n; i += threads) fn(i);
    });
  for (auto& t : ts) t.join();
}

struct Sequences {
  std::vector<std::vector<HeadState>> heads;  // [sequence][kv head]
};

struct EvictTimes {
  double scoresMs, selectMs, compactMs, totalMs;
};

// One eviction pass over a layer: snapkv scores on the device, scores to the host, per-head
// top-b there, compaction into fresh pages. The heads are updated in place.
EvictTimes evict(cuda::DevicePool& pool, cuda::Workspace& ws, cudaStream_t stream, Sequences& seqs, const float* obs,
                 float* scores, double keepFraction) {
  const auto t0 = std::chrono::steady_clock::now();
  Timer timer(stream);
  const int B = (int)seqs.heads.size();
  std::vector<int32_t> qpos(kWindow);
  cuda::ScoreBatch sb;
  sb.pool = pool.view();
  sb.kvHeads = kKvHeads;
  sb.queryHeads = kQueryHeads;
  const int32_t appended = seqs.heads[0][0].positions.back() + 1;
  for (int r = 0; r < kWindow; ++r) qpos[r] = appended - kWindow + r;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < kKvHeads; ++h) {
      cuda::ScoreHeadRef r;
      r.head = &seqs.heads[b][h];
      r.kvHead = h;
      r.row0 = b * kWindow;
      r.rows = kWindow;
      r.queryPositions = qpos.data();
      sb.heads.push_back(r);
    }
  sb.queries = obs;
  sb.queryRows = B * kWindow;
  sb.scorer = Scorer::SnapKV;
  sb.pooling = Pooling::Max;
  sb.kernel = 7;
  sb.scale = 1.0f / std::sqrt((float)kHeadDim);
  sb.out = scores;
  sb.stream = stream;
  timer.start();
  cuda::scoreHeads(sb, ws);
  EvictTimes t;
  t.scoresMs = timer.stopMs();

  const auto s0 = std::chrono::steady_clock::now();
  const std::vector<int64_t> offs = cuda::scoreOffsets(sb);
  std::vector<float> host(offs.back() + seqs.heads[B - 1][kKvHeads - 1].length());
  LUKV_CUDA_CHECK(cudaMemcpyAsync(host.data(), scores, host.size() * 4, cudaMemcpyDeviceToHost, stream));
  LUKV_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<std::vector<int32_t>> kept((size_t)B * kKvHeads);
  std::vector<HeadState*> ptrs;
  for (auto& s : seqs.heads)
    for (auto& h : s) ptrs.push_back(&h);
  parallelFor(kept.size(), [&](size_t i) {
    const int32_t L = ptrs[i]->length();
    kept[i] = selectKeep(host.data() + offs[i], L, (int32_t)std::llround(keepFraction * L));
  });
  t.selectMs = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s0).count();

  timer.start();
  cuda::compactSequenceHeads(pool, ptrs, kept, {}, {}, ws, stream);
  t.compactMs = timer.stopMs();
  t.totalMs = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  int tokens = 32768, repeats = 30, pageSize = 16;
  std::string json;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--tokens" && i + 1 < argc) tokens = std::atoi(argv[++i]);
    else if (a == "--repeats" && i + 1 < argc) repeats = std::atoi(argv[++i]);
    else if (a == "--page" && i + 1 < argc) pageSize = std::atoi(argv[++i]);
    else if (a == "--json" && i + 1 < argc) json = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--tokens N] [--repeats N] [--page N] [--json FILE]\n", argv[0]);
      return 2;
    }
  }
  try {
    int dev = 0;
    LUKV_CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop;
    LUKV_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    cudaStream_t stream;
    LUKV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    Timer timer(stream);

    // The copy ceiling: bytes read plus bytes written per second.
    const size_t copyBytes = (size_t)1 << 30;
    void *src = nullptr, *dst = nullptr;
    LUKV_CUDA_CHECK(cudaMalloc(&src, copyBytes));
    LUKV_CUDA_CHECK(cudaMalloc(&dst, copyBytes));
    LUKV_CUDA_CHECK(cudaMemsetAsync(src, 0x5A, copyBytes, stream));
    std::vector<double> copyMs;
    for (int i = 0; i < repeats + 3; ++i) {
      timer.start();
      LUKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, copyBytes, cudaMemcpyDeviceToDevice, stream));
      const double ms = timer.stopMs();
      if (i >= 3) copyMs.push_back(ms);
    }
    LUKV_CUDA_CHECK(cudaFree(src));
    LUKV_CUDA_CHECK(cudaFree(dst));
    const double copyRate = 2.0 * copyBytes / (median(copyMs) / 1e3);

    struct Row {
      std::string name;
      int batch;
      double tokensPerHead, bytes, ms, twoLaunchMs, plannedMs, rate;
      int units;
      double scoresMs, selectMs, compactMs, evictMs;
    };
    std::vector<Row> rows;
    Rng rng{12345};

    for (int B : {1, 16}) {
      const int sets = B == 1 ? 3 : 1;
      const int64_t pagesPerHead = (tokens + pageSize - 1) / pageSize;
      const int64_t keptPages = ((int64_t)std::llround(0.2 * tokens) + pageSize - 1) / pageSize;
      const int64_t numPages = (int64_t)sets * B * kKvHeads * (pagesPerHead + 2 * keptPages + 2);
      cuda::DevicePool pool(numPages, pageSize, kHeadDim, DType::F16);
      // Random f16 rows: 64 MiB drawn once, tiled over the pool (no zeros: see the method notes).
      {
        const size_t chunk = std::min<size_t>(pool.bytes(), (size_t)64 << 20);
        std::vector<uint16_t> host(chunk / 2);
        for (auto& x : host) x = f32ToF16(rng.normal());
        LUKV_CUDA_CHECK(cudaMemcpy(pool.data(), host.data(), chunk, cudaMemcpyHostToDevice));
        for (size_t at = chunk; at < pool.bytes(); at += chunk)
          LUKV_CUDA_CHECK(cudaMemcpyAsync(pool.data() + at, pool.data(), std::min(chunk, pool.bytes() - at),
                                          cudaMemcpyDeviceToDevice, stream));
      }
      std::vector<Sequences> full(sets);
      for (int s = 0; s < sets; ++s) {
        full[s].heads.assign(B, std::vector<HeadState>(kKvHeads));
        for (auto& seq : full[s].heads)
          for (auto& h : seq) {
            if (!pool.allocate(pagesPerHead, h.pages)) throw Error(ErrorCode::OutOfPages, "benchmark pool too small");
            // Pages of a real cache are scattered: shuffle the head's page order.
            for (size_t i = h.pages.size() - 1; i > 0; --i) std::swap(h.pages[i], h.pages[rng.next() % (i + 1)]);
            h.positions.resize(tokens);
            std::iota(h.positions.begin(), h.positions.end(), 0);
          }
      }
      float *q = nullptr, *out = nullptr, *obs = nullptr, *scores = nullptr;
      std::vector<float> hq((size_t)B * kWindow * kQueryHeads * kHeadDim);
      for (auto& x : hq) x = rng.normal();
      LUKV_CUDA_CHECK(cudaMalloc(&q, (size_t)B * kQueryHeads * kHeadDim * 4));
      LUKV_CUDA_CHECK(cudaMalloc(&out, (size_t)B * kQueryHeads * kHeadDim * 4));
      LUKV_CUDA_CHECK(cudaMalloc(&obs, hq.size() * 4));
      LUKV_CUDA_CHECK(cudaMalloc(&scores, (size_t)B * kKvHeads * tokens * 4));
      LUKV_CUDA_CHECK(cudaMemcpy(obs, hq.data(), hq.size() * 4, cudaMemcpyHostToDevice));
      // Decode queries: the last observation row of every sequence.
      for (int b = 0; b < B; ++b)
        LUKV_CUDA_CHECK(cudaMemcpy(q + (size_t)b * kQueryHeads * kHeadDim,
                                   hq.data() + ((size_t)b * kWindow + kWindow - 1) * kQueryHeads * kHeadDim,
                                   (size_t)kQueryHeads * kHeadDim * 4, cudaMemcpyHostToDevice));
      const int32_t qpos = tokens - 1;

      auto decode = [&](std::vector<Sequences>& st, const std::string& name, double tokensPerHead) {
        std::vector<cuda::Workspace> ws(st.size()), ws2l(st.size());
        std::vector<cuda::PreparedAttend> prep, prep2;
        std::vector<cuda::AttendBatch> batches(st.size());
        cuda::AttendOptions twoLaunches;
        twoLaunches.fusedReduce = false;
        for (size_t s = 0; s < st.size(); ++s) {
          cuda::AttendBatch& ab = batches[s];
          ab.pool = pool.view();
          ab.kvHeads = kKvHeads;
          ab.queryHeads = kQueryHeads;
          for (int b = 0; b < B; ++b) ab.sequences.push_back({st[s].heads[b].data(), 1, &qpos});
          ab.queries = q;
          ab.out = out;
          ab.scale = 1.0f / std::sqrt((float)kHeadDim);
          ab.stream = stream;
          prep.push_back(cuda::prepareAttend(ab, ws[s]));
          prep2.push_back(cuda::prepareAttend(ab, ws2l[s], twoLaunches));
        }
        // The two variants alternate, so drifting clocks affect both alike.
        std::vector<double> ms, ms2;
        for (int i = 0; i < repeats + 5; ++i) {
          timer.start();
          cuda::launchAttend(prep[i % prep.size()], stream);
          const double t = timer.stopMs();
          timer.start();
          cuda::launchAttend(prep2[i % prep2.size()], stream);
          const double t2 = timer.stopMs();
          if (i >= 5) ms.push_back(t), ms2.push_back(t2);
        }
        // The same with planning and metadata upload on every call (host clock).
        cuda::Workspace ws2;
        std::vector<double> planned;
        for (int i = 0; i < std::max(5, repeats / 3) + 2; ++i) {
          const auto t0 = std::chrono::steady_clock::now();
          cuda::attend(batches[i % batches.size()], ws2);
          LUKV_CUDA_CHECK(cudaStreamSynchronize(stream));
          if (i >= 2) planned.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        }
        Row r{};
        r.name = name;
        r.batch = B;
        r.tokensPerHead = tokensPerHead;
        double bytes = 0;
        for (auto& seq : st[0].heads)
          for (auto& h : seq) bytes += 2.0 * h.length() * kHeadDim * 2;
        r.bytes = bytes;
        r.ms = median(ms);
        r.twoLaunchMs = median(ms2);
        r.units = prep[0].params.numUnits;
        r.plannedMs = median(planned);
        r.rate = bytes / (r.ms / 1e3);
        rows.push_back(r);
      };

      decode(full, "decode", tokens);

      // Eviction to 20%, timed on copies (the original pages are retained, the copies' fresh
      // pages released after each trial), then once for real.
      std::vector<EvictTimes> trials;
      cuda::Workspace ews;
      for (int i = 0; i < 4; ++i) {
        Sequences copy = full[0];
        for (auto& seq : copy.heads)
          for (auto& h : seq)
            for (int32_t p : h.pages) pool.retain(p);
        trials.push_back(evict(pool, ews, stream, copy, obs, scores, 0.2));
        LUKV_CUDA_CHECK(cudaStreamSynchronize(stream));
        for (auto& seq : copy.heads)
          for (auto& h : seq)
            for (int32_t p : h.pages) pool.release(p);
      }
      std::vector<Sequences> small = full;
      for (auto& s : small) evict(pool, ews, stream, s, obs, scores, 0.2);
      LUKV_CUDA_CHECK(cudaStreamSynchronize(stream));
      auto med = [&](double EvictTimes::*f) {
        std::vector<double> v;
        for (size_t i = 1; i < trials.size(); ++i) v.push_back(trials[i].*f);  // the first warms up
        return median(v);
      };
      decode(small, "decode @20%", 0.2 * tokens);
      Row e{};
      e.name = "evict snapkv";
      e.batch = B;
      e.tokensPerHead = tokens;
      e.scoresMs = med(&EvictTimes::scoresMs);
      e.selectMs = med(&EvictTimes::selectMs);
      e.compactMs = med(&EvictTimes::compactMs);
      e.evictMs = med(&EvictTimes::totalMs);
      rows.push_back(e);
      cudaFree(q);
      cudaFree(out);
      cudaFree(obs);
      cudaFree(scores);
    }

    // The table, last.
    std::printf("\nlukv CUDA benchmark: %s (%d SMs), f16, %d query / %d KV heads, headDim %d, pageSize %d, median of %d\n",
                prop.name, prop.multiProcessorCount, kQueryHeads, kKvHeads, kHeadDim, pageSize, repeats);
    std::printf("device-to-device copy: %.0f GB/s (read + write)\n\n", copyRate / 1e9);
    std::printf("%-14s %5s %8s %9s %6s %9s %8s %8s %10s %11s\n", "case", "batch", "tok/head", "K+V MiB", "blocks", "ms",
                "GB/s", "vs copy", "2-launch", "planned ms");
    double fullMs[17] = {0};
    for (const Row& r : rows) {
      if (r.name == "evict snapkv") continue;
      if (r.name == "decode") fullMs[r.batch] = r.ms;
      std::printf("%-14s %5d %8.0f %9.1f %6d %9.4f %8.0f %8.2f %10.4f %11.4f", r.name.c_str(), r.batch, r.tokensPerHead,
                  r.bytes / 1048576.0, r.units, r.ms, r.rate / 1e9, r.rate / copyRate, r.twoLaunchMs, r.plannedMs);
      if (r.name != "decode") std::printf("   time %.2fx full (target <= 0.30)", r.ms / fullMs[r.batch]);
      else std::printf("   (target vs copy >= 0.80)");
      std::printf("\n");
    }
    std::printf("\neviction pass per layer (snapkv window %d, max-pool 7, keep 20%%):\n", kWindow);
    std::printf("%-14s %5s %10s %12s %11s %10s\n", "case", "batch", "scores ms", "select ms*", "compact ms", "total ms");
    for (const Row& r : rows)
      if (r.name == "evict snapkv")
        std::printf("%-14s %5d %10.3f %12.3f %11.3f %10.3f\n", r.name.c_str(), r.batch, r.scoresMs, r.selectMs,
                    r.compactMs, r.evictMs);
    std::printf("* scores copied to the host and per-head top-b there; total is wall clock\n");
    std::printf("ms: fused split-K merge (one launch); 2-launch: separate reduce kernel; planned ms: attend() with\n"
                "planning and metadata upload, wall clock\n");

    if (!json.empty()) {
      FILE* f = std::fopen(json.c_str(), "w");
      if (!f) throw Error(ErrorCode::InvalidArgument, "cannot write " + json);
      std::fprintf(f, "{\n  \"benchmark\": \"cuda decode attention and eviction\",\n  \"device\": \"%s\",\n  \"sms\": %d,\n",
                   prop.name, prop.multiProcessorCount);
      std::fprintf(f, "  \"kvHeads\": %d, \"queryHeads\": %d, \"headDim\": %d, \"dtype\": \"f16\", \"pageSize\": %d,\n",
                   kKvHeads, kQueryHeads, kHeadDim, pageSize);
      std::fprintf(f, "  \"tokens\": %d, \"repeats\": %d, \"copyBytesPerSecond\": %.6g,\n  \"results\": [\n", tokens, repeats,
                   copyRate);
      for (size_t i = 0; i < rows.size(); ++i) {
        const Row& r = rows[i];
        std::fprintf(f,
                     "    {\"case\": \"%s\", \"batch\": %d, \"tokensPerHead\": %.0f, \"bytes\": %.0f, \"blocks\": %d, "
                     "\"ms\": %.6g, \"twoLaunchMs\": %.6g, \"plannedMs\": %.6g, \"bytesPerSecond\": %.6g, "
                     "\"scoresMs\": %.6g, \"selectMs\": %.6g, \"compactMs\": %.6g, \"evictMs\": %.6g}%s\n",
                     r.name.c_str(), r.batch, r.tokensPerHead, r.bytes, r.units, r.ms, r.twoLaunchMs, r.plannedMs, r.rate,
                     r.scoresMs, r.selectMs, r.compactMs, r.evictMs, i + 1 < rows.size() ? "," : "");
      }
      std::fprintf(f, "  ]\n}\n");
      std::fclose(f);
      std::printf("written %s\n", json.c_str());
    }
    cudaStreamDestroy(stream);
  } catch (const std::exception& e) {
    std::printf("benchmark failed: %s\n", e.what());
    return 1;
  }
  return 0;
}
