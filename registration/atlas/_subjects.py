"""The subjects of a population: where each one is read from, its name, and a fingerprint for resuming a run.

A subject given as a path is read by the worker that processes it (the client never ships its voxels); an
in-memory subject (``Image``, nibabel image or array) is written once into the run directory by the client and
read from there like the others. (Scattered data have no lineage: a worker that dies with the only copy would
lose the subject for good, while a file survives any worker.)
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

__all__ = ["SubjectSpec", "as_subjects"]

_EXTENSIONS = (".nii.gz", ".nii", ".npy", ".mha", ".mhd", ".nrrd", ".nhdr", ".vtk", ".gii", ".ply", ".obj", ".stl")


@dataclass
class SubjectSpec:
    """One subject of a population.

    Attributes
    ----------
    name : str
        Unique name (file and folder names of its outputs; the rows of the momenta array are in subject order).
    source : str
        The path, or ``"memory:<sha1 of the data and affine>"`` for an in-memory subject.
    data : object or None
        The in-memory subject (e.g. an ``Image``), read once by ``kind.read``; ``None`` for a path.
    path : str or None
        Where the workers read it: ``source`` for a path, the copy in the run directory for an in-memory subject
        (set by the run).
    """

    name: str
    source: str
    data: object = field(default=None, repr=False)
    path: str | None = None

    @property
    def in_memory(self) -> bool:
        return self.source.startswith("memory:")

    def load(self, kind):
        """Read the subject with ``kind.read`` (on the worker)."""
        return kind.read(self.path or self.source, name=f"subject {self.name!r}")

    def light(self) -> "SubjectSpec":
        """This spec without its in-memory data (what a task's arguments carry)."""
        return SubjectSpec(self.name, self.source, None, self.path)

    def fingerprint(self) -> dict:
        """What a resumed run must find unchanged: the name and the source."""
        return {"name": self.name, "source": self.source}


def _stem(path: str) -> str:
    base = os.path.basename(os.fspath(path).rstrip("/"))
    for ext in _EXTENSIONS:
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return os.path.splitext(base)[0]


def _safe(name: str) -> str:
    """A name usable as a folder name on every file system (other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "subject"


def as_subjects(subjects, kind, names=None) -> list[SubjectSpec]:
    """Normalise the ``subjects`` argument of ``build_template`` into ``SubjectSpec`` s.

    Parameters
    ----------
    subjects : sequence
        Paths or in-memory subjects (mixed is fine): what ``kind.read`` accepts (images: ``Image``, nibabel
        images, arrays).
    kind : DataKind
        Reads in-memory subjects (``kind.read``) and fingerprints them (``kind.digest``).
    names : sequence of str, optional
        One name per subject; default: the file name without its extension, ``subject_<i>`` in memory.

    Raises
    ------
    TypeError
        ``subjects`` is not a sequence, or holds something else.
    ValueError
        Fewer than 2 subjects, a wrong number of names, or two subjects with the same name.
    """
    if isinstance(subjects, (str, os.PathLike)) or not isinstance(subjects, (list, tuple)):
        raise TypeError(f"subjects: expected a list or tuple of paths or in-memory subjects, got "
                        f"{type(subjects).__name__}")
    subjects = list(subjects)
    if len(subjects) < 2:
        raise ValueError(f"subjects: expected at least 2 subjects for a template, got {len(subjects)}")
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(subjects):
            raise ValueError(f"names: expected one name per subject ({len(subjects)}), got {len(names)}")
    specs = []
    for i, s in enumerate(subjects):
        if isinstance(s, (str, os.PathLike)):
            name, source, data = _stem(s), os.path.abspath(os.fspath(s)), None
        else:  # in memory: kind.read raises TypeError / ValueError for anything it cannot take
            data = kind.read(s, name=f"subjects[{i}]")
            name, source = f"subject_{i:04d}", "memory:" + hashlib.sha1(kind.digest(data)).hexdigest()
        specs.append(SubjectSpec(_safe(names[i] if names is not None else name), source, data,
                                 None if data is not None else source))
    seen = {}
    for s in specs:
        if s.name in seen:
            raise ValueError(f"names: subjects {seen[s.name]} and {s.source} are both named {s.name!r}; "
                             f"pass names= with unique names")
        seen[s.name] = s.source
    return specs
