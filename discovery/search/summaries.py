"""Short text summaries of the data and of a law's errors, for prompts and reports (train rows only)."""
from __future__ import annotations

import numpy as np

from discovery.laws.fit import LawFit
from discovery.laws.law import Law
from discovery.tasks.dataset import Dataset
from discovery.tasks.spec import Task
from evaluators.protocol import Protocol


def data_summary(task: Task, protocol: Protocol) -> str:
    train = protocol.train
    lines = [f"{len(train)} train rows in {len(train.group_names)} group(s); validation = "
             f"{task.split.describe_validation()} ({len(protocol.validation)} rows)."]
    for j, v in enumerate(task.variables):
        col = train.X[:, j]
        lines.append(f"- {v.symbol} ({v.column}, {v.unit or 'no unit'}): "
                     f"train range {col.min():.4g} .. {col.max():.4g}, {len(np.unique(col))} distinct values")
    for t, name in enumerate(task.targets):
        y = train.Y[:, t]
        lines.append(f"- target {name}: train range {y.min():.4g} .. {y.max():.4g}, mean {y.mean():.4g}")
    return "\n".join(lines)


def residual_summary(task: Task, law: Law, fit: LawFit, data: Dataset, bins: int = 4) -> str:
    """Mean residual (prediction - target) in quantile bins of each variable: where the law errs."""
    pred = fit.predict(data)
    resid = pred - data.Y
    lines = []
    for j, v in enumerate(task.variables):
        x = data.X[:, j]
        edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
        if len(edges) < 2:
            continue
        idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
        parts = []
        for b in range(len(edges) - 1):
            m = idx == b
            if m.any() and np.isfinite(resid[m]).all():
                parts.append(f"[{edges[b]:.3g},{edges[b + 1]:.3g}]: mean {resid[m].mean():+.3g}, "
                             f"rmse {np.sqrt(np.mean(resid[m] ** 2)):.3g}")
        lines.append(f"- along {v.symbol}: " + "; ".join(parts))
    return "\n".join(lines)
