"""SLDBench's metrics, exactly as defined there.

Predictions of all groups are concatenated. Per target dimension: NMSE = MSE / variance of the
true targets (population variance), NMAE = MAE / mean absolute deviation of the true targets.
R2 = 1 - mean NMSE over dimensions. Any NaN/Inf prediction (or a failed fit) scores R2 = -1 with
NMSE = NMAE = 1e5. SLDBench's published table clips R2 to [-1, 1]; `clip=True` does the same.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FAILURE_NMSE = 1e5
FAILURE_R2 = -1.0


@dataclass(frozen=True)
class Scores:
    r2: float
    nmse: float
    nmae: float
    n: int
    failed: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def score(y_true: np.ndarray, y_pred: np.ndarray, *, clip: bool = False) -> Scores:
    """Score predictions (n,) or (n, n_targets) against truth of the same shape."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if y_true.ndim == 1:
        y_true, y_pred = y_true[:, None], y_pred[:, None]
    n = y_true.shape[0]
    if y_pred.shape != y_true.shape or n == 0 or not np.all(np.isfinite(y_pred)):
        return Scores(FAILURE_R2, FAILURE_NMSE, FAILURE_NMSE, n, failed=True)
    err = y_pred - y_true
    var = np.var(y_true, axis=0)
    mad = np.mean(np.abs(y_true - y_true.mean(axis=0)), axis=0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # a wild law's error overflows: it fails below
        nmse_dims = np.mean(err**2, axis=0) / var
        nmae_dims = np.mean(np.abs(err), axis=0) / mad
    nmse, nmae = float(np.mean(nmse_dims)), float(np.mean(nmae_dims))
    if not (np.isfinite(nmse) and np.isfinite(nmae)):
        return Scores(FAILURE_R2, FAILURE_NMSE, FAILURE_NMSE, n, failed=True)
    r2 = 1.0 - nmse
    if clip:
        r2 = float(np.clip(r2, -1.0, 1.0))
    return Scores(r2, nmse, nmae, n)


def score_blocks(y_true: np.ndarray, y_pred: np.ndarray, blocks: np.ndarray | None) -> Scores:
    """The mean of `score` over blocks of rows, each block against its own spread: how a test split that
    is one such block (one model size at its largest budget) will be scored. `blocks` None: plain `score`."""
    if blocks is None:
        return score(y_true, y_pred)
    parts = [score(np.asarray(y_true)[blocks == b], np.asarray(y_pred)[blocks == b]) for b in np.unique(blocks)]
    n = len(blocks)
    if any(s.failed for s in parts):
        return Scores(FAILURE_R2, FAILURE_NMSE, FAILURE_NMSE, n, failed=True)
    return Scores(float(np.mean([s.r2 for s in parts])), float(np.mean([s.nmse for s in parts])),
                  float(np.mean([s.nmae for s in parts])), n)


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error over all cells (the Chinchilla replication reports it)."""
    return float(np.sqrt(np.mean((np.asarray(y_pred, float) - np.asarray(y_true, float)) ** 2)))
