"""Images on a periodic grid, their patches, and the point groups of the square grid.

An image is a (N, C, H, W) tensor: C channels on the torus ``Z_H x Z_W`` (periodic boundary). The groups acting on
it are the translations of the torus, and with ``"p4"`` / ``"p4m"`` also the grid's 90° rotations (and reflections)
(square grids, H = W). A group element moves pixels and leaves channel values alone (channels are scalar fields).

The patch of x at site t is ``P_t x = (x(t + s))_{s ∈ S}`` with S the (2r+1) x (2r+1) square of offsets, flattened
in the order (channel, row offset, column offset). S is invariant under the point group, and a point-group element
h acts on a patch by rotating (reflecting) its offsets: ``P_t(h·x) = h·P_{h⁻¹t} x``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

GROUPS = ("translations", "p4", "p4m")


def point_group(name: str) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The point group's elements, each acting on the last two axes of a tensor (rotations about their centre).

    Parameters
    ----------
    name : {"translations", "p4", "p4m"}
        ``"translations"``: the identity alone; ``"p4"``: the 4 rotations by multiples of 90°; ``"p4m"``: those and
        the 4 reflections (the dihedral group of order 8).

    Returns
    -------
    list of callable
        ``h(a)`` for a tensor ``a`` of shape (..., k, k).
    """
    if name not in GROUPS:
        raise ValueError(f"group: expected one of {list(GROUPS)}, got {name!r}")
    rotations = [lambda a, j=j: torch.rot90(a, j, dims=(-2, -1)) for j in range(4)]
    if name == "translations":
        return rotations[:1]
    if name == "p4":
        return rotations
    return rotations + [lambda a, j=j: torch.rot90(a, j, dims=(-2, -1)).flip(-1) for j in range(4)]


def extract_patches(z: torch.Tensor, radius: int) -> torch.Tensor:
    """Periodic patches of every site.

    Parameters
    ----------
    z : torch.Tensor
        (N, C, H, W) images.
    radius : int
        r: patches are (2r+1) x (2r+1).

    Returns
    -------
    torch.Tensor
        (N, H*W, C*(2r+1)²) patches, sites in row-major order, entries in (channel, row, column) order.
    """
    k = 2 * radius + 1
    padded = F.pad(z, (radius, radius, radius, radius), mode="circular") if radius else z
    return F.unfold(padded, kernel_size=k).transpose(1, 2)


def act_on_patches(h: Callable, patches: torch.Tensor, channels: int) -> torch.Tensor:
    """Apply a point-group element to flattened patches (..., C*k*k) (rotating their offsets)."""
    k = int(round((patches.shape[-1] // channels) ** 0.5))
    shaped = patches.reshape(*patches.shape[:-1], channels, k, k)
    return h(shaped).reshape(patches.shape)


def check_images(name: str, x: torch.Tensor, group: str) -> None:
    """x is a floating (N, C, H, W) tensor, square when the group rotates."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a floating (N, C, H, W) tensor, got {got}")
    if group != "translations" and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{name}: group {group!r} rotates the grid and needs square images, got H x W = "
                         f"{x.shape[-2]} x {x.shape[-1]}")
