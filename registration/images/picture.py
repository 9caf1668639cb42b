"""The overview picture of an image registration (``overview.png`` of ``lddmm register`` and the demo's figures)."""

from __future__ import annotations

import numpy as np

from ..transforms import ndv_percent, sdlogj
from .preprocessing import normalize_intensity

__all__ = ["overview_figure", "middle_slice"]


def _index(shape) -> tuple:
    """The index of the displayed slice: everything in 2-D, the axial middle slice in 3-D."""
    return (slice(None),) * len(shape) if len(shape) == 2 else (slice(None), slice(None), shape[2] // 2)


def middle_slice(a: np.ndarray) -> np.ndarray:
    """The displayed 2-D slice of an image (the axial middle slice in 3-D), rotated for display."""
    return np.rot90(a if a.ndim == 2 else a[:, :, a.shape[2] // 2])


def _figure(figsize):
    """A figure outside pyplot's global state (safe in a worker thread, whatever backend the user has chosen)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _slice_data(res):
    """Everything the figure shows, on the displayed slice only (a 3-D volume is never processed whole)."""
    from ..io import resample_image

    fixed = res.fixed
    sl = _index(fixed.shape)
    d = fixed.ndim
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64)[s] for n, s in zip(fixed.shape, sl)],
                               indexing="ij"))
    world = fixed.grid.voxel_to_world(idx)  # world coordinates of the displayed slice
    world = world if d == 2 else world[..., 0]  # (d, nx, ny)
    sub_shape = world.shape[1:] + (() if d == 2 else (1,))
    moving_on_fixed = resample_image(res.moving, fixed.affine, sub_shape,
                                     world_map=world.reshape((d,) + sub_shape)).data.reshape(world.shape[1:])
    mapped = world + res.displacement[(slice(None),) + sl]
    vox = res.moving.grid.world_to_voxel(mapped)
    mom = np.asarray(res.momentum.data, dtype=np.float32)[sl]
    mom = np.linalg.norm(mom, axis=-1) if mom.ndim == 3 else np.abs(mom)
    norm = [normalize_intensity(np.asarray(a, dtype=np.float32), name=n, allow_constant=True)
            for n, a in (("fixed", fixed.data[sl]), ("moving", moving_on_fixed), ("warped", res.warped.data[sl]))]
    return norm, vox, mom


def overview_figure(res, path: str, *, title: str | None = None, grid_step: int | None = None,
                    jacobian: np.ndarray | None = None, dpi: int = 75) -> None:
    """Write a PNG: fixed, moving, warped, |difference| before / after, the deformed grid (moving voxels), the
    Jacobian determinant and the initial momentum's magnitude, on the middle (axial) slice.

    Parameters
    ----------
    res : ImageRegistration
    path : str
        Output PNG.
    title : str, optional
        Default: the metric before -> after, NDV and SDlogJ.
    grid_step : int, optional
        Spacing of the deformed grid's lines in moving voxels (default: about 1/16 of the image).
    jacobian : numpy.ndarray, optional
        ``res.jacobian_determinant()`` if already computed.
    """
    jac = res.jacobian_determinant() if jacobian is None else jacobian
    (fixed, moving, warped), vox, mom = _slice_data(res)
    panels = [("fixed", fixed, "gray"), ("moving (fixed grid)", moving, "gray"), ("warped moving", warped, "gray"),
              ("|fixed - moving|", np.abs(fixed - moving), "magma"), ("|fixed - warped|", np.abs(fixed - warped),
                                                                      "magma")]
    fig = _figure((13, 6.8))
    axes = fig.subplots(2, 4).ravel()
    for ax, (name, img, cmap) in zip(axes, panels):
        ax.imshow(np.rot90(img), cmap=cmap, vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
    step = grid_step or max(2, int(round(max(res.moving.shape[:2]) / 16)))
    ax = axes[5]
    ax.imshow(np.rot90(warped), cmap="gray", vmin=0, vmax=1, alpha=0.5)
    for comp in (0, 1):
        c = np.rot90(vox[comp])
        lo, hi = np.floor(c.min() / step) * step, np.ceil(c.max() / step) * step
        ax.contour(c, levels=np.arange(lo, hi + 1, step), colors="tab:blue", linewidths=0.5)
    ax.set_title("deformed grid (moving voxels)", fontsize=9)
    im = axes[6].imshow(middle_slice(jac), cmap="coolwarm", vmin=0, vmax=2)
    fig.colorbar(im, ax=axes[6], fraction=0.046)
    axes[6].set_title("det Jacobian", fontsize=9)
    axes[7].imshow(np.rot90(mom), cmap="viridis")
    axes[7].set_title("initial momentum |m0|", fontsize=9)
    for ax in axes:
        ax.axis("off")
    if title is None:
        title = (f"{res.config.metric}: {res.similarity_before:.3f} -> {res.similarity_after:.3f}; "
                 f"NDV {ndv_percent(jac):.3f}%  SDlogJ {sdlogj(jac):.3f}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
