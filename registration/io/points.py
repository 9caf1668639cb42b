"""Point sets as CSV files of world coordinates, as ANTs' ``antsApplyTransformsToPoints`` reads and writes them.

A header row names the columns; the coordinate columns are ``x``, ``y`` (and ``z`` in 3-D), case-insensitive, in
millimetres. Other columns (labels, ``t``, names) are carried through unchanged. Coordinates are RAS+ (NIfTI) by
default; ``lps=True`` reads and writes LPS (ITK / ANTs' physical space): x and y change sign.
"""

from __future__ import annotations

import csv
import os

import numpy as np

__all__ = ["PointTable", "load_points_csv", "save_points_csv"]


class PointTable:
    """Rows of a points CSV: the header, the rows as strings, and the ``(N, d)`` coordinates (RAS, mm)."""

    def __init__(self, header: list, rows: list, columns: list, points: np.ndarray):
        self.header, self.rows, self.columns, self.points = header, rows, columns, points

    def with_points(self, points: np.ndarray) -> "PointTable":
        """The same table with other coordinates ``(N, d)``."""
        return PointTable(self.header, self.rows, self.columns, np.asarray(points, dtype=np.float64))


def load_points_csv(path, d: int, *, lps: bool = False) -> PointTable:
    """Read a points CSV (see the module docstring) with ``d`` coordinate columns.

    Raises
    ------
    FileNotFoundError
        A missing file.
    ValueError
        No header with the coordinate columns, a row with a missing or non-numeric coordinate, no rows.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"points: no such file: {path}")
    with open(path, newline="") as fh:
        table = [row for row in csv.reader(fh) if any(cell.strip() for cell in row)]
    names = "xyz"[:d]
    if not table:
        raise ValueError(f"points: {path} is empty; expected a header with columns {', '.join(names)}")
    header = [c.strip() for c in table[0]]
    lower = [c.lower() for c in header]
    missing = [n for n in names if n not in lower]
    if missing:
        raise ValueError(f"points: {path}: expected a header with columns {', '.join(names)}, got {header}")
    columns = [lower.index(n) for n in names]
    points = np.empty((len(table) - 1, d))
    for i, row in enumerate(table[1:]):
        try:
            points[i] = [float(row[c]) for c in columns]
        except (IndexError, ValueError):
            raise ValueError(f"points: {path}, line {i + 2}: expected numbers in columns {', '.join(names)}, "
                             f"got {row}") from None
    if not len(points):
        raise ValueError(f"points: {path} has a header but no points")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"points: {path} has non-finite coordinates")
    if lps:
        points[:, :2] *= -1
    return PointTable(header, table[1:], columns, points)


def save_points_csv(path, table: PointTable, *, lps: bool = False) -> None:
    """Write ``table`` (its coordinates replaced in their columns, every other cell as read)."""
    pts = np.array(table.points, dtype=np.float64)
    if lps:
        pts[:, :2] *= -1
    with open(os.fspath(path), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(table.header)
        for row, p in zip(table.rows, pts):
            row = list(row) + [""] * (len(table.header) - len(row))
            for c, v in zip(table.columns, p):
                row[c] = repr(float(v))
            w.writerow(row)
