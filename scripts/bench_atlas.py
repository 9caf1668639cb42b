"""Benchmark: population templates, ours (``registration.atlas.build_template`` on Dask) against ANTs'
``ants.build_template`` (antspyx), side by side in one run, on 3-D MNI152 populations with a known template.

Each population is the MNI152 T1 (and its GM / WM masks) at 4 or 2 mm warped by n/2 random diffeomorphisms and their
inverses (``registration.atlas.population.synthetic_population``): the velocities average to zero, so the true
template is MNI152 itself. Per method: wall time, the template's correlation with MNI152, its sharpness (mean
gradient magnitude), Dice of grey / white matter *voted through the method's own transforms* (each subject's masks
pulled back and majority-voted; ANTs' transforms come from one more ``ants.registration`` per subject onto its final
template, timed apart), Dice of intensity classes (no transform involved), and the RMS of the mean displacement of
the subjects' transforms (mm; how far the template sits from the population's centre). For ours also the bias
ratio and the time per subject-registration, and serial against Dask workers (speed-up).

The same number of template updates for both (``--iterations``); ours then registers every subject once more onto
its final template (so its momenta and transforms belong to it), which ANTs does not: our wall time includes that
round, ANTs' build time does not include its final registrations (shown in their own column).

Run (idle machine; the default configurations of the issue take about 20 minutes on 2 cores):

    python scripts/bench_atlas.py                                   # n=8 and n=16 at 4 mm, n=8 at 2 mm
    python scripts/bench_atlas.py --configs 4:4 --iterations 2      # a small check (minutes)
    python scripts/bench_atlas.py --configs 4:8 --serial            # + the serial run for the speed-up
    python scripts/bench_atlas.py --configs 4:8,4:16 --serial --serial-threads 1 --skip-ants --repeats 3
                                                                    # the speed-up, median of 3 alternating runs

Writes ``bench_atlas_out/results.json`` and ``templates.png`` (mid axial slices).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time

import numpy as np


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="4:8,4:16,2:8",
                   help="comma-separated RESOLUTION_MM:SUBJECTS (default 4:8,4:16,2:8)")
    p.add_argument("--iterations", type=int, default=4, help="template updates, both methods (default 4)")
    p.add_argument("--workers", type=int, default=2, help="Dask workers (default 2)")
    p.add_argument("--serial", action="store_true", help="also run ours serially (speed-up of the workers)")
    p.add_argument("--serial-threads", type=int, default=None,
                   help="torch threads of the serial run (default: torch's, i.e. every core)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of ours (Dask, then serial, alternating); the tables show the median time (default 1)")
    p.add_argument("--skip-ants", action="store_true")
    p.add_argument("--ants-threads", type=int, default=None, help="ITK threads for ANTs (default: all cores)")
    p.add_argument("--ants-iterations", default=None,
                   help="SyN iterations per level for ANTs, e.g. 40,20,10 (default: antspyx's, 40,20,0: the finest "
                        "level is skipped)")
    p.add_argument("--max-displacement", type=float, default=6.0, help="of each random warp, mm (default 6)")
    p.add_argument("--smoothness", type=float, default=16.0, help="of each random warp, mm (default 16)")
    p.add_argument("--register-options", default="{}", help="JSON options of register_images for ours")
    p.add_argument("--nodes", default="1,10,50", help="nodes of the 1,000-subject projection")
    p.add_argument("--cores-per-node", type=int, default=32)
    p.add_argument("--out", default="bench_atlas_out")
    return p.parse_args()


def _scores(template, transforms_or_fields, pop, thresholds, *, labels=None):
    """The template's scores against the truth; ``labels``: voted label maps (else from the transforms)."""
    from registration.atlas import population as P
    from registration.evaluation import dice

    head = pop.truth.data > 0.1 * pop.truth.data.max()
    voted = labels if labels is not None else P.vote_labels(transforms_or_fields, pop.labels)
    fields = (t.displacement for t in transforms_or_fields) if labels is None else transforms_or_fields
    classes = P.class_dice(template, pop.truth, thresholds)
    return {"correlation": P.correlation(template, pop.truth), "sharpness": P.sharpness(template, head),
            "dice_gm": dice(voted["gm"], pop.truth_labels["gm"]), "dice_wm": dice(voted["wm"], pop.truth_labels["wm"]),
            "class_dice_gm": classes["gm"], "class_dice_wm": classes["wm"],
            "mean_displacement_mm": P.mean_displacement(fields, head)}


def run_ours(pop, args, client, register_options, threads=None):
    """One timed ``build_template`` run; returns ``(row, result, directory)``: the row holds the times only, scored
    later (``_score_runs``) so that no scoring runs between timed runs (it slowed the next Dask run by 0.3-1 s)."""
    from registration.atlas import build_template

    tmp = tempfile.TemporaryDirectory()
    t0 = time.perf_counter()
    res = build_template(pop.subjects, iterations=args.iterations, client=client, out=os.path.join(tmp.name, "run"),
                         register_options=register_options, threads=threads)
    seconds = time.perf_counter() - t0
    last = res.history[-1]
    row = dict(seconds=seconds, seconds_updates=sum(h.seconds for h in res.history if h.updated),
               task_seconds=float(np.median([h.task_seconds for h in res.history])),
               reduce_seconds=float(np.median([h.reduce_seconds for h in res.history])),
               shot_seconds=float(np.median([h.shot_seconds for h in res.history])),
               bias_ratio=last.bias_ratio, bias_mm=last.bias, mean_momentum_ratio=last.mean_momentum_ratio,
               rounds=len(res.history))
    return row, res, tmp


def _check_same_templates(runs) -> None:
    """Every run of ours, Dask or serial, must have computed the same template, bit for bit (they are deterministic)."""
    first = np.asarray(runs[0][1].template.data)
    if any(not np.array_equal(np.asarray(res.template.data), first) for _, res, _ in runs[1:]):
        raise RuntimeError("two runs of ours computed different templates")


def _score_runs(runs, pop, thresholds):
    """The scores of the first run, with the median of the runs' times (``seconds_runs``: every run's), and its
    template (``_check_same_templates``: every run computed it)."""
    try:
        row, res, _ = runs[0]
        seconds = [r["seconds"] for r, _, _ in runs]
        row = dict(row, seconds=float(np.median(seconds)), seconds_runs=[round(v, 1) for v in seconds],
                   **_scores(res.template, [res.transform(n) for n in res.names], pop, thresholds))
        return row, res.template
    finally:
        for _, _, tmp in runs:
            tmp.cleanup()


def _to_ants(image):
    import ants

    return ants.from_numpy(np.asarray(image.data, np.float32), spacing=tuple(float(s) for s in image.spacing))


@contextlib.contextmanager
def _silent_stdout():
    """File descriptor 1 to /dev/null (C++ code prints there, below Python's sys.stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def run_ants(pop, args, thresholds):
    """``ants.build_template`` (SyN, its defaults), then one ``ants.registration`` per subject onto the result for
    the transforms that the scores need."""
    import ants

    from registration.io import Image

    images = [_to_ants(s) for s in pop.subjects]
    kwargs = {} if args.ants_iterations is None else {
        "reg_iterations": tuple(int(v) for v in args.ants_iterations.split(","))}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, _silent_stdout():  # ANTs' C++ prints every average affine
        template = ants.build_template(image_list=images, iterations=args.iterations, output_dir=tmp, **kwargs)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    votes, fields = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (img, labels) in enumerate(zip(images, pop.labels)):
            reg = ants.registration(template, img, type_of_transform="SyN", outprefix=os.path.join(tmp, f"s{k}_"),
                                    **kwargs)
            for name, lab in labels.items():
                pulled = ants.apply_transforms(template, _to_ants(Image(lab.astype(np.float32), pop.truth.affine)),
                                               reg["fwdtransforms"], interpolator="nearestNeighbor").numpy() > 0.5
                votes[name] = votes.get(name, 0) + pulled.astype(np.int32)
            warp = ants.apply_transforms(template, img, reg["fwdtransforms"], compose=os.path.join(tmp, f"c{k}_"))
            fields.append(np.moveaxis(ants.image_read(warp).numpy(), -1, 0))
    final = time.perf_counter() - t0
    labels = {name: (v * 2 > len(images)).astype(np.uint8) for name, v in votes.items()}
    out = Image(template.numpy().astype(np.float32), pop.truth.affine)
    row = _scores(out, fields, pop, thresholds, labels=labels)
    row.update(seconds=build, final_registration_seconds=final)
    return row, out


def project(row: dict, n_subjects: int, measured_n: int, args) -> list:
    """Wall time of an atlas of ``n`` subjects: rounds × (ceil(n / workers) × t_task + t_reduce(n)), with
    ``t_reduce(n) = t_shot + (t_reduce - t_shot) × n / n_measured`` (the shot does not depend on ``n``; the rest
    reads every subject's fields once)."""
    rounds = args.iterations + 1 + 1  # updates, the final round, the initial template (cheaper; counted as one)
    read = max(row["reduce_seconds"] - row["shot_seconds"], 0.0) / measured_n
    rows = []
    for nodes in (int(v) for v in args.nodes.split(",")):
        workers = nodes * args.cores_per_node
        per_round = math.ceil(n_subjects / workers) * row["task_seconds"] + row["shot_seconds"] + read * n_subjects
        rows.append({"nodes": nodes, "workers": workers, "hours": rounds * per_round / 3600})
    return rows


def _figure(panels: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3))
    for ax, (title, img) in zip(np.atleast_1d(axes), panels.items()):
        a = np.asarray(img.data)
        ax.imshow(np.rot90(a[:, :, a.shape[2] // 2]), cmap="gray", vmin=0)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(rows: list) -> None:
    cols = [("config", "{}"), ("method", "{}"), ("seconds", "{:.0f}"), ("correlation", "{:.4f}"),
            ("sharpness", "{:.4f}"), ("dice_gm", "{:.3f}"), ("dice_wm", "{:.3f}"), ("class_dice_gm", "{:.3f}"),
            ("class_dice_wm", "{:.3f}"), ("mean_displacement_mm", "{:.2f}")]
    print(" | ".join(c for c, _ in cols))
    for r in rows:
        print(" | ".join(fmt.format(r[c]) if c in r else "-" for c, fmt in cols))


def main() -> int:
    args = _args()
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.ants_threads or os.cpu_count() or 1))
    import logging

    import dask
    import torch
    from distributed import Client

    from registration.atlas import local_cluster
    from registration.atlas.population import class_thresholds, mni152_volume, synthetic_population
    from registration.io import Image

    register_options = json.loads(args.register_options)
    os.makedirs(args.out, exist_ok=True)
    rows, panels = [], {}
    logging.getLogger("distributed").setLevel(logging.ERROR)
    dask.config.set({"logging.distributed": "error"})
    cluster = local_cluster(args.workers)  # the default cluster's: preloaded imports, glibc's own malloc
    client = Client(cluster)
    try:
        for config in args.configs.split(","):
            res_mm, n = (int(v) for v in config.split(":"))
            truth, labels = mni152_volume(res_mm)
            pop = synthetic_population(truth, labels, n=n, max_displacement=args.max_displacement,
                                       smoothness=args.smoothness, seed=0)
            thresholds = class_thresholds(truth, labels["gm"], labels["wm"])
            name = f"{res_mm}mm n={n}"
            panels.setdefault(f"MNI152 {res_mm} mm", truth)
            panels[f"plain mean, {name}"] = Image(np.mean([s.data for s in pop.subjects], 0), truth.affine)
            runs, serial_runs = [], []
            for _ in range(args.repeats):  # alternating, so that a slow spell of the machine hits both
                runs.append(run_ours(pop, args, client, register_options))
                if args.serial:
                    serial_runs.append(run_ours(pop, args, "synchronous", register_options, args.serial_threads))
            _check_same_templates(runs + serial_runs)
            row, template = _score_runs(runs, pop, thresholds)
            rows.append(dict(row, config=name, method=f"ours, {args.workers} Dask workers"))
            panels[f"ours, {name}"] = template
            if args.serial:
                row, _ = _score_runs(serial_runs, pop, thresholds)
                threads = args.serial_threads or torch.get_num_threads()
                rows.append(dict(row, config=name, method=f"ours, serial ({threads} torch threads)"))
                rows[-1]["speedup"] = row["seconds"] / rows[-2]["seconds"]
                rows[-1]["speedups"] = [s[0]["seconds"] / d[0]["seconds"] for s, d in zip(serial_runs, runs)]
            if not args.skip_ants:
                row, template = run_ants(pop, args, thresholds)
                rows.append(dict(row, config=name, method="ANTs build_template (SyN)"))
                panels[f"ANTs, {name}"] = template
            _table(rows)
            sys.stdout.flush()
    finally:
        client.close()
        cluster.close()
    ours = [r for r in rows if r["method"].startswith("ours, ") and "Dask" in r["method"]]
    projection = project(ours[-1], 1000, int(ours[-1]["config"].split("n=")[1]), args) if ours else []
    print()
    _table(rows)
    for r in rows:
        if "speedup" in r:
            each = ", ".join(f"{v:.2f}" for v in r["speedups"])
            print(f"{r['config']}: serial / {args.workers} workers = {r['speedup']:.2f}x (medians; run by run: {each}; "
                  f"seconds {r['seconds_runs']} against {rows[rows.index(r) - 1]['seconds_runs']})")
    for r in rows:
        if "final_registration_seconds" in r:
            print(f"{r['config']}: ANTs' final registrations (for its transforms) "
                  f"{r['final_registration_seconds']:.0f} s")
    for o in ours:
        print(f"{o['config']}: ours {o['task_seconds']:.1f} s per subject-registration (median), reduction "
              f"{o['reduce_seconds']:.1f} s per round ({o['shot_seconds']:.1f} s of it the shot), bias ratio "
              f"{o['bias_ratio']:.3f}")
    for p in projection:
        print(f"projection, 1,000 subjects ({ours[-1]['config'].split(' ')[0]}): {p['nodes']} nodes x "
              f"{args.cores_per_node} workers: {p['hours']:.1f} h")
    _figure(panels, os.path.join(args.out, "templates.png"))
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump({"args": vars(args), "rows": rows, "projection": projection}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
