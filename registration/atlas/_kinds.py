"""The seam between the atlas loop and a kind of data (images: ``_images``; shapes: ``_shapes``).

``build_template`` is one loop for every kind of data: read the subjects (probe), build an initial template, then
rounds of (i) register the template to every subject (tasks), (ii) update the template from the subjects'
results and (iii) unbias it along the mean of the subjects' momenta at the template (one reduction task).
Everything that depends on what a subject *is* goes through a ``DataKind``: an object with the methods below,
picklable (it travels to the workers with every task), holding no data.

Reading (workers, and the client for in-memory subjects)
    ``read(source, *, name)`` -> subject: a path or an in-memory object (``ValueError`` / ``TypeError`` /
    ``FileNotFoundError`` for data that cannot be used: reported by name, never retried);
    ``digest(subject) -> bytes`` (fingerprint of an in-memory subject, for ``resume``); ``subject_suffix`` and
    ``save_subject(subject, path)`` (in-memory subjects are written into the run directory once);
    ``size_hint(template or spec) -> int`` (cells, e.g. voxels, to size the default cluster by memory; 0 unknown);
    ``probe(subject) -> dict`` (JSON scalars, e.g. dimension and grid) and ``check_probe(info, reference)``
    (``ValueError`` when a subject does not fit the population, e.g. a 3-D image among 2-D ones).
Options (client)
    ``check_options(register_options) -> dict`` (the registration's options, JSON values, checked before the run);
    ``initial_choices`` (the named initial templates, e.g. ``("affine", "mean")``), ``default_initial`` and
    ``default_warm_start`` (whether later rounds start from the previous round's momenta by default).
Templates (client)
    ``template_suffix`` (file name ending), ``read_template(source)``, ``save_template(template, path)``,
    ``initial_template(run, initial)`` (may run task rounds through ``run.map_subjects`` / ``run.run_one``),
    ``template_change(old, new) -> float`` (relative), ``momentum_shape(template) -> tuple``.
One subject against the template (workers)
    ``register(template, subject, options, folder, write_transform, start) -> (momentum, summary)``: the
    momentum on the template (an array of ``momentum_shape``), JSON scalars (``similarity_after``, ``energy``,
    ``regularization`` at least), and any large field written into ``folder`` (which becomes the subject's
    folder atomically), among them ``START_FILE``, the registration's own initial momentum; ``start`` is the
    subject's folder of the previous round (or None; it may not exist), whose ``START_FILE`` the registration
    starts from when there is one (``load_start``).
The reduction (one worker task per round)
    ``update(template, folders, options) -> template`` reads the subjects' folders in subject order;
    ``unbias(template, momentum, options) -> (template, dict)`` shoots the template along ``momentum`` (minus the
    mean) and reports how far it moved.
Results
    ``subject_files`` (the files of a subject's folder that ``AtlasResult.save`` delivers) and
    ``load_transform(folder)``.

What the ``ShapeKind`` (``_shapes``) does with ``registration.shapes.register_shapes``: ``read`` = the mesh / curve
readers of ``registration.io``; ``register`` = ``register_shapes(template, subject, ...)`` returning the momentum
on the template's control points / vertices, writing the warped template mesh and the gradient of the data term
with respect to the template vertices (pulled back to the template) into ``folder``; ``update`` = a gradient step
on the template vertices with the sum of those gradients (THEORY §9, Deformetrica's deterministic atlas);
``unbias`` = the template vertices flowed along the mean momentum (the shapes result's shooting; the momenta of
``register`` are those of the geodesics from the template to the subjects, as for images);
``initial_template`` = a given mesh or the first subject. The loop, the executors, checkpoints and the result are
shared as they are.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["kind_for", "START_FILE", "MEAN_FILE", "load_start"]

#: a subject folder's file holding its registration's initial momentum, the next round's warm start
START_FILE = "start_momentum.npy"
#: a round folder's file holding the mean momentum its template was shot along (unbiasing rounds only)
MEAN_FILE = "mean_momentum.npy"


def load_start(start: str | None, shape: tuple):
    """The momentum ``START_FILE`` of the previous round's subject folder ``start`` when there is one of ``shape``,
    else None (no previous round, or another template grid: a template given anew on resume)."""
    path = os.path.join(start, START_FILE) if start is not None else None
    if path is None or not os.path.exists(path):
        return None
    p = np.load(path)
    return p if p.shape == tuple(shape) else None


def kind_for(subjects, initial) -> object:
    """The data kind of a population: shapes when the first subject (or the given initial template) is a
    ``Shape``, a ``(vertices, cells)`` pair or a mesh path (``registration.io``'s mesh formats but ``.npy``, which
    images use too); images otherwise."""
    from ._images import ImageKind
    from ._shapes import ShapeKind, is_shape_source

    first = subjects[0] if isinstance(subjects, (list, tuple)) and len(subjects) else None
    keyword = isinstance(initial, str) and initial in ("affine", "mean", "first")
    if is_shape_source(first) or (initial is not None and not keyword and is_shape_source(initial)):
        return ShapeKind()
    return ImageKind()
