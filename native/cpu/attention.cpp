#include "attention.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

namespace lukv {
namespace cpu {

namespace {

constexpr int kRowBlock = kSpanRows;  // query rows (tokens) per work item in prefill
// Below this many multiply-adds (2,048 tokens x KV heads of decode with 4 query heads of 128 per
// KV head) a pass runs on the calling thread alone: handing out items to the other threads and
// waiting for them costs about as much as the work (the break-even is in bench/README.md).
constexpr int64_t kParallelWork = int64_t(1) << 20;
constexpr int kMinChunk = 256;  // fewest tokens of a head's token range (split-K)

struct Item {
  int call, head, row0, row1;  // call of the batch, its KV head  // query rows [row0, row1)
  int32_t t0, t1;        // token range of the head
  int64_t partial;       // offset of this item's partial results (rows * G * (headDim + 2) floats)
  int64_t stored;        // offset of this item's raw scores when attention mass is accumulated
  bool final;            // the only range of its rows, with no scores kept: it writes their output
};

// Working memory kept by each thread from one call to the next: fresh buffers on every decode step
// meant fresh pages, and their page faults showed in the profile of short decode calls (a fault
// costs microseconds on the virtual machines measured). Buffers past kKeepBytes are released after
// the call, so a long prefill does not pin its scratch.
constexpr size_t kKeepBytes = size_t(4) << 20;

struct CallScratch {
  std::vector<float> partials;
  std::vector<int32_t> visible;
  std::vector<Item> items;
  std::vector<int64_t> groupStart;
};
thread_local CallScratch tCall;
thread_local std::vector<float> tItem;  // per work item: its rows' softmax state, and a block's scores
thread_local std::vector<float> tQuery;  // per work item: its rows' queries of its KV head, scaled

template <class T>
void sizeTo(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

template <class T>
void releaseLarge(std::vector<T>& v) {
  if (v.capacity() * sizeof(T) > kKeepBytes) std::vector<T>().swap(v);
}

// One row's output from its softmax state (m[G], l[G], acc[G][D]) when a single token range
// covers it: acc / l per query head, zero where nothing was visible (m = -inf).
void writeOutput(const float* state, float* out, int G, int D) {
  for (int g = 0; g < G; ++g) {
    float* o = out + (size_t)g * D;
    if (std::isinf(state[g])) {
      std::fill(o, o + D, 0.f);
      continue;
    }
    const float* acc = state + 2 * G + (size_t)g * D;
    const float inv = 1.f / state[G + g];
    for (int d = 0; d < D; ++d) o[d] = acc[d] * inv;
  }
}

}  // namespace

void attendBatch(const AttendArgs* calls, size_t count) {
  if (count == 0) return;
  const AttendArgs& a0 = calls[0];
  const int G = a0.queryHeads / a0.kvHeads;
  const int D = a0.headDim;
  const int P = a0.pool->pageSize();
  // Tokens scored together before one softmax update: one page, so that K and then V of a page are
  // read as one run of memory (the order in which the pool lays them out); small pages are grouped.
  const int kBlockTokens = P >= 16 ? std::min(P, 512) : (16 + P - 1) / P * P;
  // How far ahead the kernels request rows: the next page, or the first page at least 16 tokens on.
  const int aheadPages = std::max(1, (16 + P - 1) / P);
  const DType dt = a0.pool->dtype();
  const size_t rowBytes = a0.pool->rowBytes();
  const int kvHeads = a0.kvHeads, queryHeads = a0.queryHeads;

  CallScratch& sc = tCall;
  struct Release {
    CallScratch& s;
    ~Release() {
      releaseLarge(s.partials);
      releaseLarge(s.visible);
      releaseLarge(s.items);
      releaseLarge(s.groupStart);
    }
  } release{sc};

  // Where each call's rows live in the shared arrays. Every call is planned exactly as it would be
  // alone (its own split-K chunk), so its output is bit-for-bit that of a call of its own.
  struct Part {
    size_t visible0 = 0;
    int rowBlock = 1, rowBlocks = 0;
    int64_t group0 = 0, row0 = 0;  // first (head, row block) group; first (head, row) of the reduce
    bool keepScores = false;
  };
  std::vector<Part> parts(count);
  size_t visibleTotal = 0;
  int64_t reduceRows = 0;
  for (size_t c = 0; c < count; ++c) {
    parts[c].visible0 = visibleTotal;
    parts[c].row0 = reduceRows;
    visibleTotal += (size_t)kvHeads * calls[c].tokens;
    reduceRows += (int64_t)kvHeads * calls[c].tokens;
  }

  // Visible tokens of each (head, row): positions ascend, so it is a prefix.
  std::vector<int32_t>& visible = sc.visible;
  sizeTo(visible, visibleTotal);
  std::vector<Item>& items = sc.items;
  std::vector<int64_t>& groupStart = sc.groupStart;  // items of group g are [groupStart[g], groupStart[g+1])
  items.clear();
  groupStart.clear();
  const int64_t partialStride = (int64_t)G * (D + 2);
  int64_t partialSize = 0, storedSize = 0, work = 0, reduceWork = 0;
  bool anyScores = false, reduce = false;  // reduce: some rows have partial states to merge
  const int64_t threads = a0.threads->threads(), target = threads * 4;
  for (size_t c = 0; c < count; ++c) {
    const AttendArgs& a = calls[c];
    Part& part = parts[c];
    int32_t* vis = visible.data() + part.visible0;
    int64_t totalTokens = 0, longestHead = 0;
    for (int h = 0; h < kvHeads; ++h) {
      const auto& pos = a.heads[h].positions;
      for (int r = 0; r < a.tokens; ++r)
        vis[(size_t)h * a.tokens + r] =
            (int32_t)(std::upper_bound(pos.begin(), pos.end(), a.queryPositions[r]) - pos.begin());
      totalTokens += vis[(size_t)h * a.tokens + a.tokens - 1];
      longestHead = std::max<int64_t>(longestHead, vis[(size_t)h * a.tokens + a.tokens - 1]);
    }
    // Split long heads into token ranges so that even one head keeps every thread busy (split-K).
    part.rowBlock = a.tokens == 1 ? 1 : kRowBlock;
    part.rowBlocks = (a.tokens + part.rowBlock - 1) / part.rowBlock;
    // Ranges of at least kMinChunk tokens: shorter ones cost more in partial states to merge than
    // they give the threads to share.
    int64_t chunk = std::max<int64_t>(std::max(kBlockTokens * 4, kMinChunk), (totalTokens + target - 1) / std::max<int64_t>(target, 1));
    // Whole heads when there are enough of them and none holds more than half a thread's share:
    // heads of unequal length (as per-head budgets leave them) are split like one long head, or
    // the longest would run on one thread while the others wait.
    if (part.rowBlocks * kvHeads >= target && (threads == 1 || longestHead * 2 * threads <= totalTokens))
      chunk = std::numeric_limits<int32_t>::max();
    chunk = (chunk + kBlockTokens - 1) / kBlockTokens * kBlockTokens;
    part.keepScores = a.mass != nullptr || a.oracle != nullptr;
    anyScores = anyScores || part.keepScores;
    part.group0 = (int64_t)groupStart.size();
    for (int h = 0; h < kvHeads; ++h) {
      for (int rb = 0; rb < part.rowBlocks; ++rb) {
        int row0 = rb * part.rowBlock, row1 = std::min(a.tokens, row0 + part.rowBlock);
        int32_t n = vis[(size_t)h * a.tokens + row1 - 1];
        groupStart.push_back((int64_t)items.size());
        int32_t t0 = 0;
        do {
          int32_t t1 = (int32_t)std::min<int64_t>(n, t0 + chunk);
          items.push_back({(int)c, h, row0, row1, t0, t1, partialSize, storedSize, false});
          partialSize += (int64_t)(row1 - row0) * partialStride;
          if (part.keepScores) storedSize += (int64_t)(row1 - row0) * G * (t1 - t0);
          t0 = t1;
        } while (t0 < n);
        // The only range of its rows, with no scores kept: it writes their output itself and
        // needs no partial state (and no reduce).
        Item& lastItem = items.back();
        lastItem.final = !part.keepScores && items.size() - groupStart.back() == 1;
        if (lastItem.final) partialSize -= (int64_t)(row1 - row0) * partialStride;
        else reduce = true;
      }
    }
    work += totalTokens * a.tokens * G * D;  // multiply-adds of the scores, roughly
    reduceWork += (int64_t)kvHeads * a.tokens * G * D;
  }
  groupStart.push_back((int64_t)items.size());
  std::vector<float>& partials = sc.partials;
  sizeTo(partials, (size_t)partialSize);
  // Raw scores kept for the mass pass: the final softmax max and sum are known only after the reduce.
  std::vector<float> stored((size_t)storedSize);
  std::vector<float> finalM, finalL;
  if (anyScores) {
    finalM.assign((size_t)reduceRows * G, 0.f);
    finalL.assign((size_t)reduceRows * G, 0.f);
  }

  // Small calls (a short decode step) run on the calling thread alone (kParallelWork).
  auto forEach = [&](int64_t n, bool parallel, const std::function<void(int64_t)>& fn) {
    if (parallel) a0.threads->parallelFor(n, fn);
    else
      for (int64_t i = 0; i < n; ++i) fn(i);
  };
  forEach((int64_t)items.size(), work >= kParallelWork, [&](int64_t idx) {
    const Item& it = items[idx];
    const AttendArgs& a = calls[it.call];
    const Part& part = parts[it.call];
    const HeadState& head = a.heads[it.head];
    // The running state of the rows lives in this thread's own memory and is copied out at the
    // end: written into `partials` directly, it shared cache lines with the neighbouring item of
    // the other thread, and every page step paid for the line moving between cores.
    const int rows = it.row1 - it.row0;
    const int64_t stateStride = (partialStride + 15) / 16 * 16;
    std::vector<float>& work = tItem;
    const size_t convertedFloats = rows > 1 && dt != DType::F32 ? (size_t)2 * kBlockTokens * D : 0;
    sizeTo(work, (size_t)(rows * stateStride) + 16 + (size_t)G * kBlockTokens + convertedFloats + 16);
    float* state = work.data() + (16 - (reinterpret_cast<uintptr_t>(work.data()) / sizeof(float)) % 16) % 16;
    const int32_t* vis = visible.data() + part.visible0;
    int32_t ends[kSpanRows];
    for (int i = 0; i < rows; ++i) {
      float* m = state + i * stateStride;
      std::fill(m, m + G, -std::numeric_limits<float>::infinity());
      std::fill(m + G, m + partialStride, 0.f);  // l and acc
      ends[i] = std::max(it.t0, std::min(it.t1, vis[(size_t)it.head * a.tokens + it.row0 + i]));
    }
    Span span{};
    span.base = a.pool->keys(0);
    span.pageBytes = a.pool->pageBytes();
    span.rowBytes = rowBytes;
    span.pages = head.pages.data();
    span.numPages = (int64_t)head.pages.size();
    span.P = P;
    span.t0 = it.t0;
    span.block = kBlockTokens;
    span.aheadPages = aheadPages;
    span.prefetch = a.prefetch;
    span.rows = rows;
    // The rows' queries of this KV head, scaled so the kernels compute scaled scores directly.
    std::vector<float>& qs = tQuery;
    const size_t rowQ = (size_t)G * D;
    sizeTo(qs, (size_t)rows * rowQ);
    for (int i = 0; i < rows; ++i) {
      const float* src = a.queries + ((size_t)(it.row0 + i) * queryHeads + (size_t)it.head * G) * D;
      float* dst = qs.data() + (size_t)i * rowQ;
      for (size_t x = 0; x < rowQ; ++x) dst[x] = src[x] * a.scale;
    }
    span.q = qs.data();
    span.qStride = (int64_t)rowQ;
    span.ends = ends;
    span.state = state;
    span.stateStride = stateStride;
    span.scratch = state + rows * stateStride;
    if (convertedFloats) {
      float* after = span.scratch + (size_t)G * kBlockTokens;
      span.converted = after + (16 - (reinterpret_cast<uintptr_t>(after) / sizeof(float)) % 16) % 16;
    }
    if (part.keepScores) {
      span.rawStride = it.t1 - it.t0;
      span.rawRowStride = (int64_t)G * span.rawStride;
      span.raw = stored.data() + it.stored;
    }
    a.kernels->attendSpan(dt, span, D, G);
    if (it.final) {
      // The only token range of its rows: the output is the accumulator over the sum, what the
      // reduce's general loop computes with a weight of exp(0) = 1, without the exponentials.
      for (int i = 0; i < rows; ++i) writeOutput(state + i * stateStride, a.out + ((size_t)(it.row0 + i) * queryHeads + (size_t)it.head * G) * D, G, D);
      return;
    }
    for (int i = 0; i < rows; ++i)
      std::copy(state + i * stateStride, state + i * stateStride + partialStride,
                partials.data() + it.partial + (int64_t)i * partialStride);
  });

  // The call that holds flat (head, row) index `idx` of the reduce.
  auto callOf = [&](int64_t idx) {
    size_t lo = 0, hi = count;
    while (hi - lo > 1) {
      const size_t mid = (lo + hi) / 2;
      if (parts[mid].row0 <= idx) lo = mid;
      else hi = mid;
    }
    return lo;
  };
  // Reduce the token ranges of each (call, head, row) and normalise.
  if (reduce) forEach(reduceRows, reduceWork >= kParallelWork, [&](int64_t idx) {
    const size_t c = callOf(idx);
    const AttendArgs& a = calls[c];
    const Part& part = parts[c];
    const int64_t local = idx - part.row0;
    const int h = (int)(local / a.tokens), r = (int)(local % a.tokens);
    const int64_t group = part.group0 + (int64_t)h * part.rowBlocks + r / part.rowBlock;
    const Item* first = items.data() + groupStart[group];
    const Item* last = items.data() + groupStart[group + 1];
    if (first->final) return;  // written by its work item
    for (int g = 0; g < G; ++g) {
      float* o = a.out + ((size_t)r * queryHeads + (size_t)h * G + g) * D;
      float mMax = -std::numeric_limits<float>::infinity();
      for (const Item* it = first; it != last; ++it) {
        const float* pt = partials.data() + it->partial + (int64_t)(r - it->row0) * partialStride;
        mMax = std::max(mMax, pt[g]);
      }
      std::fill(o, o + D, 0.f);
      if (std::isinf(mMax)) continue;  // nothing visible: the output is zero
      float lSum = 0.f;
      for (const Item* it = first; it != last; ++it) {
        const float* pt = partials.data() + it->partial + (int64_t)(r - it->row0) * partialStride;
        if (std::isinf(pt[g])) continue;
        float w = std::exp(pt[g] - mMax);
        lSum += pt[G + g] * w;
        const float* acc = pt + 2 * G + (size_t)g * D;
        for (int d = 0; d < D; ++d) o[d] += acc[d] * w;
      }
      const float inv = 1.f / lSum;
      for (int d = 0; d < D; ++d) o[d] *= inv;
      if (part.keepScores) {
        finalM[(size_t)idx * G + g] = mMax;
        finalL[(size_t)idx * G + g] = lSum;
      }
    }
  });

  if (!anyScores) return;
  // Second, light pass over the kept scores (not over K/V): softmax weights into the H2O mass and
  // the oracle. Parallel over (call, head), so each head's arrays have one writer.
  forEach((int64_t)count * kvHeads, work >= kParallelWork, [&](int64_t ch) {
    const size_t c = (size_t)(ch / kvHeads);
    const int64_t h = ch % kvHeads;
    const AttendArgs& a = calls[c];
    const Part& part = parts[c];
    if (!part.keepScores) return;
    const int32_t* vis = visible.data() + part.visible0;
    float* mass = a.mass ? a.mass[h] : nullptr;
    float* oracle = a.oracle ? a.oracle[h] : nullptr;
    const int32_t oracleEnd = a.oracle ? a.oracleTokens[h] : 0;
    const float invG = 1.f / (float)G;
    for (int64_t gr = part.group0 + h * part.rowBlocks; gr < part.group0 + (h + 1) * part.rowBlocks; ++gr) {
      for (int64_t ii = groupStart[gr]; ii < groupStart[gr + 1]; ++ii) {
        const Item& it = items[ii];
        const int64_t span = it.t1 - it.t0;
        for (int r = it.row0; r < it.row1; ++r) {
          const int32_t end = std::min(it.t1, vis[(size_t)h * a.tokens + r]);
          const size_t fr = (size_t)(part.row0 + h * a.tokens + r) * G;
          for (int g = 0; g < G; ++g) {
            const float m = finalM[fr + g];
            const float invL = 1.f / finalL[fr + g];
            const float* sv = stored.data() + it.stored + ((int64_t)(r - it.row0) * G + g) * span;
            if (mass)
              for (int32_t j = it.t0; j < end; ++j) mass[j] += std::exp(sv[j - it.t0] - m) * invL * invG;
            if (oracle) {
              const float* w = a.oracleWeight[(size_t)h * G + g];
              const int32_t oend = std::min(end, oracleEnd);
              for (int32_t j = it.t0; j < oend; ++j) oracle[j] = std::max(oracle[j], std::exp(sv[j - it.t0] - m) * invL * w[j]);
            }
          }
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace lukv
