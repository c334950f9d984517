"""No silent surprises: a resumed run takes a larger budget or refuses a changed setting, and an LLM that fails
says so live, in the summary and in the exit code."""
from __future__ import annotations

import json
import sqlite3

import pytest

from discovery.cli import main
from discovery.cli.discover import _progress_panel
from discovery.search.campaign import Campaign, CampaignSettings
from discovery.search.proposers.llm import LLMProposer
from discovery.search.store import Store
from tests.llm_server import ScriptedLLMServer, reply, status

TINY = ["parallel_scaling_law", "--islands", "1", "--population", "4", "--children", "4", "--executor", "serial"]


def _outcomes(run_dir):
    store = Store(run_dir / "campaign.sqlite")
    try:
        return store.outcomes()
    finally:
        store.close()


def test_resume_with_more_generations_extends_the_run_to_what_that_budget_gives_from_the_start(tmp_path, capsys):
    assert main(["discover", *TINY, "--generations", "1", "--out", str(tmp_path / "short")]) == 0
    assert main(["discover", "--resume", str(tmp_path / "short"), "--generations", "2"]) == 0
    assert "resumed with generations 1 -> 2" in capsys.readouterr().out
    assert main(["discover", *TINY, "--generations", "2", "--out", str(tmp_path / "long")]) == 0
    short, long = (json.loads((tmp_path / d / "best.json").read_text()) for d in ("short", "long"))
    assert short["generations_completed"] == 2
    assert _outcomes(tmp_path / "short") == _outcomes(tmp_path / "long")
    for key in ("best", "pareto_front", "human"):
        assert short[key] == long[key], key
    assert (tmp_path / "short" / "best.after-1-generations.json").is_file()  # the first report is kept


@pytest.fixture(scope="module")
def one_generation(tmp_path_factory):
    run = tmp_path_factory.mktemp("resume") / "run"
    assert main(["discover", *TINY, "--generations", "1", "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize("flag, value, message", [
    ("--seed", "3", "--seed 3 differs from the run's 0"), ("--children", "8", "--children 8 differs from the run's 4"),
    ("--generations", "0", "--generations 0 is below the run's 1"),
])
def test_resume_refuses_any_other_changed_setting(one_generation, capsys, flag, value, message):
    run = one_generation
    before = (run / "best.json").read_text()
    assert main(["discover", "--resume", str(run), flag, value]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "resumed run" in err
    assert (run / "best.json").read_text() == before  # nothing touched


def _fast_llm(monkeypatch):
    """The CLI's LLM proposer, with quick retries (the test server and a refused port answer at once)."""
    original = LLMProposer.from_settings.__func__

    def quick(cls, settings, task=None, **overrides):
        return original(cls, settings, task, **{"backoff_base_s": 0.01, "backoff_max_s": 0.02, "max_retries": 1,
                                                **overrides})

    monkeypatch.setattr(LLMProposer, "from_settings", classmethod(quick))


def test_an_llm_that_never_answers_ends_the_run_with_a_message_and_an_error_exit(tmp_path, monkeypatch, capsys):
    _fast_llm(monkeypatch)
    argv = ["discover", *TINY, "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--generations", "5",
            "--llm-cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--proposer", "llm", "--out", str(tmp_path / "llm")]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "the LLM never answered" in out and "connection" in out and "--base-url" in out
    best = json.loads((tmp_path / "llm" / "best.json").read_text())
    assert best["llm"]["calls"] == 1 and best["llm"]["failed"] == 1  # stopped after one silent generation

    assert main([*argv, "--proposer", "mixed", "--out", str(tmp_path / "mixed")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: the LLM never answered" in out and "offline only" in out
    best = json.loads((tmp_path / "mixed" / "best.json").read_text())
    assert best["warnings"] and best["generations_completed"] == 5 and best["llm"]["calls"] == 1


def test_llm_errors_and_retries_show_live_and_in_the_summary(tmp_path, monkeypatch):
    good = json.dumps({"candidates": [{"formula": "E + A*(N/1e9)**(-a)", "constants": {}}]})
    with ScriptedLLMServer() as server:
        server.push(status(500), reply(good), status(503), status(503))
        settings = CampaignSettings(task="parallel_scaling_law", proposer="llm", model="m", base_url=server.base_url,
                                    generations=2, islands=1, population=4, children=1, executor="serial",
                                    llm_cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"))
        proposer = LLMProposer.from_settings(settings, api_key="test", backoff_base_s=0.01, backoff_max_s=0.02,
                                             max_retries=1)
        frames = []
        campaign = Campaign(settings, proposer=proposer, on_progress=lambda p: frames.append(
            (p.llm_event, dict(p.llm))))
        result = campaign.run()
    events = [e for e, _ in frames if e]
    assert any("HTTP 500" in e and "retrying" in e for e in events)  # seen while generation 0 was still running
    assert any("LLM call failed (server): HTTP 503" in e for e in events)
    assert result["llm"]["calls"] == 2 and result["llm"]["failed"] == 1 and result["llm"]["retries"] == 2
    assert any("HTTP 503" in e for e in result["llm"]["errors"])
    last = frames[-1]
    panel = _progress_panel(campaign.progress)
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(panel)
    text = console.export_text()
    assert "1 failed, 2 retries" in text and "LLM last error" in text and last[1]["failed"] == 1
    con = sqlite3.connect(tmp_path / "run" / "campaign.sqlite")
    assert con.execute("SELECT COUNT(*) FROM llm_calls WHERE status != 'ok'").fetchone()[0] == 1
    con.close()


def test_a_run_whose_task_now_splits_differently_is_refused_not_mixed(tmp_path, monkeypatch, capsys):
    """Editing a task's split rule (or upgrading to one that carves validation otherwise) after a run started would
    mix two splits' scores in one leaderboard: continuing it is refused with one line, and nothing is touched."""
    import numpy as np
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    n = np.geomspace(1e7, 3e9, 16)
    pd.DataFrame({"N": n, "loss": 2 + 40 * n ** -0.3}).to_csv("runs.csv", index=False)
    run = tmp_path / "run"
    assert main(["discover", "--csv", "runs.csv", "--target", "loss", "--vars", "N", "--test", "N >= 1e9",
                 "--generations", "1", "--islands", "1", "--population", "4", "--children", "4",
                 "--executor", "serial", "--out", str(run)]) == 0
    task_file = run / "runs.toml"
    task_file.write_text(task_file.read_text().replace('validation_axis = "N"',
                                                       'validation_axis = "N"\nvalidation_fraction = 0.4'))
    before = (run / "best.json").read_text()
    capsys.readouterr()
    assert main(["discover", "--resume", str(run), "--generations", "2"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "now splits its rows differently" in err and "start a new run" in err
    assert (run / "best.json").read_text() == before
    assert main(["discover", "--resume", str(run)]) == 0  # a finished run, not extended, still shows its report
    assert (run / "best.json").read_text() == before
    db = sqlite3.connect(run / "campaign.sqlite")  # killed mid-run instead of finished: refused as well
    db.execute("UPDATE meta SET value = '\"interrupted\"' WHERE key = 'status'")
    db.commit()
    db.close()
    assert main(["discover", "--resume", str(run)]) == 2
    assert "now splits its rows differently" in capsys.readouterr().err
    assert main(["discover", "--resume", str(run)]) == 2  # and again: the refusal itself changed nothing
