"""`kepler tasks`: the curated and user tasks, with rows, groups, variables and sources.

A task whose file is broken or whose data cannot be loaded is reported on its own line (on stderr);
every other task is still listed, and the exit code is 1.
"""
from __future__ import annotations

import argparse
import json

from rich.markup import escape
from rich.table import Table

from discovery.cli.console import make_console
from discovery.tasks.spec import list_tasks, load_task, shadowed

console = make_console()
err_console = make_console(stderr=True)


def task_row(name: str) -> dict:
    """One line of the listing; raises the task's own error (TaskError, DataError, LawError)."""
    from discovery.tasks.data import load_frame
    from evaluators.benchmark import parse_human_law

    task = load_task(name)
    for human in task.human_laws:  # a human law that does not parse is the task's error, named with its file
        parse_human_law(task, human)
    frame = load_frame(task)
    mapping = ", ".join(f"{v.symbol}={v.column}" for v in task.variables) + " → " + ", ".join(task.targets)
    return dict(task=name, train=int((frame["split"] == "train").sum()), test=int((frame["split"] == "test").sum()),
                groups=int(frame["group"].nunique()), variables=mapping, constant_limit=task.constant_limit,
                source=task.paper, file=str(task.path) if task.path else None)


def report_broken(name: str, exc: Exception) -> None:
    err_console.print(f"[red]skipped[/] task {escape(name)}: {escape(str(exc))}", soft_wrap=True)


def cmd_tasks(args: argparse.Namespace) -> int:
    table = Table(title="Kepler tasks", show_lines=False)
    for col in ("task", "rows train/test", "groups", "variables → target", "constant limit", "source"):
        table.add_column(col, overflow="fold")
    rows, broken = [], 0
    for name in list_tasks():
        try:
            row = task_row(name)
        except ValueError as exc:  # TaskError, DataError, LawError: this task only
            report_broken(name, exc)
            broken += 1
            continue
        rows.append(row)
        limit = "none" if row["constant_limit"] is None else str(row["constant_limit"])
        table.add_row(name, f"{row['train']}/{row['test']}", str(row["groups"]), row["variables"], limit, row["source"])
    for used, hidden in shadowed():
        err_console.print(f"note: {escape(str(used))} hides {escape(str(hidden))} (same task name)", soft_wrap=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        console.print(table)
    return 1 if broken else 0


def add_commands(sub) -> None:
    """Register `tasks` on the main parser's subparsers."""
    p = sub.add_parser("tasks", help="list the curated and user tasks (KEPLER_TASKS_DIR, ./tasks)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tasks)
