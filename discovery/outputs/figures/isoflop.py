"""isoFLOP curves: the law's loss against model size N at fixed compute C = 6ND (or the user's cost).

For laws in N and D. Budgets: the observed compute levels of the train rows when they come in isoFLOP
groups (at most six, spread over their range; else six levels over the train range), then 10x and 100x
the largest; each curve's minimum is marked, with the 95% bootstrap
interval of N_opt as a horizontal bar, and a dotted line joins the minima (the compute-optimal
frontier). The human law's curves are dashed. Observed rows are coloured by their compute; rows whose
other variables are not at the held values are faded.
"""
from __future__ import annotations

import math

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from discovery.laws.uncertainty import Bootstrap
from discovery.outputs import derive
from discovery.outputs.figures import style
from discovery.outputs.figures.curves import clusters, near
from discovery.outputs.labels import group_label
from discovery.outputs.record import LawRecord
from discovery.tasks.dataset import Dataset

MAX_PANELS = 6
MAX_OBSERVED = 6
GRID = 200


def budgets(compute: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """(budgets, how many lie in the train range, whether they are observed levels): the observed compute
    levels when the data come in isoFLOP groups (at least four clusters), else levels spread evenly over the
    observed range; then 10x and 100x the largest."""
    c = compute[np.isfinite(compute) & (compute > 0)]
    ids = clusters(c, gap=0.15)
    levels = np.array(sorted(np.median(c[ids == i]) for i in np.unique(ids)))
    observed = len(levels) >= 4
    if not observed:
        levels = np.geomspace(c.min(), c.max(), MAX_OBSERVED)
    targets = np.geomspace(levels[0], levels[-1], min(MAX_OBSERVED, len(levels)))  # evenly spread in log C
    pick = levels[np.unique([np.argmin(np.abs(np.log(levels / t))) for t in targets])]
    return np.concatenate([pick, c.max() * np.array(derive.FACTORS)]), len(pick), observed


def _curve(law, theta, base, r, cost, C, logn, d_range) -> np.ndarray:
    X = np.tile(base, (len(logn), 1))
    X[:, r.n] = np.exp(logn)
    X[:, r.d] = derive.solve_data(cost, X, r, C, *d_range)
    return np.asarray(law.predict(X, theta), dtype=float)


@style.styled
def isoflop(record: LawRecord, splits: dict[str, Dataset], boot: Bootstrap | None = None,
            human: LawRecord | None = None, cost: str | None = None) -> Figure:
    """One panel per group (at most six); raises derive.DeriveError when the law is not in N and D."""
    train = Dataset.concat(splits["train"], splits["validation"]) if "validation" in splits else splits["train"]
    r, cost_law = derive.allocation_setup(record, train, cost)
    keys = [k for k in sorted(record.constants) if k[1] == 0][:MAX_PANELS]
    cols = min(len(keys), 3)
    rows = math.ceil(len(keys) / cols)
    fig = style.figure(max(3.3 * cols + 0.9, 5.6), 2.7 * rows + 1.0)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    all_X = np.vstack([d.X for d in splits.values()])
    all_c = derive.evaluate_cost(cost_law, all_X, r)
    cmap = style.cmap()
    train_c = derive.evaluate_cost(cost_law, train.X, r)
    level_c, n_observed, observed = budgets(train_c)
    norm = style.norm(np.concatenate([all_c, level_c]), True)
    others = [i for i in range(all_X.shape[1]) if i not in (r.n, r.d)]
    for ax, key in zip(axes, keys, strict=False):
        g, _ = key
        Xg = train.X[train.groups == g]
        base = derive.held_values(record, train, g)
        n_range, d_range = derive.search_ranges(Xg, r)
        theta = record.constants[key]
        opt_logn, opt_loss = [], []
        for C in level_c:
            logn, best = derive.minimise_at(record.law, theta[None, :], base, r, cost_law, float(C), n_range, d_range)
            opt_logn.append(logn[0])
            opt_loss.append(best[0])
        opt_logn, opt_loss = np.array(opt_logn), np.array(opt_loss)
        data_n = all_X[:, r.n]
        lo_n = min(np.nanmin(np.exp(opt_logn)) if np.isfinite(opt_logn).any() else np.inf, data_n.min()) / 3
        hi_n = max(np.nanmax(np.exp(opt_logn)) if np.isfinite(opt_logn).any() else 0, data_n.max()) * 3
        logn = np.linspace(math.log(lo_n), math.log(hi_n), GRID)
        ys = []
        for ci, C in enumerate(level_c):
            colour = cmap(norm(C))
            y = _curve(record.law, theta, base, r, cost_law, float(C), logn, d_range)
            ys.append(y)
            extrapolated = ci >= n_observed
            ax.plot(np.exp(logn), y, color=colour, lw=1.3, alpha=0.75 if extrapolated else 1.0, zorder=3)
            if human is not None and key in human.constants:
                ax.plot(np.exp(logn), _curve(human.law, human.constants[key], base, r, cost_law, float(C), logn,
                                             d_range),
                        color=colour, ls=style.HUMAN_STYLE["ls"], lw=style.HUMAN_STYLE["lw"], zorder=2)
            if np.isfinite(opt_logn[ci]):
                if boot is not None and key in boot.samples:
                    s = boot.samples[key]
                    s = s[np.isfinite(s).all(axis=1)]
                    ln, _ = derive.minimise_at(record.law, s, base, r, cost_law, float(C), n_range, d_range)
                    ln = ln[np.isfinite(ln)]
                    if len(ln) > 10:
                        lo, hi = np.exp(np.percentile(ln, [100 * boot.alpha, 100 * (1 - boot.alpha)]))
                        ax.plot([lo, hi], [opt_loss[ci]] * 2, color="k", lw=0.9, zorder=5)
                ax.scatter([math.exp(opt_logn[ci])], [opt_loss[ci]], marker="*", s=70, color=colour,
                           edgecolors="k", linewidths=0.6, zorder=6)
        ok = np.isfinite(opt_logn)
        ax.plot(np.exp(opt_logn[ok]), opt_loss[ok], color="k", ls=":", lw=0.9, zorder=4)
        for split, d in splits.items():
            _, _, marker = style.SPLITS[split]
            m = d.groups == g
            if not m.any():
                continue
            X = d.X[m]
            on = near(X, base, others)
            colours = cmap(norm(derive.evaluate_cost(cost_law, X, r)))
            for mask, alpha in ((on, 0.95), (~on, 0.25)):
                if mask.any():
                    ax.scatter(X[mask, r.n], d.Y[m, 0][mask], c=colours[mask], marker=marker, s=16 if split != "test"
                               else 22, alpha=alpha, edgecolors="k" if split == "test" else "none", linewidths=0.5,
                               zorder=4)
        style.log_x(ax)
        finite = np.concatenate([d.Y[d.groups == g, 0] for d in splits.values()] + [opt_loss[ok]])
        finite = finite[np.isfinite(finite)]
        if len(finite):
            pad = 0.08 * (finite.max() - finite.min() or 1.0)
            ax.set_ylim(finite.min() - pad, finite.max() + 3 * pad)
        ax.set_xlabel(style.variable_label(record.task.variables[r.n]))
        ax.set_ylabel(record.targets[0])
        if len(record.constants) > 1:
            ax.set_title(group_label(g), fontsize=7)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    what = "C = 6ND" if cost_law is None else f"C = {cost_law.text}"
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes[:len(keys)].tolist(), shrink=0.9, pad=0.02,
                 label=f"compute {what}")
    handles = [Line2D([], [], color="0.35", lw=1.3, label=f"Kepler law {record.label} at fixed compute"),
               Line2D([], [], ls="", marker="*", color="0.6", markeredgecolor="k", markersize=8,
                      label="minimum (bar: 95% interval of N_opt)" if boot is not None else "minimum"),
               Line2D([], [], color="k", ls=":", lw=0.9, label="compute-optimal frontier")]
    if human is not None:
        handles.insert(1, Line2D([], [], color="0.35", ls=style.HUMAN_STYLE["ls"], lw=style.HUMAN_STYLE["lw"],
                                 label=f"human: {human.label}"))
    for split in splits:
        label, _, marker = style.SPLITS[split]
        handles.append(Line2D([], [], ls="", marker=marker, color="0.45", markeredgecolor="k" if split == "test"
                              else "none", markersize=4.5, label=f"{label} ({len(splits[split])})"))
    inside = f"{n_observed} observed levels" if observed else f"{n_observed} over the train range"
    handles.append(Patch(color="none", label=f"budgets: {inside}, then "
                                             f"{', '.join(f'{f:g}x' for f in derive.FACTORS)} the largest"))
    if others:
        held = ", ".join(f"{record.task.symbols[i]} = {style.format_value(base[i])}" for i in others)
        handles.append(Patch(color="none", label=f"held: {held} (train median; other points faded)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=style.legend_columns(fig), fontsize=6.5)
    return fig
