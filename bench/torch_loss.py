#!/usr/bin/env python3
"""The fused L-Softmax cross-entropy (lsm_loss) against PyTorch's F.cross_entropy on the same GPU.

For each shape (N, D, C) in (256, 512, 10000), (512, 512, 100000), (512, 256, 1000000), float32,
margin 4, lambda 0.5, mean reduction, the median wall-clock time of the loss and both gradients:

  ours      lsm_loss through ctypes on device buffers (one call: loss rows, grad x, grad W; no
            N x C buffer, a 64 MiB workspace), synchronous.
  linear    F.cross_entropy(x @ W.T, labels).backward(): the plain linear layer and its loss.
  composed  F.cross_entropy on the L-Softmax composed from torch ops (bench/torch_compare.py's
            torch_composed), then backward(): the same loss as ours.

Ours is checked against "composed" (the loss, grad x, grad W: max |ours - torch| / max |torch|),
and torch's peak memory is reported next to ours (ours holds the workspace and O(N) rows). Exact
rows have TF32 off on both sides; tf32 rows (sm_80+) have it on for both.

--backend cpu runs ours on the CPU backend against a numpy float64 reference (no torch needed):
it checks the bindings here. Exit status as bench/torch_compare.py's: 1 on a library error or a
disagreement beyond 1e-4 (exact) or 3e-2 (tf32).

  python3 bench/torch_loss.py [--lib PATH] [--backend cuda|cpu] [--shapes NxDxC,...] [--reps R]
      [--out FILE]
"""

import argparse
import ctypes
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_compare as tc  # noqa: E402

SHAPES = [(256, 512, 10000), (512, 512, 100000), (512, 256, 1000000)]


class LsmLossArgs(ctypes.Structure):
    """struct lsm_loss_args of cuda/lsoftmax.h (88 bytes; the cross-entropy options, the optimizer
    step and the adaptive kinds' state left 0: none)."""
    _fields_ = [("class_offset", ctypes.c_int64), ("total_classes", ctypes.c_int64), ("grad_scale", ctypes.c_double),
                ("label_smoothing", ctypes.c_double), ("weight_sum", ctypes.c_double), ("class_weights", ctypes.c_void_p),
                ("ignore_index", ctypes.c_int32), ("flags", ctypes.c_uint32), ("update", ctypes.c_void_p),
                ("state_out", ctypes.c_void_p), ("row_targets", ctypes.c_void_p), ("reserved", ctypes.c_int64)]


def bind_loss(lib):
    f = lib.dll.lsm_loss
    p = ctypes.c_void_p
    # ctx, dtype, n, d, c, margin, args, x, w, labels, row_loss, grad_x, grad_w
    f.restype = ctypes.c_int32
    f.argtypes = [p, ctypes.c_int32, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(tc.LsmMargin),
                  ctypes.POINTER(LsmLossArgs), p, p, p, p, p, p]
    return f


def reference(np, x, w, labels):
    """Loss, grad x, grad W in float64: torch_compare's numpy L-Softmax, softmax cross-entropy."""
    n = x.shape[0]
    logits, _, _ = tc.reference_numpy(np, x, w, labels, np.zeros((n, w.shape[0])))
    z = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    loss = float(np.mean(lse - z[np.arange(n), labels]))
    g = np.exp(z - lse[:, None])
    g[np.arange(n), labels] -= 1.0
    _, gx, gw = tc.reference_numpy(np, x, w, labels, g / n)
    return loss, gx, gw


def parse_args(argv, doc, default_shapes):
    """The options this script and bench/torch_head.py share: (args, cuda, shapes, reps)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--lib", default=os.environ.get("LSOFTMAX_LIB") or os.path.join(root, "build", "liblsoftmax.so"))
    ap.add_argument("--backend", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--shapes", type=tc.parse_shapes, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    cuda = args.backend == "cuda"
    shapes = args.shapes or (default_shapes if cuda else [(64, 32, 1000)])
    return args, cuda, shapes, args.reps or (10 if cuda else 2)


def open_bench(argv, doc, default_shapes, numpy_without_torch):
    """The set-up this script and bench/torch_head.py share: options, torch or numpy, the library
    (its ABI checked), a context on the backend, the precisions to run and the host arrays.
    Returns a namespace, or an exit status where the run cannot go on. On the CUDA backend without
    torch, numpy_without_torch checks ours against numpy alone; else the run is skipped."""
    args, cuda, shapes, reps = parse_args(argv, doc, default_shapes)

    def say(*a):
        print(*a, flush=True)

    torch = F = np = None
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:
        torch = None
        if cuda and not numpy_without_torch:
            say("skipped: no torch (import torch: %s)" % e)
            return 0
        if cuda:  # ours alone on the CUDA backend (the emulated one too), against numpy
            say("no torch (import torch: %s): ours against numpy only" % e)
    if cuda and torch is not None and not torch.cuda.is_available():
        say("skipped: no CUDA device")
        return 0
    with_torch = cuda and torch is not None
    if not with_torch:
        try:
            import numpy as np
        except Exception as e:
            say("skipped: neither torch nor numpy (import numpy: %s)" % e)
            return 0
    lib = tc.Library(args.lib)
    if lib.lsm_abi_version() != tc.ABI_VERSION:
        say("error: ABI version %d, this script speaks %d" % (lib.lsm_abi_version(), tc.ABI_VERSION))
        return 1
    ctx = tc.Context(lib, tc.LSM_BACKEND_CUDA if cuda else tc.LSM_BACKEND_CPU, 0)
    precisions = ["exact"]
    if with_torch and torch.cuda.get_device_capability(0) >= (8, 0):
        precisions.append("tf32")
    host = tc.Host("torch" if with_torch else "numpy", torch, np)
    return argparse.Namespace(args=args, cuda=cuda, shapes=shapes, reps=reps, say=say, torch=torch if with_torch else None,
                              F=F, np=np, lib=lib, ctx=ctx, precisions=precisions, host=host)


def use_precision(ctx, precision):
    """Sets the context's precision for the rows of one precision ("exact" or "tf32")."""
    ctx.check(ctx.set_precision(tc.LSM_PRECISION_TF32 if precision == "tf32" else tc.LSM_PRECISION_EXACT),
              "lsm_context_set_precision")


def finish(b, header, lines, note):
    """Prints the table (header: its title and rule rows) and its note, writes them to --out."""
    table = "\n".join(header + lines)
    b.say("")
    b.say(table)
    b.say(note)
    if b.args.out:
        with open(b.args.out, "w") as f:
            f.write(table + "\n\n" + note + "\n")


def main(argv=None):
    b = open_bench(argv, __doc__, SHAPES, numpy_without_torch=False)
    if isinstance(b, int):
        return b
    cuda, shapes, reps, say = b.cuda, b.shapes, b.reps, b.say
    torch, F, np, ctx, precisions, host = b.torch, b.F, b.np, b.ctx, b.precisions, b.host
    lsm_loss = bind_loss(b.lib)
    failed, lines = False, []
    try:
        for (n, d, c) in shapes:
            x, w, labels, _ = host.inputs(n, d, c, seed=7 + n + c)
            args_ = LsmLossArgs(class_offset=0, total_classes=c, grad_scale=1.0 / n)
            dx, dw, dl = ctx.malloc(4 * n * d), ctx.malloc(4 * c * d), ctx.malloc(4 * n)
            drows, dgx, dgw = ctx.malloc(8 * n), ctx.malloc(4 * n * d), ctx.malloc(4 * c * d)
            for dst, a in ((dx, x), (dw, w), (dl, labels)):
                ctx.to_context(dst, host.ptr(a), host.nbytes(a))

            def ours():
                ctx.check(lsm_loss(ctx.handle, tc.LSM_FLOAT32, n, d, c, tc.margin(tc.MARGIN, tc.LAMBDA),
                                   ctypes.byref(args_), dx, dw, dl, drows, dgx, dgw), "lsm_loss")

            for precision in precisions:
                use_precision(ctx, precision)
                ours_ms = tc.median_ms(ours, 2, reps)
                ours()
                rows = (ctypes.c_double * n)()
                gx, gw = host.empty(n, d), host.empty(c, d)
                ctx.from_context(ctypes.addressof(rows), drows, 8 * n)
                ctx.from_context(host.ptr(gx), dgx, 4 * n * d)
                ctx.from_context(host.ptr(gw), dgw, 4 * c * d)
                loss = sum(rows) / n
                linear_ms = composed_ms = peak = None
                if torch and cuda:
                    tc.set_torch_tf32(torch, precision == "tf32")
                    dev = torch.device("cuda", 0)
                    tx, tw = x.to(dev).requires_grad_(True), w.to(dev).requires_grad_(True)
                    ty = labels.to(dev).long()

                    def step(fn):
                        def run():
                            tx.grad = tw.grad = None
                            out = F.cross_entropy(fn(torch, tx, tw, ty), ty)
                            out.backward()
                            return out
                        return run

                    linear_ms = tc.median_ms(step(tc.torch_linear), 2, reps, torch.cuda.synchronize)
                    composed_ms = tc.median_ms(step(tc.torch_composed), 2, reps, torch.cuda.synchronize)
                    torch.cuda.reset_peak_memory_stats()
                    ref_loss = float(step(tc.torch_composed)())
                    peak = torch.cuda.max_memory_allocated() / 2**20
                    ref_gx, ref_gw = tx.grad.double().cpu(), tw.grad.double().cpu()
                    errs = [abs(loss - ref_loss) / abs(ref_loss)] + [
                        float((o.double() - r).abs().max() / r.abs().max()) for o, r in ((gx, ref_gx), (gw, ref_gw))]
                    del tx, tw, ty, ref_gx, ref_gw
                    torch.cuda.empty_cache()
                else:
                    ref_loss, ref_gx, ref_gw = reference(np, x.astype(np.float64), w.astype(np.float64), labels)
                    errs = [abs(loss - ref_loss) / abs(ref_loss)] + [
                        float(np.abs(o - r).max() / np.abs(r).max()) for o, r in ((gx, ref_gx), (gw, ref_gw))]
                tol = 3e-2 if precision == "tf32" else 1e-4
                ok = all(e <= tol for e in errs)
                failed = failed or not ok
                lines.append("| (%d, %d, %d) | %s | %s | %s | %s | %s | %s | %s | %s%s |" % (
                    n, d, c, precision, tc.fmt_ms(ours_ms), tc.fmt_ms(linear_ms), tc.fmt_ms(composed_ms),
                    tc.fmt_ratio(ours_ms, linear_ms, 1.25, False), tc.fmt_ratio(ours_ms, composed_ms, 1.0, True),
                    "n/a" if peak is None else "%.0f" % peak, ", ".join("%.1e" % e for e in errs),
                    "" if ok else " DISAGREE"))
                say(lines[-1])
            ctx.free_all()
    except tc.LsmError as e:
        say("error: %s" % e)
        failed = True
    finally:
        ctx.destroy()
    note = ("Median wall-clock of the loss with both gradients, float32, margin %d, lambda %g, mean, %d reps; "
            "ours: lsm_loss, 64 MiB workspace; torch: F.cross_entropy(...).backward()." % (tc.MARGIN, tc.LAMBDA, reps))
    finish(b, [
        "| shape (N, D, C) | precision | ours ms (lsm_loss) | torch linear + CE ms | composed + CE ms "
        "| ours/linear | ours/composed | torch peak MiB (composed) | rel err: loss, grad x, grad W |",
        "|---|---|---|---|---|---|---|---|---|"], lines, note)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
