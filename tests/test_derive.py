"""Derived quantities: compute-optimal allocation (checked against the closed form and against the Epoch
replication of Chinchilla), predictions with bands at user points and beyond the largest run, refusals."""
from __future__ import annotations

import numpy as np
import pytest

from discovery.laws.fit import FitOptions, fit_law
from discovery.laws.law import parse_law
from discovery.laws.uncertainty import BootstrapOptions
from discovery.outputs.derive import DeriveError, allocation, derive, parse_point, predictions
from discovery.outputs.record import attach, record_from_law
from discovery.tasks.data import load_frame
from discovery.tasks.spec import load_task
from evaluators.benchmark import parse_human_law
from evaluators.protocol import Protocol

EPOCH_A = 0.3658 / (0.3478 + 0.3658)  # a = beta / (alpha + beta) from Besiroglu et al.'s published fit


@pytest.fixture(scope="module")
def chinchilla():
    """The Epoch replication's fit (Huber 1e-3 on log loss, 5 highest losses dropped) on Kepler's train split."""
    task = load_task("chinchilla_approach3")
    human = next(h for h in task.human_laws if h.fit.drop_highest_targets == 5)
    law = parse_human_law(task, human)
    protocol = Protocol(task, load_frame(task))
    opts = FitOptions.from_settings(human.fit, n_starts=32)
    fit = fit_law(law, protocol.train, task.targets, human.constants, opts)
    record = record_from_law(task, law, fit, human.constants, opts, protocol, label=human.name)
    return record, protocol


def test_allocation_is_the_closed_form_and_lands_near_the_epoch_replication(chinchilla):
    record, protocol = chinchilla
    c = dict(zip(record.law.constant_names, next(iter(record.constants.values())), strict=True))
    (a,) = allocation(record, protocol.train)
    assert a.a == pytest.approx(c["beta"] / (c["alpha"] + c["beta"]), abs=1e-6)  # E + A/N^a + B/D^b under C = 6ND
    assert a.b == pytest.approx(c["alpha"] / (c["alpha"] + c["beta"]), abs=1e-6)
    assert abs(a.a - EPOCH_A) < 0.05
    assert np.allclose(6 * a.n_opt * a.d_opt, a.compute, rtol=1e-9)
    # another cost, solved numerically for D: C = 12ND is the same allocation at twice the budget
    (b,) = allocation(record, protocol.train, cost="12*N*D")
    assert b.a == pytest.approx(a.a, abs=1e-6) and np.allclose(b.compute, 2 * a.compute)
    assert np.allclose(b.n_opt, a.n_opt, rtol=1e-5)


def test_bootstrap_intervals_of_the_exponents_and_bands_of_the_predictions(chinchilla):
    record, protocol = chinchilla
    boot = attach(record, protocol, BootstrapOptions(n_resamples=40, n_jobs=1), cache=False)
    (a,) = allocation(record, protocol.train, boot)
    lo, hi = a.interval(a.a_samples)
    assert a.ok_resamples == 40 and lo < a.a < hi and hi - lo < 0.2
    preds = predictions(record, protocol.train, boot, [parse_point(record.task, "N=7e10,D=1.4e12")])
    user = preds[0]
    assert user.what == "user point" and user.point == {"N": 7e10, "D": 1.4e12}
    assert user.law_band[0] < user.value < user.law_band[1]
    assert user.prediction_band[0] <= user.law_band[0] and user.law_band[1] <= user.prediction_band[1]
    nmax = protocol.train.X[:, 0].max()
    assert {p.what for p in preds} >= {"10x N", "100x N", "10x D", "100x N, D"}
    assert next(p for p in preds if p.what == "100x N").point["N"] == pytest.approx(100 * nmax)
    out = derive(record, protocol.train, boot, cost=None)
    assert out["allocation"][0]["a_95"][0] < out["allocation"][0]["a"] < out["allocation"][0]["a_95"][1]


def test_what_cannot_be_derived_is_refused_with_the_reason(chinchilla):
    record, protocol = chinchilla
    with pytest.raises(DeriveError, match="unknown variable 'V'"):
        parse_point(record.task, "N=7e10,V=3")
    with pytest.raises(DeriveError, match="not a number"):
        parse_point(record.task, "N=big")
    task = record.task
    law = parse_law("E + A*N**(-alpha)", task.symbols)
    fit = fit_law(law, protocol.train, task.targets, None, FitOptions(n_starts=8))
    only_n = record_from_law(task, law, fit, None, FitOptions(), protocol, label="N only")
    with pytest.raises(DeriveError, match="does not depend on both N and D"):
        allocation(only_n, protocol.train)
    out = derive(only_n, protocol.train, None)
    assert out["allocation"] is None and "does not depend" in out["allocation_note"] and out["predictions"]
    with pytest.raises(DeriveError, match="cost"):
        allocation(record, protocol.train, cost="6*N*D + exp(")
