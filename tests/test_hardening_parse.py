"""Hostile formulas (issue 14, items 1 and 6-8): every one is a law or a one-line refusal, within a time bound.

The bound is made small here (KEPLER_FORMULA_TIME_LIMIT); a formula that needs more is refused with
that reason, by the helper process that parses untrusted text, which is then stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery.cli import main
from discovery.laws import guard
from discovery.laws.guard import FormulaTimeout, parse_bounded
from discovery.laws.law import MAX_DEPTH, LawError, parse_law
from discovery.search.proposers.replies import parse_reply
from discovery.tasks.spec import load_task

LIMIT = 1.0  # seconds: the bound in these tests
SLACK = 2.5  # what a busy 2-core machine may add: starting a helper, the caller's own parse afterwards
VARS = ["N", "D"]


def nest(function: str, depth: int, inner: str = "N") -> str:
    for _ in range(depth):
        inner = f"{function}({inner})"
    return f"A*{inner}"


# compiles (its Jacobian) for over a minute in SymPy, though it is only 14 functions deep
TOO_SLOW = ("A*abs(sqrt(log2(tanh(log2(((Max(sqrt(B), 3))**(log10(tanh(tanh(abs(sigmoid((log(0.5))*(log(log2(a))))))"
            "))))+(D))))))")


@pytest.fixture(autouse=True)
def _small_bound(monkeypatch):
    monkeypatch.setenv("KEPLER_FORMULA_TIME_LIMIT", str(LIMIT))


def timed(fn, *args, **kwargs):
    t0 = time.monotonic()
    try:
        return fn(*args, **kwargs), time.monotonic() - t0
    except LawError as exc:
        return exc, time.monotonic() - t0


# ---- item 1: parsing has a bound ---------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("formula", [nest("log10", 18), nest("sigmoid", 16)], ids=["log10x18", "sigmoidx16"])
def test_deeply_nested_formulas_from_the_issue_parse_quickly(formula, monkeypatch):
    # powsimp(deep=True) grew ~2.5x per level (minutes for these); it now stops at a nesting the grammar never
    # exceeds, and the law is still a law within the default bound (sigmoid x16: ~0.6 CPU s idle, more on a
    # busy machine, so not the 1 s bound of the other tests here)
    monkeypatch.setenv("KEPLER_FORMULA_TIME_LIMIT", str(guard.DEFAULT_TIME_LIMIT))
    law, seconds = timed(parse_bounded, formula, VARS)
    assert not isinstance(law, LawError), law
    assert seconds < guard.DEFAULT_TIME_LIMIT + SLACK
    assert law.compile().predict(np.array([[1e30, 1.0]]), np.array([1.0])).shape == (1,)


@pytest.mark.timeout(120)
def test_a_formula_sympy_cannot_finish_is_refused_at_the_bound():
    result, seconds = timed(parse_bounded, TOO_SLOW, VARS)
    assert isinstance(result, FormulaTimeout) and "longer than 1s" in str(result), result
    assert seconds < LIMIT + SLACK
    assert guard._HELPER.proc.poll() is None  # the worker that overran was killed; the helper lives on
    again, seconds = timed(parse_bounded, TOO_SLOW, VARS)  # remembered: refused at once
    assert isinstance(again, FormulaTimeout) and seconds < 0.5



def _sleep_then_answer(request: dict) -> dict:  # a parse that waits for the CPU a busy machine does not give it
    time.sleep(2 * LIMIT)
    return {"ok": True}


def _spin(request: dict) -> dict:  # a parse that keeps computing
    while True:
        pass


@pytest.mark.timeout(60)
def test_the_bound_counts_cpu_seconds_not_the_wall_time_a_loaded_machine_adds(monkeypatch):
    # the same formula gets the same verdict on an idle machine and on a busy one: a worker that has used
    # little CPU is waited for past the bound (the wall-clock bound refused a 1-CPU-second human law under load)
    monkeypatch.setattr(guard, "_work", _sleep_then_answer)
    answer, seconds = timed(guard._in_worker, {"text": "A*N"}, LIMIT)
    assert answer == {"ok": True} and seconds >= 2 * LIMIT
    monkeypatch.setattr(guard, "_work", _spin)  # one that computes is stopped once it used the bound's CPU
    answer, seconds = timed(guard._in_worker, {"text": "A*N"}, LIMIT)
    assert answer is None and LIMIT <= seconds < guard.WALL_FACTOR * LIMIT
    monkeypatch.setattr(guard, "_work", _sleep_then_answer)  # and none waits forever: a wall bound remains
    monkeypatch.setattr(guard, "WALL_FACTOR", 1.5)
    answer, seconds = timed(guard._in_worker, {"text": "A*N"}, LIMIT)
    assert answer is None and seconds < 2 * LIMIT
    assert guard.cpu_seconds(os.getpid()) > 0

@pytest.mark.timeout(120)
def test_a_reply_that_timed_out_is_not_parsed_again_on_resume(tmp_path, monkeypatch):
    from discovery.search.proposers.llm import LLMProposer
    from tests.llm_server import ScriptedLLMServer, reply
    from tests.test_llm_proposer import TASK, ctx

    body = json.dumps({"candidates": [{"formula": "E + A/N**a"}, {"formula": TOO_SLOW}]})
    with ScriptedLLMServer() as server:
        server.push(reply(body))
        live = LLMProposer("m", base_url=server.base_url, api_key="k" * 10, cache_dir=tmp_path, max_retries=0)
        [first] = live.propose([ctx()])
    assert [c.formula for c in first.candidates] == ["E + A/N**a"]  # one bad candidate never drops the others
    [slow] = first.rejections
    assert "longer than" in slow.reason
    entry = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert entry["parse_timeouts"] == {TOO_SLOW: slow.reason}
    # a resumed (or replayed) run, a new process, reads the reply from the cache: the formula is refused as
    # before, at once, without asking the helper (this process's memory of it is dropped first)
    for key in [k for k in guard._VERDICTS if TOO_SLOW in k]:
        del guard._VERDICTS[key]
    monkeypatch.setattr(guard, "_helper", lambda: pytest.fail("the helper must not be asked again"))
    replay = LLMProposer("m", base_url="http://127.0.0.1:9/v1", cache_dir=tmp_path, replay_only=True)
    [again], seconds = timed(replay.propose, [ctx()])
    assert [r.reason for r in again.rejections] == [slow.reason] and seconds < LIMIT
    assert TASK.name == "toy_chinchilla"


def _user_task(tmp_path, monkeypatch, human_formula: str) -> None:
    """A task whose human law is hostile (a task file is untrusted too), with a small planted data set."""
    rng = np.random.default_rng(0)
    n = np.geomspace(1e6, 1e9, 12)
    loss = 2.0 + 40 * n**-0.3 + rng.normal(0, 1e-3, 12)
    data = tmp_path / "data" / "hostile_task"
    data.mkdir(parents=True)
    lines = ["n,loss,split"] + [f"{x!r},{y!r},{'test' if i >= 10 else 'train'}"
                                for i, (x, y) in enumerate(zip(n.tolist(), loss.tolist(), strict=True))]
    (data / "data.csv").write_text("\n".join(lines) + "\n")
    digest = hashlib.sha256((data / "data.csv").read_bytes()).hexdigest()
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hostile_task.toml").write_text(f'''
name = "hostile_task"
title = "a task file with a hostile human law"
paper = "test"
targets = ["loss"]
converter = "tidy_csv"
citation = "@misc{{x}}"
[[variables]]
column = "n"
symbol = "N"
[split]
rule = "largest two are test"
validation_axis = "n"
[[sources]]
file = "data.csv"
url = "https://example.org/data.csv"
sha256 = "{digest}"
format = "csv"
[[human_laws]]
name = "hostile"
formula = "{human_formula}"
source = "test"
constants.A = {{ init = 1.0 }}
''')
    monkeypatch.setenv("KEPLER_TASKS_DIR", str(tasks))
    monkeypatch.setenv("KEPLER_DATA_DIR", str(tmp_path / "data"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("human", [TOO_SLOW.replace("D", "N"), "A*Max(N, exp(exp(exp(exp(10)))))"],
                         ids=["too-slow", "overflow"])
def test_a_hostile_human_law_does_not_stop_kepler_fit(tmp_path, monkeypatch, capsys, human):
    _user_task(tmp_path, monkeypatch, human)
    t0 = time.monotonic()
    assert main(["fit", "hostile_task", "E + A*(N/1e6)**(-a)", "--json", "--starts", "4"]) == 0
    assert time.monotonic() - t0 < 30
    out = capsys.readouterr()
    assert json.loads(out.out)["test"]["r2"] > 0.9
    assert "human law 'hostile'" in out.err


# ---- item 6: SymPy's exceptions are refusals ---------------------------------------------------------------
@pytest.mark.parametrize("formula", ["A*Max(N, exp(exp(exp(exp(10)))))", "A*Min(N, exp(exp(exp(exp(10)))))",
                                     "A*Max(N, exp(exp(exp(3))))", "A*N*2**(sqrt(1e14)*sqrt(1e14))"])
def test_huge_constant_parts_are_refused_not_raised(formula):
    with pytest.raises(LawError) as info:
        parse_law(formula, VARS)
    assert "\n" not in str(info.value) and ("exceeds" in str(info.value))


def test_kepler_fit_refuses_an_overflowing_formula_in_one_line(capsys):
    assert main(["fit", "chinchilla_approach3", "A*Max(N, exp(exp(exp(exp(10)))))"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "OverflowError" not in err and "Traceback" not in err


def test_one_bad_candidate_never_drops_the_others_of_its_reply():
    task = load_task("chinchilla_approach3")
    reply = json.dumps({"candidates": [{"formula": "A*Max(N, exp(exp(exp(exp(10)))))"},
                                       {"formula": "E + A/N**alpha + B/D**beta"},
                                       {"formula": "E + A*N**a*D**b"}]})
    cands, rejs = parse_reply(reply, task, max_candidates=3)
    assert [c.formula for c in cands] == ["E + A/N**alpha + B/D**beta", "E + A*N**a*D**b"]
    assert len(rejs) == 1 and "exceeds" in rejs[0].reason


# ---- item 7: user names cannot shadow the generated code ----------------------------------------------------
@pytest.mark.parametrize("formula,variables", [
    ("sign*N + select*D + maximum*Max(N, D) + minimum*Min(N, D) + less*abs(N - D)", ["N", "D"]),
    ("A*exp + B*log**c + C*abs", ["exp", "log", "abs"]),
    ("A*exp(B*log) + C*exp + sign*abs", ["exp", "log", "abs"]),
])
def test_names_of_numpy_functions_work_as_constants_and_variables(formula, variables):
    law = parse_law(formula, variables)
    rng = np.random.default_rng(1)
    X = rng.uniform(1.5, 4.0, (6, len(variables)))
    theta = rng.uniform(0.5, 2.0, len(law.constants))
    pred = law.predict(X, theta)
    subs = dict(zip(law.constants, theta, strict=True))
    for i in range(len(X)):
        exact = float(law.expr.subs({**subs, **dict(zip(law.variables, X[i], strict=True))}))
        assert pred[i] == pytest.approx(exact, rel=1e-10)
    assert np.isfinite(law.jacobian(X, theta)).all()


# ---- item 8: literal limits on folded constants; the length first -----------------------------------------
@pytest.mark.parametrize("formula", ["A*N*1e30*1e30", "A*N*1e30*D*1e30", "A*(N**10)**10"])
def test_limits_apply_to_what_sympy_folds(formula):
    with pytest.raises(LawError, match="folds to"):
        parse_law(formula, VARS)


def test_a_huge_text_is_refused_before_it_is_read():
    text = "A*N+" * 12_500_000  # 50 MB
    t0 = time.monotonic()
    with pytest.raises(LawError, match="characters long"):
        parse_bounded(text, VARS)
    assert time.monotonic() - t0 < 0.5


# ---- the structure fuzz: random nests of the allowed functions up to the depth limit -------------------------
UNARY = ["exp", "log", "sqrt", "abs", "tanh", "log10", "log2", "sigmoid"]
LEAVES = st.sampled_from(["N", "D", "A", "B", "a", "b", "2", "0.5", "1e9", "3", "1e-3"])


def _formulas():
    def extend(inner):
        return st.one_of(
            st.tuples(st.sampled_from(UNARY), inner).map(lambda t: f"{t[0]}({t[1]})"),
            st.tuples(st.sampled_from(["Min", "Max"]), inner, inner).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "**"]), inner).map(
                lambda t: f"({t[0]}){t[1]}({t[2]})"),
        )
    deep = st.integers(1, MAX_DEPTH).flatmap(
        lambda d: st.tuples(st.lists(st.sampled_from(UNARY), min_size=d, max_size=d), LEAVES).map(
            lambda t: "".join(f"{f}(" for f in t[0]) + t[1] + ")" * len(t[0])))
    return st.one_of(st.recursive(LEAVES, extend, max_leaves=24), deep).map(lambda f: f"A*{f} + B")


@pytest.mark.timeout(240)
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_formulas())
def test_every_nest_of_allowed_functions_parses_or_is_refused_within_the_bound(formula):
    result, seconds = timed(parse_bounded, formula, VARS)
    assert seconds < 2 * LIMIT + SLACK, (formula, seconds)
    if not isinstance(result, LawError):
        assert isinstance(result.expr, sp.Expr) and result.hash
