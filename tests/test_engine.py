"""The fast engine computes what the SymPy path computes, to rounding, on every curated task's laws."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from discovery.laws.compiled import compile_law
from discovery.laws.fit import _specs_for
from discovery.search.proposers.offline import OfflineProposer
from discovery.tasks.data import load_frame
from discovery.tasks.spec import list_tasks, load_task
from evaluators.benchmark import parse_human_law
from evaluators.protocol import Protocol

GRAMMAR_LAWS = 3  # random grammar laws per task, beside its human laws
TOLERANCE = 1e-10  # relative to the largest magnitude of the column: a few ulps, or cancellation inside a derivative


def _laws(task):
    for human in task.human_laws:
        law = parse_human_law(task, human)
        yield law, _specs_for(law, human.constants)[0]
    proposer = OfflineProposer(task)
    rng = np.random.default_rng(0)
    for _ in range(GRAMMAR_LAWS):
        rendered = proposer.render(proposer.random_genome(rng))
        if rendered is not None:
            law = proposer.parse(rendered[0], task.symbols)
            yield law, _specs_for(law, rendered[1])[0]


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if not (np.isfinite(a) == np.isfinite(b)).all():
        return False
    ok = np.isfinite(a)
    scale = np.nanmax(np.where(ok, np.abs(a), np.nan), axis=0, keepdims=True)
    return bool((np.abs(a - b)[ok] <= TOLERANCE * np.broadcast_to(scale, a.shape)[ok] + 1e-300).all())


def test_symengine_matches_sympy_on_every_curated_tasks_laws():
    checked = 0
    for name in list_tasks():
        task = load_task(name)
        X = Protocol(task, load_frame(task)).train.X[:200]
        for law, theta in _laws(task):
            fast = law.with_engine("symengine")
            if fast._compiled is None:
                continue  # Abs/Min/Max: the fast engine keeps the SymPy path for this law
            starts = theta * (1 + 0.1 * np.random.default_rng(1).standard_normal((3, len(theta))))
            assert _close(law.predict(X, theta), fast.predict(X, theta)), (name, law.text)
            assert _close(law.predict(X, starts).T, fast.predict(X, starts).T), (name, law.text)
            assert _close(law.jacobian(X, theta), fast.jacobian(X, theta)), (name, law.text)
            assert (law.separable.linear, law.separable.nonlinear) == (fast.separable.linear,
                                                                        fast.separable.nonlinear), law.text
            if law.separable.linear:  # the basis as the fitter's screen calls it: (1, n) columns, (S, 1) constants
                args = [X[:, j][None, :] for j in range(X.shape[1])] + [starts[:, [i]] for i in
                                                                         law.separable.nonlinear]
                for a, b in zip(law.separable.func(*args), fast.separable.func(*args), strict=True):
                    assert _close(np.broadcast_to(a, (len(starts), len(X))).T, np.asarray(b).T), law.text
            checked += 1
    assert checked >= 40


def test_symengine_never_parses_text():
    # se.sympify would parse a string with SymEngine's own parser, outside the allow-list of parse_law
    N, A = sp.symbols("N A")
    with pytest.raises(TypeError, match="parsed SymPy expression"):
        compile_law("A*N**2", [N], [A])
    assert compile_law(A * N**2, [N], [A]) is not None


def test_a_long_campaign_keeps_a_bounded_number_of_compiled_laws_and_frees_the_rest(monkeypatch):
    """Each SymEngine-compiled law holds about 1 MB: the parse cache is bounded, and a law it evicts gives its
    memory back, so a campaign that meets thousands of formulas does not grow until the machine runs out."""
    from functools import lru_cache

    import numpy as np

    from discovery.laws import cache

    assert cache.CACHE_SIZE <= 1024
    monkeypatch.setattr(cache, "_parse", lru_cache(maxsize=20)(cache._parse.__wrapped__))
    X = np.geomspace(1e8, 1e10, 30)[:, None] * np.ones((1, 2))

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def parse(i: int) -> None:
        law = cache.parse_cached(f"E + A*(N/1e8)**(-a - {i}e-3) + B*(D/1e9)**(-b) + C*log(D/N + {i + 1})", ["N", "D"])
        assert law.engine == "symengine"
        law.predict(X, np.full(len(law.constants), 0.5))  # compiles it

    for i in range(40):
        parse(i)
    before = rss_mb()
    for i in range(40, 120):
        parse(i)
    assert rss_mb() - before < 30  # 80 more compiled laws kept would be about 90 MB
