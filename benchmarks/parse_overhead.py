"""What the parser's hardening costs on the normal path: the offline proposer's own laws, old vs new, in turns.

The formulas are the ones the offline grammar renders for every curated task (the texts a campaign
parses thousands of), collected once. Each is parsed (and, separately, compiled: prediction,
Jacobian, variable projection) by the baseline's `parse_law` (law.py of a git ref, loaded as its own
module) and by this checkout's path of an offline campaign: `parse_bounded(..., light_in_process=True)`,
which adds the time-bound check. Rounds alternate between the two (and which goes first), so both see
the same machine load and caches.

    python benchmarks/parse_overhead.py [--baseline main] [--rounds 3] [--per-task 40]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from discovery.laws import guard  # noqa: E402
from discovery.search.proposers.base import ProposalContext  # noqa: E402
from discovery.search.proposers.offline import OfflineProposer  # noqa: E402
from discovery.tasks.spec import list_tasks, load_task  # noqa: E402


def offline_formulas(per_task: int) -> list[tuple[str, list[str], int | None]]:
    """(text, variables, constant limit) of what the offline grammar proposes, for every curated task."""
    out = []
    for name in list_tasks():
        task = load_task(name)
        proposer = OfflineProposer(task)
        for seed in range(3):
            ctx = ProposalContext(task=task, generation=0, island=0, n=per_task // 3, seed=seed)
            for cand in proposer.propose([ctx])[0].candidates:
                out.append((cand.formula, task.symbols, task.constant_limit))
    return out


def load_baseline(ref: str):
    text = subprocess.run(["git", "show", f"{ref}:discovery/laws/law.py"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="kepler-parse-baseline-")) / "baseline_law.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("baseline_law", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_law"] = module
    spec.loader.exec_module(module)
    return module


def timed(parse, formulas, compile_too: bool) -> float:
    t0 = time.perf_counter()
    for text, symbols, limit in formulas:
        law = parse(text, symbols, max_constants=limit)
        if compile_too:
            _ = law._predict, law._jacobian, law.separable
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-task", type=int, default=40)
    args = ap.parse_args()
    formulas = offline_formulas(args.per_task)
    baseline = load_baseline(args.baseline)
    heavy = sum(1 for text, _, _ in formulas if not guard.is_light(guard.syntax_tree(text)))

    def ours(text, symbols, max_constants=None):
        return guard.parse_bounded(text, symbols, max_constants=max_constants, light_in_process=True)

    timed(baseline.parse_law, formulas, True)  # warm SymPy's caches and lambdify's imports for both
    timed(ours, formulas, True)
    rows = {"parse": {"baseline": [], "new": []}, "parse + compile": {"baseline": [], "new": []}}
    for r in range(args.rounds):
        for label, compile_too in (("parse", False), ("parse + compile", True)):
            order = [("baseline", baseline.parse_law), ("new", ours)]
            for who, parse in order if r % 2 == 0 else order[::-1]:  # who goes first alternates (SymPy's caches)
                rows[label][who].append(timed(parse, formulas, compile_too))
    n = len(formulas)
    print(f"{n} offline-grammar formulas from {len(list_tasks())} tasks ({heavy} not light: sent to the helper); "
          f"median of {args.rounds} rounds, in turns")
    print("| step | baseline (ms/formula) | this checkout (ms/formula) | ratio |")
    print("|---|---|---|---|")
    for label, both in rows.items():
        b, c = statistics.median(both["baseline"]) / n * 1e3, statistics.median(both["new"]) / n * 1e3
        print(f"| {label} | {b:.2f} | {c:.2f} | {c / b:.3f} |")


if __name__ == "__main__":
    main()
