// compress(): scores -> budgets (allocation) -> per-head selection -> in-order compaction -> pages
// returned. Everything is planned and checked before the first byte moves, so a failing call
// leaves the sequence exactly as it was.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <queue>

#include "../cpu/scores.h"
#include "cache.h"

namespace lukv {

namespace {
std::string str(int64_t v) { return std::to_string(v); }
double roundHalfUp(double x) { return std::floor(x + 0.5); }

// Keeps the first `sink` and last `window` tokens and the best of the rest, ties to the earlier
// position. Returns kept token indices, ascending.
std::vector<int32_t> selectKeep(const float* score, int32_t L, int sink, int window, int32_t keep) {
  std::vector<int32_t> kept;
  if (keep >= L) {
    kept.resize(L);
    std::iota(kept.begin(), kept.end(), 0);
    return kept;
  }
  const int32_t front = std::min<int32_t>(sink, L);
  const int32_t back = std::min<int32_t>(window, L - front);
  const int32_t fromMiddle = keep - front - back;
  std::vector<int32_t> middle(L - front - back);
  std::iota(middle.begin(), middle.end(), front);
  auto better = [score](int32_t a, int32_t b) {
    float sa = std::isnan(score[a]) ? -INFINITY : score[a], sb = std::isnan(score[b]) ? -INFINITY : score[b];
    return sa > sb || (sa == sb && a < b);
  };
  if (fromMiddle > 0 && fromMiddle < (int32_t)middle.size())
    std::nth_element(middle.begin(), middle.begin() + fromMiddle, middle.end(), better);
  middle.resize(std::max<int32_t>(0, fromMiddle));
  for (int32_t i = 0; i < front; ++i) kept.push_back(i);
  kept.insert(kept.end(), middle.begin(), middle.end());
  for (int32_t i = L - back; i < L; ++i) kept.push_back(i);
  std::sort(kept.begin(), kept.end());
  return kept;
}
}  // namespace

std::vector<int32_t> fitBudgets(const std::vector<double>& ideal, const std::vector<int32_t>& lo,
                                const std::vector<int32_t>& hi, int64_t total) {
  const size_t n = ideal.size();
  auto clampAt = [&](size_t h, double lambda) { return std::min<double>(hi[h], std::max<double>(lo[h], ideal[h] + lambda)); };
  auto sumAt = [&](double lambda) {
    double s = 0;
    for (size_t h = 0; h < n; ++h) s += clampAt(h, lambda);
    return s;
  };
  double a = 0, b = 0;
  for (size_t h = 0; h < n; ++h) {
    a = std::min(a, lo[h] - ideal[h] - 1);
    b = std::max(b, hi[h] - ideal[h] + 1);
  }
  for (int it = 0; it < 200 && b - a > 1e-9; ++it) {
    double mid = 0.5 * (a + b);
    if (sumAt(mid) >= (double)total) b = mid;
    else a = mid;
  }
  std::vector<int32_t> out(n);
  std::vector<double> frac(n);
  int64_t sum = 0;
  for (size_t h = 0; h < n; ++h) {
    double x = clampAt(h, b);
    out[h] = (int32_t)std::floor(x);
    frac[h] = x - out[h];
    sum += out[h];
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return frac[x] > frac[y]; });
  // Largest remainders first; the loops also absorb any rounding slack of the bisection.
  while (sum < total) {
    bool moved = false;
    for (size_t i = 0; i < n && sum < total; ++i)
      if (out[order[i]] < hi[order[i]]) out[order[i]]++, sum++, moved = true;
    if (!moved) break;
  }
  while (sum > total) {
    bool moved = false;
    for (size_t i = n; i-- > 0 && sum > total;)
      if (out[order[i]] > lo[order[i]]) out[order[i]]--, sum--, moved = true;
    if (!moved) break;
  }
  return out;
}

void Cache::setAccumulate(int32_t seqId, bool on) {
  Sequence& seq = get(seqId);
  if (on && !seq.accumulate) {
    seq.mass.assign(seq.heads.size(), {});
    for (size_t i = 0; i < seq.heads.size(); ++i) seq.mass[i].assign(seq.heads[i].length(), 0.f);
  }
  if (!on) seq.mass.clear();
  seq.accumulate = on;
}

void Cache::observationRows(const Sequence& seq, int layer, const ScoreOptions& o, std::vector<float>& rows,
                            std::vector<int32_t>& positions) const {
  const size_t rowFloats = (size_t)cfg_.queryHeads * cfg_.headDim;
  const bool explicitRows = (size_t)layer < o.observation.size() && !o.observation[layer].empty();
  const std::vector<float>& remembered = seq.frozen ? seq.frozenQueries[layer] : seq.obsQueries[layer];
  const std::vector<int32_t>& rememberedPos = seq.frozen ? seq.frozenPositions[layer] : seq.obsPositions[layer];
  const std::vector<float>& src = explicitRows ? o.observation[layer] : remembered;
  const int total = (int)(src.size() / rowFloats);
  // The sequence holds up to twice its observation window (see Cache::attend); it remembers the last W.
  const int have = explicitRows ? total : std::min(total, cfg_.observationWindow);
  const int need = o.scorer == Scorer::TOVA ? 1 : o.window;
  if (have < need)
    throwInvalid(std::string(o.scorer == Scorer::TOVA ? "tova" : "snapkv") + " needs " + str(need) +
                 " observation queries for layer " + str(layer) + " but " +
                 (explicitRows ? "observationQueries has " : "the sequence remembers ") + str(have) +
                 (explicitRows ? "" : " (attend with at least that many queries, raise the cache's observationWindow (" +
                                          str(cfg_.observationWindow) + "), or pass observationQueries)"));
  const int first = total - need;
  rows.assign(src.begin() + (size_t)first * rowFloats, src.begin() + (size_t)total * rowFloats);
  positions.resize(need);
  for (int i = 0; i < need; ++i)
    positions[i] = explicitRows ? seq.appended[layer] - total + first + i : rememberedPos[first + i];
}

void Cache::scoreLayerHeads(const Sequence& seq, const std::vector<int>& layers, const ScoreOptions& o,
                            std::vector<std::vector<float>>& out) {
  const int H = cfg_.kvHeads;
  const bool attention = o.scorer == Scorer::SnapKV || o.scorer == Scorer::TOVA;
  std::vector<std::vector<float>> rows(cfg_.layers);
  std::vector<std::vector<int32_t>> rowPos(cfg_.layers);
  for (int l : layers) {
    if (attention) observationRows(seq, l, o, rows[l], rowPos[l]);
    if (o.scorer == Scorer::H2O && !seq.accumulate)
      throwInvalid("scorer \"h2o\" needs attention mass accumulated during decode: call seq.accumulateAttention() before attending");
  }
  out.assign((size_t)cfg_.layers * H, {});
  std::vector<int64_t> work;
  for (int l : layers)
    for (int h = 0; h < H; ++h) work.push_back((int64_t)l * H + h);
  pool_threads_->parallelFor((int64_t)work.size(), [&](int64_t i) {
    const int64_t idx = work[i];
    const int l = (int)(idx / H), h = (int)(idx % H);
    const HeadState& head = seq.heads[idx];
    cpu::HeadScoreArgs a;
    a.pool = pool_.get();
    a.kernels = kernels_;
    a.head = &head;
    a.layer = l;
    a.headIndex = h;
    a.group = cfg_.queryHeads / H;
    a.headDim = cfg_.headDim;
    a.queryHeads = cfg_.queryHeads;
    a.queries = rows[l].data();
    a.queryPositions = rowPos[l].data();
    a.rows = (int)rowPos[l].size();
    a.accumulated = seq.accumulate ? seq.mass[idx].data() : nullptr;
    a.options = &o;
    out[idx].resize(head.length());
    cpu::scoreHead(a, out[idx].data());
  });
}

std::vector<std::vector<float>> Cache::scores(int32_t seqId, int layer, const ScoreOptions& o) {
  Sequence& seq = get(seqId);
  std::vector<std::vector<float>> all;
  scoreLayerHeads(seq, {layer}, o, all);
  return std::vector<std::vector<float>>(all.begin() + (size_t)layer * cfg_.kvHeads,
                                         all.begin() + (size_t)(layer + 1) * cfg_.kvHeads);
}

CompressReport Cache::compress(int32_t seqId, const CompressOptions& opt) {
  auto t0 = std::chrono::steady_clock::now();
  Sequence& seq = get(seqId);
  if (seq.recording)
    throwInvalid("compress is not allowed while the oracle is being recorded (it would move the context tokens); call seq.stopOracle() first");
  const int H = cfg_.kvHeads, Lyr = cfg_.layers, P = cfg_.pageSize;
  const size_t NH = (size_t)Lyr * H;
  const ScoreOptions& so = opt.score;

  // Bounds per head: the forced tokens (sink + window), at least one token, at most its length.
  std::vector<int32_t> len(NH), lo(NH), hi(NH);
  int64_t before = 0, sumLo = 0;
  std::vector<int> layers;
  for (int l = 0; l < Lyr; ++l) {
    bool any = false;
    for (int h = 0; h < H; ++h) {
      size_t i = (size_t)l * H + h;
      len[i] = seq.heads[i].length();
      int64_t forced = std::min<int64_t>(len[i], (int64_t)opt.sink + so.window);
      lo[i] = len[i] == 0 ? 0 : (int32_t)std::max<int64_t>(1, forced);
      hi[i] = len[i];
      before += len[i];
      sumLo += lo[i];
      any = any || len[i] > 0;
    }
    if (!any) continue;
    if (so.window > seq.appended[l])
      throwInvalid("Expected window at most the sequence length (" + str(seq.appended[l]) + " positions in layer " +
                   str(l) + ") but received " + str(so.window));
    layers.push_back(l);
  }
  if (opt.allocation == Allocation::Explicit && opt.budgets.size() != NH)
    throwInvalid("Expected budgets of length " + str((int64_t)NH) + " (layers * kvHeads) but received " +
                 str((int64_t)opt.budgets.size()));

  CompressReport rep;
  rep.before = before;
  rep.target = (int64_t)roundHalfUp((1.0 - opt.ratio) * (double)before);

  // Scores (read-only). Skipped when nothing would be evicted.
  std::vector<std::vector<float>> scores;
  const bool evicts = opt.allocation == Allocation::Explicit ? true : rep.target < before;
  if (evicts && !layers.empty()) scoreLayerHeads(seq, layers, so, scores);
  else scores.assign(NH, {});

  // Budgets.
  std::vector<int32_t> keep(NH);
  const int64_t total = std::min<int64_t>(before, std::max<int64_t>(sumLo, rep.target));
  if (!evicts) {
    keep = len;
  } else if (opt.allocation == Allocation::Explicit) {
    for (size_t i = 0; i < NH; ++i) {
      if (opt.budgets[i] < 0 || opt.budgets[i] > len[i])
        throwInvalid("Expected budgets[" + str((int64_t)i) + "] between 0 and the head's length " + str(len[i]) +
                     " but received " + str(opt.budgets[i]));
      keep[i] = std::max(lo[i], opt.budgets[i]);
    }
  } else if (opt.allocation == Allocation::Uniform || opt.allocation == Allocation::PyramidKV) {
    std::vector<double> ideal(NH);
    for (int l = 0; l < Lyr; ++l) {
      double w = 1;
      if (opt.allocation == Allocation::PyramidKV && Lyr > 1)
        w = (2 - 1 / opt.beta) - (2 - 2 / opt.beta) * (double)l / (Lyr - 1);
      for (int h = 0; h < H; ++h) ideal[(size_t)l * H + h] = (1.0 - opt.ratio) * len[(size_t)l * H + h] * w;
    }
    keep = fitBudgets(ideal, lo, hi, total);
  } else {
    // Ada-KV: layer budgets proportional to the layer's tokens; inside a layer each head gets a
    // floor of alpha times its proportional share, the rest goes to the best scores of the layer.
    std::vector<double> idealL(Lyr);
    std::vector<int32_t> loL(Lyr, 0), hiL(Lyr, 0);
    for (int l = 0; l < Lyr; ++l) {
      for (int h = 0; h < H; ++h) {
        loL[l] += lo[(size_t)l * H + h];
        hiL[l] += len[(size_t)l * H + h];
      }
      idealL[l] = (1.0 - opt.ratio) * hiL[l];
    }
    std::vector<int32_t> layerBudget = fitBudgets(idealL, loL, hiL, total);
    for (int l = 0; l < Lyr; ++l) {
      const size_t base = (size_t)l * H;
      std::vector<int32_t> floorH(H);
      int64_t floorSum = 0;
      for (int h = 0; h < H; ++h) {
        double share = hiL[l] > 0 ? (double)layerBudget[l] * len[base + h] / hiL[l] : 0;
        floorH[h] = std::min(len[base + h], std::max(lo[base + h], (int32_t)std::floor(opt.alpha * share)));
        floorSum += floorH[h];
      }
      if (floorSum > layerBudget[l]) {
        floorSum = 0;
        for (int h = 0; h < H; ++h) floorSum += (floorH[h] = lo[base + h]);
      }
      // Each head's candidates outside the forced tokens, best first.
      std::vector<std::vector<int32_t>> order(H);
      std::vector<size_t> next(H);
      for (int h = 0; h < H; ++h) {
        const int32_t L = len[base + h];
        const int32_t front = std::min<int32_t>(opt.sink, L), back = std::min<int32_t>(so.window, L - front);
        auto& ord = order[h];
        ord.resize(L - front - back);
        std::iota(ord.begin(), ord.end(), front);
        const float* sc = scores[base + h].data();
        std::sort(ord.begin(), ord.end(), [sc](int32_t a, int32_t b) {
          float sa = std::isnan(sc[a]) ? -INFINITY : sc[a], sb = std::isnan(sc[b]) ? -INFINITY : sc[b];
          return sa > sb || (sa == sb && a < b);
        });
        next[h] = (size_t)std::max<int32_t>(0, floorH[h] - front - back);
      }
      int64_t rest = layerBudget[l] - floorSum;
      struct Cand {
        float score;
        int head;
        int32_t token;
      };
      auto worse = [](const Cand& a, const Cand& b) {
        return a.score < b.score || (a.score == b.score && (a.head > b.head || (a.head == b.head && a.token > b.token)));
      };
      std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
      auto push = [&](int h) {
        if (next[h] < order[h].size()) {
          int32_t t = order[h][next[h]];
          float s = scores[base + h][t];
          heap.push({std::isnan(s) ? -INFINITY : s, h, t});
        }
      };
      for (int h = 0; h < H; ++h) {
        keep[base + h] = floorH[h];
        push(h);
      }
      while (rest > 0 && !heap.empty()) {
        Cand c = heap.top();
        heap.pop();
        keep[base + c.head]++;
        next[c.head]++;
        rest--;
        push(c.head);
      }
    }
  }

  // Selection and the pages it needs: a compacted head writes into its first ceil(keep/P) pages,
  // so shared pages among them get a private copy first.
  std::vector<std::vector<int32_t>> kept(NH);
  pool_threads_->parallelFor((int64_t)NH, [&](int64_t i) {
    if (keep[i] < len[i]) kept[i] = selectKeep(scores[i].data(), len[i], opt.sink, so.window, keep[i]);
  });
  int64_t copies = 0;
  for (size_t i = 0; i < NH; ++i) {
    if (keep[i] >= len[i]) continue;
    const int64_t dest = (keep[i] + P - 1) / P;
    for (int64_t p = 0; p < dest; ++p)
      if (pool_->refcount(seq.heads[i].pages[p]) > 1) copies++;
  }
  if (copies > pool_->freePages())
    throw Error(ErrorCode::OutOfPages, "compress needs " + str(copies) + " free pages to copy pages shared with forks but the pool has " +
                                           str(pool_->freePages()) + "; nothing was evicted");

  // Commit: private copies, in-order compaction (parallel over heads), then the freed pages.
  const int64_t usedBefore = pool_->usedPages();
  for (size_t i = 0; i < NH; ++i) {
    if (kept[i].empty()) continue;
    HeadState& hs = seq.heads[i];
    const int64_t dest = (keep[i] + P - 1) / P;
    for (int64_t p = 0; p < dest; ++p) {
      int32_t old = hs.pages[p];
      if (pool_->refcount(old) <= 1) continue;
      std::vector<int32_t> fresh;
      pool_->allocate(1, fresh);
      std::memcpy(pool_->keys(fresh[0]), pool_->keys(old), pool_->pageBytes());
      pool_->release(old);
      hs.pages[p] = fresh[0];
    }
  }
  const size_t rowBytes = pool_->rowBytes();
  pool_threads_->parallelFor((int64_t)NH, [&](int64_t i) {
    if (kept[i].empty()) return;
    HeadState& hs = seq.heads[i];
    const auto& k = kept[i];
    // Rows only move towards the front (k[j] >= j), so copying in order never reads a row that
    // was already overwritten.
    for (size_t j = 0; j < k.size(); ++j) {
      const int32_t src = k[j];
      if (src == (int32_t)j) continue;
      int32_t sp = hs.pages[src / P], dp = hs.pages[j / P];
      std::memcpy(pool_->keys(dp) + (size_t)(j % P) * rowBytes, pool_->keys(sp) + (size_t)(src % P) * rowBytes, rowBytes);
      std::memcpy(pool_->values(dp) + (size_t)(j % P) * rowBytes, pool_->values(sp) + (size_t)(src % P) * rowBytes, rowBytes);
      hs.positions[j] = hs.positions[src];
      if (seq.accumulate) seq.mass[i][j] = seq.mass[i][src];
    }
    hs.positions.resize(k.size());
    if (seq.accumulate) seq.mass[i].resize(k.size());
  });
  for (size_t i = 0; i < NH; ++i) {
    if (kept[i].empty()) continue;
    HeadState& hs = seq.heads[i];
    const size_t dest = (size_t)((keep[i] + P - 1) / P);
    for (size_t p = dest; p < hs.pages.size(); ++p) pool_->release(hs.pages[p]);
    hs.pages.resize(dest);
  }

  rep.kept.resize(NH);
  for (size_t i = 0; i < NH; ++i) {
    rep.kept[i] = seq.heads[i].length();
    rep.total += rep.kept[i];
  }
  rep.pagesFreed = usedBefore - pool_->usedPages();
  rep.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace lukv
