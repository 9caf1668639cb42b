"""Boundary checks shared by the engine's public functions: each error names the argument, expected vs actual."""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch


def check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    """A finite real number ``> 0`` (or ``>= 0`` with ``allow_zero``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a real number, got {value!r}") from None
    ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        expected = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return v


def check_int(name: str, value, *, minimum: int = 1) -> int:
    """An integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v}")
    return v


def check_points(name: str, x, *, dim: int | None = None, finite: bool = True) -> torch.Tensor:
    """A floating (N, d) torch tensor with finite values (and ``d == dim`` when given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (N, d), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected shape (N, d), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype (float32 or float64), got {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}: expected shape (N, {dim}), got shape {tuple(x.shape)}")
    if finite and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite values, got {n_bad} NaN or inf entries")
    return x


def check_same_rows(name: str, x: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    """``x`` and ``other`` have the same number of rows."""
    if x.shape[0] != other.shape[0]:
        raise ValueError(f"{name}: expected {other.shape[0]} rows (as {other_name}), got shape {tuple(x.shape)}")


def check_same_shape(name: str, x: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    """``x`` and ``other`` have the same shape."""
    if x.shape != other.shape:
        raise ValueError(f"{name}: expected shape {tuple(other.shape)} (as {other_name}), got {tuple(x.shape)}")


def check_choice(name: str, value, choices: Sequence) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
