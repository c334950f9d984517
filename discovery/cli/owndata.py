"""`--csv runs.csv --target loss --vars N,D [--group model] [--test RULE | --test-split-column COL]`: a user's
own table as a task in one command (for `kepler discover`, `fit` and `bench`); the inferred task file is
written beside the results so it can be edited and reused."""
from __future__ import annotations

import argparse
from pathlib import Path

from discovery.cli.console import make_console

err_console = make_console(stderr=True)


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("your own data (instead of a task name)")
    g.add_argument("--csv", metavar="FILE", help="a CSV with one row per run")
    g.add_argument("--target", help="the column to predict (e.g. loss)")
    g.add_argument("--vars", help="variable columns, comma-separated; SYMBOL=COLUMN names one (e.g. N=params,D)")
    g.add_argument("--group", help="a column whose rows get their own constants (e.g. model family)")
    g.add_argument("--test", metavar="RULE", help='which rows are test, e.g. "N >= 1e9" (comparisons, and/or/not)')
    g.add_argument("--test-split-column", dest="test_split_column", metavar="COLUMN",
                   help="a column of train/test labels (default: a column named split)")
    g.add_argument("--name", dest="task_name", help="the task's name (default: from the CSV file name)")


def task_name(args: argparse.Namespace) -> str:
    from discovery.tasks.inferred import _name_for

    return args.task_name or _name_for(Path(args.csv).stem)


def task_from_csv(args: argparse.Namespace, out_dir: Path) -> str:
    """Write the inferred task file into `out_dir`; its path, to load it by."""
    from discovery.tasks.inferred import TableSpec, write_task

    spec = TableSpec.from_options(args.target, args.vars, args.group, args.test, args.test_split_column,
                                  task_name(args))
    path = write_task(Path(args.csv), spec, out_dir)
    err_console.print(f"task inferred from {args.csv}: {path} (edit it and reuse it by its path)", soft_wrap=True)
    return str(path)
