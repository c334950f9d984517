"""Human laws of the literature, fitted by Kepler's fitter and scored on the official test split.

Each human law gives up to two rows per task: `kepler_fit` (constants fitted on all of train by the
same fitter a discovered law gets) and `published_constants` (the paper's constants, no refit).
The published score stands beside both.
"""
from __future__ import annotations

import csv
import json
import math
import sqlite3
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from discovery.laws.fit import FitOptions, LawFit, fit_law, fixed_law
from discovery.laws.guard import parse_bounded
from discovery.laws.law import Law, LawError
from discovery.tasks.data import load_frame
from discovery.tasks.dataset import Dataset
from discovery.tasks.spec import HumanLaw, Task, load_task
from evaluators.metrics import rmse, score
from evaluators.protocol import Protocol


@dataclass
class BenchRow:
    task: str
    law: str
    variant: str  # kepler_fit | published_constants
    split: str
    r2: float
    r2_clipped: float
    nmse: float
    nmae: float
    rmse: float
    published_r2: float | None
    published_rmse: float | None
    n_constants: int
    complexity: int
    fit_seconds: float
    status: str

    def as_dict(self) -> dict:
        return asdict(self)


def declared_constants(human: HumanLaw) -> set[str]:
    """Every constant a human law names: the ones to fit and the published ones (of any group)."""
    names = set(human.constants)
    for key, value in human.published_constants.items():
        names |= set(value) if isinstance(value, dict) else {key}
    return names


def parse_human_law(task: Task, human: HumanLaw) -> Law:
    """The human law through the parser (a task file is untrusted text: within the time bound), its constants as
    declared; an error names the task file and the law."""
    try:
        return parse_bounded(human.formula, task.symbols, constants=declared_constants(human),
                             column_hints=task.symbol_for_column())
    except LawError as exc:
        raise LawError(f"{task.where}: human law {human.name!r}: {exc}") from None


def usable_human_laws(task: Task) -> tuple[list[tuple[HumanLaw, Law]], list[str]]:
    """The task's human laws that parse, with their laws, and one line for each that does not (a broken human
    law in a task file is reported; it never stops the fitting of another formula)."""
    usable, broken = [], []
    for human in task.human_laws:
        try:
            usable.append((human, parse_human_law(task, human)))
        except LawError as exc:
            broken.append(str(exc))
    return usable, broken


def parse_formula(task: Task, text: str, constants: list[str] | None = None,
                  column_hints: dict[str, str] | None = None) -> Law:
    """A user's formula for `task` (kepler fit, kepler.fit), within the time bound. A name that looks like a typo
    of a variable is refused, unless the formula is one of the task's human laws, whose file declares its
    constants (the Muennighoff law's `RN` and `RD` beside the variables N and D)."""
    hints = column_hints if column_hints is not None else task.symbol_for_column()
    try:
        return parse_bounded(text, task.symbols, constants=constants, max_constants=task.constant_limit,
                             column_hints=hints)
    except LawError as refused:
        if constants is not None:
            raise
        try:
            law = parse_bounded(text, task.symbols, max_constants=task.constant_limit, column_hints=hints,
                                check_typos=False)
        except LawError:
            raise refused from None
        if any(ref.hash == law.hash for _, ref in usable_human_laws(task)[0]):
            return law
        raise refused from None


def human_law_for(task: Task, law: Law) -> tuple[dict | None, HumanLaw | None]:
    """If `law` is one of the task's human laws: that law's constant specs (by the names `law` uses) and the law."""
    for human, ref in usable_human_laws(task)[0]:
        if not human.constants:
            continue
        if ref.hash == law.hash:
            by_canonical = {i: human.constants.get(rc.name) for i, rc in enumerate(ref.constants)}
            return {c.name: by_canonical[i] for i, c in enumerate(law.constants) if by_canonical[i] is not None}, human
    return None, None


def human_fits(task: Task, data: Dataset, human: HumanLaw, seed: int = 0) -> list[tuple[str, LawFit]]:
    """The human law fitted on `data` (if it has fittable constants) and with its published constants."""
    law = parse_human_law(task, human)
    out: list[tuple[str, LawFit]] = []
    if human.constants:
        opts = FitOptions.from_settings(human.fit, seed=seed)
        out.append(("kepler_fit", fit_law(law, data, task.targets, human.constants, opts)))
    if human.published_constants:
        try:
            fixed = fixed_law(law, data, task.targets, human.published_for)
        except ValueError as exc:
            raise LawError(f"{task.where}: human law {human.name!r}: {exc}") from None
        out.append(("published_constants", fixed))
    return out


def bench_task(task: Task, seed: int = 0) -> list[BenchRow]:
    protocol = Protocol(task, load_frame(task))
    test = protocol.final_test(purpose="bench: score human laws fitted on train")
    rows: list[BenchRow] = []
    for human in task.human_laws:
        for variant, fit in human_fits(task, protocol.train, human, seed):
            pred = fit.predict(test)
            s = score(test.Y, pred)
            rows.append(BenchRow(
                task=task.name, law=human.name, variant=variant, split="test",
                r2=s.r2, r2_clipped=max(-1.0, min(1.0, s.r2)), nmse=s.nmse, nmae=s.nmae,
                rmse=rmse(test.Y, pred) if not s.failed else float("nan"),
                published_r2=human.published.r2, published_rmse=human.published.metrics.get("rmse_test"),
                n_constants=len(fit.law.constants), complexity=fit.law.complexity,
                fit_seconds=round(fit.seconds, 4), status="ok" if fit.ok else "; ".join(fit.failures)[:200],
            ))
    return rows


def run_bench(task_names: list[str], seed: int = 0, progress: Callable[[str], None] | None = None) -> list[BenchRow]:
    rows: list[BenchRow] = []
    for name in task_names:
        if progress:
            progress(name)
        t0 = time.perf_counter()
        rows.extend(bench_task(load_task(name), seed))
        if progress:
            progress(f"{name} done in {time.perf_counter() - t0:.1f}s")
    return rows


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def to_markdown(rows: list[BenchRow]) -> str:
    lines = [
        "| task | law | constants | split | R² | R² (clipped) | NMSE | NMAE | published R² |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.task} | {r.law} | {r.variant} | {r.split} | {_fmt(r.r2)} | {_fmt(r.r2_clipped)} | "
                     f"{_fmt(r.nmse, 4)} | {_fmt(r.nmae, 4)} | {_fmt(r.published_r2)} |")
    return "\n".join(lines) + "\n"


def _write_tables(rows: list, fields: list[str], out_dir: Path, stem: str, markdown: str) -> list[Path]:
    """The same rows as `<stem>.json`, `<stem>.csv` and `<stem>.md`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.csv", out_dir / f"{stem}.md"]
    paths[0].write_text(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
    with paths[1].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(r.as_dict() for r in rows)
    paths[2].write_text(markdown)
    return paths


def write_results(rows: list[BenchRow], out_dir: Path) -> list[Path]:
    header = ("# Human laws on the official test split\n\nFitted by Kepler's fitter on the train split "
              "(`constants = kepler_fit`) or scored with the paper's constants (`published_constants`). "
              "Metrics as SLDBench defines them; published R² is SLDBench's table (clipped at -1).\n\n")
    return _write_tables(rows, list(BenchRow.__dataclass_fields__), out_dir, "bench", header + to_markdown(rows))


# --- the extended leaderboard: human (published), human (Kepler fit), discovered -----------------------
@dataclass
class LeaderRow:
    task: str
    entry: str  # human (published) | human (Kepler fit) | discovered | discovered (over seeds) | discovered (best)
    law: str  # the human law's name, "<run dir> #<candidate id>", or the proposer for rows over seeds
    formula: str
    r2: float | None  # test split (over seeds: the mean)
    nmse: float | None
    nmae: float | None
    n_constants: float
    complexity: float
    validation_r2: float | None
    source: str  # where the test numbers come from
    proposer: str = ""
    seed: int | None = None
    runs: int = 1  # over seeds: how many runs
    seeds: str = ""
    r2_sd: float | None = None
    r2_min: float | None = None
    r2_max: float | None = None
    nmse_sd: float | None = None
    nmse_min: float | None = None
    nmse_max: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def finished_runs(root: Path) -> list[tuple[Path, dict]]:
    """(run dir, best.json) of every finished run under `root` that has a best law."""
    out = []
    for path in sorted(Path(root).rglob("best.json")):
        try:
            best = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(best, dict) and "best" in best and "task" in best:
            out.append((path.parent, best))
    return out


def _human_rows(task: Task, rows: list[BenchRow]) -> list[LeaderRow]:
    out = []
    for human in task.human_laws:
        law = parse_human_law(task, human)
        mine = {r.variant: r for r in rows if r.task == task.name and r.law == human.name}
        pub = mine.get("published_constants")
        if pub is not None:
            out.append(LeaderRow(task.name, "human (published)", human.name, human.formula, pub.r2, pub.nmse, pub.nmae,
                                 pub.n_constants, pub.complexity, None,
                                 "the paper's constants, no refit, scored by Kepler on test"))
        elif human.published.r2 is not None:
            out.append(LeaderRow(task.name, "human (published)", human.name, human.formula, human.published.r2, None,
                                 None, len(law.constants), law.complexity, None, "published R² (SLDBench table)"))
        fit = mine.get("kepler_fit")
        if fit is not None:
            out.append(LeaderRow(task.name, "human (Kepler fit)", human.name, human.formula, fit.r2, fit.nmse, fit.nmae,
                                 fit.n_constants, fit.complexity, None, "fitted on train by Kepler, scored on test"))
    return out


# settings that do not change what a run finds (where it writes, how its fits are spread out)
_NOT_RESULTS = {"seed", "out", "resume", "llm_cache_dir", "executor", "workers", "scheduler", "base_url", "replay_only",
                "llm_timeout", "structured"}


def run_settings(run_dir: Path) -> dict:
    """The campaign settings of a run (from its store), without those that do not change its result."""
    path = Path(run_dir) / "campaign.sqlite"
    if not path.is_file():
        return {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        finally:
            db.close()
        settings = json.loads(row[0]) if row else {}
    except (sqlite3.Error, json.JSONDecodeError):
        return {}
    return {k: v for k, v in settings.items() if k not in _NOT_RESULTS} if isinstance(settings, dict) else {}


def _stats(values: list[float | None]) -> tuple[float | None, float | None, float | None, float | None]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None, None, None
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None, min(v), max(v)


def over_seeds(task: str, runs: list[tuple[Path, dict]], label: str) -> list[LeaderRow]:
    """Runs of one task, proposer and settings that differ only in seed: the mean (± sd, min, max) of their
    test scores, and the run that is best on validation (never chosen on test)."""
    bests = [best["best"] for _, best in runs]
    r2, r2_sd, r2_min, r2_max = _stats([b["test"]["r2"] for b in bests])
    nmse, nmse_sd, nmse_min, nmse_max = _stats([b["test"]["nmse"] for b in bests])
    nmae = _stats([b["test"]["nmae"] for b in bests])[0]
    seeds = ",".join(str(best.get("seed", "?")) for _, best in runs)
    proposer = runs[0][1].get("proposer", "?")
    mean = LeaderRow(task, "discovered (over seeds)", label, "", r2, nmse, nmae,
                     statistics.fmean(b["n_constants"] for b in bests),
                     statistics.fmean(b["complexity"] for b in bests),
                     _stats([b["validation"]["r2"] for b in bests])[0],
                     f"mean over {len(runs)} seeds ({seeds}) of the best law of each run", proposer=proposer,
                     runs=len(runs), seeds=seeds, r2_sd=r2_sd, r2_min=r2_min, r2_max=r2_max, nmse_sd=nmse_sd,
                     nmse_min=nmse_min, nmse_max=nmse_max)
    ranked = [(b["validation"]["r2"], i) for i, b in enumerate(bests) if b["validation"]["r2"] is not None]
    out = [mean]
    if ranked:
        i = max(ranked)[1]
        run_dir, best = runs[i]
        b = best["best"]
        out.append(LeaderRow(task, "discovered (best)", f"{run_dir} #{b['id']}", b["formula"], b["test"]["r2"],
                             b["test"]["nmse"], b["test"]["nmae"], b["n_constants"], b["complexity"],
                             b["validation"]["r2"], f"the run of the {len(runs)} best on validation (seed "
                             f"{best.get('seed', '?')}), scored once on test", proposer=proposer,
                             seed=best.get("seed"), seeds=seeds, runs=len(runs)))
    return out


def _groups(task_runs: list[tuple[Path, dict]]) -> list[tuple[str, list[tuple[Path, dict]]]]:
    """Runs grouped by proposer, model and settings, labelled by what tells the groups apart."""
    groups: dict[str, list] = {}
    settings: dict[str, dict] = {}
    for run_dir, best in task_runs:
        s = run_settings(run_dir)
        key = json.dumps({"proposer": best.get("proposer"), **s}, sort_keys=True, default=str)
        groups.setdefault(key, []).append((run_dir, best))
        settings[key] = {"proposer": best.get("proposer"), **s}
    varying = {k for s in settings.values() for k in s if len({json.dumps(t.get(k), default=str)
                                                               for t in settings.values()}) > 1}
    out = []
    for key, members in groups.items():
        s = settings[key]
        label = str(s.get("proposer") or "?") + (f" {s['model']}" if s.get("model") else "")
        extra = [f"{k}={s.get(k)}" for k in sorted(varying - {"proposer", "model"})]
        out.append((label + (f" ({', '.join(extra)})" if extra else ""), members))
    return out


def leaderboard(rows: list[BenchRow], runs_root: Path) -> list[LeaderRow]:
    """Per task: the human laws (published; Kepler fit), the best discovered law of every finished run, and per
    proposer and settings the runs over seeds (mean, sd, min, max; and the best on validation)."""
    runs = finished_runs(runs_root)
    names = list(dict.fromkeys([r.task for r in rows] + [best["task"] for _, best in runs]))
    board: list[LeaderRow] = []
    for name in names:
        try:
            board.extend(_human_rows(load_task(name), rows))
        except ValueError:  # a run of a task that is no longer installed: its discovered rows still count
            pass
        task_runs = [(d, b) for d, b in runs if b["task"] == name]
        for run_dir, best in task_runs:
            b = best["best"]
            board.append(LeaderRow(name, "discovered", f"{run_dir} #{b['id']}", b["formula"], b["test"]["r2"],
                                   b["test"]["nmse"], b["test"]["nmae"], b["n_constants"], b["complexity"],
                                   b["validation"]["r2"],
                                   f"{best.get('proposer', '?')} seed {best.get('seed', '?')}: selected on validation, "
                                   "refit on train, scored once on test", proposer=best.get("proposer", ""),
                                   seed=best.get("seed")))
        for label, members in _groups(task_runs):
            board.extend(over_seeds(name, members, label))
    return board


def spread(mean: float | None, sd: float | None, lo: float | None, hi: float | None, digits: int = 4) -> str:
    """`mean ± sd [min, max]` (just the mean for a single run)."""
    if mean is None:
        return "–"
    text = _fmt(mean, digits) + (f" ± {_fmt(sd, digits)}" if sd is not None else "")
    ends = lo is not None and hi is not None and lo != hi
    return text + (f" [{_fmt(lo, digits)}, {_fmt(hi, digits)}]" if ends else "")


def _count(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def leaderboard_markdown(board: list[LeaderRow]) -> str:
    lines = ["| task | entry | law | formula | constants | complexity | R² validation | R² test | NMSE test "
             "| NMAE test |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in board:
        formula = f"`{r.formula}`" if r.formula else f"{r.runs} runs, seeds {r.seeds}"
        r2 = spread(r.r2, r.r2_sd, r.r2_min, r.r2_max) if r.entry == "discovered (over seeds)" else _fmt(r.r2, 4)
        nmse = (spread(r.nmse, r.nmse_sd, r.nmse_min, r.nmse_max) if r.entry == "discovered (over seeds)"
                else _fmt(r.nmse, 4))
        lines.append(f"| {r.task} | {r.entry} | {r.law} | {formula} | {_count(r.n_constants)} | "
                     f"{_count(r.complexity)} | {_fmt(r.validation_r2, 4)} | {r2} | {nmse} | {_fmt(r.nmae, 4)} |")
    return "\n".join(lines) + "\n"


def write_leaderboard(board: list[LeaderRow], out_dir: Path) -> list[Path]:
    header = ("# Leaderboard: human laws vs discovered laws on the official test split\n\n"
              "Per task: the human law with the paper's constants (or its published R²), the human law fitted on train "
              "by Kepler, and the best law of every finished discovery run (selected on validation only, refit on "
              "all of train, scored once on test); for runs that differ only in their seed, the mean ± sd [min, max] "
              "over seeds and the run that is best on validation. Metrics as SLDBench defines them.\n\n")
    return _write_tables(board, list(LeaderRow.__dataclass_fields__), out_dir, "leaderboard",
                         header + leaderboard_markdown(board))
