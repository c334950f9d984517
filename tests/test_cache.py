"""The bootstrap is computed once per run and kept in the run directory; anything it depends on changes
the key, so a changed law, constants, options or data recomputes it; a damaged cache file is recomputed."""
from __future__ import annotations

import numpy as np

from discovery.laws.fit import FitOptions, fit_law
from discovery.laws.law import parse_law
from discovery.laws.uncertainty import BootstrapOptions
from discovery.outputs.cache import cached_bootstrap
from discovery.tasks.dataset import Dataset
from discovery.tasks.values import ConstantSpec

LAW = parse_law("E + A*x**(-alpha)", ["x"])
SPECS = {"E": ConstantSpec(init=1.0, bounds=(0.0, 10.0)), "A": ConstantSpec(init=1.0, bounds=(0.0, 100.0)),
         "alpha": ConstantSpec(init=0.3, bounds=(0.01, 3.0))}


def _data(n: int = 40) -> Dataset:
    rng = np.random.default_rng(0)
    X = np.exp(rng.uniform(0, np.log(1000), size=(n, 1)))
    y = LAW.predict(X, LAW.rename_constants({"E": 1.5, "A": 4.0, "alpha": 0.5})) + rng.normal(0, 0.02, n)
    return Dataset(X, y[:, None], np.array(["g"] * n), np.arange(n), "train")


def test_the_bootstrap_is_reused_until_something_it_depends_on_changes(tmp_path):
    data, opts, options = _data(), FitOptions(n_starts=16), BootstrapOptions(n_resamples=30, n_jobs=1)
    point = {k: f.theta for k, f in fit_law(LAW, data, ["y"], SPECS, opts).fits.items()}
    first, hit = cached_bootstrap(tmp_path, LAW, data, point, SPECS, opts, options)
    assert not hit and len(list(tmp_path.glob("bootstrap-*.npz"))) == 1
    again, hit = cached_bootstrap(tmp_path, LAW, data, point, SPECS, opts, options)
    assert hit and np.array_equal(again.samples[("g", 0)], first.samples[("g", 0)])
    assert again.options == options and again.residuals[("g", 0)].shape == first.residuals[("g", 0)].shape
    moved = {k: v * (1 + 1e-9) for k, v in point.items()}
    changes = [(LAW, data, moved, SPECS, opts, options),
               (LAW, data, point, SPECS, FitOptions(n_starts=16, loss="huber"), options),
               (LAW, data, point, SPECS, opts, BootstrapOptions(n_resamples=30, n_jobs=1, seed=1)),
               (LAW, data.subset(np.arange(len(data)) > 0), point, SPECS, opts, options),
               (parse_law("E + A*x**(-alpha) + 0*x", ["x"]), data, point, SPECS, opts, options)]
    for args in changes:
        assert not cached_bootstrap(tmp_path, *args)[1]
    for path in tmp_path.glob("bootstrap-*.npz"):
        path.write_bytes(b"not a cache file")
    damaged, hit = cached_bootstrap(tmp_path, LAW, data, point, SPECS, opts, options)
    assert not hit and np.array_equal(damaged.samples[("g", 0)], first.samples[("g", 0)])
    assert cached_bootstrap(tmp_path, LAW, data, point, SPECS, opts, options)[1]
