"""The cost of ``lddmm register`` beyond the registration itself (issue 12: at most the in-process time + 1.5 s).

For each case (MNI152 at 2 mm, 3-D; dipy's T1 slice, 2-D; both warped by the project's random diffeomorphism and
saved as NIfTI) the script runs, each in a fresh process at one thread:

- ``in-process``: ``python -c`` reading both files, ``register_images``, nothing written (wall time of the whole
  process and the registration's own ``seconds``);
- ``cli all``: ``lddmm register FIXED MOVING --out DIR`` writing every output (warped image, both displacement
  fields, Jacobian, momentum, report, overview picture);
- ``cli minimal``: the same with ``--outputs warped --no-overview``.

and prints per case and variant the wall time, the registration's time (from ``report.json``), the overhead
(wall - registration) and the overhead against the in-process run's whole-process wall time. Usage::

    python scripts/bench_cli.py [--cases mni2,t1slice] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.join(os.path.dirname(sys.executable), "lddmm")

IN_PROCESS = """
import json, sys
from registration.images import register_images
from registration.io import load_image
f, m = load_image(sys.argv[1]), load_image(sys.argv[2])
res = register_images(f, m, threads=1)
print(json.dumps({"seconds": res.seconds}))
"""


def make_case(name: str, directory: str) -> tuple[str, str]:
    """Write the fixed and moving NIfTI files of a case; returns their paths."""
    from registration.data import load_mni152, load_t1_slice, warped_pair
    from registration.io import save_image

    base = load_mni152(2).t1 if name == "mni2" else load_t1_slice()
    pair = warped_pair(base, max_displacement=8.0 if name == "mni2" else 6.0, seed=0)
    paths = (os.path.join(directory, f"{name}_fixed.nii.gz"), os.path.join(directory, f"{name}_moving.nii.gz"))
    save_image(paths[0], pair.fixed)
    save_image(paths[1], pair.moving)
    return paths


def timed(cmd: list[str]) -> tuple[float, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, done.stdout


def run_case(name: str, directory: str, repeat: int) -> list[dict]:
    fixed, moving = make_case(name, directory)
    rows = []
    for variant in ("in-process", "cli all", "cli minimal"):
        walls, regs = [], []
        for r in range(repeat):
            out = os.path.join(directory, f"{name}_{variant.replace(' ', '_')}_{r}")
            if variant == "in-process":
                wall, stdout = timed([sys.executable, "-c", IN_PROCESS, fixed, moving])
                reg = json.loads(stdout.strip().splitlines()[-1])["seconds"]
            else:
                extra = ["--outputs", "warped", "--no-overview"] if variant == "cli minimal" else []
                wall, _ = timed([BIN, "register", fixed, moving, "--out", out, "--threads", "1", "--quiet", *extra])
                with open(os.path.join(out, "report.json")) as fh:
                    reg = json.load(fh)["seconds"]
            walls.append(wall)
            regs.append(reg)
        rows.append(dict(case=name, variant=variant, wall=float(np.median(walls)), reg=float(np.median(regs))))
    process = next(r["wall"] for r in rows if r["variant"] == "in-process")
    for r in rows:
        r["overhead"] = r["wall"] - r["reg"]
        r["vs_in_process"] = r["wall"] - process
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="mni2,t1slice", help="comma-separated among mni2, t1slice")
    ap.add_argument("--repeat", type=int, default=2, help="runs per variant (the median is shown)")
    args = ap.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = sorted(set(cases) - {"mni2", "t1slice"})
    if bad:
        ap.error(f"--cases: expected among mni2, t1slice, got {bad}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in cases:
            rows += run_case(name, tmp, args.repeat)
    print(f"load average {os.getloadavg()[0]:.1f}; one thread; median of {args.repeat} runs\n")
    print("| case | variant | wall s | registration s | wall - registration s | wall - in-process wall s |")
    print("|------|---------|--------|----------------|-----------------------|--------------------------|")
    for r in rows:
        print(f"| {r['case']} | {r['variant']} | {r['wall']:.2f} | {r['reg']:.2f} | {r['overhead']:.2f} | "
              f"{r['vs_in_process']:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
