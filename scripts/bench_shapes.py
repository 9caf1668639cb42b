"""Shape registration benchmark: ours against Deformetrica 4.3 and the KeOps surface tutorial's method, side by side.

Cases (fsaverage5, bundled with nilearn; ``registration.shapes.data``), each at the resolutions asked for (642 and
2,562 vertices: fsaverage's icosahedral decimations; 10,242: the full hemisphere):

- ``wp``: white → pial of one hemisphere (real anatomy; same vertex indexing, so the vertex error is measurable);
- ``lr``: pial → the mirrored pial of the other hemisphere (no correspondence);
- ``warp``: pial → the same pial moved by a known random diffeomorphism (vertex error against the truth).

Kernel widths are the same for every method, in the peers' convention ``exp(−|x−y|²/σ²)`` (ours is
``exp(−|x−y|²/2σ²)``: it gets ``σ/√2``): deformation 10 mm and varifold 5 mm (20 / 10 mm for ``warp``).

Every method runs in its own process, one thread, one after the other, with the same contract: ``--source SRC.npz
--target TGT.npz --out RESULT.npz --sigma-deformation MM --sigma-varifold MM --budget SECONDS [--backend]``,
result npz with ``warped``, ``seconds``, ``iterations``, ``peak_mb``, ``status`` (and ``cpu_seconds``). The peers'
runners live in ``scripts/shape_peers/`` (Deformetrica with its own virtual environment, ``setup_deformetrica.sh``);
ours is this script's ``ours`` sub-command. A peer whose runner or Python is missing is skipped with a line saying
so. Then every result is measured the same way: the varifold distance before / after (the case's varifold width,
float64), Chamfer and Hausdorff distances (exact vertex-to-surface distances, mm), vertex error where the truth is
known, flipped triangles (warped normal against source normal), seconds, CPU seconds, iterations, peak memory.

Run (the numbers of docs/guide/shapes.md; on a loaded machine compare ratios and CPU seconds, not wall times)::

    OMP_NUM_THREADS=1 python scripts/bench_shapes.py --resolutions 642,2562 --budget 240
    OMP_NUM_THREADS=1 python scripts/bench_shapes.py --resolutions 10242 --methods ours   # the 60 s goal
    python scripts/bench_shapes.py --profile          # dense vs KeOps crossover of our formulas on this CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts", "shape_peers")]

import peer_io  # noqa: E402

CASES = ("wp", "lr", "warp")
METHODS = ("ours", "deformetrica", "tutorial")
R2 = math.sqrt(2.0)


# --- the cases ------------------------------------------------------------------------------------------------------
def make_case(kind: str, n: int, hemi: str, seed: int):
    """``(source, target, truth or None, sigma_deformation, sigma_varifold)`` in the peers' width convention."""
    from registration.shapes.data import load_fsaverage, mirror, random_warp

    other = "right" if hemi == "left" else "left"
    if kind == "wp":
        target = load_fsaverage("pial", hemi, n)
        return load_fsaverage("white", hemi, n), target, target, 10.0, 5.0
    if kind == "lr":
        return load_fsaverage("pial", hemi, n), mirror(load_fsaverage("pial", other, n)), None, 10.0, 5.0
    if kind == "warp":
        source = load_fsaverage("pial", hemi, n)
        target, _ = random_warp(source, max_displacement=8.0, smoothness=20.0 / R2, seed=seed)
        return source, target, target, 20.0, 10.0
    raise ValueError(f"case: expected one of {CASES}, got {kind!r}")


def _write_npz(path, shape):
    np.savez(path, vertices=shape.vertices.detach().cpu().double().numpy(),
             faces=shape.cells.cpu().numpy().astype(np.int64))


# --- the runner contract (ours), with the peers' reading, memory measurement and result file ---------------------------------------------------------------------------
def run_ours(argv) -> int:
    """``ours``: the runner contract for ``register_shapes`` with its defaults (widths converted to ours)."""
    p = argparse.ArgumentParser(prog="bench_shapes.py ours")
    for name in ("--source", "--target", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--sigma-deformation", type=float, required=True)
    p.add_argument("--sigma-varifold", type=float, required=True)
    p.add_argument("--budget", type=float, default=math.inf, help="(reported, not enforced: ours stops by itself)")
    p.add_argument("--backend", default="auto", choices=["auto", "dense", "keops"])
    p.add_argument("--options", default="{}", help="extra register_shapes options, JSON")
    args = p.parse_args(argv)
    import torch

    from registration.shapes import Shape, register_shapes

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    source, target = Shape(*peer_io.load_mesh(args.source)), Shape(*peer_io.load_mesh(args.target))
    status = "ok"
    register_shapes(source, target, sigma=1.0, data_sigma=1.0, levels=(1,), max_iter=1, backend=args.backend,
                    check_flips=False)  # KeOps formulas compiled (or loaded) outside the timing
    mark = peer_io.memory_mark()
    t0, c0 = time.perf_counter(), time.process_time()
    res = register_shapes(source, target, sigma=args.sigma_deformation / R2,
                          data_sigma=args.sigma_varifold / R2, backend=args.backend, **json.loads(args.options))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_mb = peer_io.memory_peak_mb(mark)
    if not res.converged:
        status = f"ok ({res.stop_reason})"
    peer_io.write_result(args.out, warped=res.warped.vertices.numpy(), seconds=seconds, cpu_seconds=cpu,
                         iterations=res.n_iter, peak_mb=peak_mb, status=status)
    return 0


# --- running the methods ---------------------------------------------------------------------------------------------
def _command(method, args, python_for):
    here = os.path.abspath(__file__)
    if method == "ours":
        return [sys.executable, here, "ours"] + (["--backend", args.our_backend] if args.our_backend else [])
    runner = os.path.join(args.peers_dir, "run_deformetrica.py" if method == "deformetrica"
                          else "run_keops_tutorial.py")
    python = python_for[method]
    missing = [p for p in (runner, python) if not os.path.exists(p)]
    if missing:
        return f"skipped: {', '.join(missing)} missing (see scripts/shape_peers/README.md to set the peers up)"
    backend = args.deformetrica_backend if method == "deformetrica" else args.tutorial_backend
    return [python, runner, "--backend", backend]


def run_method(method, case_files, widths, args, python_for) -> dict:
    cmd = _command(method, args, python_for)
    if isinstance(cmd, str):
        return {"status": cmd}
    out = os.path.join(args.work, f"{case_files['name']}-{method}.npz")
    if os.path.exists(out):
        os.remove(out)
    cmd = cmd + ["--source", case_files["source"], "--target", case_files["target"], "--out", out,
                 "--sigma-deformation", str(widths[0]), "--sigma-varifold", str(widths[1]),
                 "--budget", str(args.budget)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=ROOT)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=args.budget + max(120.0, args.budget) + 600)
    wall = time.perf_counter() - t0
    if not os.path.exists(out):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": f"failed (exit {proc.returncode}): {tail[0][:100]}"}
    with np.load(out) as z:
        row = {k: z[k].item() if z[k].ndim == 0 else z[k] for k in z.files}
    row["status"] = str(row["status"])
    row["wall"] = wall
    return row


def measure(source, target, truth, warped: np.ndarray, sigma_varifold: float) -> dict:
    """The benchmark's measures of one warped source (module docstring)."""
    import torch

    from lddmm_nets.shapes import Varifold
    from registration.shapes import chamfer, hausdorff, normal_ratios, vertex_error

    w = source.with_vertices(torch.as_tensor(warped, dtype=torch.float64))
    term = Varifold(sigma_varifold / R2, truncate=4.0).attach(target.to(torch.float64).cells_geometry())
    ratios = normal_ratios(source, w)
    return {"varifold": float(term(w.cells_geometry())), "chamfer": chamfer(w, target),
            "hausdorff": hausdorff(w, target), "vertex": vertex_error(w, truth) if truth is not None else math.nan,
            "flipped": int((ratios <= 0).sum())}


# --- the table ---------------------------------------------------------------------------------------------------------
def _fmt(v, spec="{:.3f}"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return spec.format(v) if isinstance(v, (int, float, np.floating, np.integer)) else str(v)


HEADER = ("case", "method", "status", "vertices", "s", "cpu s", "iters", "varifold", "chamfer", "hausdorff",
          "vertex", "flips", "peak MB")


def table_row(name, method, row, n):
    if "warped" not in row and method != "(before)":
        return [name, method, row["status"]] + ["-"] * (len(HEADER) - 3)
    return [name, method, row.get("status", ""), str(n), _fmt(row.get("seconds"), "{:.1f}"),
            _fmt(row.get("cpu_seconds"), "{:.1f}"), _fmt(row.get("iterations"), "{:d}"),
            _fmt(row.get("varifold"), "{:.4g}"), _fmt(row.get("chamfer")), _fmt(row.get("hausdorff"), "{:.2f}"),
            _fmt(row.get("vertex")), _fmt(row.get("flipped"), "{:d}"), _fmt(row.get("peak_mb"), "{:.0f}")]


def print_table(rows):
    widths = [max(len(str(r[i])) for r in [HEADER] + rows) for i in range(len(HEADER))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(HEADER))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


def summarise(results) -> list[str]:
    """Per case: our time over the faster peer's, accuracy against the best peer; medians over cases."""
    lines, ratios, cpu_ratios = [], [], []
    for name, rows in results.items():
        ours = rows.get("ours", {})
        peers = {m: r for m, r in rows.items() if m in ("deformetrica", "tutorial") and "warped" in r}
        if "warped" not in ours or not peers:
            continue
        fastest = min(peers, key=lambda m: peers[m]["seconds"])
        ratio = ours["seconds"] / peers[fastest]["seconds"]
        ratios.append(ratio)
        if all("cpu_seconds" in r for r in list(peers.values()) + [ours]):
            cpu_ratios.append(ours["cpu_seconds"] / min(r["cpu_seconds"] for r in peers.values()))
        best = {k: min(r[k] for r in peers.values()) for k in ("chamfer", "vertex")}
        flips = min(r["flipped"] for r in peers.values())
        verdict = [f"time {ratio:.2f}x {fastest} ({'<=' if ratio <= 0.2 else '>'} 0.2)",
                   f"chamfer {ours['chamfer']:.3f} vs best peer {best['chamfer']:.3f} "
                   f"({'ok' if ours['chamfer'] <= best['chamfer'] else 'worse'})"]
        if not math.isnan(best["vertex"]):
            verdict.append(f"vertex {ours['vertex']:.3f} vs {best['vertex']:.3f} "
                           f"({'ok' if ours['vertex'] <= best['vertex'] else 'worse'})")
        verdict.append(f"flips {ours['flipped']} (peers' fewest {flips})")
        lines.append(f"{name}: " + "; ".join(verdict))
    if ratios:
        lines.append(f"median time ratio ours / faster peer: {statistics.median(ratios):.3f} (worst "
                     f"{max(ratios):.3f}) over {len(ratios)} cases"
                     + (f"; CPU-time ratio median {statistics.median(cpu_ratios):.3f}" if cpu_ratios else ""))
    return lines


def _time(fn, repeat=3) -> float:
    fn()
    c0 = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - c0) / repeat


def profile(threads: int = 1) -> None:
    """CPU seconds of our formulas, forward and backward, dense against KeOps, on fsaverage decimations.

    Data term: the varifold of white against pial at 5 mm (engine width 3.54 mm) with the Gaussian, dense and KeOps
    (every pair), and with the truncated kernel summed block-sparsely on KeOps. Shooting: 10 Euler steps of the
    control points (the source vertices), the fused dense system against the engine's ``HamiltonianSystem``.
    """
    import torch

    from lddmm_nets import GaussianKernel, HamiltonianSystem, integrators
    from lddmm_nets.shapes import Varifold
    from lddmm_nets.shapes.system import FusedHamiltonianSystem
    from registration.shapes.data import load_fsaverage

    torch.set_num_threads(threads)
    print("| vertices | cells | varifold dense | varifold KeOps | truncated KeOps (kept) | shoot fused | "
          "shoot engine dense | shoot engine KeOps |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (642, 2562):
        s = load_fsaverage("white", "left", n).to(torch.float32)
        t = load_fsaverage("pial", "left", n).to(torch.float32)
        cells = []
        for backend, truncate in (("dense", None), ("keops", None), ("auto", 4.0)):
            if backend == "dense" and n > 642:
                cells.append("-")
                continue
            term = Varifold(5 / R2, backend=backend, truncate=truncate)
            att = term.attach(t.cells_geometry())

            def data():
                x = s.vertices.clone().requires_grad_(True)
                att(s.cells_geometry(x)).backward()

            sec = _time(data, 2 if n > 642 else 3)
            cells.append(f"{sec:.3f}" + (f" ({term.last_kept:.2f})" if truncate else ""))
        kernel, euler = GaussianKernel(10 / R2), integrators.get("euler")
        for system in (FusedHamiltonianSystem(kernel), HamiltonianSystem(kernel, backend="dense"),
                       HamiltonianSystem(kernel, backend="keops")):
            if n > 642 and not isinstance(system, FusedHamiltonianSystem) and system.backend == "dense":
                cells.append("-")
                continue

            def shoot():
                p = torch.full_like(s.vertices, 0.1, requires_grad=True)
                state = (s.vertices, p, None)
                for _ in range(10):
                    state = euler.step(system, state, 0.1)
                state[0].sum().backward()

            cells.append(f"{_time(shoot, 2):.3f}")
        print(f"| {n} | {s.n_cells} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ours"]:
        return run_ours(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolutions", default="642,2562", help="comma-separated vertex counts (642, 2562, 10242)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated among {CASES}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated among {METHODS}")
    p.add_argument("--hemi", default="left", choices=["left", "right"], help="source hemisphere (hold-out: right)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random warp (hold-out: another)")
    p.add_argument("--budget", type=float, default=240.0, help="wall-time budget of every peer run (s)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    p.add_argument("--peers-dir", default=os.path.join(ROOT, "scripts", "shape_peers"))
    p.add_argument("--deformetrica-python", default=os.path.join(ROOT, ".peers", "deformetrica", "bin", "python"))
    p.add_argument("--tutorial-python", default=sys.executable)
    p.add_argument("--deformetrica-backend", default="keops", choices=["keops", "dense"])
    p.add_argument("--tutorial-backend", default="dense", choices=["keops", "dense"],
                   help="the tutorial's faster backend on a CPU (default dense)")
    p.add_argument("--our-backend", default=None, choices=["auto", "dense", "keops"])
    p.add_argument("--work", default=None, help="folder for the case and result files (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    p.add_argument("--profile", action="store_true", help="print the dense / KeOps crossover of our formulas")
    args = p.parse_args(argv)
    if args.profile:
        profile(args.threads)
        return 0
    args.work = args.work or tempfile.mkdtemp(prefix="bench_shapes-")
    os.makedirs(args.work, exist_ok=True)
    python_for = {"deformetrica": args.deformetrica_python, "tutorial": args.tutorial_python}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows, results = [], {}
    for n in (int(v) for v in args.resolutions.split(",")):
        for kind in (c.strip() for c in args.cases.split(",") if c.strip()):
            name = f"{kind}-{args.hemi}-{n}" + (f"-s{args.seed}" if kind == "warp" else "")
            source, target, truth, sd, sv = make_case(kind, n, args.hemi, args.seed)
            files = {"name": name, "source": os.path.join(args.work, f"{name}-source.npz"),
                     "target": os.path.join(args.work, f"{name}-target.npz")}
            _write_npz(files["source"], source)
            _write_npz(files["target"], target)
            before = measure(source, target, truth, source.vertices.numpy(), sv)
            rows.append(table_row(name, "(before)", before, n))
            results[name] = {"(before)": before}
            for method in methods:
                row = run_method(method, files, (sd, sv), args, python_for)
                if "warped" in row:
                    row.update(measure(source, target, truth, row["warped"], sv))
                results[name][method] = row
                rows.append(table_row(name, method, row, n))
                print(f"  {name} {method}: {row['status']}", file=sys.stderr, flush=True)
    print_table(rows)
    print()
    for line in summarise(results):
        print(line)
    if args.json:
        clean = {c: {m: {k: v for k, v in r.items() if k != "warped"} for m, r in rs.items()}
                 for c, rs in results.items()}
        with open(args.json, "w") as fh:
            json.dump(clean, fh, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
