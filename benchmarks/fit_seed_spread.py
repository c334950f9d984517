"""How much one law's selection scores depend on the fit seed, under the search's fit settings and stronger ones.

    KEPLER_TASKS_DIR=$D/nested/tasks KEPLER_DATA_DIR=$D/nested/data python benchmarks/fit_seed_spread.py \
        data_constrained_scaling_law_nested "A0*(N/100000000)**a0 + A1*(D/10000000000)**a1*(U/10000000000)**a2 + E"

A campaign's fit seed is its own seed, so a law whose fit lands in another basin on another seed gets another
score there, and which law a campaign reports can change with the seed although the same law was evaluated on
every one. This prints, per fit setting, the NMSE on the validation slice (fold 0) and on each further forward
fold for fit seeds 0..n-1 (`selection.fold_nmse`, as a campaign scores them: a failed fit scores 1e5), and the
CPU seconds those fits took. Give it a nested task (see `benchmarks/discovery_quality.py --nested`): nothing
here reads a real test split. The constants' bounds are the offline grammar's when the formula is one of its
classic families (`OfflineProposer.basis`), else the defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from discovery.laws.law import parse_law  # noqa: E402
from discovery.search.campaign import Campaign, CampaignSettings  # noqa: E402
from discovery.search.proposers.offline import OfflineProposer  # noqa: E402
from discovery.search.selection import fold_nmse  # noqa: E402
from discovery.tasks.data import load_frame  # noqa: E402
from discovery.tasks.spec import load_task  # noqa: E402
from evaluators.protocol import Protocol  # noqa: E402

SETTINGS = {  # changes to Campaign.search_fit_options
    "search (default)": {},
    "3 refinements": {"n_refine": 3},
    "polish": {"polish": True},
    "3 refinements + polish": {"n_refine": 3, "polish": True},
    "max_nfev 400": {"max_nfev": 400},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("formula")
    parser.add_argument("--recipe", default="log_huber", help="fit recipe (discovery.laws.fit.RECIPES)")
    parser.add_argument("--seeds", type=int, default=8, help="fit seeds 0..n-1")
    parser.add_argument("--folds", type=int, default=2, help="forward folds, the validation slice included")
    args = parser.parse_args()

    task = load_task(args.task)
    folds = Protocol(task, load_frame(task)).folds(args.folds)
    law = parse_law(args.formula, task.symbols, check_typos=False)
    proposer = OfflineProposer(task)
    specs = next((r[1] for r in map(proposer.render, proposer.basis()) if r and r[0] == args.formula), None)
    print(f"{task.name}: {args.formula}  (recipe {args.recipe}; bounds: {'grammar' if specs else 'defaults'})")
    for label, change in SETTINGS.items():
        nmse: list[list[float]] = [[] for _ in folds]
        t0 = time.process_time()
        for seed in range(args.seeds):
            opts = dataclasses.replace(Campaign.search_fit_options(CampaignSettings(task=task.name, seed=seed)),
                                       **change)
            for i, score in enumerate(fold_nmse(law, specs, args.recipe, folds, task.targets, opts)):
                nmse[i].append(score)
        cells = " | ".join(f"fold {i}: " + " ".join(f"{x:.3f}" for x in row) for i, row in enumerate(nmse))
        print(f"  {label:24s} {time.process_time() - t0:5.2f} s CPU  {cells}")


if __name__ == "__main__":
    main()
