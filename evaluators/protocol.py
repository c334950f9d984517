"""The split protocol: train / validation / test, with the test split kept behind a door.

Validation is carved out of train the way the test split is carved out of the data: in each group,
the rows with the largest values of the task's scale axis (whole tied values at a time) until
`validation_fraction` of the group's rows are taken (for a test split that is the largest rows along any of
several axes, the union of each axis' largest slice); for a test split that is a corner (the largest
model at its largest budget), every model size's rows at its own largest budget; for tasks whose
test split is not along a scale, every k-th row along the axis. Selection sees only these rows. The
test split is built only when `final_test()` is called, and every call is logged, so code that
selects on test by accident is caught by a test.
"""
from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd

from discovery.tasks.dataset import Dataset
from discovery.tasks.spec import SplitSpec, Task
from evaluators.metrics import Scores, score_blocks

_LOCK = threading.Lock()
TEST_ACCESS_LOG: list[tuple[str, str]] = []  # (task, purpose) of every final_test() call, process-wide


def _validation_mask(axis: np.ndarray, fraction: float, rule: str = "largest") -> np.ndarray:
    """Largest-axis rows of one group; ties are kept together unless they would swallow the group.

    With rule "interleaved", every k-th row along the axis instead (k = 1 / fraction), from the largest.
    """
    n = len(axis)
    mask = np.zeros(n, dtype=bool)
    if n < 3:
        return mask
    if rule == "interleaved":
        order = np.argsort(-axis, kind="stable")
        mask[order[:: max(2, round(1 / fraction))]] = True
        return mask
    want = max(1, math.ceil(fraction * n))
    for value in np.unique(axis)[::-1]:
        mask |= axis == value
        if mask.sum() >= want:
            break
    if mask.sum() > n // 2 or mask.all():  # one value dominates: fall back to a row count, stable order
        mask[:] = False
        mask[np.argsort(axis, kind="stable")[-want:]] = True
    return mask


def _largest_per_mask(axis: np.ndarray, per: np.ndarray) -> np.ndarray:
    """For every value of `per`, its rows at their largest `axis` value (each model size's largest budget)."""
    mask = np.zeros(len(axis), dtype=bool)
    if len(axis) < 3:
        return mask
    for value in np.unique(per):
        at = per == value
        if at.sum() < len(axis):  # a value that holds the whole group would leave nothing to fit
            mask |= at & (axis == axis[at].max())
    return mask


def validation_blocks(split: SplitSpec, validation: pd.DataFrame, targets: list[str]) -> np.ndarray | None:
    """With rule largest_per, which block (group, per-value) each validation row belongs to: the test split
    is one such block and its R2 is taken against its own spread, so validation scores each block the same
    way and averages. None (pooled, as the test split is) for the other rules, or if a block is too small
    or flat to have a spread."""
    if split.validation_per is None or validation.empty:
        return None
    keys = validation["group"].astype(str) + "|" + validation[split.validation_per].astype(float).map(repr)
    labels, blocks = np.unique(keys.to_numpy(), return_inverse=True)
    y = validation[targets].to_numpy(dtype=float)
    for b in range(len(labels)):
        if (blocks == b).sum() < 3 or not (np.var(y[blocks == b], axis=0) > 0).all():
            return None
    return blocks


def validation_mask(split: SplitSpec, train: pd.DataFrame) -> np.ndarray:
    """Which train rows are validation, group by group, following the task's validation rule."""
    val = np.zeros(len(train), dtype=bool)
    groups = train["group"].astype(str).to_numpy()
    axes = [train[a].to_numpy(dtype=float) for a in split.axes()]
    per = train[split.validation_per].to_numpy(dtype=float) if split.validation_per else None
    share = split.validation_fraction / len(axes)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        if per is not None:
            val[idx] = _largest_per_mask(axes[0][idx], per[idx])
        else:  # one axis, or (validation_or) the union of every axis' largest slice
            for axis in axes:
                val[idx] |= _validation_mask(axis[idx], share, split.validation_rule)
    return val


@dataclass(frozen=True)
class Fold:
    """One forward fold of train: fit on `fit`, score on `validation` (block by block when `blocks` is set)."""

    fit: Dataset
    validation: Dataset
    blocks: np.ndarray | None = None

    def score(self, pred: np.ndarray) -> Scores:
        return score_blocks(self.validation.Y, pred, self.blocks)


def _forward(split: SplitSpec, frame: pd.DataFrame, val: np.ndarray) -> bool:
    """Whether a fold carved by `val` is a real one: every group keeps at least 3 rows to fit, and (for a scale
    split) every group's validation rows lie strictly above its fit rows on the axis (on one of the axes, with
    `validation_or`): once a group is down to
    one axis value, the row-count fallback of `_validation_mask` would pick rows by file order instead."""
    if not val.any():
        return False
    axes = [frame[a].to_numpy(dtype=float) for a in split.axes()]
    groups = frame["group"].astype(str).to_numpy()
    for g in np.unique(groups):
        at = groups == g
        fit, held = at & ~val, at & val
        if fit.sum() < 3:
            return False
        if split.validation_rule == "largest" and held.any():
            beyond = np.zeros(int(held.sum()), dtype=bool)  # each held row lies above every fit row on some axis
            for axis in axes:
                beyond |= axis[held] > axis[fit].max()
            if not beyond.all():
                return False
    return True


class Protocol:
    """Holds a task's rows and hands out splits: fit part, validation, full train; test on request."""

    def __init__(self, task: Task, frame: pd.DataFrame):
        self.task = task
        frame = frame.reset_index(drop=True)
        train = frame[frame["split"] == "train"]
        self._test_frame = frame[frame["split"] == "test"]
        if train.empty:
            raise ValueError(f"task {task.name}: no train rows")
        val = validation_mask(task.split, train)
        cols, targets = task.columns, task.targets
        self.train = Dataset.from_frame(train, cols, targets, "train")
        self.fit_part = Dataset.from_frame(train[~val], cols, targets, "fit")
        self.validation = Dataset.from_frame(train[val], cols, targets, "validation")
        self.validation_blocks = validation_blocks(task.split, train[val], targets)
        self._train_frame = train
        self.test_reads = 0

    @property
    def n_test(self) -> int:
        return len(self._test_frame)

    def validation_score(self, pred: np.ndarray) -> Scores:
        """Predictions on the validation slice, scored as selection sees them (see validation_blocks)."""
        return score_blocks(self.validation.Y, pred, self.validation_blocks)

    def folds(self, n: int) -> list[Fold]:
        """Up to `n` forward folds, each carved out of the previous fold's fit rows by the task's validation
        rule: fold 0 is (fit part, validation); fold 1 fits on the rows below that fit part's own
        largest-scale slice and scores that slice, one step further down the scale; and so on. Each fold
        imitates the test split one step smaller, so a law's scores over the folds show whether it keeps
        extrapolating, rather than whether it happens to fit one slice. Stops early when a fold would leave
        a group with too few rows to fit."""
        out = [Fold(self.fit_part, self.validation, self.validation_blocks)]
        frame = self._train_frame[~validation_mask(self.task.split, self._train_frame)]
        cols, targets = self.task.columns, self.task.targets
        while len(out) < n:
            val = validation_mask(self.task.split, frame)
            rest = frame[~val]
            if not _forward(self.task.split, frame, val):
                break
            out.append(Fold(Dataset.from_frame(rest, cols, targets, "fit"),
                            Dataset.from_frame(frame[val], cols, targets, "validation"),
                            validation_blocks(self.task.split, frame[val], targets)))
            frame = rest
        return out

    def fingerprint(self, folds: list[Fold]) -> str:
        """Which rows (and targets) the fit part, validation and the further `folds` hold: a run stores it, so a
        resume after the task file or its split rule changed is caught instead of mixing two splits' scores."""
        h = hashlib.sha256()
        parts = [self.fit_part, self.validation, *(d for f in folds for d in (f.fit, f.validation))]
        for part in parts:
            h.update(np.ascontiguousarray(part.rows, dtype=np.int64).tobytes())
            h.update(np.ascontiguousarray(part.Y, dtype=np.float64).tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]

    def final_test(self, purpose: str) -> Dataset:
        """The test split, for the final report only. Every call is logged with its purpose."""
        with _LOCK:
            TEST_ACCESS_LOG.append((self.task.name, purpose))
        self.test_reads += 1
        return Dataset.from_frame(self._test_frame, self.task.columns, self.task.targets, "test")
