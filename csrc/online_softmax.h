// Running-max softmax state for one query (shared by CPU and CUDA kernels).
#pragma once

#include <cmath>
#include <limits>

#include "pattern.h"

namespace fibsparse {

template <typename Acc>
struct OnlineSoftmax {
  Acc max = -std::numeric_limits<Acc>::infinity();
  Acc sum = Acc(0);

  // Takes one score; returns the factor by which the running output must be
  // scaled and sets `weight` to the new key's weight, both relative to the
  // new running max. A score of -inf has weight 0 wherever it comes: while
  // every score so far is -inf, weights are taken relative to 0 instead of the
  // max, so exp(-inf - -inf) never makes a NaN.
  FIBSPARSE_HD Acc add(Acc score, Acc& weight) {
    const Acc new_max = score > max ? score : max;
    const Acc reference = new_max == -std::numeric_limits<Acc>::infinity() ? Acc(0) : new_max;
    const Acc rescale = exp(max - reference);  // exp(-inf) = 0 on the first key
    weight = exp(score - reference);
    sum = sum * rescale + weight;
    max = new_max;
    return rescale;
  }

  // log(sum_j exp(score_j)): -inf for a query whose every score is -inf; NaN
  // for one with a NaN or +inf score (+inf / +inf has no value).
  FIBSPARSE_HD Acc lse() const { return max + log(sum); }

  // The factor that normalizes the running output: 0 when every weight is 0
  // (the output of a query whose every score is -inf is 0, as in
  // FlashAttention), so 0 / 0 never makes a NaN.
  FIBSPARSE_HD Acc normalizer() const { return sum == Acc(0) ? Acc(0) : Acc(1) / sum; }
};

// A key's probability as the backward recomputes it from the row's lse: 0 in
// a query whose every score is -inf (lse -inf), where exp(-inf - -inf) would be NaN.
template <typename Acc>
FIBSPARSE_HD Acc prob_from_lse(Acc score, Acc lse) {
  return lse == -std::numeric_limits<Acc>::infinity() ? Acc(0) : exp(score - lse);
}

// d loss / d score = prob * (dp - delta); 0 in a query whose every score is
// -inf, whose output is 0 whatever its keys and values hold (so a non-finite
// value there, in dp or delta, stays out of the gradients).
template <typename Acc>
FIBSPARSE_HD Acc dscore_from(Acc prob, Acc dp, Acc delta, Acc lse) {
  return lse == -std::numeric_limits<Acc>::infinity() ? Acc(0) : prob * (dp - delta);
}

}  // namespace fibsparse
