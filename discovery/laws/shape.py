"""Shape priors: what a law must do beyond the data, known before any data is fitted.

Researchers know some things for certain. With everything else fixed, more parameters, data or
experts never make the loss worse (a direction); and some targets cannot leave a range by their
definition (a loss is never negative, a Brier score lies in [0, 1]). A fitted law that breaks these
inside the data, or on the way to two decades beyond it, cannot be trusted to extrapolate, however
well it scores on the validation slice. The MoE task shows why: laws with an additive log N term win
on the largest train size, then turn back up and fail on the test size. Tasks declare directions per
variable (`monotone = "decreasing"`) and the target's range (`target_range`); selection ranks a law
that breaks one below every law that keeps them (see discovery.search.population.Member.rank). A law is
judged only where runs can exist: two variables of one unit keep the order every row shows (unique tokens
never exceed tokens).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from discovery.tasks.values import ShapePriors

if TYPE_CHECKING:
    from discovery.laws.fit import LawFit
    from discovery.tasks.dataset import Dataset

HORIZON = 100.0  # how far a positive variable is followed closely beyond its largest observed value (x100)
# ...and where it is checked once more, far beyond: a law that extrapolates must approach a floor, not drift
# away through a slowly growing log term that still looks fine two decades out
FAR_FIELD = (1e3, 1e6, 1e12)
TOLERANCE = 1e-3  # a breach below this share of the target's observed range is numerical noise
GRID_POINTS = 48  # points along the variable, from its smallest observed value to the horizon
MAX_BASES = 32  # settings of the other variables to check at (spread over the observed rows)
GROUP_SHARE = 0.1  # a law breaks the priors when more than this share of its group fits do
SHAPE_KEPT = "keeps the task's shape priors"  # what reports say of a law that breaks none


def _grid(values: np.ndarray, far_field: bool = False) -> np.ndarray:
    """From the smallest observed value to HORIZON x the largest, then the FAR_FIELD points (positive
    variables), or one observed range width beyond the largest (variables that may be negative, often
    already logarithms)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if lo > 0:
        near = np.geomspace(lo, hi * HORIZON, GRID_POINTS)
        return np.concatenate([near, hi * np.array(FAR_FIELD)]) if far_field else near
    return np.linspace(lo, hi + (hi - lo), GRID_POINTS)


def _bases(X: np.ndarray, index: int) -> np.ndarray:
    """Distinct settings of the other variables, at most MAX_BASES of them, evenly spread."""
    rows = np.unique(np.delete(X, index, axis=1), axis=0)
    if len(rows) > MAX_BASES:
        rows = rows[np.linspace(0, len(rows) - 1, MAX_BASES).round().astype(int)]
    return rows


def along(X: np.ndarray, index: int, grid: np.ndarray) -> np.ndarray:
    """Rows that walk variable `index` over `grid` at each of the other variables' observed settings (see
    _bases), one setting after another."""
    bases = _bases(X, index)
    return np.insert(np.repeat(bases, len(grid), axis=0), index, np.tile(grid, len(bases)), axis=1)


def _keeps_orders(X: np.ndarray, Xg: np.ndarray, same_unit: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Which probe rows keep every order between two variables of one unit that all observed rows keep.
    Unique tokens never exceed tokens: walking U past D, all else fixed, leaves the runs that can exist (epochs
    below one), where a law of effective data is rightly undefined."""
    possible = np.ones(len(Xg), dtype=bool)
    for i, j in same_unit:
        for small, large in ((i, j), (j, i)):
            if (X[:, small] <= X[:, large]).all():
                possible &= Xg[:, small] <= Xg[:, large]
                break
    return possible


def _where(at: float, X: np.ndarray, index: int) -> str:
    return "inside the data" if at <= X[:, index].max() else "beyond the data"


def violation(predict: Callable[[np.ndarray], np.ndarray], X: np.ndarray, span: float,
              priors: ShapePriors, far_field: bool = False) -> str | None:
    """None if `predict` keeps every prior over the data and up to the horizon beyond; else what breaks.

    `X` are the observed rows (they fix where the other variables are held), `span` the target's
    observed range, so the tolerance does not depend on the target's units.
    """
    span = span if np.isfinite(span) and span > 0 else 1.0
    for index, symbol, sign in priors.followed():
        grid = _grid(X[:, index], far_field)
        Xg = along(X, index, grid)
        possible = _keeps_orders(X, Xg, priors.same_unit).reshape(-1, len(grid))
        try:
            with np.errstate(all="ignore"):
                pred = np.asarray(predict(Xg), dtype=float).reshape(-1, len(grid))
        except Exception as exc:  # noqa: BLE001 - an odd law NumPy cannot evaluate there breaks the priors, no crash
            return f"cannot be evaluated along {symbol} ({type(exc).__name__})"
        broken = possible & ~np.isfinite(pred)
        if broken.any():
            at = grid[np.flatnonzero(broken.any(axis=0))[0]]
            return f"not finite at {symbol} = {at:.3g}"
        pred = np.where(possible, pred, np.nan)  # points no run could have are not judged
        if priors.target_range is not None:
            lo, hi = priors.target_range
            outside = np.maximum(lo - pred, pred - hi)
            if np.nanmax(outside, initial=-np.inf) > TOLERANCE * span:
                row, col = np.unravel_index(np.nanargmax(outside), outside.shape)
                return (f"leaves the target's possible range [{lo:g}, {hi:g}]: predicts {pred[row, col]:.4g} at "
                        f"{symbol} = {grid[col]:.3g} ({_where(grid[col], X, index)})")
        if sign:
            q = -sign * pred  # the direction made "must not rise"
            wrong = q - np.fmin.accumulate(q, axis=1)  # how far it climbed back above its lowest point so far
            worst = float(np.nanmax(wrong, initial=0.0))
            if worst > TOLERANCE * span:
                at = grid[np.unravel_index(np.nanargmax(wrong), wrong.shape)[1]]
                return (f"{'rises' if sign < 0 else 'falls'} with {symbol} near {symbol} = {at:.3g} "
                        f"({_where(at, X, index)}), by {100 * worst / span:.1f}% of the target's range")
    return None


def shape_of(fit: "LawFit", seen: "Dataset", priors: ShapePriors, far_field: bool = False) -> str | None:
    """What a fitted law breaks, or None. Each group and target is checked at that group's rows.

    The priors judge a law's form through its fits. With many groups, one group's fit running out of
    range two decades away is fitting noise rather than a wrong form, so a law breaks the priors only if
    more than GROUP_SHARE of its fits do (with one group: if that fit does).
    """
    if not priors or not fit.ok:
        return None
    broken = []
    for (group, t), gf in sorted(fit.fits.items()):
        rows = seen.groups == group
        why = violation(lambda X, theta=gf.theta: fit.law.predict(X, theta), seen.X[rows],
                        float(np.ptp(seen.Y[rows, t])), priors, far_field)
        if why:
            broken.append(why if len(fit.fits) == 1 else f"{group}/{fit.targets[t]}: {why}")
    if len(broken) <= GROUP_SHARE * len(fit.fits):
        return None
    return broken[0] if len(fit.fits) == 1 else f"in {len(broken)} of {len(fit.fits)} fits, e.g. {broken[0]}"
