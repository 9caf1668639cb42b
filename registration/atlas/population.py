"""Populations with a known template, and scores of an estimated template against it.

``synthetic_population(image)`` warps real anatomy (e.g. the MNI152 T1) by pairs of random diffeomorphisms
``φ`` and ``φ^{-1}`` (flows of ``v`` and ``-v``): the velocities average to zero exactly, so the population's
template is the image itself, in its own space. An estimated template is then scored against it:

- ``correlation``: Pearson correlation of the intensities (inside the true image's head mask);
- ``sharpness``: mean gradient magnitude of the robustly normalised template (per mm; a blurred mean scores low);
- ``label_dice``: Dice of grey / white matter *carried into template space by the atlas's own transforms*: each
  subject's labels (the true labels warped with the subject) are pulled back with that subject's transform and
  majority-voted; a template that sits in the true space (unbiased) and registers well recovers the true labels.
  This scores the template together with the registrations that come with it, for any method that provides
  transforms (ANTs' included);
- ``class_dice``: Dice of tissue classes obtained by thresholding intensities (thresholds fitted once on the true
  image against its labels), which needs no transform at all: it scores the template image alone (position and
  sharpness);
- ``mean_displacement``: RMS over the head of the mean of the subjects' displacements (mm): how far the template
  sits from the population's centre, for any method that provides transforms.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..data import load_mni152, random_diffeomorphism
from ..evaluation import dice
from ..images import normalize_intensity
from ..io import Image, resample_image
from ..transforms import DisplacementTransform

__all__ = ["Population", "synthetic_population", "mni152_slice", "mni152_volume", "translated", "correlation",
           "sharpness", "vote_labels", "label_dice", "class_thresholds", "class_dice", "mean_displacement"]


@dataclass
class Population:
    """A population with a known template.

    Attributes
    ----------
    truth : Image
        The true template (the image that was warped).
    truth_labels : dict of str to numpy.ndarray
        Its label maps (uint8, same grid).
    subjects : list of Image
        ``truth ∘ (x + u_s(x))`` on the truth's grid.
    labels : list of dict
        Each subject's label maps (the true ones warped the same way, nearest neighbour).
    warps : list of DisplacementTransform
        Truth point ``x`` -> subject point ``x + u_s(x)`` (with the inverse).
    """

    truth: Image
    truth_labels: dict
    subjects: list
    labels: list
    warps: list


def synthetic_population(image: Image, labels: dict | None = None, *, n: int = 8, max_displacement: float = 6.0,
                         smoothness: float = 12.0, seed: int = 0) -> Population:
    """Warp ``image`` (and its labels) by ``n / 2`` random diffeomorphisms and their inverses.

    Parameters
    ----------
    image : Image
        The true template (2-D or 3-D).
    labels : dict of str to Image or numpy.ndarray, optional
        Label maps on the image's grid.
    n : int
        Subjects (even: subject ``2k`` is warped by ``φ_k``, subject ``2k + 1`` by ``φ_k^{-1}``).
    max_displacement, smoothness : float
        Of each warp, mm (see ``registration.data.random_diffeomorphism``).
    seed : int
        Warp ``k`` uses seed ``seed + k``.

    Returns
    -------
    Population
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n % 2:
        raise ValueError(f"n: expected an even number of subjects >= 2, got {n!r}")
    labels = {k: np.asarray(v.data if isinstance(v, Image) else v).astype(np.uint8) for k, v in (labels or {}).items()}
    for k, v in labels.items():
        if v.shape != image.shape:
            raise ValueError(f"labels[{k!r}]: expected shape {image.shape} (the image's), got {v.shape}")
    subjects, sub_labels, warps = [], [], []
    for k in range(n // 2):
        w = random_diffeomorphism(image.shape, image.affine, max_displacement=max_displacement,
                                  smoothness=smoothness, seed=seed + k)
        for u, inv in ((w.displacement, w.inverse_displacement), (w.inverse_displacement, w.displacement)):
            tr = DisplacementTransform(u, image.affine.copy(), inv)
            subjects.append(Image(tr.apply(image).data.astype(np.float32), image.affine.copy()))
            sub_labels.append({name: tr.apply(Image(v, image.affine.copy()), interp="nearest").data
                               for name, v in labels.items()})
            warps.append(tr)
    return Population(image, labels, subjects, sub_labels, warps)


def mni152_slice(resolution: float = 4.0, *, z: int | None = None) -> tuple[Image, dict]:
    """An axial slice of nilearn's MNI152 T1 (2 mm) resampled to ``resolution`` mm, with its GM / WM masks.

    Parameters
    ----------
    resolution : float
        Pixel size in mm (4: 50 × 59 pixels, 6: 33 × 39).
    z : int, optional
        Slice index in the 2 mm volume (default: the middle one).

    Returns
    -------
    image : Image
        2-D, with the volume's in-plane affine scaled to ``resolution``.
    labels : dict
        ``{"gm": uint8 array, "wm": uint8 array}`` on the same grid (nearest neighbour).
    """
    mni = _mni152()
    z = mni.t1.shape[2] // 2 if z is None else int(z)
    aff = np.eye(4)
    aff[:2, :2], aff[:2, 3] = mni.t1.affine[:2, :2], mni.t1.affine[:2, 3]
    return _coarse({k: Image(getattr(mni, k).data[:, :, z], aff) for k in ("t1", "gm", "wm")}, resolution / 2.0)


def mni152_volume(resolution: float = 4.0) -> tuple[Image, dict]:
    """nilearn's MNI152 T1 resampled to ``resolution`` mm (4: 50 × 59 × 48), with its GM / WM masks."""
    mni = _mni152()
    return _coarse({"t1": mni.t1, "gm": mni.gm, "wm": mni.wm}, resolution / 2.0)


@functools.lru_cache(maxsize=1)
def _mni152():
    """nilearn's template, read once per process (importing nilearn and reading the files take seconds); callers
    only read it (``_coarse`` resamples into new arrays)."""
    return load_mni152(2)


def _coarse(images: dict, factor: float) -> tuple[Image, dict]:
    t1 = images["t1"]
    if factor == 1:  # copies: the cached template stays untouched
        return (Image(np.array(t1.data, np.float32), t1.affine.copy()),
                {k: np.array(images[k].data, np.uint8) for k in ("gm", "wm")})
    d = t1.ndim
    aff = t1.affine.copy()
    aff[:d, :d] *= factor
    shape = tuple(int(np.ceil(n / factor)) for n in t1.shape)
    labels = {k: resample_image(images[k], aff, shape, interp="nearest").data.astype(np.uint8) for k in ("gm", "wm")}
    return resample_image(Image(np.asarray(t1.data, np.float32), t1.affine), aff, shape), labels


def translated(image: Image, shifts) -> list:
    """``image ∘ (x + t)`` for every world translation ``t`` (mm, one per row of ``shifts``): the content moves by
    ``-t``, so the population's centre is ``image`` moved by minus the mean of ``shifts``."""
    out = []
    d = image.ndim
    for t in np.asarray(shifts, float).reshape(-1, d):
        disp = np.broadcast_to(t.reshape((d,) + (1,) * d), (d,) + image.shape).copy()
        out.append(Image(DisplacementTransform(disp, image.affine.copy(), -disp).apply(image).data,
                         image.affine.copy()))
    return out


def _head(truth: Image) -> np.ndarray:
    t = np.asarray(truth.data, np.float64)
    return t > 0.1 * t.max()


def correlation(template: Image, truth: Image, mask=None) -> float:
    """Pearson correlation of ``template`` and ``truth`` intensities (same grid) inside ``mask`` (default: the
    truth's head, intensities above 10 % of its maximum)."""
    mask = _head(truth) if mask is None else np.asarray(mask, bool)
    a, b = np.asarray(template.data, np.float64)[mask], np.asarray(truth.data, np.float64)[mask]
    return float(np.corrcoef(a, b)[0, 1])


def sharpness(template: Image, mask=None) -> float:
    """Mean gradient magnitude (per mm) of the template normalised to [0, 1] (robustly), inside ``mask``."""
    a = normalize_intensity(np.asarray(template.data, np.float32), name="template", allow_constant=True)
    grads = np.gradient(a.astype(np.float64), *template.spacing)
    mag = np.sqrt(sum(g * g for g in grads))
    return float(mag.mean() if mask is None else mag[np.asarray(mask, bool)].mean())


def vote_labels(transforms, subject_labels: list) -> dict:
    """Majority vote in template space of the subjects' label maps pulled back by their transforms.

    Parameters
    ----------
    transforms : sequence of DisplacementTransform
        Template point -> subject point, one per subject (e.g. ``[result.transform(n) for n in result.names]``).
    subject_labels : sequence of dict of str to numpy.ndarray
        Each subject's label maps on its own grid (the transform's moving space; same grid as the template here).

    Returns
    -------
    dict of str to numpy.ndarray
        ``uint8`` label maps on the template grid: 1 where more than half the subjects say so.
    """
    votes = {}
    for tr, labels in zip(transforms, subject_labels):
        for name, lab in labels.items():
            pulled = tr.apply(Image(np.asarray(lab, np.uint8), tr.affine.copy()), interp="nearest").data > 0
            votes[name] = votes.get(name, 0) + pulled.astype(np.int32)
    n = len(subject_labels)
    return {name: (v * 2 > n).astype(np.uint8) for name, v in votes.items()}


def label_dice(transforms, subject_labels: list, truth_labels: dict) -> dict:
    """``{label: Dice}`` of ``vote_labels`` against the true labels."""
    voted = vote_labels(transforms, subject_labels)
    return {name: dice(voted[name], truth_labels[name]) for name in truth_labels}


def class_thresholds(truth: Image, gm, wm) -> tuple[float, float]:
    """Intensity thresholds ``(t_gm, t_wm)`` on the normalised truth: ``WM = I > t_wm``, ``GM = t_gm < I <= t_wm``,
    chosen to best reproduce the truth's own GM / WM masks (sum of the two Dice, grid search)."""
    a = normalize_intensity(np.asarray(truth.data, np.float32), name="truth")
    gm, wm = np.asarray(gm) > 0, np.asarray(wm) > 0
    grid = np.linspace(0.05, 0.95, 91)
    t_wm = max(grid, key=lambda t: dice(a > t, wm))
    t_gm = max(grid[grid < t_wm], key=lambda t: dice((a > t) & (a <= t_wm), gm))
    return float(t_gm), float(t_wm)


def class_dice(template: Image, truth: Image, thresholds: tuple[float, float]) -> dict:
    """``{"gm": Dice, "wm": Dice}`` of the template's intensity classes against the truth's (same thresholds)."""
    t_gm, t_wm = thresholds
    a = normalize_intensity(np.asarray(template.data, np.float32), name="template", allow_constant=True)
    b = normalize_intensity(np.asarray(truth.data, np.float32), name="truth")
    return {"gm": dice((a > t_gm) & (a <= t_wm), (b > t_gm) & (b <= t_wm)), "wm": dice(a > t_wm, b > t_wm)}


def mean_displacement(displacements, mask=None) -> float:
    """RMS over ``mask`` of ``(1/n) Σ_s u_s`` (mm), for ``(d, *shape)`` displacement fields (streamed)."""
    total, n = None, 0
    for u in displacements:
        u = np.asarray(u, np.float64)
        total = u.copy() if total is None else total + u
        n += 1
    norm = np.linalg.norm(total / n, axis=0)
    return float(np.sqrt(np.mean((norm if mask is None else norm[np.asarray(mask, bool)]) ** 2)))
