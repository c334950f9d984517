"""Where candidate fits run: in this process, in a local process pool, or on a Dask cluster.

Only what a fit needs travels: the law (its formula text, rebuilt through the parser on the worker, or
with the fast engine the parsed law itself, so the worker compiles it without parsing again), its
constant specs and the fit options. The task's fit/validation arrays are sent to each worker
once, when the pool starts (local) or scattered once per campaign (dask). Results come back in
submission order, so the campaign writes them to the store in slot order and the outcome does not
depend on where a fit ran. Workers never touch the store: the campaign process is its only writer.
Waiting for results stops at the campaign's deadline (OutOfTime), and a closing executor can kill
its workers at once (Ctrl-C), instead of waiting for the fits they run; local workers leave Ctrl-C to
the campaign process.
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import numpy as np

from discovery.laws.fit import RECIPES, FitOptions, GroupFit, LawFit, fit_law, recipe_options
from discovery.laws.law import Law, parse_law
from discovery.laws.shape import shape_of
from discovery.search.selection import fold_nmse
from discovery.tasks.dataset import Dataset
from discovery.tasks.values import ConstantSpec, ShapePriors
from evaluators.metrics import score_blocks
from evaluators.protocol import Fold


@dataclass(frozen=True)
class FitData:
    """What every fit of a campaign needs: the fit part (to fit) and the validation slice (to score)."""

    symbols: list[str]
    targets: list[str]
    fit_part: Dataset
    validation: Dataset
    priors: ShapePriors = ShapePriors()  # the task's shape priors, checked on every fitted law
    validation_blocks: np.ndarray | None = None  # validation scored block by block (see evaluators.protocol)
    far_field: bool = False  # shape priors also checked far beyond the data (see discovery.laws.shape)
    folds: tuple[Fold, ...] = ()  # further forward folds, each fitted afresh (see discovery.search.selection)


@dataclass(frozen=True)
class FitJob:
    formula: str
    specs: dict[str, ConstantSpec] | None
    opts: FitOptions
    total_time_limit: float | None
    recipes: tuple[str, ...] = ("linear",)  # tried in turn; the best on validation is kept
    law: Law | None = None  # the parsed law (fast engine), pickled without its compiled functions


@dataclass
class FitOutcome:
    constants: dict  # {"group|target_index": {name: value}}
    ok: bool
    failures: list[str]
    val_r2: float
    val_nmse: float
    val_nmae: float
    seconds: float
    recipe: str = "linear"
    shape: str | None = None  # which shape prior the fitted law breaks, if any (see discovery.laws.shape)
    clock: int = 0  # group fits a time limit cut short (then the result depends on machine speed)
    fold_nmse: list[float] | None = None  # NMSE on each further forward fold, with the chosen recipe


class OutOfTime(Exception):
    """The campaign's deadline passed while waiting for fits; the fits not returned yet are dropped."""


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise OutOfTime
    return left


def constants_json(fit: LawFit) -> dict:
    return {f"{g}|{t}": {c.name: float(v) for c, v in zip(fit.law.constants, gf.theta, strict=True)}
            for (g, t), gf in fit.fits.items()}


def stored_specs(raw: str | None) -> dict[str, ConstantSpec] | None:
    """A candidate's constant specs (bounds, initial values) from its `constant_specs` column."""
    if not raw:
        return None
    return {k: ConstantSpec.model_validate(v) for k, v in json.loads(raw).items()}


def stored_fit(fitted: str | None, law: Law, targets: list[str]) -> LawFit:
    """The constants a candidate was validated with (its `fitted` column, fitted on the fit part), as a LawFit
    a refit on more rows starts from (the inverse of constants_json)."""
    fits = {}
    for key, consts in json.loads(fitted or "{}").items():
        group, t = key.rsplit("|", 1)
        fits[(group, int(t))] = GroupFit(law.rename_constants(consts), "ok")
    return LawFit(law, targets, fits)


def run_fit(data: FitData, job: FitJob) -> FitOutcome:
    """Fit one law on the fit part and score it on validation (pure: same input, same output). Never raises:
    whatever SymPy or NumPy raise on an odd law becomes a failed fit with the reason.

    Each recipe (see fit.RECIPES) is tried; a fit that keeps the task's shape priors beats one that breaks
    them, then the lowest validation NMSE wins. Log recipes are skipped when a target is not positive.
    """
    t0 = time.perf_counter()
    try:
        return _run_fit(data, job)
    except Exception as exc:  # noqa: BLE001 - one odd law must not stop a campaign
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        val = score_blocks(data.validation.Y, np.full_like(data.validation.Y, np.nan), data.validation_blocks)
        return FitOutcome({}, False, [f"fit failed: {reason}"], val.r2, val.nmse, val.nmae,
                          time.perf_counter() - t0)


def _run_fit(data: FitData, job: FitJob) -> FitOutcome:
    # the campaign parsed this text already, within the time bound
    law = job.law if job.law is not None else parse_law(job.formula, data.symbols, check_typos=False)
    positive = bool((data.fit_part.Y > 0).all())
    best: FitOutcome | None = None
    seconds = 0.0
    clock = 0
    seen = Dataset.concat(data.fit_part, data.validation) if data.priors else None  # where shapes are checked
    for recipe in job.recipes:
        if RECIPES[recipe].get("log_residuals") and not positive:
            continue
        fit = fit_law(law, data.fit_part, data.targets, job.specs, recipe_options(job.opts, recipe),
                      total_time_limit=job.total_time_limit)
        seconds += fit.seconds
        clock += fit.stopped_by_clock
        val = score_blocks(data.validation.Y, fit.predict(data.validation), data.validation_blocks)
        shape = shape_of(fit, seen, data.priors, data.far_field) if seen is not None else None
        if best is None or (fit.ok, shape is None, -val.nmse) > (best.ok, best.shape is None, -best.val_nmse):
            best = FitOutcome(constants_json(fit), fit.ok, fit.failures, val.r2, val.nmse, val.nmae, 0.0, recipe,
                              shape)
    assert best is not None, "at least one recipe applies (linear always does)"
    if data.folds and best.ok:
        t0 = time.perf_counter()
        best.fold_nmse = fold_nmse(law, job.specs, best.recipe, list(data.folds), data.targets, job.opts,
                                   job.total_time_limit)
        seconds += time.perf_counter() - t0
    best.seconds = seconds
    best.clock = clock
    return best


class SerialExecutor:
    """Fits in the campaign's own process, one after another."""

    name = "serial"

    def __init__(self, data: FitData):
        self.data = data

    def map(self, jobs: Iterable[FitJob], deadline: float | None = None) -> Iterator[FitOutcome]:
        for job in jobs:
            left = _remaining(deadline)
            if left is not None:  # the fit stops at the deadline; its result is then dropped, not written
                limit = left if job.total_time_limit is None else min(job.total_time_limit, left)
                outcome = run_fit(self.data, replace(job, total_time_limit=limit))
                _remaining(deadline)
                yield outcome
            else:
                yield run_fit(self.data, job)

    def close(self, kill: bool = False) -> None:
        pass


_WORKER_DATA: FitData | None = None


def watch_parent(parent: int) -> None:
    """Pool workers end when their parent dies (a kill -9 must not leave orphans behind)."""
    def loop() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=loop, daemon=True, name="kepler-parent-watch").start()


def ignore_interrupts() -> None:
    """In a worker process: Ctrl-C (which the terminal sends to every process of the group) is the
    campaign process's to answer; it stops the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _init_worker(data: FitData, parent: int) -> None:
    global _WORKER_DATA
    _WORKER_DATA = data
    ignore_interrupts()
    watch_parent(parent)


def _noop(_: int) -> None:
    return None


def _run_in_worker(job: FitJob) -> FitOutcome:
    assert _WORKER_DATA is not None
    return run_fit(_WORKER_DATA, job)


class LocalPoolExecutor:
    """A process pool on this machine; the data is shipped once per worker at start-up."""

    name = "local"

    def __init__(self, data: FitData, workers: int | None = None):
        self.workers = workers or os.cpu_count() or 1
        # fork, so a script or notebook without a `__main__` guard works (spawn would re-run it). Workers are
        # all started here, before the campaign starts any thread (LLM requests), so no lock is forked held.
        self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("fork"),
                                        initializer=_init_worker, initargs=(data, os.getpid()))
        for _ in self.pool.map(_noop, range(self.workers)):
            pass

    def map(self, jobs: Iterable[FitJob], deadline: float | None = None) -> Iterator[FitOutcome]:
        futures = [self.pool.submit(_run_in_worker, job) for job in jobs]
        return self._results(futures, deadline)

    @staticmethod
    def _results(futures: list, deadline: float | None) -> Iterator[FitOutcome]:
        try:
            for fut in futures:
                try:
                    yield fut.result(timeout=_remaining(deadline))
                except TimeoutError:  # concurrent.futures' TimeoutError is the builtin one
                    raise OutOfTime from None
        finally:
            for fut in futures:
                fut.cancel()

    def close(self, kill: bool = False) -> None:
        if kill:
            stop_pool(self.pool)
        else:
            self.pool.shutdown(wait=True, cancel_futures=True)


def stop_pool(pool: ProcessPoolExecutor, grace: float = 1.0) -> None:
    """Stop a process pool now: queued work is cancelled and its processes are terminated (killed if they
    linger), instead of waiting for what they run."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # before shutdown forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    end = time.monotonic() + grace
    for proc in processes:
        proc.join(timeout=max(0.0, end - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=1.0)


BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def single_blas_thread_env():
    """While inside, processes started from here get one BLAS thread (unless the user chose a number), as
    Dask workers do: fits are many small matrix operations, which multi-threaded OpenBLAS slows down
    (10x and more on a busy 2-core machine); one process per core is the parallelism instead."""
    added = [v for v in BLAS_ENV if v not in os.environ]
    os.environ.update({v: "1" for v in added})
    try:
        yield
    finally:
        for v in added:
            os.environ.pop(v, None)


DASK_INSTALL = 'pip install -e ".[dask]"'


class DaskUnavailable(ValueError):
    """`--executor dask` without dask.distributed installed (a ValueError: the CLI prints it as one line)."""


def require_dask():
    """The `distributed` module, or one clear error that says how to install it."""
    try:
        import distributed
    except ImportError:
        raise DaskUnavailable(f"--executor dask needs dask.distributed (not installed): {DASK_INSTALL}") \
            from None
    return distributed


# Settings of the LocalCluster Kepler starts (passed on to its worker processes by the nannies):
LOCAL_CLUSTER_CONFIG = {
    # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536 (memory handed back to the OS eagerly),
    # which turns off glibc's adaptive mmap threshold: every NumPy temporary of a fit is then mapped and
    # unmapped, and fits run ~1.7x slower. (Workers keep Dask's one BLAS thread each.)
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    # the statistical profiler samples the running fit's stack every 10 ms: useful for dashboards, a cost here
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "200ms",
    "distributed.admin.system-monitor.interval": "2s",
    # a worker is sent its next task only when it is free: the guided tail of single fits then goes to
    # whichever worker finishes first, instead of waiting in a busy worker's queue (Dask's default is 1.1)
    "distributed.scheduler.worker-saturation": 1.0,
}


def dask_client(workers: int | None = None, scheduler: str | None = None):
    """A Dask client and the LocalCluster it owns (None when it connects to an existing scheduler).

    With `scheduler` (tcp://host:8786): connect to that cluster. Otherwise start a LocalCluster of
    `workers` processes (default one per core), one thread each: fits are CPU-bound Python/NumPy.
    """
    distributed = require_dask()
    if scheduler:
        try:
            return distributed.Client(scheduler, timeout="30s"), None
        except OSError as exc:
            raise ValueError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    import dask

    with dask.config.set(LOCAL_CLUSTER_CONFIG):
        cluster = distributed.LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                                           processes=True, dashboard_address="127.0.0.1:0",
                                           silence_logs=logging.CRITICAL)
    return distributed.Client(cluster), cluster


def close_dask(client, cluster) -> None:
    try:
        client.close()
    finally:
        if cluster is not None:
            cluster.close()


def run_fits(jobs: list[FitJob], data: FitData) -> list[FitOutcome]:
    """Several fits in one Dask task (short fits: one scheduling round trip for the lot)."""
    return [run_fit(data, job) for job in jobs]


class DaskExecutor:
    """Fits on a Dask cluster: an existing one (`scheduler`) or a LocalCluster started and stopped here.

    The campaign's FitData is scattered to every worker once (a worker that joins later fetches it
    from a peer); a task carries only FitJobs (formula text, specs, options). A Dask task costs a few
    ms of CPU (client, scheduler and worker), which short fits cannot afford one each, so once fit
    times are known a generation goes out in guided chunks: large ones first, shrinking to single fits
    at the end, so workers still finish together (see `_chunks`). Finished results are fetched a batch
    at a time, in submission order. A worker that dies takes no result with it: the scheduler reruns
    its tasks elsewhere, and if the data itself was lost with the last worker holding it, it is
    scattered again and the unfinished fits resubmitted.
    """

    name = "dask"
    retries = 2  # a task that raised (e.g. out of memory on a busy worker) is retried this often
    rescatters = 3  # data lost with every worker that held it: scatter again at most this often
    # Measured with benchmarks/scaleout.py on a 2-core machine: a Dask task costs ~2.5-4 ms of CPU, so vocab's
    # ~38 ms fits, one per task, ran 17-21% slower than on the local pool; in guided chunks of at most
    # ~0.25 s of fitting (and with the releases below), 5-8% slower.
    chunk_seconds = 0.25  # the largest chunk holds about this much fitting
    guided_factor = 1.5  # a chunk takes 1/(factor x workers) of the fits not yet handed out

    def __init__(self, data: FitData, workers: int | None = None, scheduler: str | None = None, client=None):
        self._distributed = require_dask()
        self.data = data
        if client is not None:
            self.client, self._cluster, self._owns_client = client, None, False
        else:
            (self.client, self._cluster), self._owns_client = dask_client(workers, scheduler), True
        self._tag = uuid.uuid4().hex[:8]
        self._count = 0
        self._data_future = None
        self._futures: list = []
        self._fit_seconds = 0.0
        self._fits = 0
        self._scatter()

    def _scatter(self) -> None:
        if self._data_future is not None:
            self._data_future.release()
        self._data_future = self.client.scatter(self.data, broadcast=True, hash=False)

    def _submit(self, chunks: list[list[FitJob]]) -> list:
        """All of a generation's tasks in one message to the scheduler (one graph update, not one per task)."""
        keys = [f"kepler-fit-{self._tag}-{self._count + i + 1}" for i in range(len(chunks))]
        self._count += len(chunks)
        return self.client.map(run_fits, chunks, key=keys, pure=False, retries=self.retries,
                               data=self._data_future) if chunks else []

    def _chunks(self, jobs: list[FitJob]) -> list[list[FitJob]]:
        """Guided self-scheduling (Polychronopoulos & Kuck, 1987): each chunk takes a share of the fits
        left, capped at `chunk_seconds` of fitting at the mean fit time seen so far. Chunks run in
        submission order, so the last fits go out one by one and fill whichever worker is free first.
        One fit per task until fit times are known, and whenever fits are long (one task each costs
        them nothing)."""
        cap = max(1, int(self.chunk_seconds / max(self._fit_seconds / self._fits, 1e-4))) if self._fits else 1
        workers = max(1, sum(self.client.nthreads().values())) if cap > 1 else 1
        chunks: list[list[FitJob]] = []
        start = 0
        while start < len(jobs):
            size = max(1, min(cap, math.ceil((len(jobs) - start) / (self.guided_factor * workers))))
            chunks.append(jobs[start:start + size])
            start += size
        return chunks

    def map(self, jobs: Iterable[FitJob], deadline: float | None = None) -> Iterator[FitOutcome]:
        chunks = self._chunks(list(jobs))
        futures = self._submit(chunks)
        # The previous generation's futures are let go only now, after the new graph went out. Released as
        # each result arrives, their message would hold back the next graph by the client's batching interval
        # (10 ms), on the critical path between generations (measured: vocab +10% -> +6% against the pool).
        self._futures = futures
        return self._results(chunks, futures, deadline)

    def _results(self, chunks: list[list[FitJob]], futures: list,
                 deadline: float | None = None) -> Iterator[FitOutcome]:
        """Outcomes in submission order: wait for the next task, then fetch it together with every later
        one already finished (one gather, not one round trip per task)."""
        lost = (self._distributed.CancelledError, self._distributed.KilledWorker)
        rescattered = 0
        i = 0
        while i < len(chunks):
            try:
                try:
                    futures[i].exception(timeout=_remaining(deadline))  # waits without fetching the result
                except TimeoutError:
                    raise OutOfTime from None
                j = i + 1
                while j < len(futures) and futures[j].status == "finished":
                    j += 1
                batch = self.client.gather(futures[i:j])
            except lost:
                if self._data_future.status == "finished" or rescattered >= self.rescatters:
                    raise
                # the scattered data died with the workers that held it: send it again, resubmit what is left
                rescattered += 1
                for f in futures[i:]:
                    f.cancel()
                self.client.wait_for_workers(1, timeout=120)  # a nanny restarts a killed worker
                self._scatter()
                futures[i:] = self._submit(chunks[i:])
                continue
            i = j
            for outcome in (o for outcomes in batch for o in outcomes):
                self._fit_seconds += outcome.seconds
                self._fits += 1
                yield outcome

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> process id (tests kill one of them)."""
        return self.client.run(os.getpid)

    def close(self, kill: bool = False) -> None:
        for f in self._futures:
            f.cancel()
        self._futures = []
        try:
            if self._data_future is not None:
                self._data_future.release()
                self._data_future = None
        finally:
            if self._owns_client:
                close_dask(self.client, self._cluster)


def make_executor(kind: str, data: FitData, workers: int | None = None, scheduler: str | None = None):
    if kind == "serial" or (kind == "local" and (workers or os.cpu_count() or 1) == 1):
        return SerialExecutor(data)
    if kind == "local":
        return LocalPoolExecutor(data, workers)
    if kind == "dask":
        return DaskExecutor(data, workers, scheduler)
    raise ValueError(f"unknown executor {kind!r}; use serial, local or dask")
