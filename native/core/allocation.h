// How many tokens each (layer, KV head) keeps: the one place for the allocation rules. Every head
// keeps at least its sink and recent window (and one token), at most its length; the integer
// budgets sum exactly to the target. Used by compress on every backend.
#pragma once
#include <cstdint>
#include <vector>

#include "compress.h"

namespace lukv {

// Per-head bounds of one compress call.
struct HeadBounds {
  std::vector<int32_t> len;  // tokens now
  std::vector<int32_t> lo;   // the floor: sink + window tokens (at least 1), clamped to len
  std::vector<int32_t> hi;   // len
  int64_t before = 0, sumLo = 0;
};

HeadBounds headBounds(const std::vector<int32_t>& lengths, int sink, int window);

// The kept total of a ratio: round((1 - ratio) x tokens), halves up, with the ratio read as the
// decimal it prints as (0.3 of 365 tokens keeps 256, though the double nearest 0.3 times 365 falls
// a hair below the half). The rounding errors of the double arithmetic stay below 4 x 2^-52 x tokens,
// so a product that close to a half is one (up to 2^44 tokens; beyond, the tolerance stays 2^-6).
int64_t keptTotal(double ratio, int64_t tokens);

// Integer budgets in [lo, hi] summing exactly to total (Σlo <= total <= Σhi), as close to `ideal`
// as a common additive shift and largest-remainder rounding allow.
std::vector<int32_t> fitBudgets(const std::vector<double>& ideal, const std::vector<int32_t>& lo,
                                const std::vector<int32_t>& hi, int64_t total);

// Keep counts for uniform and pyramidkv (per-layer arithmetic schedule, the top layer keeping
// 1/beta of the average), fitted to `total`.
std::vector<int32_t> scheduledBudgets(Allocation allocation, const HeadBounds& b, int layers, int kvHeads,
                                      double ratio, double beta, int64_t total);

// Ada-KV: layer budgets proportional to the layer's tokens; inside a layer each head gets a floor
// of alpha times its proportional share and the rest goes to the best scores of the layer
// (outside the forced sink and window).
std::vector<int32_t> adaKvBudgets(const HeadBounds& b, int layers, int kvHeads, double ratio, double alpha,
                                  int64_t total, const std::vector<std::vector<float>>& scores, int sink, int window);

// LU-KV: each head keeps (1 - pruneRatio_h) x its length, every prune ratio shifted by one common
// amount (clamped to the head's bounds) so that the counts sum to `total`, rounded by largest
// remainder with ties to the lower head index (budgetsFromProfile in TypeScript calls it too).
std::vector<int32_t> lukvBudgets(const HeadBounds& b, const std::vector<double>& pruneRatios, int64_t total);

// Explicit keep counts, raised to each head's floor; throws for counts outside [0, length].
std::vector<int32_t> explicitBudgets(const HeadBounds& b, const std::vector<int32_t>& budgets);

// The kept token indices of one head, ascending: the first `sink` and last `window` tokens and the
// best `keep - sink - window` of the rest by score (NaN lowest, ties to the earlier position).
std::vector<int32_t> selectKeep(const float* score, int32_t length, int sink, int window, int32_t keep);
// The tokens outside the first `sink` and last `window`, best first by the same rule: what
// selectKeep keeps for every `keep`, in order (adakv's candidates, the profiler's eviction order).
std::vector<int32_t> keepOrder(const float* score, int32_t length, int sink, int window);
// Pools, in place, the scores of the tokens between the first `sink` and the last `window` with
// their neighbours in that range ("max" or the mean over the in-range ones); the scorers that score
// one token at a time use it (snapkv and tova pool per query head before the GQA combination).
void poolTokenScores(float* score, int32_t length, int sink, int window, Pooling kind, int kernel);

}  // namespace lukv
