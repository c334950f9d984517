"""Fit speed and quality of Kepler's fitter against two baselines, side by side in one process.

For each task's human law (fitted on the train split, per group and target):
  (a) Kepler's fitter with its defaults;
  (b) the Epoch-replication-style baseline: scipy.optimize.minimize(method="L-BFGS-B") with numerical
      gradients from 256 quasi-random starts over the same bounds, best kept;
  (c) one BFGS from an all-ones start (how SLDBench's seed programs fit).
All three minimise the same objective (the law's loss on linear or log residuals). Reported: wall ms,
training objective reached (summed over groups and targets), and test R2.

    python benchmarks/fit_speed.py [task ...] [--engine symengine|sympy] [--fitter trf|lm|batched] [--kepler-only]
        [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from discovery.laws.fit import FitOptions, GroupFit, LawFit, _objective, _residuals, _sample_starts, _specs_for, fit_law  # noqa: E402
from discovery.tasks.data import load_frame  # noqa: E402
from discovery.tasks.spec import list_tasks, load_task  # noqa: E402
from evaluators.benchmark import parse_human_law  # noqa: E402
from evaluators.metrics import score  # noqa: E402
from evaluators.protocol import Protocol  # noqa: E402


def _objective_fn(law, X, y, opts: FitOptions):
    def f(theta: np.ndarray) -> float:
        v = float(_objective(_residuals(law.predict(X, theta), y, opts.log_residuals), opts.loss, opts.f_scale))
        return v if np.isfinite(v) else 1e300
    return f


def _drop(y: np.ndarray, k: int) -> np.ndarray:
    keep = np.ones(len(y), dtype=bool)
    if k:
        keep[np.argsort(-y, kind="stable")[:k]] = False
    return keep


def baseline_fit(law, data, targets, specs, opts: FitOptions, method: str) -> LawFit:
    t0 = time.perf_counter()
    init, lo, hi = _specs_for(law, specs)
    fits = {}
    for g in data.group_names:
        mask = data.groups == g
        for t in range(len(targets)):
            X, y = data.X[mask], data.Y[mask, t]
            keep = _drop(y, opts.drop_highest_targets)
            f = _objective_fn(law, X[keep], y[keep], opts)
            if method == "lbfgsb256":
                starts = _sample_starts(init, lo, hi, 256, opts.seed)
                bounds = list(zip(np.where(np.isfinite(lo), lo, None), np.where(np.isfinite(hi), hi, None),
                                  strict=True))
                best = None
                for x0 in starts:
                    r = minimize(f, np.clip(x0, lo, hi), method="L-BFGS-B", bounds=bounds)
                    if best is None or r.fun < best.fun:
                        best = r
            else:
                best = minimize(f, np.ones(len(init)), method="BFGS")
            fits[(g, t)] = GroupFit(best.x, "ok", objective=float(best.fun))
    return LawFit(law, targets, fits, seconds=time.perf_counter() - t0)


def objective_total(fit: LawFit, data, opts: FitOptions) -> float:
    total = 0.0
    for (g, t), gf in fit.fits.items():
        mask = data.groups == g
        X, y = data.X[mask], data.Y[mask, t]
        keep = _drop(y, opts.drop_highest_targets)
        total += _objective_fn(fit.law, X[keep], y[keep], opts)(gf.theta)
    return total


def run(task_names: list[str], engine: str = "symengine", fitter: str = "trf", kepler_only: bool = False) -> list[dict]:
    rows = []
    for name in task_names:
        task = load_task(name)
        protocol = Protocol(task, load_frame(task))
        test = protocol.final_test(purpose="fit_speed benchmark: test R2 of each fitter")
        for human in task.human_laws:
            if not human.constants:
                continue
            law = parse_human_law(task, human).with_engine(engine)  # all three fitters evaluate the same code
            opts = FitOptions.from_settings(human.fit, fitter=fitter)
            law.predict(protocol.train.X[:2], np.ones(len(law.constants)))  # compile outside the timings
            law.jacobian(protocol.train.X[:2], np.ones(len(law.constants)))
            _ = law.separable
            results = {}
            problem = (law, protocol.train, task.targets, human.constants, opts)
            fitters = [("kepler", partial(fit_law, *problem)),
                       ("lbfgsb256", partial(baseline_fit, *problem, "lbfgsb256")),
                       ("bfgs_ones", partial(baseline_fit, *problem, "bfgs"))]
            if kepler_only:  # the grid takes minutes per law: compare Kepler's two fitters alone
                fitters = [fitters[0], ("kepler_trf", partial(fit_law, *problem[:-1], replace(opts, fitter="trf")))]
            for label, fn in fitters:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t0 = time.perf_counter()
                    fit = fn()
                    ms = 1000 * (time.perf_counter() - t0)
                results[label] = {"ms": ms, "objective": objective_total(fit, protocol.train, opts),
                                  "test_r2": score(test.Y, fit.predict(test)).r2}
            if kepler_only:
                k, t = results["kepler"], results["kepler_trf"]
                row = {"task": name, "law": human.name, **{f"{lab}_{key}": v for lab, r in results.items()
                                                           for key, v in r.items()},
                       "objective_ratio_vs_trf": k["objective"] / t["objective"] if t["objective"] else 1.0}
                rows.append(row)
                print(f"{name:38s} {human.name[:28]:28s} kepler ({fitter}) {k['ms']:8.1f} ms obj {k['objective']:.9g} "
                      f"R2 {k['test_r2']:+.4f} | kepler (trf) {t['ms']:8.1f} ms obj {t['objective']:.9g} R2 "
                      f"{t['test_r2']:+.4f} | objective ratio {row['objective_ratio_vs_trf']:.7f}", flush=True)
                continue
            k, b = results["kepler"], results["lbfgsb256"]
            row = {"task": name, "law": human.name, **{f"{lab}_{key}": v for lab, r in results.items()
                                                       for key, v in r.items()},
                   "speedup_vs_lbfgsb256": b["ms"] / k["ms"],
                   "objective_ratio_vs_lbfgsb256": k["objective"] / b["objective"] if b["objective"] else 1.0}
            rows.append(row)
            print(f"{name:38s} {human.name[:28]:28s} kepler {k['ms']:8.1f} ms obj {k['objective']:.6g} R2 "
                  f"{k['test_r2']:+.3f} | L-BFGS-B x256 {b['ms']:9.1f} ms obj {b['objective']:.6g} R2 "
                  f"{b['test_r2']:+.3f} | BFGS(1s) {results['bfgs_ones']['ms']:7.1f} ms obj "
                  f"{results['bfgs_ones']['objective']:.6g} R2 {results['bfgs_ones']['test_r2']:+.3f} | "
                  f"speed-up {row['speedup_vs_lbfgsb256']:.0f}x, objective ratio "
                  f"{row['objective_ratio_vs_lbfgsb256']:.5f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tasks", nargs="*")
    ap.add_argument("--json")
    ap.add_argument("--engine", choices=["symengine", "sympy"], default="symengine",
                    help="how laws are compiled: SymEngine (a campaign's fast engine) or SymPy's lambdify")
    ap.add_argument("--fitter", choices=["trf", "lm", "batched"], default="trf",
                    help="Kepler's refinement: one least_squares per start and group (trf, or MINPACK's lm), or all "
                    "groups batched")
    ap.add_argument("--kepler-only", action="store_true",
                    help="skip the baselines (minutes per law); compare Kepler's --fitter with its trf fitter instead")
    args = ap.parse_args()
    rows = run(args.tasks or list_tasks(), args.engine, args.fitter, args.kepler_only)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
