"""Close calls: when the data do not decide which law to report, the run says so.

A campaign reports the law with the best selection score, but a researcher runs it once, on one seed. When
other laws score within CLOSE_MARGIN of the best and predict different things just beyond train, which one
is reported is a coin the data did not weigh: another seed can report another law that extrapolates
differently. Measured with benchmarks/close_call_study.py on the nested runs of
`benchmarks/discovery_quality.py --nested` (train rows only, the validation slice as their test; 52 runs, 12
tasks, seeds 0-4 and 0-2), the spread of such contenders' predictions a step beyond train ranks the spread of
their nested-test R² with Spearman 0.91, and the runs it flags hold all of the regret (the best contender's
nested test R² above the reported law's): 24 flagged runs, regret 0.107 on average and up to 0.743; 28 others,
at most 0.010. Vocab is flagged on 4 of 5 seeds with little regret: its laws part by 0.3-1.6 standard deviations
beyond train yet score alike one step out. So the run names its contenders and how far apart they are, and
warns; it does not pick another law (the test split never decides), and nothing here changes which law is
reported.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np

from discovery.laws.fit import LawFit
from discovery.laws.shape import along
from discovery.search.population import Member
from discovery.tasks.dataset import Dataset

CLOSE_MARGIN = 0.10  # contenders: laws whose selection fitness is within this share of the best's
MAX_CONTENDERS = 5  # the closest ones, refit and compared
SPREAD_LIMIT = 0.1  # a spread above this many standard deviations of the target (in train) is a close call
BEYOND = (0.25, 0.5)  # probe points: this share of a group's observed range past its largest value (in log
# units for a positive axis), along each axis the validation slice is carved on; the test split lies there


def contenders(best: Member, members: list[Member]) -> list[Member]:
    """The laws ranked just behind `best` that are as good by the selection score, up to MAX_CONTENDERS:
    the same standing on the shape priors, and fitness within CLOSE_MARGIN of the best's."""
    if not math.isfinite(best.fitness):
        return []
    near = [m for m in members if m.id != best.id and m.shape_ok == best.shape_ok
            and m.fitness <= best.fitness * (1 + CLOSE_MARGIN)]
    return sorted(near, key=lambda m: m.rank)[:MAX_CONTENDERS]


def beyond(values: np.ndarray) -> np.ndarray:
    """Points a step past the largest value: BEYOND shares of the observed range (in log units when positive)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if lo > 0:
        return hi * (hi / lo) ** np.array(BEYOND)
    return hi + (hi - lo) * np.array(BEYOND)


def spread_beyond(fits: list[LawFit], seen: Dataset, axes: list[int]) -> float | None:
    """How far apart fitted laws predict a step beyond `seen`, in standard deviations of the target.

    Per group, target and axis: the widest gap between the laws' predictions at points built from that
    group's rows only (the other variables at their observed settings, the axis at `beyond` its largest
    value), over the target's standard deviation in the group; the median over those, so one odd group fit
    does not decide. None when there is nothing to compare (one law, no axis, or no fit that worked)."""
    fits = [f for f in fits if f.ok]
    if len(fits) < 2 or not axes:
        return None
    gaps = []
    for group, t in sorted(fits[0].fits):
        rows = seen.groups == group
        X, sd = seen.X[rows], float(np.std(seen.Y[rows, t]))
        if not sd > 0:
            continue
        for index in axes:
            Xg = along(X, index, beyond(X[:, index]))
            with np.errstate(all="ignore"):
                preds = np.array([f.law.predict(Xg, f.fits[(group, t)].theta) for f in fits
                                  if (group, t) in f.fits], dtype=float)
            gap = float(np.max(preds.max(axis=0) - preds.min(axis=0))) / sd if len(preds) > 1 else 0.0
            gaps.append(gap if math.isfinite(gap) else math.inf)
    return statistics.median(gaps) if gaps else None


@dataclass
class CloseCall:
    """What best.json says under `close_call`."""

    contenders: list[dict] = field(default_factory=list)  # id, formula, selection NMSE, validation R²
    spread_sd: float | None = None  # spread_beyond over the best law and its contenders (fitted on all of train)
    axes: list[str] = field(default_factory=list)

    @property
    def decided(self) -> bool:
        return self.spread_sd is None or self.spread_sd <= SPREAD_LIMIT

    def warning(self) -> str | None:
        if self.decided:
            return None
        spread = "without bound" if math.isinf(self.spread_sd) else f"{self.spread_sd:.2g} standard deviations"
        n = len(self.contenders)
        who = "1 other law scores" if n == 1 else f"{n} other laws score"
        return (f"close call: {who} within {CLOSE_MARGIN:.0%} of the best on selection but predict{'s' * (n == 1)} "
                f"up to {spread} of the target away from it a step beyond train (along {', '.join(self.axes)}), so "
                f"another seed may report {'it' if n == 1 else 'one of them'}; see close_call in best.json. More seeds "
                f"(kepler sweep) or larger-scale runs decide")

    def as_dict(self) -> dict:
        return {"margin": CLOSE_MARGIN, "contenders": self.contenders,
                "spread_sd": None if self.spread_sd is None else
                (self.spread_sd if math.isfinite(self.spread_sd) else "inf"),
                "where": f"{', '.join(f'{s:.0%}' for s in BEYOND)} of each group's observed range past its largest "
                         f"value along {', '.join(self.axes) or '(no axis)'}, fitted on all of train",
                "decided": self.decided}
