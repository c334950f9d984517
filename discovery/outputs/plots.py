"""Figures of a fitted law (PNG and PDF, matplotlib's Agg canvas; no pyplot, no display).

- observed vs predicted, with train, validation and test points marked;
- the law's curves along the scale axis per group, the extrapolated region shaded, bootstrap bands;
- residuals along each variable;
- the Pareto front of complexity vs validation error, and the best validation score per generation
  (these two need the run's store).
"""
from __future__ import annotations

import json
import math
import sqlite3
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from discovery.laws.uncertainty import Bootstrap
from discovery.outputs.record import LawRecord
from discovery.tasks.dataset import Dataset

SPLIT_STYLE = {  # split -> (label, color, marker)
    "train": ("train (fit part)", "#4C72B0", "o"),
    "validation": ("validation", "#DD8452", "s"),
    "test": ("test", "#C44E52", "^"),
}
MAX_PANELS = 12
MAX_CURVES = 8


def _short(text: str, n: int = 38) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _logscale(values: np.ndarray) -> bool:
    v = values[np.isfinite(values)]
    return len(v) > 1 and v.min() > 0 and v.max() / v.min() > 5


def _set_log_x(ax) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


def _grid(lo: float, hi: float, log: bool, n: int = 120) -> np.ndarray:
    return np.geomspace(lo, hi, n) if log else np.linspace(lo, hi, n)


def axis_index(record: LawRecord) -> int:
    """The scale axis: the task's validation axis if it is a variable, else the first variable."""
    columns = record.task.columns
    axis = record.task.split.validation_axis
    return columns.index(axis) if axis in columns else 0


def observed_vs_predicted(record: LawRecord, splits: dict[str, Dataset]) -> Figure:
    n_t = len(record.targets)
    fig = Figure(figsize=(4.6 * min(n_t, 3), 4.3 * math.ceil(n_t / 3)), layout="constrained")
    axes = fig.subplots(math.ceil(n_t / 3), min(n_t, 3), squeeze=False).ravel()
    for t, name in enumerate(record.targets):
        ax = axes[t]
        everything = []
        for split, data in splits.items():
            label, color, marker = SPLIT_STYLE[split]
            pred = record.predict(data)[:, t]
            ax.scatter(data.Y[:, t], pred, s=18, c=color, marker=marker, alpha=0.75, label=f"{label} ({len(data)})",
                       edgecolors="none")
            everything += [data.Y[:, t], pred]
        v = np.concatenate(everything)
        v = v[np.isfinite(v)]
        if len(v):
            lo, hi = v.min(), v.max()
            pad = 0.03 * (hi - lo or 1)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.4", lw=0.8, ls="--", label="y = x")
        ax.set_xlabel(f"observed {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[n_t:]:
        ax.set_visible(False)
    fig.suptitle(f"{record.task.name}: law {record.label}, constants fitted on all of train", fontsize=10)
    return fig


def _panels(record: LawRecord) -> list[tuple[str, int]]:
    keys = sorted(record.constants)
    if len(keys) <= MAX_PANELS:
        return keys
    pick = np.unique(np.linspace(0, len(keys) - 1, MAX_PANELS).round().astype(int))
    return [keys[i] for i in pick]


def _clusters(values: np.ndarray, gap: float = 0.05) -> np.ndarray:
    """Cluster ids of one variable's values: a new cluster starts after a relative gap above `gap`."""
    u = np.unique(values)
    if len(u) == 1:
        return np.zeros(len(values), dtype=int)
    if u.min() > 0:
        breaks = u[1:] / u[:-1] > 1 + gap
    else:
        breaks = np.diff(u) > gap * (u.max() - u.min())
    ids = np.concatenate([[0], np.cumsum(breaks)])
    return ids[np.searchsorted(u, values)]


def _settings(X_others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Settings of the non-axis variables: (label per row, median values per setting)."""
    if X_others.shape[1] == 0:
        return np.zeros(len(X_others), dtype=int), np.zeros((1, 0))
    ids = np.column_stack([_clusters(X_others[:, i]) for i in range(X_others.shape[1])])
    combos, labels = np.unique(ids, axis=0, return_inverse=True)
    centers = np.array([np.median(X_others[labels.ravel() == c], axis=0) for c in range(len(combos))])
    return labels.ravel(), centers


def _band(boot: Bootstrap, law, X: np.ndarray, key) -> tuple[np.ndarray, np.ndarray] | None:
    draws = boot.draws(law, X, key) if key in boot.samples else np.empty((0, len(X)))
    if not len(draws):
        return None
    lo, hi = np.nanpercentile(np.where(np.isfinite(draws), draws, np.nan), [100 * boot.alpha, 100 * (1 - boot.alpha)],
                              axis=0)
    return lo, hi


def _curve_panel(ax, record: LawRecord, key, splits: dict[str, Dataset], boot: Bootstrap | None, j: int) -> None:
    g, t = key
    law = record.law
    parts = {s: d.subset(d.groups == g) for s, d in splits.items()}
    X_all = np.vstack([d.X for d in parts.values()])
    others = [i for i in range(X_all.shape[1]) if i != j]
    labels, centers = _settings(X_all[:, others])
    log_x = _logscale(X_all[:, j])
    train_max = max((d.X[:, j].max() for s, d in parts.items() if s != "test" and len(d)), default=np.nan)
    theta = record.constants[key]
    as_curves = len(centers) <= MAX_CURVES
    colors = [f"C{i % 10}" for i in range(len(centers))]
    start = 0
    for split, d in parts.items():
        label, color, marker = SPLIT_STYLE[split]
        rows = labels[start:start + len(d)]
        start += len(d)
        if len(d):
            c = [colors[i] for i in rows] if as_curves and others else color
            ax.scatter(d.X[:, j], d.Y[:, t], s=16, c=c, marker=marker, edgecolors="k" if split == "test" else "none",
                       linewidths=0.5, zorder=3)
    if as_curves:
        grid = _grid(X_all[:, j].min(), X_all[:, j].max(), log_x)
        for ci, center in enumerate(centers):
            Xg = np.empty((len(grid), X_all.shape[1]))
            Xg[:, j] = grid
            Xg[:, others] = center
            name = ", ".join(f"{record.task.variables[o].symbol}≈{v:.3g}" for o, v in zip(others, center, strict=True))
            ax.plot(grid, law.predict(Xg, theta), color=colors[ci], lw=1.2, zorder=2, label=name or "law")
            band = _band(boot, law, Xg, key) if boot is not None else None
            if band is not None:
                ax.fill_between(grid, *band, color=colors[ci], alpha=0.18, lw=0, zorder=1)
    else:  # too many settings of the other variables for curves: the law at the observed rows
        for split, d in parts.items():
            if not len(d):
                continue
            band = _band(boot, law, d.X, key) if boot is not None else None
            if band is not None:
                ax.vlines(d.X[:, j], *band, color="0.3", lw=0.8, alpha=0.6, zorder=1)
            ax.scatter(d.X[:, j], law.predict(d.X, theta), s=14, marker="x", c="0.2", linewidths=0.8, zorder=2,
                       label="law at the observed rows" if split == "train" else None)
    if np.isfinite(train_max):
        ax.axvspan(train_max, ax.get_xlim()[1], color="0.5", alpha=0.12, lw=0, zorder=0)
    if log_x:
        _set_log_x(ax)
    ax.set_title(_short(record.key_label(key)), fontsize=8)
    if not as_curves or len(centers) > 1:
        ax.legend(fontsize=6, loc="best")


def scale_curves(record: LawRecord, splits: dict[str, Dataset], boot: Bootstrap | None = None) -> Figure:
    j = axis_index(record)
    keys = _panels(record)
    cols = min(len(keys), 3 if len(keys) > 4 else len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(max(4.4 * cols, 9.0), 3.5 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        _curve_panel(ax, record, key, splits, boot, j)
        ax.set_xlabel(f"{record.task.variables[j].symbol} ({record.task.variables[j].column})", fontsize=8)
        ax.set_ylabel(record.targets[key[1]], fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    band = f"; bands: {int(boot.options.level * 100)}% bootstrap ({boot.options.n_resamples} resamples)" if boot else ""
    shown = f" ({len(keys)} of {len(record.constants)} panels)" if len(keys) < len(record.constants) else ""
    lines = [f"{record.task.name}: law {record.label} along {record.task.variables[j].symbol}{shown}",
             "o train, s validation, ^ test (black edge); lines: the law at each setting of the other variables "
             "(median); x: the law at each observed row, when they take too many settings",
             f"shaded: beyond the largest train value (extrapolation){band}"]
    width = int(fig.get_figwidth() * 14)
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in lines), fontsize=9)
    return fig


def residuals(record: LawRecord, splits: dict[str, Dataset]) -> Figure:
    variables = record.task.variables
    n = len(variables)
    cols = min(n, 3)
    fig = Figure(figsize=(4.4 * cols, 3.4 * math.ceil(n / cols)), layout="constrained")
    axes = fig.subplots(math.ceil(n / cols), cols, squeeze=False).ravel()
    for j, (ax, v) in enumerate(zip(axes, variables, strict=False)):
        allx = []
        for split, d in splits.items():
            label, color, marker = SPLIT_STYLE[split]
            resid = record.predict(d) - d.Y
            x = np.repeat(d.X[:, j], resid.shape[1])
            ax.scatter(x, resid.ravel(), s=12, c=color, marker=marker, alpha=0.7, edgecolors="none", label=label)
            allx.append(x)
        ax.axhline(0, color="0.3", lw=0.8)
        if _logscale(np.concatenate(allx)):
            _set_log_x(ax)
        ax.set_xlabel(f"{v.symbol} ({v.column})", fontsize=8)
        ax.set_ylabel("predicted − observed", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(f"{record.task.name}: residuals of law {record.label} along each variable", fontsize=10)
    return fig


def _clipped_scatter(ax, x: np.ndarray, y: np.ndarray, top: float, label: str) -> None:
    """Grey candidates; those worse than `top` are drawn at the top edge as open triangles."""
    ok = np.isfinite(y) & (y > 0)
    low = ok & (y <= top)
    ax.scatter(x[low], y[low], s=10, c="0.7", edgecolors="none", label=f"{label} ({int(low.sum())})")
    off = ok & (y > top) | ~np.isfinite(y)
    if off.any():
        ax.scatter(x[off], np.full(int(off.sum()), top), s=14, marker="^", facecolors="none", edgecolors="0.6",
                   label=f"off scale or failed ({int(off.sum())})", clip_on=False)


def _store(run_dir: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{Path(run_dir) / 'campaign.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


def pareto(run_dir: Path) -> Figure:
    best = json.loads((Path(run_dir) / "best.json").read_text())
    db = _store(run_dir)
    try:
        rows = db.execute("SELECT c.complexity, f.val_nmse FROM candidates c JOIN fits f ON f.candidate_id = c.id "
                          "WHERE c.status = 'evaluated' AND f.val_nmse IS NOT NULL").fetchall()
    finally:
        db.close()
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    cx = np.array([r["complexity"] for r in rows], dtype=float)
    cy = np.array([r["val_nmse"] for r in rows], dtype=float)
    front = sorted(best["pareto_front"], key=lambda r: r["complexity"])
    fx = [r["complexity"] for r in front]
    fy = [r["validation"]["nmse"] for r in front]
    top = max(2.0, 10 * max(fy, default=1.0))
    _clipped_scatter(ax, cx, cy, top, "evaluated candidates")
    ax.step(fx, fy, where="post", color="C0", lw=1.2)
    ax.scatter(fx, fy, s=30, c="C0", zorder=3, label="Pareto front")
    b = best["best"]
    ax.scatter([b["complexity"]], [b["validation"]["nmse"]], s=160, marker="*", c="gold", edgecolors="k", zorder=4,
               label=f"best #{b['id']}")
    for h in best.get("human", []):
        if h["constants_from"] == "kepler_fit":
            ax.scatter([h["complexity"]], [h["validation"]["nmse"]], s=60, marker="D", c="C3", zorder=4,
                       label=f"human: {_short(h['law'], 30)}")
    if min(fy, default=0) > 0:
        ax.set_yscale("log")
        ax.set_ylim(top=top)
    ax.set_xlabel("complexity (expression tree nodes)")
    ax.set_ylabel("validation NMSE (lower is better)")
    ax.set_title(f"{best['task']}: complexity vs validation error", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def history(run_dir: Path) -> Figure:
    db = _store(run_dir)
    try:
        gens = db.execute("SELECT generation, best_val_r2 FROM generations ORDER BY generation").fetchall()
        cands = db.execute("SELECT c.generation, f.val_r2 FROM candidates c JOIN fits f ON f.candidate_id = c.id "
                           "WHERE c.status = 'evaluated'").fetchall()
    finally:
        db.close()
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    cg = np.array([r["generation"] for r in cands], dtype=float)
    ce = 1 - np.array([r["val_r2"] if r["val_r2"] is not None else np.nan for r in cands], dtype=float)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(cg))
    g = [r["generation"] for r in gens if r["best_val_r2"] is not None]
    e = [1 - r["best_val_r2"] for r in gens if r["best_val_r2"] is not None]
    top = max(2.0, 10 * max(e, default=1.0))
    _clipped_scatter(ax, cg + jitter, ce, top, "candidates")
    ax.plot(g, e, marker="o", color="C0",
            label="best so far (selection: shape priors kept, then NMSE with a complexity penalty)")
    if len(e) and min(e) > 0:
        ax.set_yscale("log")
        ax.set_ylim(top=top)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel("1 − validation R² (lower is better)")
    ax.set_title("best validation score per generation", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def save(fig: Figure, out_dir: Path, name: str, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        path = out_dir / f"{name}.{ext}"
        fig.savefig(path, dpi=150)
        paths.append(path)
    return paths


def plot_all(record: LawRecord, splits: dict[str, Dataset], out_dir: Path, boot: Bootstrap | None = None,
             run_dir: Path | None = None, formats: tuple[str, ...] = ("png", "pdf")) -> dict[str, list[Path]]:
    """Write every figure; returns {figure name: paths}. Pareto and history need `run_dir`."""
    figures = {
        "observed_vs_predicted": lambda: observed_vs_predicted(record, splits),
        "curves": lambda: scale_curves(record, splits, boot),
        "residuals": lambda: residuals(record, splits),
    }
    if run_dir is not None and (Path(run_dir) / "campaign.sqlite").is_file():
        figures["pareto"] = lambda: pareto(run_dir)
        figures["history"] = lambda: history(run_dir)
    return {name: save(make(), Path(out_dir), name, formats) for name, make in figures.items()}


def splits_of(protocol, purpose: str) -> dict[str, Dataset]:
    """The fit part, validation and test rows of a protocol (test read once, for the figures)."""
    return {"train": protocol.fit_part, "validation": protocol.validation, "test": protocol.final_test(purpose=purpose)}
