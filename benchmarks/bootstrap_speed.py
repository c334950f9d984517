"""Bootstrap speed and agreement: the batched solver (Kepler's default) against one refit per resample.

For each task, a human law is fitted on the train split and bootstrapped the way `kepler export / plot /
report / derive` bootstrap a law. Measured in one process, side by side, on the same resamples:
  refit: the reference and the method before the batch solver: every resample refit by `fit_group`
         (the point estimate as the only start, one refinement and a polish, at most 200 evaluations);
  batch: all resamples of a group refit together by `batch_fit.fit_weighted` (vectorised
         Levenberg-Marquardt from the point estimate); resamples it does not converge in 200 steps are refit
         one by one as above.
Both are timed serially on `--sample` resamples (seconds and their ratio). Agreement of the two: for every
constant and group, the difference of the 95% interval ends divided by the interval's width (median, 90th
percentile, maximum; intervals narrower than 1e-6 of the constant's size are left out), next to the same measure
between two batch bootstraps that differ only in seed (the Monte Carlo noise of the intervals themselves),
and the share of resamples where the batch objective is within 1e-6 of the reference's or below it. Then the
full batch bootstrap (`--resamples`, default 1,000) is timed with the default processes. Times are wall
and CPU seconds (the machine may be shared: CPU seconds are what the work costs), with the load average.

    python benchmarks/bootstrap_speed.py [--task vocab_scaling_law --task sft_scaling_law] [--resamples 1000]
                                         [--sample 200] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from discovery.laws.batch_fit import _Problem  # noqa: E402
from discovery.laws.fit import FitOptions, fit_law  # noqa: E402
from discovery.laws.uncertainty import BootstrapOptions, _pools, bootstrap_law, resample_counts  # noqa: E402
from discovery.tasks.data import load_frame  # noqa: E402
from discovery.tasks.spec import load_task  # noqa: E402
from evaluators.benchmark import parse_human_law  # noqa: E402
from evaluators.protocol import Protocol  # noqa: E402

TASKS = ["vocab_scaling_law", "sft_scaling_law"]


def _setup(name: str):
    task = load_task(name)
    human = next(h for h in task.human_laws if h.constants)
    law = parse_human_law(task, human)
    protocol = Protocol(task, load_frame(task))
    opts = FitOptions.from_settings(human.fit)
    point = {k: f.theta for k, f in fit_law(law, protocol.train, task.targets, human.constants, opts).fits.items()}
    return task, human, law, protocol, opts, point


def interval_differences(a, b) -> np.ndarray:
    """|difference of interval ends| / interval width, per (group, constant); degenerate intervals left out."""
    out = []
    typical = np.median(np.abs(np.array(list(b.point.values()))), axis=0)  # each constant's size over groups
    for key in a.samples:
        ia, ib = a.intervals()[key], b.intervals()[key]
        width = ib[:, 1] - ib[:, 0]
        scale = np.maximum(np.maximum(np.abs(b.point[key]), typical), 1e-12)
        ok = width > 1e-6 * scale  # e.g. an offset on its bound of 0 in nearly every resample: [0, 1e-10]
        out += list((np.abs(ia - ib).max(axis=1) / np.where(ok, width, 1.0))[ok])
    return np.array(out)


def objectives(boot, law, pools, opts, seed: int, n: int) -> np.ndarray:
    """Each resample's training objective at the constants the bootstrap found."""
    counts = resample_counts(seed, list(range(n)), {k: len(y) for k, (_, y) in pools.items()})
    out = []
    for key, (X, y) in sorted(pools.items()):
        prob = _Problem(law, X, y, counts[key].astype(float), opts.loss, opts.f_scale, opts.log_residuals)
        rows = np.arange(n)
        r, _ = prob.residuals(boot.samples[key], rows)
        out.append(prob.cost(r, rows))
    return np.concatenate(out)


class Clock:
    """Wall seconds and CPU seconds (this process and its finished children): on a shared machine the CPU
    time is what the work costs, the wall time what a user waits."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu

    @staticmethod
    def _cpu() -> float:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + kids.ru_utime + kids.ru_stime


def _stats(d: np.ndarray) -> dict:
    if not len(d):
        return {}
    return {"median": float(np.median(d)), "p90": float(np.percentile(d, 90)), "max": float(d.max()),
            "n": int(len(d))}


def run(name: str, resamples: int, sample: int, jobs: int | None) -> dict:
    task, human, law, protocol, opts, point = _setup(name)
    train = protocol.train
    serial = {m: BootstrapOptions(n_resamples=sample, n_jobs=1, method=m) for m in ("refit", "batch")}
    with Clock() as c_refit:
        refit = bootstrap_law(law, train, point, human.constants, opts, serial["refit"])
    with Clock() as c_batch:
        batch = bootstrap_law(law, train, point, human.constants, opts, serial["batch"])
    other_seed = bootstrap_law(law, train, point, human.constants, opts,
                               BootstrapOptions(n_resamples=sample, n_jobs=1, seed=1))
    pools = _pools(law, train, point, opts.drop_highest_targets)
    ob, orf = objectives(batch, law, pools, opts, 0, sample), objectives(refit, law, pools, opts, 0, sample)
    ok = np.isfinite(ob) & np.isfinite(orf)
    with Clock() as c_full:
        full = bootstrap_law(law, train, point, human.constants, opts,
                             BootstrapOptions(n_resamples=resamples, n_jobs=jobs))
    return {
        "task": name, "law": human.formula, "constants": len(law.constants), "train_rows": len(train),
        "groups": len(train.group_names), "sample": sample,
        "serial_seconds": {"refit": round(c_refit.wall, 2), "batch": round(c_batch.wall, 2)},
        "serial_cpu_seconds": {"refit": round(c_refit.cpu, 2), "batch": round(c_batch.cpu, 2)},
        "speedup_batch_over_refit": round(c_refit.wall / c_batch.wall, 2),
        "cpu_speedup_batch_over_refit": round(c_refit.cpu / c_batch.cpu, 2),
        "interval_end_difference_over_width": {"batch_vs_refit": _stats(interval_differences(batch, refit)),
                                               "seed0_vs_seed1": _stats(interval_differences(batch, other_seed))},
        "batch_objective_within_1e-6_of_refit_or_lower": float(np.mean(ob[ok] <= orf[ok] * (1 + 1e-6) + 1e-300)),
        "batch_refit_alone": int(sum(batch.fallbacks.values())),
        "full_bootstrap": {"resamples": resamples, "jobs": jobs or "default", "seconds": round(c_full.wall, 2),
                           "cpu_seconds": round(c_full.cpu, 2),
                           "refit_alone": int(sum(full.fallbacks.values())),
                           "ok": int(sum(full.n_ok(k) for k in full.samples)),
                           "of": resamples * len(full.samples)},
        "refit_full_estimate_seconds": round(c_refit.wall * resamples / sample, 1),
        "refit_full_estimate_cpu_seconds": round(c_refit.cpu * resamples / sample, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", action="append", help=f"task (repeatable; default {', '.join(TASKS)})")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=200, help="resamples timed serially by both methods")
    ap.add_argument("--jobs", type=int, help="processes for the full bootstrap (default: Kepler's choice)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    results = [run(name, args.resamples, args.sample, args.jobs) for name in args.task or TASKS]
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
