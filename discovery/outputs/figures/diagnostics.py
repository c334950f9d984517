"""How well a law fits: observed against predicted, and residuals along each variable, by split."""
from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from discovery.outputs.figures import style
from discovery.outputs.record import LawRecord
from discovery.tasks.dataset import Dataset


@style.styled
def observed_vs_predicted(record: LawRecord, splits: dict[str, Dataset]) -> Figure:
    n_t = len(record.targets)
    cols = min(n_t, 3)
    fig = style.figure(3.4 * cols, 3.2 * math.ceil(n_t / 3))
    axes = fig.subplots(math.ceil(n_t / 3), cols, squeeze=False).ravel()
    for t, name in enumerate(record.targets):
        ax = axes[t]
        everything = []
        for split, data in splits.items():
            label, color, marker = style.SPLITS[split]
            pred = record.predict(data)[:, t]
            ax.scatter(data.Y[:, t], pred, s=14, c=color, marker=marker, alpha=0.8, label=f"{label} ({len(data)})",
                       edgecolors="k" if split == "test" else "none", linewidths=0.4)
            everything += [data.Y[:, t], pred]
        v = np.concatenate(everything)
        v = v[np.isfinite(v)]
        if len(v):
            lo, hi = v.min(), v.max()
            pad = 0.03 * (hi - lo or 1)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.4", lw=0.8, ls="--", label="y = x")
        ax.set_xlabel(f"observed {name}")
        ax.set_ylabel(f"predicted {name} (law {record.label})")
        ax.legend(loc="upper left")
    for ax in axes[n_t:]:
        ax.set_visible(False)
    return fig


@style.styled
def residuals(record: LawRecord, splits: dict[str, Dataset]) -> Figure:
    variables = record.task.variables
    n = len(variables)
    cols = min(n, 3)
    fig = style.figure(3.2 * cols, 2.6 * math.ceil(n / cols) + 0.4)
    axes = fig.subplots(math.ceil(n / cols), cols, squeeze=False).ravel()
    handles = []
    for j, (ax, v) in enumerate(zip(axes, variables, strict=False)):
        allx = []
        for split, d in splits.items():
            label, color, marker = style.SPLITS[split]
            resid = record.predict(d) - d.Y
            x = np.repeat(d.X[:, j], resid.shape[1])
            h = ax.scatter(x, resid.ravel(), s=10, c=color, marker=marker, alpha=0.75, label=f"{label} ({len(d)})",
                           edgecolors="k" if split == "test" else "none", linewidths=0.4)
            if j == 0:
                handles.append(h)
            allx.append(x)
        ax.axhline(0, color="0.3", lw=0.8)
        if style.logscale(np.concatenate(allx)):
            style.log_x(ax)
        ax.set_xlabel(style.variable_label(v))
        ax.set_ylabel("predicted − observed")
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return fig
