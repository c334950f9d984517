"""`kepler.discover`, `kepler.fit` and `kepler.load_run`: the command line's work, returning objects."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from discovery.laws.fit import FitOptions, fit_law
from discovery.outputs.record import RunError, record_from_law
from discovery.search.campaign import RESULTS_DIR, Campaign, CampaignSettings, Progress
from discovery.tasks.data import load_frame
from discovery.tasks.inferred import TableSpec, task_from_table
from discovery.tasks.spec import Task, load_task
from evaluators.benchmark import human_law_for, parse_formula
from evaluators.protocol import Protocol
from kepler.result import Law, Result

TaskLike = str | Path | pd.DataFrame


def _table_task(frame: pd.DataFrame, out_dir: Path, target: str | None, vars: Any, group: str | None,
                test: str | None, test_split_column: str | None, name: str | None) -> Task:
    spec = TableSpec.from_options(target, vars, group, test, test_split_column, name or "my_data")
    task, _ = task_from_table(frame, spec, out_dir)
    return task


def _printer() -> Callable[[Progress], None]:
    """One line on stderr per finished generation, and one at the end."""
    shown = {"completed": 0, "status": "running"}

    def show(p: Progress) -> None:
        if p.completed == shown["completed"] and p.status == shown["status"]:
            return
        shown.update(completed=p.completed, status=p.status)
        best = f"{p.best_val_r2:.4f}" if p.best_val_r2 > -1e308 else "-"
        llm = p.llm or {}
        extra = f"; LLM {llm.get('calls', 0)} calls, {llm.get('failed', 0)} failed" if llm.get("calls") else ""
        print(f"kepler: {p.completed}/{p.generations} generations, {p.status}: {p.evaluated} laws evaluated, best "
              f"validation R² {best}: {p.best_formula[:80]}{extra}", file=sys.stderr, flush=True)

    return show


def discover(task_or_dataframe: TaskLike, *, target: str | None = None, vars: str | list[str] | None = None,
             group: str | None = None, test: str | None = None, test_split_column: str | None = None,
             name: str | None = None, out: str | Path | None = None,
             progress: bool | Callable[[Progress], None] = True, **settings: Any) -> Result:
    """Run a discovery campaign and return its result.

    `task_or_dataframe`: a task name, a task file, or a DataFrame with one row per run (then `target`,
    `vars`, optionally `group` and `test` or `test_split_column`, as `kepler discover --csv`; the frame and
    the task file inferred from it are written into the run directory). `settings` are the campaign's
    (generations, seed, proposer, population, islands, children, model, ...). `progress`: True prints a
    line per generation on stderr, a function is called with the live `Progress`, False is silent."""
    if isinstance(task_or_dataframe, pd.DataFrame):
        name = name or "my_data"
        run_dir = Path(out) if out else RESULTS_DIR / name / f"api-seed{settings.get('seed', 0)}-" \
                                                               f"{time.strftime('%Y%m%d-%H%M%S')}"
        task = _table_task(task_or_dataframe, run_dir, target, vars, group, test, test_split_column, name)
        task_ref = str(task.path)
        out = run_dir
    else:
        task_ref = str(task_or_dataframe)
    callback = _printer() if progress is True else (progress or None)
    config = CampaignSettings(task=task_ref, out=str(out) if out else None, **settings)
    campaign = Campaign(config, on_progress=callback)
    try:
        outcome = campaign.run()
    finally:
        campaign.close()
    if "best" not in outcome:
        raise RunError(f"{campaign.run_dir}: {outcome.get('status')} ({outcome.get('stop_reason')})")
    return Result(campaign.run_dir)


def load_run(run_dir: str | Path) -> Result:
    """A finished run directory (best.json and campaign.sqlite) as a Result."""
    run_dir = Path(run_dir)
    if not (run_dir / "best.json").is_file():
        raise RunError(f"{run_dir}: no best.json; is this a finished Kepler run?")
    result = Result(run_dir)
    if "best" not in result.raw:
        raise RunError(f"{run_dir}: the run has no evaluated law ({result.raw.get('status', 'unknown status')})")
    return result


def fit(task_or_dataframe: TaskLike, formula: str, *, constants: list[str] | None = None, seed: int = 0,
        starts: int = 128, target: str | None = None, vars: str | list[str] | None = None, group: str | None = None,
        test: str | None = None, test_split_column: str | None = None) -> Law:
    """Fit one formula as `kepler fit` does: constants per group on the fit part (scored on validation) and on
    all of train (scored on test). `constants`: the formula's constant names, when some look like typos of a
    variable. A DataFrame is described as in `discover`."""
    if isinstance(task_or_dataframe, pd.DataFrame):
        with tempfile.TemporaryDirectory(prefix="kepler-fit-") as tmp:
            task = _table_task(task_or_dataframe, Path(tmp), target, vars, group, test, test_split_column, None)
            frame = load_frame(task)
    else:
        task = load_task(str(task_or_dataframe))
        frame = load_frame(task)
    hints = {**{str(c): "" for c in frame.columns if c not in ("group", "split")}, **task.symbol_for_column()}
    law = parse_formula(task, formula, constants, hints)
    specs, human = human_law_for(task, law)
    opts = FitOptions.from_settings(human.fit, seed=seed, n_starts=starts) if human else \
        FitOptions(seed=seed, n_starts=starts)
    protocol = Protocol(task, frame)
    validation = protocol.validation_score(fit_law(law, protocol.fit_part, task.targets, specs, opts)
                                           .predict(protocol.validation))
    full = fit_law(law, protocol.train, task.targets, specs, opts)
    record = record_from_law(task, law, full, specs, opts, protocol, label="kepler.fit")
    record.metrics["validation"] = {**validation.as_dict(), "n": len(protocol.validation),
                                    "fitted_on": "fit part of train"}
    return Law(record)
