"""Figures of a fitted law (PNG and PDF, matplotlib's Agg canvas; no pyplot, no display).

Every figure is drawn in the one style of `figures.style` (Type 42 fonts, a colour-blind-safe palette,
legends rather than titles, units on the axes):
- `observed_vs_predicted`: observed against predicted, train / validation / test marked;
- `curves_<symbol>`: the law along each variable, with the others held at observed levels, the bootstrap
  band, the human law dashed and the region beyond the train range shaded (figures.curves);
- `isoflop`: for laws in model size and data, loss against N at fixed compute (figures.isoflop);
- `residuals` along each variable;
- `pareto` and `history` of the search (these need the run's store).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from matplotlib.figure import Figure

from discovery.laws.uncertainty import Bootstrap
from discovery.outputs.derive import DeriveError, allocation_setup
from discovery.outputs.figures import style
from discovery.outputs.figures.curves import curves_along
from discovery.outputs.figures.diagnostics import observed_vs_predicted, residuals
from discovery.outputs.figures.isoflop import isoflop
from discovery.outputs.figures.search import history, pareto
from discovery.outputs.record import LawRecord
from discovery.tasks.dataset import Dataset

__all__ = ["figures_of", "plot_all", "save", "splits_of"]

save = style.save


def figures_of(record: LawRecord, splits: dict[str, Dataset], boot: Bootstrap | None = None,
               run_dir: Path | None = None, human: LawRecord | None = None,
               cost: str | None = None) -> dict[str, Callable[[], Figure]]:
    """The figures that apply to this law, by name, each as a function that draws it."""
    figures: dict[str, Callable[[], Figure]] = {"observed_vs_predicted": lambda: observed_vs_predicted(record, splits)}
    for j, v in enumerate(record.task.variables):
        figures[f"curves_{v.symbol}"] = lambda j=j: curves_along(record, splits, j, boot, human)
    train = Dataset.concat(splits["train"], splits["validation"]) if "validation" in splits else splits["train"]
    try:
        allocation_setup(record, train, cost)
        figures["isoflop"] = lambda: isoflop(record, splits, boot, human, cost)
    except DeriveError:
        pass
    figures["residuals"] = lambda: residuals(record, splits)
    if run_dir is not None and (Path(run_dir) / "campaign.sqlite").is_file():
        figures["pareto"] = lambda: pareto(run_dir)
        figures["history"] = lambda: history(run_dir)
    return figures


def plot_all(record: LawRecord, splits: dict[str, Dataset], out_dir: Path, boot: Bootstrap | None = None,
             run_dir: Path | None = None, formats: tuple[str, ...] = ("png", "pdf"), human: LawRecord | None = None,
             cost: str | None = None, only: list[str] | None = None) -> dict[str, list[Path]]:
    """Write every figure (or those named in `only`); returns {figure name: paths}. Pareto and history need
    `run_dir`."""
    figures = figures_of(record, splits, boot, run_dir, human, cost)
    unknown = sorted(set(only or []) - set(figures))
    if unknown:
        raise ValueError(f"no figure {', '.join(unknown)} for this law; its figures: {', '.join(figures)}")
    return {name: save(make(), Path(out_dir), name, formats) for name, make in figures.items()
            if not only or name in only}


def splits_of(protocol, purpose: str) -> dict[str, Dataset]:
    """The fit part, validation and test rows of a protocol (test read once, for the figures)."""
    return {"train": protocol.fit_part, "validation": protocol.validation, "test": protocol.final_test(purpose=purpose)}
