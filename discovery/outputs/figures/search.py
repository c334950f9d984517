"""What the search did (these need the run's store): complexity against validation error, and the
best validation score per generation."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from discovery.outputs.figures import style


def _short(text: str, n: int = 38) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _clipped_scatter(ax, x: np.ndarray, y: np.ndarray, top: float, label: str) -> None:
    """Grey candidates; those worse than `top` are drawn at the top edge as open triangles."""
    ok = np.isfinite(y) & (y > 0)
    low = ok & (y <= top)
    ax.scatter(x[low], y[low], s=9, c="0.72", edgecolors="none", label=f"{label} ({int(low.sum())})")
    off = ok & (y > top) | ~np.isfinite(y)
    if off.any():
        ax.scatter(x[off], np.full(int(off.sum()), top), s=12, marker="^", facecolors="none", edgecolors="0.6",
                   label=f"off scale or failed ({int(off.sum())})", clip_on=False)


def _store(run_dir: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{Path(run_dir) / 'campaign.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


@style.styled
def pareto(run_dir: Path) -> Figure:
    best = json.loads((Path(run_dir) / "best.json").read_text())
    db = _store(run_dir)
    try:
        rows = db.execute("SELECT c.complexity, f.val_nmse FROM candidates c JOIN fits f ON f.candidate_id = c.id "
                          "WHERE c.status = 'evaluated' AND f.val_nmse IS NOT NULL").fetchall()
    finally:
        db.close()
    fig = style.figure(4.8, 3.4)
    ax = fig.subplots()
    cx = np.array([r["complexity"] for r in rows], dtype=float)
    cy = np.array([r["val_nmse"] for r in rows], dtype=float)
    front = sorted(best["pareto_front"], key=lambda r: r["complexity"])
    fx = [r["complexity"] for r in front]
    fy = [r["validation"]["nmse"] for r in front]
    top = max(2.0, 10 * max(fy, default=1.0))
    _clipped_scatter(ax, cx, cy, top, "evaluated candidates")
    ax.step(fx, fy, where="post", color=style.PALETTE[0], lw=1.1)
    ax.scatter(fx, fy, s=24, c=style.PALETTE[0], zorder=3, label="Pareto front")
    b = best["best"]
    ax.scatter([b["complexity"]], [b["validation"]["nmse"]], s=130, marker="*", c=style.PALETTE[1], edgecolors="k",
               linewidths=0.6, zorder=4, label=f"best #{b['id']}")
    for h, colour in zip([h for h in best.get("human", []) if h["constants_from"] == "kepler_fit"],
                         style.PALETTE[3:], strict=False):
        ax.scatter([h["complexity"]], [h["validation"]["nmse"]], s=44, marker="D", c=colour, zorder=4,
                   label=f"human: {_short(h['law'], 30)}")
    if min(fy, default=0) > 0:
        ax.set_yscale("log")
        ax.set_ylim(top=top)
    ax.set_xlabel("complexity (expression tree nodes)")
    ax.set_ylabel("validation NMSE (lower is better)")
    ax.legend()
    return fig


@style.styled
def history(run_dir: Path) -> Figure:
    db = _store(run_dir)
    try:
        gens = db.execute("SELECT generation, best_val_r2 FROM generations ORDER BY generation").fetchall()
        cands = db.execute("SELECT c.generation, f.val_r2 FROM candidates c JOIN fits f ON f.candidate_id = c.id "
                           "WHERE c.status = 'evaluated'").fetchall()
    finally:
        db.close()
    fig = style.figure(4.8, 3.2)
    ax = fig.subplots()
    cg = np.array([r["generation"] for r in cands], dtype=float)
    ce = 1 - np.array([r["val_r2"] if r["val_r2"] is not None else np.nan for r in cands], dtype=float)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(cg))
    g = [r["generation"] for r in gens if r["best_val_r2"] is not None]
    e = [1 - r["best_val_r2"] for r in gens if r["best_val_r2"] is not None]
    top = max(2.0, 10 * max(e, default=1.0))
    _clipped_scatter(ax, cg + jitter, ce, top, "candidates")
    ax.plot(g, e, marker="o", ms=3.5, color=style.PALETTE[0],
            label="best so far (shape priors kept, then NMSE with a complexity penalty)")
    if len(e) and min(e) > 0:
        ax.set_yscale("log")
        ax.set_ylim(top=top)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel("1 − validation R² (lower is better)")
    ax.legend()
    return fig
