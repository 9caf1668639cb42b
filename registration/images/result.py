"""The result of ``register_images``: the transform, the warped image, the momenta, the report, and saving."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from lddmm_nets.grid import Grid

from ..io import Image, save_displacement, save_image
from ..io.output import atomic_directory
from ..transforms import DisplacementTransform, ndv_percent, sdlogj
from .config import RegistrationConfig

__all__ = ["ImageRegistration", "LevelReport", "maps_to_transform", "momentum_array", "OUTPUTS", "check_outputs"]


@dataclass
class LevelReport:
    """What happened at one pyramid level (one segment of it for composed geodesics).

    Attributes
    ----------
    shrink : int
    shape, spacing : tuple
        The level's image grid.
    iterations, evaluations : int
        L-BFGS iterations and objective evaluations.
    objective, similarity : list of float
        After every iteration.
    stop_reason : str
        ``lddmm_nets.optim.STOP_REASONS`` key (``"max_iter"``: the level's budget was spent).
    seconds : float
    segment : int
    sigma : float or None
        Kernel width (mm).
    """

    shrink: int
    shape: tuple
    spacing: tuple
    iterations: int
    evaluations: int
    objective: list
    similarity: list
    stop_reason: str
    seconds: float
    segment: int = 0
    sigma: float | None = None


def maps_to_transform(grid: Grid, psi: torch.Tensor, phi: torch.Tensor) -> DisplacementTransform:
    """A ``DisplacementTransform`` (world components) from the maps ``psi`` (fixed -> moving) and ``phi`` (its
    inverse), both ``(d, *grid.shape)`` in the grid's frame coordinates. The fields keep the maps' dtype (float32 by
    default: 1e-5 mm resolution, half the memory of a 1 mm brain's float64 fields)."""
    ident = grid.identity_map(dtype=psi.dtype, device=psi.device)
    u = grid.to_world_vectors((psi - ident).cpu().numpy())
    w = grid.to_world_vectors((phi - ident).cpu().numpy())
    return DisplacementTransform(u, grid.affine.copy(), w)


def momentum_array(P: torch.Tensor, d: int) -> np.ndarray:
    """Scalar ``(*shape)`` or vector ``(*shape, d)`` momentum as a float32 array (components last)."""
    P_np = P.detach().cpu().numpy().astype(np.float32)
    return P_np if P_np.ndim == d else np.moveaxis(P_np, 0, -1)


def _save_momentum(path: str, data: np.ndarray, affine: np.ndarray, ndim: int) -> None:
    """Scalar momentum ``(*shape)`` as a plain NIfTI; vector momentum ``(*shape, d)`` as a NIfTI vector image
    ``(*shape, 1, d)`` (intent "vector", components along the voxel axes), both with the fixed affine."""
    import nibabel as nib

    data = np.asarray(data, dtype=np.float32)
    if data.ndim == ndim:
        save_image(path, Image(data, affine))
        return
    img = nib.Nifti1Image(data[..., None, :] if data.ndim == 4 else data[:, :, None, None, :], affine)
    img.header.set_intent("vector")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


@dataclass
class ImageRegistration:
    """Result of ``register_images``.

    Attributes
    ----------
    fixed : Image
        The fixed image (original intensities).
    moving : Image
        The moving image (original intensities and grid).
    transform : DisplacementTransform
        Fixed-space point ``x`` -> moving-space point ``x + u(x)`` (mm), with its inverse.
    warped : Image
        The moving image resampled on the fixed grid through the transform (one interpolation).
    momentum : Image
        Initial momentum on the fixed grid: ``(*shape, d)`` vector momentum ``m_0`` (components along the voxel
        axes, density per mm^d) or ``(*shape)`` scalar momentum ``P_0``.
    config : RegistrationConfig
        The options used, resolved (kernel width, deformation grid).
    similarity_before, similarity_after : float
        The metric's loss (lower is better) between normalised images before and after.
    energy : float
        ``½‖v_0‖_V²/|Ω|`` of the final geodesic (mm², kernel normalised to unit mass).
    levels : list of LevelReport
    seconds : float
        Wall time of the registration.
    stop_reason : str
        Why the finest level stopped.
    affine_matrix : numpy.ndarray or None
        ``(d+1, d+1)`` world-coordinate affine composed after the deformation (the initial affine times the
        pre-alignment: fixed point ``x`` -> ``A (x + u_def(x))``), if any.
    initial_affine : numpy.ndarray or None
        ``(d+1, d+1)`` the initial affine given by the user (world, fixed -> moving), if any.
    momenta : list of Image
        ``geodesics="composed"``: the initial momentum of every geodesic segment, in the order they were shot
        (each on the fixed grid, shot from the moving image warped by the previous ones); ``momentum`` is the
        first. Empty for a single geodesic.
    segment_energies : list of float
        ``½‖v_0‖²/|Ω|`` of each composed segment (``energy`` is their sum); empty for a single geodesic.
    """

    fixed: Image
    moving: Image
    transform: DisplacementTransform
    warped: Image
    momentum: Image
    config: RegistrationConfig
    similarity_before: float
    similarity_after: float
    energy: float
    levels: list
    seconds: float
    stop_reason: str
    affine_matrix: np.ndarray | None = None
    initial_affine: np.ndarray | None = None
    momenta: list = field(default_factory=list)
    segment_energies: list = field(default_factory=list)

    @property
    def displacement(self) -> np.ndarray:
        """``(d, *shape)`` mm, world components (fixed -> moving)."""
        return self.transform.displacement

    @property
    def inverse_displacement(self) -> np.ndarray:
        """``(d, *shape)`` mm, world components (moving -> fixed), sampled on the fixed grid."""
        return self.transform.inverse_displacement

    def jacobian_determinant(self) -> np.ndarray:
        """``det D(x + u(x))`` on the fixed grid, ``(*shape)`` (computed once: a result is a record)."""
        cached = self.__dict__.get("_jacobian")
        if cached is None:
            cached = self.__dict__["_jacobian"] = self.transform.jacobian_determinant()
        return cached

    @property
    def ndv_percent(self) -> float:
        """Percentage of fixed voxels with a non-positive Jacobian determinant."""
        return ndv_percent(self.jacobian_determinant())

    @property
    def sdlogj(self) -> float:
        """Standard deviation of the log Jacobian determinant over the fixed grid."""
        return sdlogj(self.jacobian_determinant())

    def apply(self, image, *, interp: str = "linear", fill: float = 0.0) -> Image:
        """Warp any moving-space image or label map into the fixed space (see ``DisplacementTransform.apply``)."""
        return self.transform.apply(image, interp=interp, fill=fill)

    def shoot(self, momentum) -> DisplacementTransform:
        """The transform of the geodesic shot from another initial vector momentum with this registration's metric.

        The same kernel, deformation grid and time steps as the registration (one geodesic): shooting
        ``self.momentum`` reproduces ``self.transform``. Atlases shoot the template along minus the mean momentum
        of the subjects (THEORY §9).

        Parameters
        ----------
        momentum : numpy.ndarray or Image
            ``(*shape, d)`` vector momentum on the fixed grid (components along the voxel axes, density per
            mm^d), as ``self.momentum``.

        Returns
        -------
        DisplacementTransform

        Raises
        ------
        ValueError
            A scalar-momentum or composed-geodesics registration, or a momentum of the wrong shape.
        """
        from .geodesic import shoot_maps

        data = np.asarray(momentum.data if isinstance(momentum, Image) else momentum, dtype=np.float32)
        grid = self.fixed.grid
        d = grid.ndim
        cfg = self.config
        if cfg.momentum != "vector" or cfg.geodesics != "single":
            raise ValueError(f"momentum: shooting needs a registration with momentum='vector' and "
                             f"geodesics='single', got {cfg.momentum!r} and {cfg.geodesics!r}")
        if data.shape != grid.shape + (d,):
            raise ValueError(f"momentum: expected shape {grid.shape + (d,)}, got {data.shape}")
        with torch.no_grad():
            psi, phi = shoot_maps(cfg, grid, torch.as_tensor(np.moveaxis(data, -1, 0)))
        return maps_to_transform(grid, psi, phi)

    def report(self) -> dict:
        """JSON-serialisable summary (config, similarity, energy, NDV %, SDlogJ, iterations, seconds, stop)."""
        jac = self.jacobian_determinant()
        return {
            "config": asdict(self.config),
            "fixed": self.fixed.path, "moving": self.moving.path,
            "metric": self.config.metric,
            "similarity_before": self.similarity_before, "similarity_after": self.similarity_after,
            "energy": self.energy,
            "ndv_percent": ndv_percent(jac), "sdlogj": sdlogj(jac),
            "jacobian_min": float(jac.min()), "jacobian_max": float(jac.max()),
            "geodesics": self.config.geodesics,
            "segments": max(len(self.momenta), 1), "segment_energies": self.segment_energies,
            "iterations": [lv.iterations for lv in self.levels],
            "evaluations": [lv.evaluations for lv in self.levels],
            "levels": [asdict(lv) for lv in self.levels],
            "seconds": self.seconds,
            "stop_reason": self.stop_reason,
            "affine_matrix": None if self.affine_matrix is None else np.asarray(self.affine_matrix).tolist(),
            "initial_affine": None if self.initial_affine is None else np.asarray(self.initial_affine).tolist(),
            "moving_grid": {"shape": list(self.moving.shape), "affine": np.asarray(self.moving.affine).tolist()},
        }

    def save(self, directory, *, overview: bool = True, outputs=None) -> list[str]:
        """Write the result files into ``directory`` atomically (``registration.io.output.atomic_directory``).

        Files (``OUTPUTS``): ``warped.nii.gz``, ``displacement.nii.gz`` and ``inverse_displacement.nii.gz`` (ITK
        convention, see ``registration.io.save_displacement``), ``jacobian.nii.gz``, ``momentum.nii.gz``,
        ``overview.png``, and always ``report.json`` (written last); an interrupted save never leaves a
        complete-looking result. The files are written concurrently (compression releases the GIL).

        Parameters
        ----------
        directory : str
        overview : bool
            Write ``overview.png`` (when ``outputs`` is None).
        outputs : iterable of str, optional
            The outputs to write among ``OUTPUTS`` (default: all, less the overview if ``overview`` is False).

        Returns
        -------
        list of str
            The paths written.
        """
        from concurrent.futures import ThreadPoolExecutor

        chosen = check_outputs(OUTPUTS if outputs is None else outputs)
        if outputs is None and not overview:
            chosen.discard("overview")
        directory = os.path.abspath(os.fspath(directory))
        affine = self.fixed.affine
        jac = self.jacobian_determinant()
        writers = {
            "warped": lambda t: save_image(os.path.join(t, "warped.nii.gz"),
                                           Image(self.warped.data.astype(np.float32), affine)),
            "displacement": lambda t: save_displacement(os.path.join(t, "displacement.nii.gz"),
                                                        self.transform.displacement, affine),
            "inverse": lambda t: save_displacement(os.path.join(t, "inverse_displacement.nii.gz"),
                                                   self.transform.inverse_displacement, affine),
            "jacobian": lambda t: save_image(os.path.join(t, "jacobian.nii.gz"), Image(jac.astype(np.float32), affine)),
            "momentum": lambda t: _save_momentum(os.path.join(t, "momentum.nii.gz"), self.momentum.data, affine,
                                                 self.fixed.ndim),
            "overview": lambda t: _overview(self, os.path.join(t, "overview.png"), jac),
        }
        with atomic_directory(directory) as tmp:
            with ThreadPoolExecutor(max_workers=3) as pool:
                for future in [pool.submit(writers[name], tmp) for name in OUTPUTS if name in chosen]:
                    future.result()  # re-raises a writer's error
            with open(os.path.join(tmp, "report.json"), "w") as fh:
                json.dump(self.report(), fh, indent=2, default=_json_default)
            names = sorted(os.listdir(tmp))
        return [os.path.join(directory, n) for n in names]


#: the files ``ImageRegistration.save`` can write (``report.json`` is always written)
OUTPUTS = ("warped", "displacement", "inverse", "jacobian", "momentum", "overview")


def check_outputs(outputs) -> set:
    """The set of outputs named by ``outputs`` (an iterable of names in ``OUTPUTS``, or ``"all"``).

    Raises
    ------
    ValueError
        An unknown name (the message lists the valid ones).
    """
    names = list(OUTPUTS) if outputs == "all" else list(outputs)
    unknown = sorted(set(names) - set(OUTPUTS))
    if unknown:
        raise ValueError(f"outputs: expected names among {list(OUTPUTS)}, got unknown {unknown}")
    return set(names)


def _overview(res, path: str, jac: np.ndarray) -> None:
    from .picture import overview_figure  # matplotlib is imported only when the picture is wanted

    overview_figure(res, path, jacobian=jac)
