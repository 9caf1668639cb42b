"""Kernel-sum throughput of the engine's backends against a raw KeOps reduction, and the cost of a shooting step.

Run:  .venv/bin/python scripts/bench_kernels.py [--quick] [--max-n 100000]

Prints two tables:

1. Gaussian kernel sums ``K(x, y) p`` (M = N points, D = d columns): throughput in pairs per second (median of
   repeats) for the engine's ``dense``, ``keops`` and ``auto`` paths and for a raw KeOps LazyTensor reduction written
   by hand, in 2-D and 3-D, float32 and float64. Columns ``keops/raw`` (goal >= 0.8: the engine adds little) and
   ``auto/best`` (time of auto over the faster backend, goal <= 1.5). Dense is skipped where its (N, N) matrices would
   not fit in ``--dense-mem`` GiB.
2. One RK4 shooting step with its gradient (forward + backward) for N landmarks in 3-D.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from lddmm_nets import GaussianKernel, backends, shoot


def _median_time(fn, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()  # KeOps compiles on first use; the formula does not depend on N, so small N warms large N up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _raw_keops(x, y, p, sigma):
    from pykeops.torch import LazyTensor

    d2 = ((LazyTensor(x[:, None, :]) - LazyTensor(y[None, :, :])) ** 2).sum(-1)
    return (-d2 * (0.5 / sigma**2)).exp() @ p


def bench_sums(sizes, dims, dtypes, dense_mem_gib):
    rows = []
    sigma = 0.5
    kernel = GaussianKernel(sigma=sigma)
    for dtype in dtypes:
        for d in dims:
            for n in sizes:
                g = torch.Generator().manual_seed(0)
                x = torch.rand(n, d, generator=g, dtype=dtype)
                y = torch.rand(n, d, generator=g, dtype=dtype)
                p = torch.randn(n, d, generator=g, dtype=dtype)
                small = n <= 10_000
                repeats = 7 if small else 1
                t = {}
                t["raw"] = _median_time(lambda: _raw_keops(x, y, p, sigma), repeats, small)
                t["keops"] = _median_time(lambda: kernel.matvec(x, y, p, backend="keops"), repeats, small)
                # dense keeps about 3 (N, N, d) temporaries alive (the differences before the sum over d)
                dense_bytes = 3 * n * n * d * dtype.itemsize
                t["dense"] = (_median_time(lambda: kernel.matvec(x, y, p, backend="dense"), repeats)
                              if dense_bytes <= dense_mem_gib * 2**30 else float("nan"))
                picked = backends.select_backend("auto", n, n, x.device, x.dtype)
                # beyond 1e4 points a call lasts seconds and auto's dispatch is negligible: reuse the picked timing
                t["auto"] = (_median_time(lambda: kernel.matvec(x, y, p, backend="auto"), repeats) if small
                             else t[picked])
                best = min(v for k, v in t.items() if k in ("dense", "keops") and v == v)
                rows.append(dict(dtype=str(dtype).replace("torch.", ""), d=d, n=n, picked=picked,
                                 **{f"{k}_pps": n * n / v if v == v else float("nan") for k, v in t.items()},
                                 keops_over_raw=t["raw"] / t["keops"], auto_over_best=t["auto"] / best))
    return rows


def bench_shooting(sizes, dtype=torch.float32):
    rows = []
    kernel = GaussianKernel(sigma=0.2)
    for n in sizes:
        g = torch.Generator().manual_seed(0)
        q = torch.rand(n, 3, generator=g, dtype=dtype)
        p0 = (0.01 * torch.randn(n, 3, generator=g, dtype=dtype)).requires_grad_(True)
        row = dict(n=n)
        for backend in ("dense", "keops", "auto"):
            if backend == "dense" and 3 * n * n * 3 * dtype.itemsize > 4 * 2**30:
                row[backend] = float("nan")
                continue

            def step():
                traj = shoot(kernel, q, p0, n_steps=1, integrator="rk4", backend=backend)
                (grad,) = torch.autograd.grad((traj.q[-1] ** 2).sum(), p0)
                return grad

            row[backend] = _median_time(step, 3 if n <= 10_000 else 1)
        rows.append(row)
    return rows


def bench_large(n=100_000, d=3):
    """The 1e5-point 3-D kernel sum (engine KeOps path and raw KeOps), with the process's peak memory."""
    import resource

    rows = []
    kernel = GaussianKernel(sigma=0.5)
    for dtype in (torch.float32, torch.float64):
        g = torch.Generator().manual_seed(0)
        x, p = torch.rand(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)
        t_engine = _median_time(lambda: kernel.matvec(x, x, p, backend="auto"), 1, warm_up=False)
        t_raw = _median_time(lambda: _raw_keops(x, x, p, 0.5), 1, warm_up=False)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        rows.append(dict(dtype=str(dtype).replace("torch.", ""), n=n, engine=n * n / t_engine, raw=n * n / t_raw,
                         picked=backends.select_backend("auto", n, n, x.device, dtype), peak_mib=peak))
    return rows


def _fmt(v, spec):
    return "-" if v != v else format(v, spec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N up to 1e4, float32 only")
    ap.add_argument("--max-n", type=int, default=100_000)
    ap.add_argument("--dense-mem", type=float, default=4.0, help="GiB allowed for dense temporaries")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch and OpenMP threads (default: torch's); on a small shared VM, 1 avoids thread wake-up "
                         "latencies of several ms per call that swamp small problems")
    ap.add_argument("--large", action="store_true", help="only the 1e5-point 3-D sums (memory check), about 5 min")
    args = ap.parse_args(argv)
    if args.threads:
        # KeOps' CPU reductions use OpenMP, which reads this before its first parallel region (pykeops loads lazily)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    if not backends.keops_available():
        raise SystemExit("KeOps is not available here: nothing to compare")
    if args.large:
        print(f"{'dtype':8} {'N':>7} | {'engine (auto)':>13} {'raw keops':>10} pairs/s | ratio | picked | peak RSS")
        for r in bench_large():
            print(f"{r['dtype']:8} {r['n']:>7} | {r['engine']:13.2e} {r['raw']:10.2e}         | "
                  f"{r['engine'] / r['raw']:5.2f} | {r['picked']:6} | {r['peak_mib']:.0f} MiB")
        return
    sizes = [n for n in (200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 100_000) if n <= (10_000 if args.quick else args.max_n)]
    dtypes = [torch.float32] if args.quick else [torch.float32, torch.float64]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Gaussian kernel sums, M = N, D = d")
    print(f"{'dtype':8} {'d':>2} {'N':>7} | {'dense':>9} {'keops':>9} {'raw keops':>9} {'auto':>9}  pairs/s | "
          f"{'keops/raw':>9} {'auto/best':>9} picked")
    rows = bench_sums(sizes, (2, 3), dtypes, args.dense_mem)
    for r in rows:
        print(f"{r['dtype']:8} {r['d']:>2} {r['n']:>7} | {_fmt(r['dense_pps'], '9.2e')} {_fmt(r['keops_pps'], '9.2e')} "
              f"{_fmt(r['raw_pps'], '9.2e')} {_fmt(r['auto_pps'], '9.2e')}          | "
              f"{r['keops_over_raw']:9.2f} {r['auto_over_best']:9.2f} {r['picked']}")
    ratios = [r["keops_over_raw"] for r in rows]
    autos = [r["auto_over_best"] for r in rows]
    print(f"median keops/raw = {statistics.median(ratios):.2f} (min {min(ratios):.2f}; goal >= 0.8); "
          f"max auto/best = {max(autos):.2f} (goal <= 1.5)")
    print()
    print("One RK4 shooting step with its gradient, N landmarks in 3-D, float32 (seconds, median)")
    print(f"{'N':>7} | {'dense':>8} {'keops':>8} {'auto':>8}")
    for r in bench_shooting([n for n in sizes if 1_000 <= n <= 5_000]):
        print(f"{r['n']:>7} | {_fmt(r['dense'], '8.3f')} {_fmt(r['keops'], '8.3f')} {_fmt(r['auto'], '8.3f')}")


if __name__ == "__main__":
    main()
