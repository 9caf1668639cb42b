"""Side-by-side image registration benchmark: lddmm-nets vs ANTs SyN, dipy SyN and SimpleITK diffeomorphic demons.

Two modes. Without ``--suite`` / ``--quick`` the two historical cases run (``circle``: dipy's circle -> C;
``mni``: MNI152 at 2 mm warped by the project's random diffeomorphism of ``--max-displacement`` mm). With
``--suite`` every case of the image-registration suite runs (``scripts/_bench_cases.py``: MNI152 at 2 mm and 1 mm,
dipy's T1 slice, MNI axial / coronal / sagittal slices, circle -> C; three warp families with known truth both
ways, three seeds each; bias, noise and contrast perturbations of the moving image); ``--quick`` is a 4-case
smoke subset. ``--cases`` selects by names or ``fnmatch`` patterns (``'mni2/*'``, ``'*/svf-*/*'``), and takes any
case name ``IMAGE/FAMILY-SEED/PERTURBATION``, also seeds outside the suite.

Every method registers moving onto fixed with its defaults, then warps with its own transform (i) the moving
labels (nearest neighbour): Dice against the fixed labels; (ii) the moving space's world-coordinate images
(linear, exact for linear functions): the method's map ``x -> y(x)``, hence the map error against the truth (mean
and 95th percentile inside the fixed image's foreground, mm), and the Jacobian determinant of the map (central
differences, voxels 3 or more from the border where the map stays inside the moving field of view, since a map
out of it reads the fill value): NDV % (det <= 0) and SDlogJ. Each (case, method, threads) runs in
its own freshly started process (spawn, so that the thread settings and the memory are its own): wall and CPU
time of the registration alone, and the peak resident memory above the level reached once the method's libraries
are imported ("peak MB"; the imports' own growth is "lib MB"), measured from a clean mark (free heap returned to
the system, the kernel's peak counter reset; Linux).

Threads: ``--threads 1,default`` runs every method twice: with 1 thread (torch, OpenMP, ITK, ANTs) and with
each library's own default (nothing set). Default: ``1,default`` for the suite, ``1`` otherwise.

Peers (settings recorded per run in results.json): ``dipy`` SymmetricDiffeomorphicRegistration with CCMetric
(3-D: its defaults, level_iters [20, 10, 5]; 2-D T1 slices: sigma_diff 3, radius 4, level_iters [100, 50, 25],
as in dipy's 2-D example) and SSDMetric with [200, 100, 50, 25] on circle -> C (dipy's circle -> C example);
``ants`` ants.registration(type_of_transform="SyN") (affine + SyN, its defaults, seeded); ``ants_long`` the same
with reg_iterations (100, 70, 50, 20); ``sitk`` SimpleITK diffeomorphic demons, histogram matching, shrink
4, 2, 1 with 100, 50, 25 iterations, field smoothing 1.5 voxels.

Results accumulate in ``OUT/results.json`` (one record per case, method and threads, written after each run), so
a long run can be split (``--cases``) and resumed (``--skip-done``); ``--report`` only re-renders
``OUT/results.md`` (the per-case table, the per-peer summary and the goals of issue 12) from it. ``--ours-options``
passes candidate settings to ``register_images`` (tuning the defaults): copy a finished ``OUT/results.json`` into a
new ``--out`` and run ``--methods ours --ours-options ...`` there; ours' records are replaced, the peers' kept.

Usage::

    python scripts/bench_images.py                                  # the two historical cases, 1 thread
    python scripts/bench_images.py --quick --out bench_quick        # smoke subset, threads 1 and default
    python scripts/bench_images.py --suite --out bench_suite --skip-done [--cases 'mni2/*'] [--methods ours,dipy]
    python scripts/bench_images.py --suite --out bench_suite --report
    python scripts/bench_images.py --suite --methods ours --ours-options '{"iterations": [100, 40]}' --out bench_it100  # a copy of results.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import resource
import subprocess
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE), _HERE]

import _bench_cases as cases  # noqa: E402
import _bench_report as report  # noqa: E402
from _memory import memory_mark, memory_peak_kb  # noqa: E402

METHODS = ("ours", "ours_ssd", "ants", "ants_long", "dipy", "sitk")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")


# --------------------------------------------------------------------------------------------------- methods
# Each returns (seconds, warp, settings): warp(array_on_moving_grid, interp) -> array on the fixed grid.

def _ours(fixed, moving, kind, threads, metric=None, options=None):
    from registration import Image, register_images

    kw = dict(options or {})  # --ours-options: candidate settings, e.g. while tuning the defaults
    if metric is not None:
        kw["metric"] = metric
    if threads is not None:
        kw["threads"] = threads
    t0 = time.perf_counter()
    res = register_images(fixed, moving, **kw)
    sec = time.perf_counter() - t0

    def warp(arr, interp):
        return res.apply(Image(arr, moving.affine), interp=interp).data

    info = {"call": f"register_images(fixed, moving{''.join(f', {k}={v!r}' for k, v in kw.items())})",
            "stop_reason": getattr(res, "stop_reason", None)}
    try:
        info["config"] = res.report().get("config")
    except Exception as exc:  # the settings are a record, not a measure
        info["config"] = f"unavailable: {exc}"
    return sec, warp, info


def _to_sitk(img):
    import SimpleITK as sitk

    from registration.io import sitk_geometry

    s = sitk.GetImageFromArray(np.ascontiguousarray(img.data.astype(np.float32).transpose()))
    origin, spacing, direction = sitk_geometry(img.affine, img.ndim)
    s.SetOrigin(origin), s.SetSpacing(spacing), s.SetDirection(direction)
    return s


def _to_ants(img):
    import ants

    from registration.io import sitk_geometry

    origin, spacing, direction = sitk_geometry(img.affine, img.ndim)
    d = img.ndim
    return ants.from_numpy(img.data.astype(np.float32), origin=list(origin), spacing=list(spacing),
                           direction=np.asarray(direction).reshape(d, d))


def _ants(fixed, moving, kind, threads, long=False):
    import ants
    import ants.config

    from registration.io import Image

    ants.config.set_ants_deterministic(True, seed_value=1)  # the affine stage samples at random
    _thread_env(threads)  # set_ants_deterministic forces one ITK thread; keep the run's setting
    f, m = _to_ants(fixed), _to_ants(moving)
    kw = {"reg_iterations": (100, 70, 50, 20)} if long else {}
    t0 = time.perf_counter()
    reg = ants.registration(fixed=f, moving=m, type_of_transform="SyN", **kw)
    sec = time.perf_counter() - t0

    def warp(arr, interp):
        out = ants.apply_transforms(fixed=f, moving=_to_ants(Image(arr.astype(np.float32), moving.affine)),
                                    transformlist=reg["fwdtransforms"],
                                    interpolator="nearestNeighbor" if interp == "nearest" else "linear")
        return out.numpy()

    return sec, warp, {"call": "ants.registration(type_of_transform='SyN'"
                               + (", reg_iterations=(100, 70, 50, 20))" if long else ")"),
                       "reg_iterations": list(kw.get("reg_iterations", (40, 20, 0))), "random_seed": 1}


def _dipy(fixed, moving, kind, threads):
    import logging

    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric, SSDMetric

    logging.getLogger("dipy").setLevel(logging.WARNING)  # its per-level progress lines

    d = fixed.ndim
    if kind == "circle":
        metric, iters, mkw = SSDMetric(d), [200, 100, 50, 25], {}
    elif kind == "2d":
        mkw = {"sigma_diff": 3.0, "radius": 4}
        metric, iters = CCMetric(d, **mkw), [100, 50, 25]
    else:
        metric, iters, mkw = CCMetric(d), [20, 10, 5], {"sigma_diff": 2.0, "radius": 4}
    sdr = SymmetricDiffeomorphicRegistration(metric, level_iters=iters)
    t0 = time.perf_counter()
    mapping = sdr.optimize(fixed.data.astype(np.float64), moving.data.astype(np.float64),
                           static_grid2world=_affine_d(fixed.affine, d), moving_grid2world=_affine_d(moving.affine, d))
    sec = time.perf_counter() - t0

    def warp(arr, interp):
        return mapping.transform(arr.astype(np.float64), interpolation=interp)

    return sec, warp, {"metric": type(metric).__name__, "metric_kwargs": mkw, "level_iters": iters}


def _affine_d(affine, d):
    if d == 3:
        return affine
    out = np.eye(3)
    out[:2, :2] = affine[:2, :2]
    out[:2, 2] = affine[:2, 3]
    return out


def _sitk(fixed, moving, kind, threads):
    """Multi-resolution diffeomorphic demons (shrink 4, 2, 1), after histogram matching."""
    import SimpleITK as sitk

    from registration.io import Image

    if threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    f, m = _to_sitk(fixed), _to_sitk(moving)
    t0 = time.perf_counter()
    m_matched = sitk.HistogramMatching(m, f, numberOfHistogramLevels=256, numberOfMatchPoints=15,
                                       thresholdAtMeanIntensity=True)
    disp = None
    for shrink, iters in ((4, 100), (2, 50), (1, 25)):
        fs, ms = f, m_matched
        if shrink > 1:
            fs, ms = (sitk.Shrink(sitk.SmoothingRecursiveGaussian(x, 0.5 * shrink * min(f.GetSpacing())),
                                  [shrink] * f.GetDimension()) for x in (f, m_matched))
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetNumberOfIterations(iters)
        demons.SetStandardDeviations(1.5)
        if disp is None:
            disp = demons.Execute(fs, ms)
        else:
            init = sitk.Resample(disp, fs, sitk.Transform(), sitk.sitkLinear, 0.0, disp.GetPixelID())
            disp = demons.Execute(fs, ms, init)
    disp = sitk.Resample(disp, f, sitk.Transform(), sitk.sitkLinear, 0.0, disp.GetPixelID())
    tx = sitk.DisplacementFieldTransform(sitk.Cast(disp, sitk.sitkVectorFloat64))
    sec = time.perf_counter() - t0

    def warp(arr, interp):
        img = _to_sitk(Image(arr.astype(np.float32), moving.affine))
        out = sitk.Resample(img, f, tx, sitk.sitkNearestNeighbor if interp == "nearest" else sitk.sitkLinear, 0.0)
        return sitk.GetArrayFromImage(out).transpose()

    return sec, warp, {"histogram_matching": True, "shrink": [4, 2, 1], "iterations": [100, 50, 25], "std": 1.5}


RUNNERS = {
    "ours": _ours,
    "ours_ssd": lambda f, m, k, t, **kw: _ours(f, m, k, t, metric="ssd", **kw),
    "ants": _ants,
    "ants_long": lambda f, m, k, t: _ants(f, m, k, t, long=True),
    "dipy": _dipy,
    "sitk": _sitk,
}
_OURS_IMPORTS = ("torch", "scipy.ndimage", "registration")
_IMPORTS = {"ours": _OURS_IMPORTS, "ours_ssd": _OURS_IMPORTS, "ants": ("ants",), "ants_long": ("ants",),
            "dipy": ("dipy.align.imwarp", "dipy.align.metrics"), "sitk": ("SimpleITK",)}


# --------------------------------------------------------------------------------------------------- measures

def evaluate(case, warped_labels: dict, warped_coords: np.ndarray, inside=None) -> dict:
    """Dice per label, map error against the truth, NDV % and SDlogJ of the map ``warped_coords`` (d, *shape).

    ``inside`` (bool, fixed grid): where the method's map stays inside the moving image's field of view (a warped
    image of ones is 1 there); the Jacobian is judged on those voxels 3 or more from the border whose central
    differences use no voxel outside, since a map warped out of the field of view reads the fill value.
    """
    from scipy import ndimage

    from registration.evaluation import dice, map_error, world_coordinates

    fixed = case.fixed
    d = fixed.ndim
    out = {f"dice_{k}": dice(warped_labels[k], case.labels_fixed[k]) for k in warped_labels}
    keep = np.zeros(fixed.shape, bool)
    keep[(slice(3, -3),) * d] = True
    if inside is not None:
        keep &= ndimage.binary_erosion(inside, np.ones((3,) * d, bool), border_value=1)
        out["outside_fov_percent"] = float(100 * np.mean(~inside))
    det = map_jacobian(warped_coords, fixed)[keep]
    out["ndv_percent"] = float(100 * np.mean(det <= 0))
    out["sdlogj"] = float(np.std(np.log(np.clip(det, 1e-9, None))))
    if case.truth is not None:
        world = world_coordinates(fixed)
        out["mean_error_mm"] = map_error(warped_coords - world, case.truth, fixed, case.roi)
        err = np.linalg.norm(warped_coords - case.truth, axis=0)[case.roi]
        out["p95_error_mm"] = float(np.percentile(err, 95))
    return out


def map_jacobian(world_map: np.ndarray, image) -> np.ndarray:
    """``det D y`` of a map ``y`` (d, *shape) in world mm on ``image``'s grid: the library's Jacobian of the
    displacement (``registration.transforms``, central differences along the grid's axes)."""
    from registration.evaluation import world_coordinates
    from registration.transforms import DisplacementTransform

    return DisplacementTransform(world_map - world_coordinates(image), image.affine).jacobian_determinant()


def before(case) -> dict:
    """The measures of the identity map (no registration), for the table's ``before`` row."""
    from registration.evaluation import world_coordinates

    return evaluate(case, dict(case.labels_moving), world_coordinates(case.fixed))


# --------------------------------------------------------------------------------------------------- children

def _thread_env(threads):
    """Set (an int) or clear (None: each library's default) the thread variables of this process."""
    for var in THREAD_VARS:
        if threads is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = str(threads)


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _child(method, case_dir, threads, options, out_queue):
    try:
        import importlib

        case = cases.load_case(case_dir)
        before_kb = memory_mark()
        for mod in _IMPORTS.get(method, ()):
            importlib.import_module(mod)
        lib = memory_peak_kb() - before_kb
        base = memory_mark()
        cpu0 = _cpu_seconds()
        extra = {"options": options} if options and method.startswith("ours") else {}
        sec, warp, info = RUNNERS[method](case.fixed, case.moving, case.kind, threads, **extra)
        cpu = _cpu_seconds() - cpu0
        peak = memory_peak_kb()
        from registration.evaluation import world_coordinates

        labels = {k: warp(v.astype(np.float32), "nearest") for k, v in case.labels_moving.items()}
        coords = np.stack([warp(c, "linear") for c in world_coordinates(case.moving)])
        inside = warp(np.ones(case.moving.shape, np.float32), "linear") > 1 - 1e-4
        res = evaluate(case, labels, coords, inside)
        res.update(seconds=sec, cpu_seconds=cpu, peak_mb=max(peak - base, 0) / 1024.0,
                   lib_mb=max(lib, 0) / 1024.0, settings=info)
        out_queue.put(res)
    except Exception as exc:  # the failure goes into the table instead of stopping the benchmark
        out_queue.put({"error": f"{type(exc).__name__}: {exc}"})


def run_method(method: str, case_dir: str, threads, timeout: float, options: dict | None = None) -> dict:
    """Run one method in a fresh process with its thread setting; returns its measures or ``{"error": ...}``."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    saved = {v: os.environ.get(v) for v in THREAD_VARS}
    _thread_env(threads)
    try:
        p = ctx.Process(target=_child, args=(method, case_dir, threads, options, q))
        p.start()
    finally:
        for var, val in saved.items():
            os.environ.pop(var, None) if val is None else os.environ.__setitem__(var, val)
    t0 = time.monotonic()
    while True:
        try:
            res = q.get(timeout=2.0)
            break
        except queue.Empty:
            if not p.is_alive():
                res = {"error": f"the process ended with code {p.exitcode} (killed: out of memory?)"}
                break
            if time.monotonic() - t0 > timeout:
                p.terminate()
                res = {"error": f"timeout after {timeout:.0f} s"}
                break
    p.join()
    return res


# --------------------------------------------------------------------------------------------------- main

def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", os.path.dirname(_HERE), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _parse_threads(text: str) -> list:
    out = []
    for tok in [t.strip() for t in text.split(",") if t.strip()]:
        if tok == "default":
            out.append(None)
        elif tok.isdigit() and int(tok) > 0:
            out.append(int(tok))
        else:
            raise ValueError(f"--threads: expected positive integers or 'default', comma-separated, got {tok!r}")
    return out


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--suite", action="store_true", help="every case of the suite (see _bench_cases.py)")
    mode.add_argument("--quick", action="store_true", help="a 4-case smoke subset of the suite")
    ap.add_argument("--cases", default=None, help="comma-separated names or fnmatch patterns (within the mode)")
    ap.add_argument("--methods", default=None, help=f"comma-separated, from {', '.join(METHODS)}")
    ap.add_argument("--threads", default=None, help="comma-separated: integers and/or 'default'")
    ap.add_argument("--max-displacement", type=float, default=8.0, help="max of the warp (mm), legacy case mni")
    ap.add_argument("--out", default="bench_images_out")
    ap.add_argument("--skip-done", action="store_true", help="skip runs already in OUT/results.json")
    ap.add_argument("--report", action="store_true", help="only re-render OUT/results.md from OUT/results.json")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run before it is stopped")
    ap.add_argument("--list", action="store_true", help="print the selected case names and exit")
    ap.add_argument("--ours-options", type=json.loads, default=None, metavar="JSON",
                    help="extra keyword arguments of register_images for ours, e.g. '{\"iterations\": [100, 40]}' "
                         "(a 'threads' entry applies to the default-threads run); use another --out per variant")
    args = ap.parse_args(argv)
    if args.ours_options is not None and not isinstance(args.ours_options, dict):
        ap.error(f"--ours-options: expected a JSON object, got {args.ours_options!r}")
    return ap, args


def main(argv=None):
    ap, args = _args(argv)
    universe = cases.suite_names() if args.suite else cases.quick_names() if args.quick else list(cases.LEGACY)
    try:
        names = cases.select(args.cases, universe) if args.cases else universe
        threads = _parse_threads(args.threads or ("1,default" if args.suite or args.quick else "1"))
    except ValueError as exc:
        ap.error(str(exc))
    default_methods = "ours,dipy,ants,ants_long,sitk" if args.suite or args.quick else \
        "ours,ours_ssd,ants,ants_long,dipy,sitk"
    methods = [m for m in (args.methods or default_methods).split(",") if m]
    for m in methods:
        if m not in RUNNERS:
            ap.error(f"--methods: unknown {m!r}; choose from {', '.join(METHODS)}")
    if args.list:
        print("\n".join(names))
        return 0
    store = report.Store(args.out)
    if not args.report:
        store.add_run({"argv": sys.argv[1:] if argv is None else list(argv), "commit": _git_commit(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
                       "loadavg": os.getloadavg()})
        _run_all(store, names, methods, threads, args)
    text = report.render(store.data, names, methods, [report.Store.threads_label(t) for t in threads])
    print(text)
    store.write_text("results.md", text)
    report.plot(store.data, names, os.path.join(args.out, "results.png"))
    return 0


def _run_all(store, names, methods, threads, args):
    import torch

    torch.set_num_threads(1)  # building the cases (deterministic whatever the thread count)
    for name in names:
        todo = [(m, t) for m in methods for t in threads
                if not (name == "mni" and m == "ours_ssd") and not (args.skip_done and store.done(name, m, t))]
        if not todo:
            continue
        print(f"[{name}] building the case ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        case = cases.build(name, args.max_displacement)
        meta = dict(case.meta, build_seconds=time.perf_counter() - t0, kind=case.kind)
        meta["before"] = before(case)
        store.set_case(name, meta)
        case_dir = cases.save_case(case, store.work_dir(name))
        for m, t in todo:
            print(f"[{name}] {m} threads={report.Store.threads_label(t)} ...", file=sys.stderr, flush=True)
            load = os.getloadavg()[0]
            res = run_method(m, case_dir, t, args.timeout, args.ours_options)
            res.update(loadavg_before=load, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
            store.set_result(name, m, t, res)
        store.drop_work(name)


if __name__ == "__main__":
    sys.exit(main())
