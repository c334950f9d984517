"""The fitter: recovers planted constants, is deterministic, bounded in time, and never raises."""
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery.laws.deadline import WALL_FACTOR
from discovery.laws.fit import FitOptions, fit_group, fit_law
from discovery.laws.law import Law, parse_law
from discovery.tasks.dataset import Dataset
from discovery.tasks.values import ConstantSpec


def _planted(n=200, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    N = 10 ** rng.uniform(7, 10, n)
    D = 10 ** rng.uniform(9, 12, n)
    y = 1.8 + 480 * N**-0.35 + 2000 * D**-0.37
    y = y * np.exp(rng.normal(scale=noise, size=n))
    return np.column_stack([N, D]), y


SPECS = {"E": ConstantSpec(init=1.0, bounds=(0, 10)), "A": ConstantSpec(init=100, bounds=(0, 1e5)),
         "B": ConstantSpec(init=100, bounds=(0, 1e5)), "alpha": ConstantSpec(init=0.5, bounds=(0, 2)),
         "beta": ConstantSpec(init=0.5, bounds=(0, 2))}
LAW = parse_law("E + A/N**alpha + B/D**beta", ["N", "D"])


def test_recovers_planted_chinchilla_constants():
    X, y = _planted()
    fit = fit_group(LAW, X, y, SPECS, FitOptions())
    got = dict(zip(LAW.constant_names, fit.theta, strict=True))
    assert fit.status == "ok"
    assert got["alpha"] == pytest.approx(0.35, rel=1e-4)
    assert got["beta"] == pytest.approx(0.37, rel=1e-4)
    assert got["E"] == pytest.approx(1.8, rel=1e-4)


def test_same_seed_same_constants_different_seed_still_converges():
    X, y = _planted(noise=0.01)
    a = fit_group(LAW, X, y, SPECS, FitOptions(seed=3))
    b = fit_group(LAW, X, y, SPECS, FitOptions(seed=3))
    np.testing.assert_array_equal(a.theta, b.theta)
    c = fit_group(LAW, X, y, SPECS, FitOptions(seed=4))
    assert c.objective == pytest.approx(a.objective, rel=1e-3)


def test_cached_starts_fit_exactly_as_starts_drawn_afresh_for_every_group(monkeypatch):
    """The Sobol draw behind the starts is shared between group fits (a speed-up): fits must not change by a bit,
    and no fit can alter the draw the next one gets."""
    from discovery.laws import fit as fit_module

    X, y = _planted(noise=0.01)
    cached = [fit_group(LAW, X[i::3], y[i::3], SPECS, FitOptions(seed=5)) for i in range(3)]
    shared = fit_module._unit_starts(5, FitOptions().n_starts, 5)
    with pytest.raises(ValueError, match="read-only"):
        shared[0, 0] = 0.5
    monkeypatch.setattr(fit_module, "_unit_starts", fit_module._unit_starts.__wrapped__)
    drawn = [fit_group(LAW, X[i::3], y[i::3], SPECS, FitOptions(seed=5)) for i in range(3)]
    for a, b in zip(cached, drawn, strict=True):
        np.testing.assert_array_equal(a.theta, b.theta)
        assert a.objective == b.objective


def test_bad_numerics_give_failed_status_not_exceptions():
    X, y = _planted(n=20)
    law = parse_law("log(-A*N) + B", ["N", "D"])
    fit = fit_group(law, X, y, {"A": ConstantSpec(init=1, bounds=(0.1, 10))}, FitOptions())
    assert fit.status == "failed" and fit.reason
    overflow = parse_law("exp(A*N) + B", ["N", "D"])
    res = fit_group(overflow, X, y, None, FitOptions())
    assert res.status in ("ok", "failed")


def test_time_limit_is_respected():
    X, y = _planted(n=2000)
    law = parse_law("E + A/N**alpha + B/D**beta + C*tanh(k*log(N/D))", ["N", "D"])
    t0 = time.perf_counter()
    fit_group(law, X, y, None, FitOptions(time_limit=0.05, n_refine=50, max_nfev=100000))
    assert time.perf_counter() - t0 < 1.0


def _kept_off_its_core(monkeypatch, seconds: float) -> None:
    """Every evaluation of a law waits `seconds` without using CPU, as a fit's thread does on a busy machine."""
    predict = Law.predict

    def waiting(self, X, theta):
        time.sleep(seconds)
        return predict(self, X, theta)
    monkeypatch.setattr(Law, "predict", waiting)


def test_fit_limits_count_cpu_seconds_so_other_work_on_the_machine_does_not_cut_a_fit_short(monkeypatch):
    X, y = _planted()
    law = parse_law("E + A/N**alpha + B/D**beta", ["N", "D"])
    opts = FitOptions(n_starts=4, n_refine=1, max_nfev=40, polish=False, tol=1e-15, time_limit=0.2)
    idle = fit_group(law, X, y, None, opts)
    _kept_off_its_core(monkeypatch, 0.02)
    t0 = time.perf_counter()
    busy = fit_group(law, X, y, None, opts)
    wall = time.perf_counter() - t0
    assert wall > 2 * opts.time_limit, "the fit spent longer than its limit in wall time..."
    assert not busy.clock and busy.nfev == idle.nfev, "...and was not stopped: the same work as on an idle machine"
    assert np.array_equal(busy.theta, idle.theta)


def test_a_fit_kept_from_running_is_still_stopped_after_its_wall_bound(monkeypatch):
    X, y = _planted()
    law = parse_law("E + A/N**alpha + B/D**beta", ["N", "D"])
    _kept_off_its_core(monkeypatch, 0.05)
    t0 = time.perf_counter()
    fit = fit_group(law, X, y, None, FitOptions(n_starts=4, n_refine=1, max_nfev=10_000, tol=1e-15, time_limit=0.1))
    assert fit.clock and time.perf_counter() - t0 < WALL_FACTOR * 0.1 + 1.0


def test_constants_are_fitted_per_group():
    X1, y1 = _planted(seed=1)
    X2, y2 = _planted(seed=2)
    y2 = y2 + 0.5
    data = Dataset(np.vstack([X1, X2]), np.concatenate([y1, y2])[:, None],
                   np.array(["a"] * len(y1) + ["b"] * len(y2)), np.arange(len(y1) + len(y2)), "train")
    fit = fit_law(LAW, data, ["loss"], SPECS)
    assert fit.constants("b")["E"] - fit.constants("a")["E"] == pytest.approx(0.5, rel=1e-3)


FORMULAS = st.sampled_from([
    "A*N**b + C", "A*exp(-b*N/1e9) + C", "A*log(N) + B*log(D) + C", "A/(1 + exp(-b*(log(N) - c)))",
    "Max(A*N**b, C)", "A*tanh(b*D/1e11) + c", "sqrt(A*N) + B", "abs(A - N**b)",
])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FORMULAS, st.integers(0, 10_000))
def test_random_valid_formulas_never_crash_the_fitter(formula, seed):
    X, y = _planted(n=50, noise=0.05, seed=seed % 7)
    law = parse_law(formula, ["N", "D"])
    fit = fit_group(law, X, y, None, FitOptions(seed=seed, n_starts=16, time_limit=2.0))
    assert fit.status in ("ok", "failed")
    assert len(fit.theta) == len(law.constants)
