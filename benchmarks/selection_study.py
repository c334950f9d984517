"""Which law to report: selection rules compared on finished runs, on validation-only evidence.

    D=results/quality/main-nested
    KEPLER_TASKS_DIR=$D/nested/tasks KEPLER_DATA_DIR=$D/nested/data \
        python benchmarks/selection_study.py $D [--top 24] [--folds 3]

Give it the directory of a nested `benchmarks/discovery_quality.py --nested` run: every campaign there saw
only train rows, and its "test" split is the validation slice a real campaign selects on, so nothing here
reads a real test split. For each run, the best `--top` candidates by the campaign's own ranking are
refit afresh on each further forward fold (`Protocol.folds`), checked against the far-field shape priors,
and refit on all of (nested) train to score their (nested) test; the rules below then pick one law each
and the tables say how well each rule's picks extrapolate: per task (mean over seeds), and per seed (the SLDBench
tasks' mean, as the acceptance table counts it). The agreement rules add a law's disagreement with itself:
what it predicts a step beyond train when fitted on the fit part, against when fitted on all of train (points
built from train rows only; see `disagreement`); "agreement of fold fits" compares instead the two fits a campaign
makes anyway, fold 1's against the fit part's. The floor rules also rank last a law whose floor lies on the
edge of the target's possible range (a loss of zero with every decreasing variable grown without bound; see
`floor_breach`). Results per candidate are cached in `selection_cache.json` beside the runs, so rules can be
added and rerun cheaply.
"""
from __future__ import annotations

import argparse
import json
import math
import sqlite3
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from discovery.laws.fit import FitOptions, LawFit, fit_law, recipe_options  # noqa: E402
from discovery.laws.law import parse_law  # noqa: E402
from discovery.laws.shape import GROUP_SHARE, TOLERANCE, along, shape_of  # noqa: E402
from discovery.search.close_calls import beyond  # noqa: E402
from discovery.search.executors import stored_fit, stored_specs  # noqa: E402
from discovery.search.population import PARSIMONY  # noqa: E402
from discovery.search.selection import combine, fold_fits  # noqa: E402
from discovery.tasks.data import load_frame  # noqa: E402
from discovery.tasks.dataset import Dataset  # noqa: E402
from discovery.tasks.spec import load_task  # noqa: E402
from evaluators.metrics import score  # noqa: E402
from evaluators.protocol import Protocol  # noqa: E402


def disagreement(small: LawFit, large: LawFit, seen: Dataset, axes: list[int]) -> float:
    """How differently a law predicts just beyond train when fitted on fewer rows (`small`, fold 0's fit part)
    and on all of train (`large`): per group and target, the mean squared gap at points built from that group's
    train rows only (the other variables at their observed settings, each axis a step past its largest value),
    over the target's variance in the group; the mean over fits. A law that extrapolates predicts the same
    thing whichever rows it was fitted on."""
    if not (small.ok and large.ok) or not axes:
        return 0.0 if small.ok and large.ok else math.inf
    gaps = []
    for (group, t), big in sorted(large.fits.items()):
        few = small.fits.get((group, t))
        rows = seen.groups == group
        X, var = seen.X[rows], float(np.var(seen.Y[rows, t]))
        if few is None or not var > 0:
            continue
        for index in axes:
            Xg = along(X, index, beyond(X[:, index]))
            with np.errstate(all="ignore"):
                gap = np.mean((small.law.predict(Xg, few.theta) - large.law.predict(Xg, big.theta)) ** 2) / var
            gaps.append(float(gap) if np.isfinite(gap) else math.inf)
    return statistics.fmean(gaps) if gaps else 0.0


FLOOR_SCALES = 10.0 ** np.array([12, 24, 48, 96, 192])  # x the largest observed value, on every decreasing variable


def floor_breach(fit: LawFit, seen: Dataset, priors) -> str | None:
    """Whether the law's floor lies on the edge of the target's possible range: with every decreasing variable
    grown without bound together (FLOOR_SCALES x its largest observed value, the others at their observed
    settings), the prediction comes within TOLERANCE x the observed span of the range's lower end (a loss of
    zero: a perfect model). As shape_of, a law breaches it when more than GROUP_SHARE of its fits do."""
    down = [d.index for d in priors.directions if d.sign < 0]
    if not down or priors.target_range is None or not fit.ok:
        return None
    lo = priors.target_range[0]
    if not np.isfinite(lo):
        return None
    broken = 0
    for (group, t), gf in sorted(fit.fits.items()):
        rows = seen.groups == group
        X, span = seen.X[rows], float(np.ptp(seen.Y[rows, t])) or 1.0
        if any(X[:, i].max() <= 0 for i in down):
            continue
        bases = np.unique(X, axis=0)[:32]
        limits = []
        for scale in FLOOR_SCALES:
            Xg = bases.copy()
            for i in down:
                Xg[:, i] = X[:, i].max() * scale
            with np.errstate(all="ignore"):
                pred = np.asarray(fit.law.predict(Xg, gf.theta), dtype=float)
            limits.append(np.where(np.isfinite(pred), pred, np.nan))
        tail = np.array(limits)  # (scales, bases): the last finite value per base
        last = np.array([col[np.isfinite(col)][-1] if np.isfinite(col).any() else np.inf for col in tail.T])
        if np.any(last - lo < TOLERANCE * span):
            broken += 1
    return f"floor at the range's edge in {broken} of {len(fit.fits)} fits" if broken > GROUP_SHARE * len(fit.fits) \
        else None


def study_run(run_dir: Path, top: int, n_folds: int, cache: dict) -> dict | None:
    db = sqlite3.connect(run_dir / "campaign.sqlite")
    db.row_factory = sqlite3.Row
    meta = {r["key"]: json.loads(r["value"]) for r in db.execute("SELECT key, value FROM meta")}
    if meta.get("status") != "finished":
        return None
    settings = meta["settings"]
    task = load_task(settings["task"])
    protocol = Protocol(task, load_frame(task))
    folds = protocol.folds(n_folds)
    rows = db.execute("SELECT c.id, c.formula, c.constant_specs, c.complexity, f.val_nmse, f.val_r2, f.recipe, "
                      "f.shape, f.constants FROM candidates c JOIN fits f ON f.candidate_id = c.id "
                      "WHERE c.status = 'evaluated' AND f.val_nmse IS NOT NULL").fetchall()
    db.close()
    ranked = sorted(rows, key=lambda r: (bool(r["shape"]), r["val_nmse"] * (1 + PARSIMONY * r["complexity"]),
                                         r["id"]))[:top]
    opts = FitOptions(seed=settings["seed"], n_starts=settings.get("fit_starts", 32), n_refine=1, max_nfev=80,
                      polish=False, tol=1e-6, time_limit=settings.get("fit_time_limit", 60.0))
    final = FitOptions(seed=settings["seed"], n_starts=1)
    axis_columns = {task.split.validation_axis, *task.split.validation_or}
    axes = [i for i, v in enumerate(task.variables) if v.column in axis_columns]
    test = protocol.final_test(purpose="selection study: nested test = the real validation slice")
    out = []
    for r in ranked:
        key = f"{run_dir}|{r['id']}|{n_folds}"
        if "disagreement_folds" not in cache.get(key, {}):  # (cached before the fold-fit agreement rule: refit)
            law = parse_law(r["formula"], task.symbols)
            specs = stored_specs(r["constant_specs"])
            recipe = r["recipe"] or "linear"
            scored = fold_fits(law, specs, recipe, folds[1:], task.targets, opts, total_time_limit=60.0)
            extra = [nmse for nmse, _ in scored]
            warm = stored_fit(r["constants"], law, task.targets)
            fit = fit_law(law, protocol.train, task.targets, specs, recipe_options(final, recipe), warm=warm)
            far = shape_of(warm, Dataset.concat(protocol.fit_part, protocol.validation), task.shape_priors(),
                           far_field=True) if task.shape_priors() else None
            cache[key] = {"id": r["id"], "formula": r["formula"], "complexity": r["complexity"],
                          "val_nmse": r["val_nmse"], "shape": r["shape"], "far": far,
                          "floor": floor_breach(warm, Dataset.concat(protocol.fit_part, protocol.validation),
                                                task.shape_priors()),
                          "fold_nmse": [r["val_nmse"], *extra],
                          "disagreement": disagreement(warm, fit, protocol.train, axes),
                          "disagreement_folds": disagreement(scored[0][1], warm, protocol.train, axes)
                          if scored else None,  # (no further fold: nothing to compare)
                          "test_r2": score(test.Y, fit.predict(test)).r2 if fit.ok else -1.0}
        out.append(cache[key])
    return {"task": task.name, "seed": settings["seed"], "sldbench": task.sldbench, "candidates": out}


def clip(x: float) -> float:
    return -1.0 if x is None or not math.isfinite(x) else max(-1.0, x)


def _fitness(c: dict, value: float) -> float:
    return value * (1 + PARSIMONY * c["complexity"])


RULES = {
    "current (fold 0)": lambda cs: min(cs, key=lambda c: (bool(c["shape"]), _fitness(c, c["val_nmse"]))),
    "far-field, fold 0": lambda cs: min(cs, key=lambda c: (bool(c["shape"] or c["far"]), _fitness(c, c["val_nmse"]))),
    "mean of folds": lambda cs: min(cs, key=lambda c: (bool(c["shape"]), _fitness(c, combine(c["fold_nmse"])))),
    "mean of 2 folds": lambda cs: min(cs, key=lambda c: (bool(c["shape"]),
                                                         _fitness(c, combine(c["fold_nmse"][:2])))),
    "worst fold": lambda cs: min(cs, key=lambda c: (bool(c["shape"]), _fitness(c, combine(c["fold_nmse"], "max")))),
    "far-field, mean of folds": lambda cs: min(cs, key=lambda c: (bool(c["shape"] or c["far"]),
                                                                  _fitness(c, combine(c["fold_nmse"])))),
    "far-field, worst fold": lambda cs: min(cs, key=lambda c: (bool(c["shape"] or c["far"]),
                                                               _fitness(c, combine(c["fold_nmse"], "max")))),
    "far-field + floor, mean of 2 folds": lambda cs: min(cs, key=lambda c: (
        bool(c["shape"] or c["far"] or c["floor"]), _fitness(c, combine(c["fold_nmse"][:2])))),
    "far-field, mean of 2 folds": lambda cs: min(cs, key=lambda c: (bool(c["shape"] or c["far"]),
                                                                    _fitness(c, combine(c["fold_nmse"][:2])))),
    "far-field + floor, fold 0": lambda cs: min(cs, key=lambda c: (bool(c["shape"] or c["far"] or c["floor"]),
                                                                   _fitness(c, c["val_nmse"]))),
    "agreement, fold 0": lambda cs: min(cs, key=lambda c: (bool(c["shape"]),
                                                           _fitness(c, c["val_nmse"] + c["disagreement"]))),
    "agreement, mean of folds": lambda cs: min(cs, key=lambda c: (bool(c["shape"]), _fitness(
        c, combine(c["fold_nmse"]) + c["disagreement"]))),
    "agreement of fold fits, mean of folds": lambda cs: min(cs, key=lambda c: (bool(c["shape"]), _fitness(
        c, combine(c["fold_nmse"]) + (c["disagreement_folds"] or 0.0)))),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("quality_dir")
    parser.add_argument("--top", type=int, default=24)
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.quality_dir)
    cache_path = root / "selection_cache.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    runs = []
    for db in sorted(root.glob("*/*/*/campaign.sqlite")):
        res = study_run(db.parent, args.top, args.folds, cache)
        cache_path.write_text(json.dumps(cache))
        if res:
            runs.append(res)
            print(f"{res['task']} seed {res['seed']}: {len(res['candidates'])} candidates", flush=True)
    tasks = sorted({r["task"] for r in runs})
    print(f"\n| rule | {' | '.join(t.removesuffix('_nested').replace('_scaling_law', '') for t in tasks)} | mean |")
    print("|---" * (len(tasks) + 2) + "|")
    for name, rule in RULES.items():
        per_task = []
        for t in tasks:
            picks = [clip(rule(r["candidates"])["test_r2"]) for r in runs if r["task"] == t and r["candidates"]]
            per_task.append(statistics.fmean(picks))
        print(f"| {name} | {' | '.join(f'{x:.4f}' for x in per_task)} | {statistics.fmean(per_task):.4f} |")
    _per_seed(runs)
    return 0


def _per_seed(runs: list[dict]) -> None:
    """Per rule: the SLDBench tasks' mean in each seed (the acceptance table's per-seed row), its mean and worst
    seed, and the other curated tasks' mean over tasks and seeds."""
    seeds = sorted({r["seed"] for r in runs if r["sldbench"]})
    if not seeds:
        return  # only the other curated tasks: the per-task table above is the whole answer
    print(f"\n| rule | {' | '.join(f'SLDBench seed {s}' for s in seeds)} | mean | worst seed | other tasks |")
    print("|---" * (len(seeds) + 4) + "|")
    for name, rule in RULES.items():
        by_seed = [statistics.fmean(clip(rule(r["candidates"])["test_r2"]) for r in runs
                                    if r["sldbench"] and r["seed"] == s and r["candidates"]) for s in seeds]
        other = [clip(rule(r["candidates"])["test_r2"]) for r in runs if not r["sldbench"] and r["candidates"]]
        print(f"| {name} | {' | '.join(f'{x:.4f}' for x in by_seed)} | {statistics.fmean(by_seed):.4f} | "
              f"{min(by_seed):.4f} | {statistics.fmean(other) if other else float('nan'):.4f} |")


if __name__ == "__main__":
    sys.exit(main())
