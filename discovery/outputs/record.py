"""A fitted law as one self-contained record: what every export, plot and report prints from.

`record_from_run` reads a finished run directory (best.json + campaign.sqlite) and rebuilds the
chosen candidate's law with the constants the campaign's final report fitted on all of train. The
test split is read once, for reporting only (`Protocol.final_test`), never to choose anything.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from discovery.laws.fit import RECIPES, FitOptions, GroupFit, LawFit, fit_law, recipe_options
from discovery.laws.law import Law, parse_law
from discovery.laws.uncertainty import Bootstrap, BootstrapOptions, summary
from discovery.outputs.cache import cached_bootstrap
from discovery.search.executors import stored_specs
from discovery.tasks.data import load_frame
from discovery.tasks.dataset import Dataset
from discovery.tasks.spec import Task, load_task
from discovery.tasks.values import ConstantSpec
from evaluators.metrics import score
from evaluators.protocol import Protocol

Key = tuple[str, int]  # (group, target index)


class RunError(ValueError):
    """A run directory or candidate cannot be read; the message is one line."""


def kepler_version() -> str:
    try:
        return metadata.version("kepler-laws")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class LawRecord:
    """A law, its constants per (group, target), and its scores per split."""

    task: Task
    law: Law
    constants: dict[Key, np.ndarray]  # theta in law.constants order
    specs: dict[str, ConstantSpec] | None
    fit_options: FitOptions
    metrics: dict[str, dict]  # split -> {r2, nmse, nmae, n, fitted_on}
    seed: int = 0
    label: str = "law"
    candidate_id: int | None = None
    role: str = "candidate"
    run_dir: Path | None = None
    proposer: str = ""
    uncertainty: dict | None = None  # filled by attach() below
    extra: dict = field(default_factory=dict)

    @property
    def groups(self) -> list[str]:
        return sorted({g for g, _ in self.constants})

    @property
    def targets(self) -> list[str]:
        return list(self.task.targets)

    def key_label(self, key: Key) -> str:
        g, t = key
        return g if len(self.targets) == 1 else f"{g}/{self.targets[t]}"

    def law_fit(self) -> LawFit:
        fits = {k: GroupFit(np.asarray(v, dtype=float).copy(), "fixed") for k, v in self.constants.items()}
        return LawFit(self.law, self.targets, fits)

    def predict(self, data: Dataset) -> np.ndarray:
        return self.law_fit().predict(data)


def _theta(law: Law, stored: dict) -> dict[Key, np.ndarray]:
    out: dict[Key, np.ndarray] = {}
    for key, values in stored.items():
        g, _, t = key.rpartition("|")
        out[(g, int(t))] = np.array([values[c.name] for c in law.constants], dtype=float)
    return out


def _scores(y: np.ndarray, pred: np.ndarray, fitted_on: str) -> dict:
    return {**score(y, pred).as_dict(), "fitted_on": fitted_on}


def load_best(run_dir: Path) -> dict:
    path = Path(run_dir) / "best.json"
    if not path.is_file():
        raise RunError(f"{run_dir}: no best.json; is this a finished Kepler run?")
    best = json.loads(path.read_text())
    if "best" not in best:
        raise RunError(f"{run_dir}: the run has no evaluated law ({best.get('status', 'unknown status')})")
    return best


def open_store(run_dir: Path) -> sqlite3.Connection:
    path = Path(run_dir) / "campaign.sqlite"
    if not path.is_file():
        raise RunError(f"{run_dir}: no campaign.sqlite; is this a Kepler run directory?")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


def run_meta(db: sqlite3.Connection) -> dict:
    return {r["key"]: json.loads(r["value"]) for r in db.execute("SELECT key, value FROM meta")}


def run_task(run_dir: Path, meta: dict, name: str) -> Task:
    """The task a run was made on: its task file when the run names one (kept in the run directory for a task
    inferred from a CSV, found there if the run was moved), else the installed task of that name."""
    ref = str((meta.get("settings") or {}).get("task") or name)
    path = Path(ref)
    if path.suffix == ".toml":
        for candidate in (path, Path(run_dir) / path.name):
            if candidate.is_file():
                return load_task(str(candidate))
    return load_task(name)


def record_from_run(run_dir: Path, candidate: int | None = None, protocol: Protocol | None = None) -> LawRecord:
    """The best law of a finished run (or candidate `candidate`), with constants fitted on all of train."""
    run_dir = Path(run_dir)
    best = load_best(run_dir)
    db = open_store(run_dir)
    try:
        meta = run_meta(db)
        cid = int(best["best"]["id"]) if candidate is None else int(candidate)
        row = db.execute("SELECT c.*, f.val_r2, f.val_nmse, f.val_nmae FROM candidates c LEFT JOIN fits f "
                         "ON f.candidate_id = c.id WHERE c.id = ?", (cid,)).fetchone()
        if row is None:
            raise RunError(f"{run_dir}: no candidate #{cid}")
        if row["status"] != "evaluated":
            raise RunError(f"{run_dir}: candidate #{cid} was {row['status']} ({row['reason'] or 'no reason'}); "
                           "only evaluated laws can be exported")
        final = db.execute("SELECT role, constants FROM final WHERE candidate_id = ?", (cid,)).fetchone()
        fit_row = db.execute("SELECT * FROM fits WHERE candidate_id = ?", (cid,)).fetchone()
        recipe = fit_row["recipe"] if fit_row is not None and "recipe" in fit_row.keys() else None
    finally:
        db.close()
    task = run_task(run_dir, meta, best["task"])
    law = parse_law(row["formula"], task.symbols, check_typos=False)
    seed = int(meta.get("seed", best.get("seed", 0)))
    opts = final_options(seed, recipe)
    specs = stored_specs(row["constant_specs"])
    protocol = protocol or Protocol(task, load_frame(task))
    if final is not None:
        constants, role = _theta(law, json.loads(final["constants"])), final["role"]
    else:  # not on the Pareto front: refit on all of train exactly as the final report would have
        fit = fit_law(law, protocol.train, task.targets, specs, opts)
        constants, role = {k: f.theta for k, f in fit.fits.items()}, "candidate"
    record = LawRecord(task=task, law=law, constants=constants, specs=specs, fit_options=opts, metrics={},
                       seed=seed, label=f"#{cid}", candidate_id=cid, role=role, run_dir=run_dir,
                       proposer=row["proposer"], extra={"protocol": protocol})
    score_record(record, protocol, validation=dict(r2=row["val_r2"], nmse=row["val_nmse"], nmae=row["val_nmae"]))
    return record


def record_from_law(task: Task, law: Law, fit: LawFit, specs: dict[str, ConstantSpec] | None, opts: FitOptions,
                    protocol: Protocol, label: str = "law") -> LawRecord:
    """A record for a law fitted outside a run (e.g. a human law fitted on all of train)."""
    record = LawRecord(task=task, law=law, constants={k: f.theta for k, f in fit.fits.items()}, specs=specs,
                       fit_options=opts, metrics={}, seed=opts.seed, label=label, extra={"protocol": protocol})
    score_record(record, protocol)
    return record


def final_options(seed: int, recipe: str | None) -> FitOptions:
    """The options the campaign's final report refit with: defaults, plus the recipe validation chose."""
    opts = FitOptions(seed=seed)
    return recipe_options(opts, recipe) if recipe in RECIPES else opts


def score_record(record: LawRecord, protocol: Protocol, validation: dict | None = None) -> None:
    """Fill record.metrics: train and test with the record's constants; validation as selection saw it."""
    train = protocol.train
    record.metrics["train"] = _scores(train.Y, record.predict(train), "all of train")
    if validation is not None and validation.get("r2") is not None:
        record.metrics["validation"] = {**validation, "n": len(protocol.validation), "failed": False,
                                        "fitted_on": "fit part of train"}
    test = protocol.final_test(purpose=f"report: score {record.task.name} law {record.label} once on test")
    record.metrics["test"] = _scores(test.Y, record.predict(test), "all of train")


def cache_dir(record: LawRecord) -> Path | None:
    """Where a run's computed-once results live (None for a law fitted outside a run)."""
    return record.run_dir / "cache" if record.run_dir is not None else None


def attach(record: LawRecord, protocol: Protocol, options: BootstrapOptions | None = None,
           progress: Callable[[int, int], None] | None = None, cache: bool = True) -> Bootstrap:
    """Bootstrap a record's law on all of train (from the run's cache when it holds this very bootstrap);
    store intervals and test coverage on the record."""
    options = options or BootstrapOptions()
    boot, cached = cached_bootstrap(cache_dir(record) if cache else None, record.law, protocol.train,
                                    record.constants, record.specs, record.fit_options, options, progress)
    record.extra["bootstrap_cached"] = cached
    test = protocol.final_test(purpose=f"report: bootstrap coverage of {record.task.name} law {record.label} on test")
    record.uncertainty = {**summary(boot, record.law, test), "intervals": boot.intervals()}
    record.extra["bootstrap"] = boot
    return boot
