"""`kepler tasks`: the curated and user tasks, with rows, groups, variables and sources."""
from __future__ import annotations

import argparse
import json

from rich.table import Table

from discovery.cli.console import make_console
from discovery.tasks.spec import list_tasks, load_task

console = make_console()


def cmd_tasks(args: argparse.Namespace) -> int:
    from discovery.tasks.data import load_frame

    table = Table(title="Kepler tasks", show_lines=False)
    for col in ("task", "rows train/test", "groups", "variables → target", "constant limit", "source"):
        table.add_column(col, overflow="fold")
    rows = []
    for name in list_tasks():
        task = load_task(name)
        frame = load_frame(task)
        n_train = int((frame["split"] == "train").sum())
        n_test = int((frame["split"] == "test").sum())
        groups = frame["group"].nunique()
        mapping = ", ".join(f"{v.symbol}={v.column}" for v in task.variables) + " → " + ", ".join(task.targets)
        limit = "none" if task.constant_limit is None else str(task.constant_limit)
        rows.append(dict(task=name, train=n_train, test=n_test, groups=groups, variables=mapping,
                         constant_limit=task.constant_limit, source=task.paper))
        table.add_row(name, f"{n_train}/{n_test}", str(groups), mapping, limit, task.paper)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        console.print(table)
    return 0


def add_commands(sub) -> None:
    """Register `tasks` on the main parser's subparsers."""
    p = sub.add_parser("tasks", help="list the curated tasks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tasks)
