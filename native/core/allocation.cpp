#include "allocation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <queue>
#include <string>

#include "errors.h"

namespace lukv {

namespace {
std::string str(int64_t v) { return std::to_string(v); }
bool better(const float* score, int32_t a, int32_t b) {
  const float sa = std::isnan(score[a]) ? -INFINITY : score[a], sb = std::isnan(score[b]) ? -INFINITY : score[b];
  return sa > sb || (sa == sb && a < b);
}
}  // namespace

int64_t keptTotal(double ratio, int64_t tokens) {
  const double x = (1.0 - ratio) * (double)tokens;
  const double whole = std::floor(x);
  // Capped well below a half: past 2^44 tokens (far beyond any cache) the decimal reading is lost,
  // but a fraction of 0 never rounds up.
  const double tolerance = std::min(0x1p-6, 4 * std::numeric_limits<double>::epsilon() * std::max<double>(1, (double)tokens));
  // x - whole is exact (whole <= x < whole + 1).
  return (int64_t)whole + (x - whole >= 0.5 - tolerance ? 1 : 0);
}

HeadBounds headBounds(const std::vector<int32_t>& lengths, int sink, int window) {
  HeadBounds b;
  const size_t n = lengths.size();
  b.len = lengths;
  b.lo.resize(n);
  b.hi = lengths;
  for (size_t i = 0; i < n; ++i) {
    const int64_t forced = std::min<int64_t>(lengths[i], (int64_t)sink + window);
    b.lo[i] = lengths[i] == 0 ? 0 : (int32_t)std::max<int64_t>(1, forced);
    b.before += lengths[i];
    b.sumLo += b.lo[i];
  }
  return b;
}

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
  // Remainders this close are equal but for the rounding of the shares and the shift (3.6 + b and
  // 2.6 + b round differently): each run of them takes its largest's value, so that ties go to the
  // lower head, as for the lukv allocation.
  double maxX = 1;
  for (size_t h = 0; h < n; ++h) maxX = std::max(maxX, std::fabs(clampAt(h, b)));
  const double eps = 64 * std::numeric_limits<double>::epsilon() * maxX;  // a few roundings of x
  std::vector<size_t> byFrac(n);
  std::iota(byFrac.begin(), byFrac.end(), 0);
  std::sort(byFrac.begin(), byFrac.end(), [&](size_t x, size_t y) { return frac[x] != frac[y] ? frac[x] > frac[y] : x < y; });
  std::vector<double> key(n);
  for (size_t i = 0; i < n; ++i) {
    const size_t h = byFrac[i];
    key[h] = i > 0 && frac[byFrac[i - 1]] - frac[h] <= eps ? key[byFrac[i - 1]] : frac[h];
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return key[x] > key[y]; });
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

std::vector<int32_t> scheduledBudgets(Allocation allocation, const HeadBounds& b, int layers, int kvHeads,
                                      double ratio, double beta, int64_t total) {
  std::vector<double> ideal(b.len.size());
  for (int l = 0; l < layers; ++l) {
    double w = 1;
    if (allocation == Allocation::PyramidKV && layers > 1) w = (2 - 1 / beta) - (2 - 2 / beta) * (double)l / (layers - 1);
    for (int h = 0; h < kvHeads; ++h) ideal[(size_t)l * kvHeads + h] = (1.0 - ratio) * b.len[(size_t)l * kvHeads + h] * w;
  }
  return fitBudgets(ideal, b.lo, b.hi, total);
}

std::vector<int32_t> adaKvBudgets(const HeadBounds& b, int Lyr, int H, double ratio, double alpha, int64_t total,
                                  const std::vector<std::vector<float>>& scores, int sink, int window) {
  const std::vector<int32_t>& len = b.len;
  const std::vector<int32_t>& lo = b.lo;
  std::vector<int32_t> keep(len.size());
  std::vector<double> idealL(Lyr);
  std::vector<int32_t> loL(Lyr, 0), hiL(Lyr, 0);
  for (int l = 0; l < Lyr; ++l) {
    for (int h = 0; h < H; ++h) {
      loL[l] += lo[(size_t)l * H + h];
      hiL[l] += len[(size_t)l * H + h];
    }
    idealL[l] = (1.0 - ratio) * hiL[l];
  }
  std::vector<int32_t> layerBudget = fitBudgets(idealL, loL, hiL, total);
  for (int l = 0; l < Lyr; ++l) {
    const size_t base = (size_t)l * H;
    std::vector<int32_t> floorH(H);
    int64_t floorSum = 0;
    for (int h = 0; h < H; ++h) {
      double share = hiL[l] > 0 ? (double)layerBudget[l] * len[base + h] / hiL[l] : 0;
      floorH[h] = std::min(len[base + h], std::max(lo[base + h], (int32_t)std::floor(alpha * share)));
      floorSum += floorH[h];
    }
    if (floorSum > layerBudget[l]) {
      floorSum = 0;
      for (int h = 0; h < H; ++h) floorSum += (floorH[h] = lo[base + h]);
    }
    // Each head's tokens outside the forced ones: its best (floorH minus the forced) are its floor;
    // the rest of every head compete for the layer's remaining budget. One order throughout, by
    // score (NaN lowest), then head, then position, as selectKeep's within a head: selections
    // (linear) instead of full sorts of every head and a merge.
    struct Cand {
      float score;
      int head;
      int32_t token;
    };
    auto ahead = [](const Cand& a, const Cand& b) {
      return a.score > b.score || (a.score == b.score && (a.head < b.head || (a.head == b.head && a.token < b.token)));
    };
    std::vector<Cand> open, head;
    size_t candidates = 0;  // reserved at once: growing by doubling held up to twice as much
    for (int h = 0; h < H; ++h) candidates += (size_t)len[base + h];
    open.reserve(candidates);
    for (int h = 0; h < H; ++h) {
      keep[base + h] = floorH[h];
      const int32_t L = len[base + h];
      const int32_t front = std::min<int32_t>(sink, L), back = std::min<int32_t>(window, L - front);
      const float* sc = scores[base + h].data();
      head.clear();
      for (int32_t t = front; t < L - back; ++t) head.push_back({std::isnan(sc[t]) ? -INFINITY : sc[t], h, t});
      const size_t floorPart = std::min<size_t>(head.size(), (size_t)std::max<int32_t>(0, floorH[h] - front - back));
      if (floorPart > 0 && floorPart < head.size()) std::nth_element(head.begin(), head.begin() + floorPart, head.end(), ahead);
      open.insert(open.end(), head.begin() + floorPart, head.end());
    }
    const size_t take = (size_t)std::min<int64_t>((int64_t)open.size(), std::max<int64_t>(0, layerBudget[l] - floorSum));
    if (take > 0 && take < open.size()) std::nth_element(open.begin(), open.begin() + take, open.end(), ahead);
    for (size_t i = 0; i < take; ++i) keep[base + open[i].head]++;
  }
  return keep;
}

namespace {

// Σ_h clamp(x_h + t·T_h, lo_h, T_h) and its slope at t.
void shareSum(const std::vector<double>& x, const std::vector<double>& T, const std::vector<double>& lo, double t,
              double* g, double* slope) {
  *g = 0;
  *slope = 0;
  for (size_t h = 0; h < x.size(); ++h) {
    const double v = x[h] + t * T[h];
    if (v <= lo[h]) *g += lo[h];
    else if (v >= T[h]) *g += T[h];
    else {
      *g += v;
      *slope += T[h];
    }
  }
}

// The shift t with Σ clamp(x_h + t·T_h, lo_h, T_h) = K: Newton steps on the current linear piece,
// guarded by bisection (the sum is continuous, piecewise linear and non-decreasing in t).
double solveShift(const std::vector<double>& x, const std::vector<double>& T, const std::vector<double>& lo, double K,
                  double total) {
  double a = -1, b = 1, t = 0;
  // Tight: an error in t moves heads of different lengths by different amounts, which would
  // break the remainders' ties (Newton on the final linear piece lands on the root anyway).
  const double tol = 1e-12 * std::max(1.0, total);
  for (int iter = 0; iter < 200; ++iter) {
    double g, slope;
    shareSum(x, T, lo, t, &g, &slope);
    if (std::fabs(g - K) <= tol) return t;
    if (g < K) a = t;
    else b = t;
    const double newton = slope > 0 ? t + (K - g) / slope : NAN;
    t = newton > a && newton < b ? newton : (a + b) / 2;
    if (b - a < 1e-15) break;
  }
  return t;
}

}  // namespace

std::vector<int32_t> lukvBudgets(const HeadBounds& b, const std::vector<double>& prune, int64_t K) {
  const size_t H = b.len.size();
  if (prune.size() != H)
    throwInvalid("Expected " + str((int64_t)H) + " prune ratios (layers * kvHeads) but received " + str((int64_t)prune.size()));
  std::vector<double> T(H), lo(H), x(H);
  double total = 0, maxT = 1;
  for (size_t h = 0; h < H; ++h) {
    T[h] = b.len[h];
    lo[h] = b.lo[h];
    x[h] = (1 - prune[h]) * T[h];
    total += T[h];
    maxT = std::max(maxT, T[h]);
  }
  const double shift = solveShift(x, T, lo, (double)K, total);
  std::vector<int32_t> keep(H);
  std::vector<double> frac(H);
  int64_t left = K;
  // Remainders this close are equal up to the rounding of the shift and the shares: ties.
  const double eps = 1e-12 * maxT;
  for (size_t h = 0; h < H; ++h) {
    const double v = std::min(T[h], std::max(lo[h], x[h] + shift * T[h]));
    const double f = std::floor(v);
    keep[h] = (int32_t)f;
    frac[h] = v - f;
    left -= keep[h];
  }
  // Largest remainder: above the left-th largest remainder every head gets a unit, then the heads
  // at it (within eps) in index order.
  if (left > 0 && left <= (int64_t)H) {
    std::vector<double> sorted = frac;
    std::nth_element(sorted.begin(), sorted.begin() + (H - left), sorted.end());
    const double threshold = sorted[H - left];
    for (size_t h = 0; h < H && left > 0; ++h)
      if (frac[h] > threshold + eps && keep[h] < T[h]) keep[h]++, left--;
    for (size_t h = 0; h < H && left > 0; ++h)
      if (std::fabs(frac[h] - threshold) <= eps && keep[h] < T[h]) keep[h]++, left--;
  }
  if (left == 0) return keep;
  // Only reached through rounding error in the shift: whole passes in remainder order.
  std::vector<size_t> order(H);
  std::iota(order.begin(), order.end(), 0);
  const int step = left > 0 ? 1 : -1;
  if (step > 0) std::sort(order.begin(), order.end(), [&](size_t i, size_t j) { return frac[j] != frac[i] ? frac[j] < frac[i] : i < j; });
  else std::sort(order.begin(), order.end(), [&](size_t i, size_t j) { return frac[i] != frac[j] ? frac[i] < frac[j] : j < i; });
  for (int64_t before = left + 1; left != 0 && left != before;) {
    before = left;
    for (size_t k = 0; k < H && left != 0; ++k) {
      const size_t h = order[k];
      if (step > 0 ? keep[h] < T[h] : keep[h] > lo[h]) keep[h] += step, left -= step;
    }
  }
  return keep;
}

std::vector<int32_t> explicitBudgets(const HeadBounds& b, const std::vector<int32_t>& budgets) {
  std::vector<int32_t> keep(b.len.size());
  for (size_t i = 0; i < keep.size(); ++i) {
    if (budgets[i] < 0 || budgets[i] > b.len[i])
      throwInvalid("Expected budgets[" + str((int64_t)i) + "] between 0 and the head's length " + str(b.len[i]) +
                   " but received " + str(budgets[i]));
    keep[i] = std::max(b.lo[i], budgets[i]);
  }
  return keep;
}

std::vector<int32_t> keepOrder(const float* score, int32_t L, int sink, int window) {
  const int32_t front = std::min<int32_t>(sink, L), back = std::min<int32_t>(window, L - front);
  std::vector<int32_t> ord(L - front - back);
  std::iota(ord.begin(), ord.end(), front);
  std::sort(ord.begin(), ord.end(), [score](int32_t a, int32_t b) { return better(score, a, b); });
  return ord;
}

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
  if (fromMiddle > 0 && fromMiddle < (int32_t)middle.size())
    std::nth_element(middle.begin(), middle.begin() + fromMiddle, middle.end(),
                     [score](int32_t a, int32_t b) { return better(score, a, b); });
  middle.resize(std::max<int32_t>(0, fromMiddle));
  for (int32_t i = 0; i < front; ++i) kept.push_back(i);
  kept.insert(kept.end(), middle.begin(), middle.end());
  for (int32_t i = L - back; i < L; ++i) kept.push_back(i);
  std::sort(kept.begin(), kept.end());
  return kept;
}

// Pools the scores of the tokens eviction chooses among: those after the first `sink` and before
// the last `window` (selectKeep's ranges), each with its neighbours in that range only; the sink and
// window tokens, always kept, neither give nor take. "max" takes the largest score within kernel / 2
// tokens on either side, "avg" their mean over the neighbours in range (no zero padding: these
// scores may be negative). NaN scores count as absent; a token with only NaN around it stays NaN.
void poolTokenScores(float* s, int32_t L, int sink, int window, Pooling kind, int kernel) {
  const int32_t front = std::min<int32_t>(sink, L);
  const int32_t end = L - std::min<int32_t>(window, L - front);
  const int32_t r = kernel / 2;
  if (end - front < 2 || r < 1) return;
  std::vector<float> in(s + front, s + end);
  const int32_t n = end - front;
  for (int32_t j = 0; j < n; ++j) {
    const int32_t lo = std::max<int32_t>(0, j - r), hi = std::min<int32_t>(n - 1, j + r);
    if (kind == Pooling::Max) {
      float m = std::numeric_limits<float>::quiet_NaN();
      for (int32_t x = lo; x <= hi; ++x)
        if (!std::isnan(in[x]) && !(in[x] <= m)) m = in[x];
      s[front + j] = m;
    } else {
      double sum = 0;
      int count = 0;
      for (int32_t x = lo; x <= hi; ++x)
        if (!std::isnan(in[x])) sum += in[x], ++count;
      s[front + j] = count ? (float)(sum / count) : std::numeric_limits<float>::quiet_NaN();
    }
  }
}

}  // namespace lukv
