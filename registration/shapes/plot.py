"""Pictures of a shape registration: source, target and warped source coloured by the displacement."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_registration"]


def _agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw(ax, shape, colour=None, cmap="viridis", vmax=None, single="0.6"):
    v = shape.vertices.detach().cpu().double().numpy()
    if shape.dim == 3:
        if shape.kind == "triangles":
            surf = ax.plot_trisurf(v[:, 0], v[:, 1], v[:, 2], triangles=shape.cells.cpu().numpy(),
                                   color=single, linewidth=0, antialiased=False, shade=True)
            if colour is not None:
                face = colour[shape.cells.cpu().numpy()].mean(1)
                surf.set_array(face)
                surf.set_cmap(cmap)
                surf.set_clim(0, vmax)
            return surf
        return ax.scatter(v[:, 0], v[:, 1], v[:, 2], s=2, c=single if colour is None else colour, cmap=cmap,
                          vmin=0, vmax=vmax)
    if shape.kind == "segments":
        from matplotlib.collections import LineCollection

        segs = v[shape.cells.cpu().numpy()]
        lc = LineCollection(segs, colors=single if colour is None else None, cmap=cmap, linewidths=1.5)
        if colour is not None:
            lc.set_array(colour[shape.cells.cpu().numpy()].mean(1))
            lc.set_clim(0, vmax)
        ax.add_collection(lc)
        ax.autoscale()
        return lc
    return ax.scatter(v[:, 0], v[:, 1], s=3, c=single if colour is None else colour, cmap=cmap, vmin=0, vmax=vmax)


def plot_registration(result, path: str, *, title: str | None = None) -> str:
    """Three panels — source, target, warped source coloured by ``|φ_1(x) − x|`` — saved as a PNG.

    Parameters
    ----------
    result : ShapeRegistration
        Lists of objects are drawn together.
    path : str
        Output PNG.
    """
    plt = _agg()
    as_list = (lambda x: x if isinstance(x, list) else [x])  # noqa: E731
    sources, targets, warped = as_list(result.source), as_list(result.target), as_list(result.warped)
    disp = [np.linalg.norm(w.vertices.detach().cpu().double().numpy() - s.vertices.detach().cpu().double().numpy(),
                           axis=1) for s, w in zip(sources, warped)]
    vmax = max(float(d.max()) for d in disp) or 1.0
    three = sources[0].dim == 3
    fig = plt.figure(figsize=(13, 4.6), dpi=100)
    panels = [("source", sources, None), ("target", targets, None), ("warped source (|displacement|)", warped, disp)]
    allv = np.concatenate([s.vertices.detach().cpu().double().numpy() for _, group, _ in panels for s in group])
    lo, hi = allv.min(0), allv.max(0)
    mappable = None
    for i, (name, shapes, colours) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1, projection="3d" if three else None)
        for j, s in enumerate(shapes):
            art = _draw(ax, s, None if colours is None else colours[j], vmax=vmax,
                        single="tab:blue" if name == "source" else ("tab:red" if name == "target" else "0.6"))
            if colours is not None:
                mappable = art
        ax.set_title(name, fontsize=10)
        if three:  # one box for the three panels, seen from the side the shapes' centre faces (lateral for cortex)
            centre = 0.5 * (lo + hi)
            ax.view_init(elev=15, azim=180 if centre[0] < 0 else 0)
            ax.set_xlim(lo[0], hi[0]), ax.set_ylim(lo[1], hi[1]), ax.set_zlim(lo[2], hi[2])
            ax.set_box_aspect(np.maximum(hi - lo, 1e-9 * max(float((hi - lo).max()), 1.0)))
            ax.set_axis_off()
        else:
            ax.set_xlim(lo[0], hi[0]), ax.set_ylim(lo[1], hi[1])
            ax.set_aspect("equal")
    if mappable is not None:
        fig.colorbar(mappable, ax=fig.axes[-1], shrink=0.7, label="displacement (data units)")
    rep = result.report()
    fig.suptitle(title or (f"data term {rep['distance_before'][0]:.4g} -> {rep['distance_after'][0]:.4g}, "
                           f"{rep['iterations']} iterations, {rep['seconds']:.1f} s, "
                           f"{rep['flipped_triangles']} flipped cells"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
