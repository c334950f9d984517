"""A discovery campaign: propose -> parse -> fit on the fit part -> score on validation -> select.

Selection sees validation scores only. When the budget is spent, the Pareto front (validation
error vs complexity) is refit on all of train and scored once on test for the report. Every
candidate is committed to the run's SQLite store as it is produced; a killed run resumes at the
slot where it stopped, because proposals are seeded (and LLM replies cached) so the same slots come
back and are found in the store instead of being evaluated again. A run directory has one writer (its
lock), holds one run (other settings are refused), and a storage failure stops the run with one line
that says what to do; the time limit is honoured inside a generation too (LLM calls, fits).
"""
from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
import tomllib
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from discovery.laws.cache import parse_cached
from discovery.laws.fit import FitOptions, LawFit, fit_law, recipe_options
from discovery.laws.guard import bounded
from discovery.laws.identifiability import redundant_constants, screening_rows
from discovery.laws.law import Law, LawError, parse_law
from discovery.laws.shape import SHAPE_KEPT, shape_of
from discovery.search.close_calls import CloseCall, contenders, spread_beyond
from discovery.search.executors import (
    FitData,
    FitJob,
    FitOutcome,
    OutOfTime,
    constants_json,
    make_executor,
    stored_fit,
    stored_specs,
)
from discovery.search.population import Member, Population, pareto_front
from discovery.search.proposers.accounting import DEFAULT_PRICES, find_price, unknown_price_message
from discovery.search.proposers.base import (
    BudgetExhausted,
    Candidate,
    Proposal,
    ProposalContext,
    Proposer,
    Rejection,
    Survivor,
)
from discovery.search.rundir import RunLock
from discovery.search.runs import remember
from discovery.search.selection import combine
from discovery.search.store import Store, storage_error
from discovery.search.summaries import data_summary, residual_summary
from discovery.tasks.data import load_frame
from discovery.tasks.spec import Task, load_task
from discovery.tasks.values import ConstantSpec
from evaluators.benchmark import human_fits, parse_human_law
from evaluators.metrics import Scores, score
from evaluators.protocol import Protocol

RESULTS_DIR = Path("results")
# What the live panel, the final table, best.json and the report say when a wall-clock limit decided anything.
CLOCK_NOTE = "stopped by the clock: results depend on machine speed"
CLOCK_FIT_REASON = "stopped by the clock (fit_time_limit)"


class CampaignSettings(BaseModel):
    """Everything that defines a run; also readable from a TOML campaign file."""

    model_config = ConfigDict(extra="forbid")

    task: str
    proposer: Literal["offline", "llm", "mixed"] = "offline"
    seed: int = 0
    generations: int = Field(default=60, ge=1)
    population: int = Field(default=16, ge=2, description="members kept per island")
    islands: int = Field(default=2, ge=1)
    children: int = Field(default=8, ge=1, description="candidates proposed per island per generation")
    time_limit: float | None = Field(
        default=None, gt=0,
        description="wall seconds for the search; none by default, so the generations budget alone decides and the "
        "same seed gives the same result on any machine. When it binds, the run says so (CLOCK_NOTE)")
    fit_starts: int = Field(default=32, ge=1)
    fit_recipes: list[Literal["linear", "log", "log_huber"]] = Field(
        default=["linear", "log_huber"], min_length=1,
        description="fitting recipes tried per candidate; validation picks one (log ones need positive targets)")
    fit_time_limit: float = Field(
        default=60.0, gt=0, description="safety net: CPU seconds to fit one candidate (all groups). Fits are bounded "
        "deterministically by evaluation counts; this only stops pathological ones, and then the result depends on "
        "machine speed (the reason is recorded)")
    # LLM settings (used by --proposer llm|mixed)
    model: str | None = None
    base_url: str | None = None
    max_llm_calls: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=0, description="total tokens budget over the run")
    max_cost_usd: float | None = Field(default=None, ge=0)
    price_in: float | None = Field(default=None, ge=0, description="USD per million prompt tokens of `model`")
    price_out: float | None = Field(default=None, ge=0, description="USD per million completion tokens of `model`")
    prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="USD per million (prompt, completion) tokens by model name ([prices] table)")
    llm_timeout: float = Field(default=60.0, gt=0, description="seconds for one LLM request as a whole")
    llm_cache_dir: str | None = None
    replay_only: bool = False
    out: str | None = None
    structured: Literal["auto", "schema", "json", "off"] = Field(
        default="auto", description="LLM reply format: JSON schema, JSON object, or plain text (auto falls back)")
    executor: Literal["serial", "local", "dask"] = Field(default="local", description="where candidate fits run")
    engine: Literal["fast", "legacy"] = Field(
        default="fast", description="how a candidate is evaluated: fast (parsed once per process, the parsed law sent "
        "to the worker, compiled by SymEngine) or legacy (parsed at every step, SymPy lambdify), kept to measure "
        "against (benchmarks/search_throughput.py)")
    fitter: Literal["trf", "lm", "batched"] = Field(
        default="trf", description="how a candidate's constants are refined in the search (and its forward folds): "
        "trf (one scipy least_squares call per start, group after group), lm (the same with MINPACK's "
        "Levenberg-Marquardt) or batched (every group's refinements in one vectorised Levenberg-Marquardt; "
        "benchmarks/fit_batched.py measures each against trf)")
    workers: int | None = Field(default=None, ge=1, description="worker processes (default: one per core)")
    scheduler: str | None = Field(default=None, description="address of an existing Dask scheduler (tcp://host:8786)")
    # How laws are judged (search and final choice alike): chosen on validation-only evidence over all curated
    # tasks and seeds 0-4 (benchmarks/discovery_quality.py --nested, the rule fixed before the evidence was read;
    # README "Selection"). Runs stored before these defaults keep the ones they started with (BEFORE_DEFAULTS).
    selection_folds: int = Field(
        default=2, ge=1, le=4, description="forward folds a law is scored on (1: the validation slice alone; more: "
        "also fitted afresh one step, two steps... further down the scale and scored there; see "
        "evaluators.protocol.Protocol.folds)")
    selection_rule: Literal["mean", "max"] = Field(
        default="mean", description="how the folds' NMSE make one score: their mean, or the worst fold")
    far_field: bool = Field(
        default=True, description="shape priors also checked at 1e3, 1e6 and 1e12 x the largest observed value")
    basis: bool = Field(
        default=True, description="the offline grammar proposes the classic families first (power law per variable, "
        "their sum, their product)")
    sign_priors: bool = Field(
        default=False, description="under study: the offline grammar keeps a saturating term's amplitude positive "
        "and an offset inside the task's target_range, so a law's far-field floor is the offset itself")

    @model_validator(mode="after")
    def _dollar_budget_needs_a_price(self) -> "CampaignSettings":
        if self.proposer != "offline" and self.max_cost_usd is not None and self.model:
            known = {**DEFAULT_PRICES, **self.prices}
            if self.price_in is None and self.price_out is None and find_price(known, self.model) is None:
                raise ValueError(unknown_price_message(self.model, self.max_cost_usd))
        return self

    def same_run(self, other: "CampaignSettings") -> bool:
        """Whether two settings define the same run: they may differ only in where it runs and where replies
        are cached (the results do not depend on those)."""
        free = {"out", "llm_cache_dir", *PLACEMENT}
        return self.model_dump(exclude=free) == other.model_dump(exclude=free)


def _one_line(exc: ValidationError, where: str = "") -> ValueError:
    first = exc.errors()[0]
    loc = ".".join(map(str, first["loc"]))
    msg = str(first.get("ctx", {}).get("error", "")) or first["msg"]
    return ValueError(f"{where}field `{loc}`: {msg}" if loc else f"{where}{msg}")


def make_settings(**values) -> CampaignSettings:
    """Settings from keyword values (the command line); a wrong one is one line naming the field."""
    try:
        return CampaignSettings(**values)
    except ValidationError as exc:
        raise _one_line(exc) from None


def load_settings_file(path: Path, **overrides) -> CampaignSettings:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read campaign file: {exc}") from None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return CampaignSettings.model_validate(raw)
    except ValidationError as exc:
        raise _one_line(exc, f"{path}: ") from None


# What a run stored before a setting existed ran with: a resumed old run keeps its own code path and selection.
BEFORE_DEFAULTS = {"engine": "legacy", "selection_folds": 1, "far_field": False, "basis": False}

# Settings a resumed run may change: budgets (raised only) and where the fits run (results do not depend on it).
RAISABLE = ("generations", "time_limit", "max_llm_calls", "max_tokens", "max_cost_usd")
PLACEMENT = ("executor", "workers", "scheduler", "replay_only")


def resumed_settings(stored: CampaignSettings, overrides: dict, run_dir: Path,
                     completed: int) -> tuple[CampaignSettings, list[str]]:
    """The stored settings with the given ones applied, and what changed; refuses any other change."""
    update, changes = {}, []
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "out":
            if Path(value).resolve() != Path(run_dir).resolve():
                raise ValueError(f"--out {value} is not the run being resumed ({run_dir}); leave --out out")
            continue
        old = getattr(stored, key)
        if value == old:
            continue
        flag = "--" + key.replace("_", "-")
        if key in PLACEMENT:
            update[key] = value
        elif key in RAISABLE:
            if old is None:
                raise ValueError(f"{flag} {value}: the run has no {key.replace('_', ' ')} limit to raise")
            if value < old:
                raise ValueError(f"{flag} {value} is below the run's {old}: a resumed run's budgets can only be raised")
            if key == "generations" and value < completed:
                raise ValueError(f"{flag} {value}: the run already completed {completed} generations")
            update[key] = value
        else:
            raise ValueError(f"{flag} {value!r} differs from the run's {old!r}; a resumed run keeps its settings "
                             "(only budgets can be raised, and where fits run changed): start a new run to change it")
        changes.append(f"{key} {old} -> {value}")
    return stored.model_copy(update=update), changes


@dataclass
class Progress:
    generation: int = 0
    generations: int = 0
    completed: int = 0  # generations done
    evaluated: int = 0
    rejected: int = 0
    duplicates: int = 0
    best_val_r2: float = -math.inf
    best_formula: str = ""
    started: float = field(default_factory=time.monotonic)
    llm: dict = field(default_factory=dict)
    llm_event: str = ""  # the last LLM error or retry, as it happened
    warnings: list[str] = field(default_factory=list)
    status: str = "running"
    clock: str = ""  # CLOCK_NOTE and what the clock stopped, once a time limit has bound

    @property
    def rate(self) -> float:
        return self.evaluated / max(1e-9, time.monotonic() - self.started)


def _seed_for(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:8], "little")


def _specs_json(specs: dict[str, ConstantSpec] | None) -> dict | None:
    return None if specs is None else {k: v.model_dump() for k, v in specs.items()}


def make_proposer(settings: CampaignSettings, task: Task) -> Proposer:
    from discovery.search.proposers.offline import OfflineProposer

    parse, fast = parser_for(settings.engine), settings.engine == "fast"

    def offline() -> OfflineProposer:
        return OfflineProposer(task, parse=parse, memoize=fast, basis=settings.basis, sign_priors=settings.sign_priors)

    if settings.proposer == "offline":
        return offline()
    from discovery.search.proposers.llm import LLMProposer
    from discovery.search.proposers.mixed import MixedProposer

    llm = LLMProposer.from_settings(settings, task)
    if settings.proposer == "llm":
        return llm
    return MixedProposer(llm, offline())


def parser_for(engine: str) -> Callable[..., Law]:
    """The fast engine parses each text once per process (and compiles with SymEngine); legacy parses every time.
    Either within the time bound of discovery.laws.guard: a light law (the offline grammar's) is parsed here at
    once, another was checked by the helper when its proposer parsed it (the verdict is remembered)."""
    return bounded(parse_law if engine == "legacy" else partial(parse_cached, engine="symengine"))


class Campaign:
    """A resumable discovery run. `Campaign(settings).run()`; results land in `run_dir`."""

    def __init__(self, settings: CampaignSettings, run_dir: Path | None = None,
                 proposer: Proposer | None = None, on_progress: Callable[[Progress], None] | None = None,
                 resuming: bool = False):
        self.settings = settings
        self.task = load_task(settings.task)
        self.run_dir = Path(run_dir or settings.out or RESULTS_DIR / self.task.name /
                            f"{settings.proposer}-seed{settings.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
        # the proposer first: its refusals (no model, no price for a dollar budget) must not leave a run behind
        self.proposer = proposer or make_proposer(settings, self.task)
        self._lock = RunLock(self.run_dir)
        try:  # a folder another process is writing is refused first, whatever it holds
            self._lock.acquire().release()
        except OSError as exc:
            raise storage_error(exc, self._lock.path) from None
        self.store = Store(self.run_dir / "campaign.sqlite")
        if not resuming:
            self._refuse_other_run()
        if settings.out or run_dir:
            remember(self.run_dir)  # so `kepler runs` lists it wherever it was written
        self.protocol = Protocol(self.task, load_frame(self.task))
        self.on_progress = on_progress or (lambda p: None)
        self._parse = parser_for(settings.engine)
        self.fit_opts = self.search_fit_options(settings)
        self.population = Population(settings.islands, settings.population)
        further_folds = self.protocol.folds(settings.selection_folds)[1:]
        self._fit_data = FitData(self.task.symbols, self.task.targets, self.protocol.fit_part,
                                 self.protocol.validation, self.task.shape_priors(), self.protocol.validation_blocks,
                                 far_field=settings.far_field, folds=tuple(further_folds))
        self._split = self.protocol.fingerprint(further_folds)
        if self.store.meta().get("status") != "finished":  # a finished run only reports (unless extended)
            self._refuse_changed_split()
        self._screen_rows = screening_rows(self.protocol.fit_part)
        self._screened: dict[str, str | None] = {}
        self._executor = None
        self.members: dict[int, Member] = {}
        self.progress = Progress(generations=settings.generations)
        self._summary = data_summary(self.task, self.protocol)
        self._elapsed_before = 0.0
        self._clock_fits = 0  # candidates whose fit a time limit cut short
        self._clock_search = False  # the search stopped on --time-limit
        self.changes: list[str] = []
        self.warnings: list[str] = []
        llm = getattr(self.proposer, "llm", self.proposer)
        if hasattr(llm, "listener"):
            llm.listener = self._llm_event

    def _refuse_other_run(self) -> None:
        """A folder that holds another run (another task, seed, budget...) is never written over or mixed in."""
        stored = self.store.meta().get("settings")
        if stored is None:
            return
        try:
            theirs = CampaignSettings.model_validate({**BEFORE_DEFAULTS, **stored})
        except (ValidationError, TypeError):
            theirs = None
        if theirs is None or not theirs.same_run(self.settings):
            what = (f"a run of task {stored.get('task')!r} (proposer {stored.get('proposer')}, seed "
                    f"{stored.get('seed')}) with other settings" if isinstance(stored, dict) else "another run")
            self.store.close()
            raise ValueError(f"{self.run_dir} already holds {what}; continue it with kepler discover --resume "
                             f"{self.run_dir}, or choose another folder with --out")

    def _refuse_changed_split(self) -> None:
        """Scores of one split are never mixed with another's: a run whose task now carves other fit, validation
        or fold rows (its task file, split rule or data changed since it started) is refused, not continued."""
        stored = self.store.meta().get("split")
        if stored is not None and stored != self._split:
            self.store.close()
            raise ValueError(f"{self.run_dir}: task {self.task.name!r} now splits its rows differently than when "
                             f"this run started (its task file or data changed), so its scores no longer compare; "
                             f"start a new run with --out")

    @staticmethod
    def search_fit_options(settings: CampaignSettings) -> FitOptions:
        """Search fits are cheaper than final ones (looser tolerance, fewer evaluations); the Pareto front is
        refit with the defaults before anything is reported on test."""
        return FitOptions(seed=settings.seed, n_starts=settings.fit_starts, n_refine=1, max_nfev=80, polish=False,
                          tol=1e-6, time_limit=settings.fit_time_limit, fitter=settings.fitter)

    def _llm_event(self, line: str) -> None:
        self.progress.llm_event = line
        self.on_progress(self.progress)

    def _llm_silence(self, gen: int) -> str | None:
        """Why the LLM counts as not answering: it was called before generation `gen` and never answered."""
        if self.settings.proposer == "offline":
            return None
        usage = self.store.llm_usage(before_generation=gen)
        if usage["calls"] == 0 or usage["failed"] < usage["calls"]:
            return None
        errors = self.store.llm_errors(before_generation=gen)
        return (f"the LLM never answered: {usage['calls']} call(s) failed ({errors[0][0] if errors else 'no message'})"
                f"; check --base-url, --model and the server")

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            self.progress.warnings = list(self.warnings)
            self.store.event("warning", message)

    @classmethod
    def resume(cls, run_dir: Path, overrides: dict | None = None, **kwargs) -> "Campaign":
        """Continue a run. `overrides` (settings given again) may raise its budgets, which extends a finished run,
        and change where fits run; any other changed setting is refused with a one-line ValueError."""
        run_dir = Path(run_dir)
        if not (run_dir / "campaign.sqlite").is_file():
            raise ValueError(f"{run_dir}: not a Kepler run directory (no campaign.sqlite)")
        store = Store(run_dir / "campaign.sqlite", readonly=True)  # reading it creates nothing
        try:
            meta = store.meta()
            last = store.last_generation()
        except sqlite3.Error as exc:
            raise storage_error(exc, run_dir / "campaign.sqlite") from None
        finally:
            store.close()
        if "settings" not in meta:
            raise ValueError(f"{run_dir}: not a Kepler run (no settings in campaign.sqlite)")
        # a run stored before engines or the selection settings existed keeps what it started with
        stored = CampaignSettings.model_validate({**BEFORE_DEFAULTS, **meta["settings"]})
        completed = 0 if last is None else int(last["generation"]) + 1
        settings, changes = resumed_settings(stored, overrides or {}, run_dir, completed)
        task_file = Path(settings.task)
        if task_file.suffix == ".toml" and not task_file.exists() and (run_dir / task_file.name).exists():
            settings = settings.model_copy(update={"task": str(run_dir / task_file.name)})  # the run dir moved
        campaign = cls(settings, run_dir=run_dir, resuming=True, **kwargs)
        if changes:
            campaign._extend(changes, completed)
        campaign.changes = changes
        return campaign

    def _extend(self, changes: list[str], completed: int) -> None:
        """Take the raised budgets: a finished run goes on from its last generation, and reports again at the end."""
        self._refuse_changed_split()
        meta = self.store.meta()
        self.store.set_meta(settings=self.settings.model_dump())
        self.store.event("resume", "settings changed: " + "; ".join(changes))
        if meta.get("status") == "finished":
            best = self.run_dir / "best.json"
            if best.exists():  # kept for reference; the extended run writes a new best.json when it ends
                best.replace(self.run_dir / f"best.after-{completed}-generations.json")
            self.store.db.execute("DELETE FROM final")
            self.store.set_meta(status="running")

    # --- evaluation ------------------------------------------------------------------------
    def _member_from_row(self, row) -> Member | None:
        if row is None or row["status"] not in ("evaluated", "failed") or row["val_nmse"] is None:
            return None
        return Member(int(row["id"]), row["canonical_hash"], self._selection_nmse(row["val_nmse"], row["fold_nmse"]),
                      int(row["complexity"]), shape_ok=not row["shape"])

    def _selection_nmse(self, val_nmse: float, folds: str | list[float] | None) -> float:
        """What selection compares: validation NMSE, or its combination with the further folds' (see selection)."""
        extra = json.loads(folds) if isinstance(folds, str) else folds
        return combine([float(val_nmse), *extra], self.settings.selection_rule) if extra else float(val_nmse)

    def _plan(self, gen: int, island: int, slot: int, item: Candidate | Rejection,
              batch: dict[str, tuple[int, int]]) -> dict:
        """Decide what a slot needs without fitting: stored already, rejected, duplicate, or a fit job."""
        existing = self.store.slot(gen, island, slot)
        if existing is not None:  # resumed: this slot was done before the interruption
            if existing["status"] in ("evaluated", "failed"):  # it was this generation's fit of its law
                batch.setdefault(existing["canonical_hash"], (island, slot))
            return {"kind": "existing", "row": existing}
        common = dict(generation=gen, island=island, slot=slot, proposer=item.proposer, formula=item.formula)
        if isinstance(item, Rejection):
            return {"kind": "write", "common": common, "info": {}, "status": "rejected", "reason": item.reason}
        try:
            declared = list(item.constants) if item.constants else None
            law = self._parse(item.formula, self.task.symbols, constants=declared,
                                max_constants=self.task.constant_limit, column_hints=self.task.symbol_for_column())
        except LawError as exc:
            info = dict(operation=item.operation, parents=item.parents, rationale=item.rationale)
            return {"kind": "write", "common": common, "info": info, "status": "rejected", "reason": str(exc)}
        info = dict(operation=item.operation, canonical=law.canonical, canonical_hash=law.hash, parents=item.parents,
                    constant_specs=_specs_json(item.constants), rationale=item.rationale,
                    complexity=law.complexity, n_constants=len(law.constants))
        # Only the grammar's own laws are screened: their variables are scaled to order one, where a rank test
        # at random starts is reliable. A law in raw units (an LLM's E + A/N**alpha with default starts) can
        # look rank-deficient when it is only badly scaled; the fitter copes with that, the screen would not.
        screened = self._screen(law, item.constants) if item.proposer == "offline" else None
        if screened:
            return {"kind": "write", "common": common, "info": info, "status": "rejected", "reason": screened}
        # Proposed twice in this generation: only the first is fitted. Checked before the store, so a resumed
        # generation whose first copy was stored before the interruption words the duplicate as a fresh run does.
        if law.hash in batch:
            return {"kind": "write", "common": common, "info": info, "status": "duplicate",
                    "reason": "same law as generation {} island {} slot {}".format(gen, *batch[law.hash])}
        original = self.store.evaluated_by_hash(law.hash)
        if original is not None:  # the fit cache: a law is never fitted twice in a run
            return {"kind": "write", "common": common, "info": info, "status": "duplicate",
                    "reason": f"same law as #{original['id']}"}
        batch[law.hash] = (island, slot)
        job = FitJob(law.text, item.constants, self.fit_opts, self.settings.fit_time_limit,
                     tuple(self.settings.fit_recipes), law=law if self.settings.engine == "fast" else None)
        return {"kind": "fit", "common": common, "info": info, "job": job, "law": law}

    def _screen(self, law: Law, specs: dict[str, ConstantSpec] | None) -> str | None:
        """Why a parsed law is not worth a fit (redundant constants on the fit rows), or None; memoised."""
        if law.hash not in self._screened:
            self._screened[law.hash] = redundant_constants(law, self._screen_rows, specs, seed=int(law.hash[:8], 16))
        return self._screened[law.hash]

    def _write(self, plan: dict, outcome: FitOutcome | None) -> Member | None:
        if plan["kind"] == "existing":
            row = plan["row"]
            self._count(row["status"])
            return self._member_from_row(row)
        if outcome is None:
            self.store.add_candidate(**plan["common"], **plan["info"], status=plan["status"], reason=plan["reason"])
            self._count(plan["status"])
            return None
        status = "evaluated" if outcome.ok else "failed"
        cid = self.store.add_candidate(
            **plan["common"], **plan["info"], status=status, reason="; ".join(outcome.failures)[:300] or None,
            fit=dict(constants=outcome.constants, status="ok" if outcome.ok else "failed", val_r2=outcome.val_r2,
                     val_nmse=outcome.val_nmse, val_nmae=outcome.val_nmae, fit_seconds=outcome.seconds,
                     recipe=outcome.recipe, shape=outcome.shape, fold_nmse=outcome.fold_nmse,
                     reason=f"{CLOCK_FIT_REASON}: {outcome.clock} group fits" if outcome.clock else None))
        self._count(status)
        if outcome.clock:
            self._clock_fits += 1
            self.progress.clock = self._clock_note()
        law = plan["law"]
        if outcome.shape is None and outcome.val_r2 > self.progress.best_val_r2:
            self.progress.best_val_r2, self.progress.best_formula = outcome.val_r2, law.text
        return Member(cid, law.hash, self._selection_nmse(outcome.val_nmse, outcome.fold_nmse), law.complexity,
                      shape_ok=outcome.shape is None)

    def _count(self, status: str) -> None:
        if status in ("evaluated", "failed"):
            self.progress.evaluated += 1
        elif status == "rejected":
            self.progress.rejected += 1
        elif status == "duplicate":
            self.progress.duplicates += 1

    @property
    def executor(self):
        if self._executor is None:
            self._executor = make_executor(self.settings.executor, self._fit_data, self.settings.workers,
                                           self.settings.scheduler)
        return self._executor

    def close(self) -> None:
        self._close_executor()
        self.store.close()
        self._lock.release()

    # --- proposing ---------------------------------------------------------------------------
    def _survivor(self, m: Member) -> Survivor:
        row = self.store.candidate(m.id)
        fitted = json.loads(row["fitted"]) if row["fitted"] else {}
        first = next(iter(fitted.values()), {})
        return Survivor(id=m.id, formula=row["formula"], canonical=row["canonical"] or "", complexity=m.complexity,
                        n_constants=row["n_constants"] or 0, val_r2=row["val_r2"], val_nmse=row["val_nmse"],
                        constants=first, constant_specs=stored_specs(row["constant_specs"]), shape=row["shape"])

    def _contexts(self, gen: int, deadline: float | None = None) -> list[ProposalContext]:
        # Only what earlier generations produced: a resumed generation must see exactly what it saw first.
        seen = frozenset(r["canonical_hash"] for r in self.store.db.execute(
            "SELECT DISTINCT canonical_hash FROM candidates WHERE canonical_hash IS NOT NULL AND generation < ?",
            (gen,)))
        rejections = [Rejection(r["formula"], r["reason"], r["proposer"])
                      for r in self.store.recent_rejections(before_generation=gen)]
        residuals = ""
        if self.settings.proposer != "offline" and self.population.best() is not None:
            residuals = self._residuals(self.population.best())
        contexts = []
        for island in range(self.settings.islands):
            survivors = [self._survivor(m) for m in self.population.ranked(island)[:8]]
            contexts.append(ProposalContext(
                task=self.task, generation=gen, island=island, n=self.settings.children,
                seed=_seed_for(self.settings.seed, gen, island) % (2**32), survivors=survivors,
                rejections=rejections, residuals=residuals, data_summary=self._summary, seen_hashes=seen,
                screen=self._screen, deadline=deadline))
        return contexts

    def _residuals(self, best: Member) -> str:
        """Where the best law errs on train, from its stored fit-part constants (no refit)."""
        row = self.store.candidate(best.id)
        law = self._parse(row["formula"], self.task.symbols, check_typos=False)
        return residual_summary(self.task, law, self._search_fit(row, law), self.protocol.train)

    def _search_fit(self, row, law: Law) -> LawFit:
        """The constants a candidate was validated with (fitted on the fit part), from the store."""
        return stored_fit(row["fitted"], law, self.task.targets)

    # --- the loop -----------------------------------------------------------------------------
    def _restore(self) -> int:
        for row in self.store.candidates():
            m = self._member_from_row(row)
            if m is not None:
                self.members[m.id] = m
        last = self.store.last_generation()
        meta = self.store.meta()
        self._elapsed_before = float(meta.get("search_seconds", 0.0))
        if last is None:
            return 0
        self.population.restore(json.loads(last["islands"]), self.members)
        # completed generations only: the slots a generation cut short had stored are counted when it replays
        counts = self.store.counts(before_generation=int(last["generation"]) + 1)
        self.progress.evaluated = counts.get("evaluated", 0) + counts.get("failed", 0)
        self.progress.rejected = counts.get("rejected", 0)
        self.progress.duplicates = counts.get("duplicate", 0)
        self._clock_fits = self.store.clock_fits(CLOCK_FIT_REASON)
        self._clock_search = any(e["message"] == "time limit" for e in self.store.events("clock"))
        self.progress.clock = self._clock_note()
        best = self.population.best()
        if best is not None:
            row = self.store.candidate(best.id)
            self.progress.best_val_r2, self.progress.best_formula = row["val_r2"], row["formula"]
        return int(last["generation"]) + 1

    def _deadline(self, t0: float) -> float | None:
        """The monotonic time at which the search's time limit is reached (None: no limit)."""
        limit = self.settings.time_limit
        return None if limit is None else t0 + limit - self._elapsed_before

    def _out_of_time(self, t0: float) -> bool:
        deadline = self._deadline(t0)
        return deadline is not None and time.monotonic() > deadline

    def _stopped_by_clock(self) -> str:
        self._clock_search = True
        self.store.event("clock", "time limit")
        self.progress.clock = self._clock_note()
        return "budget: time limit"

    def run(self) -> dict:
        """Run (or continue) the search, then the final report; returns best.json's content.

        The run directory is locked meanwhile (a second writer is refused); a storage failure raises
        StorageError, with the run left as it was (resumable)."""
        try:
            self._lock.acquire()
        except OSError as exc:
            raise storage_error(exc, self._lock.path) from None
        try:
            return self._run()
        except sqlite3.Error as exc:
            self._mark_interrupted()
            raise storage_error(exc, self.store.path) from None
        except BaseException:  # Ctrl-C, a storage error, a bug: the run stops where it is, and resumes from there
            self._mark_interrupted()
            raise
        finally:
            self._lock.release()

    def _mark_interrupted(self) -> None:
        try:
            if self.store.meta().get("status") == "running":
                self.store.set_meta(status="interrupted")
        except sqlite3.Error:
            pass  # a full disk: `kepler runs` still shows it interrupted (no process holds its lock)

    def _run(self) -> dict:
        s = self.settings
        meta = self.store.meta()
        if "settings" not in meta:
            self.store.set_meta(settings=s.model_dump(), task=self.task.name, proposer=s.proposer, seed=s.seed,
                                status="running", created=time.time(), split=self._split)
        elif meta.get("status") == "finished":
            try:
                return json.loads((self.run_dir / "best.json").read_text())
            except (OSError, ValueError):  # best.json lost or cut short: the report is made again from the store
                self._restore()
                return self.finish(meta.get("stop_reason", "budget: generations"))
        if meta.get("split") is None:  # a run stored before splits were recorded: from now on
            self.store.set_meta(split=self._split)
        start = self._restore()
        self.progress.completed = start
        _ = self.executor  # start worker processes now, before any proposer thread exists
        if hasattr(self.proposer, "attach_ledger"):
            # every LLM call of the run is in the store, charged when it was sent: budgets span the whole run, and
            # calls a kill left unsettled are settled now (from the reply cache) or charged at their worst case
            self.proposer.attach_ledger(self.store)
        elif start > 0 and hasattr(self.proposer, "add_previous_usage"):
            usage = self.store.llm_usage(before_generation=start)
            self.proposer.add_previous_usage(calls=usage["calls"], prompt_tokens=usage["prompt_tokens"],
                                             completion_tokens=usage["completion_tokens"], cost_usd=usage["cost_usd"])
        self.store.set_meta(status="running")
        t0 = time.monotonic()
        stop_reason = "budget: generations"
        interrupted = True
        try:
            for gen in range(start, s.generations):
                if self._out_of_time(t0):
                    stop_reason = self._stopped_by_clock()
                    break
                self.progress.generation = gen
                silence = self._llm_silence(gen)
                if silence and s.proposer == "llm":
                    stop_reason = f"llm: {silence}"
                    break
                if silence and hasattr(self.proposer, "offline_only") and not self.proposer.offline_only:
                    self.proposer.offline_only = True
                    self._warn(f"{silence}; from generation {gen + 1} on this run is offline only")
                deadline = self._deadline(t0)
                try:
                    contexts = self._contexts(gen, deadline)
                    if self._pipelined:  # island by island: island 0 is fitted while island 1 is proposed
                        proposals = (self.proposer.propose([ctx])[0] for ctx in contexts)
                    else:
                        proposals = iter(self.proposer.propose(contexts))
                        if self._out_of_time(t0):  # the limit struck while proposing: the generation is dropped
                            stop_reason = self._stopped_by_clock()
                            break
                    self._run_generation(gen, proposals, deadline)
                except BudgetExhausted as exc:
                    stop_reason = f"budget: {exc}"
                    break
                except OutOfTime:  # while fitting: what is written stays, the rest of the generation is dropped
                    stop_reason = self._stopped_by_clock()
                    break
                self.store.set_meta(search_seconds=self._elapsed_before + time.monotonic() - t0)
            interrupted = False
        finally:
            try:
                self.store.set_meta(search_seconds=self._elapsed_before + time.monotonic() - t0)
            except sqlite3.Error:
                if not interrupted:
                    raise
            finally:
                self._close_executor(kill=interrupted)
        self.store.event("stop", stop_reason)
        return self.finish(stop_reason)

    def _close_executor(self, kill: bool = False) -> None:
        """Stop the fit workers; `kill`: at once (Ctrl-C, an error, the time limit), without waiting for fits."""
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.close(kill=kill)

    @property
    def _pipelined(self) -> bool:
        """The fast engine hands each island's fits to the executor as soon as that island is planned, so the
        workers fit while this process proposes the next island. Only for the offline proposer, whose islands
        are independent given the generation's contexts (an LLM proposer asks for all islands at once), and on
        this machine's pool (Dask gets a generation at a time: its recovery from a lost worker resubmits what
        is left of one batch)."""
        return self.settings.engine == "fast" and self.settings.proposer == "offline" and \
            self.settings.executor != "dask"

    def _run_generation(self, gen: int, proposals: Iterable[Proposal], deadline: float | None = None) -> None:
        """Plan every slot, fit the new laws (in parallel when the executor allows), write in slot order.

        Every slot of the generation is planned before anything is written, so a plan sees only earlier
        generations in the store, however the fits are handed out. OutOfTime when the deadline passes while
        fitting: the slots written so far stay written."""
        rng = np.random.default_rng(_seed_for(self.settings.seed, gen, 999))
        plans: list[tuple[int, dict]] = []
        batch: dict[str, tuple[int, int]] = {}
        handed_out: list[Iterator[FitOutcome]] = []
        for island, proposal in enumerate(proposals):
            for call in proposal.calls:
                self.store.add_llm_call(gen, island, call)  # kept as is if the proposer's ledger wrote it
            items: list[Candidate | Rejection] = [*proposal.candidates, *proposal.rejections]
            planned = [(island, self._plan(gen, island, slot, item, batch)) for slot, item in enumerate(items)]
            plans.extend(planned)
            if self._pipelined:
                handed_out.append(iter(self.executor.map([p["job"] for _, p in planned if p["kind"] == "fit"],
                                                         deadline=deadline)))
        self.progress.llm = self.store.llm_usage()
        if self._pipelined:
            outcomes = chain.from_iterable(handed_out)
        else:
            outcomes = iter(self.executor.map((p["job"] for _, p in plans if p["kind"] == "fit"), deadline=deadline))
        newcomers: list[list[Member]] = [[] for _ in range(self.settings.islands)]  # one proposal per island
        try:
            for island, plan in plans:
                member = self._write(plan, next(outcomes) if plan["kind"] == "fit" else None)
                if member is not None:
                    self.members[member.id] = member
                    newcomers[island].append(member)
                self.on_progress(self.progress)
        except OutOfTime:
            self._close_executor(kill=True)  # fits still running are of no use now
            raise
        for island, members in enumerate(newcomers):
            self.population.admit(island, members, rng)
        self.population.migrate(gen)
        best = self.population.best()
        best_r2 = self.store.candidate(best.id)["val_r2"] if best else None
        self.store.complete_generation(gen, self.population.snapshot(), best.id if best else None, best_r2)
        self.progress.completed = gen + 1
        self.on_progress(self.progress)

    def _generations_completed(self) -> int:
        return (self.store.last_generation() or {"generation": -1})["generation"] + 1

    def _clock_note(self, final_fits: int = 0) -> str:
        """CLOCK_NOTE and what the clock stopped, or "" when no time limit bound (the usual case)."""
        what = []
        if self._clock_search:
            what.append(f"the search at the time limit ({self.settings.time_limit:g} s)")
        if self._clock_fits:
            what.append(f"{self._clock_fits} candidate fit(s) at fit_time_limit ({self.settings.fit_time_limit:g} s)")
        if final_fits:
            what.append(f"{final_fits} final refit(s) at their time limit")
        return f"{CLOCK_NOTE} ({'; '.join(what)})" if what else ""

    # --- the final report -------------------------------------------------------------------------
    def finish(self, stop_reason: str) -> dict:
        """Refit the Pareto front on all of train, score it once on test, write best.json."""
        self.progress.status = "final report"
        self.on_progress(self.progress)
        everyone = list(self.members.values())
        llm = self._llm_summary()
        if not everyone:
            self.store.set_meta(status="finished", stop_reason=stop_reason)
            result = {"task": self.task.name, "status": "no law evaluated", "stop_reason": stop_reason, "llm": llm,
                      "warnings": self.warnings, "clock": self._clock_note() or None,
                      "candidates_evaluated": 0, "candidates_rejected": self.progress.rejected,
                      "generations_completed": self._generations_completed()}
            try:
                (self.run_dir / "best.json").write_text(json.dumps(result, indent=2))
            except OSError as exc:
                raise storage_error(exc, self.run_dir / "best.json") from None
            return result
        best = min(everyone, key=lambda m: m.rank)
        front = pareto_front(everyone)
        if best not in front:
            front.append(best)
        test = self.protocol.final_test(purpose="campaign final report: Pareto front and human law")
        # The refit continues from the constants each law was validated with (plus its own initial values),
        # with the full refinement: the law that was selected is the law that is reported, not another basin
        # of it that a fresh multi-start search on more rows might jump to.
        final_opts = FitOptions(seed=self.settings.seed, n_starts=1)
        reports = []
        final_clock = 0
        final_fits: dict[int, LawFit] = {}
        for m in sorted(front, key=lambda m: m.complexity):
            row, law, fit = self._final_fit(m.id, final_opts)
            final_fits[m.id] = fit
            final_clock += fit.stopped_by_clock > 0
            t = score(test.Y, fit.predict(test))
            self.store.add_final(m.id, "best" if m.id == best.id else "pareto", constants_json(fit),
                                 "ok" if fit.ok else "failed", t.as_dict())
            reports.append(self._law_report(row, law, fit, t))
        human = self._human_report(test)
        best_report = next(r for r in reports if r["id"] == best.id)
        close_call = self._close_call(best, everyone, final_fits, final_opts)
        if warning := close_call.warning():
            self._warn(warning)
        meta = self.store.meta()
        result = {
            "task": self.task.name,
            "proposer": self.settings.proposer,
            "seed": self.settings.seed,
            "stop_reason": stop_reason,
            "clock": self._clock_note(final_clock) or None,  # CLOCK_NOTE when a time limit decided anything
            "best": best_report,
            "pareto_front": reports,
            "close_call": close_call.as_dict(),
            "human": human,
            "candidates_evaluated": self.progress.evaluated,
            "candidates_rejected": self.progress.rejected,
            "duplicates_skipped": self.progress.duplicates,
            "generations_completed": self._generations_completed(),
            "wall_seconds": round(float(meta.get("search_seconds", 0.0)), 2),
            "llm": llm,
            "warnings": self.warnings,
            "how": self._how(),
        }
        tmp = self.run_dir / "best.json.tmp"
        try:
            tmp.write_text(json.dumps(result, indent=2, default=float))
            tmp.replace(self.run_dir / "best.json")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise storage_error(exc, self.run_dir / "best.json") from None
        self.store.set_meta(status="finished", stop_reason=stop_reason, best_val_r2=best_report["validation"]["r2"],
                            best_test_r2=best_report["test"]["r2"])
        self.progress.status = "finished"
        self.progress.clock = result["clock"] or ""
        self.on_progress(self.progress)
        return result

    def _final_fit(self, member_id: int, opts: FitOptions) -> tuple[sqlite3.Row, Law, LawFit]:
        """A candidate refit on all of train, from the constants it was validated with."""
        row = self.store.candidate(member_id)
        law = self._parse(row["formula"], self.task.symbols, check_typos=False)
        fit = fit_law(law, self.protocol.train, self.task.targets, stored_specs(row["constant_specs"]),
                      recipe_options(opts, row["recipe"] or "linear"), warm=self._search_fit(row, law))
        return row, law, fit

    def _close_call(self, best: Member, everyone: list[Member], fits: dict[int, LawFit],
                    opts: FitOptions) -> CloseCall:
        """The laws as good as the best by the selection score, and how far apart they predict a step beyond
        train (see discovery.search.close_calls); reported, never used to pick."""
        rivals = contenders(best, everyone)
        entries, compared = [], [fits[best.id]]
        for m in rivals:
            if m.id in fits:
                row, fit = self.store.candidate(m.id), fits[m.id]
            else:
                row, _, fit = self._final_fit(m.id, opts)
            compared.append(fit)
            entries.append({"id": m.id, "formula": row["formula"], "selection_nmse": m.val_nmse,
                            "validation_r2": row["val_r2"], "complexity": m.complexity})
        axes = [i for i, v in enumerate(self.task.variables) if v.column in self.task.split.axes()]
        return CloseCall(entries, spread_beyond(compared, self.protocol.train, axes) if rivals else None,
                         [self.task.variables[i].symbol for i in axes])

    def _llm_summary(self) -> dict:
        """LLM usage of the whole run, with its failures and retries; warns when a mixed run never heard back."""
        usage = self.store.llm_usage()
        if (self.settings.proposer == "mixed" and usage["calls"] and usage["failed"] == usage["calls"]
                and not any("never answered" in w for w in self.warnings)):
            self._warn(f"the LLM never answered ({usage['calls']} call(s) failed): this run is offline only")
        return {"calls": usage["calls"], "cached": usage["cached"], "failed": usage["failed"],
                "retries": usage["retries"], "errors": dict(self.store.llm_errors()[:5]),
                "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
                "cost_usd": round(usage["cost_usd"], 6), "charged_usd": round(usage["charged_usd"], 6),
                "charged_tokens": usage["charged_tokens"]}

    def _how(self) -> str:
        folds = len(self._fit_data.folds)
        also = (f", and on {folds} further forward fold{'s' if folds > 1 else ''} (each fitted afresh on the rows "
                f"below its own larger-scale slice and scored there; the "
                f"{'mean' if self.settings.selection_rule == 'mean' else 'worst'} NMSE over the folds decides)") \
            if folds else ""
        return (f"Candidates were fitted on the fit part of train and selected on the validation slice "
                f"({self.task.split.describe_validation()}){also}; the Pareto front was refit on all of train "
                f"(starting from the validated constants) and scored once on test.")

    def _law_report(self, row, law: Law, fit: LawFit, test: Scores) -> dict:
        groups = sorted({g for g, _ in fit.fits})
        return {
            "id": int(row["id"]),
            "formula": row["formula"],
            "canonical": law.canonical,
            "complexity": law.complexity,
            "n_constants": len(law.constants),
            "fit_recipe": row["recipe"] or "linear",
            "proposer": row["proposer"],
            "generation": row["generation"],
            "constants": {g if len(self.task.targets) == 1 else f"{g}/{self.task.targets[t]}": fit.constants(g, t)
                          for g in groups for t in range(len(self.task.targets))},
            "validation": {"r2": row["val_r2"], "nmse": row["val_nmse"], "nmae": row["val_nmae"],
                           "fitted_on": "fit part of train",
                           **({"fold_nmse": json.loads(row["fold_nmse"]),
                               "selection_nmse": self._selection_nmse(row["val_nmse"], row["fold_nmse"])}
                              if row["fold_nmse"] else {})},
            "shape": row["shape"] or (SHAPE_KEPT if self.task.shape_priors() else None),
            "test": {"r2": test.r2, "nmse": test.nmse, "nmae": test.nmae, "fitted_on": "all of train"},
        }

    def _human_report(self, test) -> list[dict]:
        out = []
        for human in self.task.human_laws:
            try:
                law = parse_human_law(self.task, human)
            except LawError as exc:  # a broken human law in the task file: said, the report goes on
                self._warn(str(exc))
                continue
            val_fits = dict(human_fits(self.task, self.protocol.fit_part, human, self.settings.seed))
            test_fits = dict(human_fits(self.task, self.protocol.train, human, self.settings.seed))
            for variant, tf in test_fits.items():
                v = self.protocol.validation_score(val_fits[variant].predict(self.protocol.validation))
                t = score(test.Y, tf.predict(test))
                shape = shape_of(val_fits[variant], self.protocol.train, self.task.shape_priors())
                out.append({"law": human.name, "formula": human.formula, "constants_from": variant,
                            "complexity": law.complexity, "n_constants": len(law.constants),
                            "validation": v.as_dict(), "test": t.as_dict(), "published_r2": human.published.r2,
                            "shape": shape or (SHAPE_KEPT if self.task.shape_priors() else None)})
        return out
