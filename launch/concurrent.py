"""Independent runs of a stage (selected-set pre-trainings, fine-tuning seeds and grid points) side by
side on a single-host CPU job: one worker process per core by default, each pinned to its share of
the cores (one core each when there are as many workers as cores).

A CPU run leaves cores idle (Python dispatch, the input pipeline, checkpoint writes, the many small
ops XLA runs on one thread), so runs pinned one per core finish sooner than the same runs one after
another on all cores, once a run is long enough to pay for its worker's start (imports, its own
compiles: the sequential loop shares one compile between runs with the same programs). Each run is
a pure function of its config and its work dir, and writes only its own directory.

Side by side gives the same files as one after another, bit for bit. That needs care: XLA's CPU
client sizes its thread pool from the cores the process may use when the backend starts, and an op
split over 2 threads sums in another order than on 1 (measured: the demo's Pt model ends
at loss 1.178 with a one-thread pool and 1.195 with two). A worker therefore starts its backend while
it may still use every core, so its pool matches the parent's, and only then pins all its threads to
its core. The pool's threads then take turns on that core (at the demo's Inception row the step took
175 ms against 185-192 ms with a one-thread pool, beside another run; 154 ms alone on 2 cores).
Processes, not threads: orbax's checkpointing is not safe with two runs saving at once in one process.

Once every run has started, a core whose worker has nothing left to run is lent to the runs still
going: their threads are re-pinned over the idle cores too. The pool's size is fixed at its start,
so the floats do not change; the last run of an unequal pair (the demo's entire-source row beside
the smaller Pt model) then finishes on every core instead of one.

Accelerator and multi-host jobs keep their runs sequential: there every run already uses every
device, and a run is a collective over all processes.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def resolve_workers(requested: int, num_runs: int) -> int:
    """Runs at once for `num_runs` runs: `requested` > 0 caps it; 0 = one per usable core on a
    single-host CPU job (1 elsewhere)."""
    import jax

    if requested < 0:
        raise ValueError(f"concurrent_runs must be >= 0, got {requested}")
    if requested == 0:
        if jax.default_backend() != "cpu" or jax.process_count() > 1:
            return 1
        requested = len(os.sched_getaffinity(0))
    return max(1, min(requested, num_runs))


_events: Any = None  # a worker's queue to the parent: ("start" | "end", pid, its cores)
_own_cores: tuple[int, ...] = ()


def core_shares(usable: Sequence[int], workers: int) -> list[tuple[int, ...]]:
    """Disjoint shares of `usable` cores, one per worker, as even as they go (2 workers on 8 cores: 4
    each; as many workers as cores: one each). More workers than cores share cores round robin."""
    if workers >= len(usable):
        return [(usable[i % len(usable)],) for i in range(workers)]
    return [tuple(usable[i::workers]) for i in range(workers)]


def _pin(pid: int, cores: set[int]) -> None:
    """Pins every thread of process `pid` to `cores`; threads it starts later inherit the pin."""
    try:
        thread_ids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:  # the process ended meanwhile
        return
    for thread_id in thread_ids:
        try:
            os.sched_setaffinity(int(thread_id), cores)
        except ProcessLookupError:  # the thread ended meanwhile
            pass


def _init_worker(cores: Any, events: Any, cache_dir: str | None) -> None:
    """Starts the worker's JAX backend with the parent's cores (so XLA's thread pool, and with it how
    every op splits its work, is the parent's), then pins every thread of the worker to the next free
    share of the cores; threads started later inherit the pin. Shares the parent's persistent
    compilation cache."""
    import jax

    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.devices()
    global _events, _own_cores
    _events, _own_cores = events, tuple(cores.get())
    _pin(os.getpid(), set(_own_cores))


def _reported_call(fn: Callable[..., T], args: tuple) -> T:
    """fn(*args) in a worker, telling the parent when it starts and ends (for `_CoreLender`)."""
    _events.put(("start", os.getpid(), _own_cores))
    try:
        return fn(*args)
    finally:
        _events.put(("end", os.getpid(), _own_cores))


class _CoreLender(threading.Thread):
    """In the parent: once all `num_runs` runs have started, spreads the cores of idle workers over the
    workers still running (each keeps its own cores and gets a share of the idle ones)."""

    def __init__(self, events: Any, num_runs: int, usable: list[int]) -> None:
        super().__init__(daemon=True)
        self.events, self.num_runs, self.usable = events, num_runs, usable

    def run(self) -> None:
        running: dict[int, tuple[int, ...]] = {}  # pid -> its own cores
        started = 0
        while (event := self.events.get()) is not None:
            kind, pid, own = event
            if kind == "start":
                running[pid] = own
                started += 1
            else:
                running.pop(pid, None)
            if started < self.num_runs or not running:
                continue
            busy = {core for own in running.values() for core in own}
            idle = [core for core in self.usable if core not in busy]
            pids = sorted(running)
            for i, pid in enumerate(pids):
                _pin(pid, {*running[pid], *idle[i :: len(pids)]})


def run_all(fn: Callable[..., T], calls: Sequence[tuple], workers: int, preload: Sequence[str] = ()) -> list[T]:
    """[fn(*args) for args in calls], `workers` at a time in worker processes pinned to disjoint shares
    of the cores (`core_shares`); results in the order of `calls`. `fn` must be a module-level function
    and its arguments picklable.

    Workers fork from a server process that has imported `fn`'s module and `preload` (JAX, Flax and
    the trainer take seconds to import; a fork takes milliseconds) and has never started a JAX
    backend, whose threads would not survive a fork. Once every run has started, the cores of idle
    workers go to the runs still going (`_CoreLender`). A failed run raises here once the runs already
    started have finished. SIGTERM (preemption) is passed on to every worker: each run saves a
    checkpoint at its next step and stops, as it does on its own."""
    if workers <= 1 or len(calls) <= 1:
        return [fn(*args) for args in calls]
    import jax

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([fn.__module__, *preload])
    cores, events = context.Queue(), context.Queue()
    usable = sorted(os.sched_getaffinity(0))
    for share in core_shares(usable, workers):
        cores.put(share)
    cache_dir: str | None = jax.config.jax_compilation_cache_dir  # type: ignore[attr-defined]  # a dynamic option
    initargs: tuple[Any, Any, str | None] = (cores, events, cache_dir)
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=initargs
    )

    def forward(signum: int, frame: Any) -> None:
        for process in list(pool._processes.values()):  # the executor has no public handle on its workers
            if process.pid is not None:
                os.kill(process.pid, signum)

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, forward)
    lender = _CoreLender(events, len(calls), usable)
    lender.start()
    try:
        with pool:
            futures = [pool.submit(_reported_call, fn, args) for args in calls]
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            for future in futures:
                future.cancel()  # not started: after a failure the sequential loop would not start them
            concurrent.futures.wait(futures)
            return [future.result() for future in futures]
    finally:
        events.put(None)
        lender.join()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
