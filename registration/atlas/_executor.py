"""Where the tasks run: in this process one after the other (``"synchronous"``), or on a Dask cluster.

The Dask executor starts a ``LocalCluster`` of worker processes sized to the machine when it is given nothing,
connects to a scheduler by address, or uses a ``distributed.Client`` it is handed (and then leaves it open).
Large objects that every task needs (the template, in-memory subjects) are handed to the cluster once
(``share``: ``client.scatter``, broadcast to every worker for the template) and tasks receive the handle. Torch
threads per task are set so that the workers of one machine do not oversubscribe its cores: ``cores // (task
slots on that machine)``, cores counted by each worker (CPU affinity, e.g. a SLURM allocation).
"""

from __future__ import annotations

import logging
import os
import uuid

__all__ = ["SerialExecutor", "DaskExecutor", "TaskError", "make_executor", "local_cluster", "WORKER_PRELOAD"]

log = logging.getLogger(__name__)

#: memory per task when the default cluster is sized (bytes): a worker process (torch, the package) and per template
#: voxel; a 3-D registration task at 2 mm (1.1 million voxels) raised a process's peak memory by 250 MB, so this is
#: about twice what was measured
TASK_BYTES_PER_VOXEL = 500
TASK_BYTES_BASE = 500e6
#: modules the default cluster's workers import when they start (torch, the registrations, the readers and the
#: resampling: about 2 s in a fresh process, which each worker's first task paid inside the first round)
WORKER_PRELOAD = ("registration.atlas", "nibabel", "scipy.ndimage")
#: variables of Dask's worker environment (``distributed.nanny.pre-spawn-environ``) that the default cluster leaves
#: out: ``MALLOC_TRIM_THRESHOLD_=65536`` freezes glibc's mmap threshold, so the large arrays of a registration are
#: mapped and faulted in afresh each time. ``_tasks.TASK_MALLOC`` repairs most of it in a task on any cluster, but
#: not all: two concurrent 2 mm MNI152 registrations on two workers took 4.0-4.6 s each with it, 3.8-4.1 s without
#: the variable (3.9-4.0 s in two plain processes); a whole 2 mm template (8 subjects, 4 updates) 92 s against 107 s,
#: at 4 mm 13.0-13.2 s against 14.2-14.5 s
WORKER_ENV_DROP = ("MALLOC_TRIM_THRESHOLD_",)
#: Dask settings of the default cluster, whose scheduler and nannies share the machine with the workers: no
#: statistical profiler in the workers (a stack sample every 10 ms), the nannies' memory monitors (in this process)
#: every second instead of every 0.1 s, the system monitor every 2 s and the event loops' health check every 0.2 s.
#: 4 mm MNI152, 8 subjects, 2 workers, three runs each: 12.27-12.76 s against 13.18-13.52 s, and 1.2 s of this
#: process's CPU against 1.6 s (``build_template`` timed alone, the cluster started). The dashboard's profile page stays
#: empty.
LOCAL_CLUSTER_CONFIG = {"distributed.worker.profile.enabled": False,
                        "distributed.worker.memory.monitor-interval": "1s",
                        "distributed.admin.system-monitor.interval": "2s",
                        "distributed.admin.tick.interval": "200ms"}


class TaskError(RuntimeError):
    """A task raised (after its retries); ``index`` is its position in the submitted jobs."""

    def __init__(self, index: int, error: BaseException):
        super().__init__(f"{type(error).__name__}: {error}")
        self.index = index
        self.error = error


class SerialExecutor:
    """Every task in this process, one after the other, in order (no Dask; the reference for the maths).

    Parameters
    ----------
    threads : int or None
        Torch threads per task (``None``: torch's current setting).
    """

    dashboard = None
    n_workers = 1

    def __init__(self, threads: int | None = None):
        self._threads = threads

    def share(self, obj, *, broadcast: bool = True):
        return obj

    def release(self, handle) -> None:
        pass

    def threads(self):
        return self._threads

    def map(self, fn, jobs: list, *, key: str):
        for i, args in enumerate(jobs):
            try:
                yield i, fn(*args)
            except Exception as exc:
                raise TaskError(i, exc) from exc

    def run(self, fn, *args, key: str):
        return fn(*args)

    def describe(self) -> str:
        return "in this process (synchronous)"

    def close(self) -> None:
        pass


#: times a task is submitted again because a shared object it needs was lost with the workers that held it
MAX_RESHARES = 3


class DaskExecutor:
    """Tasks on a ``distributed.Client``.

    Parameters
    ----------
    client : distributed.Client
    retries : int
        Times a task that raised is run again (``client.submit(retries=)``); a task lost with its worker is
        rescheduled by the scheduler without counting.
    threads : int or None
        Torch threads per task; ``None``: cores // task slots of each machine.
    cluster : distributed.LocalCluster, optional
        A cluster this executor started (closed with it).
    """

    def __init__(self, client, *, retries: int = 2, threads: int | None = None, cluster=None, owns_client=False):
        self.client = client
        self.retries = retries
        self._threads = threads
        self._cluster = cluster
        self._owns_client = owns_client
        self._run_id = uuid.uuid4().hex[:8]
        self._shared = {}  # key of a shared handle -> (object, broadcast, its current handle)
        self._root = {}  # key of every handle of a shared object (first and later scatters) -> the first key

    @property
    def dashboard(self) -> str | None:
        """The dashboard's address, if the scheduler serves one (a local cluster's needs bokeh installed here)."""
        if self._cluster is not None and not _has_bokeh():
            return None
        try:
            info = self.client.scheduler_info(n_workers=0)
            return self.client.dashboard_link if "dashboard" in info.get("services", {}) else None
        except Exception:  # pragma: no cover - an unreachable scheduler: no dashboard to show
            return None

    @property
    def n_workers(self) -> int:
        return len(self._workers())

    def _workers(self) -> dict:
        try:
            return self.client.scheduler_info(n_workers=-1)["workers"]
        except TypeError:  # pragma: no cover - distributed < 2025 has no n_workers argument
            return self.client.scheduler_info()["workers"]

    def share(self, obj, *, broadcast: bool = True):
        handle = self.client.scatter(obj, broadcast=broadcast, hash=False)
        self._shared[handle.key] = (obj, broadcast, handle)
        self._root[handle.key] = handle.key
        return handle

    def release(self, handle) -> None:
        root = self._root.get(handle.key, handle.key)
        _, _, current = self._shared.pop(root, (None, None, handle))
        self._root = {k: r for k, r in self._root.items() if r != root}
        handle.release()
        if current is not handle:  # scattered again after a loss
            current.release()

    def _reshared(self, args: tuple) -> tuple | None:
        """``args`` with the current handle of every shared object, scattered again where the cluster lost its data
        (every worker holding it died); None when nothing changed: the task failed for another reason."""
        from distributed import Future

        changed, out = False, []
        for a in args:
            root = self._root.get(a.key) if isinstance(a, Future) else None
            if root is not None:
                obj, broadcast, current = self._shared[root]
                if current.status != "finished":
                    current = self.client.scatter(obj, broadcast=broadcast, hash=False)
                    self._shared[root] = (obj, broadcast, current)
                    self._root[current.key] = root
                if current is not a:
                    a, changed = current, True
            out.append(a)
        return tuple(out) if changed else None

    def threads(self):
        """``{worker address: torch threads}`` and ``"*"`` for workers that join later (or the fixed number)."""
        if self._threads is not None:
            return self._threads
        from ._tasks import available_cores

        workers = self._workers()
        cores = self.client.run(available_cores)
        slots = {}
        for info in workers.values():
            slots[info["host"]] = slots.get(info["host"], 0) + info["nthreads"]
        out = {addr: max(1, cores.get(addr, 1) // max(slots[info["host"]], 1)) for addr, info in workers.items()}
        out["*"] = min(out.values()) if out else 1
        return out

    def map(self, fn, jobs: list, *, key: str):
        from distributed import as_completed

        jobs = list(jobs)
        futures = {self.client.submit(fn, *args, key=f"{key}-{i}-{self._run_id}", retries=self.retries,
                                      pure=False): i for i, args in enumerate(jobs)}
        resubmitted = [0] * len(jobs)
        try:
            stream = as_completed(list(futures))
            for fut in stream:
                i = futures[fut]
                try:
                    result = fut.result()
                except Exception as exc:
                    # a shared object lost with its workers cancels the tasks that need it: share it again and
                    # run them again (a few times at most); any other failure is the task's own
                    again = self._reshared(jobs[i]) if resubmitted[i] < MAX_RESHARES else None
                    if again is None:
                        raise TaskError(i, exc) from exc
                    resubmitted[i] += 1
                    jobs[i] = again
                    new = self.client.submit(fn, *again, key=f"{key}-{i}-{self._run_id}-r{resubmitted[i]}",
                                             retries=self.retries, pure=False)
                    futures[new] = i
                    stream.add(new)
                    continue
                fut.release()
                yield i, result
        finally:
            pending = [f for f in futures if not f.done()]
            if pending:
                self.client.cancel(pending)

    def run(self, fn, *args, key: str):
        fut = self.client.submit(fn, *args, key=f"{key}-{self._run_id}", retries=self.retries, pure=False)
        try:
            return fut.result()
        finally:
            fut.release()

    def describe(self) -> str:
        n = self.n_workers
        return f"Dask: {n} worker{'s' if n != 1 else ''} at {self.client.scheduler.address}"

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def _default_workers(n_tasks: int, voxels: int) -> int:
    """Workers of the default LocalCluster: one per core, no more than the tasks, and as many as the memory holds."""
    from ._tasks import available_cores

    cores = available_cores()
    n = max(1, min(cores, n_tasks))
    try:
        import psutil

        per_task = TASK_BYTES_BASE + TASK_BYTES_PER_VOXEL * voxels
        n = max(1, min(n, int(0.9 * psutil.virtual_memory().total // per_task)))
    except ImportError:  # pragma: no cover - psutil comes with distributed
        pass
    return n


def make_executor(client, *, workers: int | None, threads: int | None, retries: int, n_tasks: int,
                  voxels: int = 0):
    """The executor for ``build_template``'s ``client`` argument.

    ``"synchronous"``: ``SerialExecutor``; a ``distributed.Client``: used as it is (left open); a string: the
    address of a running scheduler; ``None``: a new ``LocalCluster`` of ``workers`` processes (default: sized to
    the machine), one task slot each, dashboard on a free port when bokeh is installed.
    """
    if workers is not None:
        _check_workers(workers, "a positive integer or None")
    if isinstance(client, str) and client == "synchronous":
        return SerialExecutor(threads)
    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - dask[distributed] is a declared dependency
        raise ImportError("build_template needs dask.distributed (pip install 'dask[distributed]'), or "
                          "client='synchronous'") from exc
    if isinstance(client, Client):
        if workers is not None:
            raise ValueError("workers: give either a client or a number of workers, not both")
        return DaskExecutor(client, retries=retries, threads=threads)
    if isinstance(client, str):
        if workers is not None:
            raise ValueError("workers: give either a scheduler address or a number of workers, not both")
        return DaskExecutor(Client(client), retries=retries, threads=threads, owns_client=True)
    if client is not None:
        raise TypeError(f"client: expected None, 'synchronous', a scheduler address or a distributed.Client, got "
                        f"{type(client).__name__}")
    n = workers if workers is not None else _default_workers(n_tasks, voxels)
    cluster = local_cluster(n)
    log.info("started a LocalCluster of %d workers", n)
    return DaskExecutor(Client(cluster), retries=retries, threads=threads, cluster=cluster, owns_client=True)


def _check_workers(workers, expected: str) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected {expected}, got {workers!r}")


def local_cluster(workers: int):
    """The ``distributed.LocalCluster`` that ``build_template`` starts when given no client: ``workers`` worker
    processes of one task slot each, which import ``WORKER_PRELOAD`` while the cluster starts (not in their first
    task), keep glibc's adaptive malloc thresholds (``WORKER_ENV_DROP``) and run without Dask's monitoring that costs
    CPU (``LOCAL_CLUSTER_CONFIG``). Pass it on (``Client(cluster)``) to
    keep one cluster over several runs; close it when done.

    Parameters
    ----------
    workers : int
        Worker processes (e.g. the cores, as ``build_template``'s default).
    """
    import dask
    from distributed import LocalCluster

    _check_workers(workers, "a positive integer")
    env = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}).items()
           if k not in WORKER_ENV_DROP}
    # A nanny writes its pre-spawn variables into the environment of the process that starts it (this one; Dask's
    # documented side effect), which every worker spawned later inherits: a cluster started here before would
    # hand its variables to these workers. The nannies read the configuration when they are made, and keep it
    # for the workers they restart. ":0": the scheduler's HTTP server (and the dashboard, with bokeh) on a free
    # port, never a fixed one.
    for name in WORKER_ENV_DROP:
        os.environ.pop(name, None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env, **LOCAL_CLUSTER_CONFIG}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                            preload=list(WORKER_PRELOAD))


def _has_bokeh() -> bool:
    """Whether Dask's dashboard can run here (it needs bokeh)."""
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None
