"""Value types a task declares and every later stage reads: a constant's spec, fit settings, shape priors.

They sit apart from the task-file schema (`discovery.tasks.spec`), so the fitter and the shape checks
depend on these small types only, never on how a task file is read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """A frozen pydantic model that refuses unknown fields (every task-file table is one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConstantSpec(Strict):
    init: float = Field(description="initial value for the fitter")
    bounds: tuple[float, float] = Field(default=(-math.inf, math.inf), description="[lower, upper]; inf allowed")

    @model_validator(mode="after")
    def _init_within_bounds(self) -> "ConstantSpec":
        lo, hi = self.bounds
        if not lo < hi:
            raise ValueError(f"bounds [{lo}, {hi}] must have lower < upper")
        if not lo <= self.init <= hi:
            raise ValueError(f"init {self.init} lies outside bounds [{lo}, {hi}]")
        return self


class FitSettings(Strict):
    """How a law is fitted: the robust recipe of the Chinchilla replication is one setting of these."""

    loss: Literal["linear", "huber", "soft_l1", "cauchy"] = "linear"
    f_scale: float = Field(default=1.0, gt=0, description="residual scale at which the robust loss bends (Huber delta)")
    log_residuals: bool = Field(
        default=False, description="fit log(prediction) - log(target) instead of the difference")
    drop_highest_targets: int = Field(
        default=0, ge=0, description="drop the k highest-target rows of each group before fitting (named, not silent)"
    )


@dataclass(frozen=True)
class Direction:
    """The target must not rise (sign -1, "decreasing") or fall (sign +1) as variable `index` grows."""

    index: int
    symbol: str
    sign: int


@dataclass(frozen=True)
class ShapePriors:
    """A task's shape priors, by variable position. `axes` are the scale axes (what the test split
    extrapolates along): the target's range is checked along them as well as along every direction."""

    directions: tuple[Direction, ...] = ()
    target_range: tuple[float, float] | None = None
    axes: tuple[tuple[int, str], ...] = ()
    same_unit: tuple[tuple[int, int], ...] = ()  # variables of one unit: an order every row keeps is kept (shape)

    def __bool__(self) -> bool:
        return bool(self.directions) or self.target_range is not None

    def followed(self) -> list[tuple[int, str, int]]:
        """(index, symbol, sign) of every variable to follow; sign 0 = no direction, range only."""
        out = [(d.index, d.symbol, d.sign) for d in self.directions]
        if self.target_range is not None:
            directed = {d.index for d in self.directions}
            out += [(i, symbol, 0) for i, symbol in self.axes if i not in directed]
        return out
