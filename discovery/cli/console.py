"""The consoles the command line prints to, set up so its tables stay readable in a log.

Rich lays tables out for 80 columns when output is not a terminal (a file, a pipe, a CI log), which
folds formulas and even numbers over several lines. There, unless COLUMNS says otherwise, Kepler
prints `LOG_WIDTH` columns; on a terminal the terminal's own width is used.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.live import Live

LOG_WIDTH = 160


def make_console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:  # rich's own terminal detection
        console.width = LOG_WIDTH
    return console


@contextmanager
def showing(live: Live) -> Iterator[Live]:
    """Run a rich Live display; when output is not a terminal, end the line its last frame leaves open
    (rich leaves the cursor there, and the next print would run on from it)."""
    with live:
        yield live
    if not live.console.is_terminal:
        live.console.line()


def num(x: float | None, digits: int = 4) -> str:
    """A score or constant for a table: 4 significant digits, scientific when very large or small."""
    if x is None:
        return "–"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.{digits}f}"
