"""The batched fitter (FitOptions.fitter = "batched") and MINPACK's ("lm") land where the sequential trf fitter
lands, fail where it fails with the same reasons, and run a campaign end to end when CampaignSettings.fitter
asks for them."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

import numpy as np
import pytest

from discovery.laws.fit import FitOptions, fit_law, recipe_options
from discovery.laws.law import parse_law
from discovery.search.campaign import Campaign, CampaignSettings
from discovery.search.executors import stored_specs
from discovery.tasks.data import load_frame
from discovery.tasks.spec import load_task
from discovery.tasks.values import ConstantSpec
from evaluators.protocol import Protocol

INF = float("inf")
OTHERS = ["batched", "lm"]  # the fitters measured against trf
# Real laws for OpenCLIP's error vs compute, with bounds the fits run into (alpha at -0.15; a at 0, A at 100)
LAWS = [
    ("beta * C**alpha", {"beta": ConstantSpec(init=5.0, bounds=(0.0, INF)),
                         "alpha": ConstantSpec(init=-0.1, bounds=(-0.15, 2.0))}),
    ("E + A * C**(-a)", {"E": ConstantSpec(init=0.1, bounds=(0.0, 1.0)), "A": ConstantSpec(init=1.0, bounds=(0, 100)),
                         "a": ConstantSpec(init=0.3, bounds=(0.0, 2.0))}),
]


@pytest.fixture(scope="module")
def openclip():
    task = load_task("openclip_cherti2023")
    train = Protocol(task, load_frame(task)).train
    return task, train.subset(np.isin(train.groups, train.group_names[:4]))  # four benchmarks, ~29 rows each


@pytest.mark.parametrize("fitter", OTHERS)
@pytest.mark.parametrize("recipe", ["linear", "log_huber"])
@pytest.mark.parametrize("text,specs", LAWS, ids=["power", "offset_power"])
def test_other_fitters_reach_the_objective_of_trf_on_every_group(openclip, recipe, text, specs, fitter):
    task, data = openclip
    law = parse_law(text, task.symbols).with_engine("symengine")
    opts = recipe_options(FitOptions(n_starts=8, n_refine=2), recipe)
    trf = fit_law(law, data, task.targets, specs, opts)
    other = fit_law(law, data, task.targets, specs, replace(opts, fitter=fitter))
    assert trf.ok and other.ok and trf.fits.keys() == other.fits.keys()
    lo = np.array([specs[c].bounds[0] for c in law.constant_names])
    hi = np.array([specs[c].bounds[1] for c in law.constant_names])
    on_bound = 0
    near = 1e-6 if fitter == "lm" else 1e-9  # lm's sin/sqrt map reaches a bound only as u nears its turning point
    for key, a in trf.fits.items():
        b = other.fits[key]
        assert b.objective == pytest.approx(a.objective, rel=1e-6), key
        assert b.nfev > 0 and not b.clock
        assert np.all(b.theta >= lo) and np.all(b.theta <= hi), key
        on_bound += bool(np.isclose(b.theta, lo, atol=near).any() or np.isclose(b.theta, hi, atol=near).any())
    assert on_bound  # the bounds take part
    assert np.allclose(other.predict(data), trf.predict(data), rtol=1e-4)


def test_other_fitters_fail_where_trf_fails_with_the_same_reason(openclip):
    task, data = openclip
    first = np.flatnonzero(data.groups == data.group_names[0])
    keep = np.ones(len(data), dtype=bool)
    keep[first[1:]] = False  # the first group keeps one row, which drop_highest_targets then drops
    few = data.subset(keep)
    text, specs = LAWS[1]
    law = parse_law(text, task.symbols).with_engine("symengine")
    opts = FitOptions(n_starts=8, drop_highest_targets=1)
    for fitter in ("trf", *OTHERS):
        fit = fit_law(law, few, task.targets, specs, replace(opts, fitter=fitter))
        assert fit.fits[(data.group_names[0], 0)].reason == "no rows to fit"
        assert [f.status for f in fit.fits.values()] == ["failed", "ok", "ok", "ok"]
    never = parse_law("A * log(1e9 - C)", task.symbols)  # C > 1e10 on every row: NaN at every start
    reasons = {f: {g.reason for g in fit_law(never, data, task.targets, None, FitOptions(n_starts=8, fitter=f))
                   .fits.values()} for f in ("trf", *OTHERS)}
    assert all(r == {"the law is not finite on the data at any start"} for r in reasons.values())


@pytest.mark.parametrize("fitter", OTHERS)
def test_campaign_with_another_fitter_stores_its_fits(tmp_path, fitter):
    settings = CampaignSettings(task="parallel_scaling_law", generations=1, population=4, islands=1, children=4,
                                fit_starts=8, executor="serial", fitter=fitter, out=str(tmp_path / "run"))
    result = Campaign(settings).run()
    assert result["candidates_evaluated"] > 0
    db = sqlite3.connect(tmp_path / "run" / "campaign.sqlite")
    db.row_factory = sqlite3.Row
    rows = db.execute("SELECT c.formula, c.constant_specs, f.constants, f.recipe FROM fits f JOIN candidates c "
                      "ON c.id = f.candidate_id WHERE f.status = 'ok' ORDER BY c.id").fetchall()
    assert rows
    task = load_task("parallel_scaling_law")
    protocol = Protocol(task, load_frame(task))
    opts = Campaign.search_fit_options(settings)
    assert opts.fitter == fitter
    differs_from_trf = 0
    for row in rows:
        law = parse_law(row["formula"], task.symbols).with_engine("symengine")
        stored = json.loads(row["constants"])
        assert len(stored) == 2  # one set per group
        fits = {f: fit_law(law, protocol.fit_part, task.targets, stored_specs(row["constant_specs"]),
                           recipe_options(replace(opts, fitter=f), row["recipe"])) for f in (fitter, "trf")}
        again = {f"{g}|{t}": dict(zip(law.constant_names, map(float, gf.theta), strict=True))
                 for (g, t), gf in fits[fitter].fits.items()}
        assert again == stored  # the worker fitted with the chosen fitter
        differs_from_trf += any(not np.array_equal(fits["trf"].fits[k].theta, gf.theta)
                                for k, gf in fits[fitter].fits.items())
    assert differs_from_trf
