"""``lddmm atlas``: files in, the deliverables out, bad subjects named, --resume, one-line errors."""

import json
import os

import numpy as np
import pytest

from registration.atlas.population import mni152_slice, synthetic_population
from registration.cli import build_parser, main
from registration.io import save_image

FAST = ["--n-steps", "4", "--shrink-factors", "1", "--level-iterations", "10"]


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    folder = tmp_path_factory.mktemp("subjects")
    t1, _ = mni152_slice(6)
    paths = []
    for i, s in enumerate(synthetic_population(t1, n=2, seed=5).subjects):
        paths.append(str(folder / f"s{i}.nii.gz"))
        save_image(paths[-1], s)
    (folder / "broken.nii.gz").write_text("not an image")
    return paths, str(folder / "broken.nii.gz")


def test_atlas_command_writes_the_deliverables(subjects, tmp_path, capsys):
    paths, broken = subjects
    out = tmp_path / "atlas"
    args = ["atlas", *paths, broken, "--out", str(out), "--iterations", "1", "--scheduler", "synchronous", *FAST]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "broken" in err and "excluded" in err  # named on the terminal
    report = json.loads((out / "report.json").read_text())
    assert report["names"] == ["s0", "s1"] and list(report["excluded"]) == ["broken"]
    assert len(report["history"]) == 2 and report["options"]["register"]["n_steps"] == 4
    assert report["options"]["warm_start"] is True  # the images' default
    assert np.load(out / "momenta.npy").shape == (2, 33, 39, 2)
    for name in ("s0", "s1"):
        assert sorted(os.listdir(out / "subjects" / name)) == ["displacement.nii.gz", "inverse_displacement.nii.gz",
                                                              "jacobian.nii.gz", "warped.nii.gz"]
    assert (out / "template.nii.gz").exists() and len(os.listdir(out / "templates")) == 2
    # a finished run resumes to the same result; without --resume the directory is refused
    assert main(args + ["--resume"]) == 0
    assert json.loads((out / "report.json").read_text())["history"] == report["history"]
    assert main(args) == 2
    assert "resume" in capsys.readouterr().err
    cold = tmp_path / "cold"
    assert main([*args[:4], "--out", str(cold), *args[6:], "--warm-start", "off", "--quiet"]) == 0
    assert json.loads((cold / "report.json").read_text())["options"]["warm_start"] is False


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "--workers"),
    (["--scheduler", "synchronous", "--iterations", "-2"], "--iterations"),
    (["--scheduler", "synchronous", "--on-error", "raise"], "broken"),
])
def test_atlas_command_errors_are_one_line(subjects, tmp_path, capsys, extra, message):
    paths, broken = subjects
    code = main(["atlas", *paths, broken, "--out", str(tmp_path / "a"), "--iterations", "0", "--quiet", *FAST,
                 *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and err[0].startswith("lddmm: error:")


def test_atlas_help_lists_the_options():
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    text = sub.choices["atlas"].format_help()
    for option in ("--workers", "--scheduler", "--resume", "--iterations", "--out"):
        assert option in text
