"""Does a run's close-call warning flag the runs whose reported law the data did not decide? Nested runs only.

    D=results/quality/main-nested
    KEPLER_TASKS_DIR=$D/nested/tasks KEPLER_DATA_DIR=$D/nested/data python benchmarks/close_call_study.py $D

Give it the directory of a finished `benchmarks/discovery_quality.py --nested` run: every campaign there saw
only train rows, and its "test" split is the validation slice a real campaign selects on, so nothing here reads
a real test split. For each run, the best law and its contenders (discovery.search.close_calls.contenders, from
the stored selection scores, as the campaign ranks them) are refit on all of (nested) train, as the campaign's
final report does; their spread a step beyond train (spread_beyond) is set beside what their nested test R²
says: the spread of those R² and the regret (the best contender's R² above the reported law's). A warning that
works flags the runs with regret and leaves the others alone.

It also replays two ways of letting a flagged run pick among its contenders instead (only the final pick
changes, so the replay is exact): "consensus" (the law nearest the contenders' median prediction beyond train)
and "nearest slice" (the law best on the larger-scale validation slice alone). Both were measured and rejected;
see the README (Close calls).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from discovery.laws.fit import FitOptions, LawFit, fit_law, recipe_options  # noqa: E402
from discovery.laws.law import parse_law  # noqa: E402
from discovery.laws.shape import along  # noqa: E402
from discovery.search.close_calls import SPREAD_LIMIT, beyond, contenders, spread_beyond  # noqa: E402
from discovery.search.executors import stored_fit, stored_specs  # noqa: E402
from discovery.search.population import Member  # noqa: E402
from discovery.search.selection import combine  # noqa: E402
from discovery.search.store import Store  # noqa: E402
from discovery.tasks.data import load_frame  # noqa: E402
from discovery.tasks.spec import load_task  # noqa: E402
from evaluators.metrics import score  # noqa: E402
from evaluators.protocol import Protocol  # noqa: E402


def _refit(row, task, protocol: Protocol, seed: int) -> LawFit:
    """A stored candidate refit on all of (nested) train from its validated constants, as Campaign.finish does."""
    law = parse_law(row["formula"], task.symbols)
    return fit_law(law, protocol.train, task.targets, stored_specs(row["constant_specs"]),
                   recipe_options(FitOptions(seed=seed, n_starts=1), row["recipe"] or "linear"),
                   warm=stored_fit(row["fitted"], law, task.targets))


def consensus(fits: list[LawFit], seen, axes: list[int]) -> int:
    """Arm under study: the index of the law whose predictions a step beyond train lie closest to the pointwise
    median of all of them (median over group, target and axis of the widest gap, in the target's sd); ties keep
    the rank order. Needs three laws: with two, both are as far from their median."""
    if len(fits) < 3 or not all(f.ok for f in fits):
        return 0
    devs: list[list[float]] = [[] for _ in fits]
    for group, t in sorted(fits[0].fits):
        rows = seen.groups == group
        X, sd = seen.X[rows], float(np.std(seen.Y[rows, t]))
        if not sd > 0 or not all((group, t) in f.fits for f in fits):
            continue
        for index in axes:
            Xg = along(X, index, beyond(X[:, index]))
            with np.errstate(all="ignore"):
                preds = np.array([f.law.predict(Xg, f.fits[(group, t)].theta) for f in fits], dtype=float)
                centre = np.median(preds, axis=0)
                for i, p in enumerate(preds):
                    d = float(np.max(np.abs(p - centre))) / sd
                    devs[i].append(d if math.isfinite(d) else math.inf)
    if not devs[0]:
        return 0
    score = [statistics.median(d) for d in devs]
    return min(range(len(fits)), key=lambda i: (score[i], i))


def study_run(run_dir: Path) -> dict | None:
    store = Store(run_dir / "campaign.sqlite", readonly=True)
    meta = store.meta()
    if meta.get("status") != "finished":
        return None
    settings = meta["settings"]
    if not settings["task"].endswith("_nested"):  # its "test" would be a real test split
        raise SystemExit(f"{run_dir}: not a nested run ({settings['task']}); give a discovery_quality --nested root")
    task = load_task(settings["task"])
    protocol = Protocol(task, load_frame(task))
    members, slice_nmse = [], {}
    for r in store.candidates():
        if r["status"] in ("evaluated", "failed") and r["val_nmse"] is not None:
            folds = json.loads(r["fold_nmse"]) if r["fold_nmse"] else []
            nmse = combine([float(r["val_nmse"]), *folds], settings.get("selection_rule", "mean")) if folds \
                else float(r["val_nmse"])
            members.append(Member(int(r["id"]), r["canonical_hash"], nmse, int(r["complexity"]),
                                  shape_ok=not r["shape"]))
            slice_nmse[int(r["id"])] = float(r["val_nmse"])
    best = min(members, key=lambda m: m.rank)
    laws = [best, *contenders(best, members)]
    fits = [_refit(store.candidate(m.id), task, protocol, settings["seed"]) for m in laws]
    store.db.close()
    axes = [i for i, v in enumerate(task.variables) if v.column in task.split.axes()]
    test = protocol.final_test(purpose="close-call study: nested test = the real validation slice")
    r2 = [max(-1.0, score(test.Y, f.predict(test)).r2) if f.ok else -1.0 for f in fits]
    r2 = [x if math.isfinite(x) else -1.0 for x in r2]
    spread = spread_beyond(fits, protocol.train, axes) if len(fits) > 1 else None
    flagged = spread is not None and spread > SPREAD_LIMIT
    pick = consensus(fits, protocol.train, axes) if flagged else 0
    # arm under study: the law best on the validation slice alone (the larger-scale one), ties by rank order
    nearest = min(range(len(laws)), key=lambda i: (slice_nmse[laws[i].id], i)) if flagged else 0
    return {"task": task.name.removesuffix("_nested"), "seed": settings["seed"], "contenders": len(laws) - 1,
            "spread_sd": spread, "flagged": flagged, "sldbench": task.sldbench,
            "r2_spread": max(r2) - min(r2), "regret": max(r2) - r2[0], "reported_r2": r2[0],
            "consensus_r2": r2[pick], "consensus_pick": pick, "nearest_r2": r2[nearest]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a nested discovery_quality directory")
    args = ap.parse_args()
    runs = sorted(p.parent for p in args.root.rglob("campaign.sqlite"))
    rows = [r for r in (study_run(p) for p in runs) if r is not None]
    print("| task | seed | contenders | spread (sd) | flagged | nested-test R² spread | regret | reported "
          "| consensus |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        spread = "–" if r["spread_sd"] is None else f"{r['spread_sd']:.3g}"
        print(f"| {r['task']} | {r['seed']} | {r['contenders']} | {spread} | {'yes' if r['flagged'] else ''} | "
              f"{r['r2_spread']:.3f} | {r['regret']:.3f} | {r['reported_r2']:.4f} | "
              f"{r['consensus_r2']:.4f}{' *' if r['consensus_pick'] else ''} |")
    flagged = [r for r in rows if r["flagged"]]
    quiet = [r for r in rows if not r["flagged"]]
    rho = spearmanr([r["spread_sd"] or 0.0 for r in rows], [r["r2_spread"] for r in rows]).statistic
    print(f"\n{len(rows)} runs; Spearman(spread, nested-test R² spread) = {rho:.2f}")
    for name, part in (("flagged", flagged), ("not flagged", quiet)):
        if part:
            print(f"{name}: {len(part)} runs, regret mean {statistics.fmean(r['regret'] for r in part):.3f}, "
                  f"max {max(r['regret'] for r in part):.3f}")
    arms(rows)


def arms(rows: list[dict]) -> None:
    """The reported law against the consensus pick: per task and per seed, as discovery_quality summarizes."""
    print("\n| task | reported (mean over seeds) | consensus | nearest slice |\n|---|---|---|---|")
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        print(f"| {task} | {statistics.fmean(r['reported_r2'] for r in mine):.4f} | "
              f"{statistics.fmean(r['consensus_r2'] for r in mine):.4f} | "
              f"{statistics.fmean(r['nearest_r2'] for r in mine):.4f} |")
    sld = [r for r in rows if r["sldbench"]]
    n_tasks = len({r["task"] for r in sld})
    for key in ("reported_r2", "consensus_r2", "nearest_r2"):
        per_seed = {}
        for seed in sorted({r["seed"] for r in sld}):
            mine = [r[key] for r in sld if r["seed"] == seed]
            if len(mine) == n_tasks:
                per_seed[seed] = statistics.fmean(mine)
        if per_seed:
            values = list(per_seed.values())
            print(f"{key.removesuffix('_r2')}: 8-task mean per seed {' / '.join(f'{v:.4f}' for v in values)}; "
                  f"mean {statistics.fmean(values):.4f}, worst {min(values):.4f}")


if __name__ == "__main__":
    main()
