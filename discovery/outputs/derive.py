"""What scaling laws are used for: compute-optimal allocation and predictions beyond the largest run.

- **Allocation.** For a law in model size N and data D (the task file's `role`s, else the symbols N
  and D), the loss-minimising N and D at a fixed compute C are found numerically under C = 6ND (or a
  cost formula the user gives, over the task's variables): for each C, the law is evaluated on a log
  grid of N (D solved from the cost), the grid minimum is refined by a finer grid and a parabola in
  log N, and a C whose minimum sits on the grid's edge has no interior optimum. The exponents a and b
  of N_opt ∝ C^a, D_opt ∝ C^b are the least-squares slopes of log N_opt and log D_opt against log C,
  over budgets from the smallest training compute to the largest, and 10x and 100x the largest. Every
  bootstrap resample's constants give their own a and b: the percentile interval. Other variables are
  held at their train medians (or values the user gives); a held variable that the data tie to N and D
  (such as a compute column) makes the allocation meaningless, and it is refused with the reason.
- **Predictions** at points the user names and at 10x and 100x the largest training value of each
  scale variable, with the law band (constants' uncertainty) and the prediction band (plus a
  resampled train residual).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from discovery.laws.law import Law, LawError, parse_law
from discovery.laws.uncertainty import Bootstrap
from discovery.outputs.record import LawRecord

COST = "6*N*D"
FACTORS = (10.0, 100.0)
GRID = 400
FINE = 41
COMPUTE_POINTS = 9


class DeriveError(ValueError):
    """A derived quantity cannot be computed for this law; the message says why, in one line."""


@dataclass(frozen=True)
class Roles:
    n: int
    d: int


def roles(task) -> Roles | None:
    """Positions of model size and data among the task's variables: declared roles, else symbols N and D."""
    declared = {v.role: i for i, v in enumerate(task.variables) if v.role}
    if declared:
        return Roles(declared["model_size"], declared["data"]) if {"model_size", "data"} <= set(declared) else None
    symbols = task.symbols
    return Roles(symbols.index("N"), symbols.index("D")) if {"N", "D"} <= set(symbols) else None


def scale_variables(task) -> list[int]:
    """Variables a law is extrapolated along: declared monotone or role, the split's scale columns, N and D."""
    r = roles(task)
    scale = set(task.split.scale_columns())
    return [i for i, v in enumerate(task.variables)
            if v.monotone or v.role or v.column in scale or (r is not None and i in (r.n, r.d))]


# --- allocation -------------------------------------------------------------------------------------
@dataclass
class Allocation:
    group: str
    compute: np.ndarray  # (m,) compute budgets, in the units of the cost formula
    n_opt: np.ndarray  # (m,) point estimate; NaN where no interior optimum
    d_opt: np.ndarray
    loss_opt: np.ndarray
    a: float
    b: float
    a_samples: np.ndarray = field(default_factory=lambda: np.zeros(0))
    b_samples: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_opt_samples: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    d_opt_samples: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    loss_opt_samples: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    held: dict[str, float] = field(default_factory=dict)
    level: float = 0.95

    def interval(self, values: np.ndarray) -> tuple[float, float]:
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if len(v) < 2:
            return math.nan, math.nan
        q = (1 - self.level) / 2
        lo, hi = np.percentile(v, [100 * q, 100 * (1 - q)])
        return float(lo), float(hi)

    @property
    def ok_resamples(self) -> int:
        return int(np.isfinite(self.a_samples).sum())


UNIT = "kepler_cost_unit"  # the cost is parsed as UNIT*(cost): a law needs one constant, held at 1


def parse_cost(task, cost: str | None) -> Law | None:
    """None for the default C = 6ND (solved in closed form), else the user's cost over the task's variables,
    parsed through the same allow-list as a law."""
    if cost is None or cost.replace(" ", "") in (COST, "6*D*N"):
        return None
    try:
        law = parse_law(f"{UNIT}*({cost})", task.symbols)
    except LawError as exc:
        raise DeriveError(f"cost {cost!r}: {exc}") from None
    extra = [c for c in law.constant_names if c != UNIT]
    if extra:
        raise DeriveError(f"cost {cost!r}: unknown name(s) {', '.join(extra)}; use the task's variables "
                          f"({', '.join(task.symbols)}) and numbers")
    return law


def evaluate_cost(cost: Law | None, X: np.ndarray, r: Roles) -> np.ndarray:
    if cost is None:
        return 6.0 * X[..., r.n] * X[..., r.d]
    flat = X.reshape(-1, X.shape[-1])
    return np.asarray(cost.predict(flat, np.ones(1)), dtype=float).reshape(X.shape[:-1])


def solve_data(cost: Law | None, X: np.ndarray, r: Roles, C: float, d_lo: float, d_hi: float) -> np.ndarray:
    """D with cost(N, D, others) = C for every row of X (NaN where none in [d_lo, d_hi]); bisection in log D."""
    if cost is None:
        return C / (6.0 * X[:, r.n])
    lo = np.full(len(X), math.log(d_lo))
    hi = np.full(len(X), math.log(d_hi))
    Z = X.copy()

    def f(logd):
        Z[:, r.d] = np.exp(logd)
        return evaluate_cost(cost, Z, r) - C

    flo, fhi = f(lo), f(hi)
    ok = np.isfinite(flo) & np.isfinite(fhi) & (np.sign(flo) != np.sign(fhi))
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        fm = f(mid)
        left = np.sign(fm) == np.sign(flo)
        lo, flo = np.where(left, mid, lo), np.where(left, fm, flo)
        hi = np.where(left, hi, mid)
    return np.where(ok, np.exp(0.5 * (lo + hi)), np.nan)


def minimise_at(law: Law, thetas: np.ndarray, base: np.ndarray, r: Roles, cost: Law | None, C: float,
              n_range: tuple[float, float], d_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """log N_opt and loss at the optimum for each constant vector (S,), at compute C; NaN on the grid edge."""
    S = len(thetas)

    def losses(logn: np.ndarray) -> np.ndarray:  # logn (S, G) or (G,) -> (S, G)
        shape = np.broadcast_shapes(logn.shape, (S, 1)) if logn.ndim == 2 else (S, len(logn))
        flat = np.broadcast_to(logn, shape).reshape(-1)
        X = np.tile(base, (len(flat), 1))
        X[:, r.n] = np.exp(flat)
        X[:, r.d] = solve_data(cost, X, r, C, *d_range)
        out = law.predict_rows(X, np.repeat(thetas, shape[1], axis=0))
        return np.where(np.isfinite(out), out, np.inf).reshape(shape)

    grid = np.linspace(math.log(n_range[0]), math.log(n_range[1]), GRID)
    f = losses(grid)
    i = np.argmin(f, axis=1)
    edge = (i == 0) | (i == GRID - 1) | ~np.isfinite(f[np.arange(S), i])
    step = grid[1] - grid[0]
    centre = grid[np.clip(i, 0, GRID - 1)]
    fine = centre[:, None] + np.linspace(-2 * step, 2 * step, FINE)[None, :]
    ff = losses(fine)
    j = np.clip(np.argmin(ff, axis=1), 1, FINE - 2)
    rows = np.arange(S)
    y0, y1, y2 = ff[rows, j - 1], ff[rows, j], ff[rows, j + 1]
    denom = y0 - 2 * y1 + y2
    h = fine[0, 1] - fine[0, 0]
    shift = np.where((denom > 0) & np.isfinite(denom), 0.5 * h * (y0 - y2) / np.where(denom > 0, denom, 1.0), 0.0)
    logn = fine[rows, j] + np.clip(shift, -h, h)
    best = losses(logn[:, None])[:, 0]
    return np.where(edge, np.nan, logn), np.where(edge, np.nan, best)


def _slope(logc: np.ndarray, logy: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of logy (S, m) against logc (m,), over its finite entries (>= 3)."""
    ok = np.isfinite(logy)
    n = ok.sum(axis=1)
    x = np.where(ok, logc[None, :], 0.0)
    y = np.where(ok, logy, 0.0)
    mx = x.sum(axis=1) / np.maximum(n, 1)
    my = y.sum(axis=1) / np.maximum(n, 1)
    sxy = (np.where(ok, (logc[None, :] - mx[:, None]) * (logy - my[:, None]), 0.0)).sum(axis=1)
    sxx = (np.where(ok, (logc[None, :] - mx[:, None]) ** 2, 0.0)).sum(axis=1)
    return np.where((n >= 3) & (sxx > 0), sxy / np.where(sxx > 0, sxx, 1.0), np.nan)


def budgets(c_min: float, c_max: float) -> np.ndarray:
    """Compute budgets of an allocation: the train range, then 10x and 100x the largest train compute."""
    inside = np.geomspace(c_min, c_max, max(2, COMPUTE_POINTS - len(FACTORS))) if c_max > c_min else np.array([c_max])
    return np.concatenate([inside, c_max * np.array(FACTORS)])


def _tied_to_allocation(X: np.ndarray, r: Roles, i: int) -> bool:
    """Whether variable i is (in the data) a function of N and D: log-linear R^2 above 0.98."""
    v = X[:, i]
    if len(np.unique(v)) < 3 or np.any(X[:, [r.n, r.d]] <= 0):
        return False
    z = np.log(np.abs(v)) if np.all(v > 0) else v
    A = np.column_stack([np.ones(len(X)), np.log(X[:, r.n]), np.log(X[:, r.d])])
    coef, *_ = np.linalg.lstsq(A, z, rcond=None)
    resid = z - A @ coef
    return float(1 - resid.var() / max(z.var(), 1e-300)) > 0.98


def held_values(record: LawRecord, train, group: str, hold: dict[str, float] | None = None) -> np.ndarray:
    """The values other variables are held at: the group's train medians, or what the user gives."""
    X = train.X[train.groups == group]
    base = np.median(X, axis=0) if len(X) else np.median(train.X, axis=0)
    for name, value in (hold or {}).items():
        base[record.task.symbols.index(name)] = value
    return base


def allocation_setup(record: LawRecord, train, cost: str | None = None,
                     hold: dict[str, float] | None = None) -> tuple[Roles, Law | None]:
    """The roles and cost formula of an allocation, or a DeriveError saying why there is none."""
    task, law = record.task, record.law
    r = roles(task)
    if r is None:
        raise DeriveError(f"task {task.name} has no model-size and data variables (declare `role` in the task "
                          "file, or name them N and D)")
    used = law.expr.free_symbols
    if law.variables[r.n] not in used or law.variables[r.d] not in used:
        raise DeriveError(f"law {record.label} does not depend on both {task.symbols[r.n]} and {task.symbols[r.d]}")
    cost_law = parse_cost(task, cost)
    for i in range(len(task.symbols)):
        if i not in (r.n, r.d) and law.variables[i] in used and task.symbols[i] not in (hold or {}) \
                and _tied_to_allocation(train.X, r, i):
            raise DeriveError(f"{task.symbols[i]} is determined by {task.symbols[r.n]} and {task.symbols[r.d]} in the "
                              "data (a compute or ratio column); holding it fixed while they vary is not an allocation")
    return r, cost_law


def search_ranges(X: np.ndarray, r: Roles) -> tuple[tuple[float, float], tuple[float, float]]:
    """The N and D ranges an optimum is searched in: far beyond the observed ones, both ways."""
    return (X[:, r.n].min() / 1e3, X[:, r.n].max() * 1e4), (X[:, r.d].min() / 1e6, X[:, r.d].max() * 1e7)


def allocation(record: LawRecord, train, boot: Bootstrap | None = None, cost: str | None = None,
               hold: dict[str, float] | None = None, target: int = 0) -> list[Allocation]:
    """Compute-optimal allocation per group (point estimate, and per bootstrap resample when given)."""
    task, law = record.task, record.law
    r, cost_law = allocation_setup(record, train, cost, hold)
    held_names = [task.symbols[i] for i in range(len(task.symbols)) if i not in (r.n, r.d)]
    out = []
    for key in sorted(k for k in record.constants if k[1] == target):
        g = key[0]
        Xg = train.X[train.groups == g]
        if not len(Xg):
            continue
        base = held_values(record, train, g, hold)
        c_train = evaluate_cost(cost_law, Xg, r)
        c_train = c_train[np.isfinite(c_train) & (c_train > 0)]
        if not len(c_train):
            raise DeriveError(f"the cost is not positive on the train rows of group {g}")
        compute = budgets(float(c_train.min()), float(c_train.max()))
        n_range, d_range = search_ranges(Xg, r)
        thetas = {"point": np.asarray(record.constants[key], dtype=float)[None, :]}
        if boot is not None and key in boot.samples:
            s = boot.samples[key]
            thetas["samples"] = s[np.isfinite(s).all(axis=1)]
        res = {}
        for name, th in thetas.items():
            logn = np.full((len(th), len(compute)), np.nan)
            best = logn.copy()
            for ci, C in enumerate(compute):
                logn[:, ci], best[:, ci] = minimise_at(law, th, base, r, cost_law, float(C), n_range, d_range)
            n_opt = np.exp(logn)
            X = np.tile(base, (n_opt.size, 1))
            X[:, r.n] = n_opt.ravel()
            d_opt = np.vstack([solve_data(cost_law, X.reshape(len(th), len(compute), -1)[:, ci], r, float(C), *d_range)
                               for ci, C in enumerate(compute)]).T
            logc = np.log(compute)
            res[name] = (n_opt, d_opt, best, _slope(logc, logn), _slope(logc, np.log(d_opt)))
        n_opt, d_opt, best, a, b = res["point"]
        alloc = Allocation(group=g, compute=compute, n_opt=n_opt[0], d_opt=d_opt[0], loss_opt=best[0], a=float(a[0]),
                           b=float(b[0]), held={s: float(base[task.symbols.index(s)]) for s in held_names},
                           level=boot.options.level if boot is not None else 0.95)
        if "samples" in res:
            alloc.n_opt_samples, alloc.d_opt_samples, alloc.loss_opt_samples, alloc.a_samples, alloc.b_samples = \
                res["samples"]
        out.append(alloc)
    return out


# --- predictions ------------------------------------------------------------------------------------
@dataclass
class Prediction:
    group: str
    target: str
    point: dict[str, float]  # every variable's value
    what: str  # "user" | "10x N" | "100x all scale variables" ...
    value: float
    law_band: tuple[float, float]
    prediction_band: tuple[float, float]


def parse_point(task, text: str) -> dict[str, float]:
    """`N=7e10,D=1.4e12` -> {N: 7e10, D: 1.4e12}; errors name the bad part."""
    out: dict[str, float] = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise DeriveError(f"point {text!r}: {part!r} is not SYMBOL=VALUE")
        if name not in task.symbols:
            raise DeriveError(f"point {text!r}: unknown variable {name!r}; the task's variables are "
                              f"{', '.join(task.symbols)}")
        try:
            v = float(value)
        except ValueError:
            raise DeriveError(f"point {text!r}: {value.strip()!r} is not a number") from None
        if not math.isfinite(v):
            raise DeriveError(f"point {text!r}: {name} must be finite")
        out[name] = v
    if not out:
        raise DeriveError(f"point {text!r} names no variable")
    return out


def scale_up_points(record: LawRecord, train, group: str) -> list[tuple[str, np.ndarray]]:
    """10x and 100x the largest train value of each scale variable (the others at their largest train
    value if they are scale variables, else their median), and of all scale variables together."""
    task = record.task
    X = train.X[train.groups == group]
    if not len(X):
        return []
    scale = [i for i in scale_variables(task) if np.all(X[:, i] > 0)]
    base = np.median(X, axis=0)
    base[scale] = X[:, scale].max(axis=0)
    out = []
    for f in FACTORS:
        for i in scale:
            p = base.copy()
            p[i] *= f
            out.append((f"{f:g}x {task.symbols[i]}", p))
        if len(scale) > 1:
            p = base.copy()
            p[scale] *= f
            out.append((f"{f:g}x {', '.join(task.symbols[i] for i in scale)}", p))
    return out


def _band(draws: np.ndarray, level: float) -> tuple[float, float]:
    d = draws[np.isfinite(draws)]
    if len(d) < 2:
        return math.nan, math.nan
    q = (1 - level) / 2
    lo, hi = np.percentile(d, [100 * q, 100 * (1 - q)])
    return float(lo), float(hi)


def predictions(record: LawRecord, train, boot: Bootstrap | None, points: list[dict[str, float]] | None = None,
                hold: dict[str, float] | None = None) -> list[Prediction]:
    """The law at the user's points and at 10x / 100x the largest training scale, per group and target."""
    task, law = record.task, record.law
    out = []
    for key in sorted(record.constants):
        g, t = key
        base = held_values(record, train, g, hold)
        named = []
        for pt in points or []:
            p = base.copy()
            for name, v in pt.items():
                p[task.symbols.index(name)] = v
            named.append(("user point", p))
        named += scale_up_points(record, train, g)
        level = boot.options.level if boot is not None else 0.95
        for what, p in named:
            X = p[None, :]
            value = float(np.asarray(law.predict(X, record.constants[key]), dtype=float)[0])
            if boot is not None and key in boot.samples:
                lb = _band(boot.draws(law, X, key)[:, 0], level)
                pb = _band(boot.draws(law, X, key, noise_seed=boot.options.seed + 104729)[:, 0], level)
            else:
                lb = pb = (math.nan, math.nan)
            out.append(Prediction(g, record.targets[t], dict(zip(task.symbols, map(float, p), strict=True)), what,
                                  value, lb, pb))
    return out


# --- everything, JSON-ready -------------------------------------------------------------------------
def _f(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def allocation_dict(a: Allocation) -> dict:
    def band(v):
        lo, hi = a.interval(v)
        return [_f(lo), _f(hi)]

    rows = []
    for ci, C in enumerate(a.compute):
        row = {"compute": float(C), "n_opt": _f(a.n_opt[ci]), "d_opt": _f(a.d_opt[ci]), "loss": _f(a.loss_opt[ci])}
        if a.n_opt_samples.size:
            row |= {"n_opt_95": band(a.n_opt_samples[:, ci]), "d_opt_95": band(a.d_opt_samples[:, ci]),
                    "loss_95": band(a.loss_opt_samples[:, ci])}
        rows.append(row)
    out = {"group": a.group, "a": _f(a.a), "b": _f(a.b), "held": a.held, "budgets": rows,
           "compute_range": [float(a.compute[0]), float(a.compute[-1])]}
    if a.a_samples.size:
        out |= {"a_95": band(a.a_samples), "b_95": band(a.b_samples), "resamples": a.ok_resamples}
    return out


def prediction_dict(p: Prediction) -> dict:
    return {"group": p.group, "target": p.target, "at": p.what, "point": p.point, "value": _f(p.value),
            "law_band_95": [_f(x) for x in p.law_band], "prediction_band_95": [_f(x) for x in p.prediction_band]}


def derive(record: LawRecord, train, boot: Bootstrap | None, points: list[dict[str, float]] | None = None,
           cost: str | None = None, hold: dict[str, float] | None = None) -> dict:
    """Allocation (when the law is in N and D) and predictions, JSON-ready; the reason when allocation
    does not apply."""
    task = record.task
    name = record.label if record.role.startswith("human") else f"discovered {record.label}"
    out: dict = {"law": name, "formula": record.law.text, "role": record.role,
                 "cost": cost or COST, "level": boot.options.level if boot is not None else 0.95,
                 "bootstrap_resamples": boot.options.n_resamples if boot is not None else 0}
    r = roles(task)
    if r is not None:
        out["roles"] = {"model_size": task.symbols[r.n], "data": task.symbols[r.d]}
    try:
        out["allocation"] = [allocation_dict(a) for a in allocation(record, train, boot, cost, hold)]
    except DeriveError as exc:
        out["allocation"] = None
        out["allocation_note"] = str(exc)
    out["predictions"] = [prediction_dict(p) for p in predictions(record, train, boot, points, hold)]
    return out
