"""Sweeps: one campaign per (task, seed, proposer), run in parallel, resumable, tabulated.

A sweep directory holds `sweep.json` (the grid and the settings every campaign shares),
`sweep.sqlite` (one row per run: status and, once finished, its best law and scores) and one run
directory per campaign, `<task>/<proposer>-seed<N>/`, laid out like any other run (so `kepler runs`
lists them). Campaigns run where the executor says:

- `serial`, or `local` with one worker: one after another in this process;
- `local`: a process pool sized to the machine, one campaign per process;
- `dask`: one task per campaign on a Dask cluster (an existing scheduler, or a LocalCluster started
  and stopped here); a campaign whose worker dies is rerun elsewhere and resumes from its store.

Inside a sweep every campaign fits its candidates serially (the parallelism is across campaigns),
so a run's results do not depend on where it ran. This process is the only writer of sweep.sqlite;
each campaign is the only writer of its own store. An interrupted sweep resumes with
`Sweep.resume(dir).run()`: finished runs are kept, the others resume from their own store.
"""
from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
import resource
import sqlite3
import statistics
import threading
import time
import tomllib
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from discovery.search.campaign import RESULTS_DIR, Campaign, CampaignSettings
from discovery.search.executors import (
    close_dask,
    dask_client,
    ignore_interrupts,
    single_blas_thread_env,
    stop_pool,
    watch_parent,
)
from discovery.tasks.spec import list_tasks, load_task

# Fields the sweep sets per run; the shared campaign settings may not.
PER_RUN = ("task", "seed", "proposer", "out", "executor", "workers", "scheduler")


def _is_sldbench(name: str) -> bool:
    try:
        return load_task(name).sldbench
    except ValueError:  # a broken task file of the user's: not an SLDBench task
        return False


def parse_tasks(value: str | list[str]) -> list[str]:
    """`all`, `sldbench` (the SLDBench tasks), `a,b,c`, or a list of names."""
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]
    out: list[str] = []
    for item in items:
        if item == "all":
            names = list_tasks()
        elif item == "sldbench":
            names = [n for n in list_tasks() if _is_sldbench(n)]
        else:
            names = [load_task(item).name]  # a clear error for an unknown task
        out.extend(n for n in names if n not in out)
    if not out:
        raise ValueError("no tasks given (use all, sldbench, or a,b,c)")
    return out


def parse_seeds(value: str | int | list[int]) -> list[int]:
    """`0-4` (inclusive), `0,2,5`, `3`, or a list of ints."""
    if isinstance(value, int):
        return [value]
    parts = value.split(",") if isinstance(value, str) else value
    seeds: list[int] = []
    for part in parts:
        text = str(part).strip()
        if not text:
            continue
        try:
            if "-" in text[1:]:
                lo, hi = text.split("-", 1) if not text.startswith("-") else (text, "")
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                span = range(lo_i, hi_i + 1)
            else:
                span = range(int(text), int(text) + 1)
        except ValueError:
            raise ValueError(f"seeds: cannot read {text!r} (use 0-4, 0,2,5 or 3)") from None
        seeds.extend(s for s in span if s not in seeds)
    if not seeds:
        raise ValueError("no seeds given (use 0-4, 0,2,5 or 3)")
    return seeds


class SweepSettings(BaseModel):
    """The grid and how it runs; also readable from a TOML sweep file (same names)."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str]
    seeds: list[int] = Field(default_factory=lambda: [0])
    proposers: list[Literal["offline", "llm", "mixed"]] = Field(default_factory=lambda: ["offline"])
    executor: Literal["serial", "local", "dask"] = "local"
    workers: int | None = Field(default=None, ge=1, description="campaigns at once (default: one per core)")
    scheduler: str | None = Field(default=None, description="an existing Dask scheduler, tcp://host:8786")
    campaign: dict[str, Any] = Field(default_factory=dict,
                                     description="settings every campaign shares (generations, population, ...)")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "proposer" in raw:
            raw = dict(raw)
            p = raw.pop("proposer")
            raw.setdefault("proposers", [s.strip() for s in p.split(",")] if isinstance(p, str) else p)
        return raw

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, v: Any) -> list[str]:
        return parse_tasks(v)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, v: Any) -> list[int]:
        return parse_seeds(v)

    @field_validator("campaign")
    @classmethod
    def _campaign(cls, v: dict[str, Any]) -> dict[str, Any]:
        fixed = sorted(set(v) & set(PER_RUN))
        if fixed:
            raise ValueError(f"{', '.join(fixed)} are set by the sweep, not in [campaign]")
        CampaignSettings(task="_", **v)  # unknown or invalid fields fail here, before anything runs
        return v

    @model_validator(mode="after")
    def _campaigns_valid(self) -> "SweepSettings":
        for proposer in self.proposers:  # e.g. an LLM's dollar budget needs a price: refused before anything runs
            CampaignSettings(task="_", proposer=proposer, **self.campaign)
        return self

    def runs(self) -> list[tuple[str, int, str]]:
        return [(t, s, p) for t in self.tasks for p in self.proposers for s in self.seeds]

    def campaign_settings(self, task: str, seed: int, proposer: str, run_dir: Path) -> CampaignSettings:
        # fits run serially inside each campaign: the sweep parallelises across campaigns
        return CampaignSettings(task=task, seed=seed, proposer=proposer, **self.campaign, executor="serial",
                                out=str(run_dir))


def load_sweep_file(path: Path, **overrides: Any) -> SweepSettings:
    """Read a TOML sweep file; non-None overrides win (campaign fields go into [campaign])."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read sweep file: {exc}") from None
    return _validate(raw, overrides, where=f"{path}: ")


def make_sweep_settings(**values: Any) -> SweepSettings:
    return _validate({}, values)


def _validate(raw: dict, overrides: dict, where: str = "") -> SweepSettings:
    raw = dict(raw)
    campaign = dict(raw.get("campaign", {}))
    top = set(SweepSettings.model_fields) | {"proposer"}
    for k in [k for k in raw if k not in top and k in CampaignSettings.model_fields]:
        campaign[k] = raw.pop(k)  # campaign settings may sit at the top of a sweep file too
    for k, v in overrides.items():
        if v is None:
            continue
        if k in top:
            raw.pop("proposer" if k == "proposers" else "proposers" if k == "proposer" else k, None)
            raw[k] = v
        else:
            campaign[k] = v
    raw["campaign"] = campaign
    try:
        return SweepSettings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(map(str, first["loc"])) or "(top level)"
        msg = str(first.get("ctx", {}).get("error", "")) or first["msg"]
        raise ValueError(f"{where}sweep field `{loc}`: {msg}") from None


# --- one campaign (runs wherever the executor puts it) ------------------------------------------
class SweepStopped(Exception):
    """The sweep that submitted this campaign was interrupted; the campaign stops where it is (resumable)."""


def _stop_check(stop_event: str | None) -> Callable[[object], None] | None:
    """On a Dask worker: a progress hook that stops the campaign once the sweep sets its stop event
    (Dask cannot cancel a task that is already running). Checked at most once a second."""
    if not stop_event:
        return None
    from distributed import Event

    event, last = Event(stop_event), [0.0]

    def check(_progress) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0:
            last[0] = now
            if event.is_set():
                raise SweepStopped(stop_event)

    return check


def run_campaign(settings: dict, run_dir: str, stop_event: str | None = None, own_process: bool = False) -> dict:
    """Run, or resume from its store, one campaign; return what the sweep table needs. `own_process`: the
    campaign is the only one this process runs, so the process's peak memory is the campaign's."""
    path = Path(run_dir)
    on_progress = _stop_check(stop_event)
    campaign = None
    if (path / "campaign.sqlite").exists():
        try:
            campaign = Campaign.resume(path, on_progress=on_progress)
        except ValueError:  # the store was created but the settings never written: start afresh
            campaign = None
    if campaign is None:
        campaign = Campaign(CampaignSettings.model_validate(settings), run_dir=path, on_progress=on_progress)
    try:
        result = campaign.run()
    finally:
        campaign.close()
    return {**summarize(result), "peak_rss_mb": peak_rss_mb() if own_process else None}


def peak_rss_mb() -> float:
    """The peak resident memory of this process or any child it waited for (the fit workers), in MB."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(max(own.ru_maxrss, kids.ru_maxrss) / 1024, 1)  # Linux reports kB


def summarize(result: dict) -> dict:
    best = result.get("best")
    human = next((h for h in result.get("human", []) if h.get("constants_from") == "kepler_fit"), None)
    return {
        "best_formula": best["formula"] if best else None,
        "best_val_r2": best["validation"]["r2"] if best else None,
        "best_test_r2": best["test"]["r2"] if best else None,
        "human_law": human["law"] if human else None,
        "human_test_r2": human["test"]["r2"] if human else None,
        "evaluated": result.get("candidates_evaluated", 0),
        "wall_seconds": result.get("wall_seconds"),
        "stop_reason": result.get("stop_reason"),
        # 1 when the run warned that laws as good as its best part from it beyond train (close_calls)
        "close_call": None if "close_call" not in result else int(not result["close_call"]["decided"]),
    }


def _pool_worker(parent: int) -> None:
    """A sweep's pool process: ends with its parent, and leaves Ctrl-C to it (it is stopped by the sweep). Its
    formula helper is forked first, while the process has one thread (see discovery.laws.guard)."""
    from discovery.laws import guard

    ignore_interrupts()
    guard.prestart()
    watch_parent(parent)


# --- the sweep ---------------------------------------------------------------------------------
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    task TEXT NOT NULL, seed INTEGER NOT NULL, proposer TEXT NOT NULL,
    run_dir TEXT NOT NULL,             -- relative to the sweep directory
    status TEXT NOT NULL,              -- queued | running | finished | failed | interrupted
    best_formula TEXT, best_val_r2 REAL, best_test_r2 REAL, human_law TEXT, human_test_r2 REAL,
    evaluated INTEGER, wall_seconds REAL, stop_reason TEXT, error TEXT,
    updated_at REAL NOT NULL,
    peak_rss_mb REAL,                  -- the campaign's peak memory, when it ran in a process of its own
    close_call INTEGER,                -- 1: the run warned of a close call (discovery.search.close_calls)
    PRIMARY KEY (task, seed, proposer)
);
"""
RESULT_FIELDS = ("best_formula", "best_val_r2", "best_test_r2", "human_law", "human_test_r2", "evaluated",
                 "wall_seconds", "stop_reason", "peak_rss_mb", "close_call")
ADDED_COLUMNS = {"peak_rss_mb": "REAL", "close_call": "INTEGER"}  # columns a sweep made before them lacks


@dataclass
class SweepProgress:
    total: int = 0
    done: int = 0
    running: int = 0
    queued: int = 0
    failed: int = 0
    best_by_task: dict[str, float] = field(default_factory=dict)  # best validation R² so far
    best_law_by_task: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    status: str = "running"


class Sweep:
    """A grid of campaigns and its status: `Sweep.create(settings, out).run()` or `Sweep.resume(dir).run()`."""

    def __init__(self, settings: SweepSettings, sweep_dir: Path):
        self.settings = settings
        self.dir = Path(sweep_dir)
        self.db = sqlite3.connect(self.dir / "sweep.sqlite", timeout=30, isolation_level=None,
                                  check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        have = {r[1] for r in self.db.execute("PRAGMA table_info(runs)")}
        for column, kind in ADDED_COLUMNS.items():
            if column not in have:
                self.db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
        self._lock = threading.Lock()
        self._session_start = time.time()
        self._started_mono = time.monotonic()
        self._poll_cache: tuple[float, SweepProgress] | None = None
        now = time.time()
        with self._lock:
            for task, seed, proposer in settings.runs():
                self.db.execute("INSERT OR IGNORE INTO runs (task, seed, proposer, run_dir, status, updated_at) "
                                "VALUES (?,?,?,?,?,?)", (task, seed, proposer, f"{task}/{proposer}-seed{seed}",
                                                         "queued", now))

    # --- creating and reopening -----------------------------------------------------------------
    @classmethod
    def create(cls, settings: SweepSettings, out: Path | None = None) -> "Sweep":
        sweep_dir = Path(out or RESULTS_DIR / "sweeps" / time.strftime("%Y%m%d-%H%M%S"))
        if (sweep_dir / "sweep.json").exists():
            raise ValueError(f"{sweep_dir} already holds a sweep; continue it with --resume {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        body = {"kind": "kepler sweep", "created": time.time(), **settings.model_dump()}
        (sweep_dir / "sweep.json").write_text(json.dumps(body, indent=2))
        return cls(settings, sweep_dir)

    @classmethod
    def resume(cls, sweep_dir: Path, executor: str | None = None, workers: int | None = None,
               scheduler: str | None = None) -> "Sweep":
        """Reopen a sweep; where it runs may change (results do not depend on it), the grid may not."""
        path = Path(sweep_dir) / "sweep.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{sweep_dir}: not a Kepler sweep ({exc})") from None
        raw = {k: v for k, v in raw.items() if k in SweepSettings.model_fields}
        for k, v in (("executor", executor), ("workers", workers), ("scheduler", scheduler)):
            if v is not None:
                raw[k] = v
        if executor is not None and workers is None and scheduler is None:
            raw["workers"], raw["scheduler"] = None, None
        return cls(SweepSettings.model_validate(raw), Path(sweep_dir))

    def close(self) -> None:
        self.db.close()

    # --- status -------------------------------------------------------------------------------
    def rows(self) -> list[sqlite3.Row]:
        with self._lock:
            return self.db.execute("SELECT * FROM runs ORDER BY rowid").fetchall()

    def _set(self, key: tuple[str, int, str], status: str, **values: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._lock:
            self.db.execute(f"UPDATE runs SET status = ?, updated_at = ?{', ' + cols if cols else ''} "
                            "WHERE task = ? AND seed = ? AND proposer = ?",
                            (status, time.time(), *values.values(), *key))

    def _finished(self, key: tuple[str, int, str], summary: dict) -> None:
        self._set(key, "finished", error=None, **{k: summary.get(k) for k in RESULT_FIELDS})

    def run_dir(self, row) -> Path:
        return (self.dir / row["run_dir"]).resolve()

    def progress(self, max_age: float = 1.0) -> SweepProgress:
        """Counts from sweep.sqlite; `running` = started in this session and not done; best so far per task
        from finished runs and from the stores of running ones. Cached for `max_age` seconds."""
        now = time.monotonic()
        if self._poll_cache and now - self._poll_cache[0] < max_age:
            return self._poll_cache[1]
        p = SweepProgress(started=self._started_mono)
        for row in self.rows():
            p.total += 1
            best, formula = row["best_val_r2"], row["best_formula"]
            if row["status"] == "finished":
                p.done += 1
            elif row["status"] == "failed":
                p.failed += 1
            elif row["status"] == "running" and self._active(row):
                p.running += 1
                best, formula = _store_best(self.run_dir(row) / "campaign.sqlite")
            else:
                p.queued += 1
            if best is not None and (row["task"] not in p.best_by_task or best > p.best_by_task[row["task"]]):
                p.best_by_task[row["task"]], p.best_law_by_task[row["task"]] = best, formula or ""
        self._poll_cache = (now, p)
        return p

    def _active(self, row) -> bool:
        """A run counts as running once its store was touched in this session (queued ones were not)."""
        db = self.run_dir(row) / "campaign.sqlite"
        stamps = [p.stat().st_mtime for p in (db, Path(f"{db}-wal")) if p.exists()]
        return bool(stamps) and max(stamps) >= self._session_start - 1

    # --- running --------------------------------------------------------------------------------
    def run(self, on_progress: Callable[[SweepProgress], None] | None = None, poll: float = 0.5) -> list[dict]:
        """Run every unfinished run; returns the sweep table (also written as Markdown and JSON)."""
        self._session_start = time.time()
        self._started_mono = time.monotonic()
        self._poll_cache = None
        notify = on_progress or (lambda p: None)
        todo = []
        for row in self.rows():
            key = (row["task"], row["seed"], row["proposer"])
            if row["status"] == "finished" and (self.run_dir(row) / "best.json").exists():
                continue
            self._set(key, "queued")
            settings = self.settings.campaign_settings(*key, self.run_dir(row)).model_dump()
            todo.append((key, settings, str(self.run_dir(row))))
        kind, workers = self.settings.executor, self.settings.workers
        try:
            if kind == "serial" or (kind == "local" and (workers or os.cpu_count() or 1) == 1) or not todo:
                self._run_here(todo, notify)
            elif kind == "local":
                self._run_pool(todo, notify, workers or os.cpu_count() or 1, poll)
            else:
                self._run_dask(todo, notify, poll)
        except BaseException:
            for row in self.rows():
                if row["status"] in ("running", "queued"):
                    self._set((row["task"], row["seed"], row["proposer"]), "interrupted")
            raise
        finally:
            self._poll_cache = None
        table = self.table()
        self.write_table(table)
        p = self.progress(max_age=0)
        p.status = "finished" if p.failed == 0 else f"finished, {p.failed} failed"
        notify(p)
        return table

    def _mark_running(self, key) -> None:
        self._set(key, "running")
        self._poll_cache = None

    def _record(self, key, fn: Callable[[], dict]) -> None:
        try:
            summary = fn()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - one failed run does not stop the sweep
            self._set(key, "failed", error=f"{type(exc).__name__}: {exc}"[:500])
        else:
            self._finished(key, summary)
        self._poll_cache = None

    def _run_here(self, todo, notify) -> None:
        for key, settings, run_dir in todo:
            self._mark_running(key)
            notify(self.progress(max_age=0))
            self._record(key, functools.partial(run_campaign, settings, run_dir))
            notify(self.progress(max_age=0))

    def _run_pool(self, todo, notify, workers: int, poll: float) -> None:
        with single_blas_thread_env():  # the pool's processes start while it runs: one per campaign
            self._run_pool_processes(todo, notify, workers, poll)

    def _run_pool_processes(self, todo, notify, workers: int, poll: float) -> None:
        """Every campaign in a process of its own: its peak memory is its own, and no campaign runs warmer (caches)
        or heavier (memory) for the campaigns that ran before it in the same process."""
        pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_pool_worker, initargs=(os.getpid(),), max_tasks_per_child=1)
        try:
            pending = {}
            for key, settings, run_dir in todo:
                self._mark_running(key)  # shown as running only once its store is touched
                pending[pool.submit(run_campaign, settings, run_dir, None, True)] = key
            while pending:
                done, _ = wait_futures(list(pending), timeout=poll, return_when=FIRST_COMPLETED)
                for fut in done:
                    key = pending.pop(fut)
                    self._record(key, fut.result)
                notify(self.progress())
        except BaseException:
            # interrupted: stop the campaigns now (each store is consistent after every candidate; they resume)
            stop_pool(pool)
            raise
        finally:  # a dead pool worker fails its runs (BrokenProcessPool); a resumed sweep finishes them
            pool.shutdown(wait=True, cancel_futures=True)

    def _run_dask(self, todo, notify, poll: float) -> None:
        from distributed import Event

        client, cluster = dask_client(self.settings.workers, self.settings.scheduler)
        tag = uuid.uuid4().hex[:6]
        stop = f"kepler-sweep-stop-{tag}"
        pending = {}
        try:
            for key, settings, run_dir in todo:
                self._mark_running(key)
                # a campaign whose worker dies is rerun elsewhere by the scheduler and resumes from its store
                fut = client.submit(run_campaign, settings, run_dir, stop, pure=False, retries=1,
                                    key=f"kepler-campaign-{key[0]}-{key[2]}-seed{key[1]}-{tag}")
                pending[fut] = key
            while pending:
                for fut in [f for f in pending if f.done()]:
                    key = pending.pop(fut)
                    self._record(key, fut.result)
                    fut.release()
                notify(self.progress())
                if pending:
                    time.sleep(poll)
        except BaseException:
            # running tasks cannot be cancelled: tell their campaigns to stop, so none is left writing its
            # store on a cluster that outlives this sweep when it is resumed
            try:
                Event(stop, client=client).set()
            except Exception:  # noqa: BLE001 - the scheduler may be gone already
                pass
            raise
        finally:
            for fut in list(pending):
                fut.cancel()
            close_dask(client, cluster)

    # --- the table -------------------------------------------------------------------------------
    def table(self) -> list[dict]:
        """Per (task, proposer): mean ± sd over seeds of the best law's test R², beside the human law."""
        groups: dict[tuple[str, str], list] = {}
        for row in self.rows():
            groups.setdefault((row["task"], row["proposer"]), []).append(row)
        out = []
        for (task, proposer), rows in groups.items():
            done = [r for r in rows if r["status"] == "finished" and r["best_test_r2"] is not None]
            test = [r["best_test_r2"] for r in done]
            human = [r["human_test_r2"] for r in done if r["human_test_r2"] is not None]
            top = max(done, key=lambda r: (r["best_val_r2"], -r["seed"]), default=None)
            out.append({
                "task": task, "proposer": proposer, "seeds": [r["seed"] for r in rows],
                "runs_finished": len(done), "runs": len(rows),
                "test_r2_mean": _mean(test), "test_r2_sd": _sd(test),
                "test_r2_by_seed": {str(r["seed"]): r["best_test_r2"] for r in done},
                "val_r2_mean": _mean([r["best_val_r2"] for r in done]),
                "best_law": top["best_formula"] if top else None,
                "best_law_seed": top["seed"] if top else None,
                "human_law": next((r["human_law"] for r in done if r["human_law"]), None),
                "human_test_r2": _mean(human),
                "wall_seconds_max": _max([r["wall_seconds"] for r in done]),
                "peak_rss_mb_max": _max([r["peak_rss_mb"] for r in done]),
                "close_calls": _close_calls(done),
            })
        return out

    def write_table(self, table: list[dict]) -> list[Path]:
        paths = [self.dir / "sweep_table.json", self.dir / "sweep_table.md"]
        paths[0].write_text(json.dumps({"sweep": str(self.dir), "grid": self.settings.model_dump(),
                                        "tasks": table}, indent=2, default=float))
        paths[1].write_text(to_markdown(table, self.settings))
        return paths


def _store_best(db: Path) -> tuple[float | None, str | None]:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            row = con.execute("SELECT f.val_r2, c.formula FROM fits f JOIN candidates c ON c.id = f.candidate_id "
                              "WHERE f.val_r2 IS NOT NULL ORDER BY f.val_r2 DESC LIMIT 1").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None, None
    return (float(row[0]), row[1]) if row else (None, None)


def _close_calls(done: list) -> str | None:
    """'k/n': how many of the finished runs warned of a close call; None when none of them could say."""
    known = [r["close_call"] for r in done if r["close_call"] is not None]
    return f"{sum(known)}/{len(known)}" if known else None


def _max(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(xs) if xs else None


def _sd(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.stdev(xs) if len(xs) >= 2 else (0.0 if xs else None)


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "–"
    return f"{x:.3g}" if math.isfinite(x) and abs(x) >= 1e4 else f"{x:.{digits}f}"


def mean_sd(row: dict) -> str:
    if row["test_r2_mean"] is None:
        return "–"
    return f"{fmt(row['test_r2_mean'])} ± {fmt(row['test_r2_sd'])}"


def to_markdown(table: list[dict], settings: SweepSettings) -> str:
    camp = ", ".join(f"{k}={v}" for k, v in sorted(settings.campaign.items())) or "campaign defaults"
    lines = [
        "# Kepler sweep",
        "",
        f"Seeds {', '.join(map(str, settings.seeds))}; proposers {', '.join(settings.proposers)}; {camp}.",
        "Test R² of each run's best law (selected on validation, refit on all of train, scored once on test): "
        "mean ± sd over seeds. Human law: the task's published form, constants fitted by Kepler on all of train.",
        "",
        "Search s and peak MB: the longest run's search (proposing and fitting) and the largest run's peak memory "
        "(– where a run shared its process with others: Dask, or the serial executor). Close calls: runs that "
        "warned that laws as good as their best on selection part from it beyond train, so another seed may "
        "report another law.",
        "",
        "| task | proposer | runs | R² test, best law (mean ± sd) | R² test, human law (Kepler fit) | "
        "best law (seed) | close calls | search s (max) | peak MB (max) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table:
        law = f"`{r['best_law']}` ({r['best_law_seed']})" if r["best_law"] else "–"
        human = f"{fmt(r['human_test_r2'])} ({r['human_law']})" if r["human_law"] else "–"
        lines.append(f"| {r['task']} | {r['proposer']} | {r['runs_finished']}/{r['runs']} | {mean_sd(r)} | "
                     f"{human} | {law} | {r.get('close_calls') or '–'} | {fmt(r.get('wall_seconds_max'), 0)} | "
                     f"{fmt(r.get('peak_rss_mb_max'), 0)} |")
    return "\n".join(lines) + "\n"
