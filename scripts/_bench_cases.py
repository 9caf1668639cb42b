"""The cases of the image-registration benchmark suite (``bench_images.py --suite``).

A case is named ``IMAGE/FAMILY-SEED/PERTURBATION`` (or ``circle``), e.g. ``mni2/svf-1/bias-noise``, and is built
from its name alone, so any seed can be asked for (the suite's seeds are 0, 1, 2; other seeds are a hold-out).

Images (all bundled with installed packages): ``mni2`` / ``mni1`` (nilearn's MNI152 T1 at 2 / 1 mm, 3-D),
``t1slice`` (dipy's T1 coronal slice, 256², unit spacing), ``mni_ax`` / ``mni_cor`` / ``mni_sag`` (the middle
axial, coronal, sagittal slices of the 1 mm template, 2-D with their 2-D affine; ``mni_ax+20`` / ``mni_sag-15``: the
slice that many voxels (mm) off the middle, a hold-out of other slices), ``circle`` (dipy's circle ->
C, the classic large deformation, no known map). Labels: GM / WM masks for MNI (3-D and slices); for
``t1slice`` three intensity classes, the terciles of the foreground (smoothed image > 10 % of its max) of the
Gaussian-smoothed (1 px) image.

The fixed image is the clean image; the moving image is the fixed image pulled back through the true map
(``M = F o T^-1``, linear; labels nearest), then perturbed: ``bias`` (smooth multiplicative field, ±20 %),
``noise`` (Gaussian, 2 % of the intensity range), ``gamma`` (monotone contrast change ``t -> t^gamma`` of the
intensities scaled to [0, 1]; gamma 0.7 or 1.4, alternating along the cycle of perturbations), ``bias-noise`` (both), ``none``.
Warp parameters per seed are in ``WARP_TABLE`` (seeds beyond it draw from the families' ranges).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass, field

import numpy as np

import _bench_warps as warps

IMAGES = ("mni2", "mni1", "t1slice", "mni_ax", "mni_cor", "mni_sag")
FAMILIES = ("rd", "svf", "bspline")
PERTURBATIONS = ("none", "bias", "noise", "gamma", "bias-noise")
# per family, per seed: the warp's parameters (see _bench_warps); small, medium, large / small-scale
WARP_TABLE = {
    "rd": [{"max_mm": 8.0, "smoothness_mm": 12.0}, {"max_mm": 4.0, "smoothness_mm": 8.0},
           {"max_mm": 12.0, "smoothness_mm": 16.0}],
    "svf": [{"sigma": 8.0, "max_mm": 8.0}, {"sigma": 12.0, "max_mm": 16.0}, {"sigma": 4.0, "max_mm": 3.0}],
    "bspline": [{"spacing_mm": 10.0, "max_mm": 3.0}, {"spacing_mm": 12.0, "max_mm": 4.0},
                {"spacing_mm": 8.0, "max_mm": 2.0}],
}
BIAS, NOISE = 0.2, 0.02
LEGACY = ("circle", "mni")
#: the MNI slices by the axis they cut; a name may carry an offset in voxels from the middle slice (``mni_ax+20``)
SLICE_AXES = {"mni_sag": 0, "mni_cor": 1, "mni_ax": 2}
_SLICE_NAME = re.compile(r"(mni_sag|mni_cor|mni_ax)([+-][0-9]+)?")


@dataclass
class Case:
    """One registration problem with its answer.

    Attributes
    ----------
    name : str
    fixed, moving : registration.io.Image
        Same grid and affine.
    labels_fixed, labels_moving : dict of str to numpy.ndarray
        ``uint8`` masks in each space.
    truth : numpy.ndarray or None
        ``(d, *shape)`` world mm: the moving-space point of each fixed voxel (``T(x)``); None for circle -> C.
    roi : numpy.ndarray or None
        ``(*shape)`` bool, where the map error is averaged (the fixed image above 10 % of its max).
    kind : str
        ``"circle"``, ``"2d"`` or ``"3d"`` (the peers' settings depend on it).
    meta : dict
        Everything that defines the case (image, family, seed, parameters, perturbation) and the truth's checks.
    """

    name: str
    fixed: object
    moving: object
    labels_fixed: dict
    labels_moving: dict
    truth: np.ndarray | None
    roi: np.ndarray | None
    kind: str
    meta: dict = field(default_factory=dict)


def perturbation_for(family: str, seed: int) -> str:
    """The suite's perturbation of a (family, seed): cycles through ``PERTURBATIONS`` over the 9 cases."""
    return PERTURBATIONS[(3 * FAMILIES.index(family) + seed) % len(PERTURBATIONS)]


def suite_names() -> list[str]:
    """Every case of ``--suite``: 3 families x seeds 0-2 on each image (``mni1``: one seed per family), circle."""
    names = ["circle"]
    for image in IMAGES:
        for f, family in enumerate(FAMILIES):
            seeds = [f] if image == "mni1" else [0, 1, 2]
            names += [f"{image}/{family}-{s}/{perturbation_for(family, s)}" for s in seeds]
    return names


def quick_names() -> list[str]:
    """``--quick``: one case of each family and of each kind of image, the small ones (a smoke test)."""
    return ["circle", "t1slice/svf-0/gamma", "mni_cor/bspline-1/noise", "mni2/rd-0/none"]


def select(patterns: str, universe: list[str]) -> list[str]:
    """Names matching comma-separated ``fnmatch`` patterns (in the universe's order); plain names pass as given."""
    out = []
    for pat in [p.strip() for p in patterns.split(",") if p.strip()]:
        if any(ch in pat for ch in "*?["):
            hits = [n for n in universe if fnmatch.fnmatchcase(n, pat)]
            if not hits:
                raise ValueError(f"--cases: pattern {pat!r} matches no case of the selection")
            out += [h for h in hits if h not in out]
        elif pat not in out:
            parse(pat)  # validate
            out.append(pat)
    return out


def parse(name: str) -> dict:
    """``IMAGE/FAMILY-SEED/PERTURBATION`` -> its parts; ``ValueError`` naming what is wrong."""
    if name in LEGACY:
        return {"image": name}
    parts = name.split("/")
    if len(parts) != 3 or "-" not in parts[1]:
        raise ValueError(f"--cases: expected IMAGE/FAMILY-SEED/PERTURBATION or one of {LEGACY}, got {name!r}")
    image, (family, seed), pert = parts[0], parts[1].rsplit("-", 1), parts[2]
    if image not in IMAGES and _SLICE_NAME.fullmatch(image) is None:
        raise ValueError(f"--cases {name!r}: image expected one of {IMAGES} (slices also with an offset in "
                         f"voxels, e.g. mni_ax+20), got {image!r}")
    if family not in FAMILIES:
        raise ValueError(f"--cases {name!r}: family expected one of {FAMILIES}, got {family!r}")
    if not seed.isdigit():
        raise ValueError(f"--cases {name!r}: seed expected a non-negative integer, got {seed!r}")
    if pert not in PERTURBATIONS:
        raise ValueError(f"--cases {name!r}: perturbation expected one of {PERTURBATIONS}, got {pert!r}")
    return {"image": image, "family": family, "seed": int(seed), "perturbation": pert}


def warp_params(family: str, seed: int) -> dict:
    """The table's parameters for seeds 0-2; other seeds draw uniformly from the family's ranges."""
    if seed < len(WARP_TABLE[family]):
        return dict(WARP_TABLE[family][seed])
    rng = np.random.default_rng([seed, 7])
    if family == "rd":
        return {"max_mm": float(rng.uniform(3, 12)), "smoothness_mm": float(rng.uniform(8, 16))}
    if family == "svf":
        sigma = float(rng.uniform(4, 12))
        return {"sigma": sigma, "max_mm": float(rng.uniform(3, min(16.0, 1.4 * sigma)))}
    return {"spacing_mm": float(rng.uniform(8, 12)), "max_mm": float(rng.uniform(2, 4))}


# ------------------------------------------------------------------------------------------------ images

@functools.lru_cache(maxsize=2)
def _mni(resolution: int):
    from registration.data import load_mni152

    return load_mni152(resolution)


def _slice(image, axis: int, index: int):
    """The 2-D image ``index`` along ``axis`` of a 3-D image, with the 2-D affine of the two other axes."""
    from registration.io import Image

    keep = [a for a in range(3) if a != axis]
    aff = np.eye(4)
    aff[:2, :2] = image.affine[np.ix_(keep, keep)]
    aff[:2, 3] = image.affine[keep, 3] + image.affine[keep, axis] * index
    take = [slice(None)] * 3
    take[axis] = index
    return Image(np.ascontiguousarray(image.data[tuple(take)]), aff, None)


def _terciles(img) -> dict:
    from scipy import ndimage

    sm = ndimage.gaussian_filter(img.data.astype(np.float64), 1.0)
    fg = sm > 0.1 * sm.max()
    t1, t2 = np.quantile(sm[fg], [1 / 3, 2 / 3])
    return {"c1": (fg & (sm < t1)).astype(np.uint8), "c2": (fg & (sm >= t1) & (sm < t2)).astype(np.uint8),
            "c3": (fg & (sm >= t2)).astype(np.uint8)}


def base_image(image: str):
    """``(fixed Image, labels dict, kind)`` of an image name."""
    from registration.data import load_t1_slice

    if image in ("mni2", "mni1"):
        m = _mni(2 if image == "mni2" else 1)
        return m.t1, {"gm": m.gm.data, "wm": m.wm.data}, "3d"
    if image == "t1slice":
        t1 = load_t1_slice()
        return t1, _terciles(t1), "2d"
    m = _mni(1)
    base, offset = _SLICE_NAME.fullmatch(image).groups()
    axis = SLICE_AXES[base]
    index = m.t1.shape[axis] // 2 + int(offset or 0)
    if not 0 <= index < m.t1.shape[axis]:
        raise ValueError(f"--cases: slice offset of {image!r} expected within +-{m.t1.shape[axis] // 2}, got {offset}")
    t1 = _slice(m.t1, axis, index)
    return t1, {k: _slice(v, axis, index).data.astype(np.uint8) for k, v in (("gm", m.gm), ("wm", m.wm))}, "2d"


# ------------------------------------------------------------------------------------------------ perturbations

def _smooth_field(shape, rng) -> np.ndarray:
    """A smooth random field in [-1, 1] (max |.| = 1): random cosine series of orders 0-2 along each axis."""
    d = len(shape)
    grids = np.meshgrid(*[np.linspace(0.0, np.pi, n) for n in shape], indexing="ij")
    out = np.zeros(shape)
    for orders in np.ndindex(*(3,) * d):
        if sum(orders) == 0:
            continue
        term = np.ones(shape)
        for g, k in zip(grids, orders):
            term = term * np.cos(k * g)
        out += rng.standard_normal() * term / (1.0 + sum(orders))
    return out / np.abs(out).max()


def perturb(data: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, dict]:
    """Apply a perturbation to moving intensities; returns the new data and its recorded parameters.

    ``seed`` is the case's place in the cycle of perturbations, ``3 * family + seed``: it seeds the bias and the
    noise, and picks gamma (0.7 at even places, 1.4 at odd ones).
    """
    rng = np.random.default_rng([seed, 11])
    out = data.astype(np.float64)
    lo, hi = float(out.min()), float(out.max())
    info = {"perturbation": kind}
    if kind == "gamma":
        gamma = 0.7 if seed % 2 == 0 else 1.4
        out = lo + (hi - lo) * np.clip((out - lo) / (hi - lo), 0, 1) ** gamma
        info["gamma"] = gamma
    if kind in ("bias", "bias-noise"):
        out = out * (1.0 + BIAS * _smooth_field(out.shape, rng))
        info["bias"] = BIAS
    if kind in ("noise", "bias-noise"):
        out = out + rng.normal(0.0, NOISE * (hi - lo), out.shape)
        info["noise_std"] = NOISE * (hi - lo)
    return out.astype(np.float32), info


# ------------------------------------------------------------------------------------------------ cases

def make_truth(fixed, family: str, seed: int, params: dict) -> warps.Truth:
    d = fixed.ndim
    lin = fixed.affine[:d, :d]
    if family == "rd":
        return warps.rd_warp(fixed.shape, fixed.affine, seed=seed, **params)
    if family == "svf":
        return warps.svf_warp(fixed.shape, lin, seed=seed, **params)
    return warps.bspline_warp(fixed.shape, lin, seed=seed, **params)


def build(name: str, legacy_max_displacement: float = 8.0) -> Case:
    """Build the case ``name`` (deterministic)."""
    from registration.evaluation import world_coordinates
    from registration.io import Image, resample_image

    spec = parse(name)
    if spec["image"] == "circle":
        from registration.data import load_circle_c

        circle, c = load_circle_c()
        return Case(name, c, circle, {"shape": (c.data > 0.5).astype(np.uint8)},
                    {"shape": (circle.data > 0.5).astype(np.uint8)}, None, None, "circle",
                    {"image": "circle", "note": "dipy circle (moving) -> C (fixed), no known map"})
    if spec["image"] == "mni":
        spec = {"image": "mni2", "family": "rd", "seed": 0, "perturbation": "none"}
        params = {"max_mm": legacy_max_displacement, "smoothness_mm": 12.0}
    else:
        params = warp_params(spec["family"], spec["seed"])
    fixed, labels, kind = base_image(spec["image"])
    fixed = Image(fixed.data.astype(np.float32), fixed.affine, None)
    truth = make_truth(fixed, spec["family"], spec["seed"], params)
    d = fixed.ndim
    lin = fixed.affine[:d, :d]
    world = world_coordinates(fixed)
    inv_world = world + warps.to_world(truth.inverse, lin)
    moving = resample_image(fixed, fixed.affine, fixed.shape, world_map=inv_world).data
    labels_moving = {k: resample_image(Image(v.astype(np.uint8), fixed.affine), fixed.affine, fixed.shape,
                                       interp="nearest", world_map=inv_world).data.astype(np.uint8)
                     for k, v in labels.items()}
    moving, pinfo = perturb(moving, spec["perturbation"], 3 * FAMILIES.index(spec["family"]) + spec["seed"])
    jmin, jmax = warps.jacobian_range(truth.forward)
    meta = dict(spec, **truth.params, **pinfo, shape=list(fixed.shape),
                spacing=[float(s) for s in np.linalg.norm(lin, axis=0)],
                max_displacement_mm=float(warps.world_norm(truth.forward, lin).max()),
                truth_jacobian_min=jmin, truth_jacobian_max=jmax)
    if meta["residual_max_mm"] > warps.TOL_MM:
        raise RuntimeError(f"case {name}: the truth's inverse residual {meta['residual_max_mm']:.2e} mm is above "
                           f"the tolerance {warps.TOL_MM} mm")
    roi = fixed.data > 0.1 * fixed.data.max()
    return Case(name, fixed, Image(moving, fixed.affine.copy(), None), {k: v.astype(np.uint8) for k, v in
                                                                        labels.items()},
                labels_moving, world + warps.to_world(truth.forward, lin), roi, kind, meta)


# ------------------------------------------------------------------------------------------------ hand-over

def save_case(case: Case, directory: str) -> str:
    """Write a case as ``.npy`` files and ``case.json`` (read back, memory-mapped, by :func:`load_case`)."""
    import json
    import os

    os.makedirs(directory, exist_ok=True)
    arrays = {"fixed": case.fixed.data, "moving": case.moving.data, "fixed_affine": case.fixed.affine,
              "moving_affine": case.moving.affine}
    arrays.update({f"lf_{k}": v for k, v in case.labels_fixed.items()})
    arrays.update({f"lm_{k}": v for k, v in case.labels_moving.items()})
    if case.truth is not None:
        arrays.update(truth=case.truth, roi=case.roi)
    for key, arr in arrays.items():
        np.save(os.path.join(directory, key + ".npy"), np.asarray(arr))
    with open(os.path.join(directory, "case.json"), "w") as fh:
        json.dump({"name": case.name, "kind": case.kind, "labels": list(case.labels_fixed),
                   "truth": case.truth is not None}, fh)
    return directory


def load_case(directory: str) -> Case:
    """The case written by :func:`save_case`; images in memory, the truth and labels memory-mapped."""
    import json
    import os

    from registration.io import Image

    with open(os.path.join(directory, "case.json")) as fh:
        info = json.load(fh)

    def get(key, mmap=True):
        return np.load(os.path.join(directory, key + ".npy"), mmap_mode="r" if mmap else None)

    fixed = Image(get("fixed", False), get("fixed_affine", False))
    moving = Image(get("moving", False), get("moving_affine", False))
    lf = {k: get(f"lf_{k}") for k in info["labels"]}
    lm = {k: get(f"lm_{k}") for k in info["labels"]}
    truth, roi = (get("truth"), get("roi", False)) if info["truth"] else (None, None)
    return Case(info["name"], fixed, moving, lf, lm, truth, roi, info["kind"])
