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
  // new running max.
  FIBSPARSE_HD Acc add(Acc score, Acc& weight) {
    const Acc new_max = score > max ? score : max;
    const Acc rescale = exp(max - new_max);  // exp(-inf) = 0 on the first key
    weight = exp(score - new_max);
    sum = sum * rescale + weight;
    max = new_max;
    return rescale;
  }

  // log(sum_j exp(score_j)); the key set is never empty (distance 0).
  FIBSPARSE_HD Acc lse() const { return max + log(sum); }
};

}  // namespace fibsparse
