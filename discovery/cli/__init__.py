"""`kepler` command line: one module per command group, assembled into one parser here.

Each command module registers its subcommands with `add_commands(subparsers)` and imports the
engine only inside its command functions, so `kepler --help` starts without loading SymPy.
"""
from __future__ import annotations

import argparse
import gc
import os
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
    finally:
        # A command is done: the objects it made need no cycle collection as the interpreter exits (a full one over a
        # campaign's heap takes seconds on a busy machine, which Ctrl-C would otherwise wait for).
        gc.freeze()


def entry() -> None:
    """The `kepler` program: `main`, then exit. Interrupted (Ctrl-C, code 130), it exits at once, once its output
    is flushed and the formula helper stopped: the command has stopped its workers and closed its stores already,
    and tearing down a campaign's interpreter takes seconds more on a busy machine."""
    code = main()
    if code == 130:
        guard = sys.modules.get("discovery.laws.guard")
        if guard is not None:
            guard.stop_helper()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
