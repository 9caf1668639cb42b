"""Side-by-side image registration benchmark: lddmm-nets vs ANTs SyN, dipy SyN and SimpleITK diffeomorphic demons.

Cases (all data bundled with installed packages; nothing is downloaded):

(a) ``circle``: dipy's circle -> C (2-D, 256², large deformation). Label = the shape itself.
(b) ``mni``: nilearn's MNI152 T1 at 2 mm (fixed) and the same T1 warped by a random smooth diffeomorphism with a
    known ground truth (moving); GM / WM masks warped by the same known warp are the moving-space labels.

Every method registers moving onto fixed and then warps, with its own transform, (i) the moving labels
(nearest neighbour) and (ii) the moving space's world-coordinate images (linear, exact for linear functions).
From (i): Dice against the fixed labels. From (ii), the method's map ``x -> y(x)``: the Jacobian determinant
(NDV %, SDlogJ; voxels 3 or more from the border) and, for (b), the mean distance to the known map inside the
brain (mm). Each method runs in its own forked process: wall time of the registration alone, and the peak
resident memory of that process above its level once the method's libraries are imported ("peak MB"; the
imports' own growth is "lib MB": torch, ITK and ANTs weigh 100-200 MB before any work). Both are measured
from a clean mark (free heap returned to the system, the kernel's peak counter reset; Linux): a forked child
otherwise reuses the parent's free but resident heap, and the same run read anywhere from 4 to 280 MB.

Threads: ``--threads`` (default 1) is applied to every method (torch, ITK, OpenMP), a fair single-core
comparison that is also robust to a shared machine.

Usage::

    python scripts/bench_images.py [--cases circle,mni] [--methods ours,ants,ants_long,dipy,sitk]
                                   [--threads 1] [--max-displacement 8] [--out bench_images_out]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

# threads must be fixed before numpy / torch / ITK start their pools
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--threads", type=int, default=1)
_THREADS = _pre.parse_known_args()[0].threads
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ[_var] = str(_THREADS)

import multiprocessing as mp  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from registration.evaluation import dice, world_coordinates  # noqa: E402
from registration.io import Image, sitk_geometry  # noqa: E402

METHODS = ("ours", "ours_ssd", "ants", "ants_long", "dipy", "sitk")


# --------------------------------------------------------------------------------------------------- methods
# Each returns (seconds, warp) where warp(array_on_moving_grid, interp) -> array on the fixed grid.

def _ours(fixed: Image, moving: Image, case: str, metric: str | None = None):
    import torch

    from registration.images import register_images

    torch.set_num_threads(_THREADS)
    t0 = time.perf_counter()
    res = register_images(fixed, moving, **({} if metric is None else {"metric": metric}))
    sec = time.perf_counter() - t0

    def warp(arr, interp):
        return res.apply(Image(arr, moving.affine), interp=interp).data

    return sec, warp, {"stop_reason": res.stop_reason, "iterations": [lv.iterations for lv in res.levels]}


def _to_sitk(img: Image):
    import SimpleITK as sitk

    data = img.data.astype(np.float32)
    s = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose()))
    origin, spacing, direction = sitk_geometry(img.affine, img.ndim)
    s.SetOrigin(origin), s.SetSpacing(spacing), s.SetDirection(direction)
    return s


def _to_ants(img: Image):
    import ants

    origin, spacing, direction = sitk_geometry(img.affine, img.ndim)
    d = img.ndim
    return ants.from_numpy(img.data.astype(np.float32), origin=list(origin), spacing=list(spacing),
                           direction=np.asarray(direction).reshape(d, d))


def _ants(fixed: Image, moving: Image, case: str, long: bool = False):
    import ants

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

    return sec, warp, {"reg_iterations": kw.get("reg_iterations", "default (40, 20, 0)")}


def _dipy(fixed: Image, moving: Image, case: str):
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric, SSDMetric

    d = fixed.ndim
    if case == "circle":
        metric, iters = SSDMetric(d), [200, 100, 50, 25]
    else:
        metric, iters = CCMetric(d), [20, 10, 5]
    sdr = SymmetricDiffeomorphicRegistration(metric, level_iters=iters)
    aff_f = _affine_d(fixed.affine, d)
    aff_m = _affine_d(moving.affine, d)
    t0 = time.perf_counter()
    mapping = sdr.optimize(fixed.data.astype(np.float64), moving.data.astype(np.float64),
                           static_grid2world=aff_f, moving_grid2world=aff_m)
    sec = time.perf_counter() - t0

    def warp(arr, interp):
        return mapping.transform(arr.astype(np.float64), interpolation=interp)

    return sec, warp, {"metric": type(metric).__name__, "level_iters": iters}


def _affine_d(affine: np.ndarray, d: int) -> np.ndarray:
    if d == 3:
        return affine
    out = np.eye(3)
    out[:2, :2] = affine[:2, :2]
    out[:2, 2] = affine[:2, 3]
    return out


def _sitk(fixed: Image, moving: Image, case: str):
    """Multi-resolution diffeomorphic demons (shrink 4, 2, 1), after histogram matching."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(_THREADS)
    f, m = _to_sitk(fixed), _to_sitk(moving)
    t0 = time.perf_counter()
    m_matched = sitk.HistogramMatching(m, f, numberOfHistogramLevels=256, numberOfMatchPoints=15,
                                       thresholdAtMeanIntensity=True)
    disp = None
    for shrink, iters in ((4, 100), (2, 50), (1, 25)):
        fs = sitk.Shrink(sitk.SmoothingRecursiveGaussian(f, 0.5 * shrink * min(f.GetSpacing())),
                         [shrink] * f.GetDimension()) if shrink > 1 else f
        ms = sitk.Shrink(sitk.SmoothingRecursiveGaussian(m_matched, 0.5 * shrink * min(f.GetSpacing())),
                         [shrink] * f.GetDimension()) if shrink > 1 else m_matched
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

    return sec, warp, {"shrink": [4, 2, 1], "iterations": [100, 50, 25], "std": 1.5}


RUNNERS = {
    "ours": _ours,
    "ours_ssd": lambda f, m, c: _ours(f, m, c, metric="ssd"),
    "ants": _ants,
    "ants_long": lambda f, m, c: _ants(f, m, c, long=True),
    "dipy": _dipy,
    "sitk": _sitk,
}


# --------------------------------------------------------------------------------------------------- cases

def make_case(name: str, max_displacement: float):
    from registration.data import load_circle_c, load_mni152, warped_pair

    if name == "circle":
        circle, c = load_circle_c()
        return {"fixed": c, "moving": circle, "labels_moving": {"shape": (circle.data > 0.5).astype(np.uint8)},
                "labels_fixed": {"shape": (c.data > 0.5).astype(np.uint8)}, "truth": None, "roi": None}
    mni = load_mni152(2)
    pair = warped_pair(mni.t1, {"gm": mni.gm, "wm": mni.wm}, max_displacement=max_displacement, smoothness=12.0,
                       seed=0)
    roi = mni.t1.data > 0.1 * mni.t1.data.max()
    return {"fixed": mni.t1, "moving": pair.moving, "labels_moving": pair.labels_moving,
            "labels_fixed": pair.labels_fixed, "truth": pair.true_map(),  # fixed x -> moving-space point
            "roi": roi, "warp_max_mm": pair.warp.max_displacement}


def _evaluate(case, warped_labels, warped_coords) -> dict:
    from lddmm_nets.fields import jacobian_determinant
    import torch

    fixed = case["fixed"]
    d = fixed.ndim
    out = {f"dice_{k}": dice(warped_labels[k], case["labels_fixed"][k]) for k in warped_labels}
    spacing = tuple(float(np.linalg.norm(fixed.affine[:d, i])) for i in range(d))
    rot = fixed.affine[:d, :d] / np.asarray(spacing)[None, :]
    y = np.tensordot(rot.T, warped_coords, axes=1)  # the map in grid-aligned mm
    jac = jacobian_determinant(torch.as_tensor(y), spacing).numpy()
    inner = (slice(3, -3),) * d
    j = jac[inner]
    out["ndv_percent"] = float(100 * np.mean(j <= 0))
    out["sdlogj"] = float(np.std(np.log(np.clip(j, 1e-9, None))))
    if case["truth"] is not None:
        err = np.linalg.norm(warped_coords - case["truth"], axis=0)
        out["mean_error_mm"] = float(err[case["roi"]].mean())
        out["mean_error_before_mm"] = float(np.linalg.norm(world_coordinates(fixed) - case["truth"],
                                                           axis=0)[case["roi"]].mean())
    return out


_OURS_IMPORTS = ("torch", "scipy.ndimage", "registration.images", "lddmm_nets.grid", "lddmm_nets.kernels")
_IMPORTS = {"ours": _OURS_IMPORTS, "ours_ssd": _OURS_IMPORTS,
            "ants": ("ants",), "ants_long": ("ants",), "dipy": ("dipy.align.imwarp", "dipy.align.metrics"),
            "sitk": ("SimpleITK",)}


def _status_kb(field: str):
    """``VmRSS`` / ``VmHWM`` of this process in kB (Linux), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _memory_mark() -> int:
    """Start a peak-memory measurement; returns the resident size (kB) it is measured from.

    A forked child inherits the parent's heap, including memory that is free but still resident, and its
    ``ru_maxrss`` starts from the parent's: measured naively, its growth depended on what the parent had done
    before (the same registration read 44-283 MB). So: return free heap memory to the system (glibc
    ``malloc_trim``) and reset the kernel's peak counter to the current size (``/proc/self/clear_refs``), then
    measure from there. Elsewhere, ``ru_maxrss``.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    rss = _status_kb("VmRSS")
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _memory_peak() -> int:
    """Peak resident size (kB) since the last :func:`_memory_mark`."""
    hwm = _status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(method, case, queue):
    try:
        import importlib

        # the libraries' own import footprint is reported apart ("lib MB"): "peak MB" is the registration's
        before = _memory_mark()
        for mod in _IMPORTS.get(method, ()):
            importlib.import_module(mod)
        lib = _memory_peak() - before
        base = _memory_mark()
        sec, warp, info = RUNNERS[method](case["fixed"], case["moving"], case["name"])
        peak = _memory_peak()
        labels = {k: warp(v.astype(np.float32), "nearest") for k, v in case["labels_moving"].items()}
        coords = world_coordinates(case["moving"])
        wc = np.stack([warp(c.astype(np.float64), "linear") for c in coords])
        res = _evaluate(case, labels, wc)
        res.update(seconds=sec, peak_mb=max(peak - base, 0) / 1024.0, lib_mb=max(lib, 0) / 1024.0,
                   info=info)
        queue.put(res)
    except Exception as exc:  # report the failure in the table instead of crashing the benchmark
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def run_method(method, case):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(method, case, q))
    p.start()
    res = q.get()
    p.join()
    return res


def _fmt(v, f="{:.3f}"):
    return "-" if v is None else (f.format(v) if isinstance(v, (int, float)) else str(v))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="circle,mni")
    ap.add_argument("--methods", default="ours,ours_ssd,ants,ants_long,dipy,sitk")
    ap.add_argument("--threads", type=int, default=1, help="threads for every method (default 1)")
    ap.add_argument("--max-displacement", type=float, default=8.0, help="max of the random warp (mm), case mni")
    ap.add_argument("--out", default="bench_images_out")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in RUNNERS:
            ap.error(f"--methods: unknown {m!r}; choose from {sorted(RUNNERS)}")
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for name in [c for c in args.cases.split(",") if c]:
        case = make_case(name, args.max_displacement)
        case["name"] = name
        for m in methods:
            if name == "mni" and m == "ours_ssd":
                continue
            print(f"[{name}] {m} ...", file=sys.stderr, flush=True)
            results[(name, m)] = run_method(m, case)
    rows = []
    header = ["case", "method", "time s", "peak MB", "lib MB", "Dice shape/GM", "Dice WM", "NDV %", "SDlogJ",
              "err mm"]
    for (name, m), r in results.items():
        if "error" in r:
            rows.append([name, m, "failed: " + r["error"][:60]] + [""] * 7)
            continue
        rows.append([name, m, _fmt(r["seconds"], "{:.1f}"), _fmt(r["peak_mb"], "{:.0f}"), _fmt(r["lib_mb"], "{:.0f}"),
                     _fmt(r.get("dice_shape", r.get("dice_gm"))), _fmt(r.get("dice_wm")),
                     _fmt(r["ndv_percent"]), _fmt(r["sdlogj"]), _fmt(r.get("mean_error_mm"), "{:.2f}")])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths)) + " |" for row in [header] + rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "results.md"), "w") as fh:
        fh.write(f"threads per method: {args.threads}\n\n{table}\n")
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump({f"{k[0]}/{k[1]}": v for k, v in results.items()}, fh, indent=2, default=str)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ok = [(k, v) for k, v in results.items() if "error" not in v]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        labels = [f"{k[0]}\n{k[1]}" for k, _ in ok]
        axes[0].bar(labels, [v.get("dice_shape", v.get("dice_gm", 0)) for _, v in ok])
        axes[0].set_ylim(0.5, 1.0)
        axes[0].set_title("Dice (shape / GM)")
        axes[1].bar(labels, [v["seconds"] for _, v in ok])
        axes[1].set_title("wall time (s)")
        for ax in axes:
            ax.tick_params(axis="x", labelsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "results.png"), dpi=90)
    except Exception as exc:  # the table is the product; the plot is a convenience
        print(f"plot skipped: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
