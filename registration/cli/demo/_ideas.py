"""Demo sections: idea registration with a linear readout on two spirals, and the weight-norm profile of a
ResNetFlow."""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import torch

from lddmm_nets.optim import ConvergenceWarning

from ._report import Check, Section, use_agg

__all__ = ["idea_sections"]


def _spirals(quick: bool):
    from sklearn.model_selection import train_test_split

    from lddmm_nets.nets.datasets import make_spirals

    X, y = make_spirals(400, noise=0.1, random_state=0)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


def _grid_lines(Z: np.ndarray, n: int = 15, m: int = 120) -> list:
    """Horizontal and vertical lines (m points each) of an n x n grid around the points Z (M, 2)."""
    lo, hi = Z.min(0) - 0.2, Z.max(0) + 0.2
    lines = [np.c_[np.linspace(lo[0], hi[0], m), np.full(m, c)] for c in np.linspace(lo[1], hi[1], n)]
    return lines + [np.c_[np.full(m, c), np.linspace(lo[1], hi[1], m)] for c in np.linspace(lo[0], hi[0], n)]


def _readout_frame(clf, Z_final: np.ndarray):
    """An orthonormal frame (u, v) of the warped space: u the normal of the separating hyperplane of the linear
    readout, v the direction of largest spread of the warped points orthogonal to it; and the hyperplane's offset
    along u."""
    w = clf.coef_[1] - clf.coef_[0]
    b = float(clf.intercept_[1] - clf.intercept_[0])
    u = w / np.linalg.norm(w)
    R = Z_final - Z_final.mean(0)
    R = R - np.outer(R @ u, u)
    v = np.linalg.svd(R, full_matrices=False)[2][0]
    return u, v - (v @ u) * u, -b / np.linalg.norm(w)


def _plot_spirals(pipe, X, y, Xtr, ytr, path: str, quick: bool = False) -> None:
    """Decision regions with held-out points ``X``, then the training points ``Xtr`` and a grid carried by the
    fitted flow at t = 0, ½, 1, seen in the frame of the linear readout (the separating line is vertical). The quick
    demo draws the decision regions and the grid lines at a coarser resolution (a third of the section's time)."""
    plt = use_agg()
    scaler, clf = pipe[0], pipe[-1]
    lo, hi = X.min(0) - 0.3, X.max(0) + 0.3
    n = 100 if quick else 200
    xx, yy = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    score = np.asarray(pipe.decision_function(np.c_[xx.ravel(), yy.ravel()])).reshape(xx.shape)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    ax = axes[0]
    lim = float(np.abs(score).max()) or 1.0
    ax.contourf(xx, yy, score, levels=np.linspace(-lim, lim, 11), cmap="RdBu_r", alpha=0.6)
    ax.contour(xx, yy, score, levels=[0.0], colors="k", linewidths=1)
    ax.scatter(X[:, 0], X[:, 1], c=y, cmap="RdBu_r", s=8, edgecolors="k", linewidths=0.2)
    ax.set_title("decision regions (held-out points)", fontsize=9)
    Z = scaler.transform(Xtr)
    path_pts = clf.warp(Z, return_path=True)
    lines = _grid_lines(Z, m=60 if quick else 120)
    path_grid = np.split(clf.warp(np.concatenate(lines), return_path=True), len(lines), axis=1)  # one pass
    u, v, cut = _readout_frame(clf, path_pts[-1])
    n_t = path_pts.shape[0] - 1
    for ax, k in zip(axes[1:], (0, n_t // 2, n_t)):
        for g in path_grid:
            ax.plot(g[k] @ u, g[k] @ v, color="0.7", lw=0.5)
        ax.scatter(path_pts[k] @ u, path_pts[k] @ v, c=ytr, cmap="RdBu_r", s=8, edgecolors="k", linewidths=0.2)
        ax.set_title(f"training points and grid carried by the flow, t = {k / n_t:.2g}", fontsize=9)
    axes[-1].axvline(cut, color="k", lw=1.2)
    axes[-1].set_title("t = 1: a straight line (the linear readout) separates them", fontsize=9)
    for ax in axes:
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=75)
    plt.close(fig)


def _fit_spirals(Xtr, ytr, quick: bool):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lddmm_nets.nets import KernelWarpingClassifier

    # the defaults with a linear readout; the quick demo skips the inner cross-validation of ν and takes the value
    # it chooses on these data (1e-3)
    options = dict(readout="linear", random_state=0, **({"nu": 1e-3} if quick else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the budget's stop is reported in the numbers
        pipe = make_pipeline(StandardScaler(), KernelWarpingClassifier(**options)).fit(Xtr, ytr)
        raw = make_pipeline(StandardScaler(), KernelWarpingClassifier(readout="linear", nu=np.inf)).fit(Xtr, ytr)
    return pipe, raw


def _spirals_section(out: str, quick: bool, progress) -> Section:
    Xtr, Xte, ytr, yte = _spirals(quick)
    progress(f"spirals: fitting a KernelWarpingClassifier(readout='linear') on {len(ytr)} points")
    t0 = time.perf_counter()
    pipe, raw = _fit_spirals(Xtr, ytr, quick)
    fit_seconds = time.perf_counter() - t0
    acc, acc_raw = float(pipe.score(Xte, yte)), float(raw.score(Xte, yte))
    clf = pipe[-1]
    _plot_spirals(pipe, Xte, yte, Xtr, ytr, os.path.join(out, "spirals.png"), quick)
    Z = pipe[0].transform(np.concatenate([Xtr, Xte]))
    lo, hi = Z.min(0) - 0.5, Z.max(0) + 0.5
    grid = np.stack(np.meshgrid(np.linspace(lo[0], hi[0], 60), np.linspace(lo[1], hi[1], 60)), -1).reshape(-1, 2)
    min_det = float(clf.jacobian_determinant(grid).min())
    numbers = {"held-out accuracy": acc, "held-out accuracy of the same linear readout without the flow": acc_raw,
               "training points": len(ytr), "held-out points": len(yte), "fit seconds": fit_seconds,
               "warp strength nu_": float(clf.nu_), "layers": clf.n_layers_, "extra dimensions (augment_)": clf.augment_,
               "min det of the flow's Jacobian on a 60 x 60 grid around the data": min_det,
               "L-BFGS stop": f"{clf.stop_reason_} after {clf.n_iter_} iterations",
               "mean displacement of the training points": float(clf.displacement_)}
    return Section(
        key="spirals", title="Ideas: the flow separates, the readout is linear (two spirals)",
        caption="A KernelWarpingClassifier(readout='linear') trained on three quarters of two interleaved spirals "
                "and scored on the rest. The flow of RKHS velocity fields carried by the training points (a ResNet "
                "with one momentum per layer) moves the points, and the plane with them (grey grid), until a "
                "straight line separates the two classes: the readout is a ridge regression on the warped "
                "coordinates, as a ResNet's last layer. Right panels: the points and the grid at t = 0, ½, 1, seen "
                "in the frame of the readout (its separating line is vertical). The flow stays a diffeomorphism: the "
                "determinant of its Jacobian is positive on a grid around the data. Without the flow the same "
                "linear readout is no better than chance.",
        pictures=["spirals.png"], numbers=numbers,
        checks=[Check("held-out accuracy", acc, ">=", 0.98), Check("min det of the flow's Jacobian", min_det, ">", 0.0),
                Check("held-out accuracy of the linear readout without the flow", acc_raw, "<=", 0.75)])


def _resnet_section(out: str, quick: bool, progress) -> Section:
    from sklearn.datasets import make_moons

    from lddmm_nets.meanfield import fit_loglog_slope
    from lddmm_nets.nets import ResNetFlow, layer_diagnostics, train_resnet

    X, y = make_moons(200, noise=0.1, random_state=0)
    X = torch.as_tensor((X - X.mean(0)) / X.std(0))
    Y = torch.nn.functional.one_hot(torch.as_tensor(y)).double()
    plt = use_agg()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    numbers, spreads = {}, {}
    depths = (8, 16) if quick else (8, 16, 32)
    runs = [(L, 1e-2, "-o") for L in depths] + [(depths[-1], 0.0, ":x")]
    for L, nu, style in runs:
        progress(f"ResNet: L = {L}, nu = {nu}")
        model = ResNetFlow(2, 2, n_layers=L, nu=nu, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a budget of 300 iterations, reported below
            res = train_resnet(model, X, Y, max_iter=300)
        diag = layer_diagnostics(model)
        name = f"L = {L}, {'scaled decay' if nu else 'plain ResNet'}"
        numbers[f"L-BFGS stop, {name}"] = f"{res.stop_reason} (max |gradient| {res.grad_norm:.1e})"
        spreads[(L, nu)] = diag.spread
        t = (np.arange(L) + 0.5) / L
        ax.plot(t, diag.weight_norms, style, ms=3, label=f"{name} (spread {diag.spread:.2g})")
        numbers[f"spread, {name}"] = diag.spread
    ax.set_xlabel("layer time t = (k + ½)/L")
    ax.set_ylabel("‖W_k‖² + ‖b_k‖²")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("ResNetFlow on moons: weight norms per layer", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "resnet_weights.png"), dpi=80)
    plt.close(fig)
    L2 = depths[-1]
    slope = fit_loglog_slope(depths, [spreads[(L, 1e-2)] for L in depths])
    numbers["log-log slope of the spread against L (theory: -1)"] = slope
    return Section(
        key="resnet", title="ResNets as flows: weight norms across layers",
        caption="A ResNetFlow x_{k+1} = x_k + Δt (W_k tanh(x_k) + b_k) trained to convergence with the scaled weight "
                "decay ν Δt / 2 per layer conserves the Hamiltonian: ‖W_k‖² + ‖b_k‖² is nearly the same in every "
                "layer, and the spread shrinks like O(1/L) as the network deepens. A plain ResNet (ν = 0) has no "
                "such structure.",
        pictures=["resnet_weights.png"], numbers=numbers,
        checks=[Check(f"spread with decay, L = {L2}", spreads[(L2, 1e-2)], "<", 0.2),
                Check("slope of the spread against L", slope, "<=", -0.7)])


def idea_sections():
    """The idea sections in display order: ``(name, function(out, quick, progress) -> Section)``."""
    return [("spirals", _spirals_section), ("resnet", _resnet_section)]
