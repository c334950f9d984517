"""Chinchilla replication check: Kepler's bootstrap intervals and compute-optimal exponents beside Epoch AI's.

Epoch's method, as the task file records it: L = E + A/N**alpha + B/D**beta, Huber loss (delta = 1e-3)
on log loss, the 5 highest-loss runs dropped, fitted on all 245 extracted points; 95% bootstrap
intervals A (285, 744), B (1042, 5810), E (1.769, 1.871), alpha (0.317, 0.373), beta (0.331, 0.415).
Kepler fits the same law with the same settings (the task's "Besiroglu et al. 2024 (refit)" human law)
and bootstraps it with `discovery.laws.uncertainty.bootstrap_law`. Two data settings are reported:
  all:   all 245 rows, Epoch's setting (this reads the task's test rows: a replication, not a benchmark);
  train: Kepler's train split only (225 rows, flops <= 1.1e21).
Beside the constants: the compute-optimal exponents a and b of N_opt ∝ C^a, D_opt ∝ C^b under C = 6ND, found
numerically by `discovery.outputs.derive.allocation` (as `kepler derive` does) with 95% bootstrap intervals, and
Epoch's a = beta/(alpha + beta) from their published constants (PROVENANCE.md gives no interval for a or b).

    python benchmarks/chinchilla_bootstrap.py [--resamples 1000] [--jobs 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from discovery.laws.fit import FitOptions, fit_law  # noqa: E402
from discovery.laws.uncertainty import BootstrapOptions, bootstrap_law  # noqa: E402
from discovery.outputs.derive import allocation  # noqa: E402
from discovery.outputs.record import LawRecord  # noqa: E402
from discovery.tasks.data import load_frame  # noqa: E402
from discovery.tasks.dataset import Dataset  # noqa: E402
from discovery.tasks.spec import load_task  # noqa: E402
from evaluators.benchmark import parse_human_law  # noqa: E402
from evaluators.protocol import Protocol  # noqa: E402

EPOCH = {"A": (285.0, 744.0), "B": (1042.0, 5810.0), "E": (1.769, 1.871), "alpha": (0.317, 0.373),
         "beta": (0.331, 0.415)}
EPOCH_POINT = {"A": 482.01, "B": 2085.43, "E": 1.81686, "alpha": 0.3478, "beta": 0.3658}


def run(data: Dataset, resamples: int, jobs: int, seed: int) -> dict:
    task = load_task("chinchilla_approach3")
    human = next(h for h in task.human_laws if h.fit.drop_highest_targets == 5)
    law = parse_human_law(task, human)
    opts = FitOptions.from_settings(human.fit, seed=seed)
    fit = fit_law(law, data, task.targets, human.constants, opts)
    point = {k: f.theta for k, f in fit.fits.items()}
    boot = bootstrap_law(law, data, point, human.constants, opts,
                         BootstrapOptions(n_resamples=resamples, seed=seed, n_jobs=jobs))
    key = next(iter(point))
    names = [c.name for c in law.constants]
    iv = boot.intervals()[key]
    record = LawRecord(task=task, law=law, constants=point, specs=human.constants, fit_options=opts, metrics={},
                       label=human.name)
    (alloc,) = allocation(record, data, boot)
    epoch_a = EPOCH_POINT["beta"] / (EPOCH_POINT["alpha"] + EPOCH_POINT["beta"])
    return {
        "rows": len(data), "seconds": round(boot.seconds, 2), "ok_resamples": boot.n_ok(key),
        "constants": {n: {"kepler_point": float(point[key][i]), "kepler_95": [float(iv[i, 0]), float(iv[i, 1])],
                          "epoch_point": EPOCH_POINT[n], "epoch_95": list(EPOCH[n])} for i, n in enumerate(names)},
        "allocation": {"a": alloc.a, "a_95": list(alloc.interval(alloc.a_samples)), "b": alloc.b,
                       "b_95": list(alloc.interval(alloc.b_samples)), "epoch_a": epoch_a, "epoch_b": 1 - epoch_a,
                       "resamples": alloc.ok_resamples},
    }


def _table(title: str, res: dict) -> str:
    lines = [f"{title} ({res['rows']} rows, {res['ok_resamples']} resamples ok, {res['seconds']} s)",
             f"{'':6} {'Kepler point':>13} {'Kepler 95%':>24} {'Epoch point':>12} {'Epoch 95%':>20}"]
    for n in ("A", "B", "E", "alpha", "beta"):
        c = res["constants"][n]
        k, e = c["kepler_95"], c["epoch_95"]
        lines.append(f"{n:6} {c['kepler_point']:13.4g} {f'({k[0]:.4g}, {k[1]:.4g})':>24} {c['epoch_point']:12.4g} "
                     f"{f'({e[0]:.4g}, {e[1]:.4g})':>20}")
    a = res["allocation"]
    for n in ("a", "b"):
        lo, hi = a[f"{n}_95"]
        lines.append(f"{n:6} {a[n]:13.4g} {f'({lo:.4g}, {hi:.4g})':>24} {a[f'epoch_{n}']:12.4g} {'–':>20}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    task = load_task("chinchilla_approach3")
    frame = load_frame(task)
    protocol = Protocol(task, frame)
    everything = Dataset.from_frame(frame.reset_index(drop=True), task.columns, task.targets, "all")
    result = {"all": run(everything, args.resamples, args.jobs, args.seed),
              "train": run(protocol.train, args.resamples, args.jobs, args.seed)}
    print(_table("Epoch's setting: all rows", result["all"]))
    print()
    print(_table("Kepler's train split", result["train"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
