#!/usr/bin/env python3
"""L-Softmax forward+backward: liblsoftmax (through ctypes) against PyTorch on the same GPU.

For each shape (N, D, C) in (64, 128, 1000), (256, 512, 10000), (512, 512, 100000), float32,
margin 4, lambda 0.5, the median wall-clock time of one forward plus one backward of:

  ours      the library's C ABI called through ctypes: a context (lsm_context_create), device
            buffers (lsm_malloc) filled once from host tensors (lsm_memcpy_to_context), then
            lsm_forward + lsm_backward per repetition. Both return when their results are in
            place (synchronous), so time.perf_counter around them measures the whole work.
  linear    PyTorch's plain linear layer on cuBLAS: logits = x @ W.T, then autograd
            logits.backward(G) with requires_grad on x and W (grad x = G @ W, grad W = G.T @ x).
  composed  the L-Softmax composed from PyTorch ops with autograd: logits = x @ W.T; the target
            logit replaced (out-of-place scatter) by (lambda * dot + |x| |w| psi(cos)) / (1 + lambda),
            psi from the Caffe layer's closed form for m = 4; then logits.backward(G).

The torch timings are wall-clock too, with torch.cuda.synchronize() before the clock starts and
before it stops; every variant is warmed up first and the median of --reps repetitions reported.
Ours is checked against the composed PyTorch result (logits, grad x, grad W: max |ours - torch|
over max |torch|), so the comparison is of equal work. The result is a Markdown table: ratio
ours/linear (goal <= 1.25) and ours/composed (goal < 1).

Precision: "exact" rows use IEEE float32 matrix products on both sides (torch TF32 off);
"tf32" rows use lsm_context_set_precision(ctx, LSM_PRECISION_TF32) for ours and TF32 cuBLAS for
torch. --precision auto (the default) gives exact rows, plus tf32 rows on compute capability 8.0+.

--backend cpu runs ours on the library's CPU backend: it exists to check the ctypes bindings
(signatures, int64 sizes, the double lambda, pointers, error messages) on a machine without a GPU
or PyTorch. It then checks ours against an independent float64 reference (numpy if present, else
plain Python on sampled rows), and times torch on the CPU only if torch is installed.

Exit status: 0 after the table, also when a goal is missed; 0 with "skipped: no torch" or
"skipped: no CUDA device" when there is nothing to compare on; 1 on a library error, an ABI
mismatch or results that disagree beyond the tolerance (1e-4 exact, 3e-2 tf32); 2 on bad options.

  python3 bench/torch_compare.py [--lib PATH] [--backend cuda|cpu] [--device K]
      [--precision auto|exact|tf32] [--shapes small|all|NxDxC,...] [--reps R] [--warmup W]
      [--out FILE]

Needs Python 3.8+, and for --backend cuda PyTorch with CUDA; nothing else is installed.
"""

import argparse
import array
import ctypes
import math
import os
import random
import statistics
import sys
import time
import warnings

LSM_OK, LSM_ERR_INVALID_ARGUMENT, LSM_ERR_UNAVAILABLE = 0, 1, 2
LSM_BACKEND_CPU, LSM_BACKEND_CUDA = 0, 1
LSM_FLOAT32 = 0
LSM_PRECISION_EXACT, LSM_PRECISION_TF32 = 0, 1
ABI_VERSION = 4
MARGIN, LAMBDA = 4, 0.5
LSM_MARGIN_LSOFTMAX = 0


class LsmMargin(ctypes.Structure):
    """struct lsm_margin of cuda/lsoftmax.h (144 bytes)."""
    _fields_ = [("kind", ctypes.c_int32), ("m", ctypes.c_int32), ("lambda_", ctypes.c_double),
                ("scale", ctypes.c_double), ("m1", ctypes.c_double), ("m2", ctypes.c_double),
                ("m3", ctypes.c_double), ("flags", ctypes.c_uint32), ("reserved_flags", ctypes.c_uint32),
                ("h", ctypes.c_double), ("t_alpha", ctypes.c_double), ("batch_mean", ctypes.c_double),
                ("batch_std", ctypes.c_double), ("t", ctypes.c_double), ("lower_norm", ctypes.c_double),
                ("upper_norm", ctypes.c_double), ("lambda_g", ctypes.c_double), ("upper_margin", ctypes.c_double),
                ("reserved", ctypes.c_double * 2)]


def margin(m, lam):
    """An L-Softmax margin, passed by pointer (ctypes converts the structure to its address)."""
    return ctypes.byref(LsmMargin(kind=LSM_MARGIN_LSOFTMAX, m=m, lambda_=lam))
SHAPES = [(64, 128, 1000), (256, 512, 10000), (512, 512, 100000)]
TOLERANCE = {"exact": 1e-4, "tf32": 3e-2}


class LsmError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# The library through ctypes


class Library:
    """liblsoftmax's C ABI (cuda/lsoftmax.h) with every signature declared."""

    def __init__(self, path):
        self.path = path
        self.dll = ctypes.CDLL(path)
        c_ctx, c_ptr = ctypes.c_void_p, ctypes.c_void_p
        i32, i64, size = ctypes.c_int32, ctypes.c_int64, ctypes.c_size_t
        sigs = {
            "lsm_version": (ctypes.c_char_p, []),
            "lsm_abi_version": (i32, []),
            "lsm_last_error": (ctypes.c_char_p, []),
            "lsm_device_count": (i32, [i32, ctypes.POINTER(i32)]),
            "lsm_device_name": (i32, [i32, i32, ctypes.c_char_p, size]),
            "lsm_context_create": (i32, [i32, i32, ctypes.POINTER(c_ctx)]),
            "lsm_context_destroy": (i32, [c_ctx]),
            "lsm_context_last_error": (ctypes.c_char_p, [c_ctx]),
            "lsm_context_info": (i32, [c_ctx, ctypes.POINTER(i32), ctypes.POINTER(i32)]),
            "lsm_context_set_precision": (i32, [c_ctx, i32]),
            "lsm_malloc": (i32, [c_ctx, size, ctypes.POINTER(c_ptr)]),
            "lsm_free": (i32, [c_ctx, c_ptr]),
            "lsm_memcpy_to_context": (i32, [c_ctx, c_ptr, c_ptr, size]),
            "lsm_memcpy_from_context": (i32, [c_ctx, c_ptr, c_ptr, size]),
            "lsm_synchronize": (i32, [c_ctx]),
            # ctx, dtype, n, d, c, margin, x, w, labels, logits
            "lsm_forward": (i32, [c_ctx, i32, i64, i64, i64, ctypes.POINTER(LsmMargin), c_ptr, c_ptr,
                                  c_ptr, c_ptr]),
            # ctx, dtype, n, d, c, margin, x, w, labels, grad_logits, grad_x, grad_w
            "lsm_backward": (i32, [c_ctx, i32, i64, i64, i64, ctypes.POINTER(LsmMargin), c_ptr, c_ptr,
                                   c_ptr, c_ptr, c_ptr, c_ptr]),
        }
        for name, (restype, argtypes) in sigs.items():
            f = getattr(self.dll, name)
            f.restype, f.argtypes = restype, argtypes
            setattr(self, name, f)

    def last_error(self):
        return (self.lsm_last_error() or b"").decode("utf-8", "replace")

    def context_error(self, ctx):
        return (self.lsm_context_last_error(ctx) or b"").decode("utf-8", "replace")

    def check(self, status, what, ctx=None):
        if status != LSM_OK:
            msg = self.context_error(ctx) if ctx else self.last_error()
            raise LsmError("%s: status %d: %s" % (what, status, msg or self.last_error()))

    def device_name(self, backend, device):
        buf = ctypes.create_string_buffer(512)
        self.check(self.lsm_device_name(backend, device, buf, len(buf)), "lsm_device_name")
        return buf.value.decode("utf-8", "replace")


class Context:
    def __init__(self, lib, backend, device):
        self.lib = lib
        handle = ctypes.c_void_p()
        lib.check(lib.lsm_context_create(backend, device, ctypes.byref(handle)), "lsm_context_create")
        self.handle = handle
        self.buffers = []

    def check(self, status, what):
        self.lib.check(status, what, self.handle)

    def malloc(self, nbytes):
        p = ctypes.c_void_p()
        self.check(self.lib.lsm_malloc(self.handle, nbytes, ctypes.byref(p)), "lsm_malloc(%d)" % nbytes)
        self.buffers.append(p.value)
        return p.value

    def free_all(self):
        for p in self.buffers:
            self.check(self.lib.lsm_free(self.handle, p), "lsm_free")
        self.buffers = []

    def to_context(self, dst, src_ptr, nbytes):
        self.check(self.lib.lsm_memcpy_to_context(self.handle, dst, src_ptr, nbytes), "lsm_memcpy_to_context")

    def from_context(self, dst_ptr, src, nbytes):
        self.check(self.lib.lsm_memcpy_from_context(self.handle, dst_ptr, src, nbytes), "lsm_memcpy_from_context")

    def set_precision(self, precision):
        return self.lib.lsm_context_set_precision(self.handle, precision)

    def forward(self, x, w, labels, n, d, c, logits):
        self.check(self.lib.lsm_forward(self.handle, LSM_FLOAT32, n, d, c, margin(MARGIN, LAMBDA), x, w, labels,
                                        logits),
                   "lsm_forward")

    def backward(self, x, w, labels, g, n, d, c, gx, gw):
        self.check(self.lib.lsm_backward(self.handle, LSM_FLOAT32, n, d, c, margin(MARGIN, LAMBDA), x, w, labels, g,
                                         gx, gw),
                   "lsm_backward")

    def destroy(self):
        if self.handle:
            self.free_all()
            self.lib.check(self.lib.lsm_context_destroy(self.handle), "lsm_context_destroy")
            self.handle = None


def abi_self_check(lib, ctx):
    """Bad arguments must come back as the documented status with a message naming the value
    passed: this shows that each int64 size, the double lambda and each pointer reaches its own
    parameter, and that both error functions work. Nothing here reaches a kernel."""
    p = ctx.malloc(4096)  # valid memory for every pointer (the checks stop before any use)
    q = ctx.malloc(4096)
    h = ctx.handle
    big = 2 ** 33
    cases = [
        ("n (int64)", lambda: lib.lsm_forward(h, LSM_FLOAT32, big, 1, 1, margin(MARGIN, LAMBDA), p, p, p, q),
         "n: expected an integer in [1, 2147483647], got %d" % big),
        ("d (int64)", lambda: lib.lsm_forward(h, LSM_FLOAT32, 1, big + 1, 1, margin(MARGIN, LAMBDA), p, p, p, q),
         "d: expected an integer in [1, 2147483647], got %d" % (big + 1)),
        ("c (int64)", lambda: lib.lsm_forward(h, LSM_FLOAT32, 1, 1, big + 2, margin(MARGIN, LAMBDA), p, p, p, q),
         "c: expected an integer in [1, 2147483647], got %d" % (big + 2)),
        ("margin", lambda: lib.lsm_forward(h, LSM_FLOAT32, 1, 1, 1, margin(17, LAMBDA), p, p, p, q),
         "margin.m: expected an integer in [1, 16], got 17"),
        ("lambda (double)", lambda: lib.lsm_forward(h, LSM_FLOAT32, 1, 1, 1, margin(MARGIN, -0.25), p, p, p, q),
         "margin.lambda: expected a finite number >= 0, got -0.25"),
        ("dtype", lambda: lib.lsm_forward(h, 7, 1, 1, 1, margin(MARGIN, LAMBDA), p, p, p, q),
         "dtype: expected LSM_FLOAT32 (0) or LSM_FLOAT64 (1), got 7"),
        ("forward logits NULL",
         lambda: lib.lsm_forward(h, LSM_FLOAT32, 1, 1, 1, margin(MARGIN, LAMBDA), p, p, p, None),
         "logits: expected a pointer, got NULL"),
        ("backward n (int64)",
         lambda: lib.lsm_backward(h, LSM_FLOAT32, big, 1, 1, margin(MARGIN, LAMBDA), p, p, p, p, q, p),
         "n: expected an integer in [1, 2147483647], got %d" % big),
        ("backward lambda (double)",
         lambda: lib.lsm_backward(h, LSM_FLOAT32, 1, 1, 1, margin(MARGIN, float("inf")), p, p, p, p, q, p),
         "margin.lambda: expected a finite number >= 0, got inf"),
        ("backward grad_logits NULL",
         lambda: lib.lsm_backward(h, LSM_FLOAT32, 1, 1, 1, margin(MARGIN, LAMBDA), p, p, p, None, q, p),
         "grad_logits: expected a pointer, got NULL"),
        ("backward grad_w NULL",
         lambda: lib.lsm_backward(h, LSM_FLOAT32, 1, 1, 1, margin(MARGIN, LAMBDA), p, p, p, p, q, None),
         "grad_w: expected a pointer, got NULL"),
        ("backward grad_w == grad_x",
         lambda: lib.lsm_backward(h, LSM_FLOAT32, 1, 1, 1, margin(MARGIN, LAMBDA), p, p, p, p, q, q),
         "grad_w: expected memory apart from grad_x, got the same pointer"),
        ("malloc size_t", lambda: lib.lsm_malloc(h, 0, ctypes.byref(ctypes.c_void_p())),
         "bytes: expected at least 1, got 0"),
    ]
    problems = []
    for name, call, expected in cases:
        status = call()
        thread_msg, ctx_msg = lib.last_error(), lib.context_error(h)
        if status != LSM_ERR_INVALID_ARGUMENT or not thread_msg.startswith(expected) or ctx_msg != thread_msg:
            problems.append("%s: status %d, lsm_last_error %r, lsm_context_last_error %r; expected status 1 "
                            "and a message starting %r" % (name, status, thread_msg, ctx_msg, expected))
    ctx.free_all()
    if problems:
        raise LsmError("ctypes binding self-check failed:\n  " + "\n  ".join(problems))
    return len(cases)


# ---------------------------------------------------------------------------------------------
# Host data: torch CPU tensors, numpy arrays or array.array, behind one small interface


class Host:
    def __init__(self, kind, torch=None, np=None):
        self.kind, self.torch, self.np = kind, torch, np

    def inputs(self, n, d, c, seed):
        """x [n, d], w [c, d], labels [n] int32, g [n, c]: float32, row-major, contiguous."""
        if self.kind == "torch":
            t = self.torch
            gen = t.Generator().manual_seed(seed)
            x = t.randn(n, d, generator=gen)
            w = t.randn(c, d, generator=gen) * 0.05
            labels = t.randint(0, c, (n,), generator=gen, dtype=t.int32)
            g = t.randn(n, c, generator=gen) / math.sqrt(c)
            return x, w, labels, g
        if self.kind == "numpy":
            np = self.np
            rng = np.random.default_rng(seed)
            x = rng.standard_normal((n, d), dtype=np.float32)
            w = rng.standard_normal((c, d), dtype=np.float32) * np.float32(0.05)
            labels = rng.integers(0, c, size=n, dtype=np.int32)
            g = rng.standard_normal((n, c), dtype=np.float32) / np.float32(math.sqrt(c))
            return x, w, labels, g
        rnd = random.Random(seed)
        x = array.array("f", (rnd.gauss(0, 1) for _ in range(n * d)))
        w = array.array("f", (rnd.gauss(0, 0.05) for _ in range(c * d)))
        labels = array.array("i", (rnd.randrange(c) for _ in range(n)))
        g = array.array("f", (rnd.gauss(0, 1 / math.sqrt(c)) for _ in range(n * c)))
        assert labels.itemsize == 4
        return x, w, labels, g

    def empty(self, rows, cols):
        if self.kind == "torch":
            return self.torch.empty(rows, cols)
        if self.kind == "numpy":
            return self.np.empty((rows, cols), dtype=self.np.float32)
        return array.array("f", bytes(4 * rows * cols))

    def ptr(self, a):
        if self.kind == "torch":
            assert a.is_contiguous() and a.device.type == "cpu"
            return a.data_ptr()
        if self.kind == "numpy":
            assert a.flags["C_CONTIGUOUS"]
            return a.ctypes.data
        return a.buffer_info()[0]

    def nbytes(self, a):
        if self.kind == "torch":
            return a.numel() * a.element_size()
        if self.kind == "numpy":
            return a.nbytes
        return len(a) * a.itemsize


# ---------------------------------------------------------------------------------------------
# References


def psi_general(cos, m):
    """psi(c) = (-1)^k T_m(c) - 2k and psi'(c) = (-1)^k m U_{m-1}(c) (the spec), in floats."""
    cos = max(-1.0, min(1.0, cos))
    k = min(max(int(math.floor(m * math.acos(cos) / math.pi)), 0), m - 1)
    t_prev, t = 1.0, cos  # T_0, T_1
    u_prev, u = 0.0, 1.0  # U_{-1}, U_0
    for _ in range(m - 1):
        t_prev, t = t, 2 * cos * t - t_prev
        u_prev, u = u, 2 * cos * u - u_prev
    sign = -1.0 if k % 2 else 1.0
    return sign * t - 2 * k, sign * m * u


def reference_numpy(np, x, w, labels, g):
    """Forward and backward in float64 from the spec's formulas (no autograd)."""
    x, w, g = x.astype(np.float64), w.astype(np.float64), g.astype(np.float64)
    n = x.shape[0]
    rows = np.arange(n)
    y = labels.astype(np.int64)
    logits = x @ w.T
    gx = g @ w
    gw = g.T @ x
    wy = w[y]
    dot = np.einsum("ij,ij->i", x, wy)
    xn, wn = np.linalg.norm(x, axis=1), np.linalg.norm(wy, axis=1)
    cos = np.clip(dot / (xn * wn), -1, 1)
    pp = [psi_general(float(cv), MARGIN) for cv in cos]
    psi = np.array([p[0] for p in pp])
    dpsi = np.array([p[1] for p in pp])
    logits[rows, y] = (LAMBDA * dot + xn * wn * psi) / (1 + LAMBDA)
    a = LAMBDA + dpsi
    b = psi - cos * dpsi
    gy = g[rows, y]
    # Replace the plain product's contribution of the target entry by the margin's.
    dx = ((a[:, None] * wy + (wn / xn * b)[:, None] * x) / (1 + LAMBDA) - wy) * gy[:, None]
    dw = ((a[:, None] * x + (xn / wn * b)[:, None] * wy) / (1 + LAMBDA) - x) * gy[:, None]
    gx += dx
    np.add.at(gw, y, dw)
    return logits, gx, gw


def compare_numpy(np, ours, ref):
    return [float(np.max(np.abs(o.astype(np.float64) - r)) / max(float(np.max(np.abs(r))), 1e-300))
            for o, r in zip(ours, ref)]


def compare_plain(x, w, labels, g, n, d, c, logits, gx, gw, rows=8, classes=8):
    """Without numpy: the reference on a sample of rows of logits and grad x and of classes of
    grad W (all samples summed), in plain Python float64."""
    rnd = random.Random(5)
    sample_rows = sorted(set([0, n - 1] + [rnd.randrange(n) for _ in range(rows)]))
    sample_classes = sorted(set([labels[0], labels[n - 1], 0, c - 1] + [rnd.randrange(c) for _ in range(classes)]))
    X = lambda i: x[i * d:(i + 1) * d]  # noqa: E731
    W = lambda j: w[j * d:(j + 1) * d]  # noqa: E731
    dotf = lambda a, b: math.fsum(p * q for p, q in zip(a, b))  # noqa: E731

    def target(i):
        xi, wy = X(i), W(labels[i])
        dot = dotf(xi, wy)
        xn, wn = math.sqrt(dotf(xi, xi)), math.sqrt(dotf(wy, wy))
        cos = max(-1.0, min(1.0, dot / (xn * wn)))
        psi, dpsi = psi_general(cos, MARGIN)
        a, b = LAMBDA + dpsi, psi - cos * dpsi
        f = (LAMBDA * dot + xn * wn * psi) / (1 + LAMBDA)
        dxi = [((a * wk + wn / xn * b * xk) / (1 + LAMBDA) - wk) for xk, wk in zip(xi, wy)]
        dwy = [((a * xk + xn / wn * b * wk) / (1 + LAMBDA) - xk) for xk, wk in zip(xi, wy)]
        return f, dxi, dwy

    targets = {}
    worst = [0.0, 0.0, 0.0]
    scale = [0.0, 0.0, 0.0]
    for i in sample_rows:
        f, dxi, _ = targets.setdefault(i, target(i))
        xi = X(i)
        for j in range(c):
            r = f if j == labels[i] else dotf(xi, W(j))
            worst[0] = max(worst[0], abs(logits[i * c + j] - r))
            scale[0] = max(scale[0], abs(r))
        gi = g[i * c:(i + 1) * c]
        gy = gi[labels[i]]
        for k in range(d):
            r = math.fsum(gi[j] * w[j * d + k] for j in range(c)) + gy * dxi[k]
            worst[1] = max(worst[1], abs(gx[i * d + k] - r))
            scale[1] = max(scale[1], abs(r))
    for j in sample_classes:
        acc = [0.0] * d
        for i in range(n):
            gij = g[i * c + j]
            xi = X(i)
            for k in range(d):
                acc[k] += gij * xi[k]
            if labels[i] == j:
                _, _, dwy = targets.setdefault(i, target(i))
                for k in range(d):
                    acc[k] += gij * dwy[k]
        for k in range(d):
            worst[2] = max(worst[2], abs(gw[j * d + k] - acc[k]))
            scale[2] = max(scale[2], abs(acc[k]))
    return [wv / max(s, 1e-300) for wv, s in zip(worst, scale)]


# ---------------------------------------------------------------------------------------------
# PyTorch variants


def caffe_psi4(torch, cos):
    """The Caffe layer's closed form for m = 4 (sign() has zero gradient, as there)."""
    c2 = cos * cos
    s0 = torch.sign(cos)
    s3 = s0 * torch.sign(2 * c2 - 1)
    return s3 * (8 * c2 * c2 - 8 * c2 + 1) + 2 * s0 + s3 - 3


def torch_composed(torch, x, w, labels64):
    logits = x @ w.t()
    col = labels64.unsqueeze(1)
    dot = logits.gather(1, col).squeeze(1)
    xn = x.norm(dim=1)
    wn = w.index_select(0, labels64).norm(dim=1)
    cos = (dot / (xn * wn)).clamp(-1, 1)
    target = (LAMBDA * dot + xn * wn * caffe_psi4(torch, cos)) / (1 + LAMBDA)
    return logits.scatter(1, col, target.unsqueeze(1))


def torch_linear(torch, x, w, labels64):
    return x @ w.t()


def set_torch_tf32(torch, on):
    # torch >= 2.9: the new API only (mixing it with allow_tf32 makes torch raise); older: the old.
    # (hasattr is no test: torch 1.x's matmul module raises AssertionError for unknown names.)
    try:
        new_api = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 9)
    except ValueError:
        new_api = False
    m = torch.backends.cuda.matmul
    if new_api:
        try:
            m.fp32_precision = "tf32" if on else "ieee"
            return
        except Exception:  # an unforeseen version: fall back to the old flag
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.allow_tf32 = on


# ---------------------------------------------------------------------------------------------
# Timing


def median_ms(fn, warmup, reps, sync=None):
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(reps):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def fmt_ms(v):
    return "n/a" if v is None else ("%.3f" % v if v < 10 else "%.1f" % v)


def fmt_ratio(a, b, goal, strict):
    if a is None or b is None:
        return "n/a"
    r = a / b
    ok = r < goal if strict else r <= goal
    return "%.2f %s" % (r, "ok" if ok else "MISSED")


def parse_shapes(spec):
    if spec == "all":
        return list(SHAPES)
    if spec == "small":
        return SHAPES[:1]
    out = []
    for part in spec.split(","):
        try:
            n, d, c = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError("expected small, all or NxDxC[,NxDxC...], got %r" % spec)
        if min(n, d, c) < 1:
            raise argparse.ArgumentTypeError("sizes must be >= 1, got %r" % part)
        out.append((n, d, c))
    return out


def main(argv=None):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", default=os.environ.get("LSOFTMAX_LIB") or os.path.join(root, "build", "liblsoftmax.so"),
                    help="the library (default $LSOFTMAX_LIB, else build/liblsoftmax.so)")
    ap.add_argument("--backend", choices=["cuda", "cpu"], default="cuda",
                    help="ours on CUDA (default) or on the CPU backend (to check the bindings without a GPU)")
    ap.add_argument("--device", type=int, default=0, help="CUDA device index for ours and torch (default 0)")
    ap.add_argument("--precision", choices=["auto", "exact", "tf32"], default="auto",
                    help="auto: exact rows, plus tf32 rows on sm_80+ (default)")
    ap.add_argument("--shapes", type=parse_shapes, default=None,
                    help="small, all or NxDxC,... (default all on cuda, small on cpu)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (median; default 20 cuda, 3 cpu)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed repetitions first (default 3 cuda, 1 cpu)")
    ap.add_argument("--out", help="also write the table (Markdown) to this file")
    ap.add_argument("--host", choices=["auto", "numpy", "array"], default="auto",
                    help=argparse.SUPPRESS)  # host arrays when torch is absent (testing the fallback)
    args = ap.parse_args(argv)
    cuda = args.backend == "cuda"
    shapes = args.shapes or (list(SHAPES) if cuda else SHAPES[:1])
    reps = args.reps if args.reps is not None else (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    if reps < 1 or warmup < 0:
        ap.error("--reps must be >= 1 and --warmup >= 0")

    def say(*a):
        print(*a, flush=True)

    torch = np = None
    try:
        import torch  # noqa: F811
    except Exception as e:  # ImportError, or a broken install
        torch = None
        if cuda:
            say("skipped: no torch (import torch: %s)" % e)
            return 0
    if cuda and not torch.cuda.is_available():
        say("skipped: no CUDA device (torch %s sees none)" % torch.__version__)
        return 0
    if args.host != "array":
        try:
            import numpy as np  # noqa: F811
        except ImportError:
            np = None
            if args.host == "numpy":
                ap.error("--host numpy: numpy is not installed")

    try:
        lib = Library(args.lib)
    except OSError as e:
        say("error: cannot load the library %s: %s (build it with make, or pass --lib)" % (args.lib, e))
        return 1
    abi = lib.lsm_abi_version()
    if abi != ABI_VERSION:
        say("error: %s has ABI version %d, this script speaks %d" % (args.lib, abi, ABI_VERSION))
        return 1

    backend = LSM_BACKEND_CUDA if cuda else LSM_BACKEND_CPU
    device = args.device if cuda else 0
    count = ctypes.c_int32(-1)
    status = lib.lsm_device_count(backend, ctypes.byref(count))
    if status != LSM_OK or count.value <= device:
        say("error: the library sees %d %s device(s) (status %d: %s)" % (count.value, args.backend, status,
                                                                      lib.last_error()))
        return 1
    ours_device = lib.device_name(backend, device)
    if cuda:
        torch.cuda.set_device(device)
        tdev = torch.device("cuda", device)
        machine = torch.cuda.get_device_name(device)
        cap = torch.cuda.get_device_capability(device)
        sync = torch.cuda.synchronize
    else:
        tdev = torch.device("cpu") if torch else None
        machine = ours_device
        cap = None
        sync = None
    host = Host("torch" if torch else ("numpy" if np is not None else "array"), torch, np)

    say("liblsoftmax %s (ABI %d) at %s; ours on %s device %d: %s" % (
        lib.lsm_version().decode(), abi, args.lib, args.backend, device, ours_device))
    if torch:
        say("torch %s (CUDA %s) on %s%s" % (torch.__version__, torch.version.cuda, machine,
                                            " sm_%d%d" % cap if cap else ""))
    else:
        say("torch: not installed; checking ours against a float64 reference (%s)" % host.kind)
    say("float32, margin %d, lambda %g; median of %d after %d warm-up; host arrays: %s" % (
        MARGIN, LAMBDA, reps, warmup, host.kind))

    ctx = Context(lib, backend, device)
    failed = False
    rows = []
    try:
        say("ctypes self-check: %d bad calls answered with status 1 and the expected messages" %
            abi_self_check(lib, ctx))
        precisions = []
        if args.precision in ("auto", "exact"):
            precisions.append("exact")
        if args.precision == "tf32" or (args.precision == "auto" and cuda and cap >= (8, 0)):
            s = ctx.set_precision(LSM_PRECISION_TF32)
            if s == LSM_OK:
                precisions.append("tf32")
                ctx.check(ctx.set_precision(LSM_PRECISION_EXACT), "lsm_context_set_precision(exact)")
            else:
                msg = lib.context_error(ctx.handle)
                say("tf32 rows skipped: lsm_context_set_precision: status %d: %s" % (s, msg))
                if args.precision == "tf32":
                    failed = True
        for (n, d, c) in shapes:
            run_shape(rows, ctx, host, torch, np, tdev, sync, n, d, c, precisions, warmup, reps, say)
    except LsmError as e:
        say("error: %s" % e)
        failed = True
    finally:
        ctx.destroy()

    ref_name = "composed torch" if torch else "float64 reference"
    lines = [
        "| %s | shape (N, D, C) | precision | ours ms (fwd + bwd) | torch linear ms | composed torch ms "
        "| ours/linear (goal <= 1.25) | ours/composed (goal < 1) | max rel err vs %s: logits, grad x, grad W |"
        % ("GPU" if cuda else "CPU", ref_name),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["errors"] is None:
            err = "n/a"
        else:
            err = ", ".join("%.1e" % e for e in r["errors"])
            if not r["agree"]:
                err += " DISAGREE (tolerance %.0e)" % TOLERANCE[r["precision"]]
                failed = True
        lines.append("| %s | (%d, %d, %d) | %s | %s (%s + %s) | %s | %s | %s | %s | %s |" % (
            machine, r["n"], r["d"], r["c"], r["precision"], fmt_ms(r["ours"]), fmt_ms(r["ours_fwd"]),
            fmt_ms(r["ours_bwd"]), fmt_ms(r["linear"]), fmt_ms(r["composed"]),
            fmt_ratio(r["ours"], r["linear"], 1.25, False), fmt_ratio(r["ours"], r["composed"], 1.0, True), err))
    note = ("Wall-clock medians of one forward + backward, float32, margin %d, lambda %g, %d reps after %d "
            "warm-up; ours through ctypes (lsm_forward + lsm_backward, synchronous); " % (MARGIN, LAMBDA, reps, warmup))
    if torch:
        note += ("torch linear = x @ W.T with autograd backward(G); composed = the L-Softmax from torch ops "
                 "(Caffe m=4 closed form, scatter into the target column) with autograd backward(G); exact rows "
                 "with TF32 off on both sides, tf32 rows with it on for both.")
    else:
        note += ("no torch: errors against an independent float64 reference of the spec's formulas (%s)."
                 % ("numpy" if host.kind == "numpy" else "plain Python, sampled rows and classes"))
    table = "\n".join(lines)
    say("")
    say(table)
    say("")
    say(note)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n\n" + note + "\n")
    return 1 if failed else 0


def run_shape(rows, ctx, host, torch, np, tdev, sync, n, d, c, precisions, warmup, reps, say):
    x, w, labels, g = host.inputs(n, d, c, seed=1000 + n + d + c)
    nbytes = [host.nbytes(a) for a in (x, w, labels, g)]
    assert nbytes == [4 * n * d, 4 * c * d, 4 * n, 4 * n * c]
    dx, dw, dl, dg = (ctx.malloc(b) for b in nbytes)
    dlogits, dgx, dgw = ctx.malloc(4 * n * c), ctx.malloc(4 * n * d), ctx.malloc(4 * c * d)
    for dst, a, b in zip((dx, dw, dl, dg), (x, w, labels, g), nbytes):
        ctx.to_context(dst, host.ptr(a), b)

    t_fwd, t_bwd = [], []

    def ours():
        t0 = time.perf_counter()
        ctx.forward(dx, dw, dl, n, d, c, dlogits)
        t1 = time.perf_counter()
        ctx.backward(dx, dw, dl, dg, n, d, c, dgx, dgw)
        t_fwd.append(t1 - t0)
        t_bwd.append(time.perf_counter() - t1)

    tt = None
    if torch:
        tt = {
            "x": x.to(tdev).requires_grad_(True),
            "w": w.to(tdev).requires_grad_(True),
            "labels": labels.to(tdev).long(),
            "g": g.to(tdev),
        }
        if sync:
            sync()

    def torch_step(fn):
        def step():
            tt["x"].grad = None
            tt["w"].grad = None
            fn(torch, tt["x"], tt["w"], tt["labels"]).backward(tt["g"])
        return step

    for precision in precisions:
        ctx.check(ctx.set_precision(LSM_PRECISION_TF32 if precision == "tf32" else LSM_PRECISION_EXACT),
                  "lsm_context_set_precision(%s)" % precision)
        if torch and tdev.type == "cuda":
            set_torch_tf32(torch, precision == "tf32")
        del t_fwd[:], t_bwd[:]
        ours_ms = median_ms(ours, warmup, reps)
        fwd_ms = statistics.median(t_fwd[warmup:]) * 1e3
        bwd_ms = statistics.median(t_bwd[warmup:]) * 1e3
        linear_ms = composed_ms = None
        if torch:
            linear_ms = median_ms(torch_step(torch_linear), warmup, reps, sync)
            composed_ms = median_ms(torch_step(torch_composed), warmup, reps, sync)

        # Agreement: one more call of each, ours copied back to the host.
        ours()
        logits, gx, gw = host.empty(n, c), host.empty(n, d), host.empty(c, d)
        for a, src in ((logits, dlogits), (gx, dgx), (gw, dgw)):
            ctx.from_context(host.ptr(a), src, host.nbytes(a))
        if torch:
            torch_step(torch_composed)()
            with torch.no_grad():
                ref_logits = torch_composed(torch, tt["x"], tt["w"], tt["labels"])
                errors = []
                for o, r in ((logits, ref_logits), (gx, tt["x"].grad), (gw, tt["w"].grad)):
                    o = o.to(tdev, dtype=torch.float64)
                    r = r.to(torch.float64)
                    errors.append(float((o - r).abs().max() / r.abs().max().clamp_min(1e-300)))
                del ref_logits
        elif host.kind == "numpy":
            errors = compare_numpy(np, (logits, gx, gw), reference_numpy(np, x, w, labels, g))
        else:
            errors = compare_plain(x, w, labels, g, n, d, c, logits, gx, gw)
        agree = all(e <= TOLERANCE[precision] for e in errors) and all(math.isfinite(e) for e in errors)
        rows.append({"n": n, "d": d, "c": c, "precision": precision, "ours": ours_ms, "ours_fwd": fwd_ms,
                     "ours_bwd": bwd_ms, "linear": linear_ms, "composed": composed_ms, "errors": errors,
                     "agree": agree})
        say("(%d, %d, %d) %s: ours %s ms (forward %s + backward %s), torch linear %s, composed %s; "
            "max rel err %s" % (n, d, c, precision, fmt_ms(ours_ms), fmt_ms(fwd_ms), fmt_ms(bwd_ms),
                                fmt_ms(linear_ms), fmt_ms(composed_ms),
                                ", ".join("%.1e" % e for e in errors)))
    ctx.free_all()
    if torch and tdev.type == "cuda":
        set_torch_tf32(torch, False)
        del tt
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
