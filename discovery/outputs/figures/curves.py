"""The law along each variable, with the other variables held at levels the data were observed at.

One figure per variable, one panel per group (at most 12). In a panel, the law's curve is drawn at a
few observed levels of one held variable (the colour, with a colour bar), the remaining variables at
the most common observed setting in that level; each curve has its bootstrap band, and the human law
(fitted by Kepler on the same train rows) is drawn dashed at the same settings. Data points are marked
by split (train fit part, validation, test) and coloured by the held variable; points that do not sit
on a drawn setting are faded. The region beyond the train range along the variable is shaded.
"""
from __future__ import annotations

import math

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from discovery.laws.uncertainty import Bootstrap
from discovery.outputs.figures import style
from discovery.outputs.labels import group_label
from discovery.outputs.record import LawRecord
from discovery.tasks.dataset import Dataset

MAX_PANELS = 12
MAX_LEVELS = 5
GRID = 160


def clusters(values: np.ndarray, gap: float = 0.05) -> np.ndarray:
    """Cluster ids of one variable's values: a new cluster starts after a relative gap above `gap`."""
    u = np.unique(values)
    if len(u) <= 1:
        return np.zeros(len(values), dtype=int)
    if u.min() > 0:
        breaks = u[1:] / u[:-1] > 1 + gap
    else:
        breaks = np.diff(u) > gap * (u.max() - u.min())
    ids = np.concatenate([[0], np.cumsum(breaks)])
    return ids[np.searchsorted(u, values)]


def panels(record: LawRecord) -> list[tuple[str, int]]:
    keys = sorted(record.constants)
    if len(keys) <= MAX_PANELS:
        return keys
    pick = np.unique(np.linspace(0, len(keys) - 1, MAX_PANELS).round().astype(int))
    return [keys[i] for i in pick]


def colour_variable(record: LawRecord, X: np.ndarray, j: int) -> int | None:
    """The held variable to colour by: one the law uses, with the fewest observed levels (at least 2)."""
    used = record.law.expr.free_symbols
    best = None
    for i in range(X.shape[1]):
        if i == j:
            continue
        levels = len(np.unique(clusters(X[:, i])))
        if levels < 2:
            continue
        rank = (record.law.variables[i] not in used, levels)
        if best is None or rank < best[0]:
            best = (rank, i)
    return None if best is None else best[1]


def settings(X: np.ndarray, j: int, c: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to MAX_LEVELS (held values, rows on that setting) for the curves along variable j.

    The colour variable's levels are spread over its observed range; within a level, the other held
    variables take their most common observed setting (ties: the setting nearest the median)."""
    n, v = X.shape
    others = [i for i in range(v) if i != j]
    if not others:
        return [(np.zeros(v), np.ones(n, dtype=bool))]
    ids = np.column_stack([clusters(X[:, i]) for i in range(v)])
    if c is None:
        levels = [np.ones(n, dtype=bool)]
    else:  # the levels holding the rows at evenly spaced quantiles: well-observed levels over the whole range
        order = np.argsort(X[:, c], kind="stable")
        at = order[np.round(np.linspace(0.04, 0.96, MAX_LEVELS) * (n - 1)).astype(int)]
        pick = list(dict.fromkeys(ids[at, c].tolist()))
        levels = [ids[:, c] == p for p in pick]
    rest = [i for i in others if i != c]
    out = []
    for in_level in levels:
        rows = in_level.copy()
        if rest:
            combos, inverse, counts = np.unique(ids[in_level][:, rest], axis=0, return_inverse=True,
                                                return_counts=True)
            top = np.flatnonzero(counts == counts.max())
            med = np.median(X[in_level][:, rest], axis=0)
            centres = [np.median(X[in_level][inverse.ravel() == t][:, rest], axis=0) for t in top]
            dist = [np.sum(np.abs(np.log(np.abs(cc) + 1e-300) - np.log(np.abs(med) + 1e-300))) for cc in centres]
            chosen = top[int(np.argmin(dist))]
            rows[in_level] = inverse.ravel() == chosen
        held = np.median(X[rows], axis=0)
        out.append((held, rows))
    return out


def near(X: np.ndarray, held: np.ndarray, columns: list[int], rtol: float = 0.05) -> np.ndarray:
    """Rows of X whose `columns` are within `rtol` of the held values: the points on a drawn setting."""
    if not columns:
        return np.ones(len(X), dtype=bool)
    return np.all(np.isclose(X[:, columns], held[columns], rtol=rtol, atol=1e-12), axis=1)


def _band(boot: Bootstrap | None, law, X: np.ndarray, key) -> tuple[np.ndarray, np.ndarray] | None:
    if boot is None or key not in boot.samples:
        return None
    draws = boot.draws(law, X, key)
    if not len(draws):
        return None
    d = np.where(np.isfinite(draws), draws, np.nan)
    with np.errstate(all="ignore"):
        lo, hi = np.nanpercentile(d, [100 * boot.alpha, 100 * (1 - boot.alpha)], axis=0)
    return lo, hi


def _grid(lo: float, hi: float, log: bool) -> np.ndarray:
    if log:
        return np.geomspace(lo, hi * 1.6, GRID)
    return np.linspace(lo, hi + 0.08 * (hi - lo or 1.0), GRID)


def _panel(ax, record: LawRecord, key, parts: dict[str, Dataset], j: int, c: int | None, boot, human,
           colour_norm, cmap) -> None:
    g, t = key
    law = record.law
    X_all = np.vstack([d.X for d in parts.values()])
    train_X = np.vstack([d.X for s, d in parts.items() if s != "test"])
    log = style.logscale(X_all[:, j])
    grid = _grid(X_all[:, j].min(), X_all[:, j].max(), log)
    slices = settings(train_X if len(train_X) else X_all, j, c)
    colour_of = (lambda v: cmap(colour_norm(v))) if c is not None else (lambda v: style.LAW_COLOR)
    human_theta = human.constants.get(key) if human is not None else None
    on_slice = np.zeros(len(X_all), dtype=bool)
    for held, _ in slices:
        Xg = np.tile(held, (len(grid), 1))
        Xg[:, j] = grid
        col = colour_of(held[c]) if c is not None else style.LAW_COLOR
        band = _band(boot, law, Xg, key)
        if band is not None:
            ax.fill_between(grid, *band, color=col, alpha=0.2, lw=0, zorder=1)
        ax.plot(grid, law.predict(Xg, record.constants[key]), color=col, lw=1.4, zorder=3)
        if human_theta is not None and np.all(np.isfinite(human_theta)):
            ax.plot(grid, human.law.predict(Xg, human_theta), ls=style.HUMAN_STYLE["ls"], lw=style.HUMAN_STYLE["lw"],
                    color=col if c is not None else style.HUMAN_STYLE["color"], zorder=2)
        on_slice |= near(X_all, held, [i for i in range(X_all.shape[1]) if i != j])
    start = 0
    for split, d in parts.items():
        _, split_colour, marker = style.SPLITS[split]
        n = len(d)
        on = on_slice[start:start + n]
        start += n
        if not n:
            continue
        colours = cmap(colour_norm(d.X[:, c])) if c is not None else np.tile(to_rgba(split_colour), (n, 1))
        for mask, alpha in ((on, 0.95), (~on, 0.25)):
            if mask.any():
                ax.scatter(d.X[mask, j], d.Y[mask, t], s=16 if split != "test" else 22, c=colours[mask], marker=marker,
                           alpha=alpha, edgecolors="k" if split == "test" else "none", linewidths=0.5, zorder=4)
    lo_train, hi_train = (train_X[:, j].min(), train_X[:, j].max()) if len(train_X) else (np.nan, np.nan)
    if log:
        style.log_x(ax)
    ax.set_xlim(grid[0], grid[-1])
    if np.isfinite(hi_train):
        ax.axvspan(hi_train, grid[-1], zorder=0, **style.EXTRAPOLATION)
        if lo_train > grid[0]:
            ax.axvspan(grid[0], lo_train, zorder=0, **style.EXTRAPOLATION)


@style.styled
def curves_along(record: LawRecord, splits: dict[str, Dataset], j: int, boot: Bootstrap | None = None,
                 human: LawRecord | None = None) -> Figure:
    """The law along variable j (one panel per group), its band, the human law dashed, the data by split."""
    task = record.task
    keys = panels(record)
    cols = min(len(keys), 3)
    rows = math.ceil(len(keys) / cols)
    all_X = np.vstack([d.X for d in splits.values()])
    c = colour_variable(record, all_X, j)
    cmap = style.cmap()
    colour_norm = style.norm(all_X[:, c], style.logscale(all_X[:, c])) if c is not None else None
    width = 3.1 * cols + (0.9 if c is not None else 0.0)
    fig = style.figure(max(width, 5.6), 2.5 * rows + 1.0)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        parts = {s: d.subset(d.groups == key[0]) for s, d in splits.items()}
        _panel(ax, record, key, parts, j, c, boot, human, colour_norm, cmap)
        if len(record.constants) > 1:
            ax.set_title(group_label(record.key_label(key)), fontsize=7)
        ax.set_ylabel(record.targets[key[1]])
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    for i, ax in enumerate(axes[:len(keys)]):
        if i + cols >= len(keys):  # the lowest panel of its column
            ax.set_xlabel(style.variable_label(task.variables[j]))
    if c is not None:
        fig.colorbar(ScalarMappable(colour_norm, cmap), ax=axes[:len(keys)].tolist(), shrink=0.9, pad=0.02,
                     label=f"held: {style.variable_label(task.variables[c], short=True)}")
    fig.legend(handles=legend_handles(record, splits, boot, human, c is not None, len(keys)),
               loc="outside lower center", ncols=style.legend_columns(fig), fontsize=6.5)
    return fig


def legend_handles(record: LawRecord, splits, boot, human, coloured: bool, shown: int) -> list:
    law_colour = "0.35" if coloured else style.LAW_COLOR
    handles = [Line2D([], [], color=law_colour, lw=1.4, label=f"Kepler law {record.label}")]
    if human is not None:
        handles.append(Line2D([], [], color=law_colour if coloured else style.HUMAN_STYLE["color"],
                              ls=style.HUMAN_STYLE["ls"], lw=style.HUMAN_STYLE["lw"], label=f"human: {human.label}"))
    if boot is not None:
        level = int(round(boot.options.level * 100))
        handles.append(Patch(color=law_colour, alpha=0.25, lw=0,
                             label=f"{level}% bootstrap band ({boot.options.n_resamples} resamples)"))
    for split in splits:
        label, colour, marker = style.SPLITS[split]
        handles.append(Line2D([], [], ls="", marker=marker, color="0.45" if coloured else colour,
                              markeredgecolor="k" if split == "test" else "none", markersize=4.5,
                              label=f"{label} ({len(splits[split])})"))
    handles.append(Patch(label="beyond the train range", **{k: v for k, v in style.EXTRAPOLATION.items() if k != "lw"}))
    if coloured:
        handles.append(Line2D([], [], ls="", marker="o", color="0.45", alpha=0.25, markersize=4.5,
                              label="points off the drawn settings"))
    if shown < len(record.constants):
        handles.append(Line2D([], [], ls="", label=f"{shown} of {len(record.constants)} groups shown"))
    return handles
