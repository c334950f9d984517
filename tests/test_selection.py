"""Selection beyond one validation slice: forward folds, the far-field check, the classic families first."""
from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest

from discovery.laws.fit import FitOptions
from discovery.laws.law import parse_law
from discovery.laws.shape import violation
from discovery.search.campaign import Campaign, CampaignSettings
from discovery.search.proposers.base import ProposalContext
from discovery.search.proposers.offline import OfflineProposer
from discovery.search.selection import combine, fold_nmse
from discovery.search.store import Store
from discovery.tasks.data import load_frame
from discovery.tasks.spec import SplitSpec, load_task
from discovery.tasks.values import Direction, ShapePriors
from evaluators.protocol import Protocol


def _protocol(name: str) -> Protocol:
    task = load_task(name)
    return Protocol(task, load_frame(task))


@pytest.mark.parametrize("name", ["data_constrained_scaling_law", "sft_scaling_law"])
def test_each_forward_fold_fits_below_and_scores_the_next_larger_scale_of_train_only(name):
    protocol = _protocol(name)
    folds = protocol.folds(3)
    assert len(folds) == 3
    assert folds[0].fit is protocol.fit_part and folds[0].validation is protocol.validation
    axes = [protocol.task.columns.index(a) for a in protocol.task.split.axes()]
    train_rows = set(protocol.train.rows.tolist())
    for earlier, fold in pairwise(folds):
        # a fold is carved out of the previous fold's fit rows: never a validation or test row of the run
        assert set(fold.fit.rows) | set(fold.validation.rows) == set(earlier.fit.rows)
        assert not set(fold.fit.rows) & set(fold.validation.rows)
        assert set(fold.validation.rows) <= train_rows
        for g in fold.validation.group_names:  # forward: every group scored above the rows it was fitted on
            fitted = fold.fit.X[fold.fit.groups == g][:, axes]
            scored = fold.validation.X[fold.validation.groups == g][:, axes]
            assert (scored > fitted.max(axis=0)).any(axis=1).all()  # beyond every fit row on one axis at least


def test_a_test_split_along_either_of_two_axes_gets_a_validation_along_both():
    """data_constrained's test split is the largest models OR the largest token budgets: validation takes the
    largest-N rows and the largest-D rows of train, so laws are also chosen on how they carry D beyond the fit."""
    protocol = _protocol("data_constrained_scaling_law")
    n, d = (protocol.task.columns.index(c) for c in ("params", "tokens"))
    fit, val = protocol.fit_part.X, protocol.validation.X
    beyond_n, beyond_d = val[:, n] > fit[:, n].max(), val[:, d] > fit[:, d].max()
    assert beyond_n.any() and beyond_d.any() and (beyond_n | beyond_d).all()
    assert (beyond_d & ~beyond_n).sum() >= 10  # small models at the largest budgets: only the D slice has them
    assert 0.2 <= len(val) / len(protocol.train) <= 0.35
    assert "`params`, `tokens`" in protocol.task.split.describe_validation()
    with pytest.raises(ValueError, match="validation_or goes with"):
        SplitSpec(rule="-", validation_axis="N", validation_or=["D"], validation_rule="interleaved")
    with pytest.raises(ValueError, match="each axis once"):
        SplitSpec(rule="-", validation_axis="N", validation_or=["N"])


def test_folds_stop_when_a_group_would_have_too_few_rows():
    folds = _protocol("moe_scaling_law").folds(4)
    assert 1 <= len(folds) < 4
    assert all(len(f.fit) >= 3 for f in folds)


def test_fold_scores_come_from_fresh_fits_and_combine_by_mean_or_worst():
    protocol = _protocol("data_constrained_scaling_law")
    law = parse_law("E + A*(N/1e8)**(-a) + B*(D/1e9)**(-b)", protocol.task.symbols)
    opts = FitOptions(seed=0, n_starts=8, n_refine=1, max_nfev=200, polish=False, tol=1e-6)
    scores = fold_nmse(law, None, "linear", protocol.folds(3)[1:], protocol.task.targets, opts)
    assert len(scores) == 2 and all(0 < s < 1 for s in scores)
    assert combine([0.1, 0.3], "mean") == pytest.approx(0.2)
    assert combine([0.1, 0.3], "max") == 0.3
    assert combine([0.1, float("nan")], "max") == 1e5  # a fold that failed is as bad as a failed fit


def test_a_log_term_that_stays_down_to_100x_but_runs_to_minus_infinity_is_caught_only_by_the_far_field():
    priors = ShapePriors((Direction(0, "N", -1),))
    rows = np.array([[1e7], [1e8], [1e9]])

    def unbounded(x):  # a loss with no floor: keeps falling, past zero, far beyond the data
        return 3.0 - 0.2 * np.log(x[:, 0] / 1e7)

    assert violation(unbounded, rows, 1.0, priors) is None  # direction kept everywhere
    floor = ShapePriors((Direction(0, "N", -1),), target_range=(0.0, float("inf")))
    assert violation(unbounded, rows, 1.0, floor) is None  # 100x is not far enough to leave the range
    broken = violation(unbounded, rows, 1.0, floor, far_field=True)
    assert broken is not None
    assert violation(lambda x: 1.7 + 400 * x[:, 0] ** -0.3, rows, 1.0, floor, far_field=True) is None


def test_the_classic_families_come_first_only_when_asked():
    task = load_task("data_constrained_scaling_law")
    ctx = [ProposalContext(task=task, generation=0, island=0, n=8, seed=0)]
    plain = OfflineProposer(task).propose(ctx)[0].candidates
    classic = OfflineProposer(task, basis=True).propose(ctx)[0].candidates
    assert [c.formula for c in plain] != [c.formula for c in classic]
    assert [c.operation for c in plain].count("basis") == 0
    ops = [c.operation for c in classic]
    assert ops[0] == "basis" and ops.count("basis") >= 3  # offset + power law per variable, sum, product
    for c in classic[:ops.count("basis")]:
        law = parse_law(c.formula, task.symbols)
        assert set(task.symbols) & {s.name for s in law.expr.free_symbols}
    # tokens over unique tokens count repetitions: the effective-data family is a classic one here
    assert any("exp((-D/U + 1)/k" in c.formula for c in classic[:ops.count("basis")])


def test_a_campaign_selecting_on_folds_stores_and_reports_them(tmp_path):
    small = dict(task="moe_scaling_law", generations=2, population=6, islands=2, children=4, fit_starts=8,
                 executor="serial", selection_folds=2, selection_rule="max", far_field=True, basis=True)
    result = Campaign(CampaignSettings(**small, out=str(tmp_path / "r"))).run()
    validation = result["best"]["validation"]
    assert len(validation["fold_nmse"]) == 1
    assert validation["selection_nmse"] == pytest.approx(max(validation["nmse"], validation["fold_nmse"][0]))
    assert "forward fold" in result["how"] and "the worst NMSE over the folds decides" in result["how"]
    on_disk = json.loads((tmp_path / "r" / "best.json").read_text())
    assert on_disk["best"]["validation"] == validation
    plain = Campaign(CampaignSettings(**{**small, "selection_folds": 1}, out=str(tmp_path / "p"))).run()
    assert "fold_nmse" not in plain["best"]["validation"] and "forward fold" not in plain["how"]


def test_a_run_stored_before_the_selection_defaults_resumes_with_the_ones_it_started_with(tmp_path):
    # a run made when one validation slice judged every law must not switch to folds half-way when resumed
    run = tmp_path / "old"
    Campaign(CampaignSettings(task="parallel_scaling_law", generations=1, population=4, islands=1, children=2,
                              fit_starts=4, executor="serial", selection_folds=1, far_field=False, basis=False,
                              out=str(run))).run()
    store = Store(run / "campaign.sqlite")
    old = {k: v for k, v in store.meta()["settings"].items() if k not in ("selection_folds", "far_field", "basis")}
    store.set_meta(settings=old)
    store.close()
    resumed = Campaign.resume(run, {"generations": 2})
    assert (resumed.settings.selection_folds, resumed.settings.far_field, resumed.settings.basis) == (1, False, False)
    assert CampaignSettings(task="parallel_scaling_law").selection_folds == 2  # what a new run gets
