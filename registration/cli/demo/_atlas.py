"""Demo section: a population atlas on a 2-worker Dask cluster (2-D MNI152 slices warped by known diffeomorphisms)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

import numpy as np

from ...atlas import build_template
from ...atlas.population import (class_dice, class_thresholds, correlation, label_dice, mni152_slice, sharpness,
                                 synthetic_population)
from ...io import Image
from ._report import Check, Section, use_agg

__all__ = ["atlas_sections"]


def _show(ax, image, title):
    ax.imshow(np.rot90(np.asarray(image.data)), cmap="gray", vmin=0)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _figure(pop, plain, res, path: str) -> None:
    """Row 1: subjects and their plain mean; row 2: the template at every iteration and the truth; row 3: the
    template shot along the first principal mode of the momenta, at -2, 0 and +2 standard deviations."""
    plt = use_agg()
    modes, std = res.principal_modes(1)
    shots = [(c, res.shoot(c * std[0] * modes[0]) if c else res.template) for c in (-2, 0, 2)]
    ncol = max(len(pop.subjects) + 1, len(res.templates) + 1, len(shots) + 1)
    fig, axes = plt.subplots(3, ncol, figsize=(1.9 * ncol, 6.6))
    for ax in axes.ravel():
        ax.axis("off")
    for k, s in enumerate(pop.subjects):
        _show(axes[0, k], s, f"subject {k}")
    _show(axes[0, len(pop.subjects)], plain, "plain mean")
    for k, t in enumerate(res.templates):
        _show(axes[1, k], t, "initial template" if k == 0 else f"iteration {k}")
    _show(axes[1, len(res.templates)], pop.truth, "truth (MNI152)")
    for k, (c, img) in enumerate(shots):
        _show(axes[2, k], img, f"mode 1: {c:+d} sd" if c else "template")
    mom = np.linalg.norm(modes[0], axis=-1)
    axes[2, len(shots)].imshow(np.rot90(mom), cmap="viridis")
    axes[2, len(shots)].set_title("|mode 1| (momentum)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@contextlib.contextmanager
def _quiet_dask():
    """Dask logs every worker start and stop at INFO: errors only while the section runs."""
    import dask

    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with dask.config.set({"logging.distributed": "error"}):
            yield
    finally:
        logger.setLevel(level)


def _atlas(out: str, quick: bool, progress) -> Section:
    from distributed import Client, LocalCluster

    t1, labels = mni152_slice(4)
    n, iterations = (4, 1) if quick else (6, 3)
    pop = synthetic_population(t1, labels, n=n, max_displacement=6.0, smoothness=12.0, seed=0)
    plain = Image(np.mean([s.data for s in pop.subjects], axis=0).astype(np.float32), t1.affine)

    def callback(event):
        if event["event"] == "task":
            progress(f"atlas: {event['stage']} {event['done']}/{event['total']}")

    progress("atlas: starting a 2-worker Dask cluster")
    with _quiet_dask(), LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=":0") as cluster, \
            Client(cluster) as client, tempfile.TemporaryDirectory(dir=out) as work:
        res = build_template(pop.subjects, iterations=iterations, client=client, out=os.path.join(work, "run"),
                             callback=callback)
        scores = label_dice([res.transform(name) for name in res.names], pop.labels, pop.truth_labels)
        _figure(pop, plain, res, os.path.join(out, "atlas.png"))
    thresholds = class_thresholds(t1, labels["gm"], labels["wm"])
    classes = class_dice(res.template, t1, thresholds)
    numbers = {"subjects": n, "iterations": iterations, "workers": res.workers.split(" at ")[0],
               "correlation with the truth: plain mean": correlation(plain, t1),
               "correlation with the truth: template": correlation(res.template, t1),
               "sharpness (truth / plain mean / template)":
                   f"{sharpness(t1):.4f} / {sharpness(plain):.4f} / {sharpness(res.template):.4f}",
               "Dice GM (labels voted through the transforms)": scores["gm"],
               "Dice WM (labels voted through the transforms)": scores["wm"],
               "Dice GM / WM (intensity classes)": f"{classes['gm']:.3f} / {classes['wm']:.3f}",
               "bias (mm) per round": str([round(h.bias, 3) for h in res.history]),
               "bias / mean deformation, final round": res.history[-1].bias_ratio,
               "template change per update": str([round(h.template_change, 4) for h in res.history if h.updated]),
               "seconds per registration (mean)": float(np.mean([h.task_seconds for h in res.history])),
               "seconds": res.seconds}
    return Section(
        key="atlas", title="Atlas: an unbiased template of a population, on Dask",
        caption="An axial MNI152 slice (4 mm) warped by random diffeomorphisms and their inverses, so that the "
                "population's true template is the slice itself. build_template registers every subject onto the "
                "template (one task per subject on a local Dask cluster of 2 worker processes), replaces the template "
                "by the Jacobian-weighted mean of the subjects pulled back, and shoots it along the mean initial "
                "momentum so that it stays at the population's centre; a final round registers every subject onto "
                "the final template. Row 1: the subjects and their plain mean; row 2: the template across "
                "iterations and the truth; row 3: the template shot along the first principal mode of the "
                "subjects' momenta. Grey / white matter are scored by carrying each subject's masks back with its "
                "own transform and voting.",
        pictures=["atlas.png"], numbers=numbers,
        checks=[Check("template correlation - plain mean correlation", numbers["correlation with the truth: template"]
                      - numbers["correlation with the truth: plain mean"], ">=", 0.02),
                Check("Dice GM (voted)", scores["gm"], ">=", 0.97),
                Check("Dice WM (voted)", scores["wm"], ">=", 0.98),
                Check("bias / mean deformation, final round", res.history[-1].bias_ratio, "<=", 0.5)])


def atlas_sections():
    """The atlas section: ``(name, function(out, quick, progress) -> Section)``."""
    return [("atlas", _atlas)]
