"""LLM calls bounded in time and money, whatever the server does (issue 14, items 2-5 and 13).

A loopback OpenAI-compatible server (tests/llm_server.py) plays the hostile service: it trickles
replies, reports absurd usage, echoes the API key in an error, and bills every reply it sends. The
real `openai` client talks to it; campaigns are killed with SIGKILL while calls are in flight.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import time

import pytest

from discovery.cli import main
from discovery.search.campaign import Campaign, CampaignSettings, load_settings_file
from discovery.search.proposers.base import BudgetExhausted
from discovery.search.proposers.llm import LLMProposer
from tests.llm_server import ScriptedLLMServer, reply, slow, status, trickle
from tests.test_llm_proposer import GOOD, TASK, ctx

SECRET = "sk-test-SECRET-0123456789abcdef"


def _campaign_settings(tmp_path, name: str, server, **kw) -> CampaignSettings:
    base = dict(task="chinchilla_approach3", proposer="llm", model="scripted-model", generations=1, islands=1,
                population=4, children=2, fit_starts=4, executor="serial", llm_cache_dir=str(tmp_path / "cache"),
                base_url=server.base_url, out=str(tmp_path / name))
    return CampaignSettings(**{**base, **kw})


# ---- item 2: one request is bounded as a whole; the time limit holds inside a generation ----------------
@pytest.mark.timeout(60)
def test_a_trickled_reply_is_cut_off_at_the_request_bound():
    with ScriptedLLMServer() as server:
        server.push(trickle(0.2, GOOD))  # ~130 s to send it all, one byte per read
        proposer = LLMProposer("m", base_url=server.base_url, api_key="k" * 10, timeout_s=1.0, max_retries=0)
        t0 = time.monotonic()
        [p] = proposer.propose([ctx()])
    assert time.monotonic() - t0 < 3.0
    assert p.calls[0].status == "error:timeout" and "1s" in p.calls[0].error


@pytest.mark.timeout(60)
def test_the_time_limit_holds_while_a_reply_is_awaited(tmp_path):
    with ScriptedLLMServer(default=slow(30.0, GOOD)) as server:
        settings = _campaign_settings(tmp_path, "late", server, time_limit=1.5, llm_timeout=60, generations=5)
        t0 = time.monotonic()
        result = Campaign(settings).run()
    assert time.monotonic() - t0 < 8.0
    assert result["stop_reason"] == "budget: time limit"
    con = sqlite3.connect(tmp_path / "late" / "campaign.sqlite")
    [(status_,)] = con.execute("SELECT status FROM llm_calls").fetchall()
    con.close()
    assert status_ == "error:time_limit"


@pytest.mark.timeout(120)
def test_the_time_limit_holds_while_a_generation_is_fitted(tmp_path):
    # each of these fits takes seconds (42 groups, 2048 starts): the old campaign finished the generation first
    settings = CampaignSettings(task="sft_scaling_law", generations=5, islands=1, children=8, population=4,
                                fit_starts=2048, executor="serial", time_limit=1.5, out=str(tmp_path / "fits"))
    t0 = time.monotonic()
    result = Campaign(settings).run()
    assert result["stop_reason"] == "budget: time limit"
    assert time.monotonic() - t0 < 20.0
    con = sqlite3.connect(tmp_path / "fits" / "campaign.sqlite")
    assert con.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == 0  # stopped inside generation 0
    con.close()


# ---- item 3: a dollar budget needs a price ---------------------------------------------------------------
def test_a_dollar_budget_for_a_model_of_unknown_price_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["discover", "chinchilla_approach3", "--proposer", "llm", "--model", "my-new-model", "--base-url",
                 "http://127.0.0.1:9/v1", "--max-cost-usd", "2", "--generations", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--price-in" in err and "--price-out" in err and "[prices]" in err
    assert err.strip().count("\n") == 0  # one line
    assert not out.exists()  # refused before anything was created


def test_prices_come_from_the_command_line_or_the_campaign_file(tmp_path):
    base = dict(task="chinchilla_approach3", proposer="llm", model="my-new-model", base_url="http://127.0.0.1:9/v1",
                max_cost_usd=2.0)
    flags = LLMProposer.from_settings(CampaignSettings(**base, price_in=1.5, price_out=6.0))
    assert flags.cost(10**6, 10**6) == pytest.approx(7.5)
    (tmp_path / "c.toml").write_text('task = "chinchilla_approach3"\nproposer = "llm"\nmodel = "my-new-model"\n'
                                     'max_cost_usd = 2.0\nbase_url = "http://127.0.0.1:9/v1"\n'
                                     '[prices]\n"my-new-model" = [0.5, 2.0]\n')
    table = LLMProposer.from_settings(load_settings_file(tmp_path / "c.toml"))
    assert table.cost(10**6, 10**6) == pytest.approx(2.5)


# ---- item 4: charged when sent, settled on the reply; kill -9 never spends past the budget ---------------------
MODEL, PRICE_IN, PRICE_OUT = "gpt-4.1-mini", 0.40, 1.60  # a model of known list price (USD per million tokens)
USAGE = (1000, 400)  # what the server reports (and bills) per reply: $0.00104 a call


def _child(settings: CampaignSettings, server_url: str) -> None:
    os.environ["KEPLER_LLM_MAX_REPLY_TOKENS"] = "400"
    campaign = (Campaign.resume(settings.out) if (settings.out and os.path.exists(f"{settings.out}/campaign.sqlite"))
                else Campaign(settings))
    campaign.run()


@pytest.mark.timeout(180)
def test_kill_9_in_flight_never_spends_past_the_budget_and_every_paid_call_is_charged(tmp_path, monkeypatch):
    monkeypatch.setenv("KEPLER_LLM_MAX_REPLY_TOKENS", "400")
    budget = 0.02
    fork = multiprocessing.get_context("fork")
    body = json.dumps({"candidates": [{"formula": "E + A/N**a + B/D**b"}, {"formula": "E + A*(N*D)**(-a)"}]})
    with ScriptedLLMServer(default=reply(body, *USAGE, delay_s=0.4)) as server:
        settings = _campaign_settings(tmp_path, "killed", server, model=MODEL, islands=2, generations=40,
                                      max_cost_usd=budget, structured="off")
        # kill -9 while calls are in flight, then once a reply has arrived (cached, not yet written), then in flight
        for wait in (0.15, 0.55, 0.15):
            seen = len(server.requests)
            child = fork.Process(target=_child, args=(settings, server.base_url))
            child.start()
            deadline = time.monotonic() + 60
            while len(server.requests) <= seen and time.monotonic() < deadline and child.is_alive():
                time.sleep(0.01)
            time.sleep(wait)
            os.kill(child.pid, signal.SIGKILL)
            child.join()
        child = fork.Process(target=_child, args=(settings, server.base_url))  # then resume to the end
        child.start()
        child.join(120)
        billed = server.bill(PRICE_IN, PRICE_OUT)
    best = json.loads((tmp_path / "killed" / "best.json").read_text())
    assert best["stop_reason"].startswith("budget: LLM cost budget"), best["stop_reason"]
    assert billed <= budget  # the server never billed more than the budget
    assert best["llm"]["charged_usd"] >= billed - 1e-12  # and every call it may have billed is charged
    con = sqlite3.connect(tmp_path / "killed" / "campaign.sqlite")
    rows = con.execute("SELECT status, cached, cost_usd FROM llm_calls").fetchall()
    con.close()
    assert not any(cached for _, cached, _ in rows)  # this run's replies are its own calls, never free cache hits
    ok = [cost for st_, _, cost in rows if st_ == "ok"]
    assert ok and all(cost == pytest.approx((USAGE[0] * PRICE_IN + USAGE[1] * PRICE_OUT) / 1e6) for cost in ok)


# ---- item 5: reported usage is clamped ----------------------------------------------------------------------
def test_absurd_usage_reports_are_clamped_and_the_token_budget_still_holds():
    with ScriptedLLMServer(default=reply(GOOD, prompt_tokens=-5, completion_tokens=1_000_000)) as server:
        proposer = LLMProposer("test-model", base_url=server.base_url, api_key="k" * 10, max_tokens=600,
                               max_total_tokens=8000, max_retries=0)
        calls = []
        for seed in range(20):
            try:
                calls += proposer.propose([ctx(seed=seed)])[0].calls
            except BudgetExhausted:
                break
    assert calls and all(0 < c.prompt_tokens and c.completion_tokens == 600 for c in calls)
    assert "clamped" in calls[0].attempts[-1] and "local count" in calls[0].attempts[-1]
    assert proposer.usage["budget_tokens"] <= 8000
    assert TASK.name == "toy_chinchilla"


# ---- item 13: the API key is never stored or printed ------------------------------------------------------------
def test_an_api_key_echoed_by_the_server_is_scrubbed_from_everything(tmp_path, capsys, caplog):
    echo = status(401, message="invalid key in header {authorization}; sent with key " + SECRET)
    with ScriptedLLMServer(default=echo) as server:
        settings = _campaign_settings(tmp_path, "secret", server, generations=2)
        proposer = LLMProposer.from_settings(settings, api_key=SECRET, max_retries=1, backoff_base_s=0.01)
        Campaign(settings, proposer=proposer).run()
        assert server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"  # it was sent, and echoed
    con = sqlite3.connect(tmp_path / "secret" / "campaign.sqlite")
    [(error, attempts)] = con.execute("SELECT error, attempts FROM llm_calls LIMIT 1").fetchall()
    con.close()
    assert "HTTP 401" in error and "[redacted]" in error and "[redacted]" in attempts
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    printed = capsys.readouterr()
    for where in (stored.decode("utf-8", "replace"), printed.out, printed.err, caplog.text):
        assert SECRET not in where and SECRET[3:] not in where
