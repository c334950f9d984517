"""Shape priors: laws that turn the wrong way along a variable with a known direction rank last."""
from __future__ import annotations

import re
import sqlite3

import numpy as np
import pytest

from discovery.laws.fit import FitOptions
from discovery.laws.shape import SHAPE_KEPT, violation
from discovery.search.executors import FitData, FitJob, SerialExecutor
from discovery.search.population import Member, Population, pareto_front
from discovery.search.store import Store
from discovery.tasks.data import load_frame
from discovery.tasks.spec import TASKS_DIR, TaskError, load_task, load_task_file
from discovery.tasks.values import ConstantSpec, Direction, ShapePriors
from evaluators.protocol import Protocol

DECREASING_N = ShapePriors((Direction(0, "N", -1),))
X = np.array([[1e7], [1e8], [1e9]])


def test_a_law_that_bends_back_up_beyond_the_data_is_caught():
    # falls over the data (1e7..1e9) but turns up before 100x the largest size: a classic log-term artefact
    def bends(x):
        return 3.0 - 0.3 * np.log(x[:, 0] / 1e7) + 0.02 * np.log(x[:, 0] / 1e7) ** 2

    broken = violation(bends, X, span=1.0, priors=DECREASING_N)
    assert broken is not None and broken.startswith("rises with N") and "beyond the data" in broken


def test_a_power_law_with_a_floor_keeps_the_direction():
    assert violation(lambda x: 1.7 + 400 * x[:, 0] ** -0.3, X, span=1.0, priors=DECREASING_N) is None


def test_increasing_direction_and_non_finite_predictions():
    up = ShapePriors((Direction(0, "N", 1),))
    assert violation(lambda x: 1 - x[:, 0] ** -0.2, X, 1.0, up) is None
    assert "falls with N" in violation(lambda x: x[:, 0] ** -0.2, X, 1.0, up)
    assert "not finite" in violation(lambda x: np.log(2e9 - x[:, 0]), X, 1.0, DECREASING_N)


def test_a_target_that_cannot_leave_its_range_by_definition():
    """A Brier score lies in [0, 1]: a law that runs out of it when the scale axis is extrapolated one
    observed range width (the axis here may be negative: it is already a log) is caught; one that levels
    off is kept."""
    priors = ShapePriors(target_range=(-1.0, 0.0), axes=((0, "x"),))
    x = np.array([[-0.9], [0.5], [2.9]])
    grows = violation(lambda v: -0.5 + 0.01 * np.exp(v[:, 0]), x, span=0.5, priors=priors)
    assert grows is not None and grows.startswith("leaves the target's possible range [-1, 0]")
    assert "beyond the data" in grows
    assert violation(lambda v: -0.4 - 0.2 * np.tanh(v[:, 0] - 1), x, span=0.5, priors=priors) is None


def test_a_law_is_judged_only_where_runs_can_exist():
    """Unique tokens U never exceed tokens D on any row. Effective data U*(1 + k*(1 - exp(-(D/U - 1)/k))) is
    undefined once U passes D (fewer than one epoch), so walking U beyond D, all else fixed, must not count
    against it (Muennighoff et al.'s own law failed there). Where runs can exist the checks still bite."""
    rows = np.array([[1e8, 1e9], [1e9, 1e10], [1e9, 5e10], [1e10, 1e11]])  # U, D: U <= D on every row
    directions = (Direction(0, "U", -1), Direction(1, "D", -1))
    same_unit = ShapePriors(directions, (0.0, np.inf), same_unit=((0, 1),))

    def effective_data(x, k=5.0):
        u, d = x[:, 0], x[:, 1]
        return 1.8 + 300 * (u * (1 + k * (1 - np.exp(-(d / u - 1) / k)))) ** -0.3

    assert "not finite at U" in violation(effective_data, rows, 1.0, ShapePriors(directions, (0.0, np.inf)))
    assert violation(effective_data, rows, 1.0, same_unit, far_field=True) is None
    rises_in_d = violation(lambda x: effective_data(x) + 1e-3 * np.log(x[:, 1]) ** 2, rows, 1.0, same_unit)
    assert rises_in_d is not None and rises_in_d.startswith("rises with D")
    assert load_task("data_constrained_scaling_law").shape_priors().same_unit == ((0, 2),)  # U and D: tokens
    assert load_task("vocab_scaling_law").shape_priors().same_unit == ()


def test_task_files_declare_the_range_of_their_target():
    assert load_task("easy_question_scaling_law").shape_priors().target_range == (-1.0, 0.0)
    assert load_task("moe_scaling_law").shape_priors().target_range == (0.0, np.inf)
    assert load_task("domain_mixture_scaling_law").shape_priors().axes == ()  # no scale axis to follow


def test_tolerance_is_relative_to_the_targets_range():
    wiggle = lambda x: 2.0 + 1e-4 * np.sin(np.log(x[:, 0]))  # noqa: E731
    assert violation(wiggle, X, span=1.0, priors=DECREASING_N) is None
    assert violation(wiggle, X, span=1e-3, priors=DECREASING_N) is not None


def test_selection_puts_every_law_that_keeps_the_priors_first():
    keeps = Member(1, "a", val_nmse=0.40, complexity=20)
    breaks = Member(2, "b", val_nmse=0.10, complexity=10, shape_ok=False)
    assert min([breaks, keeps], key=lambda m: m.rank) is keeps
    assert pareto_front([breaks, keeps]) == [keeps]
    assert pareto_front([breaks]) == [breaks]  # nothing keeps them: the front is still shown
    pop = Population(1, size=1, elite=1)
    pop.admit(0, [breaks, keeps], np.random.default_rng(0))
    assert pop.islands[0] == [keeps]


def _moe_fit_data() -> FitData:
    task = load_task("moe_scaling_law")
    protocol = Protocol(task, load_frame(task))
    return FitData(task.symbols, task.targets, protocol.fit_part, protocol.validation, task.shape_priors())


def test_on_moe_the_validation_winner_with_a_log_n_term_is_flagged_and_clarks_form_is_not():
    """On the real MoE data the law with an additive log N term wins on the validation slice (largest
    train size) but turns up again beyond the data; the search ranks it below a saturating power law."""
    data = _moe_fit_data()
    assert [d.symbol for d in data.priors.directions] == ["E", "N"]
    opts = FitOptions(seed=0, n_starts=32, n_refine=1, max_nfev=80, polish=False, tol=1e-6)  # the search's
    exponent, offset = ConstantSpec(init=-0.1, bounds=(-4, 4)), ConstantSpec(init=0.1, bounds=(0, 1000))
    log_term = FitJob("A0*(E/10)**a0*(N/1e8 + b0)**a1 + A1*log(N/1e8)",  # the starts the search gave it
                      {"A0": ConstantSpec(init=2.56), "a0": ConstantSpec(init=-0.0289, bounds=(-4, 4)),
                       "b0": offset, "a1": ConstantSpec(init=-0.127, bounds=(-4, 4)),
                       "A1": ConstantSpec(init=0.138)}, opts, None, ("linear",))
    power = FitJob("A0*(N/1e8)**a0*(E/10 + b0)**a1 + E1",
                   {"A0": ConstantSpec(init=1.3), "a0": exponent, "b0": offset, "a1": exponent,
                    "E1": ConstantSpec(init=1.3)}, opts, None, ("linear",))
    flagged, kept = SerialExecutor(data).map([log_term, power])
    assert flagged.ok and kept.ok
    assert flagged.val_nmse < kept.val_nmse  # validation alone would pick the log-term law
    assert flagged.shape is not None and "with N" in flagged.shape
    assert kept.shape is None


def test_campaign_reports_shape_of_best_and_human_law(tmp_path):
    from discovery.search.campaign import Campaign, CampaignSettings

    result = Campaign(CampaignSettings(task="moe_scaling_law", out=str(tmp_path / "run"), generations=2,
                                       population=6, children=4, executor="serial", fit_starts=8)).run()
    assert result["best"]["shape"] == SHAPE_KEPT
    assert all(h["shape"] for h in result["human"])
    broken = sqlite3.connect(tmp_path / "run" / "campaign.sqlite").execute(
        "SELECT c.reason, f.shape FROM candidates c JOIN fits f ON f.candidate_id = c.id "
        "WHERE f.shape IS NOT NULL").fetchall()
    assert broken  # a short moe campaign always meets laws that bend back or leave [0, inf)
    # each broken law says what broke and where
    assert all(re.match(r"(rises with [EN] near|leaves the target's possible range|not finite at)", shape)
               for _, shape in broken)


def test_a_run_stored_before_shape_priors_still_opens(tmp_path):
    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.execute("CREATE TABLE fits (candidate_id INTEGER PRIMARY KEY, constants TEXT NOT NULL, status TEXT NOT NULL, "
               "reason TEXT, val_r2 REAL, val_nmse REAL, val_nmae REAL, fit_seconds REAL, recipe TEXT)")
    db.commit()
    db.close()
    store = Store(tmp_path / "old.sqlite")
    assert "shape" in {r["name"] for r in store.db.execute("PRAGMA table_info(fits)")}
    store.close()


def test_a_bad_direction_in_a_task_file_is_one_clear_error(tmp_path):
    text = (TASKS_DIR / "moe_scaling_law.toml").read_text().replace('monotone = "decreasing"', 'monotone = "down"', 1)
    path = tmp_path / "moe_scaling_law.toml"
    path.write_text(text)
    with pytest.raises(TaskError, match="monotone"):
        load_task_file(path)
