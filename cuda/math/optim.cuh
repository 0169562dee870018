// optim.cuh: the element math of the optimizer update and of top-k, written once for the CUDA
// kernels (optim_kernels.cuh) and the CPU loops (cpu/optim.cpp).
#ifndef LSOFTMAX_OPTIM_CUH
#define LSOFTMAX_OPTIM_CUH

#include "math/margin.cuh"  // LSM_HD

// One element of PyTorch's SGD (dampening 0), in double, each stored value rounded to T once:
// g = grad + wd w; v = first ? g : mu v + g; w -= lr (nesterov ? g + mu v : v) (without momentum:
// w -= lr g, v untouched). The flags come as arguments so that a loop passing constants (the CPU's
// specialised loops) loses the branches and vectorises.
template <typename T>
LSM_HD void lsm_sgd_element(const lsm_sgd &o, bool momentum, bool nesterov, bool first, T *w, T grad, T *v) {
  const double g = (double)grad + o.weight_decay * (double)*w;
  double step = g;
  if (momentum) {
    const double vn = first ? g : o.momentum * (double)*v + g;
    *v = (T)vn;
    step = nesterov ? g + o.momentum * vn : vn;
  }
  *w = (T)((double)*w - o.lr * step);
}

// Whether a gradient element is finite (neither NaN nor an infinity): v - v is exactly 0 then and
// NaN otherwise. The non-finite policy of the update (lsm_sgd.nonfinite) reduces this over grad.
template <typename T>
LSM_HD bool lsm_finite(T v) {
  return v - v == T(0);
}

// The top-k order: a before b when its score is higher, or equal with a lower class index; NaN
// after every number (and among NaNs, by index). A total order, so every backend and every split
// of the classes gives the same list.
template <typename T>
LSM_HD bool lsm_topk_before(T a, int ia, T b, int ib) {
  const bool na = a != a, nb = b != b;
  if (na != nb) return nb;
  if (!na && a != b) return a > b;
  return ia < ib;
}

// Inserts (s, i) into the sorted list (scores, idx) of `size` entries, at most k kept. Returns
// the new size.
template <typename T>
LSM_HD int lsm_topk_insert(T *scores, int *idx, int size, int k, T s, int i) {
  if (size == k && !lsm_topk_before(s, i, scores[k - 1], idx[k - 1])) return size;
  int at = size < k ? size : k - 1;
  while (at > 0 && lsm_topk_before(s, i, scores[at - 1], idx[at - 1])) {
    scores[at] = scores[at - 1];
    idx[at] = idx[at - 1];
    --at;
  }
  scores[at] = s;
  idx[at] = i;
  return size < k ? size + 1 : size;
}

#endif  // LSOFTMAX_OPTIM_CUH
