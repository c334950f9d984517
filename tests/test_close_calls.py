"""Close calls: a run says when laws as good as the best on selection predict differently beyond train."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

import kepler
from discovery.cli import main
from discovery.laws.fit import FitOptions, fit_law
from discovery.laws.law import parse_law
from discovery.search.campaign import Campaign, CampaignSettings
from discovery.search.close_calls import CLOSE_MARGIN, SPREAD_LIMIT, CloseCall, contenders, spread_beyond
from discovery.search.population import Member
from discovery.search.sweep import Sweep, make_sweep_settings
from discovery.tasks.data import load_frame
from discovery.tasks.spec import load_task
from evaluators.protocol import Protocol


@pytest.fixture(scope="module")
def moe():
    task = load_task("moe_scaling_law")
    protocol = Protocol(task, load_frame(task))
    axes = [i for i, v in enumerate(task.variables) if v.column in task.split.axes()]

    def fitted(formula: str):
        fit = fit_law(parse_law(formula, task.symbols), protocol.train, task.targets,
                      opts=FitOptions(seed=0, n_starts=8))
        assert fit.ok
        return fit

    return task, protocol, axes, fitted


def test_two_laws_that_fit_train_alike_but_part_beyond_it_are_far_apart(moe):
    task, protocol, axes, fitted = moe
    assert [task.variables[i].symbol for i in axes] == ["N"]  # moe's test lies at the largest dense size
    power = fitted("L0 + A*N**(-a)*E**(-b)")
    logs = fitted("c0 + c1*log(N) + c2*log(E)")  # no floor: keeps falling past the data
    assert spread_beyond([power, logs], protocol.train, axes) > SPREAD_LIMIT


def test_one_law_in_two_spellings_does_not_count_as_a_close_call(moe):
    _, protocol, axes, fitted = moe
    one = fitted("L0 + A*N**(-a)*E**(-b)")
    other = fitted("L0 + A/(N**a*E**b)")
    assert spread_beyond([one, other], protocol.train, axes) == pytest.approx(0.0, abs=SPREAD_LIMIT / 10)
    assert spread_beyond([one], protocol.train, axes) is None  # nothing to compare with
    assert spread_beyond([one, other], protocol.train, []) is None


def test_contenders_are_the_laws_within_the_margin_with_the_best_standing_on_the_shape_priors():
    best = Member(1, "a", 0.100, 5)
    close = Member(2, "b", 0.102, 5)
    closer = Member(5, "e", 0.101, 5)
    far = Member(3, "c", 0.100 * (1 + 2 * CLOSE_MARGIN), 5)
    broken = Member(4, "d", 0.100, 5, shape_ok=False)  # as good by NMSE, but breaks a shape prior
    assert [m.id for m in contenders(best, [best, close, far, broken, closer])] == [5, 2]
    assert contenders(Member(6, "f", float("inf"), 5), [best, close]) == []


def test_the_warning_names_the_spread_and_only_appears_when_the_data_do_not_decide():
    rival = [{"id": 2, "formula": "c0 + c1*log(N)"}]
    assert CloseCall(rival, SPREAD_LIMIT / 2, ["N"]).warning() is None
    assert CloseCall([], None, ["N"]).decided
    loud = CloseCall(rival, 0.9, ["N"])
    assert not loud.decided and "0.9 standard deviations" in loud.warning() and "along N" in loud.warning()
    assert "without bound" in CloseCall(rival, float("inf"), ["N"]).warning()
    assert json.loads(json.dumps(CloseCall(rival, float("inf"), ["N"]).as_dict()))["spread_sd"] == "inf"


@pytest.fixture(scope="module")
def moe_run(tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("moe") / "r"
    return run, Campaign(CampaignSettings(task="moe_scaling_law", generations=4, executor="serial",
                                          out=str(run))).run()


def test_a_campaign_reports_its_close_call_in_best_json_and_warns_when_undecided(moe_run):
    run, result = moe_run
    call = json.loads((run / "best.json").read_text())["close_call"]
    assert call == result["close_call"]
    assert set(call) == {"margin", "contenders", "spread_sd", "where", "decided"}
    best = result["best"]

    def fitness(nmse: float, complexity: int) -> float:
        return Member(0, "", nmse, complexity).fitness

    assert call["contenders"]  # on moe, laws this close to the best turn up within a few generations
    for rival in call["contenders"]:
        assert rival["id"] != best["id"]
        assert fitness(rival["selection_nmse"], rival["complexity"]) <= \
            fitness(best["validation"]["selection_nmse"], best["complexity"]) * (1 + CLOSE_MARGIN)
    assert call["decided"] == (call["spread_sd"] <= SPREAD_LIMIT)
    warned = [w for w in result["warnings"] if w.startswith("close call")]
    assert len(warned) == (not call["decided"])


def test_the_report_lists_the_contenders_of_an_undecided_run_and_says_nothing_of_a_decided_one(moe_run, tmp_path):
    source, result = moe_run
    run = shutil.copytree(source, tmp_path / "run")  # this test rewrites best.json; the other reads it
    assert main(["report", str(run), "--bootstrap", "0", "--out", str(tmp_path / "a")]) == 0
    md = (tmp_path / "a" / "report.md").read_text()
    call = result["close_call"]
    assert ("## Close call" in md) == (not call["decided"])
    if not call["decided"]:
        assert all(f"`{c['formula']}`" in md for c in call["contenders"])
    best = json.loads((run / "best.json").read_text())
    best["close_call"] = {**call, "spread_sd": "inf", "decided": False}  # as a run with a diverging rival says
    (run / "best.json").write_text(json.dumps(best))
    assert main(["report", str(run), "--bootstrap", "0", "--out", str(tmp_path / "b")]) == 0
    md = (tmp_path / "b" / "report.md").read_text()
    assert "## Close call" in md and "without bound" in md
    best["close_call"] = {**call, "spread_sd": 0.01, "decided": True}
    (run / "best.json").write_text(json.dumps(best))
    assert main(["report", str(run), "--bootstrap", "0", "--out", str(tmp_path / "c")]) == 0
    assert "## Close call" not in (tmp_path / "c" / "report.md").read_text()


def test_a_sweep_counts_its_close_calls_per_task_and_resumes_a_sweep_made_before_the_column(tmp_path):
    sweep = Sweep.create(make_sweep_settings(tasks="moe_scaling_law", seeds="0-1", generations=4,
                                             executor="serial"), tmp_path / "s")
    try:
        (row,) = sweep.run()
    finally:
        sweep.close()
    warned = [not json.loads((tmp_path / "s" / "moe_scaling_law" / f"offline-seed{seed}" / "best.json")
                             .read_text())["close_call"]["decided"] for seed in (0, 1)]
    assert row["close_calls"] == f"{sum(warned)}/2"
    md = (tmp_path / "s" / "sweep_table.md").read_text()
    assert "| close calls |" in md and f"| {sum(warned)}/2 |" in md
    # a sweep made before the column: it resumes, and runs it knew nothing of count as unknown
    con = sqlite3.connect(tmp_path / "s" / "sweep.sqlite")
    con.execute("ALTER TABLE runs DROP COLUMN close_call")
    con.commit()
    con.close()
    old = Sweep.resume(tmp_path / "s")
    try:
        assert old.table()[0]["close_calls"] is None
    finally:
        old.close()


def test_the_python_api_names_the_contenders_and_gives_each_as_a_law(moe_run):
    run, result = moe_run
    loaded = kepler.load_run(run)
    assert loaded.close_call == (not result["close_call"]["decided"])
    contenders = loaded.contenders_
    assert list(contenders["id"]) == [c["id"] for c in result["close_call"]["contenders"]]
    rival = loaded.law(int(contenders["id"].iloc[0]))
    assert rival.formula == contenders["formula"].iloc[0]
    assert rival.scores["test"]["r2"] is not None  # refit on all of train and scored, as the best law is
