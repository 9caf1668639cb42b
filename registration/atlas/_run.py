"""One atlas run: the subjects' state (active, excluded), the tasks of a stage, the rounds, the checkpoints.

The loop itself knows nothing of images: what a subject is goes through the data kind (``_kinds``), where the
tasks run through the executor (``_executor``).
"""

from __future__ import annotations

import os
import shutil
import time
import warnings

import numpy as np

from ._checkpoint import write_checkpoint
from ._executor import TaskError
from ._result import RoundRecord
from ._tasks import atomic_file, probe_task, reduce_task, register_task

#: the final round's warm starts are refined briefly (``refine``) when the last update changed the template by less
#: than this (relative, ``RoundRecord.template_change``); otherwise they run the pair's budget
REFINE_CHANGE = 0.005

__all__ = ["Run", "SubjectExcludedWarning"]


class SubjectExcludedWarning(UserWarning):
    """A subject failed for a data reason and was left out of the template (``on_error="exclude"``)."""


class _Rows:
    """A round's momenta as ``round_dir/momenta.npy`` (float32, one row per subject), written row by row through a
    memory map; ``finish(keep)`` drops the rows of subjects that failed in the round and puts the file in place."""

    def __init__(self, round_dir: str, shape: tuple):
        self.round_dir, self.shape = round_dir, shape
        self.part = os.path.join(round_dir, "momenta.part.npy")
        self.array = np.lib.format.open_memmap(self.part, mode="w+", dtype=np.float32, shape=shape)

    def write(self, k: int, momentum) -> None:
        self.array[k] = momentum

    def finish(self, keep: list) -> None:
        self.array.flush()
        if len(keep) < self.shape[0]:
            compact_path = os.path.join(self.round_dir, "momenta.compact.npy")
            compact = np.lib.format.open_memmap(compact_path, mode="w+", dtype=np.float32,
                                                shape=(len(keep),) + self.shape[1:])
            for k, row in enumerate(keep):
                compact[k] = self.array[row]
            compact.flush()
            del compact
            os.replace(compact_path, self.part)
        self.array = None  # unmapped before the rename
        os.replace(self.part, os.path.join(self.round_dir, "momenta.npy"))


class Run:
    """The state of one ``build_template`` run (see there for the options)."""

    def __init__(self, kind, specs, executor, directory: str, options: dict, *, on_error: str, callback,
                 retries: int):
        self.kind, self.specs, self.executor, self.directory = kind, specs, executor, directory
        self.options, self.on_error, self.callback, self.retries = options, on_error, callback, retries
        self.active = list(range(len(specs)))
        self.excluded: dict = {}
        self.reference: dict | None = None
        self.templates: list = []
        self.history: list = []
        self.summaries: dict = {}
        self.rounds_done = 0
        self.seconds_before = 0.0
        self.finished = False
        self.converged_round: int | None = None
        self._new_exclusions: list = []

    # ---- events and subjects ----
    def emit(self, **event) -> None:
        if self.callback is not None:
            self.callback(event)

    def store_subjects(self, resumed: bool) -> None:
        """Write every in-memory subject into ``inputs/`` once; the workers read it from there (see ``_subjects``).
        A resumed run (its fingerprints checked) keeps the copies it finds; a new one rewrites them."""
        for spec in self.specs:
            if spec.in_memory:
                spec.path = os.path.join(self.directory, "inputs", spec.name + self.kind.subject_suffix)
                if not (resumed and os.path.exists(spec.path)):
                    with atomic_file(spec.path) as tmp:
                        self.kind.save_subject(spec.data, tmp)

    def exclude(self, i: int, reason: str, stage: str) -> None:
        spec = self.specs[i]
        if self.on_error == "raise":
            raise ValueError(f"subject {spec.name!r} ({spec.source}): {reason}")
        self.excluded[spec.name] = f"{stage}: {reason}"
        self.active.remove(i)
        self._new_exclusions.append(spec.name)
        warnings.warn(f"build_template: subject {spec.name!r} ({spec.source}) is excluded: {reason}",
                      SubjectExcludedWarning, stacklevel=4)
        self.emit(event="excluded", name=spec.name, reason=reason, stage=stage)
        if len(self.active) < 2:
            raise ValueError(f"subjects: fewer than 2 subjects left after excluding {sorted(self.excluded)} "
                             f"({'; '.join(f'{k}: {v}' for k, v in self.excluded.items())})")

    # ---- tasks ----
    def map_subjects(self, task, *args, stage: str, folder: str | None = None, on_result=None) -> list:
        """Run ``task(kind, spec, folder, threads, *args)`` for every active subject.

        ``on_result(i, outcome)`` is called on each success as it arrives (e.g. to stream it to disk). Returns
        ``[(subject index, Outcome), ...]`` in subject order for the subjects that succeeded; a data
        failure excludes the subject (or raises, ``on_error="raise"``); any other failure, after the retries,
        raises ``RuntimeError`` naming the subject (the last checkpoint stays: ``resume`` continues from it).
        """
        folder = folder or os.path.join(self.directory, "stages", stage)
        threads = self.executor.threads()
        todo = list(self.active)
        jobs = [(self.kind, self.specs[i].light(), folder, threads, *args) for i in todo]
        done = []
        results = self.executor.map(task, jobs, key=f"atlas-{stage}")
        try:
            for n, (j, outcome) in enumerate(results, start=1):
                i = todo[j]
                self.emit(event="task", stage=stage, name=self.specs[i].name, done=n, total=len(todo),
                          error=outcome.error, seconds=outcome.seconds)
                if outcome.error is not None:
                    self.exclude(i, outcome.error, stage)
                else:
                    if on_result is not None:
                        on_result(i, outcome)
                    done.append((i, outcome))
        except TaskError as exc:
            raise RuntimeError(f"subject {self.specs[todo[exc.index]].name!r}: the {stage} task failed after "
                               f"{self.retries} retries: {exc}") from exc.error
        finally:
            results.close()
        return sorted(done, key=lambda t: t[0])

    def run_one(self, fn, *args, key: str):
        """One task (a reduction) on the executor."""
        return self.executor.run(fn, *args, key=f"atlas-{key}")

    # ---- stages ----
    def probe(self, template_info: dict | None) -> None:
        """Read every subject once (on the workers): unreadable ones, or ones that do not fit the template (or the
        first readable subject), are excluded by name before any registration."""
        infos = self.map_subjects(probe_task, stage="probe")
        self.reference = template_info or (infos[0][1].summary if infos else None)
        for i, outcome in infos:
            try:
                self.kind.check_probe(outcome.summary, self.reference)
            except ValueError as exc:
                self.exclude(i, f"ValueError: {exc}", "probe")
        shutil.rmtree(os.path.join(self.directory, "stages", "probe"), ignore_errors=True)

    def register_round(self, r: int, update: bool, unbias: bool) -> RoundRecord:
        """Round ``r``: every active subject registered to ``templates[r]``; the momenta streamed in subject order
        into ``rounds/<r>/momenta.npy``; then the reduction (mean momentum, and with ``update`` the new template,
        unbiased with ``unbias``)."""
        t0 = time.perf_counter()
        self._new_exclusions = []
        template = self.templates[r]
        round_dir = os.path.join(self.directory, "rounds", f"{r:03d}")
        shutil.rmtree(round_dir, ignore_errors=True)  # an interrupted attempt at this round
        os.makedirs(round_dir)
        handle = self.executor.share(template)
        try:
            done = self._collect_momenta(r, handle, round_dir)
            t_reduce = time.perf_counter()
            new, stats = self.run_one(reduce_task, self.kind, handle, [o.folder for _, o in done],
                                      os.path.join(round_dir, "momenta.npy"), list(range(len(done))),
                                      self.options, self.executor.threads(), update, unbias, key=f"reduce-{r}")
            t_reduce = time.perf_counter() - t_reduce
        finally:
            self.executor.release(handle)
        self.summaries = {self.specs[i].name: dict(o.summary, host=o.host) for i, o in done}
        change = None
        if update:
            change = self.kind.template_change(template, new)
            self.templates.append(new)
            with atomic_file(self.template_path(r + 1)) as tmp:
                self.kind.save_template(new, tmp)
        return self._record(r, update, [o for _, o in done], stats, change, time.perf_counter() - t0, t_reduce)

    def _record(self, r, update, outcomes, stats, change, seconds, reduce_seconds) -> RoundRecord:
        s = [o.summary for o in outcomes]
        similarity = float(np.mean([v["similarity_after"] for v in s]))
        energy = float(np.mean([v["energy"] for v in s]))
        deformation = float(np.mean([v["deformation"] for v in s]))
        return RoundRecord(round=r, updated=update, n_subjects=len(s), similarity=similarity, energy=energy,
                           objective=similarity + float(s[0]["regularization"]) * energy, template_change=change,
                           mean_momentum_norm=stats["mean_momentum_norm"],
                           mean_momentum_ratio=stats["mean_momentum_ratio"],
                           deformation=deformation, bias=stats["bias_mean"], bias_max=stats["bias_max"],
                           bias_ratio=stats["bias_mean"] / max(deformation, 1e-30), seconds=seconds,
                           task_seconds=float(np.mean([o.seconds for o in outcomes])),
                           reduce_seconds=reduce_seconds, shot_seconds=stats["shot_seconds"],
                           excluded=list(self._new_exclusions))

    def _collect_momenta(self, r: int, handle, round_dir: str) -> list:
        """The round's tasks; each momentum is written into its row as it arrives (one in memory at a time)."""
        start = list(self.active)
        position = {i: k for k, i in enumerate(start)}
        rows = _Rows(round_dir, (len(start),) + self.kind.momentum_shape(self.templates[r]))

        def write_row(i, outcome):
            rows.write(position[i], outcome.momentum)
            outcome.momentum = None

        previous = os.path.join(self.directory, "rounds", f"{r - 1:03d}", "subjects")
        warm = r > 0 and self.options["warm_start"]  # a subject without a previous folder starts from zero
        final = r == self.final_round
        moved = self.history[-1].template_change if self.history else None
        # a warm start is only refined (the kind's short budget, ``options["refine"]``) where the registrations feed
        # a template update, or, in the final round, whose registrations are delivered, when the template barely
        # moved since the momenta it starts from were fitted
        refine = warm and (not final or (moved is not None and moved < REFINE_CHANGE))
        done = self.map_subjects(register_task, handle, dict(self.options, refine=refine), final,
                                 previous if warm else None, stage=f"round-{r}",
                                 folder=os.path.join(round_dir, "subjects"), on_result=write_row)
        rows.finish([position[i] for i, _ in done])
        return done

    # ---- files ----
    def template_path(self, k: int) -> str:
        return os.path.join(self.directory, "templates", f"template_{k:03d}{self.kind.template_suffix}")

    @property
    def final_round(self) -> int:
        """Index of the final registration round (after the last update)."""
        return self.options["iterations"] if self.converged_round is None else self.converged_round + 1

    def checkpoint(self, seconds: float) -> None:
        from dataclasses import asdict

        write_checkpoint(self.directory, {
            "options": self.options, "subjects": [s.fingerprint() for s in self.specs],
            "active": [self.specs[i].name for i in self.active], "excluded": self.excluded,
            "reference": self.reference, "rounds_done": self.rounds_done, "finished": self.finished,
            "converged_round": self.converged_round,
            "templates": [os.path.relpath(self.template_path(k), self.directory) for k in range(len(self.templates))],
            "history": [asdict(h) for h in self.history], "summaries": self.summaries,
            "seconds": self.seconds_before + seconds})
