"""The numeric view of a task's rows that fitters and metrics work on."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Dataset:
    """Rows of one split: X (n, n_vars) in task variable order, Y (n, n_targets), group label per row."""

    X: np.ndarray
    Y: np.ndarray
    groups: np.ndarray
    rows: np.ndarray  # positions in the task frame, for tracing a number back to its row
    split: str

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def group_names(self) -> list[str]:
        return sorted(set(self.groups.tolist()))

    def subset(self, mask: np.ndarray, split: str | None = None) -> "Dataset":
        return Dataset(self.X[mask], self.Y[mask], self.groups[mask], self.rows[mask], split or self.split)

    @classmethod
    def concat(cls, a: "Dataset", b: "Dataset", split: str = "train") -> "Dataset":
        return cls(np.vstack([a.X, b.X]), np.vstack([a.Y, b.Y]), np.concatenate([a.groups, b.groups]),
                   np.concatenate([a.rows, b.rows]), split)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, columns: list[str], targets: list[str], split: str) -> "Dataset":
        return cls(
            X=frame[columns].to_numpy(dtype=float),
            Y=frame[targets].to_numpy(dtype=float),
            groups=frame["group"].astype(str).to_numpy(),
            rows=frame.index.to_numpy(),
            split=split,
        )
