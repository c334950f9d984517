"""Bootstrap: reproducible, independent of how resamples are spread over processes, and calibrated on a
planted law with known noise."""
from __future__ import annotations

import numpy as np
import pytest

from discovery.laws.fit import FitOptions, fit_law
from discovery.laws.law import parse_law
from discovery.laws.uncertainty import BootstrapOptions, bootstrap_law, coverage, summary
from discovery.tasks.dataset import Dataset
from discovery.tasks.values import ConstantSpec

TRUE = {"E": 1.5, "A": 4.0, "alpha": 0.5}
SPECS = {"E": ConstantSpec(init=1.0, bounds=(0.0, 10.0)), "A": ConstantSpec(init=1.0, bounds=(0.0, 100.0)),
         "alpha": ConstantSpec(init=0.3, bounds=(0.01, 3.0))}
LAW = parse_law("E + A*x**(-alpha)", ["x"])


def _planted(seed: int, n: int = 60, sigma: float = 0.02, groups: int = 1) -> Dataset:
    """y = E + A x^-alpha + N(0, sigma^2) on x log-uniform in [1, 1000], per group."""
    rng = np.random.default_rng(seed)
    X = np.exp(rng.uniform(0, np.log(1000), size=(n * groups, 1)))
    theta = LAW.rename_constants(TRUE)
    y = LAW.predict(X, theta) + rng.normal(0, sigma, size=n * groups)
    g = np.repeat([f"g{i}" for i in range(groups)], n)
    return Dataset(X, y[:, None], g, np.arange(n * groups), "train")


def _fit(data: Dataset, opts: FitOptions | None = None):
    opts = opts or FitOptions(n_starts=16)
    fit = fit_law(LAW, data, ["y"], SPECS, opts)
    return {k: f.theta for k, f in fit.fits.items()}, opts


def test_same_seed_same_intervals_and_different_seed_different():
    data = _planted(0, groups=2)
    point, opts = _fit(data)
    a = bootstrap_law(LAW, data, point, SPECS, opts, BootstrapOptions(n_resamples=40, seed=5, n_jobs=1))
    b = bootstrap_law(LAW, data, point, SPECS, opts, BootstrapOptions(n_resamples=40, seed=5, n_jobs=1))
    c = bootstrap_law(LAW, data, point, SPECS, opts, BootstrapOptions(n_resamples=40, seed=6, n_jobs=1))
    for key in point:
        assert np.array_equal(a.samples[key], b.samples[key])
        assert np.array_equal(a.intervals()[key], b.intervals()[key])
        assert not np.array_equal(a.samples[key], c.samples[key])
        assert a.n_ok(key) == 40


def test_processes_do_not_change_the_result():
    """Each resample has its own seeded generator, so 1 or 2 processes give identical samples."""
    data = _planted(1)
    point, opts = _fit(data)
    one = bootstrap_law(LAW, data, point, SPECS, opts, BootstrapOptions(n_resamples=24, seed=2, n_jobs=1))
    two = bootstrap_law(LAW, data, point, SPECS, opts, BootstrapOptions(n_resamples=24, seed=2, n_jobs=2))
    for key in point:
        assert np.array_equal(one.samples[key], two.samples[key])


def test_planted_law_intervals_cover_the_true_constants_at_about_the_nominal_rate():
    """25 synthetic data sets with known noise; each 95% interval should hold the true constant ~95% of
    the time. 75 interval checks: a calibrated bootstrap lands in [0.85, 1] with probability > 0.99."""
    hits = []
    band_cover = []
    for trial in range(25):
        data = _planted(100 + trial)
        point, opts = _fit(data)
        boot = bootstrap_law(LAW, data, point, SPECS, opts, BootstrapOptions(n_resamples=100, seed=trial, n_jobs=1))
        iv = boot.intervals()[("g0", 0)]
        truth = LAW.rename_constants(TRUE)
        hits += [lo <= t <= hi for (lo, hi), t in zip(iv, truth, strict=True)]
        fresh = _planted(900 + trial, n=40)  # new observations from the same law and noise
        lo, hi = boot.band(LAW, fresh, noise=True)
        band_cover.append(coverage(fresh.Y, lo, hi))
    rate = float(np.mean(hits))
    assert 0.85 <= rate <= 1.0, rate
    assert 0.85 <= float(np.mean(band_cover)) <= 1.0, np.mean(band_cover)


def test_law_band_is_narrower_than_prediction_band_and_summary_reports_coverage():
    data = _planted(3, n=80)
    point, opts = _fit(data)
    boot = bootstrap_law(LAW, data, point, SPECS, opts, BootstrapOptions(n_resamples=60, n_jobs=1))
    test = _planted(4, n=50)
    lo, hi = boot.band(LAW, test)
    plo, phi = boot.band(LAW, test, noise=True)
    assert np.all(hi - lo <= phi - plo + 1e-12)
    s = summary(boot, LAW, test)
    assert s["resamples"] == 60 and s["ok"] == {"g0|0": 60}
    assert s["coverage"]["cells"] == 50
    assert s["coverage"]["law_band"] <= s["coverage"]["prediction_band"]


def test_dropped_rows_are_dropped_before_resampling():
    """With drop_highest_targets=k (the Chinchilla recipe), the k highest targets never enter a resample."""
    data = _planted(5, n=40)
    Y = data.Y.copy()
    Y[:3, 0] = 50.0  # three outliers
    data = Dataset(data.X, Y, data.groups, data.rows, "train")
    opts = FitOptions(n_starts=16, drop_highest_targets=3)
    point, _ = _fit(data, opts)
    boot = bootstrap_law(LAW, data, point, SPECS, opts, BootstrapOptions(n_resamples=30, n_jobs=1))
    iv = boot.intervals()[("g0", 0)]
    assert iv[LAW.constant_names.index("E")][1] < 3.0  # outliers would drag E far up
    assert np.all(np.isfinite(boot.residuals[("g0", 0)])) and len(boot.residuals[("g0", 0)]) == 37


def test_bad_options_are_refused():
    data = _planted(6)
    point, opts = _fit(data)
    with pytest.raises(ValueError, match="at least one resample"):
        bootstrap_law(LAW, data, point, SPECS, opts, BootstrapOptions(n_resamples=0))


def test_real_task_bootstrap_is_seeded_and_warm():
    """On real data (parallel_scaling_law's human law, 4 constants, 2 groups): every resample refits."""
    from discovery.tasks.data import load_frame
    from discovery.tasks.spec import load_task
    from evaluators.benchmark import parse_human_law
    from evaluators.protocol import Protocol

    task = load_task("parallel_scaling_law")
    human = task.human_laws[0]
    law = parse_human_law(task, human)
    protocol = Protocol(task, load_frame(task))
    opts = FitOptions.from_settings(human.fit, n_starts=32)
    point = {k: f.theta for k, f in fit_law(law, protocol.train, task.targets, human.constants, opts).fits.items()}
    boot = bootstrap_law(law, protocol.train, point, human.constants, opts, BootstrapOptions(n_resamples=50, n_jobs=1))
    for key in point:
        assert boot.n_ok(key) == 50
        iv = boot.intervals()[key]
        assert np.all(iv[:, 0] <= iv[:, 1])


def test_batched_refits_give_the_intervals_of_one_refit_per_resample():
    """The default solver (all resamples of a group at once) against the reference (one least_squares refit
    per resample), on the same resamples: the same intervals, the bands too; progress reaches the total."""
    data = _planted(7, n=50, groups=2)
    point, opts = _fit(data)
    seen = []
    batch = bootstrap_law(LAW, data, point, SPECS, opts, BootstrapOptions(n_resamples=60, seed=1, n_jobs=1),
                          progress=lambda done, total: seen.append((done, total)))
    refit = bootstrap_law(LAW, data, point, SPECS, opts,
                          BootstrapOptions(n_resamples=60, seed=1, n_jobs=1, method="refit"))
    assert seen[-1] == (120, 120) and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:], strict=False))
    for key in point:
        width = refit.intervals()[key][:, 1] - refit.intervals()[key][:, 0]
        assert np.all(np.abs(batch.intervals()[key] - refit.intervals()[key]) <= 1e-3 * width[:, None])
    lo_b, hi_b = batch.band(LAW, data)
    lo_r, hi_r = refit.band(LAW, data)
    assert np.allclose(lo_b, lo_r, rtol=1e-4) and np.allclose(hi_b, hi_r, rtol=1e-4)
    assert summary(batch, LAW)["solver"] == "batch" and summary(refit, LAW)["solver"] == "refit"
