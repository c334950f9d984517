"""Budgets are deterministic: a campaign stops on its generations, so the same seed gives the same law however
busy the machine is; a wall-clock limit that binds is reported as such wherever results are shown."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from discovery.cli.discover import _final_table, _progress_panel
from discovery.search.campaign import CLOCK_NOTE, Campaign, CampaignSettings

SMALL = dict(task="parallel_scaling_law", seed=4, generations=3, population=6, islands=2, children=5, fit_starts=16)


def _run(out: Path, **kw) -> dict:
    campaign = Campaign(CampaignSettings(**{**SMALL, **kw}, out=str(out)))
    try:
        return campaign.run()
    finally:
        campaign.close()


def _text(renderable) -> str:
    console = Console(width=400, record=True)
    console.print(renderable)
    return " ".join(console.export_text().split())  # a long title wraps


def test_same_seed_same_law_on_an_idle_and_on_a_busy_machine(tmp_path):
    quiet = _run(tmp_path / "quiet", executor="local", workers=2, generations=2)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        busy = _run(tmp_path / "busy", executor="local", workers=2, generations=2)
    finally:
        for p in burners:
            p.kill()
            p.wait()
    for result in (quiet, busy):
        assert result["stop_reason"] == "budget: generations" and result["clock"] is None
    assert busy["best"]["formula"] == quiet["best"]["formula"]
    assert busy["best"]["constants"] == quiet["best"]["constants"]
    assert busy["candidates_evaluated"] == quiet["candidates_evaluated"]


def test_a_clock_that_binds_is_reported_everywhere(tmp_path, monkeypatch):
    # the clock strikes once the first generation is stored: how fast this machine is is not under test here
    monkeypatch.setattr(Campaign, "_out_of_time", lambda self, t0: self._generations_completed() >= 1)
    result = _run(tmp_path / "clock", executor="serial", time_limit=3600)
    assert result["stop_reason"] == "budget: time limit"
    assert result["generations_completed"] < SMALL["generations"]
    assert result["clock"].startswith(CLOCK_NOTE) and "time limit" in result["clock"]
    assert json.loads((tmp_path / "clock" / "best.json").read_text())["clock"] == result["clock"]
    assert CLOCK_NOTE in _text(_final_table(result))
    campaign = Campaign.resume(tmp_path / "clock")  # the panel of a resumed run still says so
    campaign._restore()
    assert CLOCK_NOTE in _text(_progress_panel(campaign.progress))
    campaign.close()


def test_fits_cut_short_by_fit_time_limit_are_reported(tmp_path):
    result = _run(tmp_path / "fits", executor="serial", generations=1, fit_time_limit=1e-9)
    assert result["stop_reason"] == "budget: generations"
    assert result["clock"].startswith(CLOCK_NOTE) and "fit_time_limit" in result["clock"]


def test_default_budget_has_no_clock():
    assert CampaignSettings(task="parallel_scaling_law").time_limit is None
