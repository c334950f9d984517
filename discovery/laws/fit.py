"""Fit a law's constants, per group and per target.

Recipe (see notes-from-peers): quasi-random starts within the bounds, with the linear amplitudes
solved exactly for each start (variable projection) and all starts screened in one vectorized
pass; the best few are refined by `scipy.optimize.least_squares` with the analytic Jacobian,
bounds and an optional robust loss on linear or log residuals (or, with `fitter="lm"`, by MINPACK's
Levenberg-Marquardt, see `_refine_lm`; with `fitter="batched"`, every group's refinements at once, see
`fit_law_batched`). A fit never raises: bad numerics give a `failed`
status with a reason, and every fit is bounded in time.
"""
from __future__ import annotations

import functools
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Literal

import numpy as np
from scipy.optimize import least_squares, leastsq
from scipy.stats import qmc

from discovery.laws.batch_fit import fit_weighted, rho
from discovery.laws.deadline import Deadline
from discovery.laws.law import Law
from discovery.laws.unbounded import Unbounded
from discovery.tasks.dataset import Dataset
from discovery.tasks.values import ConstantSpec, FitSettings

DEFAULT_SPEC = ConstantSpec(init=1.0)
PENALTY = 1e6


@dataclass(frozen=True)
class FitOptions:
    loss: Literal["linear", "huber", "soft_l1", "cauchy"] = "linear"
    f_scale: float = 1.0
    log_residuals: bool = False
    drop_highest_targets: int = 0
    n_starts: int = 128
    n_refine: int = 3
    seed: int = 0
    time_limit: float = 10.0  # CPU seconds per (group, target) fit (discovery.laws.deadline)
    max_nfev: int = 400
    tol: float = 1e-8  # ftol = xtol = gtol of least_squares; campaigns screen with a looser one
    polish: bool = True  # restart the refinement once from the best point (off for cheap search fits)
    # "trf": one least_squares call per refined start, group after group; "lm": the same with MINPACK's
    # Levenberg-Marquardt (_refine_lm); "batched": every group's refinements in one vectorised
    # Levenberg-Marquardt (fit_law_batched), unconverged ones continued with trf
    fitter: Literal["trf", "lm", "batched"] = "trf"

    @classmethod
    def from_settings(cls, settings: FitSettings, **overrides) -> "FitOptions":
        base = cls(loss=settings.loss, f_scale=settings.f_scale, log_residuals=settings.log_residuals,
                   drop_highest_targets=settings.drop_highest_targets)
        return replace(base, **overrides)


# Named fitting recipes a campaign may try per candidate, choosing on validation ("let validation choose"):
# plain least squares, least squares on log residuals, and the Chinchilla replication's Huber (1e-3) on logs.
RECIPES: dict[str, dict] = {
    "linear": {},
    "log": {"log_residuals": True},
    "log_huber": {"log_residuals": True, "loss": "huber", "f_scale": 1e-3},
}


def recipe_options(base: "FitOptions", recipe: str) -> "FitOptions":
    return replace(base, **{"loss": "linear", "f_scale": 1.0, "log_residuals": False, **RECIPES[recipe]})


@dataclass
class GroupFit:
    theta: np.ndarray
    status: Literal["ok", "failed", "fixed"]
    reason: str = ""
    objective: float = math.inf  # least_squares cost: 0.5 * sum(rho(residual^2)) on the fit rows
    nfev: int = 0
    dropped_rows: list[int] = field(default_factory=list)
    clock: bool = False  # a time limit stopped this fit before its evaluation budget: it depends on machine speed

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "fixed")


@dataclass
class LawFit:
    """Constants per (group, target index); predictions for rows of any split."""

    law: Law
    targets: list[str]
    fits: dict[tuple[str, int], GroupFit]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.fits) and all(f.ok for f in self.fits.values())

    @property
    def stopped_by_clock(self) -> int:
        """How many group fits a time limit cut short (0 when every fit ran to its evaluation budget)."""
        return sum(f.clock for f in self.fits.values())

    @property
    def failures(self) -> list[str]:
        return [f"{g}/{self.targets[t]}: {f.reason}" for (g, t), f in self.fits.items() if not f.ok]

    def constants(self, group: str, target: int = 0) -> dict[str, float]:
        fit = self.fits[(group, target)]
        return {c.name: float(v) for c, v in zip(self.law.constants, fit.theta, strict=True)}

    def predict(self, data: Dataset) -> np.ndarray:
        """(n, n_targets); NaN where the group has no successful fit (or the law cannot be evaluated there:
        whatever NumPy raises on an odd law makes its predictions fail, never the caller)."""
        out = np.full((len(data), len(self.targets)), np.nan)
        for g in data.group_names:
            mask = data.groups == g
            for t in range(len(self.targets)):
                fit = self.fits.get((g, t))
                if fit is not None and fit.ok:
                    try:
                        out[mask, t] = self.law.predict(data.X[mask], fit.theta)
                    except Exception:  # noqa: BLE001 - scored as a failed prediction (NaN)
                        pass
        return out


class _Deadline(Exception):
    pass


def _specs_for(law: Law, specs: dict[str, ConstantSpec] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    specs = specs or {}
    chosen = [specs.get(c.name, DEFAULT_SPEC) for c in law.constants]
    init = np.array([s.init for s in chosen], dtype=float)
    lo = np.array([s.bounds[0] for s in chosen], dtype=float)
    hi = np.array([s.bounds[1] for s in chosen], dtype=float)
    return init, lo, hi


@functools.lru_cache(maxsize=64)
def _unit_starts(k: int, n: int, seed: int) -> np.ndarray:
    """The scrambled Sobol points in [0, 1)^k behind `n` starts. They depend only on (k, n, seed), and building the
    engine cost more than the rest of a small group's screen (openclip: a quarter of a serial campaign's CPU), so
    one draw serves every group and fit of that size; read-only, so no caller can change what the next one gets."""
    m = max(1, int(2 ** math.ceil(math.log2(max(n, 2)))))
    u = qmc.Sobol(d=k, scramble=True, seed=seed).random(m)[: n - 1]
    u.setflags(write=False)
    return u


def _sample_starts(init: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Quasi-random starts: within finite bounds (log-uniform over wide positive ranges), else around init."""
    k = len(init)
    if k == 0:
        return np.zeros((1, 0))
    u = _unit_starts(k, n, seed)
    starts = np.empty((len(u), k))
    for j in range(k):
        a, b = lo[j], hi[j]
        width = max(2.0, 2.0 * abs(init[j]))
        a_eff = a if math.isfinite(a) else init[j] - width
        b_eff = b if math.isfinite(b) else init[j] + width
        if a_eff > 0 and b_eff / a_eff > 100:
            starts[:, j] = np.exp(np.log(a_eff) + u[:, j] * (np.log(b_eff) - np.log(a_eff)))
        else:
            starts[:, j] = a_eff + u[:, j] * (b_eff - a_eff)
    return np.vstack([init[None, :], starts])


def _interior(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = np.where(np.isfinite(hi - lo), hi - lo, np.maximum(1.0, np.abs(x)))
    margin = 1e-9 * span
    return np.clip(x, lo + margin, hi - margin)


def _objective(residuals: np.ndarray, loss: str, f_scale: float) -> np.ndarray:
    """least_squares' cost for residuals (..., n): 0.5 * sum(f_scale^2 * rho((r/f_scale)^2))."""
    z = (residuals / f_scale) ** 2
    if loss == "linear":
        rho = z
    elif loss == "huber":
        rho = np.where(z <= 1, z, 2 * np.sqrt(z) - 1)
    elif loss == "soft_l1":
        rho = 2 * (np.sqrt(1 + z) - 1)
    else:  # cauchy
        rho = np.log1p(z)
    return 0.5 * f_scale**2 * rho.sum(axis=-1)


def _residuals(pred: np.ndarray, y: np.ndarray, log: bool) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.log(pred) - np.log(y) if log else pred - y


# Starts are screened a chunk at a time, so no temporary holds more than this many numbers (16 MB): on a million
# rows, 129 starts at once took 3.2 GB. Below it (every campaign fit) the screen is one vectorized pass.
SCREEN_CHUNK_ELEMENTS = 1 << 21


def _screen(law: Law, X: np.ndarray, y: np.ndarray, starts: np.ndarray, lo: np.ndarray, hi: np.ndarray,
            opts: FitOptions) -> np.ndarray:
    """Complete every start with exactly solved linear amplitudes and return starts sorted by objective."""
    per_chunk = max(1, SCREEN_CHUNK_ELEMENTS // max(1, len(y) * max(1, len(law.separable.linear))))
    if len(starts) <= per_chunk:
        full, obj = _screen_chunk(law, X, y, starts, lo, hi, opts)
    else:
        parts = [_screen_chunk(law, X, y, starts[i:i + per_chunk], lo, hi, opts)
                 for i in range(0, len(starts), per_chunk)]
        full, obj = np.vstack([f for f, _ in parts]), np.concatenate([o for _, o in parts])
    order = np.argsort(obj, kind="stable")
    return full[order][np.isfinite(obj[order])]


def _screen_chunk(law: Law, X: np.ndarray, y: np.ndarray, starts: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  opts: FitOptions) -> tuple[np.ndarray, np.ndarray]:
    """Starts completed with their linear amplitudes, and each one's objective (inf where not finite)."""
    sep = law.separable
    S = len(starts)
    full = starts.copy()
    if sep.linear:
        cols = [X[:, j][None, :] for j in range(X.shape[1])]
        nl = [starts[:, [i]] for i in sep.nonlinear]
        with np.errstate(all="ignore"):
            parts = sep.func(*cols, *nl)
        n = len(y)
        parts = [np.broadcast_to(np.asarray(p, dtype=float), (S, n)) for p in parts]
        h, G = parts[0], np.stack(parts[1:], axis=-1)  # (S, n), (S, n, m)
        del parts
        w = 1.0 / np.abs(y) if opts.log_residuals else np.ones_like(y)  # log r ~ (pred - y)/y
        Gw = G * w[None, :, None]
        del G
        tw = (y[None, :] - h) * w[None, :]
        del h
        finite = np.isfinite(Gw).all(axis=(1, 2)) & np.isfinite(tw).all(axis=1)
        Gw = np.where(finite[:, None, None], Gw, 0.0)
        tw = np.where(finite[:, None], tw, 0.0)
        norms = np.linalg.norm(Gw, axis=1)  # (S, m)
        norms = np.where(norms > 0, norms, 1.0)
        Gn = Gw / norms[:, None, :]
        del Gw
        A = np.einsum("snm,snk->smk", Gn, Gn) + 1e-10 * np.eye(Gn.shape[-1])[None]
        b = np.einsum("snm,sn->sm", Gn, tw)
        del Gn, tw
        try:
            coef = np.linalg.solve(A, b[..., None])[..., 0] / norms
        except np.linalg.LinAlgError:
            coef = np.zeros((S, len(sep.linear)))
        coef = np.where(np.isfinite(coef), coef, 0.0)
        full[:, sep.linear] = np.clip(coef, lo[sep.linear], hi[sep.linear])
    pred = law.predict(X, full)
    obj = _objective(_residuals(pred, y[None, :], opts.log_residuals), opts.loss, opts.f_scale)
    return full, np.where(np.isfinite(obj), obj, np.inf)


def _refine(law: Law, X: np.ndarray, y: np.ndarray, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
            opts: FitOptions, deadline: Deadline) -> tuple[np.ndarray, float, int, bool]:
    best = {"x": x0.copy(), "cost": math.inf}
    counter = {"nfev": 0}
    clock = False

    def fun(theta: np.ndarray) -> np.ndarray:
        if deadline.passed():
            raise _Deadline
        counter["nfev"] += 1
        r = _residuals(law.predict(X, theta), y, opts.log_residuals)
        if not np.all(np.isfinite(r)):
            return np.full_like(y, PENALTY)
        cost = float(_objective(r, opts.loss, opts.f_scale))
        if cost < best["cost"]:
            best["x"], best["cost"] = theta.copy(), cost
        return r

    def jac(theta: np.ndarray) -> np.ndarray:
        J = law.jacobian(X, theta)
        if opts.log_residuals:
            with np.errstate(all="ignore"):
                J = J / law.predict(X, theta)[:, None]
        return np.where(np.isfinite(J), J, 0.0)

    bounds = (lo, hi) if (np.isfinite(lo).any() or np.isfinite(hi).any()) else (-np.inf, np.inf)
    try:
        least_squares(fun, _interior(x0, lo, hi), jac=jac, bounds=bounds, loss=opts.loss, f_scale=opts.f_scale,
                      x_scale="jac", max_nfev=opts.max_nfev, method="trf", ftol=opts.tol, xtol=opts.tol,
                      gtol=opts.tol)
    except _Deadline:
        clock = True
    return best["x"], best["cost"], counter["nfev"], clock


def _refine_lm(law: Law, X: np.ndarray, y: np.ndarray, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               opts: FitOptions, deadline: Deadline) -> tuple[np.ndarray, float, int, bool]:
    """`_refine` by MINPACK's Levenberg-Marquardt (`scipy.optimize.leastsq` with the analytic Jacobian): its
    iterations run in Fortran, where trf's run in Python (three quarters of a search fit's time went to trf's
    own steps on groups of ~30 rows). Bounds become the MINUIT transform (discovery.laws.unbounded); a robust
    loss becomes residuals whose squares sum to 2 x its cost, sign(r) f sqrt(rho((r/f)^2)), so both methods
    minimise the same objective. MINPACK asks for the Jacobian where it evaluated the residuals, so the
    prediction there is kept, not recomputed."""
    free = Unbounded(lo, hi)
    best = {"x": x0.copy(), "cost": math.inf}
    counter = {"nfev": 0}
    recent: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    robust = opts.loss != "linear"
    f = opts.f_scale

    def evaluate(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = u.tobytes()
        if key not in recent:
            if deadline.passed():
                raise _Deadline
            counter["nfev"] += 1
            theta = free.to_constants(u)
            pred = law.predict(X, theta)
            if len(recent) > 3:
                recent.pop(next(iter(recent)))
            recent[key] = (theta, pred, _residuals(pred, y, opts.log_residuals))
        return recent[key]

    def fun(u: np.ndarray) -> np.ndarray:
        theta, _, r = evaluate(u)
        if not np.all(np.isfinite(r)):
            return np.full_like(y, PENALTY)
        cost = float(_objective(r, opts.loss, f))
        if cost < best["cost"]:
            best["x"], best["cost"] = theta.copy(), cost
        if robust:
            return np.sign(r) * f * np.sqrt(rho((r / f) ** 2, opts.loss)[0])
        return r

    def jac(u: np.ndarray) -> np.ndarray:
        theta, pred, r = evaluate(u)
        J = law.jacobian(X, theta)
        with np.errstate(all="ignore"):
            if opts.log_residuals:
                J = J / pred[:, None]
            if robust:
                value, slope = rho((r / f) ** 2, opts.loss)
                J = J * np.where(value > 0, slope * np.abs(r) / (f * np.sqrt(value)), 1.0)[:, None]
        return free.chain(np.where(np.isfinite(J), J, 0.0), u)

    try:
        leastsq(fun, free.to_free(_interior(x0, lo, hi)), Dfun=jac, maxfev=opts.max_nfev, ftol=opts.tol,
                xtol=opts.tol, gtol=opts.tol)
    except _Deadline:
        return best["x"], best["cost"], counter["nfev"], True
    return best["x"], best["cost"], counter["nfev"], False


def _no_finite_fit(opts: FitOptions, clock: bool) -> str:
    """Why a group fit ended without a finite fit (both fitters say it the same way)."""
    if clock:
        return (f"time limit ({opts.time_limit:g} CPU s per group) reached before a finite fit: allow more time "
                f"(kepler fit --time-limit)")
    return "refinement found no finite fit"


def fit_group(law: Law, X: np.ndarray, y: np.ndarray, specs: dict[str, ConstantSpec] | None,
              opts: FitOptions, warm_start: np.ndarray | None = None, deadline: Deadline | None = None) -> GroupFit:
    """Fit one group's rows for one target. Never raises.

    `warm_start`: an extra start (e.g. a sibling group's solution), screened with the others.
    `deadline`: when the fit stops, on top of `opts.time_limit` (both count CPU seconds: discovery.laws.deadline).
    """
    dropped: list[int] = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # overflow in a candidate is expected; it shows up as a failed status
        return _fit_group(law, X, y, specs, opts, dropped, warm_start, deadline)


def _rows_to_fit(law: Law, X: np.ndarray, y: np.ndarray, opts: FitOptions, dropped: list[int],
                 deadline: Deadline | None) -> tuple[np.ndarray, np.ndarray] | GroupFit:
    """A group's rows left after dropping its highest targets (appended to `dropped`), or the GroupFit that says
    why there is nothing to fit (both fitters give the same reasons)."""
    keep = np.ones(len(y), dtype=bool)
    if opts.drop_highest_targets:
        dropped.extend(np.argsort(-y, kind="stable")[: opts.drop_highest_targets].tolist())
        keep[dropped] = False
    X, y = X[keep], y[keep]
    nan = np.full(len(law.constants), np.nan)
    if len(y) == 0:
        return GroupFit(nan, "failed", "no rows to fit")
    if opts.log_residuals and np.any(y <= 0):
        return GroupFit(nan, "failed", "log residuals need positive targets")
    if deadline is not None and deadline.passed():
        return GroupFit(nan, "failed", "time limit reached before this group", clock=True)
    return X, y


def _fit_group(law: Law, X: np.ndarray, y: np.ndarray, specs: dict[str, ConstantSpec] | None, opts: FitOptions,
               dropped: list[int], warm_start: np.ndarray | None, deadline: Deadline | None) -> GroupFit:
    try:
        rows = _rows_to_fit(law, X, y, opts, dropped, deadline)
        if isinstance(rows, GroupFit):
            return rows
        X, y = rows
        deadline = Deadline.after(opts.time_limit).sooner(deadline)
        init, lo, hi = _specs_for(law, specs)
        starts = _sample_starts(init, lo, hi, opts.n_starts, opts.seed)
        if warm_start is not None and np.all(np.isfinite(warm_start)):
            starts = np.vstack([starts, np.clip(warm_start, lo, hi)[None, :]])
        ranked = _screen(law, X, y, starts, lo, hi, opts)
        if len(ranked) == 0:
            return GroupFit(init, "failed", "the law is not finite on the data at any start")
        best_x, best_cost, nfev, clock = ranked[0], math.inf, 0, False
        refine = _refine_lm if opts.fitter == "lm" and len(y) >= len(init) else _refine  # MINPACK needs n >= k
        for i, x0 in enumerate(ranked[: opts.n_refine]):
            x, cost, n, clock = refine(law, X, y, x0, lo, hi, opts, deadline)
            nfev += n
            if cost < best_cost:
                best_x, best_cost = x, cost
            if deadline.passed():
                clock = clock or i + 1 < min(opts.n_refine, len(ranked)) or opts.polish
                break
        if opts.polish and math.isfinite(best_cost) and not clock:
            # trust-region runs can stop early on a flat stretch; one restart from the best point is cheap
            x, cost, n, clock = refine(law, X, y, best_x, lo, hi, opts, deadline)
            nfev += n
            if cost < best_cost:
                best_x, best_cost = x, cost
        if not math.isfinite(best_cost):
            return GroupFit(best_x, "failed", _no_finite_fit(opts, clock), nfev=nfev, dropped_rows=dropped, clock=clock)
        return GroupFit(best_x, "ok", objective=best_cost, nfev=nfev, dropped_rows=dropped, clock=clock)
    except Exception as exc:  # numerics must never crash a campaign
        return GroupFit(np.full(len(law.constants), np.nan), "failed", f"{type(exc).__name__}: {exc}"[:200],
                        dropped_rows=dropped)


def fit_law(law: Law, data: Dataset, targets: list[str], specs: dict[str, ConstantSpec] | None = None,
            opts: FitOptions | None = None, total_time_limit: float | None = None,
            warm: LawFit | None = None) -> LawFit:
    """Fit constants separately for every group and target of `data`.

    Each group also tries the previous group's solution as a start (sibling groups of one task tend to
    share constants), or, given `warm`, that fit's solution for the same group and target (a refit on
    rows that include the ones it was fitted on, as in the final refit). `total_time_limit` bounds the whole
    law, across groups. `opts.fitter == "batched"` refines all groups at once (fit_law_batched).
    """
    opts = opts or FitOptions()
    if opts.fitter == "batched":
        return fit_law_batched(law, data, targets, specs, opts, total_time_limit, warm)
    t0 = time.perf_counter()
    deadline = Deadline.after(total_time_limit)
    fits: dict[tuple[str, int], GroupFit] = {}
    for t in range(len(targets)):
        previous = None
        for g in data.group_names:
            mask = data.groups == g
            own = warm.fits.get((g, t)) if warm is not None else None
            start = own.theta if own is not None and own.ok else previous
            fit = fit_group(law, data.X[mask], data.Y[mask, t], specs, opts, warm_start=start, deadline=deadline)
            fits[(g, t)] = fit
            if fit.ok:
                previous = fit.theta
    return LawFit(law, targets, fits, seconds=time.perf_counter() - t0)


def fixed_law(law: Law, data: Dataset, targets: list[str],
              constants: dict[str, float] | Callable[[str], dict[str, float]]) -> LawFit:
    """A law with published constants: nothing is fitted. `constants` is one table for every group and target,
    or a function giving a group's table (published constants per group)."""
    fits = {}
    for g in data.group_names:
        table = constants(g) if callable(constants) else constants
        missing = [c.name for c in law.constants if c.name not in table]
        if missing:
            raise ValueError(f"published constants missing for {missing}" + (f" (group {g!r})" if callable(constants)
                                                                               else ""))
        theta = law.rename_constants(table)
        fits.update({(g, t): GroupFit(theta.copy(), "fixed") for t in range(len(targets))})
    return LawFit(law, targets, fits)


# --- The batched fitter (FitOptions.fitter == "batched") ------------------------------------------------------------
# Fit every group of a law at once: the refinements of all (group, start) pairs as one batched Levenberg-Marquardt.
#
# A campaign fits each candidate on dozens of groups of ~30 rows; one `least_squares` call per start per
# group spends most of its time in trf's per-iteration Python bookkeeping, not in the law. Here each
# group's starts are screened as in `fit.fit_group`, then the best `n_refine` starts of every group are
# refined together (`batch_fit.fit_weighted` on each group's own rows, padded to one length with weight 0).
# The sibling warm start of the sequential fitter (the previous group's solution as an extra start) cannot
# be chained inside one batch; instead a second batched pass starts each group from the best of its
# siblings' solutions (screened on its rows, linear amplitudes re-solved) wherever that start would have
# ranked among the refined ones. A member the batched LM does not converge (or that ends non-finite) is
# continued with the sequential `least_squares` refinement, so the deterministic evaluation budget, not the
# batch, decides how far a fit goes. Never raises; time limits are checked between batched steps.


# Starting damping of the batched LM for fits from screened starts: far from the optimum, in the long flat valleys
# of offset + power laws, MINPACK's 1e-3 x diag(J'J) takes steps so short that the ftol test stops the fit early.
GROUP_LAMBDA0 = 1e-6


@dataclass
class _Group:
    """One (group, target) fit in progress: its rows, its screened starts and the best point so far."""

    name: str
    X: np.ndarray
    y: np.ndarray
    dropped: list[int]
    ranked: np.ndarray  # screened starts, best first
    best_x: np.ndarray
    best_cost: float = math.inf
    nfev: int = 0
    clock: bool = False
    members: list[np.ndarray] = field(default_factory=list)  # starts of the next batched pass

    def offer(self, x: np.ndarray, cost: float) -> None:
        if cost < self.best_cost:
            self.best_x, self.best_cost = x.copy(), float(cost)


def fit_law_batched(law: Law, data: Dataset, targets: list[str], specs: dict[str, ConstantSpec] | None,
                    opts: FitOptions, total_time_limit: float | None = None, warm: LawFit | None = None) -> LawFit:
    """`fit.fit_law` with every group's refinements batched (see the module docstring). Same GroupFit semantics."""
    t0 = time.perf_counter()
    deadline = Deadline.after(total_time_limit)
    fits: dict[tuple[str, int], GroupFit] = {}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # overflow in a candidate is expected; it shows up as a failed status
        for t in range(len(targets)):
            fits.update(_fit_target(law, data, t, specs, opts, deadline, warm))
    return LawFit(law, targets, fits, seconds=time.perf_counter() - t0)


def _fit_target(law: Law, data: Dataset, t: int, specs: dict[str, ConstantSpec] | None, opts: FitOptions,
                deadline: Deadline, warm: LawFit | None) -> dict[tuple[str, int], GroupFit]:
    fits: dict[tuple[str, int], GroupFit] = {}
    if not law.constants:  # nothing to refine: the sequential fit only evaluates the law
        for g in data.group_names:
            mask = data.groups == g
            fits[(g, t)] = fit_group(law, data.X[mask], data.Y[mask, t], specs, opts,
                                     deadline=deadline)
        return fits
    init, lo, hi = _specs_for(law, specs)
    starts = _sample_starts(init, lo, hi, opts.n_starts, opts.seed)  # the same for every group: drawn once
    groups: list[_Group] = []
    for g in data.group_names:
        mask = data.groups == g
        own = warm.fits.get((g, t)) if warm is not None else None
        prepared = _prepare(law, g, data.X[mask], data.Y[mask, t], init, starts, lo, hi, opts, deadline,
                            own.theta if own is not None and own.ok else None)
        if isinstance(prepared, GroupFit):
            fits[(g, t)] = prepared
        else:
            groups.append(prepared)
    # the whole batch gets the time the sequential fitter would give its groups one after another
    limit = Deadline.after(opts.time_limit * max(1, len(groups))).sooner(deadline)
    for grp in groups:
        grp.members = list(grp.ranked[: opts.n_refine])
    _batched_pass(law, groups, lo, hi, opts, limit)
    _sibling_starts(law, groups, lo, hi, opts)
    _batched_pass(law, groups, lo, hi, opts, limit)
    if opts.polish:
        for grp in groups:
            if math.isfinite(grp.best_cost) and not grp.clock:
                grp.members = [grp.best_x]
        _batched_pass(law, groups, lo, hi, opts, limit)
    for grp in groups:
        fits[(grp.name, t)] = _result(grp, opts)
    return fits


def _prepare(law: Law, name: str, X: np.ndarray, y: np.ndarray, init: np.ndarray, starts: np.ndarray, lo: np.ndarray,
             hi: np.ndarray, opts: FitOptions, deadline: Deadline, warm_start: np.ndarray | None) -> _Group | GroupFit:
    """A group's rows and screened starts, or its failed GroupFit (the same reasons as `fit.fit_group`)."""
    dropped: list[int] = []
    nan = np.full(len(law.constants), np.nan)
    try:
        rows = _rows_to_fit(law, X, y, opts, dropped, deadline)
        if isinstance(rows, GroupFit):
            return rows
        X, y = rows
        if warm_start is not None and np.all(np.isfinite(warm_start)):
            starts = np.vstack([starts, np.clip(warm_start, lo, hi)[None, :]])
        ranked = _screen(law, X, y, starts, lo, hi, opts)
        if len(ranked) == 0:
            return GroupFit(init, "failed", "the law is not finite on the data at any start")
        return _Group(name, X, y, dropped, ranked, best_x=ranked[0].copy())
    except Exception as exc:  # numerics must never crash a campaign
        return GroupFit(nan, "failed", f"{type(exc).__name__}: {exc}"[:200], dropped_rows=dropped)


def _sibling_starts(law: Law, groups: list[_Group], lo: np.ndarray, hi: np.ndarray, opts: FitOptions) -> None:
    """Queue, per group, the best of the other groups' solutions (screened on its rows) where it would have been
    refined: better than the group's last refined screened start, or than its best fit so far."""
    solved = [grp for grp in groups if math.isfinite(grp.best_cost)]
    for grp in groups:
        grp.members = []
        others = [o.best_x for o in solved if o is not grp]
        if not others or grp.clock:
            continue
        try:
            ranked = _screen(law, grp.X, grp.y, np.array(others), lo, hi, opts)
        except Exception:  # noqa: BLE001 - an odd law: the group keeps its own starts
            continue
        if not len(ranked):
            continue
        last = grp.ranked[min(opts.n_refine, len(grp.ranked)) - 1]
        threshold = max(_cost(law, grp, last, opts), grp.best_cost) if len(grp.ranked) >= opts.n_refine \
            else math.inf
        if _cost(law, grp, ranked[0], opts) < threshold:
            grp.members = [ranked[0]]


def _cost(law: Law, grp: _Group, x: np.ndarray, opts: FitOptions) -> float:
    obj = float(_objective(_residuals(law.predict(grp.X, x), grp.y, opts.log_residuals), opts.loss, opts.f_scale))
    return obj if math.isfinite(obj) else math.inf


def _batched_pass(law: Law, groups: list[_Group], lo: np.ndarray, hi: np.ndarray, opts: FitOptions,
                  limit: Deadline) -> None:
    """Refine every queued (group, start) in one batched LM; continue the ones it leaves unconverged with trf."""
    queued = [(grp, x0) for grp in groups for x0 in grp.members]
    for grp in groups:
        grp.members = []
    if not queued:
        return
    if limit.passed():
        for grp, _ in queued:
            grp.clock = True
        return
    n = max(len(grp.y) for grp, _ in queued)
    B, d = len(queued), queued[0][0].X.shape[1]
    X3, Y, W = np.empty((B, n, d)), np.empty((B, n)), np.zeros((B, n))
    for b, (grp, _) in enumerate(queued):
        m = len(grp.y)
        X3[b, :m], X3[b, m:] = grp.X, grp.X[0]  # padding repeats a real row (finite), weighted 0
        Y[b, :m], Y[b, m:] = grp.y, grp.y[0]
        W[b, :m] = 1.0
    theta0 = np.array([_interior(x0, lo, hi) for _, x0 in queued])
    try:
        res = fit_weighted(law, X3, Y, W, theta0, lo, hi, opts.loss, opts.f_scale, opts.log_residuals,
                           max_iter=opts.max_nfev, tol=opts.tol, deadline=limit,
                           lambda0=GROUP_LAMBDA0, ftol_gain=0.25)
        theta, cost, nfev, clock = res.theta, res.cost, res.nfev, res.clock
        settled = res.converged | res.exhausted  # converged, or spent its budget as a trf run would have
    except Exception:  # noqa: BLE001 - an odd law: every member takes the sequential path
        theta, cost = theta0, np.full(B, np.inf)
        settled, nfev, clock = np.zeros(B, dtype=bool), np.zeros(B, dtype=int), np.zeros(B, dtype=bool)
    for b, (grp, x0) in enumerate(queued):
        grp.nfev += int(nfev[b])
        grp.clock = grp.clock or bool(clock[b])
        if math.isfinite(cost[b]):
            grp.offer(theta[b], cost[b])
        if (settled[b] and math.isfinite(cost[b])) or clock[b]:
            continue
        start = theta[b] if math.isfinite(cost[b]) else x0
        x, c, k, stopped = _refine(law, grp.X, grp.y, start, lo, hi, opts,
                                   Deadline.after(opts.time_limit).sooner(limit))
        grp.nfev += k
        grp.clock = grp.clock or stopped
        grp.offer(x, c)


def _result(grp: _Group, opts: FitOptions) -> GroupFit:
    if not math.isfinite(grp.best_cost):
        return GroupFit(grp.best_x, "failed", _no_finite_fit(opts, grp.clock), nfev=grp.nfev,
                        dropped_rows=grp.dropped, clock=grp.clock)
    return GroupFit(grp.best_x, "ok", objective=grp.best_cost, nfev=grp.nfev, dropped_rows=grp.dropped,
                    clock=grp.clock)
