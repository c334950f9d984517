"""How strongly to prefer simpler laws when reporting one: parsimony rules compared on finished runs.

    python benchmarks/parsimony_study.py results/quality/main-nested [more benchmark directories...]

Give it nested `benchmarks/discovery_quality.py --nested` directories (one arm's runs may be split over several;
a later directory's run of the same task and seed replaces an earlier one's). Nothing is fitted: every run's
final report already refit its Pareto front on (nested) train and scored it on (nested) test, which is the
validation slice a real campaign selects on, so nothing here reads a real test split. Every rule below picks
a law from that front, the only place any of them can pick from: a law off the front is beaten on both error
and complexity by one on it. The campaign's own rule (`population.PARSIMONY`) is checked to pick the law each
run reported.

Rules: P(lam), the least selection NMSE x (1 + lam x complexity); T(tau), the simplest front law whose selection
NMSE is within a factor 1 + tau of the campaign's pick (a "one-standard-error" style rule).
"""
from __future__ import annotations

import argparse
import json
import math
import sqlite3
import statistics
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.discovery_quality import NESTED, clip  # noqa: E402
from discovery.search.population import PARSIMONY, Member, pareto_front  # noqa: E402
from discovery.search.selection import combine  # noqa: E402
from discovery.tasks.spec import load_task  # noqa: E402

Rule = Callable[[list[Member]], Member]


def weighted(lam: float) -> Rule:
    return lambda front: min(front, key=lambda m: (m.val_nmse * (1 + lam * m.complexity), m.id))


def within(tau: float) -> Rule:
    def pick(front: list[Member]) -> Member:
        limit = (1 + tau) * weighted(PARSIMONY)(front).val_nmse
        return min((m for m in front if m.val_nmse <= limit), key=lambda m: (m.complexity, m.val_nmse, m.id))
    return pick


RULES: dict[str, Rule] = {f"P({lam:g})": weighted(lam) for lam in (PARSIMONY, 0.01, 0.02, 0.05)}
RULES |= {f"T({tau:g})": within(tau) for tau in (0.05, 0.1, 0.25, 0.5)}
CURRENT = f"P({PARSIMONY:g})"


def study_run(run_dir: Path) -> dict:
    """The run's front as the campaign ranked it, each law's stored test R2, and what every rule picks."""
    db = sqlite3.connect(run_dir / "campaign.sqlite")
    db.row_factory = sqlite3.Row
    rows = db.execute("SELECT c.id, c.canonical_hash, c.complexity, f.val_nmse, f.fold_nmse, f.shape FROM candidates c "
                      "JOIN fits f ON f.candidate_id = c.id WHERE c.status = 'evaluated' AND f.val_nmse IS NOT NULL"
                      ).fetchall()
    test = {r["candidate_id"]: r["test_r2"] for r in db.execute("SELECT candidate_id, test_r2 FROM final")}
    best_id = next((r["candidate_id"] for r in db.execute("SELECT candidate_id FROM final WHERE role = 'best'")), None)
    db.close()
    members = []
    for r in rows:  # what the campaign compares (Campaign._selection_nmse)
        extra = json.loads(r["fold_nmse"]) if r["fold_nmse"] else []
        nmse = combine([float(r["val_nmse"]), *extra]) if extra else float(r["val_nmse"])
        members.append(Member(r["id"], r["canonical_hash"], nmse, int(r["complexity"]), shape_ok=not r["shape"]))
    front = pareto_front(members)
    picks = {name: rule(front).id for name, rule in RULES.items()}
    if picks[CURRENT] != best_id:
        raise SystemExit(f"{run_dir}: the campaign's rule picks {picks[CURRENT]} here, but the run reported {best_id}")
    return {name: clip(test.get(cid)) for name, cid in picks.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("quality_dirs", nargs="+")
    args = parser.parse_args()
    runs: dict[tuple[str, int], dict] = {}
    for root in args.quality_dirs:
        for best in sorted(Path(root).glob("*/*/*/best.json")):
            result = json.loads(best.read_text())
            runs[(result["task"], result["seed"])] = {**study_run(best.parent), "human": clip(
                result["human"][0]["test"]["r2"] if result.get("human") else None)}
    sldbench = {t for t, _ in runs if load_task(t.removesuffix(NESTED)).sldbench}
    seeds = sorted({s for t, s in runs if t in sldbench and all((u, s) in runs for u in sldbench)})
    print(f"{len(runs)} runs; seeds with every one of the {len(sldbench)} SLDBench tasks: {seeds}\n")
    print("| rule | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | worst seed | other tasks | "
          "tasks >= human per seed |")
    print("|---" * (len(seeds) + 5) + "|")
    for name in RULES:
        per_seed = [statistics.fmean(runs[(t, s)][name] for t in sldbench) for s in seeds]
        others = [r[name] for (t, _), r in runs.items() if t not in sldbench]
        at_least = [sum(runs[(t, s)][name] >= runs[(t, s)]["human"] for t in sldbench) for s in seeds]
        print(f"| {name} | " + " | ".join(f"{x:.4f}" for x in per_seed) +
              f" | {statistics.fmean(per_seed):.4f} | {min(per_seed):.4f} | "
              f"{statistics.fmean(others) if others else math.nan:.4f} | {at_least} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
