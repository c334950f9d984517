"""Python: a standalone module (numpy only) with the law, its fitted constants and `predict(X, group)`.

The law's function is the code Kepler itself evaluates (see codegen), so predictions agree with
Kepler's to the last bit on the same numpy.
"""
from __future__ import annotations

from discovery.outputs.export.codegen import function_source
from discovery.outputs.record import LawRecord, kepler_version

TEMPLATE = '''"""{title}: law {label} found by Kepler {version} (task {task}).

    {target} = {formula}

Standalone: needs numpy only. Columns of X, in order: {columns}.
Constants were fitted on the train split of {task}, separately for each group{and_target}.
"""
import numpy
{imports}

FORMULA = {formula!r}
VARIABLES = {variables!r}
COLUMNS = {column_names!r}
TARGETS = {targets!r}
CONSTANT_NAMES = {constant_names!r}
CONSTANTS = {{
{constants}
}}
GROUPS = sorted(CONSTANTS)


{law_source}

def predict(X, group=None):
    """Predict targets for the rows of X (n, {n_vars}), columns in the order of VARIABLES.

    `group`: one group name for all rows, or one name per row; may be left out when there is one group.
    Returns shape (n,) for a single target, else (n, len(TARGETS)).
    """
    X = numpy.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X.reshape(-1, len(VARIABLES))
    if X.ndim != 2 or X.shape[1] != len(VARIABLES):
        raise ValueError(f"X must have shape (n, {{len(VARIABLES)}}), columns {{VARIABLES}}; got {{X.shape}}")
    if group is None:
        if len(GROUPS) != 1:
            raise ValueError(f"give a group: one of {{GROUPS}}")
        group = GROUPS[0]
    labels = numpy.asarray(group, dtype=object)
    labels = numpy.full(len(X), group, dtype=object) if labels.ndim == 0 else labels.astype(object)
    if labels.shape != (len(X),):
        raise ValueError(f"group must be one name or one name per row ({{len(X)}} rows)")
    out = numpy.full((len(X), len(TARGETS)), numpy.nan)
    for g in sorted(set(labels.tolist())):
        if g not in CONSTANTS:
            raise KeyError(f"unknown group {{g!r}}; groups: {{GROUPS}}")
        mask = labels == g
        rows = X[mask]
        cols = [rows[:, j] for j in range(rows.shape[1])]
        for t, name in enumerate(TARGETS):
            theta = numpy.asarray(CONSTANTS[g][name], dtype=float)
            with numpy.errstate(all="ignore"):
                value = _law(*cols, *theta)
            out[mask, t] = numpy.broadcast_to(numpy.asarray(value, dtype=float), (len(rows),))
    return out[:, 0] if len(TARGETS) == 1 else out
'''


def constants_literal(record: LawRecord, indent: str = "    ") -> str:
    """`'group': {'target': [floats...]},` lines; floats as shortest round-trip repr."""
    lines = []
    for g in record.groups:
        per_target = ", ".join(f"{record.targets[t]!r}: [{', '.join(repr(float(v)) for v in record.constants[(g, t)])}]"
                               for t in range(len(record.targets)) if (g, t) in record.constants)
        lines.append(f"{indent}{g!r}: {{{per_target}}},")
    return "\n".join(lines)


def render(record: LawRecord) -> str:
    source, imports = function_source(record.law, "_law")
    task = record.task
    return TEMPLATE.format(
        title=task.title.replace('"""', "'''"), label=record.label, version=kepler_version(), task=task.name,
        target=record.targets[0] if len(record.targets) == 1 else "y", formula=record.law.text,
        columns=", ".join(f"{v.symbol} ({v.column}{', ' + v.unit if v.unit else ''})" for v in task.variables),
        and_target=" and target" if len(record.targets) > 1 else "", imports="\n".join(imports),
        variables=task.symbols, column_names=task.columns, targets=record.targets,
        constant_names=record.law.constant_names, constants=constants_literal(record), law_source=source,
        n_vars=len(task.symbols))


def filename(record: LawRecord) -> str:
    return f"{record.task.name}_law.py"
