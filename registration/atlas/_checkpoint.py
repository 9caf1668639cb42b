"""The run directory's checkpoint: written atomically after every finished round, read by ``resume``.

``checkpoint.json`` holds what a resumed run needs and nothing large: the options that define the maths (a resumed
run must use the same ones), the subjects (names and sources), which are excluded and why, the history, the
template files and the last round's per-subject scalars. The templates are files beside it
(``templates/template_<k>``); the last finished round's fields stay in ``rounds/<r>/``.
"""

from __future__ import annotations

import json
import os

from ._tasks import atomic_file

__all__ = ["CHECKPOINT", "FORMAT", "write_checkpoint", "read_checkpoint", "check_resumable"]

CHECKPOINT = "checkpoint.json"
FORMAT = 1


def write_checkpoint(directory: str, state: dict) -> None:
    """Write ``state`` as ``directory/checkpoint.json`` (temporary file, then rename: never half-written)."""
    with atomic_file(os.path.join(directory, CHECKPOINT)) as tmp:
        with open(tmp, "w") as fh:
            json.dump(dict(state, format=FORMAT), fh, indent=1)


def read_checkpoint(directory: str) -> dict | None:
    """The checkpoint of the run in ``directory``, or ``None`` if there is none."""
    path = os.path.join(directory, CHECKPOINT)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        try:
            state = json.load(fh)
        except json.JSONDecodeError as exc:  # cannot happen through write_checkpoint; a hand-edited file can
            raise ValueError(f"out: {path} is not a valid checkpoint ({exc})") from exc
    if state.get("format") != FORMAT:
        raise ValueError(f"out: {path} has checkpoint format {state.get('format')!r}, expected {FORMAT}")
    return state


def check_resumable(state: dict, options: dict, subjects: list[dict], directory: str) -> None:
    """Raise ``ValueError`` naming what differs when the run in ``directory`` cannot be resumed with these
    options and subjects. ``iterations`` may grow while the final round has not run."""
    saved = dict(state["options"])
    new = dict(options)
    saved_it, new_it = saved.pop("iterations"), new.pop("iterations")
    for key in sorted(set(saved) | set(new)):
        if saved.get(key) != new.get(key):
            raise ValueError(f"resume: the run in {directory} used {key}={saved.get(key)!r}, this call gives "
                             f"{new.get(key)!r}; resume with the same options or choose another out directory")
    if new_it != saved_it and (state.get("finished") or new_it < state["rounds_done"]):
        raise ValueError(f"resume: the run in {directory} {'finished' if state.get('finished') else 'did'} "
                         f"{saved_it} iterations; iterations={new_it} cannot continue it")
    if state["subjects"] != subjects:
        old = [s["name"] for s in state["subjects"]]
        now = [s["name"] for s in subjects]
        diff = sorted(set(old) ^ set(now)) or [s["name"] for s, t in zip(subjects, state["subjects"]) if s != t]
        raise ValueError(f"resume: the subjects differ from the run in {directory} (e.g. {diff[:3]}); resume with "
                         f"the same subjects in the same order")
