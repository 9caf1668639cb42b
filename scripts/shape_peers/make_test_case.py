"""Write the peers' small test case: fsaverage5 left white and pial surfaces decimated to ico3 (642 vertices).

FreeSurfer's icosahedral meshes are nested: the first ``10 * 4**k + 2`` vertices of an ico-n sphere are the
vertices of ico-k. So the first 642 vertices of fsaverage5 (ico5) are ico3's; their faces are rebuilt here as
the convex hull of the 642 sphere points (the triangulation of points on a sphere), oriented outwards, and
checked: 1280 faces, Euler characteristic 2, twelve vertices of degree 5 and the rest of degree 6, and every
hull edge joins two vertices four ico5 edges apart (an ico3 edge is split twice, into four, by ico4 and ico5).
White and pial share fsaverage's vertex indexing, so a warped white vertex has a true partner on the pial.

Run with the main virtual environment (nilearn's bundled fsaverage5, no download)::

    /work/main/.venv/bin/python scripts/shape_peers/make_test_case.py --out-dir .peers/case

It writes ``white_lh_ico3.npz`` and ``pial_lh_ico3.npz`` (``vertices`` (642, 3) float64 in mm, ``faces``
(1280, 3) int64), the input format of ``run_deformetrica.py`` and ``run_keops_tutorial.py``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

N_ICO3 = 642


def _outward_hull(points: np.ndarray) -> np.ndarray:
    """Faces (F, 3) of the convex hull of ``points`` (N, 3) around the origin, ordered counter-clockwise outside."""
    from scipy.spatial import ConvexHull

    faces = ConvexHull(points).simplices.astype(np.int64)
    a, b, c = (points[faces[:, k]] for k in range(3))
    flip = np.einsum("ij,ij->i", np.cross(b - a, c - a), a + b + c) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return faces


def _check_ico3(faces: np.ndarray, fine_faces: np.ndarray, n_fine: int) -> None:
    """Raise ``ValueError`` unless ``faces`` is the ico3 triangulation nested in ``fine_faces`` (ico5)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    edges = np.unique(np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1), axis=0)
    degree = np.bincount(edges.ravel(), minlength=N_ICO3)
    euler = N_ICO3 - len(edges) + len(faces)
    if len(faces) != 1280 or euler != 2 or sorted(np.unique(degree)) != [5, 6] or (degree == 5).sum() != 12:
        raise ValueError(f"faces: expected ico3 (1280 faces, Euler 2, 12 vertices of degree 5), got "
                         f"{len(faces)} faces, Euler {euler}, degrees {np.unique(degree)}")
    fine = np.concatenate([fine_faces[:, [0, 1]], fine_faces[:, [1, 2]], fine_faces[:, [2, 0]]])
    graph = coo_matrix((np.ones(len(fine)), (fine[:, 0], fine[:, 1])), shape=(n_fine, n_fine)).tocsr()
    hops = shortest_path(graph, directed=False, unweighted=True, indices=np.arange(N_ICO3))
    along = hops[edges[:, 0], edges[:, 1]]
    if not np.all(along == 4):
        raise ValueError(f"faces: ico3 edges should span 4 ico5 edges, got {np.unique(along)}")


def load_ico3_case() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"white": (vertices, faces), "pial": (vertices, faces)}`` of fsaverage5's left hemisphere at ico3."""
    import nibabel as nib
    from nilearn import datasets

    fs = datasets.fetch_surf_fsaverage("fsaverage5")
    sphere, fine_faces = (np.asarray(a) for a in nib.load(fs["sphere_left"]).agg_data())
    faces = _outward_hull(sphere[:N_ICO3].astype(np.float64))
    _check_ico3(faces, fine_faces.astype(np.int64), len(sphere))
    out = {}
    for name in ("white", "pial"):
        vertices = np.asarray(nib.load(fs[f"{name}_left"]).agg_data()[0], dtype=np.float64)[:N_ICO3]
        out[name] = (vertices, faces)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=".peers/case", help="folder for the two npz files")
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, (vertices, faces) in load_ico3_case().items():
        path = os.path.join(args.out_dir, f"{name}_lh_ico3.npz")
        tmp = path + ".tmp.npz"
        np.savez(tmp, vertices=vertices, faces=faces)
        os.replace(tmp, path)
        print(f"{path}: {len(vertices)} vertices, {len(faces)} faces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
