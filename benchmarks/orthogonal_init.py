"""Time to make one large layer orthogonal: the pass's float32 factorizations vs the float64 ones.

Default: the first classifier layer of VGG-16, Linear(25088, 4096), whose compile took 217 s
before the float32 paths existed. For that (4096 x 25088) weight it times, in one process:

- haar: the float32 Cholesky QR of the thin (25088 x 4096) Gaussian that the pass uses, against
  float64 Householder QR (the old path, still used for small layers and float64 weights);
- polar (``init="project"``): the float32 Gram + float64 eigendecomposition on the thin side,
  against the float64 SVD;
- the whole compile, ``vgpcompile(Sequential(Linear(25088, 4096)), passes=["orthogonal"])``;

and prints ||WWᵀ - I||_2 of each result (the pass's retraction keeps 1e-4).
Run: python benchmarks/orthogonal_init.py [--rows 4096 --cols 25088] [--threads N] [--skip-float64] [--skip-svd]

Measured on the shared 2-core development machine under heavy load (load average 15-17 from
other jobs), so absolute times are several times an idle machine's and ratios are noisy:

  4096 x 25088, 2 threads: haar  float32 Cholesky QR 64-78 s, float64 Householder QR 104 s;
                           polar float32 Gram + eigh 210 s (the float64 SVD was not run:
                           at 1024 x 6272 it is 7x slower); whole compile 50 s (217 s reported
                           before, same machine, load unknown). ||WWᵀ - I||_2 = 8e-7.
  1024 x 6272, 1 thread:   haar 1.9 s vs 4.7 s (2.5x); polar 5.0 s vs 35.5 s (7x).

The float32 haar is two matmuls of the thin (25088 x 4096) matrix (its Gram and z R⁻¹), about
1.7e12 flops: seconds on an idle multi-core machine, a minute on two loaded cores.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from vgpcompile import vgpcompile
from vgpcompile.orthogonal import Layout, gram_error, haar, polar


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096, help="fan_out (Linear out_features)")
    ap.add_argument("--cols", type=int, default=25088, help="fan_in (Linear in_features)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own setting)")
    ap.add_argument("--skip-float64", action="store_true", help="time only the paths the pass uses")
    ap.add_argument("--skip-svd", action="store_true", help="skip the float64 SVD (the slowest by far)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layout = Layout((args.rows, args.cols))
    print(f"{args.rows} x {args.cols} ({layout.describe()}), {torch.get_num_threads()} threads")

    def row(name: str, w: torch.Tensor, seconds: float) -> None:
        print(f"  {name:<36} {seconds:8.2f} s   ||WWᵀ - I||_2 = {gram_error(w[None]):.1e}")

    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    w, t_haar = timed(lambda: haar(layout, gen(), torch.float32))
    row("haar, float32 Cholesky QR (pass)", w, t_haar)
    a = torch.randn(args.rows, args.cols, generator=gen()) / args.cols**0.5
    p, t_polar = timed(lambda: polar(a))
    row("polar, float32 Gram + eigh (pass)", p, t_polar)
    if not args.skip_float64:
        w64, t = timed(lambda: haar(layout, gen(), torch.float64))
        row("haar, float64 Householder QR", w64, t)
        print(f"    ratio float64 / float32: {t / t_haar:.1f}x")
    if not (args.skip_float64 or args.skip_svd):
        p64, t = timed(lambda: polar(a.double()))
        row("polar, float64 SVD", p64, t)
        print(f"    ratio float64 / float32: {t / t_polar:.1f}x; max |difference| {(p.double() - p64).abs().max():.1e}")
    model = nn.Sequential(nn.Linear(args.cols, args.rows))
    compiled, t = timed(lambda: vgpcompile(model, ["orthogonal"]))
    row("vgpcompile(Linear, ['orthogonal'])", compiled.get_submodule("0").weight.detach(), t)


if __name__ == "__main__":
    main()
