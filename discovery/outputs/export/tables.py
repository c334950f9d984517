"""The rows every format prints: constants per group (with intervals) and scores per split.

LaTeX, Markdown and the report all print from these rows, so the numbers agree across formats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from discovery.outputs.record import LawRecord

SPLITS = [
    ("train", "train (all)", "all of train"),
    ("validation", "validation (largest-scale slice of train)", "fit part of train"),
    ("test", "test (extrapolation)", "all of train"),
]


@dataclass(frozen=True)
class Cell:
    value: float
    low: float | None = None
    high: float | None = None


def fmt(x: float | None, digits: int = 4) -> str:
    """Significant digits; scientific notation for very large or small magnitudes."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def interval_digits(c: Cell, digits: int = 3, most: int = 7) -> int:
    """Fewest significant digits (at least `digits`) at which an interval's two ends print differently."""
    if c.low is None or c.high is None or c.low == c.high:
        return digits
    d = digits
    while d < most and fmt(c.low, d) == fmt(c.high, d):
        d += 1
    return d


def cell_text(c: Cell, digits: int = 4) -> tuple[str, str | None, str | None]:
    """(value, low, high) as text; the interval gets enough digits to show its width."""
    if c.low is None:
        return fmt(c.value, digits), None, None
    d = interval_digits(c)
    return fmt(c.value, max(digits, d)), fmt(c.low, d), fmt(c.high, d)


def md_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown pipe table (pipes inside cells escaped)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def constant_rows(record: LawRecord) -> list[tuple[str, list[Cell]]]:
    """(row label, one Cell per constant in canonical order) for every (group, target)."""
    intervals = (record.uncertainty or {}).get("intervals", {})
    rows = []
    for key in sorted(record.constants):
        theta = record.constants[key]
        iv = intervals.get(key)
        cells = [Cell(float(v), *(map(float, iv[i]) if iv is not None and all(map(math.isfinite, iv[i]))
                                  else (None, None)))
                 for i, v in enumerate(theta)]
        rows.append((record.key_label(key), cells))
    return rows


def metric_rows(record: LawRecord) -> list[tuple[str, int | None, str, float, float, float]]:
    """(split label, rows, fitted on, R2, NMSE, NMAE) for every split the record has scores for."""
    out = []
    for split, label, fitted_on in SPLITS:
        m = record.metrics.get(split)
        if m:
            out.append((label, m.get("n"), m.get("fitted_on", fitted_on), m["r2"], m["nmse"], m["nmae"]))
    return out


def coverage_line(record: LawRecord) -> str:
    """One sentence on bootstrap settings and test coverage, or '' without a bootstrap."""
    u = record.uncertainty
    if not u:
        return ""
    text = (f"Intervals: {int(u['level'] * 100)}% percentile bootstrap, {u['resamples']} resamples of the train "
            f"rows within each group (seed {u['seed']}), each refit from the point estimate.")
    cov = u.get("coverage")
    if cov:
        text += (f" Test coverage of the {int(u['level'] * 100)}% prediction band: {cov['prediction_band']:.1%} of "
                 f"{cov['cells']} test targets (law band, constants only: {cov['law_band']:.1%}).")
    return text
