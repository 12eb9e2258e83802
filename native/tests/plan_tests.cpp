// Planner tests: pure host code, no device needed.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "../core/errors.h"
#include "../cuda/plan.h"
#include "harness.h"

namespace lukv {
namespace test {

namespace {

struct Counter {
  int passed = 0, failed = 0;
  void check(bool ok, const std::string& what) {
    if (ok) passed++;
    else {
      failed++;
      std::printf("  FAIL plan: %s\n", what.c_str());
    }
  }
};

uint64_t mix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

bool throwsInvalid(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.code() == ErrorCode::InvalidArgument;
  }
  return false;
}

}  // namespace

int runPlanTests(uint64_t seed) {
  Counter c;
  uint64_t s = seed ^ 0x5151;
  auto below = [&](uint32_t n) { return (uint32_t)((mix(s) >> 32) % n); };

  c.check(cuda::attendVectorsPerBlock(1, 1) == 1 && cuda::attendVectorsPerBlock(4, 1) == 4 &&
              cuda::attendVectorsPerBlock(8, 1) == 8 && cuda::attendVectorsPerBlock(3, 1) == 4 &&
              cuda::attendVectorsPerBlock(3, 9) == 8 && cuda::attendVectorsPerBlock(1, 3) == 4 &&
              cuda::attendVectorsPerBlock(16, 5) == 8 && cuda::attendVectorsPerBlock(5, 4) == 8,
          "vectors per block");
  c.check(throwsInvalid([] { cuda::checkHeadDim(100); }) && throwsInvalid([] { cuda::checkHeadDim(0); }) &&
              throwsInvalid([] { cuda::checkHeadDim(264); }),
          "head dims that are not multiples of 8 in [8, 256] are refused");
  c.check(cuda::pageShiftOf(1) == 0 && cuda::pageShiftOf(16) == 4 && cuda::pageShiftOf(24) == -1, "page shifts");
  // Both factors finite for every finite scale, the second positive, their product scale * log2(e).
  for (const float scale : {1.f, 0.f, -0.125f, 1e-30f, 2.3e38f, 2.4e38f, -3.4028235e38f, 3.4028235e38f}) {
    const cuda::ScaleFactors f = cuda::scaleFactors(scale);
    const double want = (double)scale * 1.4426950408889634, got = (double)f.score * f.exp;
    c.check(std::isfinite(f.score) && std::isfinite(f.exp) && f.exp > 0 &&
                std::abs(got - want) <= 1e-6 * std::abs(want),
            "scale factors of " + std::to_string(scale));
  }

  std::vector<uint8_t> fake(16);
  for (int trial = 0; trial < 200; ++trial) {
    static const int kPages[] = {1, 3, 16, 64}, kGroups[] = {1, 2, 3, 4, 5, 8, 16};
    const int P = kPages[below(4)];
    const int kvHeads = 1 + (int)below(4);
    const int G = kGroups[below(7)];
    const int seqs = 1 + (int)below(5);
    const int64_t numPages = 100000;
    const cuda::PoolView pool = cuda::poolView(fake.data(), numPages, P, 64, DType::F16);
    std::vector<std::vector<int32_t>> pages, positions, qpos;
    std::vector<cuda::AttendHeadInput> in;
    int32_t row = 0;
    int32_t nextPage = 0;
    for (int q = 0; q < seqs; ++q) {
      const int rows = below(3) == 0 ? 1 + (int)below(20) : 1;
      const int32_t appended = (int32_t)below(3000) + rows;
      std::vector<int32_t> qp;
      for (int r = 0; r < rows; ++r) qp.push_back(appended - rows + r);
      for (int h = 0; h < kvHeads; ++h) {
        std::vector<int32_t> pos;
        for (int32_t t = 0; t < appended; ++t)
          if (below(3) != 0 || t >= appended - rows) pos.push_back(t);
        if (below(10) == 0) pos.clear();  // an empty head
        std::vector<int32_t> pg;
        for (int64_t i = 0; i < ((int64_t)pos.size() + P - 1) / P; ++i) pg.push_back(nextPage++);
        positions.push_back(pos);
        pages.push_back(pg);
        qpos.push_back(qp);
      }
      for (int h = 0; h < kvHeads; ++h) {
        const size_t k = (size_t)q * kvHeads + h;
        cuda::AttendHeadInput x;
        x.pages = pages[k].data();
        x.pageCount = (int64_t)pages[k].size();
        x.positions = positions[k].data();
        x.length = (int32_t)positions[k].size();
        x.kvHead = h;
        x.row0 = row;
        x.rows = rows;
        x.queryPositions = qpos[k].data();
        x.mass = below(2) ? reinterpret_cast<float*>(fake.data()) : nullptr;
        in.push_back(x);
      }
      row += rows;
    }
    const int64_t target = 1 + below(600);
    const cuda::AttendPlan plan = cuda::planAttend(in, kvHeads * G, kvHeads, row, pool, target, 64);
    // Splitting went as far as one wave allows: a chunk 64 tokens shorter would not fit.
    if ((int64_t)plan.groups.size() < target && plan.units.size() > plan.groups.size()) {
      int32_t chunk = 0;
      for (const auto& u : plan.units) chunk = std::max(chunk, u.t1 - u.t0);
      int64_t n = 0;
      const int32_t smaller = chunk - 64;
      for (const auto& g : plan.groups) n += g.span == 0 ? 1 : (smaller <= 0 ? g.span : (g.span + smaller - 1) / smaller);
      c.check(smaller < 64 || n > target, "split-K chunk is the smallest that fits one wave (trial " + std::to_string(trial) + ")");
    }
    bool ok = plan.vectorsPerBlock >= 1 && plan.vectorsPerBlock <= 8;
    // Every (row, query head) in exactly one group; units tile each group's span in order.
    std::vector<int> seen((size_t)row * kvHeads * G, 0);
    int64_t scoreEnd = 0;
    for (size_t gi = 0; gi < plan.groups.size() && ok; ++gi) {
      const cuda::AttnGroup& g = plan.groups[gi];
      const cuda::AttendHeadInput& h = in[g.head];
      ok = ok && g.rows * g.heads <= plan.vectorsPerBlock && g.heads >= 1 && g.rows >= 1;
      for (int r = 0; r < g.rows; ++r)
        for (int k = 0; k < g.heads; ++k) seen[((size_t)(g.row0 + r)) * kvHeads * G + g.qhead0 + k]++;
      ok = ok && g.qhead0 == h.kvHead * G + g.g0;
      int32_t span = 0;
      for (int r = 0; r < g.rows; ++r) {
        const int32_t want = (int32_t)(std::upper_bound(h.positions, h.positions + h.length, h.queryPositions[g.row0 - h.row0 + r]) - h.positions);
        ok = ok && plan.visible[g.visibleBegin + r] == want;
        span = std::max(span, want);
      }
      ok = ok && span == g.span && g.unitCount >= 1;
      int32_t at = 0;
      for (int32_t u = g.unitBegin; u < g.unitBegin + g.unitCount; ++u) {
        const cuda::AttnUnit& un = plan.units[u];
        ok = ok && un.group == (int32_t)gi && un.t0 == at && (un.t1 > un.t0 || (g.span == 0 && un.t1 == 0));
        at = un.t1;
      }
      ok = ok && at == g.span;
      if (plan.keepScores) {
        ok = ok && g.scoreBase == scoreEnd;
        scoreEnd += (int64_t)g.rows * g.heads * g.span;
      }
    }
    ok = ok && (!plan.keepScores || scoreEnd == plan.scoreFloats);
    for (int x : seen) ok = ok && x == 1;
    for (size_t i = 0; i < in.size() && ok; ++i)
      for (int32_t p = 0; p < (int32_t)pages[i].size(); ++p) ok = ok && plan.pageIndices[plan.heads[i].pageBegin + p] == pages[i][p];
    // One wave at most when the groups fit in one, and no split when they do not.
    ok = ok && (int64_t)plan.units.size() <= std::max<int64_t>(target, (int64_t)plan.groups.size());
    c.check(ok, "attention plan covers every query vector and token once (trial " + std::to_string(trial) + ")");
    if (!ok) break;
  }

  // Bad input is refused before anything is launched.
  const cuda::PoolView pool = cuda::poolView(fake.data(), 10, 4, 64, DType::F16);
  std::vector<int32_t> pos(9);
  std::iota(pos.begin(), pos.end(), 0);
  std::vector<int32_t> pg = {0, 1, 2};
  int32_t qp = 8;
  cuda::AttendHeadInput h;
  h.pages = pg.data();
  h.pageCount = 3;
  h.positions = pos.data();
  h.length = 9;
  h.rows = 1;
  h.queryPositions = &qp;
  c.check(!throwsInvalid([&] { cuda::planAttend({h}, 4, 1, 1, pool, 10); }), "valid head accepted");
  h.pageCount = 2;
  c.check(throwsInvalid([&] { cuda::planAttend({h}, 4, 1, 1, pool, 10); }), "short page list refused");
  h.pageCount = 3;
  pg[2] = 10;
  c.check(throwsInvalid([&] { cuda::planAttend({h}, 4, 1, 1, pool, 10); }), "page outside the pool refused");
  pg[2] = 2;
  h.kvHead = 1;
  c.check(throwsInvalid([&] { cuda::planAttend({h}, 4, 1, 1, pool, 10); }), "kv head outside the layer refused");
  h.kvHead = 0;
  c.check(throwsInvalid([&] { cuda::planAttend({h}, 4, 1, 0, pool, 10); }), "rows outside the queries refused");
  c.check(throwsInvalid([&] { cuda::planAttend({h}, 6, 4, 1, pool, 10); }), "queryHeads not a multiple of kvHeads refused");
  {
    // A head past the kernels' 32-bit token counters, refused for its length (before its pages).
    cuda::AttendHeadInput longHead = h;
    longHead.length = cuda::kMaxDeviceHeadTokens + 1;
    std::string message;
    try {
      cuda::planAttend({longHead}, 4, 1, 1, pool, 10);
    } catch (const Error& e) {
      message = e.what();
    }
    c.check(message.find("takes at most 2113929216 per (layer, KV head)") != std::string::npos,
            "a head longer than the device's token counters refused: " + message);
  }

  std::vector<int32_t> kept = {0, 3, 5}, oldPages = {0, 1, 2}, newPages = {3};
  cuda::CompactHeadInput ch;
  ch.oldPages = oldPages.data();
  ch.oldPageCount = 3;
  ch.oldLength = 9;
  ch.kept = kept.data();
  ch.keptCount = 3;
  ch.newPages = newPages.data();
  ch.newPageCount = 1;
  c.check(!throwsInvalid([&] { cuda::planCompact({ch}, pool); }), "valid compaction accepted");
  newPages[0] = 1;
  c.check(throwsInvalid([&] { cuda::planCompact({ch}, pool); }), "compaction into a source page refused");
  newPages[0] = 3;
  c.check(throwsInvalid([&] { cuda::planCompact({ch, ch}, pool); }), "one destination page used twice refused");
  kept = {0, 5, 3};
  c.check(throwsInvalid([&] { cuda::planCompact({ch}, pool); }), "kept indices out of order refused");
  kept = {0, 3, 9};
  c.check(throwsInvalid([&] { cuda::planCompact({ch}, pool); }), "kept index past the length refused");

  std::printf("plan       %4d checks, %d failed\n", c.passed + c.failed, c.failed);
  return c.failed;
}

}  // namespace test
}  // namespace lukv
