"""Demo section: matched landmarks (a circle onto a "C") registered by geodesic shooting."""

from __future__ import annotations

import math
import os

import torch

from lddmm_nets import GaussianKernel

from ...landmarks import register_landmarks
from ._report import Check, Section, use_agg

__all__ = ["circle_to_c", "landmark_section"]


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
    plt = use_agg()

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


def landmark_section(out: str, quick: bool, progress) -> Section:
    """Register 16 (quick) or 24 matched landmarks, circle onto a C; picture ``landmarks.png``."""
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
    numbers = {
        "landmarks": int(source.shape[0]),
        "RMS residual": res.residual,
        "kinetic energy H(q0, p0)": res.regularity,
        "iterations": res.n_iter,
        "stop reason": res.stop_reason,
        "min det Dphi on grid": float(det.min()),
        "max |phi^-1(phi(x)) - x|": roundtrip,
        "seconds": res.seconds,
    }
    return Section(
        key="landmarks", title="Landmarks: circle onto a C",
        caption="Matched landmarks on a circle are registered onto a C by geodesic shooting (Gaussian kernel, "
                "L-BFGS on the initial momenta). Grey: the deformed grid phi_1; blue: the landmark trajectories. "
                "The inverse is the exact inverse of each discrete step.",
        pictures=["landmarks.png"], numbers=numbers,
        checks=[Check("RMS residual", res.residual, "<", 0.05), Check("min det Dphi", float(det.min()), ">", 0.0),
                Check("round trip error", roundtrip, "<", 1e-8)])
