"""A whole campaign with the LLM proposer against a loopback OpenAI-compatible server (real client)."""
from __future__ import annotations

import json
import sqlite3

import pytest

from discovery.search.campaign import Campaign, CampaignSettings
from discovery.search.proposers.llm import LLMProposer
from discovery.search.proposers.mixed import MixedProposer
from discovery.search.proposers.offline import OfflineProposer
from discovery.tasks.spec import load_task
from tests.llm_server import ScriptedLLMServer, reply, slow, status

GOOD_1 = "E + A/N**alpha + B/D**beta"
GOOD_2 = "E + A*(N*D/1e20)**(-a)"
GOOD_3 = "E + A*N**(-a)*D**(-b)"


def _json(*formulas: str, constants: dict | None = None) -> str:
    cands = []
    for f in formulas:
        names = constants or {}
        cands.append({"formula": f, "constants": names.get(f, {}), "rationale": "scripted"})
    return json.dumps({"candidates": cands})


SCRIPT = [
    # generation 0: prose around JSON; two bad candidates (unknown variable, too many constants), one hostile
    reply("Sure! Here are my ideas:\n" + _json(GOOD_1, "A*params**(-a) + E", "a + b + c + k + g + f*N",
                                               "__import__('os').system('x')") + "\nHope this helps."),
    # generation 1: a 429, then a fenced reply
    status(429, retry_after="0"),
    reply("```json\n" + _json(GOOD_2) + "\n```"),
    # generation 2: broken JSON
    reply('{"candidates": [{"formula": "E + A/N**a", "constants": {'),
    # generation 3: a 500, then a reply slower than the timeout, then success
    status(500),
    slow(2.0, _json(GOOD_3)),
    reply(_json(GOOD_3)),
]


def _settings(tmp_path, name, **kw) -> CampaignSettings:
    base = dict(task="chinchilla_approach3", proposer="llm", model="scripted-model", generations=4, islands=1,
                population=6, children=4, fit_starts=16, llm_timeout=0.5, llm_cache_dir=str(tmp_path / "cache"),
                out=str(tmp_path / name))
    return CampaignSettings(**{**base, **kw})


def _proposer(settings: CampaignSettings, base_url: str | None) -> LLMProposer:
    return LLMProposer.from_settings(settings, base_url=base_url, api_key="test", backoff_base_s=0.01,
                                     backoff_max_s=0.05, max_retries=2)


def _candidates(run_dir) -> list[tuple]:
    con = sqlite3.connect(run_dir / "campaign.sqlite")
    rows = con.execute("SELECT generation, formula, status, reason FROM candidates ORDER BY id").fetchall()
    con.close()
    return rows


@pytest.fixture
def server():
    srv = ScriptedLLMServer().start()
    srv.push(*SCRIPT)
    yield srv
    srv.stop()


def test_llm_campaign_survives_ugly_replies_and_replays_without_the_service(tmp_path, server):
    settings = _settings(tmp_path, "live")
    result = Campaign(settings, proposer=_proposer(settings, server.base_url)).run()
    rows = _candidates(tmp_path / "live")
    by_formula = {f: (s, r) for _, f, s, r in rows}

    for good in (GOOD_1, GOOD_2, GOOD_3):
        assert by_formula[good][0] == "evaluated", by_formula[good]
    assert "unknown variable 'params'" in by_formula["A*params**(-a) + E"][1]
    assert "at most 5" in by_formula["a + b + c + k + g + f*N"][1]
    assert by_formula["__import__('os').system('x')"][0] == "rejected"
    assert any("not valid JSON" in (r or "") for _, _, s, r in rows if s == "rejected")
    assert result["best"]["formula"] in (GOOD_1, GOOD_2, GOOD_3)

    con = sqlite3.connect(tmp_path / "live" / "campaign.sqlite")
    calls = con.execute("SELECT generation, prompt_tokens, completion_tokens, status, attempts FROM llm_calls "
                        "ORDER BY id").fetchall()
    con.close()
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    assert all(c[3] == "ok" and c[1] == 100 and c[2] == 50 for c in calls)
    assert "429" in calls[1][4] and len(json.loads(calls[1][4])) == 2
    assert len(json.loads(calls[3][4])) == 3  # 500, timeout, success
    assert result["llm"]["calls"] == 4 and result["llm"]["prompt_tokens"] == 400

    server.stop()  # the service is gone: the cache alone must reproduce the run
    replay = _settings(tmp_path, "replay", replay_only=True)
    again = Campaign(replay, proposer=_proposer(replay, "http://127.0.0.1:9/v1")).run()
    assert [r[:3] for r in _candidates(tmp_path / "replay")] == [r[:3] for r in rows]
    assert again["best"]["formula"] == result["best"]["formula"]
    assert again["best"]["test"] == result["best"]["test"]
    assert again["llm"]["cached"] == 4


def test_llm_budget_stops_the_campaign_cleanly(tmp_path, server):
    settings = _settings(tmp_path, "budget", max_llm_calls=1)
    result = Campaign(settings, proposer=_proposer(settings, server.base_url)).run()
    assert result["stop_reason"].startswith("budget")
    assert result["llm"]["calls"] == 1
    assert result["best"]["formula"] == GOOD_1


def test_mixed_campaign_keeps_offline_search_going_when_the_llm_is_useless(tmp_path):
    with ScriptedLLMServer(default=reply("I cannot help with that.")) as srv:
        settings = _settings(tmp_path, "mixed", proposer="mixed", generations=3)
        task = load_task(settings.task)
        proposer = MixedProposer(_proposer(settings, srv.base_url), OfflineProposer(task))
        result = Campaign(settings, proposer=proposer).run()
    rows = _candidates(tmp_path / "mixed")
    assert sum(1 for r in rows if r[2] == "evaluated") >= 6
    assert result["best"]["proposer"] == "offline"
    assert result["llm"]["calls"] == 3


@pytest.mark.parametrize("structured, expected", [("auto", ["json_object", "json_object"]), ("off", ["text", "text"])])
def test_campaign_records_the_response_format_of_every_call(tmp_path, structured, expected):
    refuse = {"json_schema": status(400, message="response_format type 'json_schema' is not supported")}
    with ScriptedLLMServer(default=reply(_json(GOOD_1)), refuse=refuse) as srv:
        settings = _settings(tmp_path, structured, generations=2, base_url=srv.base_url, structured=structured)
        campaign = Campaign(settings)  # make_proposer -> LLMProposer.from_settings reads settings.structured
        assert campaign.proposer.structured == structured
        campaign.run()
        sent = [(r["body"].get("response_format") or {}).get("type", "text") for r in srv.requests]
    con = sqlite3.connect(tmp_path / structured / "campaign.sqlite")
    rows = con.execute("SELECT response_format, attempts FROM llm_calls ORDER BY id").fetchall()
    con.close()
    assert [r[0] for r in rows] == expected
    if structured == "auto":
        assert sent == ["json_schema", "json_object", "json_object"]  # refused once, then remembered
        assert "format_refused" in rows[0][1] and "format_refused" not in rows[1][1]
    else:
        assert sent == ["text", "text"]
