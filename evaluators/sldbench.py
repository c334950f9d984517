"""SLDBench's protocol for a submitted program, to score Kepler's SLDBench export as the benchmark would.

The evaluator calls the program's `fit_scaling_law(data_points, loss_values)` once per group on that
group's train rows, then `scaling_law_func(data_points, params)` on the group's test rows; predictions of
all groups are concatenated and scored with SLDBench's metrics (per target NMSE against the test
variance, R² = 1 − mean NMSE; a non-finite prediction scores R² = −1).
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from discovery.tasks.dataset import Dataset
from evaluators.metrics import score


def load_program(path: Path) -> ModuleType:
    """Import a generated program file (Kepler's own export) as a module."""
    spec = importlib.util.spec_from_file_location(f"sldbench_program_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_protocol(program: ModuleType, train: Dataset, test: Dataset) -> dict:
    """R², NMSE and NMAE of the program under SLDBench's protocol, and the seconds its fits took."""
    preds, trues = [], []
    t0 = time.perf_counter()
    for g in sorted(set(test.groups.tolist())):
        tr, te = train.groups == g, test.groups == g
        if not tr.any():  # no train rows to fit: the group cannot be predicted
            preds.append(np.full(test.Y[te].shape, np.nan))
            trues.append(test.Y[te])
            continue
        y = train.Y[tr] if train.Y.shape[1] > 1 else train.Y[tr, 0]
        params = program.fit_scaling_law(train.X[tr], y)
        p = np.asarray(program.scaling_law_func(test.X[te], params), dtype=float)
        preds.append(p.reshape(int(te.sum()), -1))
        trues.append(test.Y[te])
    seconds = time.perf_counter() - t0
    s = score(np.concatenate(trues), np.concatenate(preds))
    return {"r2": s.r2, "nmse": s.nmse, "nmae": s.nmae, "fit_seconds": seconds}
