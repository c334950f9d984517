"""The LLM proposer against a real OpenAI client talking to a scripted loopback server.

Nothing of ours is mocked: the real `openai` client makes real HTTP requests to tests/llm_server.py,
replies go through the real reply parser and the real law parser.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import openai  # noqa: F401  (imported up front so its import time does not land in timed tests)
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_server import ScriptedLLMServer, reply, response_format_type, slow, status  # noqa: E402

from discovery.search.proposers.base import BudgetExhausted, ProposalContext, Rejection, Survivor  # noqa: E402
from discovery.search.proposers.llm import DEFAULT_PRICES, LLMProposer, request_hash  # noqa: E402
from discovery.search.proposers.prompting import Templates, build_messages  # noqa: E402
from discovery.search.proposers.replies import (  # noqa: E402
    FORMULA_PATTERN,
    CandidateIn,
    extract_candidates,
    parse_reply,
    reply_json_schema,
)
from discovery.tasks.spec import Task
from discovery.tasks.values import ConstantSpec  # noqa: E402

TASK = Task.model_validate({
    "name": "toy_chinchilla",
    "title": "Toy L(N, D)",
    "description": "Final loss of language models of size N trained on D tokens.",
    "paper": "test",
    "targets": ["loss"],
    "variables": [
        {"column": "params", "symbol": "N", "unit": "parameters", "meaning": "model size", "range": [7e7, 1.6e10]},
        {"column": "tokens", "symbol": "D", "unit": "tokens", "meaning": "training tokens", "range": [2e8, 3e11]},
    ],
    "constant_limit": 5,
    "split": {"rule": "by compute", "validation_axis": "flops"},
    "converter": "none",
    "sources": [{"file": "x.csv", "url": "https://example.invalid/x.csv", "sha256": "0" * 64, "format": "csv"}],
    "citation": "@misc{x}",
})

CHINCHILLA = {
    "formula": "E + A/N**alpha + B/D**beta",
    "constants": {"E": {"init": 1.7, "bounds": [0, 10]}, "A": {"init": 400, "bounds": [0, 1e6]},
                  "alpha": {"init": 0.3, "bounds": [0, 2]}, "B": {"init": 400}, "beta": {"init": 0.3}},
    "rationale": "additive power laws in N and D with an irreducible floor",
}
POWER = {"formula": "E + A*(N/1e9)**(-a)", "constants": {"E": {"init": 2}, "A": {"init": 1}, "a": {"init": 0.3}},
         "rationale": "model size only"}
GOOD = json.dumps({"candidates": [CHINCHILLA, POWER]})


def ctx(seed: int = 7, n: int = 2, island: int = 0, **kw) -> ProposalContext:
    return ProposalContext(task=TASK, generation=0, island=island, n=n, seed=seed, **kw)


@pytest.fixture
def server():
    s = ScriptedLLMServer().start()
    yield s
    s.stop()


def make(server: ScriptedLLMServer, **kw) -> LLMProposer:
    opts = dict(base_url=server.base_url, api_key="test-key", timeout_s=2.0, max_retries=2,
                backoff_base_s=0.01, backoff_max_s=0.05, concurrency=4, candidates_per_call=8)
    opts.update(kw)
    return LLMProposer("test-model", **opts)


def formulas(proposal) -> list[str]:
    return [c.formula for c in proposal.candidates]


# ---- replies --------------------------------------------------------------------------------------------
def test_good_json_reply(server):
    server.push(reply(GOOD, prompt_tokens=1200, completion_tokens=300))
    [p] = make(server).propose([ctx(seed=1234)])
    assert formulas(p) == ["E + A/N**alpha + B/D**beta", "E + A*(N/1e9)**(-a)"]
    assert p.rejections == []
    c = p.candidates[0]
    assert c.proposer == "llm" and c.operation == "llm" and c.rationale.startswith("additive")
    assert c.constants["E"] == ConstantSpec(init=1.7, bounds=(0, 10))
    assert c.constants["B"].init == 400 and c.constants["B"].bounds == (float("-inf"), float("inf"))
    [call] = p.calls
    assert call.status == "ok" and not call.cached and call.response_text == GOOD
    assert (call.prompt_tokens, call.completion_tokens) == (1200, 300)
    body = server.requests[0]["body"]
    assert body["seed"] == 1234 and body["model"] == "test-model" and body["max_tokens"] == 2048
    assert body["messages"][0]["role"] == "system" and body["messages"][1]["role"] == "user"
    assert server.requests[0]["headers"].get("authorization") == "Bearer test-key"


def test_prose_around_json(server):
    server.push(reply("Here are my proposals [2 of them]:\n" + GOOD + "\nLet me know if you need more!"))
    [p] = make(server).propose([ctx()])
    assert len(p.candidates) == 2 and p.rejections == []


def test_json_in_code_fence(server):
    server.push(reply("<think>hmm {not json</think>Sure.\n```json\n" + json.dumps({"candidates": [POWER]}, indent=2)
                      + "\n```\n"))
    [p] = make(server).propose([ctx(n=1)])
    assert formulas(p) == ["E + A*(N/1e9)**(-a)"] and p.rejections == []


def test_broken_json_is_one_rejection(server):
    broken = '{"candidates": [{"formula": "E + A/N**alpha", "constants": {"E": {"init": 1' + " blah" * 200
    server.push(reply(broken))
    [p] = make(server).propose([ctx()])
    assert p.candidates == []
    [r] = p.rejections
    assert r.reason.startswith("reply was not valid JSON: ") and r.proposer == "llm"
    assert len(r.reason) < 400 and "\n" not in r.reason
    assert p.calls[0].status == "ok"  # the call worked; the reply was bad


def test_repairable_json_and_bare_list():
    text = "[{'formula': 'E + A/N**alpha', 'constants': {'E': {'init': 1.5,}, 'A': {'init': 100}, 'alpha': 0.3,},},]"
    cands, rejs = parse_reply(text, TASK, max_candidates=4)
    assert [c.formula for c in cands] == ["E + A/N**alpha"] and rejs == []
    assert cands[0].constants["alpha"].init == 0.3
    assert extract_candidates('{"formula": "A*N", "constants": {"A": null}}') == [
        {"formula": "A*N", "constants": {"A": None}}]
    cands, _ = parse_reply('{"formula": "L = A*N**b", "constants": ["A", "b"]}', TASK, max_candidates=1)
    assert cands[0].formula == "A*N**b" and cands[0].constants["A"].init == 1.0


def test_unknown_variable_too_many_constants_forbidden_syntax(server, tmp_path):
    marker = tmp_path / "pwned"
    items = [
        {"formula": "E + A/params**alpha", "constants": {"E": {}, "A": {}, "alpha": {}}},
        {"formula": "a + b*N + c*D + d*N*D + f*N**2 + g*D**2",
         "constants": {k: {"init": 1} for k in "abcdfg"}},
        {"formula": f"__import__('os').system('touch {marker}')", "constants": {}},
        {"formula": "A*N.real", "constants": {"A": {}}},
        {"formula": "A*max(N) + D", "constants": {"A": {}}},
        {"formula": "A*N + Z", "constants": {"A": {}}},  # Z is not declared
        POWER,
    ]
    server.push(reply(json.dumps({"candidates": items})))
    [p] = make(server).propose([ctx(n=8)])
    assert formulas(p) == ["E + A*(N/1e9)**(-a)"]
    reasons = [r.reason for r in p.rejections]
    assert len(reasons) == 6
    assert "unknown variable 'params'" in reasons[0] and "'N'" in reasons[0]
    assert "6 constants" in reasons[1] and "at most 5" in reasons[1]
    assert "not allowed" in reasons[2] and not marker.exists()
    assert "not allowed" in reasons[3]
    assert "statistic" in reasons[4]
    assert "unknown variable 'Z'" in reasons[5]
    assert all(r.proposer == "llm" for r in p.rejections)


def test_constant_bounds_defaults_and_clamping():
    items = [
        {"formula": "A*N**b", "constants": {"A": {"init": 50, "bounds": [0, 10]}, "b": {"bounds": [0.1, 2]}}},
        {"formula": "A*D**b", "constants": {"A": {"init": 1, "bounds": [5, 1]}, "b": {}}},
        {"formula": "A*N*D**b", "constants": {"A": {"init": 1, "bounds": [0]}, "b": {}}},
        {"formula": "A + N", "constants": {"A": {}, "N": {}}},
    ]
    cands, rejs = parse_reply(json.dumps(items), TASK, max_candidates=4)
    assert len(cands) == 1
    assert cands[0].constants["A"] == ConstantSpec(init=10, bounds=(0, 10))  # clamped into the bounds
    assert cands[0].constants["b"] == ConstantSpec(init=1.0, bounds=(0.1, 2))  # default init
    assert "lower < upper" in rejs[0].reason
    assert rejs[1].reason.startswith("candidate 3: constants.A.bounds")
    assert "clash with variable" in rejs[2].reason


def test_duplicates_and_already_evaluated():
    from discovery.laws.law import parse_law

    seen = frozenset({parse_law("E + A*(N/1e9)**(-a)", ["N", "D"]).hash})
    same = {"formula": "A/N**alpha + E + B/D**beta", "constants": CHINCHILLA["constants"]}
    cands, rejs = parse_reply(json.dumps([CHINCHILLA, same, POWER]), TASK, max_candidates=3,
                              evaluated_hashes=seen)
    assert [c.formula for c in cands] == [CHINCHILLA["formula"]]
    assert "duplicate" in rejs[0].reason and "already evaluated" in rejs[1].reason


def test_more_candidates_than_asked_are_cut(server):
    server.push(reply(GOOD))
    [p] = make(server).propose([ctx(n=1)])
    assert formulas(p) == [CHINCHILLA["formula"]]


# ---- HTTP failures and retries -----------------------------------------------------------------------------
def test_429_then_success_is_retried(server):
    server.push(status(429, retry_after="0"), reply(GOOD))
    [p] = make(server).propose([ctx()])
    assert len(server.requests) == 2 and len(p.candidates) == 2
    [call] = p.calls
    assert call.status == "ok" and len(call.attempts) == 2
    assert call.attempts[0].startswith("error:rate_limit") and call.attempts[1].startswith("ok")


def test_500_then_success_is_retried(server):
    server.push(status(500), reply(GOOD))
    [p] = make(server).propose([ctx()])
    assert len(server.requests) == 2 and len(p.candidates) == 2
    assert p.calls[0].status == "ok" and p.calls[0].attempts[0].startswith("error:server")


def test_persistent_500_is_recorded_not_raised(server):
    server.push(*[status(503)] * 3)
    proposer = make(server, max_retries=2)
    [p] = proposer.propose([ctx()])
    assert len(server.requests) == 3
    assert p.candidates == [] and p.rejections == []
    [call] = p.calls
    assert call.status == "error:server" and "503" in call.error and len(call.attempts) == 3
    assert proposer.usage["failed_calls"] == 1 and proposer.usage["attempts"] == 3


def test_other_4xx_is_not_retried(server):
    server.push(status(400, message="bad model"), reply(GOOD))
    [p] = make(server).propose([ctx()])
    assert len(server.requests) == 1
    assert p.calls[0].status == "error:http_400" and "bad model" in p.calls[0].error


def test_slow_reply_times_out_then_retry_succeeds(server):
    server.push(slow(1.5), reply(GOOD))
    t0 = time.perf_counter()
    [p] = make(server, timeout_s=0.5, max_retries=1).propose([ctx()])
    assert time.perf_counter() - t0 < 1.4
    assert p.calls[0].status == "ok" and p.calls[0].attempts[0].startswith("error:timeout")
    assert len(p.candidates) == 2


def test_persistent_timeout_is_recorded(server):
    server.push(slow(1.5), slow(1.5))
    [p] = make(server, timeout_s=0.5, max_retries=1).propose([ctx()])
    assert p.calls[0].status == "error:timeout" and p.candidates == []


def test_connection_refused_is_recorded(server):
    url = server.base_url
    server.stop()
    proposer = LLMProposer("m", base_url=url, max_retries=1, backoff_base_s=0.01, timeout_s=1.0)
    [p] = proposer.propose([ctx()])
    assert p.calls[0].status == "error:connection" and len(p.calls[0].attempts) == 2


def test_backoff_is_seeded_not_clocked(server):
    def delays(seed):
        s = ScriptedLLMServer().start()
        try:
            s.push(*[status(500)] * 4)
            [p] = make(s, max_retries=3, retry_seed=seed, backoff_base_s=0.001, backoff_max_s=0.01).propose([ctx()])
            return [float(x) for x in re.findall(r"retrying in ([0-9.]+)s", " ".join(p.calls[0].attempts))]
        finally:
            s.stop()

    a, b = delays(1), delays(1)
    assert len(a) == 3 and a == b


# ---- budgets and accounting -------------------------------------------------------------------------------
def test_max_calls_budget(server):
    server.push(reply(GOOD), reply(GOOD))
    proposer = make(server, max_calls=1)
    [p] = proposer.propose([ctx()])
    assert len(p.candidates) == 2
    with pytest.raises(BudgetExhausted):
        proposer.propose([ctx(seed=8)])
    assert len(server.requests) == 1


def test_partial_batch_keeps_what_fits(server):
    server.default = reply(GOOD)
    proposer = make(server, max_calls=2)
    out = proposer.propose([ctx(seed=1, island=0), ctx(seed=2, island=1), ctx(seed=3, island=2)])
    assert [len(p.calls) for p in out] == [1, 1, 0] and [len(p.candidates) for p in out] == [2, 2, 0]
    assert proposer.exhausted and "2 calls" in proposer.exhausted
    with pytest.raises(BudgetExhausted):
        proposer.propose([ctx()])
    assert len(server.requests) == 2


def test_token_and_cost_budgets_stop_before_the_call(server):
    with pytest.raises(BudgetExhausted, match="token"):
        make(server, max_total_tokens=100).propose([ctx()])
    with pytest.raises(BudgetExhausted, match="cost"):
        make(server, max_cost_usd=0.001, prices={"test-model": (1000.0, 1000.0)}).propose([ctx()])
    assert server.requests == []


def test_token_and_cost_accounting(server):
    server.push(reply(GOOD, prompt_tokens=1000, completion_tokens=500),
                reply(GOOD, prompt_tokens=3000, completion_tokens=100))
    proposer = make(server, prices={"test-model": (2.0, 8.0)}, concurrency=1)
    out = proposer.propose([ctx(seed=1), ctx(seed=2)])
    costs = [p.calls[0].cost_usd for p in out]
    assert costs == pytest.approx([(1000 * 2 + 500 * 8) / 1e6, (3000 * 2 + 100 * 8) / 1e6])
    u = proposer.usage
    assert (u["calls"], u["prompt_tokens"], u["completion_tokens"]) == (2, 4000, 600)
    assert u["cost_usd"] == pytest.approx(sum(costs))
    assert proposer.cost(10**6, 0, "gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"][0]  # longest prefix
    assert proposer.cost(10**6, 10**6, "my-local-llama") == 0.0


def test_missing_usage_is_counted_locally(server):
    # a server that reports no usage does not make calls free (budgets would never stop): the local count is used
    server.push(reply(GOOD, prompt_tokens=None, completion_tokens=None))
    proposer = make(server, prices={"test-model": (2.0, 8.0)})
    [p] = proposer.propose([ctx()])
    call = p.calls[0]
    assert call.prompt_tokens > 0 and call.completion_tokens == -(-len(GOOD) // 3)
    assert call.cost_usd == pytest.approx((call.prompt_tokens * 2 + call.completion_tokens * 8) / 1e6)
    assert "local count" in call.attempts[-1]


# ---- cache and replay ----------------------------------------------------------------------------------------
def test_cache_replays_without_the_service(server, tmp_path):
    cache = tmp_path / "llm_cache"
    bad = '{"candidates": [{"formula": "A*params", "constants": {"A": {}}}]}'
    server.push(reply(GOOD, prompt_tokens=900, completion_tokens=90),
                reply(bad, prompt_tokens=800, completion_tokens=80))
    contexts = [ctx(seed=11, island=0), ctx(seed=12, island=1)]
    first = make(server, cache_dir=cache, concurrency=1, prices={"test-model": (1.0, 1.0)}).propose(contexts)
    assert len(list(cache.glob("*.json"))) == 2 and not list(cache.glob("*.tmp"))
    url = server.base_url
    server.stop()

    replay = LLMProposer("test-model", base_url=url, cache_dir=cache, replay_only=True, max_calls=2,
                         prices={"test-model": (1.0, 1.0)})
    again = replay.propose(contexts)
    for a, b in zip(first, again, strict=True):
        assert a.candidates == b.candidates and a.rejections == b.rejections
        assert [c.request_hash for c in a.calls] == [c.request_hash for c in b.calls]
        assert [(c.prompt_tokens, c.completion_tokens) for c in a.calls] == \
               [(c.prompt_tokens, c.completion_tokens) for c in b.calls]
        assert all(c.cached and c.cost_usd == 0 and c.status == "ok" for c in b.calls)
    assert "unknown variable 'params'" in again[1].rejections[0].reason
    assert replay.usage["cached_calls"] == 2 and replay.usage["cost_usd"] == 0
    with pytest.raises(BudgetExhausted):  # cache hits count towards budgets: a replay stops where the run did
        replay.propose(contexts)


def test_replay_miss_is_an_error_not_a_network_call(server, tmp_path):
    proposer = make(server, cache_dir=tmp_path, replay_only=True)
    [p] = proposer.propose([ctx(seed=99)])
    assert p.calls[0].status == "error:replay_miss" and "no cached reply" in p.calls[0].error
    assert server.requests == [] and p.candidates == []


def test_cache_hit_skips_network_even_when_not_replay_only(server, tmp_path):
    server.push(reply(GOOD))
    make(server, cache_dir=tmp_path).propose([ctx()])
    [p] = make(server, cache_dir=tmp_path).propose([ctx()])
    assert p.calls[0].cached and len(server.requests) == 1 and len(p.candidates) == 2


# ---- concurrency, requests, prompt --------------------------------------------------------------------------
def test_concurrent_contexts(server):
    server.default = reply(GOOD, delay_s=0.3)
    proposer = make(server, concurrency=3)
    proposer.propose([ctx(n=1)])  # warm up (client construction)
    t0 = time.perf_counter()
    out = proposer.propose([ctx(seed=s, island=s) for s in range(3)])
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.75, elapsed
    assert all(len(p.candidates) == 2 for p in out)
    assert [p.calls[0].seed for p in out] == [0, 1, 2]  # results in context order


def test_candidates_per_call_splits_requests(server):
    server.default = reply(json.dumps({"candidates": [POWER]}))
    [p] = make(server, candidates_per_call=2).propose([ctx(n=5, seed=5)])
    bodies = [r["body"] for r in server.requests]
    assert len(bodies) == 3 and len(p.calls) == 3
    seeds = sorted(b["seed"] for b in bodies)
    assert 5 in seeds and len(set(seeds)) == 3
    asks = sorted(re.search(r"Propose (\d+) new", b["messages"][1]["content"]).group(1) for b in bodies)
    assert asks == ["1", "2", "2"]
    # the same law in all three replies: one candidate, two duplicates
    assert len(p.candidates) == 1 and sum("duplicate" in r.reason for r in p.rejections) == 2


def test_prompt_contents_are_deterministic():
    survivors = [Survivor(id=3, formula="E + A/N**a", canonical="c0 + c1/N**c2", complexity=9, n_constants=3,
                          val_r2=0.9876, val_nmse=0.0123, constants={"E": 1.69, "A": 406.4, "a": 0.34})]
    rejections = [Rejection("A*params", "unknown variable 'params': write it as 'N'", "llm")]
    c = ctx(n=6, survivors=survivors, rejections=rejections, residuals="under-predicts the largest N by 2%",
            data_summary="245 rows; loss from 2.0 to 5.5")
    templates = Templates.load()
    m1, m2 = build_messages(c, 6, templates), build_messages(c, 6, templates)
    assert m1 == m2
    system, user = m1[0]["content"], m1[1]["content"]
    assert "At most 5 constants" in system and "Min(a, b)" in system and "{" in system
    assert "{example}" not in system and "(N/1e9)" in system
    for text in ["- N: model size", "- D: training tokens", "observed range 7e+07 to 1.6e+10", "#3: E + A/N**a",
                 "val R2 = 0.9876", "A = 406.4", "A*params", "write it as 'N'", "under-predicts the largest N",
                 "245 rows", "Propose 6 new"]:
        assert text in user, text
    assert "params" not in user.split("Recently rejected")[0]  # column names are not offered as variables


def test_parents_are_kept_only_when_shown(server):
    item = dict(POWER, parents=[3, 999])
    server.push(reply(json.dumps({"candidates": [item]})))
    survivors = [Survivor(id=3, formula="A*N**b", canonical="", complexity=5, n_constants=2, val_r2=0.5, val_nmse=0.5)]
    [p] = make(server).propose([ctx(n=1, survivors=survivors)])
    assert p.candidates[0].parents == (3,)


def test_api_key_rules(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert LLMProposer("m", base_url="http://127.0.0.1:9/v1")._api_key  # local: a dummy key
    with pytest.raises(ValueError, match="API key"):
        LLMProposer("m", base_url="https://api.example.com/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.example.com/v1")
    p = LLMProposer("m")
    assert p._api_key == "from-env" and p.base_url == "https://api.example.com/v1"
    with pytest.raises(ValueError, match="cache_dir"):
        LLMProposer("m", replay_only=True)


# ---- structured outputs ---------------------------------------------------------------------------------------
SCHEMA_REFUSED = status(400, message="response_format type 'json_schema' is not supported by this server")
JSON_REFUSED = status(400, message="response_format type 'json_object' is not supported by this server")


def formats(server: ScriptedLLMServer) -> list[str]:
    return [response_format_type(r["body"]) for r in server.requests]


def test_schema_is_sent_and_accepted(server):
    server.push(reply(GOOD))
    proposer = make(server)
    [p] = proposer.propose([ctx(n=2)])
    assert len(p.candidates) == 2 and p.calls[0].response_format == "json_schema"
    field = server.requests[0]["body"]["response_format"]
    assert field["type"] == "json_schema" and field["json_schema"]["name"] == "kepler_candidates"
    schema = field["json_schema"]["schema"]
    assert schema == reply_json_schema(2)  # the schema of the pydantic model that validates replies
    assert schema["properties"]["candidates"]["maxItems"] == 2
    cand = schema["$defs"]["CandidateIn"]
    assert set(cand["properties"]) == set(CandidateIn.model_fields) and cand["additionalProperties"] is False
    pattern = cand["properties"]["formula"]["pattern"]
    assert pattern == FORMULA_PATTERN
    for ok in ("E + A/N**alpha + B/D**beta", "Min(A*N**(-a), 2.5e-3) + log(D/1e10)", "A*N^-0.5"):
        assert re.fullmatch(pattern, ok), ok
    for bad in ("__import__('os')", 'x["a"]', "a; b", "N < 3", "λ*N", "a\\b", "a@b"):
        assert not re.fullmatch(pattern, bad), bad
    assert proposer.current_format == "json_schema" and proposer.format_fallbacks == []


def test_schema_refused_falls_back_to_json_object_once(server):
    server.refuse = {"json_schema": SCHEMA_REFUSED}
    server.default = reply(GOOD)
    proposer = make(server)
    [p] = proposer.propose([ctx(seed=1)])
    assert formats(server) == ["json_schema", "json_object"]
    call = p.calls[0]
    assert call.status == "ok" and call.response_format == "json_object" and len(p.candidates) == 2
    assert call.attempts[0].startswith("error:format_refused") and "json_schema refused, trying json_object" in \
        call.attempts[0]
    assert proposer.current_format == "json_object" and len(proposer.format_fallbacks) == 1
    # remembered: later calls start at json_object, and the schema is never sent again
    out = proposer.propose([ctx(seed=2), ctx(seed=3, island=1)])
    assert formats(server) == ["json_schema", "json_object", "json_object", "json_object"]
    assert all(c.response_format == "json_object" and c.attempts == [c.attempts[0]] for q in out for c in q.calls)


@pytest.mark.parametrize("code", [400, 422])
def test_json_object_refused_too_falls_back_to_text(server, code):
    # terse refusals that name nothing: tried one level down; remembered once the lower level works
    server.refuse = {"json_schema": status(code, message="Bad Request"),
                     "json_object": status(code, message="Bad Request")}
    server.default = reply("Here you go:\n" + GOOD + "\nThanks!")
    proposer = make(server)
    [p] = proposer.propose([ctx(seed=1)])
    assert formats(server) == ["json_schema", "json_object", "text"]
    assert "response_format" not in server.requests[2]["body"]
    assert p.calls[0].response_format == "text" and len(p.candidates) == 2  # JSON extracted from prose
    assert [a.split(" after")[0] for a in p.calls[0].attempts] == ["error:format_refused"] * 2 + ["ok"]
    proposer.propose([ctx(seed=2)])
    assert formats(server) == ["json_schema", "json_object", "text", "text"]
    assert proposer.current_format == "text" and len(proposer.format_fallbacks) == 1


def test_fallback_happens_once_under_concurrency(server):
    server.refuse = {"json_schema": SCHEMA_REFUSED}
    server.default = reply(GOOD, delay_s=0.1)
    proposer = make(server, concurrency=4)
    out = proposer.propose([ctx(seed=s, island=s) for s in range(4)])
    assert formats(server).count("json_schema") == 1  # the first call probes; the others wait for its answer
    assert formats(server).count("json_object") == 4
    assert all(c.response_format == "json_object" and c.status == "ok" for q in out for c in q.calls)
    assert len(proposer.format_fallbacks) == 1


def test_refusal_naming_the_format_is_remembered_even_if_the_call_then_fails(server):
    server.refuse = {"json_schema": SCHEMA_REFUSED}
    server.push(status(500), status(500), status(500))  # json_object then fails on server errors
    proposer = make(server, max_retries=2)
    [p] = proposer.propose([ctx(seed=1)])
    assert p.calls[0].status == "error:server" and p.calls[0].response_format == "json_object"
    assert proposer.current_format == "json_object"  # the server said so: no need to ask again
    server.push(reply(GOOD))
    proposer.propose([ctx(seed=2)])
    assert formats(server).count("json_schema") == 1


def test_5xx_naming_the_grammar_is_a_refusal_not_a_retry(server):
    server.push(status(500, message="failed to parse grammar from json schema"), reply(GOOD))
    [p] = make(server).propose([ctx()])
    assert formats(server) == ["json_schema", "json_object"] and p.calls[0].status == "ok"


def test_unrelated_400_is_not_a_refusal(server):
    server.push(status(400, message="the request exceeds the available context size, try increasing it"))
    proposer = make(server)
    [p] = proposer.propose([ctx()])
    assert len(server.requests) == 1 and p.calls[0].status == "error:http_400"
    assert proposer.current_format == "json_schema" and proposer.format_fallbacks == []


def test_forced_modes_never_fall_back(server):
    server.refuse = {"json_schema": SCHEMA_REFUSED}
    server.default = reply(GOOD)
    forced = make(server, structured="schema")
    [p] = forced.propose([ctx()])
    assert formats(server) == ["json_schema"] and p.calls[0].status == "error:format_refused"
    assert "forced by structured='schema'" in p.calls[0].error and p.calls[0].response_format == "json_schema"

    [p] = make(server, structured="json").propose([ctx(seed=2)])
    assert formats(server)[-1] == "json_object" and p.calls[0].response_format == "json_object"
    [p] = make(server, structured="off").propose([ctx(seed=3)])
    assert "response_format" not in server.requests[-1]["body"] and p.calls[0].response_format == "text"
    assert len(p.candidates) == 2
    with pytest.raises(ValueError, match="structured"):
        make(server, structured="yes")


def test_from_settings_reads_structured(monkeypatch):
    from discovery.search.campaign import CampaignSettings

    monkeypatch.setenv("KEPLER_LLM_MAX_REPLY_TOKENS", "300")
    for mode, first in [("auto", "json_schema"), ("schema", "json_schema"), ("json", "json_object"), ("off", "text")]:
        settings = CampaignSettings(task="chinchilla_approach3", proposer="llm", model="m", structured=mode,
                                    base_url="http://127.0.0.1:9/v1")
        proposer = LLMProposer.from_settings(settings, cache_dir=None)
        assert proposer.structured == mode and proposer.current_format == first and proposer.max_tokens == 300


def test_replay_follows_the_live_fallback(server, tmp_path):
    server.refuse = {"json_schema": SCHEMA_REFUSED}
    server.default = reply(GOOD)
    live = make(server, cache_dir=tmp_path)
    first = [live.propose([ctx(seed=s)])[0] for s in (1, 2)]
    url = server.base_url
    server.stop()
    replay = LLMProposer("test-model", base_url=url, cache_dir=tmp_path, replay_only=True)
    again = [replay.propose([ctx(seed=s)])[0] for s in (1, 2)]
    assert [c.response_format for q in again for c in q.calls] == ["json_object", "json_object"]
    assert all(c.cached and c.status == "ok" for q in again for c in q.calls)
    assert [q.candidates for q in again] == [q.candidates for q in first]
    assert replay.current_format == "json_object"


def test_reply_cut_at_max_tokens_keeps_its_complete_candidates(server):
    cut = json.dumps({"candidates": [CHINCHILLA, POWER]})[:-2] + ', {"formula": "E + A*N**(-a'
    server.push(reply(cut, finish_reason="length"))
    [p] = make(server).propose([ctx(n=3)])
    assert formulas(p) == ["E + A/N**alpha + B/D**beta", "E + A*(N/1e9)**(-a)"]
    [r] = p.rejections
    assert "broke off after 2 complete candidate(s)" in r.reason


def test_cache_entries_recorded_before_structured_outputs_still_replay(server, tmp_path):
    server.push(reply(GOOD))
    make(server, cache_dir=tmp_path).propose([ctx(seed=5)])
    [path] = tmp_path.glob("*.json")
    entry = json.loads(path.read_text())
    old_request = {k: v for k, v in entry["request"].items() if k not in ("structured", "schema")}
    old_hash = request_hash(old_request)
    entry.update(request=old_request, request_hash=old_hash)
    entry.pop("response_format")
    path.unlink()
    (tmp_path / f"{old_hash}.json").write_text(json.dumps(entry))
    server.stop()
    replay = LLMProposer("test-model", base_url="http://127.0.0.1:9/v1", cache_dir=tmp_path, replay_only=True)
    [p] = replay.propose([ctx(seed=5)])
    assert p.calls[0].cached and p.calls[0].response_format == "text" and len(p.candidates) == 2
    assert replay.current_format == "json_schema"  # an old entry says nothing about what the server takes
