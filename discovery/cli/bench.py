"""`kepler bench`: the human laws on the official test splits; `--runs DIR` adds the discovered laws."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from discovery.cli.console import make_console, num
from discovery.cli.owndata import add_options as add_owndata_options
from discovery.cli.tasks import report_broken
from discovery.tasks.spec import list_tasks, load_task

console = make_console()


def _bench_each(names: list[str], seed: int, progress) -> tuple[list, int]:
    """Bench task by task: a task that cannot be benched is reported on its own line, the others still are."""
    from evaluators.benchmark import run_bench

    rows, broken = [], 0
    for name in names:
        try:
            rows.extend(run_bench([name], seed=seed, progress=progress))
        except ValueError as exc:  # TaskError, DataError, LawError of this task
            report_broken(name, exc)
            broken += 1
    return rows, broken


def cmd_bench(args: argparse.Namespace) -> int:
    from evaluators.benchmark import write_results

    names = list(args.tasks or ([] if args.csv else list_tasks()))
    if args.csv:
        from discovery.cli.owndata import task_from_csv

        names.append(task_from_csv(args, Path(args.out)))
    if args.json:
        rows, broken = _bench_each(names, args.seed, None)
    else:
        with console.status("benchmarking human laws") as status:
            rows, broken = _bench_each(names, args.seed, lambda m: status.update(f"bench: {m}"))
    paths = write_results(rows, Path(args.out))
    if args.runs:
        return bench_with_runs(args, rows, paths) or (1 if broken else 0)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 1 if broken else 0
    table = Table(title="Human laws on the test split (fitted on train by Kepler, or the paper's constants)")
    for col in ("task", "law", "constants", "R² test", "NMSE", "NMAE", "published R²", "fit s"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.task, r.law, r.variant, num(r.r2, 3), num(r.nmse), num(r.nmae),
                      num(r.published_r2, 3), num(r.fit_seconds, 2))
    console.print(table)
    if not rows:
        console.print("no human law to bench: add [[human_laws]] to the task file")
    console.print(f"written: {', '.join(str(p) for p in paths)}")
    return 1 if broken else 0


def bench_with_runs(args: argparse.Namespace, rows: list, paths: list[Path]) -> int:
    """Extend the human-law bench with the best discovered law of every finished run under --runs."""
    from discovery.outputs.export.leaderboard import render
    from evaluators.benchmark import leaderboard, spread, write_leaderboard

    board = leaderboard(rows, Path(args.runs))
    paths = [*paths, *write_leaderboard(board, Path(args.out))]
    tex = Path(args.out) / "leaderboard.tex"
    known = set(list_tasks())
    tex.write_text(render(board, {n: load_task(n).title for n in dict.fromkeys(r.task for r in board) if n in known}))
    paths.append(tex)
    if args.json:
        print(json.dumps([r.as_dict() for r in board], indent=2))
        return 0
    if args.format == "latex":
        print(tex.read_text(), end="")
        return 0
    table = Table(title=f"Leaderboard: human vs discovered laws on the test split (runs under {args.runs}; "
                        "over seeds: mean ± sd [min, max])")
    for col in ("task", "entry", "law", "constants", "complexity", "R² val", "R² test", "NMSE", "NMAE"):
        table.add_column(col, overflow="fold")
    for r in board:
        if r.entry == "discovered" and args.format != "runs":
            continue  # each run: with --format runs (all of them are in leaderboard.md/.csv/.json)
        over = r.entry == "discovered (over seeds)"
        table.add_row(r.task, r.entry, r.law, _count(r.n_constants), _count(r.complexity), num(r.validation_r2),
                      spread(r.r2, r.r2_sd, r.r2_min, r.r2_max) if over else num(r.r2),
                      spread(r.nmse, r.nmse_sd, r.nmse_min, r.nmse_max) if over else num(r.nmse), num(r.nmae))
    console.print(table)
    console.print(f"written: {', '.join(str(p) for p in paths)}")
    return 0


def _count(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def add_commands(sub) -> None:
    """Register `bench` on the main parser's subparsers."""
    p = sub.add_parser("bench", help="benchmark the human laws on the official test splits")
    p.add_argument("tasks", nargs="*", help="task names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/bench")
    p.add_argument("--runs", metavar="DIR", help="add the best discovered law of every finished run under DIR")
    p.add_argument("--json", action="store_true")
    p.add_argument("--format", choices=["table", "runs", "latex"], default="table",
                   help="with --runs: table (aggregates over seeds), runs (every run too), latex (print the booktabs "
                        "leaderboard; leaderboard.tex is written in every case)")
    add_owndata_options(p)
    p.set_defaults(func=cmd_bench)
