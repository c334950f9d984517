"""Bootstrap uncertainty for a fitted law: intervals for constants and bands for predictions.

Rows are resampled with replacement within each group (a seeded numpy Generator per resample, so
the result does not depend on how resamples are spread over processes or which solver refits them),
and every resample is refit *from the point estimate*. By default all resamples of a group are refit
together (`batch_fit.fit_weighted`: a resample is the group's rows with integer weights, and one
vectorised Levenberg-Marquardt step moves all of them at once); a resample it does not converge within
`max_iter` steps is refit alone by `fit_group` (the point estimate as the only start, one refinement),
which is also the reference method (`method="refit"`) the batch is checked against in
benchmarks/bootstrap_speed.py. Rows that the fit settings drop (`drop_highest_targets`) are dropped
once from the original data, before resampling, as in the Chinchilla replication.

Two bands are given for any rows: the *law band* (percentiles of the law's prediction over the
resampled constants: uncertainty of the fitted curve) and the *prediction band* (each resample's
prediction plus a residual drawn from the point fit's train residuals: where a new observation
should fall). Coverage is the share of observed targets inside a band.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import numpy as np

from discovery.laws.batch_fit import fit_weighted
from discovery.laws.fit import FitOptions, _specs_for, fit_group
from discovery.laws.law import Law, parse_law
from discovery.tasks.dataset import Dataset
from discovery.tasks.values import ConstantSpec

Key = tuple[str, int]
METHODS = ("batch", "refit")
# work under which starting processes costs more than it saves: resamples x rows for refits one by one,
# resamples x rows x constants for the batch (its steps cost in proportion to the Jacobian's size)
SERIAL_BELOW = {"refit": 200_000, "batch": 10_000_000}
_BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class BootstrapOptions:
    n_resamples: int = 1000
    seed: int = 0
    level: float = 0.95
    n_jobs: int | None = None  # processes; None: one per core for large jobs, else 1
    max_nfev: int = 200  # per least_squares refit (the reference method, and the batch's fallbacks)
    method: str = "batch"  # batch: all resamples of a group in one vectorised solver; refit: one at a time
    max_iter: int = 200  # batched steps per resample; one that has not converged by then is refit on its own
    batch_tol: float = 1e-12  # ftol = xtol = gtol of the batched solver (see benchmarks/bootstrap_speed.py)


@dataclass
class Bootstrap:
    """Constants of every resample, per (group, target): samples[key] has shape (B, k); NaN rows failed."""

    constant_names: list[str]
    point: dict[Key, np.ndarray]
    samples: dict[Key, np.ndarray]
    options: BootstrapOptions
    log_residuals: bool
    residuals: dict[Key, np.ndarray]  # point fit's train residuals (log scale if log_residuals)
    seconds: float
    fallbacks: dict[Key, int] = field(default_factory=dict)  # resamples the batch did not converge, refit alone

    @property
    def alpha(self) -> float:
        return (1.0 - self.options.level) / 2.0

    def n_ok(self, key: Key) -> int:
        return int(np.isfinite(self.samples[key]).all(axis=1).sum())

    def intervals(self) -> dict[Key, np.ndarray]:
        """Percentile interval per constant: {key: (k, 2) array of [low, high]} (NaN if no resample succeeded)."""
        q = [100 * self.alpha, 100 * (1 - self.alpha)]
        out = {}
        for key, s in self.samples.items():
            ok = s[np.isfinite(s).all(axis=1)]
            out[key] = np.percentile(ok, q, axis=0).T if len(ok) else np.full((s.shape[1], 2), np.nan)
        return out

    def draws(self, law: Law, X: np.ndarray, key: Key, noise_seed: int | None = None) -> np.ndarray:
        """(B_ok, n) predictions at X for one group/target; with `noise_seed`, plus a resampled residual."""
        s = self.samples[key]
        s = s[np.isfinite(s).all(axis=1)]
        if len(s) == 0 or len(X) == 0:
            return np.full((0, len(X)), np.nan)
        pred = np.array(law.predict(X, s), dtype=float)
        if noise_seed is None:
            return pred
        r = self.residuals.get(key, np.zeros(1))
        r = r[np.isfinite(r)] if np.isfinite(r).any() else np.zeros(1)
        e = np.random.default_rng(noise_seed).choice(r, size=pred.shape)
        return pred * np.exp(e) if self.log_residuals else pred + e

    def band(self, law: Law, data: Dataset, noise: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Low and high band edges (n, n_targets) for the rows of `data`; NaN where a group has no resamples."""
        n_targets = max(t for _, t in self.samples) + 1
        lo = np.full((len(data), n_targets), np.nan)
        hi = lo.copy()
        q = [100 * self.alpha, 100 * (1 - self.alpha)]
        for i, key in enumerate(sorted(self.samples)):
            g, t = key
            mask = data.groups == g
            if not mask.any():
                continue
            d = self.draws(law, data.X[mask], key, noise_seed=self.options.seed + 7919 * (i + 1) if noise else None)
            d = np.where(np.isfinite(d), d, np.nan)
            if len(d):
                lo[mask, t], hi[mask, t] = np.nanpercentile(d, q, axis=0)
        return lo, hi


def coverage(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Share of observed targets inside [lo, hi]; cells without a band count as not covered."""
    y = np.asarray(y, dtype=float)
    inside = (y >= lo) & (y <= hi)
    return float(inside.mean()) if inside.size else math.nan


# --- the resampling ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    formula: str
    symbols: list[str]
    specs: dict[str, ConstantSpec] | None
    opts: FitOptions
    pools: dict[Key, tuple[np.ndarray, np.ndarray]]  # per (group, target): X, y after dropped rows
    point: dict[Key, np.ndarray]
    seed: int
    resamples: list[int]
    method: str
    max_iter: int
    tol: float


def _resample_seed(seed: int, b: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, b])


def resample_counts(seed: int, resamples: list[int], sizes: dict[Key, int]) -> dict[Key, np.ndarray]:
    """How often each row is drawn, per resample: {key: (len(resamples), n_rows) int}.

    Resample b draws, for every key in sorted order, n indices with replacement from its own generator
    (seeded by (seed, b)), so a resample is the same whichever process or method refits it."""
    out = {key: np.zeros((len(resamples), n), dtype=np.int32) for key, n in sizes.items()}
    for i, b in enumerate(resamples):
        rng = np.random.default_rng(_resample_seed(seed, b))
        for key in sorted(sizes):
            n = sizes[key]
            out[key][i] = np.bincount(rng.integers(0, n, size=n), minlength=n)
    return out


def _rows(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def _refit_one(law: Law, X: np.ndarray, y: np.ndarray, counts: np.ndarray, specs, opts: FitOptions,
               start: np.ndarray) -> tuple[np.ndarray, float]:
    """One resample refit by `fit_group` from `start`: (constants, objective); NaN constants if it failed."""
    idx = _rows(counts)
    fit = fit_group(law, X[idx], y[idx], specs, opts, warm_start=start)
    if fit.ok and np.all(np.isfinite(fit.theta)):
        return fit.theta, fit.objective
    return np.full(len(start), np.nan), math.inf


def _chunk(n_rows: int, k: int, total: int, budget: int = 3_000_000) -> int:
    """Resamples per batched step, so that one (resamples, rows, constants) Jacobian stays near `budget` floats."""
    return int(max(1, min(total, budget // max(1, n_rows * max(k, 1)))))


def _run(job: _Job, progress: Callable[[int], None] | None = None) -> tuple[dict[Key, np.ndarray], dict[Key, int]]:
    """Refit the resamples `job.resamples` from the point estimate: ({key: (len, k)}, {key: slow refits}).

    `progress(n)` is told after every piece of work how many (resample, group) refits it finished."""
    law = parse_law(job.formula, job.symbols, check_typos=False)
    k = len(law.constants)
    counts = resample_counts(job.seed, job.resamples, {key: len(y) for key, (_, y) in job.pools.items()})
    out = {key: np.full((len(job.resamples), k), np.nan) for key in job.pools}
    slow = {key: 0 for key in job.pools}
    _, lo, hi = _specs_for(law, job.specs)
    for key in sorted(job.pools):
        X, y = job.pools[key]
        point = job.point[key]
        W = counts[key]
        if not np.all(np.isfinite(point)):
            pass
        elif job.method == "refit":  # the reference: one least_squares refit per resample
            for i in range(len(W)):
                out[key][i] = _refit_one(law, X, y, W[i], job.specs, job.opts, point)[0]
        else:
            step = _chunk(len(y), k, len(W))
            for a in range(0, len(W), step):
                res = fit_weighted(law, X, y, W[a:a + step], point, lo, hi, loss=job.opts.loss,
                                   f_scale=job.opts.f_scale, log_residuals=job.opts.log_residuals,
                                   max_iter=job.max_iter, tol=job.tol)
                out[key][a:a + step] = res.theta
                # a resample the batch did not converge is refit the slow way from the point estimate, as the
                # reference method would; the lower of the two objectives is kept
                for i in np.flatnonzero(~res.converged):
                    theta, objective = _refit_one(law, X, y, W[a + i], job.specs, job.opts, point)
                    if objective < res.cost[i] or not np.isfinite(res.cost[i]):
                        out[key][a + i] = theta
                    slow[key] += 1
                if progress:
                    progress(len(res.theta))
        if progress and (job.method == "refit" or not np.all(np.isfinite(point))):
            progress(len(W))
    return out, slow


def _pools(law: Law, data: Dataset, point: dict[Key, np.ndarray],
           drop: int) -> dict[Key, tuple[np.ndarray, np.ndarray]]:
    pools = {}
    for g, t in point:
        mask = data.groups == g
        X, y = data.X[mask], data.Y[mask, t]
        keep = np.isfinite(y)
        if drop:
            keep[np.argsort(-np.where(keep, y, -np.inf), kind="stable")[:drop]] = False
        pools[(g, t)] = (X[keep], y[keep])
    return pools


def _residuals(law: Law, pools: dict, point: dict[Key, np.ndarray], log: bool) -> dict[Key, np.ndarray]:
    out = {}
    for key, (X, y) in pools.items():
        with np.errstate(all="ignore"):
            pred = law.predict(X, point[key])
            out[key] = np.log(y) - np.log(pred) if log else y - pred
    return out


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Workers spawned inside inherit one BLAS thread each: small least-squares problems on several
    processes are slower, not faster, when every process also starts a BLAS thread per core."""
    saved = {k: os.environ.get(k) for k in _BLAS_VARS}
    os.environ.update({k: "1" for k in _BLAS_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def refit_options(fit_options: FitOptions, options: BootstrapOptions) -> FitOptions:
    """The settings of a single resample's refit: the point estimate as the only start, one refinement."""
    polish = fit_options.polish if options.method == "refit" else False
    return replace(fit_options, n_starts=1, n_refine=1, drop_highest_targets=0, max_nfev=options.max_nfev,
                   polish=polish)


def bootstrap_law(law: Law, data: Dataset, point: dict[Key, np.ndarray], specs: dict[str, ConstantSpec] | None,
                  fit_options: FitOptions, options: BootstrapOptions | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Bootstrap:
    """Bootstrap the constants of `law` fitted on `data` (usually all of train) with point estimate `point`.

    `progress(done, total)` is told how many of the resamples x groups refits are done."""
    options = options or BootstrapOptions()
    if options.n_resamples < 1:
        raise ValueError("the bootstrap needs at least one resample")
    if options.method not in METHODS:
        raise ValueError(f"unknown bootstrap method {options.method!r}; choose from {', '.join(METHODS)}")
    t0 = time.perf_counter()
    pools = _pools(law, data, point, fit_options.drop_highest_targets)
    warm = refit_options(fit_options, options)
    B = options.n_resamples
    work = B * len(data) * (len(law.constants) if options.method == "batch" else 1)
    jobs_n = options.n_jobs or (1 if work < SERIAL_BELOW[options.method] else os.cpu_count() or 1)
    jobs_n = max(1, min(jobs_n, B))
    pieces = max(1, min(B, jobs_n))
    chunks = [list(map(int, c)) for c in np.array_split(np.arange(B), pieces) if len(c)]
    symbols = [v.name for v in law.variables]
    jobs = [_Job(law.text, symbols, specs, warm, pools, point, options.seed, c, options.method, options.max_iter,
                 options.batch_tol)
            for c in chunks]
    parts: list[tuple[dict, dict]] = []
    total = B * len(pools)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    if jobs_n == 1:
        parts = [_run(j, tick) for j in jobs]
    else:
        ctx = multiprocessing.get_context("spawn")  # like the campaign's pool: no threads copied mid-flight
        with _single_threaded_blas(), ProcessPoolExecutor(max_workers=jobs_n, mp_context=ctx) as pool:
            futures = [pool.submit(_run, j) for j in jobs]
            for f, j in zip(futures, jobs, strict=True):
                parts.append(f.result())
                tick(len(j.resamples) * len(pools))
    samples = {key: np.vstack([p[0][key] for p in parts]) for key in pools}
    fallbacks = {key: int(sum(p[1][key] for p in parts)) for key in pools}
    return Bootstrap(constant_names=[c.name for c in law.constants], point=dict(point), samples=samples,
                     options=options, log_residuals=fit_options.log_residuals,
                     residuals=_residuals(law, pools, point, fit_options.log_residuals),
                     seconds=time.perf_counter() - t0, fallbacks=fallbacks)


def summary(boot: Bootstrap, law: Law, test: Dataset | None = None) -> dict:
    """JSON-ready: method, resamples, intervals per key, and coverage of `test` by both bands."""
    how = ("all resamples of a group refit together by a batched Levenberg-Marquardt solver, those it did not "
           "converge refit one by one with least_squares" if boot.options.method == "batch"
           else "each resample refit by least_squares (one start, one refinement)")
    out = {
        "method": f"percentile bootstrap over rows within each group, refit from the point estimate ({how})",
        "resamples": boot.options.n_resamples, "seed": boot.options.seed, "level": boot.options.level,
        "seconds": round(boot.seconds, 3), "solver": boot.options.method,
        "ok": {f"{g}|{t}": boot.n_ok((g, t)) for g, t in sorted(boot.samples)},
        "refit_alone": int(sum(boot.fallbacks.values())),
    }
    if test is not None and len(test):
        lo, hi = boot.band(law, test)
        plo, phi = boot.band(law, test, noise=True)
        out["coverage"] = {
            "split": "test", "cells": int(test.Y.size),
            "law_band": coverage(test.Y, lo, hi),
            "prediction_band": coverage(test.Y, plo, phi),
            "note": ("law band: the fitted curve's uncertainty (constants only); prediction band: plus a "
                     "resampled train residual, where a new observation should fall"),
        }
    return out
