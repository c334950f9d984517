"""Python: a standalone module (numpy only) with the law, its fitted constants and `predict(X, group)`, which
reads the columns of a DataFrame or dict by name (a missing one is refused).

The law's function is the code Kepler itself evaluates (see codegen), so predictions agree with
Kepler's to the last bit on the same numpy.
"""
from __future__ import annotations

from discovery.outputs.export.codegen import function_source
from discovery.outputs.record import LawRecord, kepler_version

TEMPLATE = '''"""{title}: law {label} found by Kepler {version} (task {task}).

    {target} = {formula}

Standalone: needs numpy only. predict(X) reads X's columns by name from a DataFrame or a dict ({columns}),
or takes an array with the columns in that order.
Constants were fitted on the train split of {task}, separately for each group{and_target}.
"""
import numpy
{imports}

FORMULA = {formula!r}
VARIABLES = {variables!r}
COLUMNS = {column_names!r}
GROUP_COLUMN = {group_column!r}
TARGETS = {targets!r}
CONSTANT_NAMES = {constant_names!r}
CONSTANTS = {{
{constants}
}}
GROUPS = sorted(CONSTANTS)


{law_source}

def _columns(X):
    """The variables of X, by name from a DataFrame or a dict (data column or symbol), else by position."""
    if hasattr(X, "keys") and not isinstance(X, numpy.ndarray):
        names = set(X.keys())
        missing = [c if c == s else f"{{c}} (or {{s}})" for c, s in zip(COLUMNS, VARIABLES)
                   if c not in names and s not in names]
        if missing:
            raise KeyError(f"X has no column {{', '.join(missing)}}; columns given: {{sorted(map(str, names))}}")
        cols = [numpy.asarray(X[c] if c in names else X[s], dtype=float).reshape(-1)
                for c, s in zip(COLUMNS, VARIABLES)]
        return cols, len(cols[0]) if cols else 0, X[GROUP_COLUMN] if GROUP_COLUMN and GROUP_COLUMN in names else None
    X = numpy.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X.reshape(-1, len(VARIABLES))
    if X.ndim != 2 or X.shape[1] != len(VARIABLES):
        raise ValueError(f"X must have shape (n, {{len(VARIABLES)}}), columns {{VARIABLES}}; got {{X.shape}}")
    return [X[:, j] for j in range(X.shape[1])], len(X), None


def predict(X, group=None):
    """Predict targets for the rows of X: a DataFrame or dict read by column name (COLUMNS, or the symbols in
    VARIABLES; a missing one is refused), or an array (n, {n_vars}) with its columns in the order of VARIABLES.

    `group`: one group name for all rows, or one name per row; by default the GROUP_COLUMN of a DataFrame or
    dict, and may be left out when there is one group. Returns shape (n,) for a single target, else (n, len(TARGETS)).
    """
    cols, n, from_data = _columns(X)
    if group is None:
        group = from_data
    if group is None:
        if len(GROUPS) != 1:
            raise ValueError(f"give a group: one of {{GROUPS}}")
        group = GROUPS[0]
    labels = numpy.asarray(group, dtype=object)
    labels = numpy.full(n, group, dtype=object) if labels.ndim == 0 else labels.astype(str).astype(object)
    if labels.shape != (n,):
        raise ValueError(f"group must be one name or one name per row ({{n}} rows)")
    out = numpy.full((n, len(TARGETS)), numpy.nan)
    for g in sorted(set(labels.tolist())):
        if g not in CONSTANTS:
            raise KeyError(f"unknown group {{g!r}}; groups: {{GROUPS}}")
        mask = labels == g
        rows = [c[mask] for c in cols]
        for t, name in enumerate(TARGETS):
            theta = numpy.asarray(CONSTANTS[g][name], dtype=float)
            with numpy.errstate(all="ignore"):
                value = _law(*rows, *theta)
            out[mask, t] = numpy.broadcast_to(numpy.asarray(value, dtype=float), (int(mask.sum()),))
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
        variables=task.symbols, column_names=task.columns, group_column=task.group_column, targets=record.targets,
        constant_names=record.law.constant_names, constants=constants_literal(record), law_source=source,
        n_vars=len(task.symbols))


def filename(record: LawRecord) -> str:
    return f"{record.task.name}_law.py"
