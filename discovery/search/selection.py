"""Scores that predict extrapolation: a law fitted afresh on each forward fold of train, scored on its slice.

One validation slice is a weak proxy for the test split when a campaign tries a thousand laws: the winner
is partly the law that happens to fit that slice (the winner's curse). Forward folds (see
`evaluators.protocol.Protocol.folds`) ask the same question one step further down the scale, on other
rows: fit on the smaller scales, score the next larger. A fold's fit starts afresh from the law's own
initial values; it never starts from constants fitted on rows the fold scores.
"""
from __future__ import annotations

import math
import statistics

from discovery.laws.fit import FitOptions, LawFit, fit_law, recipe_options
from discovery.laws.law import Law
from discovery.tasks.values import ConstantSpec
from evaluators.metrics import FAILURE_NMSE
from evaluators.protocol import Fold


def fold_fits(law: Law, specs: dict[str, ConstantSpec] | None, recipe: str, folds: list[Fold], targets: list[str],
              opts: FitOptions, total_time_limit: float | None = None) -> list[tuple[float, LawFit]]:
    """Each fold's fresh fit on its rows, with the NMSE it scores on the fold's slice (failures score 1e5)."""
    out = []
    for fold in folds:
        fit = fit_law(law, fold.fit, targets, specs, recipe_options(opts, recipe), total_time_limit=total_time_limit)
        out.append((fold.score(fit.predict(fold.validation)).nmse if fit.ok else FAILURE_NMSE, fit))
    return out


def fold_nmse(law: Law, specs: dict[str, ConstantSpec] | None, recipe: str, folds: list[Fold], targets: list[str],
              opts: FitOptions, total_time_limit: float | None = None) -> list[float]:
    """NMSE of the law on each fold's slice after a fresh fit on that fold's rows (failures score 1e5)."""
    return [nmse for nmse, _ in fold_fits(law, specs, recipe, folds, targets, opts, total_time_limit)]


def combine(nmse: list[float], rule: str = "mean") -> float:
    """One selection score from a law's NMSE on every fold (fold 0 first): their mean, or the worst fold."""
    finite = [x if math.isfinite(x) else FAILURE_NMSE for x in nmse]
    if rule == "max":
        return max(finite)
    if rule == "first":
        return finite[0]
    return statistics.fmean(finite)
