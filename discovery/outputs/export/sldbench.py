"""SLDBench: a program in SLDBench's submission format, scored by SLDBench's own evaluator.

The module defines `scaling_law_func(data_points, params)` and `fit_scaling_law(data_points,
loss_values)` (numpy and scipy, and the standard library's warnings). The evaluator calls
`fit_scaling_law` once per group on the train rows and `scaling_law_func` on that group's test rows.

`fit_scaling_law` fits for real, with Kepler's own algorithm (discovery.laws.fit), written out in the
module: quasi-random starts within the constants' bounds, plus the constants Kepler found for every
group as initial values; each start completed with its linear amplitudes solved exactly (variable
projection) and screened in one vectorized pass; the best few refined by scipy's least_squares with the
law's analytic Jacobian, under the objective Kepler used (loss, Huber scale, log or linear residuals,
dropped rows), and the best refined once more. Nothing is looked up: the data decides the constants.
"""
from __future__ import annotations

import math

from discovery.laws.fit import DEFAULT_SPEC, PENALTY
from discovery.outputs.export.codegen import expressions_source, function_source
from discovery.outputs.export.python_module import constants_literal
from discovery.outputs.record import LawRecord, kepler_version

TEMPLATE = '''"""SLDBench program for {task}: law {label} found by Kepler {version}.

    {target} = {formula}

data_points: array (n, {n_vars}) with columns {columns}.
params: array of the {n_const} constants {constant_names}{per_target}.

fit_scaling_law fits for real, as Kepler fits (its algorithm, written out here): N_STARTS quasi-random starts
within the bounds, plus the constants Kepler found for every group (KEPLER_CONSTANTS) as initial values; each
start's linear amplitudes (LINEAR) solved exactly for its other constants, all starts screened at once; the
best N_REFINE refined by scipy.optimize.least_squares with the analytic Jacobian ({loss} loss, scale {f_scale},
{residuals} residuals, {drop} highest targets dropped), and the best refined once more. No stored result is
looked up: the rows given decide the constants.
"""
import warnings

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import qmc
{imports}

CONSTANT_NAMES = {constant_names!r}
TARGETS = {targets!r}
KEPLER_CONSTANTS = {{
{constants}
}}
INIT = np.array({init})
LOWER = np.array({lower})
UPPER = np.array({upper})
LINEAR = {linear!r}
NONLINEAR = {nonlinear!r}
LOSS = {loss!r}
F_SCALE = {f_scale!r}
LOG_RESIDUALS = {log_residuals!r}
DROP_HIGHEST = {drop!r}
N_STARTS = {n_starts!r}
N_REFINE = {n_refine!r}
SEED = {seed!r}
MAX_NFEV = {max_nfev!r}
TOL = {tol!r}
PENALTY = {penalty!r}


{law_source}

{jac_source}

{parts_source}

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


def _predict_many(cols, thetas):
    n = len(cols[0]) if cols else 0
    with np.errstate(all="ignore"):
        out = _law(*[c[None, :] for c in cols], *[thetas[:, [i]] for i in range(thetas.shape[1])])
    return np.broadcast_to(np.asarray(out, dtype=float), (len(thetas), n))


def _objective(r):
    z = (r / F_SCALE) ** 2
    if LOSS == "linear":
        rho = z
    elif LOSS == "huber":
        rho = np.where(z <= 1, z, 2 * np.sqrt(z) - 1)
    elif LOSS == "soft_l1":
        rho = 2 * (np.sqrt(1 + z) - 1)
    else:
        rho = np.log1p(z)
    return 0.5 * F_SCALE ** 2 * rho.sum(axis=-1)


def _residuals(pred, y):
    with np.errstate(all="ignore"):
        return np.log(pred) - np.log(y) if LOG_RESIDUALS else pred - y


def _starts(n, seed):
    """INIT, then quasi-random points within the bounds (log-uniform over wide positive ranges), else around INIT."""
    k = len(INIT)
    m = max(1, int(2 ** int(np.ceil(np.log2(max(n, 2))))))
    u = qmc.Sobol(d=k, scramble=True, seed=seed).random(m)[: n - 1]
    out = np.empty((len(u), k))
    for j in range(k):
        a, b = LOWER[j], UPPER[j]
        width = max(2.0, 2.0 * abs(INIT[j]))
        a_eff = a if np.isfinite(a) else INIT[j] - width
        b_eff = b if np.isfinite(b) else INIT[j] + width
        if a_eff > 0 and b_eff / a_eff > 100:
            out[:, j] = np.exp(np.log(a_eff) + u[:, j] * (np.log(b_eff) - np.log(a_eff)))
        else:
            out[:, j] = a_eff + u[:, j] * (b_eff - a_eff)
    return np.vstack([INIT[None, :], out])


def _screen(cols, y, starts):
    """Every start with its linear amplitudes solved exactly, sorted by objective (finite ones only)."""
    S, n = len(starts), len(y)
    full = starts.copy()
    if LINEAR:
        with np.errstate(all="ignore"):
            parts = _parts(*[c[None, :] for c in cols], *[starts[:, [i]] for i in NONLINEAR])
        parts = [np.broadcast_to(np.asarray(p, dtype=float), (S, n)) for p in parts]
        h, G = parts[0], np.stack(parts[1:], axis=-1)
        w = 1.0 / np.abs(y) if LOG_RESIDUALS else np.ones_like(y)
        Gw = G * w[None, :, None]
        tw = (y[None, :] - h) * w[None, :]
        finite = np.isfinite(Gw).all(axis=(1, 2)) & np.isfinite(tw).all(axis=1)
        Gw = np.where(finite[:, None, None], Gw, 0.0)
        tw = np.where(finite[:, None], tw, 0.0)
        norms = np.linalg.norm(Gw, axis=1)
        norms = np.where(norms > 0, norms, 1.0)
        Gn = Gw / norms[:, None, :]
        A = np.einsum("snm,snk->smk", Gn, Gn) + 1e-10 * np.eye(Gn.shape[-1])[None]
        b = np.einsum("snm,sn->sm", Gn, tw)
        try:
            coef = np.linalg.solve(A, b[..., None])[..., 0] / norms
        except np.linalg.LinAlgError:
            coef = np.zeros((S, len(LINEAR)))
        coef = np.where(np.isfinite(coef), coef, 0.0)
        full[:, LINEAR] = np.clip(coef, LOWER[LINEAR], UPPER[LINEAR])
    obj = _objective(_residuals(_predict_many(cols, full), y[None, :]))
    obj = np.where(np.isfinite(obj), obj, np.inf)
    order = np.argsort(obj, kind="stable")
    return full[order][np.isfinite(obj[order])]


def _refine(cols, y, x0):
    """least_squares from x0; the best point it evaluated, and its objective."""
    best = {{"x": x0.copy(), "cost": np.inf}}

    def fun(theta):
        with np.errstate(all="ignore"):
            pred = np.broadcast_to(np.asarray(_law(*cols, *theta), dtype=float), y.shape)
        r = _residuals(pred, y)
        if not np.all(np.isfinite(r)):
            return np.full_like(y, PENALTY)
        cost = float(_objective(r))
        if cost < best["cost"]:
            best["x"], best["cost"] = theta.copy(), cost
        return r

    def jac(theta):
        n = len(y)
        with np.errstate(all="ignore"):
            J = np.column_stack([np.broadcast_to(np.asarray(c, dtype=float), (n,)) for c in _jac(*cols, *theta)])
            if LOG_RESIDUALS:
                J = J / np.broadcast_to(np.asarray(_law(*cols, *theta), dtype=float), (n,))[:, None]
        return np.where(np.isfinite(J), J, 0.0)

    span = np.where(np.isfinite(UPPER - LOWER), UPPER - LOWER, np.maximum(1.0, np.abs(x0)))
    start = np.clip(x0, LOWER + 1e-9 * span, UPPER - 1e-9 * span)
    bounded = np.isfinite(LOWER).any() or np.isfinite(UPPER).any()
    try:
        least_squares(fun, start, jac=jac, bounds=(LOWER, UPPER) if bounded else (-np.inf, np.inf), loss=LOSS,
                      f_scale=F_SCALE, x_scale="jac", max_nfev=MAX_NFEV, method="trf", ftol=TOL, xtol=TOL, gtol=TOL)
    except (ValueError, np.linalg.LinAlgError):
        pass
    return best["x"], best["cost"]


def _fit_one(cols, y, t):
    if DROP_HIGHEST:
        keep = np.ones(len(y), dtype=bool)
        keep[np.argsort(-y, kind="stable")[:DROP_HIGHEST]] = False
        cols, y = [c[keep] for c in cols], y[keep]
    kepler = [np.asarray(v[TARGETS[t]], dtype=float) for _, v in sorted(KEPLER_CONSTANTS.items())]
    kepler = [np.clip(x, LOWER, UPPER) for x in kepler if np.all(np.isfinite(x))]
    starts = np.vstack([_starts(N_STARTS, SEED), *[x[None, :] for x in kepler]])
    ranked = _screen(cols, y, starts)
    if len(ranked) == 0:
        return np.full(len(INIT), np.nan)
    best_x, best_cost = ranked[0], np.inf
    for x0 in ranked[:N_REFINE]:
        x, cost = _refine(cols, y, x0)
        if cost < best_cost:
            best_x, best_cost = x, cost
    if np.isfinite(best_cost):
        x, cost = _refine(cols, y, best_x)
        if cost < best_cost:
            best_x = x
    return np.asarray(best_x, dtype=float)


def fit_scaling_law(data_points, loss_values):
    y = np.asarray(loss_values, dtype=float)
    cols, _ = _columns(data_points)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a wild start overflows; it is screened out, not an error
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


def render(record: LawRecord) -> str:
    law = record.law
    law_source, imports = function_source(law, "_law")
    jac_source, jac_imports = function_source(law, "_jac", jacobian=True)
    sep = law.separable
    lin = [law.constants[i] for i in sep.linear]
    parts = [law.expr.xreplace({c: 0 for c in lin}), *[law.expr.diff(c) for c in lin]]
    parts_source, parts_imports = expressions_source([*law.variables, *[law.constants[i] for i in sep.nonlinear]],
                                                     parts, "_parts")
    init, lower, upper = _bounds(record)
    opts = record.fit_options
    task = record.task
    return TEMPLATE.format(
        task=task.name, label=record.label, version=kepler_version(),
        target=record.targets[0] if len(record.targets) == 1 else "y", formula=law.text,
        n_vars=len(task.symbols), columns=", ".join(f"{v.column} ({v.symbol})" for v in task.variables),
        n_const=len(law.constants), constant_names=law.constant_names,
        per_target=(f"; shape ({len(record.targets)}, {len(law.constants)}): one row per target "
                    f"{record.targets}" if len(record.targets) > 1 else ""), loss=opts.loss, f_scale=opts.f_scale,
        residuals="log" if opts.log_residuals else "linear", drop=opts.drop_highest_targets,
        imports="\n".join(dict.fromkeys(imports + jac_imports + parts_imports)), targets=record.targets,
        constants=constants_literal(record), init=_array_literal(init), lower=_array_literal(lower),
        upper=_array_literal(upper), linear=list(sep.linear), nonlinear=list(sep.nonlinear),
        log_residuals=opts.log_residuals, n_starts=opts.n_starts, n_refine=opts.n_refine, seed=opts.seed,
        max_nfev=opts.max_nfev, tol=opts.tol, penalty=PENALTY, law_source=law_source, jac_source=jac_source,
        parts_source=parts_source)


def filename(record: LawRecord) -> str:
    return f"sldbench_{record.task.name}.py"
