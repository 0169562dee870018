// optim.cuh: the element math of the optimizer update and of top-k, written once for the CUDA
// kernels (optim_kernels.cuh) and the CPU loops (cpu/optim.cpp).
#ifndef LSOFTMAX_OPTIM_CUH
#define LSOFTMAX_OPTIM_CUH

#include <math.h>

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

// Adam's per-step constants, formed once on the host from lsm_adam in double as PyTorch forms them
// (bias_correction1 = 1 - beta1^t, step_size = lr / bias_correction1, sqrt(bias_correction2)),
// the latter as its reciprocal: the element then divides once (the divider and the square root
// are what bounds the CPU's loop), within an ulp of PyTorch's division in double.
struct lsm_adam_coefs {
  double scale, weight_decay, decay, beta1, beta2, step_size, inv_bias2_sqrt, eps;
};

inline lsm_adam_coefs lsm_adam_coefs_of(const lsm_adam &o) {
  lsm_adam_coefs k;
  k.scale = o.grad_scale;
  k.weight_decay = o.weight_decay;
  k.decay = 1.0 - o.lr * o.weight_decay;
  k.beta1 = o.beta1;
  k.beta2 = o.beta2;
  k.step_size = o.lr / (1.0 - pow(o.beta1, (double)o.step));
  k.inv_bias2_sqrt = 1.0 / sqrt(1.0 - pow(o.beta2, (double)o.step));
  k.eps = o.eps;
  return k;
}

// lsm_adam's element modes: Adam without weight decay (none added: 0 * Inf would be NaN), Adam
// with L2 folded into the gradient, AdamW's decoupled decay.
enum lsm_adam_mode { LSM_ADAM_PLAIN = 0, LSM_ADAM_L2 = 1, LSM_ADAM_DECOUPLED = 2 };

// One element of PyTorch's Adam/AdamW, in double, each stored value (w, m, v, vmax) rounded to T
// once: g = scale grad (+ wd w: L2) or w (1 - lr wd) (decoupled); m = b1 m + (1 - b1) g; v = b2 v +
// (1 - b2) g^2; amsgrad: vmax = max(vmax, v); w -= step_size m / (sqrt(vmax or v) / bias2_sqrt +
// eps), the division by bias2_sqrt a product with its reciprocal. The mode and amsgrad come as arguments so that the CPU's specialised loops lose the branches.
template <typename T>
LSM_HD void lsm_adam_element(const lsm_adam_coefs &k, int mode, bool amsgrad, T *w, T grad, T *m, T *v, T *vmax) {
  double theta = (double)*w;
  double g = k.scale * (double)grad;
  if (mode == LSM_ADAM_L2) g += k.weight_decay * theta;
  if (mode == LSM_ADAM_DECOUPLED) theta *= k.decay;
  const double mn = k.beta1 * (double)*m + (1.0 - k.beta1) * g;
  const double vn = k.beta2 * (double)*v + (1.0 - k.beta2) * (g * g);
  *m = (T)mn;
  *v = (T)vn;
  double second = vn;
  if (amsgrad) {
    const double prev = (double)*vmax;
    second = prev > vn ? prev : vn;
    *vmax = (T)second;
  }
  const double denom = sqrt(second) * k.inv_bias2_sqrt + k.eps;
  *w = (T)(theta - k.step_size * (mn / denom));
}

// One element of y <- a x + b y in double, rounded once; the flags say which terms are read (a
// term with a zero factor is left out, so that 0 * NaN does not bring a NaN in).
template <typename T>
LSM_HD void lsm_axpby_element(double a, bool read_x, const T *x, double b, bool read_y, T *y) {
  double r = 0.0;
  if (read_x) r = a * (double)*x;
  if (read_y) r += b * (double)*y;
  *y = (T)r;
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
