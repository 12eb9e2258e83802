// compress(): scores -> budgets (allocation) -> per-head selection -> in-order compaction -> pages
// returned. Everything is planned and checked before the first byte moves, so a failing call
// leaves the sequence exactly as it was.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <new>
#include <numeric>
#include <queue>

#include "allocation.h"
#include "cache.h"
#include "expected_attention.h"

namespace lukv {

namespace {
std::string str(int64_t v) { return std::to_string(v); }
}  // namespace

void Cache::setAccumulate(int32_t seqId, bool on) {
  Held h = hold(seqId, false);
  Sequence& seq = *h.seq;
  if (on && !seq.accumulate) {
    seq.mass.assign(seq.heads.size(), {});
    for (size_t i = 0; i < seq.heads.size(); ++i) seq.mass[i].assign(seq.heads[i].length(), 0.f);
  }
  if (!on) seq.mass.clear();
  seq.accumulate = on;
}

bool Cache::accumulating(int32_t seqId) const { return hold(seqId, false).seq->accumulate; }

void Cache::observationRows(const Sequence& seq, int layer, const ScoreOptions& o, std::vector<float>& rows,
                            std::vector<int32_t>& positions) const {
  const size_t rowFloats = (size_t)cfg_.queryHeads * cfg_.headDim;
  const ObservedRows& remembered = (seq.frozen ? seq.frozenObserved : seq.observed)[layer];
  const std::vector<float>* explicitRows =
      (size_t)layer < o.observation.size() && !o.observation[layer].empty() ? &o.observation[layer] : nullptr;
  // The rows given, or the sequence's ring of at most observationWindow rows.
  const int total = explicitRows ? (int)(explicitRows->size() / rowFloats) : (int)remembered.held();
  const int need = o.scorer == Scorer::TOVA ? 1 : o.window;
  if (total < need)
    throwInvalid(std::string(o.scorer == Scorer::TOVA ? "tova" : "snapkv") + " needs " + str(need) +
                 " observation queries for layer " + str(layer) + " but " +
                 (explicitRows ? "observationQueries has " : "the sequence remembers ") + str(total) +
                 (explicitRows ? "" : " (attend with at least that many queries, raise the cache's observationWindow (" +
                                          str(cfg_.observationWindow) + "), or pass observationQueries)"));
  if (!explicitRows) {
    remembered.last((size_t)need, rowFloats, rows, positions);
    return;
  }
  const int first = total - need;
  rows.assign(explicitRows->begin() + (size_t)first * rowFloats, explicitRows->begin() + (size_t)total * rowFloats);
  positions.resize(need);
  for (int i = 0; i < need; ++i) positions[i] = seq.appended[layer] - total + first + i;
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
  const bool expected = o.scorer == Scorer::ExpectedAttention;
  std::vector<RotatedStatistics> rotated(expected ? cfg_.layers : 0);
  if (expected)
    for (int l : layers) rotated[l] = rotateStatistics(o.expected, l, cfg_.queryHeads, cfg_.headDim, seq.appended[l]);
  out.assign((size_t)cfg_.layers * H, {});
  std::vector<ScoreRequest> work;
  for (int l : layers)
    for (int h = 0; h < H; ++h) {
      const size_t idx = (size_t)l * H + h;
      out[idx].resize(seq.heads[idx].length());
      ScoreRequest r;
      r.head = &seq.heads[idx];
      r.layer = l;
      r.kvHead = h;
      r.queries = rows[l].data();
      r.queryPositions = rowPos[l].data();
      r.rows = (int)rowPos[l].size();
      r.mass = seq.accumulate ? seq.mass[idx].data() : nullptr;
      r.newest = seq.appended[l] - 1;
      if (expected) {
        r.expectedMean = rotated[l].mean.data();
        r.expectedCovariance = o.expected.useCovariance ? rotated[l].covariance.data() : nullptr;
      }
      r.out = out[idx].data();
      work.push_back(r);
    }
  backend_->scores(work, cfg_.kvHeads, cfg_.queryHeads, o);
  if (expected)
    for (const ScoreRequest& r : work) fillSinkScores(r.out, r.head->length(), o.sink);
  if (o.groupLayer && (o.scorer == Scorer::SnapKV || o.scorer == Scorer::TOVA))
    for (int l : layers) layerMeanScores(seq, l, out);
  // snapkv and tova pool each query head's attention in the backend; the scorers that score a
  // token at a time pool their final scores here, the same on every backend.
  if (!attention && o.pooling != Pooling::None && o.kernel > 1)
    for (const ScoreRequest& r : work) poolTokenScores(r.out, r.head->length(), o.sink, o.window, o.pooling, o.kernel);
  // The attention a token gets times the size of what it contributes: score x ||v||.
  if (o.valueNorm) {
    std::vector<float> norms;
    for (const ScoreRequest& r : work) {
      const int32_t L = r.head->length();
      norms.resize(L);
      backend_->valueNorms(*r.head, L, norms.data());
      for (int32_t t = 0; t < L; ++t) r.out[t] *= norms[t];
    }
  }
}

// Every head's score of a position becomes the mean of the group means of the layer's heads that
// hold it: with equal groups, the mean over every query head of the layer (TOVA's definition).
void Cache::layerMeanScores(const Sequence& seq, int layer, std::vector<std::vector<float>>& out) const {
  const int H = cfg_.kvHeads;
  std::map<int32_t, std::pair<double, int>> byPos;
  for (int h = 0; h < H; ++h) {
    const size_t idx = (size_t)layer * H + h;
    const std::vector<int32_t>& pos = seq.heads[idx].positions;
    for (size_t t = 0; t < pos.size(); ++t) {
      auto& acc = byPos[pos[t]];
      acc.first += out[idx][t];
      acc.second += 1;
    }
  }
  for (int h = 0; h < H; ++h) {
    const size_t idx = (size_t)layer * H + h;
    const std::vector<int32_t>& pos = seq.heads[idx].positions;
    for (size_t t = 0; t < pos.size(); ++t) {
      const auto& acc = byPos[pos[t]];
      out[idx][t] = (float)(acc.first / acc.second);
    }
  }
}

namespace {
// A layer whose heads are all empty has nothing to score, and no window to check.
bool holdsTokens(const Sequence& seq, int layer, int kvHeads) {
  for (int h = 0; h < kvHeads; ++h)
    if (seq.heads[(size_t)layer * kvHeads + h].length() > 0) return true;
  return false;
}

// The observation rows and the recent window are the layer's last `window` positions.
void checkWindow(const Sequence& seq, int layer, int window) {
  if (window > seq.appended[layer])
    throwInvalid("Expected window at most the sequence length (" + str(seq.appended[layer]) + " positions in layer " +
                 str(layer) + ") but received " + str(window));
}
}  // namespace

std::vector<std::vector<float>> Cache::scores(int32_t seqId, int layer, const ScoreOptions& o) {
  Held h = hold(seqId, true);
  Sequence& seq = *h.seq;
  if (holdsTokens(seq, layer, cfg_.kvHeads)) checkWindow(seq, layer, o.window);  // as compress checks it: scores are what it ranks by
  std::vector<std::vector<float>> all;
  scoreLayerHeads(seq, {layer}, o, all);
  return std::vector<std::vector<float>>(all.begin() + (size_t)layer * cfg_.kvHeads,
                                         all.begin() + (size_t)(layer + 1) * cfg_.kvHeads);
}

CompressReport Cache::compress(int32_t seqId, const CompressOptions& opt) {
  auto t0 = std::chrono::steady_clock::now();
  Held held = hold(seqId, true);
  Sequence& seq = *held.seq;
  if (seq.recording)
    throwInvalid("compress is not allowed while the oracle is being recorded (it would move the context tokens); call seq.stopOracle() first");
  const int H = cfg_.kvHeads, Lyr = cfg_.layers;
  const size_t NH = (size_t)Lyr * H;
  const ScoreOptions& so = opt.score;

  // Bounds per head: the forced tokens (sink + window), at least one token, at most its length.
  std::vector<int32_t> lengths(NH);
  for (size_t i = 0; i < NH; ++i) lengths[i] = seq.heads[i].length();
  const HeadBounds bounds = headBounds(lengths, opt.sink, so.window);
  const std::vector<int32_t>& len = bounds.len;
  const int64_t before = bounds.before;
  std::vector<int> layers;
  for (int l = 0; l < Lyr; ++l) {
    if (!holdsTokens(seq, l, H)) continue;
    checkWindow(seq, l, so.window);
    layers.push_back(l);
  }
  if (opt.allocation == Allocation::Explicit && opt.budgets.size() != NH)
    throwInvalid("Expected budgets of length " + str((int64_t)NH) + " (layers * kvHeads) but received " +
                 str((int64_t)opt.budgets.size()));

  CompressReport rep;
  rep.before = before;
  // Explicit budgets: the target is what they ask for (the floors may keep more).
  if (opt.allocation == Allocation::Explicit) {
    rep.target = 0;
    for (int32_t b : opt.budgets) rep.target += b;
  } else {
    rep.target = keptTotal(opt.ratio, before);
  }

  // Scores (read-only). Skipped when nothing would be evicted.
  std::vector<std::vector<float>> scores;
  const bool evicts = opt.allocation == Allocation::Explicit ? true : rep.target < before;
  if (evicts && !layers.empty()) scoreLayerHeads(seq, layers, so, scores);
  else scores.assign(NH, {});

  // Budgets.
  std::vector<int32_t> keep;
  const int64_t total = std::min<int64_t>(before, std::max<int64_t>(bounds.sumLo, rep.target));
  if (!evicts) keep = len;
  else if (opt.allocation == Allocation::Explicit) keep = explicitBudgets(bounds, opt.budgets);
  else if (opt.allocation == Allocation::LUKV) keep = lukvBudgets(bounds, opt.pruneRatios, total);
  else if (opt.allocation == Allocation::AdaKV)
    keep = adaKvBudgets(bounds, Lyr, H, opt.ratio, opt.alpha, total, scores, opt.sink, so.window);
  else keep = scheduledBudgets(opt.allocation, bounds, Lyr, H, opt.ratio, opt.beta, total);

  // Selection, then the compaction the backend runs: planned (and its pages checked) before the
  // first row moves.
  std::vector<std::vector<int32_t>> kept(NH);
  backend_->parallelFor((int64_t)NH, [&](int64_t i) {
    if (keep[i] < len[i]) kept[i] = selectKeep(scores[i].data(), len[i], opt.sink, so.window, keep[i]);
  });
  // The table is locked only while it changes; pagesFreed counts this call's own changes (other
  // sequences may take or return pages meanwhile).
  int64_t freed = 0;
  auto tableStep = [&](auto&& step) {
    auto table = lockTable();
    const int64_t used = backend_->pages().usedPages();
    step();
    freed += used - backend_->pages().usedPages();
  };
  std::vector<int32_t> copies;
  CompactionPlan plan;
  tableStep([&] { plan = table_->planCompaction(seq, kept, backend_->compactsInPlace(), copies); });
  freed += copyThenRelease(copies);
  // A backend that fails (a device allocation or launch) gets the round's fresh pages back. Rounds
  // committed before it cannot be undone (their old pages went back to the pool for the next
  // rounds), so the error says how many heads kept their compressed rows.
  size_t compacted = 0, moving = 0;
  for (const auto& round : plan.rounds) moving += round.size();
  for (auto& round : plan.rounds) {
    tableStep([&] { table_->takePages(round); });
    try {
      backend_->compact(round);
    } catch (...) {
      tableStep([&] { table_->releaseTaken(round); });
      if (compacted == 0) throw;
      // Never OutOfPages, whose meaning elsewhere is "nothing changed" (autoCompress and the
      // pressure policy go on after one): here heads did change.
      std::string why;
      try {
        throw;
      } catch (const std::bad_alloc&) {
        why = "out of host memory";
      } catch (const std::exception& e) {
        why = e.what();
      } catch (...) {
        why = "unknown error";
      }
      throw Error(ErrorCode::Internal, "compress failed after compacting " + str((int64_t)compacted) + " of the " +
                                           str((int64_t)moving) +
                                           " heads it evicts from, in rounds (the pool could not hold them all at once): those " +
                                           "heads keep their compressed tokens (seq.lengths() shows which), the others are " +
                                           "unchanged: " + why);
    }
    tableStep([&] { table_->commitRound(seq, round); });
    compacted += round.size();
  }

  rep.kept.resize(NH);
  for (size_t i = 0; i < NH; ++i) {
    rep.kept[i] = seq.heads[i].length();
    rep.total += rep.kept[i];
  }
  rep.pagesFreed = freed;
  rep.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace lukv
