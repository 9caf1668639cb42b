"""Demo section: error bars of idea registration (the warped GP) on a 1-D function whose length scale varies."""

from __future__ import annotations

import os

import numpy as np

from ._report import Check, Section, use_agg

__all__ = ["gp_sections"]


def _gramacy_lee(x):
    """Gramacy & Lee (2012): fast oscillations near x = 0.5, a smooth trend towards 2.5."""
    return np.sin(10 * np.pi * x) / (2 * x) + (x - 1) ** 4


def _scores(y, mean, std) -> tuple[float, float, float]:
    from scipy.stats import norm

    return (float(np.sqrt(np.mean((y - mean) ** 2))), float(-np.mean(norm.logpdf(y, mean, std))),
            float(np.mean(np.abs(y - mean) <= norm.ppf(0.975) * std)))


def _gp_section(out: str, quick: bool, progress) -> Section:
    import warnings

    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lddmm_nets.nets import KernelWarpingRegressor

    rng = np.random.default_rng(0)
    n_train, noise = 100, 0.1
    X = rng.uniform(0.5, 2.5, (n_train, 1))
    y = _gramacy_lee(X[:, 0]) + noise * rng.normal(size=n_train)
    Xt = rng.uniform(0.5, 2.5, (1000, 1))
    yt = _gramacy_lee(Xt[:, 0]) + noise * rng.normal(size=1000)
    grid = np.linspace(0.5, 2.5, 400)[:, None]
    progress("error bars: KernelWarpingRegressor and a tuned GaussianProcessRegressor")
    est = make_pipeline(StandardScaler(), KernelWarpingRegressor(random_state=0)).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bounds of the GP's optimiser
        gp = make_pipeline(StandardScaler(), GaussianProcessRegressor(
            ConstantKernel() * RBF() + WhiteKernel(), normalize_y=True, n_restarts_optimizer=2 if quick else 5,
            random_state=0)).fit(X, y)
    ours, theirs = _scores(yt, *est.predict(Xt, return_std=True)), _scores(yt, *gp.predict(Xt, return_std=True))
    est = est[-1]
    plt = use_agg()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
    for ax, (name, model) in zip(axes, (("KernelWarpingRegressor (warped GP)", est),
                                        ("GaussianProcessRegressor (RBF + White, ML)", gp))):
        m, s = model.predict(grid, return_std=True) if model is gp else model.predict(
            gp[0].transform(grid), return_std=True)
        ax.fill_between(grid[:, 0], m - 1.96 * s, m + 1.96 * s, color="C0", alpha=0.25, label="95 % interval")
        ax.plot(grid[:, 0], _gramacy_lee(grid[:, 0]), "k--", lw=1, label="f")
        ax.plot(grid[:, 0], m, "C0", lw=1.5, label="posterior mean")
        ax.plot(X[:, 0], y, "k.", ms=4, label="training data")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("x")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "gp_error_bars.png"), dpi=75)
    plt.close(fig)
    numbers = {"training points": n_train, "noise sd": noise,
               "RMSE, ours": ours[0], "RMSE, tuned GP": theirs[0],
               "NLPD, ours": ours[1], "NLPD, tuned GP": theirs[1],
               "95 % coverage, ours": ours[2], "95 % coverage, tuned GP": theirs[2],
               "warp strength chosen (nu_)": float(est.nu_),
               "readout width (standardised x)": float(est.readout_sigma_),
               "signal sd": float(np.sqrt(est.signal_variance_[0])), "noise sd estimated": float(
                   np.sqrt(est.noise_variance_[0]))}
    return Section(
        key="gp", title="Ideas: error bars of the warped GP",
        caption="A KernelWarpingRegressor is kernel ridge regression with the warped kernel K(φ(x), φ(x')); read as a "
                "Gaussian process it gives predict(X, return_std=True): the sd of a new observation, noise "
                "included, with the noise-to-signal ratio λ of the readout and the signal scale by maximum "
                "leave-one-out density. Left: its mean and 95 % band on the Gramacy-Lee function (length scale "
                "shrinking towards x = 0.5; 100 noisy points, inputs standardised). Right: scikit-learn's GP with "
                "RBF + White tuned by marginal likelihood (restarts). Scores on 1,000 held-out points.",
        pictures=["gp_error_bars.png"], numbers=numbers,
        checks=[Check("95 % coverage, ours", ours[2], ">=", 0.85), Check("95 % coverage, ours", ours[2], "<=", 0.99),
                Check("RMSE ours / tuned GP", ours[0] / theirs[0], "<=", 1.1)])


def gp_sections():
    """The section of the warped GP: ``(name, function(out, quick, progress) -> Section)``."""
    return [("gp", _gp_section)]
