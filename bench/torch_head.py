#!/usr/bin/env python3
"""A training step of a resident head (MarginHead's native sequence) against a PyTorch head on the same GPU.

For each shape (N, D, C) in (256, 512, 10000), (512, 512, 100000), (512, 256, 1000000), float32,
mean cross-entropy, SGD with lr 1e-3 and momentum 0.9, the median wall-clock time of one step and
the steps per second:

  ours      what MarginHead.step runs, through ctypes: x and labels copied in, lsm_loss (loss rows,
            grad x, grad W on the device), lsm_sgd_update (W and its momentum in place), lsm_sum
            (the loss, 8 bytes back), grad x copied out. W never leaves the device. Margin 1 (the
            plain linear layer, PyTorch's math) and margin 4 (L-Softmax, lambda 0.5).
  torch     a bias-free nn.Linear, F.cross_entropy, torch.optim.SGD(momentum=0.9): x and labels
            copied in, forward, backward, the optimizer step, grad x copied out and loss.item().

Both start from the same W; after three steps at margin 1 the weights and the last loss are
compared (max |ours - torch| / max |torch|). Exact rows have TF32 off on both sides; tf32 rows
(sm_80+) have it on for both.

--backend cpu runs ours on the CPU backend against a numpy float64 head (no torch needed), and
without torch the CUDA backend (the emulated library too) is checked the same way: the bindings
here. Exit status 1 on a library error or a disagreement beyond 1e-4 (exact)
or 3e-2 (tf32).

  python3 bench/torch_head.py [--lib PATH] [--backend cuda|cpu] [--shapes NxDxC,...] [--reps R]
      [--out FILE]
"""

import ctypes
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_compare as tc  # noqa: E402
from torch_loss import LsmLossArgs, bind_loss, finish, open_bench, use_precision  # noqa: E402

SHAPES = [(256, 512, 10000), (512, 512, 100000), (512, 256, 1000000)]
LR, MOMENTUM, STEPS = 1e-3, 0.9, 3


class LsmSgd(ctypes.Structure):
    """struct lsm_sgd of cuda/lsoftmax.h (40 bytes)."""
    _fields_ = [("lr", ctypes.c_double), ("momentum", ctypes.c_double), ("weight_decay", ctypes.c_double),
                ("nesterov", ctypes.c_int32), ("first", ctypes.c_int32), ("nonfinite", ctypes.c_int32),
                ("reserved", ctypes.c_int32)]


def bind(lib):
    p = ctypes.c_void_p
    sgd = lib.dll.lsm_sgd_update
    # ctx, dtype, count, sgd, w, grad, velocity, nonfinite (NULL: LSM_SGD_APPLY asks no check)
    sgd.restype, sgd.argtypes = ctypes.c_int32, [p, ctypes.c_int32, ctypes.c_int64, ctypes.POINTER(LsmSgd), p, p, p, p]
    total = lib.dll.lsm_sum
    total.restype, total.argtypes = ctypes.c_int32, [p, p, ctypes.c_int64, ctypes.POINTER(ctypes.c_double)]
    return bind_loss(lib), sgd, total


class OurHead:
    """W, its gradient and momentum on a context; step() is MarginHead.step's native sequence."""

    def __init__(self, ctx, fns, host, w, n, d, c):
        self.ctx, (self.loss, self.sgd, self.sum), self.host = ctx, fns, host
        self.n, self.d, self.c = n, d, c
        self.w, self.gw, self.v = ctx.malloc(4 * c * d), ctx.malloc(4 * c * d), ctx.malloc(4 * c * d)
        self.dx, self.dl = ctx.malloc(4 * n * d), ctx.malloc(4 * n)
        self.rows, self.dgx = ctx.malloc(8 * n), ctx.malloc(4 * n * d)
        ctx.to_context(self.w, host.ptr(w), 4 * c * d)
        self.args = LsmLossArgs(class_offset=0, total_classes=c, grad_scale=1.0 / n)
        self.first = True
        self.gx = host.empty(n, d)

    def step(self, x, labels, m):
        ctx, n, d, c = self.ctx, self.n, self.d, self.c
        ctx.to_context(self.dx, self.host.ptr(x), 4 * n * d)
        ctx.to_context(self.dl, self.host.ptr(labels), 4 * n)
        ctx.check(self.loss(ctx.handle, tc.LSM_FLOAT32, n, d, c, tc.margin(m, tc.LAMBDA if m > 1 else 0.0),
                            ctypes.byref(self.args), self.dx, self.w, self.dl, self.rows, self.dgx, self.gw),
                  "lsm_loss")
        o = LsmSgd(lr=LR, momentum=MOMENTUM, weight_decay=0.0, nesterov=0, first=1 if self.first else 0)
        ctx.check(self.sgd(ctx.handle, tc.LSM_FLOAT32, c * d, ctypes.byref(o), self.w, self.gw, self.v, None),
                  "lsm_sgd_update")
        self.first = False
        out = ctypes.c_double()
        ctx.check(self.sum(ctx.handle, self.rows, n, ctypes.byref(out)), "lsm_sum")
        ctx.from_context(self.host.ptr(self.gx), self.dgx, 4 * n * d)
        return out.value / n

    def weights(self):
        w = self.host.empty(self.c, self.d)
        self.ctx.from_context(self.host.ptr(w), self.w, 4 * self.c * self.d)
        return w


def numpy_head(np, w, batches):
    """The linear head and PyTorch's SGD with momentum in float64: the last loss and W."""
    w, v, loss = w.astype(np.float64), None, None
    for x, labels in batches:
        x, n = x.astype(np.float64), x.shape[0]
        z = x @ w.T
        z -= z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        loss = float(np.mean(lse - z[np.arange(n), labels]))
        g = np.exp(z - lse[:, None])
        g[np.arange(n), labels] -= 1.0
        gw = (g / n).T @ x
        v = gw if v is None else MOMENTUM * v + gw
        w = w - LR * v
    return loss, w


def main(argv=None):
    b = open_bench(argv, __doc__, SHAPES, numpy_without_torch=True)
    if isinstance(b, int):
        return b
    cuda, shapes, reps, say = b.cuda, b.shapes, b.reps, b.say
    torch, F, np, ctx, precisions, host = b.torch, b.F, b.np, b.ctx, b.precisions, b.host
    fns = bind(b.lib)
    failed, lines = False, []
    try:
        for (n, d, c) in shapes:
            x, w, labels, _ = host.inputs(n, d, c, seed=11 + n + c)
            for precision in precisions:
                use_precision(ctx, precision)
                # Agreement at margin 1, from the same W, over STEPS steps of the same batch.
                ours = OurHead(ctx, fns, host, w, n, d, c)
                for _ in range(STEPS):
                    our_loss = ours.step(x, labels, 1)
                our_w = ours.weights()
                timings = {}
                for m in (1, tc.MARGIN):
                    timings[m] = tc.median_ms(lambda: ours.step(x, labels, m), 2, reps)
                torch_ms = None
                if torch and cuda:
                    tc.set_torch_tf32(torch, precision == "tf32")
                    dev = torch.device("cuda", 0)
                    head = torch.nn.Linear(d, c, bias=False).to(dev)
                    with torch.no_grad():
                        head.weight.copy_(w.to(dev))
                    opt = torch.optim.SGD(head.parameters(), lr=LR, momentum=MOMENTUM)

                    def torch_step():
                        tx = x.to(dev).requires_grad_(True)
                        out = F.cross_entropy(head(tx), labels.to(dev).long())
                        opt.zero_grad(set_to_none=True)
                        out.backward()
                        opt.step()
                        tx.grad.cpu()
                        return out.item()

                    for _ in range(STEPS):
                        ref_loss = torch_step()
                    ref_w = head.weight.detach().double().cpu()
                    errs = [abs(our_loss - ref_loss) / abs(ref_loss),
                            float((our_w.double() - ref_w).abs().max() / ref_w.abs().max())]
                    torch_ms = tc.median_ms(torch_step, 2, reps, torch.cuda.synchronize)
                    del head, opt
                    torch.cuda.empty_cache()
                else:
                    ref_loss, ref_w = numpy_head(np, w, [(x, labels)] * STEPS)
                    errs = [abs(our_loss - ref_loss) / abs(ref_loss),
                            float(np.abs(our_w - ref_w).max() / np.abs(ref_w).max())]
                ctx.free_all()
                tol = 3e-2 if precision == "tf32" else 1e-4
                ok = all(e <= tol for e in errs)
                failed = failed or not ok
                rate = (lambda ms: "n/a" if ms is None else "%.0f" % (1e3 / ms))
                lines.append("| (%d, %d, %d) | %s | %s (%s/s) | %s (%s/s) | %s (%s/s) | %s | %s%s |" % (
                    n, d, c, precision, tc.fmt_ms(timings[1]), rate(timings[1]), tc.fmt_ms(timings[tc.MARGIN]),
                    rate(timings[tc.MARGIN]), tc.fmt_ms(torch_ms), rate(torch_ms),
                    tc.fmt_ratio(timings[1], torch_ms, 1.0, False), ", ".join("%.1e" % e for e in errs),
                    "" if ok else " DISAGREE"))
                say(lines[-1])
    except tc.LsmError as e:
        say("error: %s" % e)
        failed = True
    finally:
        ctx.destroy()
    note = ("Median wall-clock of one training step (x and labels in, loss, grad W, SGD momentum %g, grad x out), "
            "float32, %d reps; ours: MarginHead's native sequence; torch: nn.Linear(bias=False), "
            "F.cross_entropy, optim.SGD." % (MOMENTUM, reps))
    finish(b, [
        "| shape (N, D, C) | precision | ours m=1 ms (steps/s) | ours m=%d ms (steps/s) | torch head ms (steps/s) "
        "| ours m=1 / torch | rel err after %d steps: loss, W |" % (tc.MARGIN, STEPS),
        "|---|---|---|---|---|---|---|"], lines, note)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
