"""`kepler` command line: one module per command group, assembled into one parser here.

Each command module registers its subcommands with `add_commands(subparsers)` and imports the
engine only inside its command functions, so `kepler --help` starts without loading SymPy.
"""
from __future__ import annotations

import argparse
import sys

from rich.markup import escape

from discovery.cli import bench, derive, discover, fit, papers, sweep, tasks
from discovery.cli.console import make_console
from discovery.tasks.spec import TaskError

err_console = make_console(stderr=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kepler", description="Discover scaling laws from experimental data.")
    parser.add_argument("--version", action="version", version=f"kepler {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (tasks, fit, bench, discover, papers, derive, sweep):
        commands.add_commands(sub)
    return parser


def version() -> str:
    """The installed distribution's version (kepler-laws)."""
    from importlib import metadata

    try:
        return metadata.version("kepler-laws")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (TaskError, ValueError) as exc:  # LawError, DataError and TaskError are ValueErrors
        err_console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
