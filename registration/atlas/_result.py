"""What ``build_template`` returns: the template, the subjects' momenta and transforms, the history; ``save()``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["AtlasResult", "RoundRecord", "SubjectSummary"]


@dataclass
class RoundRecord:
    """One round of the atlas: every subject registered to the template, then (``updated``) a new template.

    Attributes
    ----------
    round : int
        0, 1, ...; the template of round ``r`` is ``AtlasResult.templates[r]``.
    updated : bool
        Whether the round updated (and unbiased) the template; the final registration round does not.
    n_subjects : int
        Subjects registered (excluded ones not counted).
    similarity : float
        Mean over subjects of the registration's similarity loss after registration (``registration.metrics``;
        lower is better).
    energy : float
        Mean over subjects of ``½‖v_0‖_V²/|Ω|`` (mm²).
    objective : float
        ``similarity + λ energy`` (λ the registrations' regularisation): the atlas energy, without the
        registration's per-subject normalisation of the similarity.
    template_change : float or None
        ``‖I_new - I‖ / ‖I‖`` of the update (``None`` without update).
    mean_momentum_norm : float
        RMS over the grid of the mean initial momentum ``(1/n) Σ_s m_s`` (0 for an unbiased template).
    mean_momentum_ratio : float
        ``mean_momentum_norm`` over the mean of the subjects' RMS momenta (0: unbiased; 1: all momenta equal).
        Momentum fields are rough (they sit on the template's edges), so the part of them that no velocity sees
        keeps this ratio well above 0 with few subjects; ``bias_ratio`` is the smooth measure.
    deformation : float
        Mean over subjects of the mean length of their displacements (mm for images).
    bias, bias_max : float
        Mean and max over the grid of the displacement of the template shot along the mean momentum (mm for
        images): how far the template sits from the population's centre, before this round's update; in an
        unbiasing round the new template is moved by that shot.
    bias_ratio : float
        ``bias / deformation``: 0 for an unbiased template, 1 when every subject is deformed the same way.
    seconds : float
        Wall time of the round (tasks and reduction).
    task_seconds : float
        Mean wall time of one subject's task.
    reduce_seconds : float
        Wall time of the reduction (mean momentum, template update, unbiasing shot): the serial part of a round.
    shot_seconds : float
        The part of it spent shooting the template (independent of the number of subjects; the rest reads every
        subject's fields once).
    excluded : list of str
        Subjects that failed in this round (and are left out from here on).
    """

    round: int
    updated: bool
    n_subjects: int
    similarity: float
    energy: float
    objective: float
    template_change: float | None
    mean_momentum_norm: float
    mean_momentum_ratio: float
    deformation: float
    bias: float
    bias_max: float
    bias_ratio: float
    seconds: float
    task_seconds: float
    reduce_seconds: float
    shot_seconds: float
    excluded: list = field(default_factory=list)


@dataclass
class SubjectSummary:
    """A subject's registration onto the final template (the last round): scalars from its task."""

    name: str
    source: str
    similarity_before: float
    similarity_after: float
    energy: float
    ndv_percent: float
    sdlogj: float
    seconds: float
    stop_reason: str
    host: str = ""


@dataclass
class AtlasResult:
    """Result of ``build_template``.

    Attributes
    ----------
    template : Image or Shape
        The final template.
    templates : list of Image or Shape
        The initial template and the template after every update (``templates[-1] is template``).
    names : list of str
        The subjects of the result, in input order (excluded ones left out): the rows of ``momenta``.
    momenta : numpy.ndarray
        ``(n, *shape, d)`` float32: each subject's initial momentum on the template grid (shapes: ``(n, K, d)`` on
        the template's ``K`` control vertices; memory-mapped from the run directory). They are the momenta of the last round: against ``template`` when the run ended with a
        registration round (``final_registration=True``), else against ``templates[-2]``.
    subjects : list of SubjectSummary
        Per-subject scalars of the last round (same order as ``names``).
    history : list of RoundRecord
    excluded : dict of str to str
        Subjects left out and why (e.g. ``"ValueError: ... expected a 2-D image ..."``).
    directory : str
        The run directory (checkpoint, templates, rounds).
    round_directory : str
        The last round's folder in it (``momenta.npy``, ``subjects/<name>/`` with the fields of each subject).
    options : dict
        The options of the run (JSON).
    seconds : float
        Wall time (all sessions of a resumed run).
    converged : bool or None
        Whether the relative template change fell below ``tol``; ``None`` without ``tol`` (a fixed number of
        iterations, as ANTs' template builder; ``history`` shows the template change of every update).
    workers : str
        Where the tasks ran.
    """

    template: object
    templates: list
    names: list
    momenta: np.ndarray
    subjects: list
    history: list
    excluded: dict
    directory: str
    options: dict
    seconds: float
    converged: bool | None
    workers: str = ""
    round_directory: str = ""
    kind: object = field(default=None, repr=False)
    owner: object = field(default=None, repr=False)  # a TemporaryDirectory the run directory lives in (or None)

    def _folder(self, subject) -> str:
        name = self.names[subject] if isinstance(subject, (int, np.integer)) else str(subject)
        if name not in self.names:
            raise ValueError(f"subject: expected a name among {self.names} or an index, got {subject!r}")
        return os.path.join(self.round_directory, "subjects", name)

    def transform(self, subject):
        """The transform of ``subject`` (name or index): template point ``x`` -> subject point ``x + u(x)``
        (images: ``DisplacementTransform``; shapes: ``ShapeTransform``, whose ``apply`` moves the template)."""
        return self.kind.load_transform(self._folder(subject))

    def mean_momentum(self) -> np.ndarray:
        """``(1/n) Σ_s m_s``, ``(*shape, d)`` (streamed over the subjects)."""
        total = np.zeros(self.momenta.shape[1:], np.float64)
        for m in self.momenta:
            total += m
        return (total / len(self.momenta)).astype(np.float32)

    def shoot(self, momentum):
        """The template carried along the geodesic of an initial momentum on the template (e.g. a subject's row of
        ``momenta``, which gives that subject back, or a principal mode), with the registrations' metric.

        Parameters
        ----------
        momentum : numpy.ndarray
            Shaped like one row of ``momenta`` (images: ``(*shape, d)``, voxel-axis components, per mm^d).

        Returns
        -------
        Image or Shape
            On the template grid (cubic-spline resampling); shapes: the template's cells on its moved vertices.
        """
        momentum = np.array(momentum, np.float32)  # a writable copy (rows of the memory map are read-only)
        if momentum.shape != tuple(self.momenta.shape[1:]):
            raise ValueError(f"momentum: expected shape {tuple(self.momenta.shape[1:])}, got {momentum.shape}")
        return self.kind.unbias(self.template, momentum, self.options)[0]

    def principal_modes(self, n_modes: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Principal component analysis of the momenta (centred; Euclidean inner product of the arrays).

        Computed through the ``n × n`` Gram matrix of the subjects, streamed over the grid, so the momenta never
        need to fit in memory twice.

        Parameters
        ----------
        n_modes : int
            At most ``n - 1`` modes are returned.

        Returns
        -------
        modes : numpy.ndarray
            ``(k, *shape, d)`` unit-norm modes (float32), largest variance first.
        std : numpy.ndarray
            ``(k,)`` standard deviation of the subjects' coordinates along each mode (momentum units).
        """
        if isinstance(n_modes, bool) or not isinstance(n_modes, (int, np.integer)) or n_modes < 1:
            raise ValueError(f"n_modes: expected a positive integer, got {n_modes!r}")
        n = len(self.momenta)
        X = np.asarray(self.momenta).reshape(n, -1)
        mean = np.asarray(self.mean_momentum(), np.float64).reshape(-1)
        gram = np.zeros((n, n))
        for lo in range(0, X.shape[1], 1 << 20):
            block = X[:, lo:lo + (1 << 20)] - mean[lo:lo + (1 << 20)]
            gram += block @ block.T
        values, vectors = np.linalg.eigh(gram)
        order = np.argsort(values)[::-1][: min(n_modes, n - 1)]
        values, vectors = np.clip(values[order], 0, None), vectors[:, order]
        modes = np.empty((len(order), X.shape[1]), np.float32)
        for lo in range(0, X.shape[1], 1 << 20):
            block = X[:, lo:lo + (1 << 20)] - mean[lo:lo + (1 << 20)]
            modes[:, lo:lo + (1 << 20)] = (vectors.T @ block) / np.sqrt(np.maximum(values, 1e-300))[:, None]
        return modes.reshape((len(order),) + tuple(self.momenta.shape[1:])), np.sqrt(values / max(n - 1, 1))

    def report(self) -> dict:
        """JSON-serialisable summary: options, subjects, excluded ones, history, seconds."""
        return {"kind": getattr(self.kind, "name", ""), "options": self.options, "names": list(self.names),
                "excluded": dict(self.excluded), "history": [asdict(r) for r in self.history],
                "subjects": [asdict(s) for s in self.subjects], "seconds": self.seconds,
                "converged": self.converged, "workers": self.workers,
                "momenta_shape": list(np.shape(self.momenta))}

    def save(self, directory) -> list[str]:
        """Write the template, the templates of every iteration, ``momenta.npy`` (subjects × …, the rows in the order
        of ``report.json``'s ``names``), each subject's fields (``subjects/<name>/``: displacement and inverse
        displacement in the ITK convention, warped subject and Jacobian determinant on the template grid; shapes: the
        warped template ``warped.vtk`` and the transform ``momenta.npz``) and
        ``report.json`` into ``directory``.

        Everything goes into a temporary folder beside ``directory`` first and is moved into place at the end,
        ``report.json`` last (an older one is removed first), so an interrupted save never looks complete.

        Returns
        -------
        list of str
            The paths written.
        """
        directory = os.path.abspath(os.fspath(directory))
        os.makedirs(directory, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".lddmm-atlas-partial-", dir=directory)
        suffix = self.kind.template_suffix
        try:
            names = [f"template{suffix}", "templates", "momenta.npy", "subjects"]
            self.kind.save_template(self.template, os.path.join(tmp, f"template{suffix}"))
            os.makedirs(os.path.join(tmp, "templates"))
            for k, t in enumerate(self.templates):
                self.kind.save_template(t, os.path.join(tmp, "templates", f"template_{k:03d}{suffix}"))
            _copy_or_link(self.momenta_path, os.path.join(tmp, "momenta.npy"))
            for name in self.names:
                os.makedirs(os.path.join(tmp, "subjects", name))
                for f in self.kind.subject_files:
                    src = os.path.join(self._folder(name), f)
                    if os.path.exists(src):
                        _copy_or_link(src, os.path.join(tmp, "subjects", name, f))
            with open(os.path.join(tmp, "report.json"), "w") as fh:
                json.dump(self.report(), fh, indent=2, default=float)  # numpy scalars; everything else is native
            stale = os.path.join(directory, "report.json")
            if os.path.exists(stale):
                os.remove(stale)
            out = []
            for name in names + ["report.json"]:
                target = os.path.join(directory, name)
                if os.path.isdir(target):  # e.g. the run directory's own templates/ (same files)
                    shutil.rmtree(target)
                os.replace(os.path.join(tmp, name), target)
                out.append(target)
            return out
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @property
    def momenta_path(self) -> str:
        return os.path.join(self.round_directory, "momenta.npy")


def _copy_or_link(src: str, dst: str) -> None:
    """A hard link where the file system allows it (no copy of large fields), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)

