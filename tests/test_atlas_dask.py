"""The atlas on a real Dask cluster (2 worker processes started and closed here, no fixed port): the same template as
the synchronous executor, and the same again when a worker is killed in the middle of a round."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from registration.atlas import build_template
from registration.atlas.population import mni152_slice, synthetic_population

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def population():
    t1, _ = mni152_slice(6)
    return synthetic_population(t1, n=4, seed=4).subjects


@pytest.fixture(scope="module")
def reference(population):
    return build_template(population, iterations=1, client="synchronous", threads=1)


def _same(a, b):
    np.testing.assert_array_equal(a.template.data, b.template.data)
    np.testing.assert_array_equal(a.momenta, b.momenta)
    assert a.names == b.names


def test_dask_gives_the_synchronous_template(client, population, reference):
    """Registrations are deterministic (same inputs, same threads) and every reduction reads the subjects in their
    order, so which worker ran which task does not change a single bit."""
    events = []
    res = build_template(population, iterations=1, client=client, callback=events.append)
    _same(res, reference)
    start = events[0]
    assert start["event"] == "start" and start["workers"].startswith("Dask: 2 workers")
    assert sum(e["event"] == "task" and e["stage"].startswith("round") for e in events) == 8
    assert {s.host for s in res.subjects} and res.workers.startswith("Dask")


def test_a_killed_worker_costs_only_its_task(client, population, reference):
    """Kill a worker process while it runs a registration of the first round: the scheduler reruns the lost task
    elsewhere (its nanny restarts the worker) and the template is bit for bit the one without the fault."""
    out = {}

    def run():
        out["result"] = build_template(population, iterations=1, client=client)

    thread = threading.Thread(target=run)
    thread.start()
    killed, deadline = None, time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        for address, keys in client.processing().items():
            if any(str(k).startswith("atlas-round-0") for k in keys):
                pid = client.run(os.getpid, workers=[address])[address]
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
        time.sleep(0.02)
    thread.join(timeout=300)
    assert killed is not None, "no round-0 task was seen running: nothing was killed"
    assert killed not in client.run(os.getpid).values()  # the process is gone (its nanny started a new one)
    _same(out["result"], reference)


def _slow_sum(x, shared, delay):
    time.sleep(delay)
    return float(np.sum(shared)) + x


def test_a_shared_object_lost_with_its_worker_is_shared_again(client):
    """The only worker holding a shared object dies while tasks that need it run: the executor shares the object
    again and the tasks run again with it (the scheduler alone would cancel them: their input is gone)."""
    import sys

    import cloudpickle

    from registration.atlas._executor import DaskExecutor

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    executor = DaskExecutor(client, retries=0)
    handle = executor.share(np.arange(10.0), broadcast=False)  # on one worker only
    (holder,) = client.who_has([handle])[handle.key]
    out = {}
    thread = threading.Thread(target=lambda: out.update(executor.map(_slow_sum, [(i, handle, 1.0) for i in range(4)],
                                                                     key="lost")))
    thread.start()
    deadline = time.monotonic() + 60
    while not client.processing().get(holder) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(client.run(os.getpid, workers=[holder])[holder], signal.SIGKILL)
    thread.join(timeout=120)
    assert out == {i: 45.0 + i for i in range(4)}
    executor.release(handle)


def test_dask_gives_the_synchronous_shape_template(client):
    """Shapes on the same cluster: 3 curves (the first one is the initial template), one update, the synchronous
    template and momenta."""
    import torch

    from registration.shapes import Shape

    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    cells = torch.tensor(np.stack([np.arange(32), (np.arange(32) + 1) % 32], 1))
    curves = [Shape(torch.tensor(np.stack([(20 + a) * np.cos(t), (20 - a) * np.sin(t) + a], 1)), cells)
              for a in (0.0, 3.0, -2.0)]
    fast = {"sigma": 10.0, "data_sigma": 3.0, "levels": [1.0], "max_iter": 20, "n_steps": 5}
    ref = build_template(curves, iterations=1, client="synchronous", threads=1, register_options=fast)
    res = build_template(curves, iterations=1, client=client, threads=1, register_options=fast)
    np.testing.assert_allclose(res.template.vertices.numpy(), ref.template.vertices.numpy(), atol=1e-9)
    np.testing.assert_allclose(res.momenta, ref.momenta, atol=1e-5)
    assert res.names == ref.names


def _mapped_bytes_of_an_array(inside_task: bool) -> int | None:
    """How much of a live 4 MiB array glibc placed in its own mapping (``mallinfo2().hblkhd`` grows by it), in a
    task's context or not; None without glibc's ``mallinfo2``."""
    import contextlib
    import ctypes

    from registration.atlas._tasks import _task_resources

    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return None
    mallinfo2.restype = Info
    with (_task_resources(None) if inside_task else contextlib.nullcontext()):
        before = mallinfo2().hblkhd
        a = np.ones(1 << 19)
        grown = mallinfo2().hblkhd - before
        del a
    return grown


def test_worker_tasks_reuse_memory_under_dasks_malloc_settings():
    """Dask starts workers with MALLOC_TRIM_THRESHOLD_ set, which fixes glibc's mmap threshold at 128 KiB: each large
    array is then mapped afresh, and faulted in again (a registration ran at half speed). Inside a task arrays up to
    32 MiB come from the heap (a fresh worker: a task's settings stay with its process)."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as \
            cluster, distributed.Client(cluster) as fresh:
        env = fresh.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        if not all(env.values()):
            pytest.skip("this Dask does not set MALLOC_TRIM_THRESHOLD_ on its workers")
        outside = fresh.submit(_mapped_bytes_of_an_array, False, pure=False).result()
        inside = fresh.submit(_mapped_bytes_of_an_array, True, pure=False).result()
    if outside is None:
        pytest.skip("no glibc mallinfo2 here")
    assert outside >= 4 << 20  # mapped on its own
    assert inside == 0


def _imported(names):
    import sys

    return sorted(n for n in names if n in sys.modules)


def _environ(names):
    return {n: os.environ.get(n) for n in names}


def _config(keys):
    return {k: dask.config.get(k) for k in keys}


def _profiling(dask_worker):
    return dask_worker.periodic_callbacks.get("profile") is not None


def test_default_cluster_workers_import_the_package_when_they_start():
    """The default LocalCluster's workers import ``WORKER_PRELOAD`` (torch, the registrations, the readers) while the
    cluster starts, so that the first round's tasks do not pay it (about 2 s per fresh worker); a plain worker has
    not imported the readers (running this check imports the package there, with this test module). Its workers
    run with ``LOCAL_CLUSTER_CONFIG`` (no statistical profiler), this process's configuration untouched."""
    from registration.atlas import WORKER_PRELOAD
    from registration.atlas._executor import LOCAL_CLUSTER_CONFIG, make_executor

    profiling_here = dask.config.get("distributed.worker.profile.enabled")
    executor = make_executor(None, workers=1, threads=1, retries=0, n_tasks=1)
    try:
        seen = executor.client.run(_imported, list(WORKER_PRELOAD) + ["torch"])
        env = executor.client.run(_environ, ["MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS"])
        config = executor.client.run(_config, list(LOCAL_CLUSTER_CONFIG))
        profiling = executor.client.run(_profiling)
    finally:
        executor.close()
    assert list(seen.values()) == [sorted(list(WORKER_PRELOAD) + ["torch"])]
    # glibc's adaptive malloc thresholds (Dask's trim threshold dropped), Dask's other variables kept
    assert list(env.values()) == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}]
    assert dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_TRIM_THRESHOLD_"] == 65536  # untouched
    assert list(config.values()) == [LOCAL_CLUSTER_CONFIG] and list(profiling.values()) == [False]
    assert dask.config.get("distributed.worker.profile.enabled") == profiling_here  # untouched here
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as \
            cluster, distributed.Client(cluster) as plain:
        assert list(plain.run(_imported, ["nibabel", "scipy.ndimage"]).values()) == [[]]
        assert list(plain.run(_profiling).values()) == [bool(profiling_here)]


@pytest.mark.parametrize("workers", [0, -1, True, 2.0, "2"])
def test_a_bad_number_of_workers_is_an_error_naming_it(workers):
    """``local_cluster`` and the default cluster of ``build_template`` refuse a worker count that is not a positive
    integer before starting anything."""
    from registration.atlas import local_cluster
    from registration.atlas._executor import make_executor

    with pytest.raises(ValueError, match=r"workers: expected a positive integer, got"):
        local_cluster(workers)
    with pytest.raises(ValueError, match=r"workers: expected a positive integer or None, got"):
        make_executor(None, workers=workers, threads=1, retries=0, n_tasks=1)
