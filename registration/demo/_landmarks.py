"""``lddmm demo``: the main job on embedded data, written as pictures, a JSON report and an HTML page.

For now the demo registers matched landmarks (a circle onto a "C") by geodesic shooting and draws the deformed grid
and the landmark trajectories. Later parts (images, ideas, mean-field) add their sections here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from html import escape

import torch

from lddmm_nets import GaussianKernel

from .landmarks import register_landmarks

__all__ = ["run_demo", "circle_to_c"]


def circle_to_c(n: int = 24, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Matched landmarks: ``n`` points on the unit circle and their partners on a "C" of radius 0.9.

    Returns
    -------
    source, target : (n, 2) tensors
    """
    t = torch.linspace(0, 2 * math.pi, n + 1, dtype=dtype)[:-1]
    source = torch.stack([t.cos(), t.sin()], 1)
    a = 0.4 + (2 * math.pi - 0.8) * t / (2 * math.pi)
    return source, 0.9 * torch.stack([a.cos(), a.sin()], 1)


def _plot_landmarks(res, source, target, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=110)
    lines = torch.linspace(-1.6, 1.6, 17, dtype=source.dtype)
    fine = torch.linspace(-1.6, 1.6, 161, dtype=source.dtype)
    with torch.no_grad():
        for c in lines:
            for pts in (torch.stack([fine, c.expand_as(fine)], 1), torch.stack([c.expand_as(fine), fine], 1)):
                warped = res.transform(pts)
                ax.plot(warped[:, 0], warped[:, 1], color="0.75", lw=0.6)
        q = res.trajectory.q
    for i in range(q.shape[1]):
        ax.plot(q[:, i, 0], q[:, i, 1], color="tab:blue", lw=1)
    ax.scatter(source[:, 0], source[:, 1], s=14, color="tab:blue", label="source (circle)")
    ax.scatter(target[:, 0], target[:, 1], s=30, facecolors="none", edgecolors="tab:red", label="target (C)")
    ax.scatter(q[-1, :, 0], q[-1, :, 1], s=8, color="k", label="shot landmarks q(1)")
    ax.set_aspect("equal")
    ax.set_xlim(-1.7, 1.7)
    ax.set_ylim(-1.7, 1.7)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Geodesic shooting: deformed grid and trajectories")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _landmark_section(out: str, quick: bool, progress) -> dict:
    source, target = circle_to_c(16 if quick else 24)
    res = register_landmarks(source, target, kernel=GaussianKernel(sigma=0.4), sigma=0.05,
                             max_iter=60 if quick else 150, ftol=1e-6, backend="dense",
                             callback=lambda it, value: progress(f"landmarks: iteration {it}, E = {value:.4g}"))
    _plot_landmarks(res, source, target, os.path.join(out, "landmarks.png"))
    with torch.no_grad():
        grid = torch.stack(torch.meshgrid(*[torch.linspace(-1.5, 1.5, 41, dtype=source.dtype)] * 2,
                                          indexing="ij"), -1).reshape(-1, 2)
        det = torch.linalg.det(res.trajectory.flow_jacobian(grid))
        roundtrip = float((res.trajectory.inverse_flow(res.transform(grid)) - grid).abs().max())
    return {
        "title": "Landmarks: circle onto a C",
        "picture": "landmarks.png",
        "numbers": {
            "landmarks": int(source.shape[0]),
            "RMS residual": res.residual,
            "kinetic energy H(q0, p0)": res.regularity,
            "iterations": res.n_iter,
            "stop reason": res.stop_reason,
            "min det Dphi on grid": float(det.min()),
            "max |phi^-1(phi(x)) - x|": roundtrip,
            "seconds": res.seconds,
        },
    }


def _write_html(out: str, sections: list[dict]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>lddmm-nets demo</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>",
             "<h1>lddmm-nets demo</h1>"]
    for sec in sections:
        parts.append(f"<h2>{escape(sec['title'])}</h2>")
        parts.append(f"<img src='{escape(sec['picture'])}' alt='{escape(sec['title'])}' width='600'>")
        rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(f'{v:.4g}' if isinstance(v, float) else str(v))}"
                       f"</td></tr>" for k, v in sec["numbers"].items())
        parts.append(f"<table>{rows}</table>")
    parts.append("</body></html>")
    path = os.path.join(out, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path


def run_demo(out: str, *, quick: bool = False, progress=None) -> str:
    """Run every section of the demo and write ``out/index.html``, its pictures and ``out/report.json``.

    Files are written in a temporary directory beside ``out`` and moved into place at the end, so an interrupted
    demo never leaves a report that looks complete.

    Parameters
    ----------
    out : str
        Output directory (created; existing demo files in it are replaced).
    quick : bool
        Smaller problems (under a minute).
    progress : callable, optional
        ``progress(message)``; default: a tqdm status line.

    Returns
    -------
    str
        Path of ``index.html``.
    """
    from tqdm import tqdm

    parent = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".lddmm-demo-", dir=parent)
    bar = None
    try:
        if progress is None:
            bar = tqdm(total=1, desc="lddmm demo", bar_format="{desc}: {postfix}", leave=False, disable=None)
            progress = lambda message: bar.set_postfix_str(message)  # noqa: E731
        start = time.perf_counter()
        sections = [_landmark_section(tmp, quick, progress)]
        if bar is not None:
            bar.update(1)
        report = {"quick": quick, "seconds": time.perf_counter() - start,
                  "sections": {s["title"]: s["numbers"] for s in sections}}
        with open(os.path.join(tmp, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
        _write_html(tmp, sections)
        os.makedirs(out, exist_ok=True)
        for name in os.listdir(tmp):
            os.replace(os.path.join(tmp, name), os.path.join(out, name))
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(out, "index.html")
