#!/usr/bin/env python
"""Error bars of idea registration: the warped GP against scikit-learn's tuned Gaussian process (issue 15, §2).

Peers, run side by side on the same random train/test splits (inputs standardised on the training part):

- ``GP iso``: ``GaussianProcessRegressor(C * RBF + White, normalize_y=True, n_restarts_optimizer=5)``, the kernel's
  hyper-parameters by maximum marginal likelihood (the issue's tuned baseline);
- ``GP ARD``: the same with one length scale per input (a stronger baseline when inputs are irrelevant);
- ``KWR``: ``KernelWarpingRegressor()`` with its defaults (ν by inner CV, the readouts of the LOO grid of widths
  and λ averaged with pseudo-BMA weights, s² of each by maximum LOO log predictive density),
  ``predict(X, return_std=True)``;
- ``KWR one readout``: the same ν, with the one (width, λ) of smallest LOO squared error (the default before the
  averaging), to show what the averaging does;
- on the non-stationary sets, ``KWR wide`` / ``KWR wide+warp``: the readout width fixed to 0.45 (standardised
  inputs: too wide for the fast part), without and with a warp (ν = 0.003, 8 layers, warp width 0.7, λ refitted),
  to show what the warp itself does for a stationary kernel.

Data: ``gramacy-lee`` (1-D, ``sin(10πx)/(2x) + (x-1)^4`` on [0.5, 2.5], noise sd 0.1, 100 training points: the
length scale shrinks towards x = 0.5), ``bumps-2d`` (``x1 exp(-x1² - x2²)`` on [-2, 6]², noise sd 0.05, 200 points:
flat but for one corner), scikit-learn's ``diabetes`` (442 x 10) and ``friedman1`` (``make_friedman1(500,
noise=1)``), each split 75/25 ``--splits`` times. Scores on the test part: RMSE, mean negative log predictive
density (NLPD, of a new observation: noise included) and the coverage of the 95 % interval; medians over splits.

Usage: ``python scripts/bench_gp.py [--splits 5] [--datasets gramacy-lee,bumps-2d,diabetes,friedman1]``
(about 3 minutes on an idle core with `OMP_NUM_THREADS=1`; torch runs with one thread).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from scipy.stats import norm
from sklearn.datasets import load_diabetes, make_friedman1
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from lddmm_nets.nets import KernelWarpingRegressor

NON_STATIONARY = ("gramacy-lee", "bumps-2d")
# Ablation of the warp on the non-stationary sets: a readout width too wide for the fast part of the function
# (standardised inputs), without and with a warp that can stretch the fast part.
WIDE_READOUT, WIDE_WARP = 0.45, 0.7


def make_data(name: str, seed: int):
    rng = np.random.default_rng(seed)
    if name == "gramacy-lee":
        X = rng.uniform(0.5, 2.5, (500, 1))
        f = np.sin(10 * np.pi * X[:, 0]) / (2 * X[:, 0]) + (X[:, 0] - 1) ** 4
        return X, f + 0.1 * rng.normal(size=500), 100
    if name == "bumps-2d":
        X = rng.uniform(-2, 6, (600, 2))
        f = X[:, 0] * np.exp(-X[:, 0] ** 2 - X[:, 1] ** 2)
        return X, f + 0.05 * rng.normal(size=600), 200
    if name == "diabetes":
        X, y = load_diabetes(return_X_y=True)
        return X, y, None
    if name == "friedman1":
        X, y = make_friedman1(500, noise=1.0, random_state=seed)
        return X, y, None
    raise ValueError(f"unknown data set {name!r}")


def scores(y, mean, std) -> dict:
    return {"rmse": float(np.sqrt(np.mean((y - mean) ** 2))),
            "nlpd": float(-np.mean(norm.logpdf(y, mean, std))),
            "cover95": float(np.mean(np.abs(y - mean) <= norm.ppf(0.975) * std))}


def tuned_gp(X, y, seed, ard: bool):
    ls = np.ones(X.shape[1]) if ard else 1.0
    kernel = ConstantKernel() * RBF(ls, (1e-3, 1e3)) + WhiteKernel(0.1, (1e-6, 1e1))
    return GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=5, random_state=seed).fit(X, y)


def run_split(name, seed):
    X, y, n_train = make_data(name, seed)
    Xtr, Xte, ytr, yte = train_test_split(X, y, train_size=n_train or 0.75, random_state=seed)
    sc = StandardScaler().fit(Xtr)
    Xtr, Xte = sc.transform(Xtr), sc.transform(Xte)
    rows = {}
    for label, ard in (("GP iso", False), ("GP ARD", True)):
        t0 = time.process_time()
        gp = tuned_gp(Xtr, ytr, seed, ard)
        m, s = gp.predict(Xte, return_std=True)
        rows[label] = {**scores(yte, m, s), "seconds": time.process_time() - t0}
    t0 = time.process_time()
    est = KernelWarpingRegressor(random_state=seed).fit(Xtr, ytr)
    m, s = est.predict(Xte, return_std=True)
    rows["KWR"] = {**scores(yte, m, s), "seconds": time.process_time() - t0, "nu": est.nu_}
    t0 = time.process_time()
    one = KernelWarpingRegressor(readout_sigma=est.readout_sigma_, lam=est.lam_, nu=est.nu_,
                                 random_state=seed).fit(Xtr, ytr)
    m, s = one.predict(Xte, return_std=True)
    rows["KWR one readout"] = {**scores(yte, m, s), "seconds": time.process_time() - t0}
    if name in NON_STATIONARY:
        for label, kw in (("KWR wide", {"nu": 1e12}),
                          ("KWR wide+warp", {"nu": 0.003, "n_layers": 8, "max_iter": 100, "refit_lam": True,
                                             "warp_sigma": WIDE_WARP})):
            t0 = time.process_time()
            e = KernelWarpingRegressor(readout_sigma=WIDE_READOUT, random_state=seed, **kw).fit(Xtr, ytr)
            m, s = e.predict(Xte, return_std=True)
            rows[label] = {**scores(yte, m, s), "seconds": time.process_time() - t0}
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--datasets", default="gramacy-lee,bumps-2d,diabetes,friedman1")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # GP optimiser bounds, estimator convergence: reported by the scores
    print("| data | method | RMSE | NLPD | 95% coverage | fit+predict CPU s | RMSE / GP iso | ν chosen |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        runs = [run_split(name, seed) for seed in range(args.splits)]
        ref = np.median([r["GP iso"]["rmse"] for r in runs])
        for method in runs[0]:
            med = {k: float(np.median([r[method][k] for r in runs])) for k in ("rmse", "nlpd", "cover95", "seconds")}
            nus = ",".join(f"{r[method]['nu']:g}" for r in runs) if "nu" in runs[0][method] else ""
            print(f"| {name} | {method} | {med['rmse']:.4g} | {med['nlpd']:.3f} | {med['cover95']:.3f} | "
                  f"{med['seconds']:.1f} | {med['rmse'] / ref:.3f} | {nus} |", flush=True)


if __name__ == "__main__":
    main()
