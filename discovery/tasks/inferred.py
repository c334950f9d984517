"""A task inferred from a user's own table (`--csv runs.csv --target loss --vars N,D`), written as a TOML file.

The file it writes is an ordinary task file, to be edited and reused: variables with their symbols and
the ranges seen in the data (units left blank), the test rule (`split.test_when`) or the split column,
the validation axis (the variable the test rule names, else the first one; both, for a test rule such as
`N >= 1e9 or D >= 1e11`), the CSV by a path relative
to the task file with its sha256, and one baseline law (a power law with an offset in every positive
variable) so that `kepler bench` has something to score.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from discovery.tasks import rules
from discovery.tasks.spec import IDENTIFIER, Task, TaskError, load_task_file


@dataclass
class TableSpec:
    """What the user said about their table."""

    target: str
    variables: list[tuple[str, str]]  # (symbol, column)
    group: str | None = None
    test: str | None = None  # a rule such as "N >= 1e9"
    split_column: str | None = None
    name: str | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_options(cls, target: str | None, variables: str | list[str] | None, group: str | None = None,
                     test: str | None = None, split_column: str | None = None, name: str | None = None) -> "TableSpec":
        if not target:
            raise TaskError("give the target column: --target COLUMN")
        if not variables:
            raise TaskError("give the variable columns: --vars N,D (or SYMBOL=COLUMN, e.g. N=params)")
        if test and split_column:
            raise TaskError("give either --test RULE or --test-split-column COLUMN, not both")
        items = [v.strip() for v in (variables.split(",") if isinstance(variables, str) else variables) if v.strip()]
        pairs = []
        for item in items:
            symbol, _, column = item.partition("=")
            symbol, column = symbol.strip(), (column.strip() or symbol.strip())
            if not IDENTIFIER.match(symbol):
                raise TaskError(f"variable {symbol!r} cannot be a symbol in formulas (a letter, then letters, digits "
                                f"or _); name it: --vars N={column}")
            pairs.append((symbol, column))
        return cls(target=target, variables=pairs, group=group, test=test, split_column=split_column, name=name)


def _name_for(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_") or "my_data"
    return name if name[0].isalpha() else f"data_{name}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a TOML basic string is a JSON string for everything we write


def _number(x: float) -> str:
    return repr(float(x)) if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _baseline(frame: pd.DataFrame, spec: TableSpec) -> list[str]:
    """A power law with an offset in every strictly positive variable, as a starting [[human_laws]] entry."""
    taken = {s for s, _ in spec.variables}

    def free(name: str) -> str:
        while name in taken:
            name += "_"
        return name

    terms, constants = [], [(free("E"), float(frame[spec.target].min()), "-inf", "inf")]
    for i, (symbol, column) in enumerate(spec.variables):
        values = pd.to_numeric(frame[column], errors="coerce")
        if not (values > 0).all():
            continue
        ref = 10.0 ** round(math.log10(math.sqrt(values.min() * values.max())))
        amplitude, exponent = free(f"A{i}"), free(f"a{i}")
        terms.append(f"{amplitude}*({symbol}/{ref:g})**(-{exponent})")
        constants += [(amplitude, 1.0, "-inf", "inf"), (exponent, 0.5, "-4.0", "4.0")]
    if not terms:
        return []
    lines = ["", "# A baseline to compare discovered laws with (edit or remove it): a power law with an offset",
             "# in every positive variable, fitted per group like any law.", "[[human_laws]]",
             'name = "power law with offset (baseline)"',
             f"formula = {_toml_str(constants[0][0] + ' + ' + ' + '.join(terms))}",
             'source = "Kepler baseline (the additive power-law form of Hoffmann et al. 2022)"', "",
             "[human_laws.constants]"]
    lines += [f"{c} = {{ init = {_number(init)}, bounds = [{lo}, {hi}] }}" for c, init, lo, hi in constants]
    return lines


def write_task(csv: Path, spec: TableSpec, out_dir: Path) -> Path:
    """Infer a task from `csv` and write `<out_dir>/<name>.toml`; returns its path (checked by loading it)."""
    csv = Path(csv)
    if not csv.is_file():
        raise TaskError(f"{csv}: no such CSV file")
    try:
        frame = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TaskError(f"{csv}: cannot be read as CSV ({exc})") from None
    columns = [str(c) for c in frame.columns]
    needed = [spec.target, *(c for _, c in spec.variables), *([spec.group] if spec.group else []),
              *([spec.split_column] if spec.split_column else [])]
    for col in needed:
        if col not in columns:
            raise TaskError(f"{csv}: no column {col!r}; columns: {', '.join(columns)}")
    if not spec.test and not spec.split_column:
        if "split" not in columns:
            raise TaskError(f"{csv}: which rows are test? give --test RULE (e.g. \"N >= 1e9\": the larger-scale rows) "
                            "or --test-split-column COLUMN (train/test labels)")
        spec.split_column = "split"
    axes = [spec.variables[0][1]]
    if spec.test:
        try:
            rule = rules.parse_rule(spec.test)
        except rules.RuleError as exc:
            raise TaskError(f"--test: {exc}") from None
        by_symbol = dict(spec.variables)
        variable_columns = set(by_symbol.values())
        named = [by_symbol.get(n, n) for n in rule.names]
        axes = [next((c for c in named if c in variable_columns), axes[0])]
        either = [by_symbol.get(n, n) for n in rule.lower_bounds()]
        if len(either) > 1 and set(either) <= variable_columns:  # "N >= a or D >= b": validation along both
            axes = either
    name = spec.name or _name_for(csv.stem)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.toml"
    try:
        rel = os.path.relpath(csv.resolve(), out_dir.resolve())
    except ValueError:  # another drive
        rel = str(csv.resolve())
    lines = [f"# Inferred by Kepler from {csv.name}; edit it (units, meanings, the split) and reuse it:",
             f"#   kepler discover {path}", f"name = {_toml_str(name)}",
             f"title = {_toml_str(f'{spec.target} of {csv.name}')}", 'paper = "your own data"',
             f"targets = [{_toml_str(spec.target)}]"]
    if spec.group:
        lines.append(f"group_column = {_toml_str(spec.group)}")
    lines += [f"data = {_toml_str(rel.replace(os.sep, '/'))}", f"data_sha256 = {_toml_str(_sha256(csv))}",
              'citation = "@misc{own_data, title = {Own data}}"', ""]
    for symbol, column in spec.variables:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            i = int(values.isna().to_numpy().nonzero()[0][0])
            raise TaskError(f"{csv}: column {column!r}, line {i + 2}: {frame[column].iloc[i]!r} is not a number")
        lines += ["[[variables]]", f"column = {_toml_str(column)}", f"symbol = {_toml_str(symbol)}", 'unit = ""',
                  f"range = [{_number(values.min())}, {_number(values.max())}]", ""]
    lines.append("[split]")
    if spec.test:
        lines += [f"rule = {_toml_str('test: rows where ' + spec.test)}", f"test_when = {_toml_str(spec.test)}"]
    else:
        lines += [f"rule = {_toml_str(f'the train/test labels of column {spec.split_column}')}",
                  f"column = {_toml_str(spec.split_column)}"]
    lines.append(f"validation_axis = {_toml_str(axes[0])}")
    if len(axes) > 1:
        lines.append(f"validation_or = [{', '.join(_toml_str(a) for a in axes[1:])}]")
    lines += _baseline(frame, spec)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_task_file(path).path or path


def task_from_table(table: pd.DataFrame, spec: TableSpec, out_dir: Path) -> tuple[Task, Path]:
    """A DataFrame's task: the frame is written as `<out_dir>/<name>.csv` beside the inferred task file."""
    name = spec.name or "my_data"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / f"{name}.csv"
    table.to_csv(csv, index=False)
    path = write_task(csv, TableSpec(**{**spec.__dict__, "name": name}), out_dir)
    return load_task_file(path), path
