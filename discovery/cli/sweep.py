"""`kepler sweep`: one campaign per (task, seed, proposer), in parallel, resumable, one table at the end.

Registered into the main parser by `add_commands(subparsers)`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from discovery.cli.console import make_console, showing

console = make_console()
err_console = make_console(stderr=True)

BUDGET = ("generations", "population", "islands", "children", "time_limit", "fit_starts")


def _progress_view(sweep) -> Group:
    p = sweep.progress()
    elapsed = time.monotonic() - p.started
    head = Text.assemble(("sweep ", "bold"), str(sweep.dir), "   runs: ",
                         (f"{p.done} done", "green"), " / ", (f"{p.running} running", "cyan"), " / ",
                         f"{p.queued} queued", *((" / ", (f"{p.failed} failed", "red")) if p.failed else ()),
                         f"   of {p.total}   {elapsed:.0f}s   {p.status}")
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
    table.add_column("task")
    table.add_column("best validation R² so far", justify="right")
    table.add_column("law")
    for task in sweep.settings.tasks:
        best = p.best_by_task.get(task)
        table.add_row(task, "–" if best is None else f"{best:.4f}", (p.best_law_by_task.get(task) or "")[:90])
    return Group(head, table)


def _final_table(sweep, rows: list[dict]) -> Table:
    from discovery.search.sweep import fmt, mean_sd

    table = Table(title=f"Sweep {sweep.dir}: test R² of the best law, mean ± sd over seeds "
                        f"{','.join(map(str, sweep.settings.seeds))}")
    for col in ("task", "proposer", "runs", "R² test best law", "R² test human law (Kepler fit)", "best law (seed)",
                "close calls", "search s (max)", "peak MB (max)"):
        table.add_column(col, overflow="fold")
    for r in rows:
        human = f"{fmt(r['human_test_r2'])} ({r['human_law']})" if r["human_law"] else "–"
        law = f"{r['best_law']} ({r['best_law_seed']})" if r["best_law"] else "–"
        table.add_row(r["task"], r["proposer"], f"{r['runs_finished']}/{r['runs']}", mean_sd(r), human, law,
                      r["close_calls"] or "–", fmt(r["wall_seconds_max"], 0), fmt(r["peak_rss_mb_max"], 0))
    return table


def cmd_sweep(args: argparse.Namespace) -> int:
    from discovery.search.executors import DaskUnavailable

    try:
        return _sweep(args)
    except DaskUnavailable as exc:  # printed here, escaped: rich markup would eat the "[dask]" of the extra
        err_console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2


def _sweep(args: argparse.Namespace) -> int:
    from discovery.search.executors import require_dask
    from discovery.search.sweep import Sweep, load_sweep_file, make_sweep_settings

    if args.executor == "dask":
        require_dask()  # before anything is created
    if args.resume:
        sweep = Sweep.resume(Path(args.resume), executor=args.executor, workers=args.workers,
                             scheduler=args.scheduler)
    else:
        overrides = {k: getattr(args, k) for k in BUDGET}
        overrides.update(tasks=args.tasks, seeds=args.seeds, executor=args.executor, workers=args.workers,
                         scheduler=args.scheduler,
                         proposers=[p.strip() for p in args.proposer.split(",")] if args.proposer else None)
        if args.config:
            settings = load_sweep_file(Path(args.config), **overrides)
        else:
            if not args.tasks:
                raise ValueError("give --tasks (all, sldbench, or a,b,c), a --config sweep file, or --resume DIR")
            settings = make_sweep_settings(**overrides)
        if settings.executor == "dask":
            require_dask()
        sweep = Sweep.create(settings, Path(args.out) if args.out else None)
    where = err_console if args.json else console
    where.print(f"sweep directory: {sweep.dir}  "
                f"({len(sweep.settings.runs())} runs, executor {sweep.settings.executor})")
    try:
        if args.json:
            rows = sweep.run()
        else:
            with showing(Live(get_renderable=lambda: _progress_view(sweep), console=console, refresh_per_second=2)):
                rows = sweep.run()
        failed = [dict(r) for r in sweep.rows() if r["status"] != "finished"]
    except KeyboardInterrupt:
        console.print(f"\n[yellow]stopped.[/] Finished runs are kept; the others resume from their own store:\n"
                      f"  kepler sweep --resume {sweep.dir}")
        return 130
    finally:
        sweep.close()
    if args.json:
        print(json.dumps(rows, indent=2, default=float))
    else:
        console.print(_final_table(sweep, rows))
        console.print(f"written: {sweep.dir / 'sweep_table.md'}, {sweep.dir / 'sweep_table.json'}")
    for r in failed:
        err_console.print(f"[red]{r['status']}[/] {r['task']} {r['proposer']} seed {r['seed']}: {r['error'] or ''}")
    if failed:
        err_console.print(f"resume the unfinished runs with: kepler sweep --resume {sweep.dir}")
        return 1
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="run one campaign per (task, seed, proposer) and tabulate the results")
    p.add_argument("--tasks", help="all, sldbench (the SLDBench tasks), or a,b,c")
    p.add_argument("--seeds", help="0-4, 0,2,5 or 3 (default 0)")
    p.add_argument("--proposer", help="offline, llm, mixed, or a comma list (default offline)")
    p.add_argument("--config", help="TOML sweep file (tasks, seeds, proposers, executor, [campaign] settings)")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep: finished runs are kept")
    p.add_argument("--generations", type=int)
    p.add_argument("--population", type=int, help="members kept per island")
    p.add_argument("--islands", type=int)
    p.add_argument("--children", type=int, help="candidates per island per generation")
    p.add_argument("--time-limit", type=float, dest="time_limit", help="seconds of search per campaign")
    p.add_argument("--fit-starts", type=int, dest="fit_starts", help="quasi-random starts per candidate fit")
    p.add_argument("--executor", choices=["serial", "local", "dask"],
                   help="where campaigns run: local process pool (default), dask cluster, or serial in this process")
    p.add_argument("--workers", type=int, help="campaigns at once: pool processes (local) or LocalCluster workers "
                                               "(dask); default one per core")
    p.add_argument("--scheduler", help="an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--out", help="sweep directory (default results/sweeps/<time>)")
    p.add_argument("--json", action="store_true", help="no live progress; print the sweep table as JSON")
    p.set_defaults(func=cmd_sweep)
