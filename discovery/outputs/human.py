"""The task's human laws as records beside the discovered one: fitted by Kepler on the same train rows.

Figures draw the human law on the same axes and `kepler derive` computes its allocation and predictions
next to the discovered law's. The fit is the one the campaign's final report made (the task's fit
settings, the run's seed, all of train), and its constants are kept in the run's cache.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from discovery.laws.fit import FitOptions, fit_law
from discovery.outputs.cache import cache_key, load_json, save_json
from discovery.outputs.record import LawRecord, score_record
from evaluators.benchmark import parse_human_law
from evaluators.protocol import Protocol


def human_records(task, protocol: Protocol, seed: int = 0, cache_dir: Path | None = None) -> list[LawRecord]:
    """One record per human law that has constants to fit (Kepler's fit on all of train)."""
    out = []
    for human in task.human_laws:
        if not human.constants:
            continue
        law = parse_human_law(task, human)
        opts = FitOptions.from_settings(human.fit, seed=seed)
        path = None
        constants = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"human-{cache_key('human', law, protocol.train, human.constants, opts)}.json"
            stored = load_json(path) if path.is_file() else None
            if stored is not None:
                constants = {(g, int(t)): np.array(v, dtype=float) for g, t, v in stored["constants"]}
        if constants is None:
            fit = fit_law(law, protocol.train, task.targets, human.constants, opts)
            constants = {k: f.theta for k, f in fit.fits.items()}
            if path is not None:
                save_json(path, {"law": human.name, "constants": [[g, t, [float(x) for x in v]]
                                                                  for (g, t), v in sorted(constants.items())]})
        record = LawRecord(task=task, law=law, constants=constants, specs=dict(human.constants), fit_options=opts,
                           metrics={}, seed=seed, label=human.name, role="human (Kepler fit)",
                           extra={"protocol": protocol})
        score_record(record, protocol)
        out.append(record)
    return out


def overlay_choice(humans: list[LawRecord], run_dir: Path | None) -> LawRecord | None:
    """The human law to draw beside the discovered one: the best on validation in the run's report
    (never chosen on test), else the first."""
    if not humans:
        return None
    if run_dir is not None and (Path(run_dir) / "best.json").is_file():
        try:
            best = json.loads((Path(run_dir) / "best.json").read_text())
            scored = {h["law"]: h["validation"]["r2"] for h in best.get("human", [])
                      if h.get("constants_from") == "kepler_fit" and h["validation"].get("r2") is not None}
        except (OSError, ValueError, KeyError, TypeError):
            scored = {}
        ranked = [h for h in humans if h.label in scored]
        if ranked:
            return max(ranked, key=lambda h: scored[h.label])
    return humans[0]
