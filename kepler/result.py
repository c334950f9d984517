"""What the Python API returns: a fitted law you can predict with and print, and a run's Pareto front as a table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import sympy as sp

from discovery.outputs.record import LawRecord, record_from_run


class Law:
    """A law with its constants fitted per group (and target), and its scores per split.

    `predict(data)` reads the task's columns by name (data column names or variable symbols) from a
    DataFrame or a dict, and the group from the task's group column when there is one."""

    def __init__(self, record: LawRecord):
        self.record = record

    # --- what it is -------------------------------------------------------------------------------
    @property
    def formula(self) -> str:
        return self.record.law.text

    @property
    def complexity(self) -> int:
        return self.record.law.complexity

    @property
    def constant_names(self) -> list[str]:
        return self.record.law.constant_names

    @property
    def groups(self) -> list[str]:
        return self.record.groups

    @property
    def constants(self) -> dict[str, dict[str, float]]:
        """{group: {constant: value}} ("group/target" keys for a task with several targets)."""
        names = self.record.law.constant_names
        return {self.record.key_label(k): dict(zip(names, map(float, v), strict=True))
                for k, v in sorted(self.record.constants.items())}

    @property
    def scores(self) -> dict[str, dict]:
        """Per split (train, validation, test): R², NMSE, NMAE and what the constants were fitted on."""
        return dict(self.record.metrics)

    def __repr__(self) -> str:
        test = (self.record.metrics.get("test") or {}).get("r2")
        where = f", test R² {test:.4f}" if test is not None else ""
        return f"<kepler.Law {self.formula!r} on {self.record.task.name}: {len(self.groups)} group(s){where}>"

    # --- using it ---------------------------------------------------------------------------------
    def predict(self, data: pd.DataFrame | Mapping[str, Any], group: str | None = None) -> np.ndarray:
        """Predictions for the rows of `data`: shape (n,) for one target, else (n, targets)."""
        task = self.record.task
        if isinstance(data, pd.DataFrame):
            table = data
        elif isinstance(data, Mapping):
            table = pd.DataFrame({k: np.atleast_1d(np.asarray(v)) for k, v in data.items()})
        else:
            raise TypeError("predict() takes a DataFrame or a dict of columns, keyed by column name or symbol")
        cols, missing = [], []
        for v in task.variables:
            name = v.column if v.column in table.columns else v.symbol if v.symbol in table.columns else None
            if name is None:
                missing.append(v.column if v.column == v.symbol else f"{v.column} (or {v.symbol})")
            else:
                cols.append(pd.to_numeric(table[name]).to_numpy(dtype=float))
        if missing:
            raise KeyError(f"predict() needs column(s) {', '.join(missing)}; got {', '.join(map(str, table.columns))}")
        X = np.column_stack(cols) if cols else np.zeros((len(table), 0))
        if group is not None:
            labels = np.full(len(table), str(group), dtype=object)
        elif task.group_column and task.group_column in table.columns:
            labels = table[task.group_column].astype(str).to_numpy(dtype=object)
        elif len(self.groups) == 1:
            labels = np.full(len(table), self.groups[0], dtype=object)
        else:
            raise KeyError(f"predict() needs the group: a column {task.group_column!r} or group=; "
                           f"groups: {', '.join(self.groups)}")
        out = np.full((len(table), len(task.targets)), np.nan)
        for g in sorted(set(labels.tolist())):
            mask = labels == g
            for t in range(len(task.targets)):
                if (g, t) not in self.record.constants:
                    raise KeyError(f"unknown group {g!r}; groups: {', '.join(self.groups)}")
                out[mask, t] = self.record.law.predict(X[mask], self.record.constants[(g, t)])
        return out[:, 0] if len(task.targets) == 1 else out

    def sympy(self, group: str | None = None, target: int = 0) -> sp.Expr:
        """The law as a SymPy expression: with its constants as symbols, or a group's fitted values put in."""
        law = self.record.law
        if group is None:
            return law.expr
        if (group, target) not in self.record.constants:
            raise KeyError(f"unknown group {group!r}; groups: {', '.join(self.groups)}")
        theta = self.record.constants[(group, target)]
        return law.expr.xreplace({c: sp.Float(float(v)) for c, v in zip(law.constants, theta, strict=True)})

    def latex(self, group: str | None = None, digits: int = 4) -> str:
        """The law in LaTeX (Kepler's printer, as in `kepler export`), symbolic or with a group's constants."""
        from discovery.outputs.export.latex import to_latex

        return to_latex(self.sympy(group), digits)

    def to_python(self) -> str:
        """A standalone Python module (numpy only) with this law, its constants and predict(), as `kepler export`."""
        from discovery.outputs.export import python_module

        return python_module.render(self.record)


class Result:
    """A finished run: `.best` (a Law), `.equations_` (the Pareto front, a DataFrame), `.human_` (human laws)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.raw: dict = json.loads((self.run_dir / "best.json").read_text())
        self._best: Law | None = None

    @property
    def task(self) -> str:
        return self.raw["task"]

    @property
    def best(self) -> Law:
        if self._best is None:
            self._best = Law(record_from_run(self.run_dir))
        return self._best

    def law(self, candidate: int) -> Law:
        """Any evaluated candidate of the run (an id of `.equations_`), refit on all of train if it was not."""
        return Law(record_from_run(self.run_dir, candidate))

    @property
    def equations_(self) -> pd.DataFrame:
        """The Pareto front (validation error against complexity), simplest first, refit on train and scored on test."""
        rows = []
        for r in self.raw["pareto_front"]:
            rows.append({"id": r["id"], "formula": r["formula"], "complexity": r["complexity"],
                         "n_constants": r["n_constants"], "constants": r["constants"],
                         "validation_r2": r["validation"]["r2"], "validation_nmse": r["validation"]["nmse"],
                         "test_r2": r["test"]["r2"], "test_nmse": r["test"]["nmse"], "test_nmae": r["test"]["nmae"],
                         "best": r["id"] == self.raw["best"]["id"], "proposer": r["proposer"]})
        return pd.DataFrame(rows)

    @property
    def human_(self) -> pd.DataFrame:
        """The task's human laws, fitted and scored the same way."""
        return pd.DataFrame([{"law": h["law"], "formula": h["formula"], "constants_from": h["constants_from"],
                              "complexity": h["complexity"], "validation_r2": h["validation"]["r2"],
                              "test_r2": h["test"]["r2"]} for h in self.raw.get("human", [])])

    @property
    def warnings(self) -> list[str]:
        return list(self.raw.get("warnings") or [])

    @property
    def close_call(self) -> bool:
        """True when laws as good as the best on selection part from it beyond train, so another seed may report
        one of them (discovery.search.close_calls); they are in `.contenders_`, and `.law(id)` gives each."""
        return not (self.raw.get("close_call") or {}).get("decided", True)

    @property
    def contenders_(self) -> pd.DataFrame:
        """The laws within the close-call margin of the best on selection, closest first (empty when none)."""
        rows = (self.raw.get("close_call") or {}).get("contenders", [])
        return pd.DataFrame(rows, columns=["id", "formula", "selection_nmse", "validation_r2", "complexity"])

    def __repr__(self) -> str:
        b = self.raw["best"]
        return (f"<kepler.Result {self.task} in {self.run_dir}: best {b['formula']!r}, validation R² "
                f"{b['validation']['r2']:.4f}, test R² {b['test']['r2']:.4f}>")
