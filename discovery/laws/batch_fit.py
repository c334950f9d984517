"""Many weighted refits of one law at once: a batched Levenberg-Marquardt for bootstrap resamples.

A bootstrap resample of a group's rows is the same least-squares problem with integer row weights
(how often each row was drawn). Refitting a thousand resamples one `least_squares` call at a time
spends most of its time in Python overhead on tiny problems; here every resample takes its step
together: one vectorised evaluation of the law and its analytic Jacobian over (resamples, rows), one
batched solve of the damped normal equations, one vectorised acceptance test. Robust losses (Huber,
soft L1, Cauchy) are handled by iteratively reweighted least squares inside the damped steps, log
residuals by dividing the Jacobian by the prediction, and bounds by clipping with the constants that
sit on a bound and push outward held fixed for that step (an active set). Each resample starts from
the point estimate and stops on the same relative tolerances `least_squares` uses. Resamples that do
not converge within `max_iter` steps are reported, so the caller can refit them the slow way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from discovery.laws.deadline import Deadline
from discovery.laws.law import Law

_LAMBDA0 = 1e-3
_LAMBDA_MAX = 1e12


@dataclass
class BatchResult:
    theta: np.ndarray  # (B, k)
    cost: np.ndarray  # (B,) least_squares' cost 0.5 * sum(w * f^2 * rho(r^2/f^2))
    converged: np.ndarray  # (B,) bool
    iterations: int  # batched steps taken (the slowest resample's)
    steps: np.ndarray  # (B,) Jacobian evaluations per resample
    nfev: np.ndarray  # (B,) residual evaluations per member (the start included)
    clock: np.ndarray  # (B,) bool: the deadline stopped this member before it converged or ran out of steps
    exhausted: np.ndarray  # (B,) bool: still improving when `max_iter` steps ran out (an evaluation budget spent)


def rho(z: np.ndarray, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """rho(z) and rho'(z) of least_squares' losses, z = (r / f_scale)^2."""
    if loss == "linear":
        return z, np.ones_like(z)
    if loss == "huber":
        s = np.sqrt(np.maximum(z, 1e-300))
        return np.where(z <= 1, z, 2 * s - 1), np.where(z <= 1, 1.0, 1.0 / s)
    if loss == "soft_l1":
        t = np.sqrt(1 + z)
        return 2 * (t - 1), 1.0 / t
    return np.log1p(z), 1.0 / (1 + z)  # cauchy


class _Problem:
    """Residuals, Jacobian and cost of weighted rows for a batch of constant vectors. The rows are shared by
    every member (X (n, d), y (n,): bootstrap resamples) or each member's own (X (B, n, d), y (B, n): many
    groups' fits padded to one length, the padding weighted 0)."""

    def __init__(self, law: Law, X: np.ndarray, y: np.ndarray, W: np.ndarray, loss: str, f_scale: float,
                 log_residuals: bool):
        self.law, self.X, self.y, self.W = law, X, y, W
        self.loss, self.f, self.log = loss, f_scale, log_residuals
        self.used = W > 0
        self.stacked = X.ndim == 3
        with np.errstate(all="ignore"):
            self.log_y = np.log(y) if log_residuals else None

    def residuals(self, theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(all="ignore"):
            if self.stacked:
                pred = np.array(self.law.predict(self.X[rows], theta), dtype=float)
                r = np.log(pred) - self.log_y[rows] if self.log else pred - self.y[rows]
            else:
                pred = np.array(self.law.predict(self.X, theta), dtype=float)
                r = np.log(pred) - self.log_y[None, :] if self.log else pred - self.y[None, :]
        r = np.where(self.used[rows], r, 0.0)  # rows a resample did not draw do not count, even if not finite
        return r, pred

    def jacobian(self, theta: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if self.stacked:
            return self.law.stacked_jacobians(self.X[rows], theta)
        return self.law.jacobians(self.X, theta)

    def cost(self, r: np.ndarray, rows: np.ndarray) -> np.ndarray:
        value, _ = rho((r / self.f) ** 2, self.loss)
        c = 0.5 * self.f**2 * np.einsum("bn,bn->b", self.W[rows], value)
        return np.where(np.isfinite(r).all(axis=1) & np.isfinite(c), c, np.inf)


def fit_weighted(law: Law, X: np.ndarray, y: np.ndarray, W: np.ndarray, theta0: np.ndarray, lo: np.ndarray,
                 hi: np.ndarray, loss: str = "linear", f_scale: float = 1.0, log_residuals: bool = False,
                 max_iter: int = 200, tol: float = 1e-12, deadline: Deadline | None = None,
                 ftol_gain: float = 0.0, lambda0: float = _LAMBDA0) -> BatchResult:
    """Minimise every row of W's weighted cost from theta0 (k,) or (B, k), within [lo, hi].

    X (n, d) and y (n,) are shared by every member, or (B, n, d) and (B, n): each member's own rows.
    Levenberg-Marquardt with MINPACK's scaling (the largest diagonal of the normal matrix seen so far)
    and Nielsen's damping update from the ratio of actual to predicted decrease. A resample stops when a
    step lowers its cost by less than `tol` relative (ftol), moves the constants by less than `tol`
    relative (xtol), or its projected gradient vanishes (gtol). Steps are clipped to the bounds.
    `deadline` (CPU seconds: discovery.laws.deadline) is checked before every batched step; members still
    running then are reported in `clock`. `ftol_gain`: the ftol test counts only for a step whose gain
    ratio (actual over predicted decrease) exceeds it, as trf's does with 0.25; heavily damped tiny steps
    in a long flat valley then do not pass for convergence. `lambda0`: the starting damping (relative to the scaling).
    """
    prob = _Problem(law, np.asarray(X, dtype=float), np.asarray(y, dtype=float), np.asarray(W, dtype=float), loss,
                    f_scale, log_residuals)
    return _levenberg_marquardt(prob, theta0, lo, hi, max_iter, tol, deadline, ftol_gain, lambda0)


def _levenberg_marquardt(prob: _Problem, theta0: np.ndarray, lo: np.ndarray, hi: np.ndarray, max_iter: int,
                         tol: float, deadline: Deadline | None, ftol_gain: float, lambda0: float) -> BatchResult:
    loss, f_scale, log_residuals = prob.loss, prob.f, prob.log
    B, k = prob.W.shape[0], len(lo)
    theta = np.clip(np.broadcast_to(np.asarray(theta0, dtype=float), (B, k)).copy(), lo, hi)
    R, P = prob.residuals(theta, np.arange(B))  # residuals and predictions at the current constants
    cost = prob.cost(R, np.arange(B))
    lam, nu = np.full(B, lambda0), np.full(B, 2.0)
    scale = np.zeros((B, k))
    done = ~np.isfinite(cost)
    converged = np.zeros(B, dtype=bool)
    steps = np.zeros(B, dtype=int)
    nfev = np.ones(B, dtype=int)
    clock = np.zeros(B, dtype=bool)
    eye = np.eye(k)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (the count is reported)
        rows = np.flatnonzero(~done)
        if not len(rows):
            break
        if deadline is not None and deadline.passed():
            clock[rows] = True
            break
        th, r = theta[rows], R[rows]
        steps[rows] += 1
        J = prob.jacobian(th, rows)
        if log_residuals:
            with np.errstate(all="ignore"):
                J = J / P[rows][:, :, None]
        J = np.where(np.isfinite(J) & prob.used[rows][:, :, None], J, 0.0)
        _, d1 = rho((r / f_scale) ** 2, loss)
        w = prob.W[rows] * d1  # IRLS weights: the robust loss as a reweighted least-squares problem
        g = np.einsum("bn,bnk->bk", w * r, J)
        Jw = J * np.sqrt(w)[:, :, None]
        H = np.matmul(Jw.transpose(0, 2, 1), Jw)
        free = ~(((th <= lo) & (g > 0)) | ((th >= hi) & (g < 0)))  # on a bound and pushing out: held this step
        small_g = np.max(np.abs(np.where(free, g, 0.0)), axis=1) <= tol * np.maximum(2 * cost[rows], 1e-300)
        converged[rows[small_g]] = done[rows[small_g]] = True
        scale[rows] = np.maximum(scale[rows], np.einsum("bkk->bk", H))
        pending = ~small_g  # damped tries until a step is accepted or the row stops
        for _ in range(16):
            p = np.flatnonzero(pending)
            if not len(p):
                break
            idx, mask = rows[p], free[p]
            D = np.maximum(scale[idx], 1e-12 * np.maximum(scale[idx].max(axis=1, keepdims=True), 1e-300))
            A = H[p] + lam[idx][:, None, None] * (D[:, :, None] * eye[None])
            A = np.where(mask[:, :, None] & mask[:, None, :], A, 0.0) + (~mask)[:, :, None] * eye[None]
            rhs = np.where(mask, -g[p], 0.0)
            try:
                step = np.linalg.solve(A, rhs[..., None])[..., 0]
            except np.linalg.LinAlgError:
                step = np.stack([np.linalg.lstsq(a, b, rcond=None)[0] for a, b in zip(A, rhs, strict=True)])
            new = np.clip(th[p] + np.where(np.isfinite(step), step, 0.0), lo, hi)
            step = new - th[p]
            predicted = -(np.einsum("bk,bk->b", g[p], step) + 0.5 * np.einsum("bk,bkl,bl->b", step, H[p], step))
            r_new, p_new = prob.residuals(new, idx)
            nfev[idx] += 1
            c_new = prob.cost(r_new, idx)
            old = cost[idx]
            actual = old - c_new
            ok = np.isfinite(c_new) & (actual > 0)
            gain = np.where(predicted > 0, actual / np.where(predicted > 0, predicted, 1.0), 0.0)
            a = idx[ok]
            theta[a], cost[a], R[a], P[a] = new[ok], c_new[ok], r_new[ok], p_new[ok]
            lam[a] = np.maximum(lam[a] * np.maximum(1 / 3, 1 - (2 * np.clip(gain[ok], 0, 1) - 1) ** 3), 1e-15)
            nu[a] = 2.0
            lam[idx[~ok]] *= nu[idx[~ok]]
            nu[idx[~ok]] *= 2.0
            floor = tol * np.maximum(old, 1e-300)
            small_x = np.linalg.norm(step, axis=1) <= tol * (tol + np.linalg.norm(th[p], axis=1))
            small_f = (np.abs(actual) <= floor) & (np.abs(predicted) <= floor) & (gain > ftol_gain)
            stuck = lam[idx] > _LAMBDA_MAX
            stop = small_x | (ok & small_f) | stuck
            converged[idx[stop & ~stuck]] = True
            done[idx[stop]] = True
            pending[p[ok | stop]] = False
    return BatchResult(theta=theta, cost=cost, converged=converged, iterations=it, steps=steps, nfev=nfev,
                       clock=clock, exhausted=~done & ~clock)
