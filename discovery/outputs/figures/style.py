"""The one look every Kepler figure shares, so figures can go into a paper as they are.

- PDF and PostScript embed TrueType (Type 42) fonts, never Type 3 (`pdf.fonttype = 42`); SVG keeps text.
- The Okabe-Ito palette (distinguishable with the common colour-vision deficiencies) for categories,
  and viridis (perceptually uniform, colour-blind safe) for a continuous held variable.
- Explanations go in legends and axis labels, not titles; axis labels carry the task file's units;
  group names are printed readably (`('MBZUAI/LaMini-GPT-124M', 'flan')` becomes `LaMini-GPT-124M, flan`).
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Callable, Iterator

import matplotlib as mpl
import numpy as np
from cycler import cycler
from matplotlib.colors import Colormap, ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

# Okabe & Ito (2008): blue, orange, bluish green, vermillion, reddish purple, sky blue, yellow, black
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
SPLITS = {  # split -> (legend label, colour, marker)
    "train": ("train (fit part)", PALETTE[0], "o"),
    "validation": ("validation", PALETTE[1], "s"),
    "test": ("test", PALETTE[3], "^"),
}
LAW_COLOR = "#222222"
HUMAN_STYLE = {"color": "#555555", "ls": (0, (4, 2)), "lw": 1.1}  # the human law: dashed grey
EXTRAPOLATION = {"color": "0.55", "alpha": 0.13, "lw": 0}
CMAP_RANGE = (0.0, 0.88)  # viridis without its palest yellow, which vanishes on white

RC = {
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",
    "font.family": "DejaVu Sans", "mathtext.fontset": "dejavusans",
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7,
    "axes.prop_cycle": cycler(color=PALETTE), "axes.spines.top": False, "axes.spines.right": False,
    "axes.linewidth": 0.6, "lines.linewidth": 1.3, "legend.frameon": False, "legend.handlelength": 1.8,
    "savefig.dpi": 200, "figure.dpi": 100, "image.cmap": "viridis",
}


@contextmanager
def use() -> Iterator[None]:
    """Kepler's matplotlib settings, for drawing and for saving (fonts are chosen when a file is written)."""
    with mpl.rc_context(RC):
        yield


def styled(make: Callable[..., Figure]) -> Callable[..., Figure]:
    """Decorator: a figure-building function runs under Kepler's style."""
    @wraps(make)
    def wrapper(*args, **kwargs) -> Figure:
        with use():
            return make(*args, **kwargs)
    return wrapper


def figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, out_dir: Path, name: str, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with use():
        for ext in formats:
            path = out_dir / f"{name}.{ext}"
            fig.savefig(path, metadata={"Creator": "Kepler"} if ext in ("pdf", "svg") else None)
            paths.append(path)
    return paths


def legend_columns(fig: Figure, column_inches: float = 2.3) -> int:
    """As many legend columns below the panels as fit the figure's width."""
    return max(1, min(4, int(fig.get_figwidth() // column_inches)))


def cmap() -> Colormap:
    base = mpl.colormaps["viridis"]
    return ListedColormap(base(np.linspace(*CMAP_RANGE, 256)), name="kepler_viridis")


def norm(values: np.ndarray, log: bool) -> Normalize:
    v = values[np.isfinite(values)]
    lo, hi = (float(v.min()), float(v.max())) if len(v) else (0.0, 1.0)
    if hi <= lo:
        hi = lo * 1.01 + 1e-12 if lo > 0 else lo + 1.0
    return LogNorm(lo, hi) if log and lo > 0 else Normalize(lo, hi)


def logscale(values: np.ndarray) -> bool:
    """A positive variable spanning more than a factor 5 is drawn on a log axis."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return len(v) > 1 and v.min() > 0 and v.max() / v.min() > 5


def log_x(ax) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


def variable_label(variable, with_symbol: bool = True, short: bool = False) -> str:
    """`vocab_size V (tokens)`: the column, its formula symbol and the task file's unit; `short` (for a colour
    bar) drops a column name longer than 14 characters: `N (parameters)`."""
    unit = f" ({variable.unit})" if variable.unit else ""
    if short and len(variable.column) > 14:
        return f"${variable.symbol}${unit}"
    symbol = f" ${variable.symbol}$" if with_symbol and variable.symbol != variable.column else ""
    return f"{variable.column}{symbol}{unit}"


def format_value(x: float) -> str:
    """A compact number for legends: 3 significant digits, powers of ten for large or small magnitudes."""
    if not np.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-2):
        mant, exp = f"{x:.2e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return (f"{mant}×" if mant != "1" else "") + f"10$^{{{int(exp)}}}$"
    return f"{x:.3g}"
