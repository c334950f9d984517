"""The batched Levenberg-Marquardt refit of bootstrap resamples lands where one least_squares fit per
resample lands: same constants, same objective, with bounds, robust losses and log residuals."""
from __future__ import annotations

import numpy as np
import pytest

from discovery.laws.batch_fit import fit_weighted
from discovery.laws.fit import FitOptions, _specs_for, fit_group
from discovery.laws.law import parse_law
from discovery.laws.uncertainty import resample_counts
from discovery.tasks.values import ConstantSpec

LAW = parse_law("E + A*x**(-alpha)", ["x"])
SPECS = {"E": ConstantSpec(init=1.0, bounds=(0.0, 10.0)), "A": ConstantSpec(init=1.0, bounds=(0.0, 100.0)),
         "alpha": ConstantSpec(init=0.3, bounds=(0.01, 3.0))}


def _data(seed: int, E: float = 1.5, n: int = 40, sigma: float = 0.02):
    rng = np.random.default_rng(seed)
    X = np.exp(rng.uniform(0, np.log(1000), size=(n, 1)))
    y = LAW.predict(X, LAW.rename_constants({"E": E, "A": 4.0, "alpha": 0.5})) + rng.normal(0, sigma, n)
    return X, y


@pytest.mark.parametrize("recipe", [{}, {"loss": "huber", "f_scale": 1e-3, "log_residuals": True}])
def test_batch_matches_one_least_squares_fit_per_resample(recipe):
    X, y = _data(0)
    opts = FitOptions(n_starts=16, **recipe)
    point = fit_group(LAW, X, y, SPECS, opts).theta
    W = resample_counts(3, list(range(20)), {("g", 0): len(y)})[("g", 0)]
    _, lo, hi = _specs_for(LAW, SPECS)
    res = fit_weighted(LAW, X, y, W, point, lo, hi, opts.loss, opts.f_scale, opts.log_residuals)
    assert res.converged.mean() >= 0.9  # the others are refit one by one by the bootstrap (test_uncertainty)
    for i in np.flatnonzero(res.converged):
        idx = np.repeat(np.arange(len(y)), W[i])
        ref = fit_group(LAW, X[idx], y[idx], SPECS, FitOptions(n_starts=8, max_nfev=1000, **recipe), warm_start=point)
        assert res.cost[i] <= ref.objective * (1 + 1e-6) + 1e-15
        assert np.allclose(res.theta[i], ref.theta, rtol=2e-3, atol=1e-5)


def test_a_constant_pushed_onto_its_bound_stays_there_and_the_rest_still_fit():
    """True E is below its lower bound (0): every resample ends with E on the bound, the others optimal."""
    X, y = _data(1, E=-0.3)
    opts = FitOptions(n_starts=16)
    point = fit_group(LAW, X, y, SPECS, opts).theta
    E = LAW.constant_names.index("E")
    assert point[E] < 1e-12
    W = resample_counts(0, list(range(20)), {("g", 0): len(y)})[("g", 0)]
    _, lo, hi = _specs_for(LAW, SPECS)
    res = fit_weighted(LAW, X, y, W, point, lo, hi)
    assert res.converged.all() and np.all(res.theta[:, E] < 1e-12)
    for i in range(len(W)):
        idx = np.repeat(np.arange(len(y)), W[i])
        ref = fit_group(LAW, X[idx], y[idx], SPECS, FitOptions(n_starts=8, max_nfev=1000), warm_start=point)
        assert res.cost[i] <= ref.objective * (1 + 1e-6)


def test_a_failing_start_is_reported_not_raised():
    X, y = _data(2)
    W = np.ones((3, len(y)))
    _, lo, hi = _specs_for(LAW, SPECS)
    start = LAW.rename_constants({"E": 1.0, "A": 4.0, "alpha": 0.5})
    res = fit_weighted(LAW, X, -np.abs(y), W, start, lo, hi, log_residuals=True)
    assert not res.converged.any() and not np.isfinite(res.cost).any()
