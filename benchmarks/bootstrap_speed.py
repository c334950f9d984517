"""Bootstrap speed: warm-started refits (Kepler's default) against naive refits from scratch.

The law is a task's human law fitted on the train split (default: vocab_scaling_law, 7 constants,
1,080 train rows in one group). Measured in one process, on the same resamples:
  warm:  `fit_group` with one start, the point estimate as warm start, one refinement (what
         `discovery.laws.uncertainty.bootstrap_law` does);
  naive: `fit_group` with the fitter's defaults (128 quasi-random starts, 3 refinements), as if each
         resample were a new fit.
Both are timed serially on the same `--sample` resamples (per-resample seconds, and the ratio), then the
full warm bootstrap (`--resamples`, default 1,000) is timed on `--jobs` processes (default 2).

    python benchmarks/bootstrap_speed.py [--task vocab_scaling_law] [--resamples 1000] [--jobs 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from discovery.laws.fit import FitOptions, fit_group, fit_law  # noqa: E402
from discovery.laws.uncertainty import BootstrapOptions, bootstrap_law  # noqa: E402
from discovery.tasks.data import load_frame  # noqa: E402
from discovery.tasks.spec import load_task  # noqa: E402
from evaluators.benchmark import parse_human_law  # noqa: E402
from evaluators.protocol import Protocol  # noqa: E402


def _time_refits(law, pools, point, specs, opts, warm: bool, sample: int, seed: int) -> tuple[float, list]:
    """Seconds per resample and the training objective each refit reached."""
    thetas = []
    t0 = time.perf_counter()
    for b in range(sample):
        rng = np.random.default_rng(np.random.SeedSequence([seed, b]))
        for key in sorted(pools):
            X, y = pools[key]
            idx = rng.integers(0, len(y), size=len(y))
            fit = fit_group(law, X[idx], y[idx], specs, opts, warm_start=point[key] if warm else None)
            thetas.append(fit.objective)
    return (time.perf_counter() - t0) / sample, thetas


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="vocab_scaling_law")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--sample", type=int, default=30, help="resamples timed serially for the warm/naive ratio")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    task = load_task(args.task)
    human = next(h for h in task.human_laws if h.constants)
    law = parse_human_law(task, human)
    protocol = Protocol(task, load_frame(task))
    opts = FitOptions.from_settings(human.fit)
    point_fit = fit_law(law, protocol.train, task.targets, human.constants, opts)
    point = {k: f.theta for k, f in point_fit.fits.items()}
    from discovery.laws.uncertainty import _pools  # the same pools the bootstrap resamples from

    pools = _pools(law, protocol.train, point, opts.drop_highest_targets)
    warm_opts = replace(opts, n_starts=1, n_refine=1, drop_highest_targets=0, max_nfev=200)
    naive_opts = replace(opts, drop_highest_targets=0)
    warm_s, warm_obj = _time_refits(law, pools, point, human.constants, warm_opts, True, args.sample, 0)
    naive_s, naive_obj = _time_refits(law, pools, point, human.constants, naive_opts, False, args.sample, 0)
    rel = (np.array(warm_obj) - np.array(naive_obj)) / np.abs(np.array(naive_obj))  # > 0: warm fit is worse

    boot = bootstrap_law(law, protocol.train, point, human.constants, opts,
                         BootstrapOptions(n_resamples=args.resamples, n_jobs=args.jobs))
    result = {
        "task": task.name, "law": human.formula, "constants": len(law.constants), "train_rows": len(protocol.train),
        "groups": len(protocol.train.group_names),
        "serial_seconds_per_resample": {"warm": round(warm_s, 5), "naive": round(naive_s, 5)},
        "speedup_naive_over_warm": round(naive_s / warm_s, 2),
        "objective_warm_vs_naive": {"median_relative_excess": float(np.median(rel)),
                                    "max_relative_excess": float(np.max(rel)),
                                    "share_warm_as_good_within_1e-6": float(np.mean(rel <= 1e-6))},
        "full_bootstrap": {"resamples": args.resamples, "jobs": args.jobs, "seconds": round(boot.seconds, 2),
                           "ok": {f"{g}|{t}": boot.n_ok((g, t)) for g, t in boot.samples}},
        "naive_full_bootstrap_seconds_estimate": round(naive_s * args.resamples / args.jobs, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
