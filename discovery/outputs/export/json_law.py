"""JSON: a machine-readable law that `kepler fit --from law.json` reads back.

Floats are written with Python's shortest round-trip repr, so constants read back bit for bit and
predictions are reproduced exactly. Non-finite numbers become null (bounds: null = unbounded).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from discovery.laws.fit import FitOptions
from discovery.laws.guard import parse_bounded
from discovery.outputs.record import LawRecord, RunError, kepler_version
from discovery.tasks.spec import Task, TaskError, load_task
from discovery.tasks.values import ConstantSpec

FORMAT = "kepler-law/1"


def _f(x) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return _f(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def to_dict(record: LawRecord) -> dict:
    task, law = record.task, record.law
    intervals = (record.uncertainty or {}).get("intervals", {})
    constants = []
    for key in sorted(record.constants):
        g, t = key
        theta = record.constants[key]
        entry = {"group": g, "target": record.targets[t],
                 "values": {c.name: _f(v) for c, v in zip(law.constants, theta, strict=True)},
                 "status": "ok" if np.all(np.isfinite(theta)) else "failed"}
        if key in intervals:
            entry["interval"] = {c.name: [_f(lo), _f(hi)]
                                 for c, (lo, hi) in zip(law.constants, intervals[key], strict=True)}
        constants.append(entry)
    u = record.uncertainty
    opts = record.fit_options
    return _clean({
        "format": FORMAT,
        "kepler_version": kepler_version(),
        "task": task.name,
        "task_file": str(task.path) if task.path is not None else None,
        "title": task.title,
        "formula": law.text,
        "canonical": law.canonical,
        "hash": law.hash,
        "complexity": law.complexity,
        "variables": [{"symbol": v.symbol, "column": v.column, "unit": v.unit, "meaning": v.meaning}
                      for v in task.variables],
        "targets": record.targets,
        "constant_names": law.constant_names,
        "constants": constants,
        "metrics": record.metrics,
        "uncertainty": None if u is None else {k: v for k, v in u.items() if k != "intervals"},
        "fit": {"loss": opts.loss, "f_scale": opts.f_scale, "log_residuals": opts.log_residuals,
                "drop_highest_targets": opts.drop_highest_targets, "seed": opts.seed,
                "specs": None if record.specs is None else
                {k: {"init": s.init, "bounds": [_f(s.bounds[0]), _f(s.bounds[1])]} for k, s in record.specs.items()}},
        "data": {"paper": task.paper, "split_rule": task.split.rule,
                 "sources": [{"file": s.file, "url": s.url, "sha256": s.sha256} for s in task.sources]},
        "run": {"dir": str(record.run_dir) if record.run_dir else None, "candidate_id": record.candidate_id,
                "role": record.role, "proposer": record.proposer},
        "seed": record.seed,
        "derived": record.extra.get("derived"),
    })


def render(record: LawRecord) -> str:
    return json.dumps(to_dict(record), indent=2, allow_nan=False) + "\n"


def read(path: Path) -> dict:
    """Read and check a law.json; errors are one line naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: no such file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not a readable JSON file: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RunError(f"{path}: not a Kepler law file (expected format {FORMAT!r})")
    missing = [k for k in ("task", "formula", "hash", "constant_names", "constants") if k not in data]
    if missing:
        raise RunError(f"{path}: missing field(s) {', '.join(missing)}")
    return data


def _spec(raw: dict) -> ConstantSpec:
    lo, hi = raw["bounds"]
    return ConstantSpec(init=raw["init"], bounds=(-math.inf if lo is None else lo, math.inf if hi is None else hi))


def task_of(data: dict) -> "Task":
    """The law's task: installed under its name, or the task file the law recorded (a task of your own)."""
    try:
        return load_task(data["task"])
    except TaskError:
        path = data.get("task_file")
        if path and Path(path).is_file():
            return load_task(path)
        raise


def record_from_json(data: dict, source: str = "law.json") -> LawRecord:
    """Rebuild the record: the task by name, the law through the parser, the constants exactly."""
    task = task_of(data)
    law = parse_bounded(data["formula"], task.symbols, check_typos=False)  # a law.json is untrusted text
    if law.hash != data["hash"]:
        raise RunError(f"{source}: the formula parses to law {law.hash}, not {data['hash']} as recorded")
    if law.constant_names != list(data["constant_names"]):
        raise RunError(f"{source}: constants {data['constant_names']} do not match the formula's {law.constant_names}")
    index = {t: i for i, t in enumerate(task.targets)}
    constants = {}
    for entry in data["constants"]:
        if entry["target"] not in index:
            raise RunError(f"{source}: unknown target {entry['target']!r} for task {task.name}")
        values = entry["values"]
        constants[(entry["group"], index[entry["target"]])] = np.array(
            [np.nan if values.get(n) is None else values[n] for n in law.constant_names], dtype=float)
    fit = data.get("fit") or {}
    opts = FitOptions(loss=fit.get("loss", "linear"), f_scale=fit.get("f_scale", 1.0),
                      log_residuals=fit.get("log_residuals", False),
                      drop_highest_targets=fit.get("drop_highest_targets", 0), seed=fit.get("seed", 0))
    specs = {k: _spec(v) for k, v in fit["specs"].items()} if fit.get("specs") else None
    run = data.get("run") or {}
    return LawRecord(task=task, law=law, constants=constants, specs=specs, fit_options=opts,
                     metrics=dict(data.get("metrics") or {}), seed=int(data.get("seed", 0)),
                     label=f"#{run['candidate_id']}" if run.get("candidate_id") is not None else "law",
                     candidate_id=run.get("candidate_id"), role=run.get("role", "candidate"),
                     proposer=run.get("proposer", ""))


def source_mismatches(data: dict) -> list[str]:
    """Data sources whose sha256 differs between the law file and the task as installed now."""
    task = task_of(data)
    now = {s.file: s.sha256 for s in task.sources}
    recorded = (data.get("data") or {}).get("sources", [])
    return [s["file"] for s in recorded if now.get(s["file"]) != s["sha256"]]
