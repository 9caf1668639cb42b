"""Run both peer runners on the small white -> pial case and print their times and errors side by side.

A smoke test of the runners' contract with ``scripts/bench_shapes.py`` (not the benchmark itself)::

    /work/main/.venv/bin/python scripts/shape_peers/make_test_case.py --out-dir .peers/case
    /work/main/.venv/bin/python scripts/shape_peers/check_peers.py --case .peers/case --budget 240

Each runner runs in its own process and virtual environment, one after the other, as the benchmark calls
them. Errors of a warped white surface against the pial: the mean vertex error (same fsaverage indexing, mm)
and the symmetric surface Chamfer distance, the mean of the two one-sided means of vertex-to-surface
distances (each vertex to the nearest point of the other mesh's triangles, mm).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RUNNERS = {
    "deformetrica": (os.path.join(ROOT, ".peers", "deformetrica", "bin", "python"), "run_deformetrica.py"),
    "keops_tutorial": (sys.executable, "run_keops_tutorial.py"),
}


def _closest_on_triangles(p, a, b, c):
    """Closest points (..., 3) of triangles ``abc`` to points ``p`` (broadcast), by barycentric regions."""
    ab, ac = b - a, c - a
    d1, d2 = ((ab * (p - a)).sum(-1), (ac * (p - a)).sum(-1))
    d3, d4 = ((ab * (p - b)).sum(-1), (ac * (p - b)).sum(-1))
    d5, d6 = ((ab * (p - c)).sum(-1), (ac * (p - c)).sum(-1))
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        q = a + (vb / denom)[..., None] * ab + (vc / denom)[..., None] * ac
        on_ac = np.nan_to_num(d2 / (d2 - d6))[..., None]
        on_ab = np.nan_to_num(d1 / (d1 - d3))[..., None]
        on_bc = np.nan_to_num((d4 - d3) / ((d4 - d3) + (d5 - d6)))[..., None]
    # later regions take precedence: vertices, then edges, then the face interior computed above
    regions = [((va <= 0) & (d4 >= d3) & (d5 >= d6), b + on_bc * (c - b)),
               ((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + on_ac * ac),
               ((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + on_ab * ab),
               ((d6 >= 0) & (d5 <= d6), c), ((d3 >= 0) & (d4 <= d3), b), ((d1 <= 0) & (d2 <= 0), a)]
    for mask, value in regions:
        q = np.where(mask[..., None], value, q)
    return q


def point_to_surface(points, vertices, faces, chunk=64):
    """Distance (P,) from each point (P, 3) to the nearest point of the triangulated surface (mm)."""
    a, b, c = (vertices[faces[:, k]][None] for k in range(3))
    out = np.empty(len(points))
    for s in range(0, len(points), chunk):
        p = points[s:s + chunk, None]
        out[s:s + chunk] = np.linalg.norm(p - _closest_on_triangles(p, a, b, c), axis=-1).min(1)
    return out


def errors(warped, faces, target, target_faces):
    """``(mean vertex error, surface Chamfer)`` of ``warped`` against the target (mm)."""
    vertex = float(np.linalg.norm(warped - target, axis=1).mean())
    chamfer = 0.5 * (point_to_surface(warped, target, target_faces).mean()
                     + point_to_surface(target, warped, faces).mean())
    return vertex, float(chamfer)


def backend_agreement(source, source_faces, target, target_faces, sigma_d, sigma_v, seed=0):
    """The tutorial's loss, warped source and gradient at random momenta, dense vs KeOps (float32).

    Returns ``(relative loss difference, max |q1 difference| mm, relative gradient difference)``; both
    backends sum the same kernels, so all three should be at float32 rounding (~1e-6 relative).
    """
    import argparse as ap

    import torch

    sys.path.insert(0, HERE)
    import run_keops_tutorial as tutorial

    p = torch.randn(source.shape, generator=torch.Generator().manual_seed(seed)) * 2.0
    results = []
    for backend in ("dense", "keops"):
        args = ap.Namespace(backend=backend, sigma_deformation=sigma_d, sigma_varifold=sigma_v, nt=10, gamma=0.1)
        f32 = [torch.as_tensor(a, dtype=torch.float32) for a in (source, target)]
        loss = tutorial.build_loss(args, f32[0], torch.as_tensor(source_faces), f32[1], torch.as_tensor(target_faces))
        p0 = p.clone().requires_grad_(True)
        value, q1 = loss(p0)
        value.backward()
        results.append((value.item(), q1.detach().numpy(), p0.grad.numpy()))
    (vd, qd, gd), (vk, qk, gk) = results
    return abs(vd - vk) / abs(vd), float(np.abs(qd - qk).max()), float(np.linalg.norm(gd - gk) / np.linalg.norm(gd))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", default=os.path.join(ROOT, ".peers", "case"), help="folder of make_test_case.py")
    parser.add_argument("--out-dir", default=os.path.join(ROOT, ".peers", "check"))
    parser.add_argument("--budget", type=float, default=240.0)
    parser.add_argument("--sigma-deformation", type=float, default=10.0)
    parser.add_argument("--sigma-varifold", type=float, default=5.0)
    parser.add_argument("--runs", nargs="*", default=["deformetrica:keops", "deformetrica:dense",
                                                      "keops_tutorial:keops", "keops_tutorial:dense"],
                        help="METHOD:BACKEND pairs, METHOD in " + ", ".join(RUNNERS))
    parser.add_argument("--no-agreement", action="store_true", help="skip the dense vs KeOps check")
    args = parser.parse_args(argv)
    source, target = (os.path.join(args.case, f"{n}_lh_ico3.npz") for n in ("white", "pial"))
    with np.load(source) as s, np.load(target) as t:
        sv, sf, tv, tf = s["vertices"], s["faces"], t["vertices"], t["faces"]
    os.makedirs(args.out_dir, exist_ok=True)
    v0, c0 = errors(sv, sf, tv, tf)
    rows = [f"{'method':<16}{'backend':<8}{'status':<8}{'s':>8}{'cpu s':>8}{'wall s':>8}{'iters':>7}{'peak MB':>9}"
            f"{'vertex mm':>11}{'Chamfer mm':>12}",
            f"{'(before)':<16}{'':<8}{'':<8}{'':>8}{'':>8}{'':>8}{'':>7}{'':>9}{v0:>11.3f}{c0:>12.3f}"]
    for run in args.runs:
        method, backend = run.split(":")
        python, script = RUNNERS[method]
        out = os.path.join(args.out_dir, f"{method}_{backend}.npz")
        cmd = [python, os.path.join(HERE, script), "--source", source, "--target", target, "--out", out,
               "--sigma-deformation", str(args.sigma_deformation), "--sigma-varifold", str(args.sigma_varifold),
               "--budget", str(args.budget), "--backend", backend]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        with np.load(out) as r:
            status, seconds, iters = str(r["status"]), float(r["seconds"]), int(r["iterations"])
            peak, warped = float(r["peak_mb"]), r["warped"]
            cpu = float(r["cpu_seconds"]) if "cpu_seconds" in r.files else float("nan")
        v, c = errors(warped, sf, tv, tf) if warped.shape == sv.shape else (float("nan"), float("nan"))
        rows.append(f"{method:<16}{backend:<8}{status[:7]:<8}{seconds:>8.1f}{cpu:>8.1f}{wall:>8.1f}{iters:>7d}"
                    f"{peak:>9.0f}{v:>11.3f}{c:>12.3f}")
        if status not in ("ok", "budget"):
            rows.append(f"    {status}")
        print(rows[-1], flush=True)
    print("\n".join(rows))
    if not args.no_agreement:
        loss, q1, grad = backend_agreement(sv, sf, tv, tf, args.sigma_deformation, args.sigma_varifold)
        print(f"tutorial's method, dense vs KeOps at random momenta: loss {loss:.1e} (relative), "
              f"q(1) {q1:.1e} mm (max), gradient {grad:.1e} (relative)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
